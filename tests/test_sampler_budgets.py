"""Every registered sampler honours every Budget field and says what stopped it.

For each sampler of the ``samplers`` package on GMM-40 (and DW-4 for the time cap), with its tiny
contract-test configuration and its own iteration cap removed (so only the budget can stop it):

* ``max_seconds`` tiny: ``fit`` returns at once, spends at most the start-up evaluations, reports
  ``budget_binding == "seconds"`` and a below-one-step warning;
* ``max_steps=k``: exactly k steps as the sampler counts them, binding ``"steps"``, and exactly the
  documented spending of k steps (``STEP_COSTS``);
* ``max_energy_evals``: never exceeded (plus the sampler's declared ``budget_slack_evals``), and
  stopped only when one more step would not fit, binding ``"energy_evals"``;
* a budget below one step: a non-empty ``warnings`` entry that says so;
* the sampler's own limit (``max_iters`` / ``max_outer``): binding ``"none"``.

Plus ``Config.validate()`` (field name first in the message, before any work) and the MCMC health
keys (a frozen MALA/HMC on LJ-13 is flagged, a default MALA is not).
"""
from __future__ import annotations

import dataclasses
import math
import time

import pytest
import torch

import samplers
import targets
from samplers import BINDINGS, Budget

K_STEPS = 3
CAP = 3001  # not a multiple of any step cost below

# Energy evaluations of the tiny configs on GMM-40 (no quench, prior starts): (spent before the
# first step, cost of one step). MCMC and SMC evaluate their n_chains=16 starts first.
STEP_COSTS = {
    "mala": (16, 16), "rwm": (16, 16), "hmc": (16, 16 * 3), "smc": (16, 16),
    "pis": (0, 16 * 11), "dds": (0, 16 * 11),             # batch 16 x (10 SDE steps + terminal)
    "fab": (0, 32 * (1 + 2 * 2)),                          # one AIS round: 32 x (1 + K=2 x L=2)
    "idem": (0, 32 * 8), "pdem": (0, 32 * 8),              # B x K
}
# Spending of exactly K_STEPS steps on GMM-40 where it is not start + K_STEPS x step cost.
FAB_ROUNDS_FOR_3_STEPS = 2  # buffer_min 64 = 2 rounds of 32 before the first gradient step


def _package_samplers() -> list[str]:
    return [n for n in samplers.names() if samplers.get(n).__module__.startswith("samplers.")]


def _config(cls, target_name: str):
    """The tiny contract config without the sampler's own iteration cap."""
    cfg = cls.tiny_config(targets.get(target_name))
    own = {f: None for f in ("max_iters", "max_outer") if hasattr(cfg, f)}
    return dataclasses.replace(cfg, **own)


def _fit(name: str, target_name: str, budget: Budget, **overrides):
    cls = samplers.get(name)
    target = targets.get(target_name)
    cfg = dataclasses.replace(_config(cls, target_name), **overrides)
    t0 = time.perf_counter()
    info = cls(cfg).fit(target, budget, torch.Generator().manual_seed(0))
    return info, target.counter.energy_evals, time.perf_counter() - t0


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def warm():
    """One short fit per sampler first, so one-time library start-up is not timed below."""
    for name in _package_samplers():
        _fit(name, "dw4", Budget(max_steps=1))


def _assert_health_keys(info: dict):
    assert info["budget_binding"] in BINDINGS
    assert isinstance(info["warnings"], list) and all(isinstance(w, str) for w in info["warnings"])


# ----------------------------------------------------------------------------- BudgetClock
class _Counted:
    class counter:  # noqa: N801 - the shape of targets' counters
        energy_evals = 0


def test_clock_records_the_binding_cap():
    t = _Counted()
    clock = Budget(max_energy_evals=10, max_steps=5, max_seconds=1e9).start(t)
    assert clock.binding == "none" and not clock.exhausted(0) and clock.binding == "none"
    assert not clock.allows(11, record=False) and clock.binding == "none"  # a probe records nothing
    assert not clock.allows(11) and clock.binding == "energy_evals"
    clock = Budget(max_steps=5).start(t)
    assert not clock.exhausted(4) and clock.exhausted(5) and clock.binding == "steps"
    clock = Budget(max_seconds=1e-9, max_steps=5).start(t)
    assert clock.out_of_time() and clock.binding == "none"  # a pure query
    assert clock.exhausted(0) and clock.binding == "seconds"
    assert clock.exhausted(5) and clock.binding == "steps"  # deterministic caps win ties
    t.counter.energy_evals = 10
    clock = Budget(max_energy_evals=10, max_seconds=1e-9).start(t)
    t.counter.energy_evals = 20
    assert clock.exhausted(0) and clock.binding == "energy_evals"
    assert "max_energy_evals=10" in clock.cap()


