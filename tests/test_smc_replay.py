"""SMC.fit (samplers/smc.py) replayed draw for draw against a transcription of its docstring.

The statistical SMC tests (test_mcmc.py, test_quality.py) see only log Z and sample moments, and
both stay right for many wrong loops: never resampling between temperatures, one temperature more
or less, a schedule that starts at 2/K, an adaptation rule off by a sign. mutmut showed those
surviving (docs/testing.md). Here the same generator drives a loop written from the docstring, with
the tempered energies recomputed from scratch at every move (not carried over from the proposal as
fit does), the ESS, weights and log Z in numpy, and the budget counted in moves; every number fit
reports and every pooled state must agree.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import targets
from samplers import Budget, kernels
from samplers.smc import SMC, SMCConfig, next_beta
from samplers.starts import prior_for
from targets.base import Target


class Tilted(Target):
    """2-D Gaussian N(m, diag(v)) away from the prior's centre, so the weights degenerate."""

    name = "tilted"
    pretty_name = "Tilted"

    def __init__(self):
        super().__init__(dim=2, params={})
        self.m, self.v = torch.tensor([2.0, -1.0]), torch.tensor([0.5, 2.0])

    def _energy(self, x):
        return 0.5 * ((x - self.m.to(x)) ** 2 / self.v.to(x)).sum(-1)

    def _energy_and_grad(self, x):
        return self._energy(x), (x - self.m.to(x)) / self.v.to(x)


class Walled(Tilted):
    """Tilted with E = inf for x_0 > 2.5 (a hard wall inside the prior's reach)."""

    name = "walled"

    def _energy(self, x):
        return torch.where(x[..., 0] > 2.5, math.inf, super()._energy(x))

    def _energy_and_grad(self, x):
        e, g = super()._energy_and_grad(x)
        return torch.where(x[..., 0] > 2.5, math.inf, e), g


class Particles(Target):
    """3 particles in 2-D, E = ½ |x - x̄ - a|² / s² on the mean-free subspace (a mean-free)."""

    name = "particles"
    pretty_name = "Particles"

    def __init__(self):
        super().__init__(dim=6, params={})
        self.n_particles, self.spatial_dim = 3, 2
        self.a = self.remove_mean(torch.tensor([[1.0, 0.0, -0.5, 0.5, 0.0, 0.3]]))[0]

    def remove_mean(self, x):
        return targets.remove_mean(x, self.n_particles, self.spatial_dim)

    def _energy(self, x):
        return 0.5 * (self.remove_mean(x) - self.a.to(x)).pow(2).sum(-1) / 0.6 ** 2

    def _energy_and_grad(self, x):
        return self._energy(x), (self.remove_mean(x) - self.a.to(x)) / 0.6 ** 2


def replay(target, cfg: SMCConfig, n_moves: int, seed: int) -> dict:
    """SMC as its docstring states it, with a budget of C·(1 + n_moves) energy evaluations (the
    prior draws, then n_moves moves of all chains). ``cfg.step_size`` and ``target_accept`` must
    be set."""
    c, prior = cfg.n_chains, prior_for(target, cfg.prior_scale)
    gen = torch.Generator().manual_seed(seed)
    project = target.remove_mean if getattr(target, "n_particles", None) else None
    move = getattr(kernels, f"{cfg.kernel}_step")
    h = cfg.step_size

    def tempered(b):
        def eg(x):
            e0, g0 = prior.energy_and_grad(x)
            e1, g1 = target._energy_and_grad(x)
            return (1 - b) * e0 + b * e1, (1 - b) * g0 + b * g1
        return eg

    x = prior.sample(c, gen)
    log_w, beta, betas, log_z, min_ess = np.zeros(c), 0.0, [], 0.0, 1.0
    moves, accs, slots, resampled, truncated = 0, [], torch.zeros(c), [], False
    while beta < 1.0:
        de = (target._energy(x) - prior.energy_and_grad(x)[0]).double()
        if len(betas) >= cfg.max_temps or n_moves - moves < cfg.steps_per_temp:
            b, truncated = 1.0, True   # out of temperatures or budget: jump to the target
        elif cfg.schedule == "fixed":
            b = min(1.0, (len(betas) + 1) / cfg.n_fixed_temps)
        else:
            b = next_beta(beta, torch.tensor(log_w), de, cfg.cess_fraction)
        inc = -(b - beta) * de.numpy()
        w = np.exp(log_w - log_w.max())
        log_z += math.log((w / w.sum() * np.exp(inc)).sum())
        log_w, beta = log_w + inc, b
        betas.append(b)
        w = np.exp(log_w - log_w.max())
        ess = w.sum() ** 2 / (w ** 2).sum() / c
        min_ess = min(min_ess, ess)
        resampled.append(bool(ess < cfg.resample_threshold or b == 1.0))
        if resampled[-1]:
            x, log_w = x[kernels.systematic_resample(torch.tensor(log_w), gen)], np.zeros(c)
        if truncated:
            break
        for _ in range(cfg.steps_per_temp):
            state, acc = move(kernels.init(x, tempered(b)), tempered(b), h, gen, project)
            x, moves = state.x, moves + 1
            accs.append(float(acc.float().mean()))
            slots += acc.float()
            if cfg.adapt:
                h *= math.exp(accs[-1] - cfg.target_accept)
    pool, post, accepted = [x], 0, torch.zeros(c)
    if cfg.continue_mcmc:   # the rest of the budget: plain MCMC at the target, h frozen
        eg = target._energy_and_grad
        for _ in range(n_moves - moves):
            state, acc = move(kernels.init(x, eg), eg, h, gen, project)
            x, post = state.x, post + 1
            accepted += acc.float()
            if post % cfg.thinning == 0:
                pool.append(x)
    rate = accepted / post if post else slots / moves
    return {"betas": betas, "resampled": resampled, "log_z": log_z, "min_ess": min_ess,
            "moves": moves, "post": post, "h": h, "accs": accs, "pool": torch.cat(pool),
            "acc_mean": float(rate.mean()), "acc_min": float(rate.min()),
            "final_energy": float(target._energy(x).mean()), "truncated": truncated}


