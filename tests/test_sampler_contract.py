"""Contract tests generated from the registries: every registered sampler x every target.

Each case fits with a tiny budget, then checks what the runner relies on: ``sample(n)`` returns
``n`` rows ``[n, dim]``, float32, CPU, finite, mean-free for particle targets; two fits with the
same seed give identical samples; the energy cap is respected; ``log_prob`` / ``log_weights``
behave where declared. LJ-55 runs without any reference set (none is read here).

Convention for sampler authors (how a new sampler joins these tests without editing this file):

* ``Cls.tiny_config(target) -> Cls.Config`` (classmethod): a configuration that fits and samples
  on one CPU core in about a second. Samplers without it use ``CONTRACT_CONFIGS[name]`` (a dict of
  Config fields) below, else their Config defaults.
* ``Cls.budget_slack_evals: int`` (class attribute, default 0): energy evaluations ``fit`` may
  spend beyond ``Budget.max_energy_evals`` (e.g. one final batch it cannot split). Ideally 0.
* ``Cls.supports(target) -> True | str`` (optional): a string skips the case with that reason.
* ``fit`` returns ``info["budget_binding"]`` (one of ``samplers.BINDINGS``) and
  ``info["warnings"]`` (a list of str); ``Cls.Config().validate()`` accepts the defaults.
* ``Cls.has_importance_weights`` with ``log_weights(n, generator) -> (x [n, dim], log_w [n])``
  (optional): checked like ``sample``.

Only samplers defined in the ``samplers`` package are collected (test-only plugins registered by
other test files are not). Cases known to take longer than ~3 s are listed in ``SLOW_CASES`` and
marked ``slow``.
"""
from __future__ import annotations

import pytest
import torch

import samplers
import targets
from samplers import Budget

# Fallback tiny configs for samplers without ``tiny_config`` (name -> Config fields).
CONTRACT_CONFIGS: dict[str, dict] = {}
# (sampler, target) pairs measured above ~3 s per case on one core.
SLOW_CASES: set[tuple[str, str]] = {("idem", "lj55")}  # ~10 s (EGNN on 55 particles)
BUDGET = Budget(max_energy_evals=3001, max_steps=60)  # tiny; 3001: not a multiple of any batch
N = 64


def _package_samplers() -> list[str]:
    return [n for n in samplers.names() if samplers.get(n).__module__.startswith("samplers.")]


def _cases():
    for s in _package_samplers():
        for t in targets.names():
            marks = [pytest.mark.slow] if (s, t) in SLOW_CASES else []
            yield pytest.param(s, t, marks=marks, id=f"{s}-{t}")


def _config(cls, target):
    if hasattr(cls, "tiny_config"):
        return cls.tiny_config(target)
    return cls.Config(**CONTRACT_CONFIGS.get(cls.name, {}))


def _fit_and_sample(cls, target, seed: int):
    sampler = cls(_config(cls, target))
    info = sampler.fit(target, BUDGET, torch.Generator().manual_seed(seed))
    fit_evals = target.counter.energy_evals
    x = sampler.sample(N, torch.Generator().manual_seed(seed + 1))
    return sampler, info, fit_evals, x


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("sampler_name,target_name", list(_cases()))
def test_sampler_contract(sampler_name, target_name):
    cls = samplers.get(sampler_name)
    target = targets.get(target_name)
    supports = getattr(cls, "supports", None)
    verdict = supports(target) if callable(supports) else True
    if verdict is not True:
        pytest.skip(str(verdict) or "not supported")
    for attr in ("name", "pretty_name", "has_log_prob", "Config"):
        assert hasattr(cls, attr), f"{sampler_name} lacks class attribute {attr}"
    assert isinstance(cls.has_log_prob, bool)

    sampler, info, fit_evals, x = _fit_and_sample(cls, target, seed=11)
    assert isinstance(info, dict)
    # Health keys every sampler reports (samplers/base.py; runners/cell.py copies them to the row).
    assert info.get("budget_binding") in samplers.BINDINGS, info.get("budget_binding")
    assert isinstance(info.get("warnings"), list)
    assert all(isinstance(w, str) for w in info["warnings"])
    assert cls.Config().validate() is None  # the grid parser's call: defaults are valid
    slack = int(getattr(cls, "budget_slack_evals", 0))
    assert fit_evals <= BUDGET.max_energy_evals + slack, (fit_evals, slack)

    assert isinstance(x, torch.Tensor) and x.shape == (N, target.dim)
    assert x.dtype == torch.float32 and x.device.type == "cpu"
    assert torch.isfinite(x).all()
    if target.n_particles is not None:
        assert target.particles(x).mean(-2).abs().max() < 1e-4, "particle samples must be mean-free"
    assert sampler.sample(1, torch.Generator().manual_seed(0)).shape == (1, target.dim)

    if cls.has_log_prob:
        lp = sampler.log_prob(x)
        assert lp.shape == (N,) and torch.isfinite(lp).all()
    if getattr(cls, "has_importance_weights", False):
        xw, log_w = sampler.log_weights(N, torch.Generator().manual_seed(3))
        assert xw.shape == (N, target.dim) and xw.dtype == torch.float32
        assert log_w.shape == (N,) and not torch.isnan(log_w).any()

    # Same seed, fresh sampler and target: identical samples.
    _, _, fit_evals2, x2 = _fit_and_sample(cls, targets.get(target_name), seed=11)
    assert fit_evals2 == fit_evals
    assert torch.equal(x, x2), "two fits with the same generator seed must give identical samples"
