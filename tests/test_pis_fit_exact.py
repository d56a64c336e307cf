"""The training loop shared by PIS and DDS (``ControlledSDESampler.fit``) against recounts.

test_pis_dds_exact.py replays the rollout, its weights and the loss; what mutmut still found
unchecked in ``fit`` (docs/testing.md) is the bookkeeping around it: the ``train_*`` summaries of
the last step's weights (an ``elbo`` taken as the max of the log weights passed, because under the
zero-initialised control every weight was equal), the optimiser's weight decay, a second fit after
a resumed one, and which quantity a divergence names. Each is checked here against a value the
test computes itself: the log weights the loop actually produced, captured by a spy and summarised
in numpy; the configuration the optimiser was built from; a NaN planted in the energy.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import samplers
from samplers import Budget, Diverged
from test_pis_dds_exact import Gauss

NAMES = ["pis", "dds"]


def _tiny(name, **kw):
    cls = samplers.get(name)
    return cls(dataclasses.replace(cls.tiny_config(None), **kw))


@pytest.mark.parametrize("name", NAMES)
def test_train_summaries_are_those_of_the_last_steps_log_weights(name):
    sampler = _tiny(name, max_iters=2)
    seen = []
    loss_fn = sampler._loss

    def spy(n, generator, control=None):
        loss, log_w = loss_fn(n, generator, control)
        seen.append((float(loss.detach()), log_w.numpy().copy()))
        return loss, log_w

    sampler._loss = spy
    # a target of width 2 under a reference of width ~1: the weights differ, so the mean, the
    # log-mean-exp and the max of the log weights are three different numbers
    info = sampler.fit(Gauss([0.5, -0.5], 2.0), Budget(max_steps=10), torch.Generator().manual_seed(3))
    assert info["steps"] == len(seen) == 2
    loss, lw = seen[-1]
    w = np.exp(lw - lw.max())
    log_z = float(np.log(w.mean()) + lw.max())
    assert lw.max() - lw.mean() > 0.1  # not the degenerate equal-weight case
    assert info["train_loss"] == pytest.approx(loss, rel=1e-12)
    assert info["train_elbo"] == pytest.approx(float(lw.mean()), rel=1e-9, abs=1e-9)
    assert info["train_log_z"] == pytest.approx(log_z, rel=1e-9, abs=1e-9)
    assert info["train_ess"] == pytest.approx(float(w.sum() ** 2 / (w ** 2).sum() / len(w)), rel=1e-9)
    assert info["train_elbo"] < info["train_log_z"]  # Jensen, strict for unequal weights


@pytest.mark.parametrize("name", NAMES)
def test_the_optimiser_takes_the_configured_lr_and_weight_decay(name):
    sampler = _tiny(name, max_iters=1, lr=3e-3, weight_decay=0.25)
    sampler.fit(Gauss([0.0, 0.0], 1.0), Budget(max_steps=10), torch.Generator().manual_seed(0))
    group = sampler.opt.param_groups[0]
    assert isinstance(sampler.opt, torch.optim.Adam)
    assert (group["lr"], group["weight_decay"]) == (3e-3, 0.25)
    # the default weight decay is iDEM's pis.yaml 1e-7, not Adam's 0
    default = _tiny(name, max_iters=1)
    default.fit(Gauss([0.0, 0.0], 1.0), Budget(max_steps=10), torch.Generator().manual_seed(0))
    assert default.opt.param_groups[0]["weight_decay"] == 1e-7


@pytest.mark.parametrize("name", NAMES)
def test_a_second_fit_after_a_resumed_one_starts_afresh(name):
    target, budget = Gauss([0.0, 0.0], 1.0), Budget(max_steps=10)
    first = _tiny(name, max_iters=2)
    first.fit(target, budget, torch.Generator().manual_seed(0))
    resumed = _tiny(name, max_iters=3)
    resumed.load_state_dict(first.state_dict())
    assert resumed.fit(target, budget, torch.Generator().manual_seed(1))["steps"] == 3  # 2 + 1
    # the checkpoint is consumed by the first fit: a later fit trains from step 0 again
    assert resumed.fit(target, budget, torch.Generator().manual_seed(1))["steps"] == 3


class NaNAt(Gauss):
    """A unit Gaussian whose energy (not its gradient) is NaN in the region x_0 > ``where``."""

    def __init__(self, where):
        super().__init__([0.0, 0.0], 1.0)
        self.where = where

    def _energy(self, x):
        e = super()._energy(x)
        return torch.where(x[..., 0] > self.where, torch.full_like(e, float("nan")), e)

    def _energy_and_grad(self, x):
        return self._energy(x), (x - self.m.to(x)) / self.s ** 2


@pytest.mark.parametrize("name", NAMES)
def test_a_nan_energy_in_training_is_reported_as_the_training_loss(name):
    sampler = _tiny(name, max_iters=1)
    with pytest.raises(Diverged, match=rf"^{name}: training loss: [1-9]\d* non-finite values$"):
        sampler.fit(NaNAt(-1e9), Budget(max_steps=10), torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", NAMES)
def test_non_finite_samples_are_reported_as_samples(name):
    sampler = _tiny(name, max_iters=0)
    target = Gauss([0.0, 0.0], 1.0)
    sampler.fit(target, Budget(max_steps=10), torch.Generator().manual_seed(0))
    with torch.no_grad():  # a control that sends every path to infinity
        for p in sampler.net.parameters():
            p.fill_(float("inf"))
    with pytest.raises(Diverged, match=rf"^{name}: samples: [1-9]\d* non-finite values$"):
        sampler.sample(8, torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", NAMES)
def test_fit_info_reports_the_sde_steps_the_clock_and_the_spending(name):
    import time
    sampler = _tiny(name, max_iters=2)
    target = Gauss([0.0, 0.0], 1.0)
    t0 = time.perf_counter()
    info = sampler.fit(target, Budget(max_steps=10), torch.Generator().manual_seed(0))
    wall = time.perf_counter() - t0
    cfg = sampler.config
    assert info["n_sde_steps"] == cfg.n_steps and info["steps"] == 2
    assert 0.0 < info["seconds"] <= wall
    # N score calls + 1 terminal energy per path and step, counted by the target itself
    assert info["energy_evals"] == target.counter.energy_evals == 2 * cfg.batch_size * (cfg.n_steps + 1)
    assert info["budget_binding"] == "none"  # max_iters stopped it, not the budget
    capped = _tiny(name, max_iters=None).fit(target, Budget(max_steps=2), torch.Generator().manual_seed(0))
    assert (capped["steps"], capped["budget_binding"]) == (2, "steps")


class _InfGrad(torch.autograd.Function):
    """Identity forward (a finite loss), an infinite gradient backward."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("inf")


@pytest.mark.parametrize("name", NAMES)
def test_a_non_finite_parameter_gradient_is_reported_with_its_iteration(name):
    sampler = _tiny(name, max_iters=3)
    loss_fn, calls = sampler._loss, []

    def inf_on_second(n, generator, control=None):
        loss, log_w = loss_fn(n, generator, control)
        calls.append(1)
        return (_InfGrad.apply(loss) if len(calls) == 2 else loss), log_w

    sampler._loss = inf_on_second
    with pytest.raises(Diverged, match=rf"^{name}: non-finite parameter gradient at iteration 1$"):
        sampler.fit(Gauss([0.0, 0.0], 1.0), Budget(max_steps=10), torch.Generator().manual_seed(0))


def test_a_config_of_the_other_sampler_is_refused_naming_both_classes():
    pis, dds = samplers.get("pis"), samplers.get("dds")
    with pytest.raises(TypeError, match=r"^pis: config must be a PISConfig, got DDSConfig$"):
        pis(dds.Config())
    with pytest.raises(TypeError, match=r"^dds: config must be a DDSConfig, got PISConfig$"):
        dds(pis.Config())