def _fit(target, cfg, n_moves, seed, monkeypatch):
    """SMC.fit with _Tempered and systematic_resample watched: the β of every move and which
    reweightings resampled."""
    import samplers.smc as smc
    seen = {"betas": [], "resampled": []}
    real, real_resample = smc._Tempered, kernels.systematic_resample

    class Watched(real):
        def __init__(self, prior, tgt, beta):
            seen["betas"].append(beta)
            super().__init__(prior, tgt, beta)

    def resample(log_w, gen):
        seen["resampled"].append(True)
        return real_resample(log_w, gen)
    monkeypatch.setattr(smc, "_Tempered", Watched)
    monkeypatch.setattr(smc.kernels, "systematic_resample", resample)
    s = SMC(cfg)
    info = s.fit(target, Budget(max_energy_evals=cfg.n_chains * (1 + n_moves)),
                 torch.Generator().manual_seed(seed))
    monkeypatch.undo()
    return s, info, seen


CASES = {
    # adaptive CESS schedule, MALA with Robbins-Monro step sizes, then MCMC at the target
    "adaptive-mala": (Tilted, dict(kernel="mala", step_size=0.3, target_accept=0.574,
                                   steps_per_temp=2, cess_fraction=0.8, resample_threshold=0.5,
                                   prior_scale=3.0, thinning=3), 40),
    # the blog's fixed schedule with RWM and no adaptation; no MCMC phase
    "fixed-rwm": (Tilted, dict(kernel="rwm", step_size=0.8, target_accept=0.234, adapt=False,
                               schedule="fixed", n_fixed_temps=4, steps_per_temp=3,
                               prior_scale=3.0, continue_mcmc=False), 40),
    # a schedule cut by max_temps: the population jumps to β = 1 without a move
    "max-temps": (Tilted, dict(kernel="mala", step_size=0.2, target_accept=0.574,
                               steps_per_temp=1, cess_fraction=0.9, max_temps=3,
                               prior_scale=3.0, thinning=2), 9),
    # a schedule cut by the energy budget, on a particle target (mean-free moves)
    # (fixed h: adapted over 8 moves it grows until the MCMC phase accepts nothing)
    "budget-particles": (Particles, dict(kernel="mala", step_size=0.1, target_accept=0.574,
                                         steps_per_temp=4, cess_fraction=0.95, adapt=False,
                                         prior_scale=2.0, thinning=1), 10),
    # a target with a wall: prior draws beyond it have E = inf and must get weight 0
    "walled": (Walled, dict(kernel="mala", step_size=0.2, target_accept=0.574,
                            steps_per_temp=2, cess_fraction=0.7, prior_scale=3.0), 20),
}
KEYS = {"log_z", "n_temps", "schedule_truncated", "smc_steps", "steps", "mcmc_steps",
        "smc_acceptance_last", "mcmc_acceptance", "min_ess_fraction", "step_size", "kernel",
        "prior", "n_chains", "pool_size", "pool_note", "final_energy_mean", "energy_evals",
        "seconds", "acceptance_mean", "acceptance_min", "budget_binding", "warnings"}


