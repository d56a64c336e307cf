"""Every sampler honours every ``Budget`` field and says which one stopped it (issue 9).

For each registered sampler (on GMM-40 and DW-4, with its ``tiny_config`` and its own
``max_iters`` / ``max_outer`` lifted so that only the budget can end the fit):

* ``max_seconds`` tiny: the fit returns at once, spends no more than one step would, and reports
  ``budget_binding == "seconds"``;
* ``max_steps=k``: binding ``"steps"`` and exactly ``k`` steps as the sampler counts them;
* ``max_energy_evals``: binding ``"energy_evals"`` and never a single evaluation over the cap;
* a budget below one step: a ``warnings`` entry saying so;

plus ``Config.validate()`` (field-first messages), the MCMC acceptance health (a frozen MALA/HMC is
flagged, a default one is not) and the ``BudgetClock.binding`` bookkeeping itself.
"""
from __future__ import annotations

import dataclasses
import math
import time

import pytest
import torch

import samplers
import targets
from samplers import Budget
from samplers.base import BudgetClock
from samplers.dem import DEMConfig

TARGETS = ("gmm40", "dw4")
MCMC = ("mala", "hmc", "rwm", "smc")


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one thread avoids OpenMP contention on the shared 2-core machine (without
    it the PIS/DDS cases here take 10-80 s each instead of well under one)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _package_samplers() -> list[str]:
    return [n for n in samplers.names() if samplers.get(n).__module__.startswith("samplers.")]


def _cases():
    for s in _package_samplers():
        for t in TARGETS:
            yield pytest.param(s, t, id=f"{s}-{t}")


def _config(cls, target):
    """The tiny config with the sampler's own iteration caps removed: only the budget stops it."""
    cfg = cls.tiny_config(target)
    lift = {f: None for f in ("max_iters", "max_outer") if hasattr(cfg, f)}
    return dataclasses.replace(cfg, **lift)


def _fit(name, target_name, budget, seed=0):
    cls, target = samplers.get(name), targets.get(target_name)
    sampler = cls(_config(cls, target))
    e0 = target.counter.energy_evals
    t0 = time.perf_counter()
    info = sampler.fit(target, budget, torch.Generator().manual_seed(seed))
    return sampler, info, target.counter.energy_evals - e0, time.perf_counter() - t0


# ----------------------------------------------------------------------------- the three caps
@pytest.mark.parametrize("name, target_name", list(_cases()))
def test_tiny_max_seconds_stops_at_once(name, target_name):
    # One step first: the same spending bound, and one-off costs (lazy imports, first kernels)
    # out of the timed fit.
    _, one, one_step_evals, _ = _fit(name, target_name, Budget(max_steps=1))
    assert one["budget_binding"] == "steps"
    _, info, evals, wall = _fit(name, target_name, Budget(max_seconds=1e-9))
    assert info["budget_binding"] == "seconds"
    assert wall < 1.0, f"{name} ran {wall:.2f} s under max_seconds=1e-9"
    assert evals <= one_step_evals, (evals, one_step_evals)
    assert info["steps"] <= 1
    if info["steps"] == 0:
        assert any("below one" in w for w in info["warnings"]), info["warnings"]


@pytest.mark.parametrize("name, target_name", list(_cases()))
def test_max_steps_binds_after_exactly_k_steps(name, target_name):
    _, info, _, _ = _fit(name, target_name, Budget(max_steps=3))
    assert info["budget_binding"] == "steps"
    assert info["steps"] == 3
    assert not any("below one" in w for w in info["warnings"])


@pytest.mark.parametrize("name, target_name", list(_cases()))
def test_energy_cap_binds_and_is_never_exceeded(name, target_name):
    cap = 3001  # not a multiple of any batch: a sampler that rounds up would overshoot
    _, info, evals, _ = _fit(name, target_name, Budget(max_energy_evals=cap, max_steps=10_000))
    assert info["budget_binding"] == "energy_evals"
    assert evals <= cap
    assert info.get("energy_evals", evals) == evals
    assert info["steps"] >= 1


@pytest.mark.parametrize("name, target_name", list(_cases()))
def test_budget_below_one_step_warns(name, target_name):
    cls = samplers.get(name)
    cfg = _config(cls, targets.get(target_name))
    # MCMC/SMC need the chains' initial evaluation (below it they raise); the others can stop
    # before spending anything.
    cap = cfg.n_chains + 1 if name in MCMC else 1
    _, info, evals, _ = _fit(name, target_name, Budget(max_energy_evals=cap))
    assert info["steps"] == 0 and evals <= cap
    assert info["budget_binding"] == "energy_evals"
    assert info["warnings"] and "budget below one" in info["warnings"][0], info["warnings"]
    assert "max_energy_evals=" in info["warnings"][0]


