"""SMC's tempering helpers (samplers/smc.py) against independent formulas.

The statistical SMC tests (tests/test_mcmc.py, test_quality.py) cannot see these bugs: a wrong
gradient of the tempered energy only changes MALA's proposal (the Metropolis correction keeps the
chain exact), and a wrong conditional-ESS sign only changes which temperatures are chosen (the
reweighting stays exact). mutmut showed both surviving (docs/testing.md).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from samplers.smc import combine, next_beta


def _energies(x):
    e0 = 0.5 * (x ** 2).sum(-1)                       # a Gaussian prior
    e1 = ((x ** 2 - 1.0) ** 2).sum(-1) + 0.3 * x[:, 0]  # a double well with a tilt
    return e0, e1


@pytest.mark.parametrize("beta", [0.0, 0.3, 0.999, 1.0])
def test_tempered_energy_and_gradient_match_autograd(beta):
    x = torch.randn(16, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    xg = x.clone().requires_grad_(True)
    e0, e1 = _energies(xg)
    g0, = torch.autograd.grad(e0.sum(), xg, retain_graph=True)
    g1, = torch.autograd.grad(e1.sum(), xg, retain_graph=True)
    want = (1 - beta) * e0 + beta * e1
    want_g, = torch.autograd.grad(want.sum(), xg)
    e, g = combine(beta, e0.detach(), g0, e1.detach(), g1)
    assert torch.allclose(e, want.detach(), atol=1e-12)
    assert torch.allclose(g, want_g, atol=1e-12)


def test_tempered_energy_keeps_a_prior_wall_and_ignores_the_target_at_beta_0():
    e0 = torch.tensor([1.0, math.inf], dtype=torch.float64)
    e1 = torch.tensor([2.0, 3.0], dtype=torch.float64)
    g = torch.zeros(2, 1, dtype=torch.float64)
    assert combine(0.5, e0, g, e1, g)[0].tolist() == [1.5, math.inf]
    assert combine(0.0, e0, g, torch.tensor([math.inf, 3.0], dtype=torch.float64), g)[0] \
        .tolist() == [1.0, math.inf]
    assert combine(1.0, e0, g, e1, g)[0].tolist() == [2.0, 3.0]   # at beta = 1: the target alone


def _cess(b, beta, log_w, de):
    """Conditional ESS fraction (Zhou, Johansen & Aston 2016) of the move beta -> b, in numpy:
    (sum_i W_i u_i)^2 / sum_i W_i u_i^2 with W the normalised weights, u_i = exp(-(b - beta) dE_i),
    u_i = 0 where dE_i is not finite."""
    w = np.exp(log_w - log_w.max())
    w /= w.sum()
    u = np.where(np.isfinite(de), np.exp(-(b - beta) * np.where(np.isfinite(de), de, 0.0)), 0.0)
    return (w * u).sum() ** 2 / (w * u * u).sum()


@pytest.mark.parametrize("seed", range(5))
def test_next_beta_lands_on_the_target_conditional_ess(seed):
    g = np.random.default_rng(seed)
    log_w, de = g.normal(0, 1, 256), g.normal(5, 20, 256)
    de[:3] = np.inf                                   # outside the target's support
    beta, target = 0.05, 0.6
    b = next_beta(beta, torch.tensor(log_w), torch.tensor(de), target)
    assert beta < b < 1.0
    assert _cess(b, beta, log_w, de) == pytest.approx(target, abs=1e-6)
    assert _cess(b + 1e-3, beta, log_w, de) < target   # the largest such b: CESS falls beyond it


def test_next_beta_jumps_to_one_when_the_whole_step_keeps_enough_ess():
    de = torch.full((64,), 1e-3, dtype=torch.float64)
    assert next_beta(0.2, torch.zeros(64), de, 0.5) == 1.0