@pytest.mark.parametrize("case", sorted(CASES))
def test_fit_matches_the_transcribed_loop_draw_for_draw(case, monkeypatch):
    make, kw, n_moves = CASES[case]
    cfg = SMCConfig(n_chains=48, **kw)
    want = replay(make(), cfg, n_moves, seed=3)
    target = make()
    s, info, seen = _fit(target, cfg, n_moves, 3, monkeypatch)

    # the schedule: one reweighting per β, every β of a move, resampling exactly by the rule
    moved = [b for b in want["betas"] for _ in range(cfg.steps_per_temp)][:want["moves"]]
    assert seen["betas"] == sorted(set(moved)) and info["n_temps"] == len(want["betas"])
    assert len(seen["resampled"]) == sum(want["resampled"])
    assert info["schedule_truncated"] == want["truncated"]
    assert info["log_z"] == pytest.approx(want["log_z"], abs=1e-9)
    assert info["min_ess_fraction"] == pytest.approx(want["min_ess"], abs=1e-9)
    # the moves, the step size and the acceptance bookkeeping
    assert info["smc_steps"] == want["moves"] and info["mcmc_steps"] == want["post"]
    assert info["steps"] == want["moves"] + want["post"]
    assert info["step_size"] == pytest.approx(want["h"], rel=1e-12)
    last = pytest.approx(want["accs"][-1]) if want["accs"] else None
    assert info["smc_acceptance_last"] == last
    assert info["acceptance_mean"] == pytest.approx(want["acc_mean"], abs=1e-6)
    assert info["acceptance_min"] == pytest.approx(want["acc_min"], abs=1e-6)
    assert info["mcmc_acceptance"] == (pytest.approx(want["acc_mean"], abs=1e-6) if want["post"]
                                       else None)
    # the samples: the population after tempering, then every thinning-th MCMC state
    assert torch.allclose(s.pool, want["pool"].float(), atol=1e-5)
    assert info["pool_size"] == want["pool"].shape[0] and info["n_chains"] == cfg.n_chains
    assert info["final_energy_mean"] == pytest.approx(want["final_energy"], rel=1e-5)
    assert info["energy_evals"] == target.counter.energy_evals == cfg.n_chains * (
        1 + want["moves"] + want["post"])
    assert info["kernel"] == cfg.kernel and info["prior"] == f"gaussian({cfg.prior_scale:g})"
    assert set(info) == KEYS and info["seconds"] > 0


def test_the_cases_reach_the_branches_they_are_meant_to():
    """Guards the test above against cases that stopped exercising anything."""
    runs = {k: replay(m(), SMCConfig(n_chains=48, **kw), n, 3) for k, (m, kw, n) in CASES.items()}
    a, f, t, b, w = (runs[k] for k in ("adaptive-mala", "fixed-rwm", "max-temps",
                                       "budget-particles", "walled"))
    # resampling both below the threshold between temperatures and, always, at β = 1
    assert any(a["resampled"][:-1]) and not all(a["resampled"][:-1]) and a["resampled"][-1]
    assert a["post"] > 2 * 3 and not a["truncated"]
    assert f["betas"] == [0.25, 0.5, 0.75, 1.0] and f["moves"] == 12 and f["post"] == 0
    assert t["truncated"] and len(t["betas"]) == 4 and t["moves"] == 3 and t["post"] == 6
    assert b["truncated"] and b["moves"] == 8 and b["post"] == 2 and 0 < b["betas"][-2] < 1
    assert min(r["acc_mean"] for r in runs.values()) > 0.3     # the moves do move
    walls = (prior_for(Walled(), 3.0).sample(48, torch.Generator().manual_seed(3))[:, 0] > 2.5)
    assert 0 < int(walls.sum()) < 48 and not w["truncated"] and w["post"] > 0


def test_truncation_warnings_name_the_cause_and_the_temperatures():
    cfg = SMCConfig(n_chains=48, **CASES["max-temps"][1])
    info = SMC(cfg).fit(Tilted(), Budget(max_energy_evals=48 * 10),
                        torch.Generator().manual_seed(3))
    want = replay(Tilted(), cfg, 9, 3)
    msg = [w for w in info["warnings"] if "truncated" in w]
    assert msg == [f"tempering schedule truncated at beta={want['betas'][2]:.3g} after 3 "
                   "temperatures (max_temps): the population jumped to beta=1 by one "
                   "reweighting; log_z and the samples are unreliable"]
    cfg = SMCConfig(n_chains=48, **CASES["budget-particles"][1])
    info = SMC(cfg).fit(Particles(), Budget(max_energy_evals=48 * 11),
                        torch.Generator().manual_seed(3))
    assert any("after 2 temperatures (budget max_energy_evals=528)" in w for w in info["warnings"])
    assert info["budget_binding"] == "energy_evals"