# ----------------------------------------------------------------------------- each Budget field
@pytest.mark.parametrize("target_name", ["gmm40", "dw4"])
@pytest.mark.parametrize("name", _package_samplers())
def test_tiny_max_seconds_stops_at_once(name, target_name, warm):
    info, evals, wall = _fit(name, target_name, Budget(max_seconds=1e-6))
    _assert_health_keys(info)
    assert info["budget_binding"] == "seconds", info["budget_binding"]
    assert wall < 2.0, wall
    assert evals <= STEP_COSTS.get(name, (64, 0))[0], evals  # at most the starts' evaluations
    assert any("below one" in w for w in info["warnings"]), info["warnings"]


def test_idem_time_cap_interrupts_the_estimator_driven_start(warm):
    """The iDEM bug of issue 9: Budget(max_seconds=1e-9) spent the whole estimator-driven GMM
    start (512 M evaluations by default). Now the start stops before its first SDE step."""
    info, evals, wall = _fit("idem", "gmm40", Budget(max_seconds=1e-9), gmm_init="estimator",
                             n_integration_steps=200, n_mc=32)
    assert evals == 0 and wall < 2.0 and info["budget_binding"] == "seconds"
    assert info["init"].startswith("prior (estimator-driven start stopped by max_seconds")
    assert any("estimator-driven start stopped" in w for w in info["warnings"])


@pytest.mark.parametrize("name", _package_samplers())
def test_max_steps_gives_exactly_k_steps(name, warm):
    info, evals, _ = _fit(name, "gmm40", Budget(max_steps=K_STEPS))
    _assert_health_keys(info)
    assert info["budget_binding"] == "steps"
    assert info["steps"] == K_STEPS
    assert not any("below one" in w for w in info["warnings"])
    if name == "fab":
        assert evals == FAB_ROUNDS_FOR_3_STEPS * STEP_COSTS["fab"][1]
    elif name in STEP_COSTS:
        start, step = STEP_COSTS[name]
        assert evals == start + K_STEPS * step, evals


@pytest.mark.parametrize("name", _package_samplers())
def test_energy_cap_is_respected_and_binding(name, warm):
    info, evals, _ = _fit(name, "gmm40", Budget(max_energy_evals=CAP))
    _assert_health_keys(info)
    assert info["budget_binding"] == "energy_evals"
    slack = int(getattr(samplers.get(name), "budget_slack_evals", 0))
    assert evals <= CAP + slack
    if name in STEP_COSTS:  # stopped only because one more step would not fit
        assert evals + STEP_COSTS[name][1] > CAP, evals


@pytest.mark.parametrize("name", _package_samplers())
def test_budget_below_one_step_warns(name, warm):
    start, step = STEP_COSTS.get(name, (16, 10 ** 9))
    info, evals, _ = _fit(name, "gmm40", Budget(max_energy_evals=start + step - 1))
    _assert_health_keys(info)
    assert info["steps"] == 0 and evals <= start + step - 1
    assert info["budget_binding"] == "energy_evals"
    text = " ".join(info["warnings"])
    assert "below one" in text and f"max_energy_evals={start + step - 1}" in text, text


def test_fab_buffer_filling_without_a_gradient_step_warns(warm):
    # One AIS round fits, the second (needed to reach buffer_min) does not: no gradient step.
    info, evals, _ = _fit("fab", "gmm40", Budget(max_energy_evals=2 * STEP_COSTS["fab"][1] - 1))
    assert info["ais_rounds"] == 1 and info["steps"] == 0
    assert any("untrained flow" in w and "buffer_min=64" in w for w in info["warnings"])


@pytest.mark.parametrize("name,field,value", [("pis", "max_iters", 2), ("dds", "max_iters", 2),
                                              ("fab", "max_iters", 2), ("pdem", "max_outer", 1)])
def test_own_limit_is_binding_none(name, field, value, warm):
    info, _, _ = _fit(name, "gmm40", Budget(max_steps=1000), **{field: value})
    assert info["budget_binding"] == "none" and info["warnings"] == []


# ----------------------------------------------------------------------------- Config.validate
def _cfg(name: str, **fields):
    return samplers.get(name).Config(**fields)


@pytest.mark.parametrize("name", _package_samplers())
def test_default_configs_validate(name):
    assert samplers.get(name).Config().validate() is None


STEP_SIZE_SAMPLERS = ["mala", "hmc", "rwm", "smc", "fab"]
N_CHAINS_SAMPLERS = ["mala", "hmc", "rwm", "smc"]


@pytest.mark.parametrize("name", STEP_SIZE_SAMPLERS)
@pytest.mark.parametrize("bad", [-1.0, 0.0, math.nan, math.inf])
def test_validate_refuses_bad_step_size(name, bad):
    with pytest.raises(ValueError, match=r"^step_size: got .*; expected a finite number > 0"):
        _cfg(name, step_size=bad).validate()