def test_an_ended_fit_says_none():
    """A fit ended by the sampler's own iteration cap reports binding "none"."""
    cls, t = samplers.get("pis"), targets.get("gmm40")
    info = cls(cls.tiny_config(t)).fit(t, Budget(max_steps=1000), torch.Generator().manual_seed(0))
    assert info["budget_binding"] == "none" and info["steps"] == cls.tiny_config(t).max_iters


# ----------------------------------------------------------------------------- regressions
def test_idem_estimator_start_stops_on_max_seconds():
    """The bug of issue 9: iDEM's estimator-driven GMM start (n_init x steps x n_mc evaluations,
    512 M with the paper's values) ignored max_seconds=1e-9 and ran for a minute. Here a start of
    128 x 1000 x 50 = 6.4 M evaluations (one SDE step: 6,400, ~3 ms; the whole start ~3 s
    here), which the time cap must stop within a step or so. The first SDE step of a process
    costs ~3 s once (first use of the estimator's noise kernels at that shape), hence the loose
    wall bound of the first 0.2 s fit; the second one must stop on time."""
    cls, t = samplers.get("idem"), targets.get("gmm40")
    _fit("idem", "gmm40", Budget(max_steps=1))  # one-off start-up costs out of the timed fits
    cfg = dataclasses.replace(cls.tiny_config(t), gmm_init="estimator", n_init=128, n_mc=50,
                              n_integration_steps=1000, buffer_min=64)
    full = 128 * 50 * 1000
    for budget, max_wall in ((Budget(max_seconds=1e-9), 1.0), (Budget(max_seconds=0.2), 10.0),
                             (Budget(max_seconds=0.2), 1.0)):
        e0, t0 = t.counter.energy_evals, time.perf_counter()
        info = cls(cfg).fit(t, budget, torch.Generator().manual_seed(0))
        wall, evals = time.perf_counter() - t0, t.counter.energy_evals - e0
        assert wall < max_wall, wall
        assert evals < full // 2, evals  # measured: 0, 6,400, 416,000 of 6.4 M
        assert info["budget_binding"] == "seconds"
        assert info["init"].startswith("prior (estimator-driven start stopped by max_seconds")
        assert any("estimator-driven start stopped" in w for w in info["warnings"])


def test_idem_steps_are_optimiser_steps_across_outer_iterations():
    cls, t = samplers.get("idem"), targets.get("gmm40")
    cfg = dataclasses.replace(cls.tiny_config(t), max_outer=None)  # n_inner = 5 steps per outer
    info = cls(cfg).fit(t, Budget(max_steps=12), torch.Generator().manual_seed(0))
    assert info["steps"] == 12 and info["budget_binding"] == "steps"
    assert info["outer_iterations"] == 2  # the third outer iteration was cut after 2 steps


