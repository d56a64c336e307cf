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
from targets.base import Target


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


# ----------------------------------------------------------------------------- config and errors
class Flat(Target):
    """E = ``level`` everywhere on R^2 (inf: no configuration is allowed)."""

    name, pretty_name = "flat", "Flat"

    def __init__(self, level=0.0):
        super().__init__(dim=2, params={})
        self.level = level

    def _energy(self, x):
        return torch.full(x.shape[:-1], self.level, dtype=x.dtype)

    def _energy_and_grad(self, x):
        return self._energy(x), torch.zeros_like(x)


# The messages follow samplers/base.py's contract "<field>: got <value>; expected/allowed ...",
# which names the field a user must fix and what it may be (house style, habit 12).
POSITIVE_INT, OPEN_UNIT = "expected a positive integer", "expected a number in (0, 1)"
DEFAULT = " (or None for the default)"
BAD = [
    ("n_chains", 0, POSITIVE_INT), ("steps_per_temp", 0, POSITIVE_INT),
    ("max_temps", 1.5, POSITIVE_INT), ("thinning", 0, POSITIVE_INT),
    ("pool_size", True, POSITIVE_INT), ("n_fixed_temps", 0, POSITIVE_INT),
    ("kernel", "hmc", "allowed: mala, rwm"), ("schedule", "geometric", "allowed: adaptive, fixed"),
    ("cess_fraction", 1.0, OPEN_UNIT), ("cess_fraction", 0.0, OPEN_UNIT),
    ("resample_threshold", 1.0, OPEN_UNIT), ("resample_threshold", 0.0, OPEN_UNIT),
    ("step_size", 0.0, "expected a finite number > 0" + DEFAULT),
    ("prior_scale", -1.0, "expected a finite number > 0" + DEFAULT),
    ("target_accept", 1.0, OPEN_UNIT + DEFAULT), ("target_accept", 0.0, OPEN_UNIT + DEFAULT),
    ("adapt", 1, "expected true or false"), ("continue_mcmc", "no", "expected true or false"),
    ("device", "gpu0", "expected a torch device string: cpu, or cuda (cuda:N) on a machine "
                       "with a GPU"),
]


@pytest.mark.parametrize("field, value, expected", BAD)
def test_config_errors_name_the_field_the_value_and_what_is_allowed(field, value, expected):
    from samplers.smc import SMC, SMCConfig
    with pytest.raises(ValueError) as err:
        SMC(SMCConfig(**{field: value}))
    assert str(err.value) == f"smc.{field}: got {value!r}; {expected}"


def test_config_accepts_values_just_inside_every_bound():
    from samplers.smc import SMCConfig
    for v in (1e-6, 1 - 1e-6):
        SMCConfig(cess_fraction=v, resample_threshold=v, target_accept=v).validate()
    SMCConfig(n_chains=1, steps_per_temp=1, max_temps=1, thinning=1, pool_size=1, n_fixed_temps=1,
              step_size=1e-9, prior_scale=1e-9, kernel="rwm", schedule="fixed", adapt=False,
              continue_mcmc=False).validate()


def test_fit_and_sample_refuse_wrong_arguments_with_their_reason():
    from samplers import Budget, Diverged
    from samplers.smc import SMC, SMCConfig
    with pytest.raises(TypeError, match="^smc: config must be a SMCConfig, got dict$"):
        SMC({"n_chains": 4})
    s = SMC(SMCConfig(n_chains=8))
    with pytest.raises(RuntimeError, match="^smc.sample: call fit first$"):
        s.sample(3, torch.Generator())
    with pytest.raises(TypeError, match="^smc.fit: budget must be a Budget, got int$"):
        s.fit(Flat(), 10, torch.Generator())
    with pytest.raises(TypeError, match="^smc.fit: generator must be a torch.Generator, got int$"):
        s.fit(Flat(), Budget(max_steps=3), 0)
    with pytest.raises(ValueError, match=r"^smc: budget max_energy_evals=7 is below one evaluation "
                                         r"of n_chains=8 particles; lower n_chains$"):
        s.fit(Flat(), Budget(max_energy_evals=7), torch.Generator())
    with pytest.raises(Diverged, match="^smc: target energies of the prior draws are NaN or all "
                                       "infinite$"):   # all infinite, none NaN
        s.fit(Flat(math.inf), Budget(max_steps=3), torch.Generator())
    s.fit(Flat(), Budget(max_steps=3), torch.Generator().manual_seed(0))
    for n in (0, 2.0):
        with pytest.raises(ValueError, match=f"^smc.sample: n must be a positive int, got {n!r}$"):
            s.sample(n, torch.Generator())