@pytest.mark.parametrize("name", N_CHAINS_SAMPLERS)
def test_validate_refuses_zero_chains(name):
    with pytest.raises(ValueError, match=r"^n_chains: got 0; expected a positive integer"):
        _cfg(name, n_chains=0).validate()


@pytest.mark.parametrize("name", _package_samplers())
def test_validate_refuses_unavailable_devices(name):
    with pytest.raises(ValueError, match=r"^device: got 'tpu0'"):
        _cfg(name, device="tpu0").validate()
    if torch.cuda.is_available():
        _cfg(name, device="cuda").validate()
    else:
        with pytest.raises(ValueError, match=r"^device: got 'cuda' but torch.cuda.is_available\(\) "
                                             r"is False; allowed: cpu"):
            _cfg(name, device="cuda").validate()


@pytest.mark.parametrize("name,field,bad,allowed", [
    ("mala", "init", "foo", "prior, lattice"), ("hmc", "init", "grid", "prior, lattice"),
    ("smc", "kernel", "hmc", "mala, rwm"), ("dds", "schedule", "linear", "cos_sq, uniform"),
    ("idem", "network", "transformer", "mlp, egnn"), ("pdem", "gmm_init", "flow", "estimator, prior"),
])
def test_validate_refuses_unknown_choices(name, field, bad, allowed):
    with pytest.raises(ValueError, match=rf"^{field}: got '{bad}'; allowed: {allowed}"):
        _cfg(name, **{field: bad}).validate()


@pytest.mark.parametrize("name,field,bad", [
    ("mala", "target_accept", 1.0), ("mala", "warmup_fraction", 1.0), ("mala", "thinning", 0),
    ("mala", "quench_steps", -1), ("mala", "adapt", "yes"), ("smc", "cess_fraction", math.nan),
    ("pis", "n_steps", 0), ("pis", "lr", math.nan), ("pis", "t_final", -1.0), ("pis", "sigma", 0.0),
    ("dds", "lambda_total", math.inf), ("dds", "batch_size", 2.5), ("fab", "buffer_min", 10 ** 6),
    ("fab", "target_accept", 0.0), ("idem", "n_mc", 0), ("idem", "lr", -1e-3),
    ("idem", "sigma_max", math.nan), ("pdem", "grad_clip", -0.5), ("idem", "n_inner", None),
])
def test_validate_refuses_out_of_range(name, field, bad):
    with pytest.raises(ValueError, match=rf"^{field}: got "):
        _cfg(name, **{field: bad}).validate()


@pytest.mark.parametrize("name", ["mala", "smc", "pis", "fab", "idem"])
def test_constructor_validates_before_any_work(name):
    field, bad = {"mala": ("n_chains", 0), "smc": ("step_size", -1.0), "pis": ("n_steps", 0),
                  "fab": ("lr", math.nan), "idem": ("n_mc", 0)}[name]
    with pytest.raises(ValueError, match=rf"^{name}\.{field}: got "):
        samplers.get(name)(_cfg(name, **{field: bad}))


# ----------------------------------------------------------------------------- MCMC health
@pytest.mark.parametrize("name", ["mala", "hmc"])
def test_frozen_chains_are_flagged(name):
    t = targets.get("lj13")
    cls = samplers.get(name)
    cfg = cls.Config(n_chains=16, step_size=50.0, adapt=False, n_leapfrog=3, thinning=2)
    info = cls(cfg).fit(t, Budget(max_steps=40), torch.Generator().manual_seed(0))
    assert info["acceptance_mean"] < 0.01 and info["acceptance_min"] <= info["acceptance_mean"]
    frozen = [w for w in info["warnings"] if "below 1 %" in w]
    assert frozen and "the chains are frozen, samples are close to their starts" in frozen[0]


def test_default_mala_acceptance_is_sane():
    t = targets.get("lj13")
    cls = samplers.get("mala")
    info = cls(cls.Config(n_chains=32)).fit(t, Budget(max_steps=300), torch.Generator().manual_seed(0))
    assert 0.3 < info["acceptance_mean"] < 0.9, info["acceptance_mean"]
    assert 0.0 <= info["acceptance_min"] <= info["acceptance_mean"]
    assert not any("below 1 %" in w for w in info["warnings"])


@pytest.mark.parametrize("name", ["mala", "hmc", "rwm", "smc"])
def test_acceptance_keys_are_floats_in_range(name):
    info, _, _ = _fit(name, "dw4", Budget(max_steps=12))
    for key in ("acceptance_mean", "acceptance_min"):
        assert isinstance(info[key], float) and 0.0 <= info[key] <= 1.0, (key, info[key])