@pytest.mark.parametrize("name", ["pis", "dds"])
def test_pis_dds_fit_stays_under_the_cap_and_sampling_is_charged_after_it(name):
    """The smoke grid's 219,912 evaluations under max_energy_evals=200,000 are fit + sampling:
    fit 148 steps x 64 paths x 21 evaluations = 198,912 <= 200,000, then the runner's
    log_weights(1000) costs 1000 x (20 + 1) = 21,000 more (the score at every SDE step and the
    terminal energy; sample() skips the terminal energy). Here the same arithmetic, smaller."""
    cls, t = samplers.get(name), targets.get("gmm40")
    cfg = cls.Config(n_steps=20, batch_size=64, hidden=32, n_layers=1, sample_batch=500)
    s = cls(cfg)
    e0 = t.counter.energy_evals
    info = s.fit(t, Budget(max_energy_evals=20_000), torch.Generator().manual_seed(0))
    fit_evals = t.counter.energy_evals - e0
    assert fit_evals == info["steps"] * 64 * 21 == (20_000 // (64 * 21)) * 64 * 21 <= 20_000
    assert info["budget_binding"] == "energy_evals"
    before = t.counter.energy_evals
    s.log_weights(100, torch.Generator().manual_seed(1))
    assert t.counter.energy_evals - before == 100 * 21
    before = t.counter.energy_evals
    s.sample(100, torch.Generator().manual_seed(1))
    assert t.counter.energy_evals - before == 100 * 20


# ----------------------------------------------------------------------------- BudgetClock
class _Counted:
    class counter:
        energy_evals = 0


def test_budget_clock_binding():
    t = _Counted()
    clock = BudgetClock(Budget(max_energy_evals=100, max_steps=5), t)
    assert clock.binding == "none" and not clock.exhausted(0)
    assert clock.allows(50, record=False) and clock.binding == "none"
    assert not clock.allows(101, record=False) and clock.binding == "none"  # a probe records nothing
    assert not clock.allows(101) and clock.binding == "energy_evals"
    clock = BudgetClock(Budget(max_energy_evals=100, max_steps=5), t)
    assert clock.exhausted(5) and clock.binding == "steps"
    t.counter.energy_evals = 100  # energy and steps both hit: the deterministic energy cap wins
    assert clock.exhausted(5) and clock.binding == "energy_evals"
    t.counter.energy_evals = 0
    clock = BudgetClock(Budget(max_seconds=1e-9), t)
    assert clock.out_of_time() and clock.binding == "none"  # a pure query
    assert clock.exhausted(0) and clock.binding == "seconds" and clock.cap() == "max_seconds=1e-09"


# ----------------------------------------------------------------------------- validate()
BAD_VALUES = {  # field -> values every sampler having that field must refuse
    "step_size": [-1.0, 0.0, math.nan, math.inf],
    "n_chains": [0, -3, 2.5, True],
    "batch_size": [0, 1.5],
    "n_steps": [0],
    "n_mc": [0],
    "lr": [-1e-3, math.nan],
    "target_accept": [0.0, 1.0, math.nan],
    "init": ["foo"],
    "kernel": ["hmc"],
    "network": ["transformer"],
    "schedule": ["linear"],
    "device": ["gpu0", "tpu"],
}


def _bad_cases():
    for s in _package_samplers():
        fields = {f.name for f in dataclasses.fields(samplers.get(s).Config)}
        for field, values in BAD_VALUES.items():
            if field in fields:
                for v in values:
                    yield pytest.param(s, field, v, id=f"{s}-{field}={v!r}")


@pytest.mark.parametrize("name, field, value", list(_bad_cases()))
def test_validate_refuses_bad_values_naming_the_field(name, field, value):
    cls = samplers.get(name)
    cfg = dataclasses.replace(cls.Config(), **{field: value})
    with pytest.raises(ValueError) as exc:
        cfg.validate()
    msg = str(exc.value)
    assert msg.startswith(f"{field}: got {value!r}"), msg
    assert "expected" in msg or "allowed" in msg, msg
    with pytest.raises(ValueError, match=f"^{name}\\.{field}: got"):  # __init__ validates too
        cls(cfg)


@pytest.mark.parametrize("name", _package_samplers())
def test_validate_accepts_defaults_and_tiny_configs(name):
    cls = samplers.get(name)
    cls.Config().validate()
    for t in TARGETS:
        cls.tiny_config(targets.get(t)).validate()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
@pytest.mark.parametrize("name", _package_samplers())
def test_validate_refuses_cuda_without_a_gpu(name):
    cls = samplers.get(name)
    with pytest.raises(ValueError, match=r"^device: got 'cuda' but torch.cuda.is_available\(\) is "
                                         r"False; allowed: cpu"):
        cls.Config(device="cuda").validate()


def test_validate_messages_say_what_is_allowed():
    mala = samplers.get("mala").Config
    with pytest.raises(ValueError, match=r"^step_size: got -1.0; expected a finite number > 0"):
        mala(step_size=-1.0).validate()
    with pytest.raises(ValueError, match=r"^init: got 'foo'; allowed: prior, lattice"):
        mala(init="foo").validate()
    with pytest.raises(ValueError, match=r"^n_chains: got 0; expected a positive integer"):
        mala(n_chains=0).validate()
    with pytest.raises(ValueError, match=r"^warmup_fraction: got 1.0; expected a number in \[0, 1\)"):
        mala(warmup_fraction=1.0).validate()
    with pytest.raises(ValueError, match=r"^buffer_min: got 500; expected <= buffer_size=100"):
        DEMConfig(buffer_min=500, buffer_size=100).validate()


# ----------------------------------------------------------------------------- MCMC health
def _mcmc(name, target_name, **kw):
    cls, t = samplers.get(name), targets.get(target_name)
    cfg = cls.Config(n_chains=32, thinning=2, n_leapfrog=3, **kw)
    return cls(cfg).fit(t, Budget(max_steps=60), torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", ["mala", "hmc"])
def test_frozen_chains_are_flagged(name):
    """A huge fixed step on LJ-13 rejects every move: acceptance 0, and the row says so."""
    info = _mcmc(name, "lj13", step_size=50.0, adapt=False)
    assert info["acceptance_mean"] < 0.01 and info["acceptance_min"] <= info["acceptance_mean"]
    assert any(w.startswith("acceptance ") and "below 1 %: the chains are frozen" in w
               for w in info["warnings"]), info["warnings"]


@pytest.mark.parametrize("name, target_name", [(n, t) for n in MCMC for t in ("gmm40", "lj13")])
def test_default_chains_accept_in_a_sane_range(name, target_name):
    info = _mcmc(name, target_name) if name != "smc" else samplers.get("smc")(
        samplers.get("smc").Config(n_chains=32, steps_per_temp=5, thinning=2)).fit(
        targets.get(target_name), Budget(max_steps=60), torch.Generator().manual_seed(0))
    assert 0.1 < info["acceptance_mean"] < 0.99, info["acceptance_mean"]
    assert 0 <= info["acceptance_min"] <= info["acceptance_mean"]
    assert not any("frozen" in w for w in info["warnings"])


# ----------------------------------------------------------------------------- merged from 05441e1
# Exact spending of the tiny configs on GMM-40 (no quench, prior starts): (evaluations spent
# before the first step, cost of one step). MCMC and SMC evaluate their n_chains=16 starts first.
STEP_COSTS = {
    "mala": (16, 16), "rwm": (16, 16), "hmc": (16, 16 * 3), "smc": (16, 16),
    "pis": (0, 16 * 11), "dds": (0, 16 * 11),             # batch 16 x (10 SDE steps + terminal)
    "fab": (0, 32 * (1 + 2 * 2)),                          # one AIS round: 32 x (1 + K=2 x L=2)
    "idem": (0, 32 * 8), "pdem": (0, 32 * 8),              # B x K
}
FAB_ROUNDS_BEFORE_STEPS = 4  # buffer_min 128 = 4 AIS rounds of 32 before the first gradient step
# (tiny_config: 4 updates x 32 distinct draws per round need 128 points, buffer_sampling default)


def _fit_with(name, target_name, budget, **overrides):
    cls, target = samplers.get(name), targets.get(target_name)
    cfg = dataclasses.replace(_config(cls, target), **overrides)
    info = cls(cfg).fit(target, budget, torch.Generator().manual_seed(0))
    return info, target.counter.energy_evals


@pytest.mark.parametrize("name", sorted(STEP_COSTS))
def test_k_steps_spend_exactly_their_documented_cost(name):
    info, evals = _fit_with(name, "gmm40", Budget(max_steps=3))
    assert info["steps"] == 3 and info["budget_binding"] == "steps"
    start, step = STEP_COSTS[name]
    expected = FAB_ROUNDS_BEFORE_STEPS * step if name == "fab" else start + 3 * step
    assert evals == expected, (evals, expected)


@pytest.mark.parametrize("name", sorted(STEP_COSTS))
def test_energy_cap_stops_only_when_one_more_step_would_not_fit(name):
    cap = 3001
    info, evals = _fit_with(name, "gmm40", Budget(max_energy_evals=cap))
    assert info["budget_binding"] == "energy_evals"
    assert evals <= cap < evals + STEP_COSTS[name][1], evals


@pytest.mark.parametrize("name", sorted(STEP_COSTS))
def test_budget_one_evaluation_short_of_a_step_warns_naming_the_cap(name):
    start, step = STEP_COSTS[name]
    cap = start + step - 1
    info, evals = _fit_with(name, "gmm40", Budget(max_energy_evals=cap))
    assert info["steps"] == 0 and evals <= cap and info["budget_binding"] == "energy_evals"
    text = " ".join(info["warnings"])
    assert "budget below one" in text and f"max_energy_evals={cap}" in text, text


def test_fab_buffer_filling_without_a_gradient_step_warns():
    # One AIS round fits, the second (of the 4 needed to reach buffer_min) does not: no step.
    info, _ = _fit_with("fab", "gmm40", Budget(max_energy_evals=2 * STEP_COSTS["fab"][1] - 1))
    assert info["ais_rounds"] == 1 and info["steps"] == 0
    assert any("untrained flow" in w and "buffer_min=128" in w and "~4 AIS rounds" in w
               for w in info["warnings"]), info["warnings"]


@pytest.mark.parametrize("name,field,value", [("pis", "max_iters", 2), ("dds", "max_iters", 2),
                                              ("fab", "max_iters", 2), ("idem", "max_outer", 1),
                                              ("pdem", "max_outer", 1)])
def test_own_iteration_limit_reports_binding_none(name, field, value):
    info, _ = _fit_with(name, "gmm40", Budget(max_steps=1000, max_energy_evals=10 ** 9),
                        **{field: value})
    assert info["budget_binding"] == "none" and info["warnings"] == []


def test_default_mala_on_lj13_accepts_between_30_and_90_percent():
    cls, t = samplers.get("mala"), targets.get("lj13")
    info = cls(cls.Config(n_chains=32)).fit(t, Budget(max_steps=300),
                                            torch.Generator().manual_seed(0))
    assert 0.3 < info["acceptance_mean"] < 0.9, info["acceptance_mean"]   # measured 0.55
    assert 0.0 <= info["acceptance_min"] <= info["acceptance_mean"]
    assert not any("below 1 %" in w for w in info["warnings"])