def test_sample_draws_pool_rows_without_replacement_up_to_the_pool_size():
    from samplers import Budget
    from samplers.smc import SMC, SMCConfig
    s = SMC(SMCConfig(n_chains=8, thinning=1, steps_per_temp=1))
    info = s.fit(Flat(), Budget(max_steps=6), torch.Generator().manual_seed(0))
    pool = s.pool
    m = pool.shape[0]
    assert m == 8 * (1 + info["mcmc_steps"]) > 8   # the final population, then every MCMC state
    for n in (5, m):    # a permutation of distinct rows: torch.randperm's first n
        x = s.sample(n, torch.Generator().manual_seed(1))
        assert x.dtype == torch.float32 and x.shape == (n, 2)
        idx = torch.randperm(m, generator=torch.Generator().manual_seed(1))[:n]
        assert torch.equal(x, pool[idx])
    x = s.sample(m + 1, torch.Generator().manual_seed(1))    # more than the pool: with replacement
    idx = torch.randint(m, (m + 1,), generator=torch.Generator().manual_seed(1))
    assert torch.equal(x, pool[idx])


def test_tiny_config_uses_rwm_moves_on_lj55_only():
    import targets
    from samplers.smc import SMC
    assert SMC.tiny_config(targets.get("lj55")).kernel == "rwm"
    assert SMC.tiny_config(targets.get("lj13")).kernel == "mala"
    assert SMC.tiny_config(None).kernel == "mala"


def test_next_beta_always_moves_forward():
    """When even the smallest step drops the CESS below target, next_beta still returns β + 1e-12
    (a schedule that returned β would stall until max_temps)."""
    de = torch.tensor([0.0, 1e20, 1e20, 1e20], dtype=torch.float64)
    b = next_beta(0.3, torch.zeros(4), de, 0.99)
    ulp = math.ulp(0.3)   # the smallest step above 0.3 already has CESS 1/4
    assert _cess(0.3 + ulp, 0.3, np.zeros(4), de.numpy()) < 0.99 and b > 0.3


def test_defaults_and_the_per_target_default_step():
    import targets
    from samplers import Budget
    from samplers.mcmc import STEP_DEFAULTS
    from samplers.smc import SMC, SMCConfig
    assert SMC().config == SMCConfig()
    info = SMC(SMCConfig(n_chains=8, adapt=False, steps_per_temp=1)).fit(
        targets.get("gmm40"), Budget(max_steps=2), torch.Generator().manual_seed(0))
    assert info["step_size"] == STEP_DEFAULTS["mala"]["gmm40"] == 0.5


def test_max_steps_counts_every_move_in_tempering_and_after():
    from samplers import Budget
    from samplers.smc import SMC, SMCConfig
    for spt in (3, 4):   # the cap falls inside a temperature's moves, then in the MCMC phase
        t = Flat()
        info = SMC(SMCConfig(n_chains=8, steps_per_temp=spt)).fit(
            t, Budget(max_steps=5), torch.Generator().manual_seed(0))
        assert info["steps"] == info["smc_steps"] + info["mcmc_steps"] == 5
        assert t.counter.energy_evals == info["energy_evals"] == 8 * 6


def test_budget_below_one_move_warns_once_and_reports_no_acceptance():
    from samplers import Budget
    from samplers.smc import SMC, SMCConfig
    s = SMC(SMCConfig(n_chains=8))
    info = s.fit(Flat(), Budget(max_energy_evals=8 + 7), torch.Generator().manual_seed(0))
    assert info["steps"] == 0 and info["smc_acceptance_last"] is None
    assert math.isnan(info["acceptance_mean"]) and math.isnan(info["acceptance_min"])
    assert len(info["warnings"]) == 1
    assert info["warnings"][0].startswith(
        "budget below one SMC move: the samples are prior draws importance-resampled to the "
        "target in one jump (no move ran) (one SMC move costs ~8 energy evaluations; budget "
        "max_energy_evals=15, 8 evaluations and ")
    assert s.sample(8, torch.Generator()).shape == (8, 2)


def test_frozen_chains_are_a_warning():
    from samplers import Budget
    from samplers.smc import SMC, SMCConfig
    cfg = SMCConfig(n_chains=8, kernel="rwm", step_size=1e6, adapt=False, prior_scale=0.1)
    info = SMC(cfg).fit(Flat(), Budget(max_steps=20), torch.Generator().manual_seed(0))
    # every proposal lands ~1e6 away, where the tempered prior N(0, 0.1^2) rejects it; the 20
    # steps all fall in the first temperature's moves (steps_per_temp 20)
    assert info["acceptance_mean"] < 0.01
    assert any(w.startswith(f"acceptance {info['acceptance_mean']:.3g} below 1 %: the chains are "
                            "frozen") for w in info["warnings"])


def test_no_warning_when_tempering_and_mcmc_moves_both_ran():
    from samplers import Budget
    from samplers.smc import SMC, SMCConfig
    cfg = SMCConfig(n_chains=8, kernel="rwm", step_size=0.5, schedule="fixed", n_fixed_temps=1,
                    steps_per_temp=3)
    info = SMC(cfg).fit(Flat(), Budget(max_steps=6), torch.Generator().manual_seed(0))
    assert info["smc_steps"] == info["mcmc_steps"] == 3 and info["warnings"] == []
