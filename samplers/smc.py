"""Annealed SMC (``smc``): a particle population moved from a prior p0 to the target with
log-linear tempering, π_β ∝ p0^(1-β) p̃^β, β from 0 to 1, and a log Z estimate.

Each iteration (Del Moral, Doucet & Jasra 2006; adaptive tempering as Jasra et al. 2011):

1. choose the next β' by bisection so that the conditional ESS (Zhou, Johansen & Aston 2016) of
   the incremental weights w_i = exp(-(β' - β)(E1(x_i) - E0(x_i))) is ``cess_fraction · C``
   (β' = 1 once that is possible); E1 = target energy, E0 = -log p0. This needs no new
   target evaluations: E1 at the current particles is known;
2. reweight, log Z += log Σ_i W_i w_i (W normalised), resample (systematic) when the ESS falls
   below ``resample_threshold · C`` and always at β = 1;
3. move: ``steps_per_temp`` MALA or RWM steps (:mod:`samplers.kernels`) that leave π_β' invariant.
   The step size follows a Robbins-Monro update log h += (acceptance - target) after each move,
   using the population's mean acceptance (adaptive SMC; h is frozen once β = 1).

After β = 1, the remaining budget runs the chains as plain MCMC at the target with the frozen
step size and thinned states go to the sample pool (the blog baseline: an SMC warm-up, reference-
idem.md §1.1 A, then long MCMC). If the budget ends before β = 1, the population jumps to β = 1 by
one final reweighting and resampling (no evaluations needed; ``schedule_truncated`` in the info).

``schedule="fixed"`` replaces step 1 by β_k = k / ``n_fixed_temps`` (k = 1..n_fixed_temps). The
ICLR 2025 blog's SMC baseline ("a need for a course correction", reference-idem.md §1.1 A) is
5 fixed intermediate distributions with 1000 Metropolis steps each (DW-4, LJ-13; LJ-55 10 x 2000),
then long MCMC: ``smc.schedule=fixed smc.n_fixed_temps=5 smc.kernel=rwm smc.steps_per_temp=1000
smc.adapt=false``. We read its
"5 intermediates" as 5 tempered distributions ending at the target; the adaptive schedule is ours.

log Z: the product of the weight means is an unbiased estimate of Z (the log is biased low by
about Var/2). Priors (:func:`samplers.starts.prior_for`): GMM-40 U([-45, 45]^2) (the blog's);
particles a mean-free Gaussian, so Z is the integral of exp(-E) over the mean-free subspace.
A step (``Budget.max_steps``) is one move of all chains (MALA or RWM transition, during tempering
or in the MCMC phase at β = 1), costing C evaluations; the C evaluations of the prior draws are
not a step. ``max_seconds`` and the energy cap are checked before every move. A budget below one
move returns the prior draws importance-resampled to β = 1, with a ``warnings`` entry; a truncated
schedule is a warning too. ``acceptance_mean`` / ``acceptance_min`` (over chains) are those of the
MCMC phase at β = 1 when it ran, else of the tempering moves (per particle slot).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from . import kernels, register
from .base import (Budget, Diverged, acceptance_warning, below_one_step_warning, check_bool,
                   check_choice, check_device, check_finite, check_int, check_positive,
                   check_range, validated)
from .mcmc import FALLBACK_STEP, STEP_DEFAULTS, TARGET_ACCEPT, Pool, run_chains
from .starts import device_generator, is_particle, prior_for, resolve_device

SMC_KERNELS = ("mala", "rwm")
SCHEDULES = ("adaptive", "fixed")


@dataclass
class SMCConfig:
    n_chains: int = 1024
    kernel: str = "mala"                # "mala" | "rwm"
    step_size: float | None = None      # starting value; None: samplers.mcmc.STEP_DEFAULTS
    adapt: bool = True
    target_accept: float | None = None  # None: 0.574 (MALA), 0.234 (RWM)
    steps_per_temp: int = 20
    schedule: str = "adaptive"          # "adaptive" (CESS bisection) | "fixed" (β_k = k / n_fixed_temps)
    n_fixed_temps: int = 5              # "fixed": tempered distributions, the last one the target
    cess_fraction: float = 0.8
    resample_threshold: float = 0.5
    max_temps: int = 10_000
    prior_scale: float | None = None    # None: samplers.starts.PRIOR_DEFAULTS
    continue_mcmc: bool = True          # after β = 1, spend the rest of the budget on MCMC
    thinning: int = 10
    pool_size: int = 100_000
    device: str = "cpu"                 # particles live here; the pool and samples are CPU float32

    def validate(self) -> None:
        """Raise ValueError ``"<field>: got <value>; expected/allowed ..."`` for a bad field."""
        for f in ("n_chains", "steps_per_temp", "max_temps", "thinning", "pool_size"):
            check_int(f, getattr(self, f))
        check_choice("kernel", self.kernel, SMC_KERNELS)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_int("n_fixed_temps", self.n_fixed_temps)
        check_range("cess_fraction", self.cess_fraction, 0, 1)
        check_range("resample_threshold", self.resample_threshold, 0, 1)
        check_positive("step_size", self.step_size, optional=True)
        check_positive("prior_scale", self.prior_scale, optional=True)
        check_range("target_accept", self.target_accept, 0, 1, optional=True)
        check_bool("adapt", self.adapt)
        check_bool("continue_mcmc", self.continue_mcmc)
        check_device("device", self.device)


class _Tempered:
    """energy_and_grad of π_β: U = (1-β) E0 + β E1 (exactly E1 at β = 1). Remembers the
    components at the last evaluated points so accepted moves keep E0, E1 without re-evaluation
    (every kernel's last call is at its proposal)."""

    def __init__(self, prior, target, beta: float):
        self.prior, self.target, self.beta = prior, target, beta

    def __call__(self, x):
        e1, g1 = self.target.energy_and_grad(x)
        e0, g0 = self.prior.energy_and_grad(x)
        self.last = (e0, g0, e1, g1)
        return combine(self.beta, e0, g0, e1, g1)


def combine(beta, e0, g0, e1, g1):
    if beta >= 1.0:
        return e1, g1
    # (1-β)·inf = inf outside a uniform prior's box, and 0·inf must not become NaN at β = 0.
    e = torch.where(torch.isinf(e0), e0, (1 - beta) * e0) + (beta * e1 if beta > 0 else 0.0)
    return e, (1 - beta) * g0 + beta * g1


def next_beta(beta: float, log_w: torch.Tensor, delta_e: torch.Tensor, target_cess: float) -> float:
    """The largest β' in (β, 1] with conditional ESS fraction >= ``target_cess`` (bisection).
    ``log_w`` ``[C]`` current log-weights, ``delta_e`` = E1 - E0 ``[C]``."""
    lw = torch.log_softmax(log_w.double(), 0)
    de = delta_e.double()

    def cess(b):
        inc = torch.where(torch.isfinite(de), -(b - beta) * de, torch.full_like(de, -math.inf))
        num = 2 * torch.logsumexp(lw + inc, 0)
        den = torch.logsumexp(lw + 2 * inc, 0)
        return float((num - den).exp()) if torch.isfinite(den) else 0.0

    if cess(1.0) >= target_cess:
        return 1.0
    lo, hi = beta, 1.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if cess(mid) >= target_cess else (lo, mid)
    return max(lo, beta + 1e-12)


@register
class SMC:
    name = "smc"
    pretty_name = "SMC"
    has_log_prob: ClassVar[bool] = False
    gives_log_z: ClassVar[bool] = True   # fit info "log_z" -> the row's log_z column
    network_evals: ClassVar[int] = 0     # no networks
    Config: ClassVar[type] = SMCConfig

    def __init__(self, config: SMCConfig | None = None):
        cfg = config if config is not None else SMCConfig()
        if not isinstance(cfg, SMCConfig):
            raise TypeError(f"smc: config must be a SMCConfig, got {type(cfg).__name__}")
        self.config = validated(cfg, "smc")
        self.pool = None
        self.target = None

    @classmethod
    def tiny_config(cls, target):
        """Fits and samples in well under a second (contract tests). LJ-55 uses RWM moves: in the
        check's 60 steps the schedule cannot temper LJ-55 from a Gaussian start, the population
        collapses onto one configuration, and MALA rejects every move from it (measured:
        acceptance 0, 1 distinct sample of 64; RWM: 26 distinct)."""
        kernel = "rwm" if getattr(target, "name", None) == "lj55" else "mala"
        return SMCConfig(n_chains=16, steps_per_temp=1, max_temps=40, thinning=2, kernel=kernel)

    def fit(self, target, budget: Budget, generator: torch.Generator) -> dict[str, Any]:
        if not isinstance(budget, Budget):
            raise TypeError(f"smc.fit: budget must be a Budget, got {type(budget).__name__}")
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"smc.fit: generator must be a torch.Generator, got {type(generator).__name__}")
        cfg, c = self.config, self.config.n_chains
        self.target = target
        dev = resolve_device(cfg.device, "smc")
        clock = budget.start(target)
        if not clock.allows(c):
            raise ValueError(f"smc: budget max_energy_evals={budget.max_energy_evals} is below one "
                             f"evaluation of n_chains={c} particles; lower n_chains")
        prior = prior_for(target, cfg.prior_scale)
        project = target.remove_mean if is_particle(target) else None
        step_fn = getattr(kernels, f"{cfg.kernel}_step")
        h = cfg.step_size or STEP_DEFAULTS[cfg.kernel].get(target.name, FALLBACK_STEP[cfg.kernel])
        accept_target = cfg.target_accept or TARGET_ACCEPT[cfg.kernel]

        x = prior.sample(c, generator).to(dev)
        gen = device_generator(generator, dev)
        e1, g1 = target.energy_and_grad(x)
        e0, g0 = prior.energy_and_grad(x)
        if torch.isnan(e1).any() or not torch.isfinite(e1).any():
            raise Diverged("smc: target energies of the prior draws are NaN or all infinite")
        log_w = torch.zeros(c, dtype=torch.float64, device=dev)
        log_z, beta, temps, steps, truncated = 0.0, 0.0, 0, 0, False
        accs, min_ess, truncated_at = [], 1.0, None
        acc_slots = torch.zeros(c, device=dev)  # accepted moves per particle slot (tempering)
        while beta < 1.0:
            budget_left = (temps < cfg.max_temps and not clock.exhausted(steps)
                           and clock.allows(cfg.steps_per_temp * c))
            if not budget_left and truncated_at is None:
                truncated_at = beta
                why = "max_temps" if temps >= cfg.max_temps else "budget " + clock.cap()
            if not budget_left:
                new_beta = 1.0
            elif cfg.schedule == "fixed":  # the blog's protocol: equally spaced β, no adaptation
                new_beta = min(1.0, (temps + 1) / cfg.n_fixed_temps)
            else:
                new_beta = next_beta(beta, log_w, e1 - e0, cfg.cess_fraction)
            truncated = truncated or not budget_left
            de = (e1 - e0).double()
            inc = torch.where(torch.isfinite(de), -(new_beta - beta) * de, torch.full_like(de, -math.inf))
            log_z += float(torch.logsumexp(torch.log_softmax(log_w, 0) + inc, 0))
            log_w, beta, temps = log_w + inc, new_beta, temps + 1
            if not math.isfinite(log_z):
                raise Diverged(f"smc: every particle has weight 0 at beta={beta:.3g}")
            ess = float(kernels.log_ess(log_w).exp()) / c
            min_ess = min(min_ess, ess)
            if ess < cfg.resample_threshold or beta >= 1.0:
                idx = kernels.systematic_resample(log_w, gen)
                x, e0, g0, e1, g1 = x[idx], e0[idx], g0[idx], e1[idx], g1[idx]
                log_w = torch.zeros(c, dtype=torch.float64, device=dev)
            if truncated:
                break
            tempered = _Tempered(prior, target, beta)
            state = kernels.State(x, *combine(beta, e0, g0, e1, g1))
            for _ in range(cfg.steps_per_temp):
                if clock.exhausted(steps) or not clock.allows(c):
                    break
                state, acc = step_fn(state, tempered, h, gen, project)
                steps += 1
                a = acc[:, None]
                p0, pg0, p1, pg1 = tempered.last
                e0, e1 = torch.where(acc, p0, e0), torch.where(acc, p1, e1)
                g0, g1 = torch.where(a, pg0, g0), torch.where(a, pg1, g1)
                accs.append(float(acc.float().mean()))
                acc_slots += acc.float()
                if cfg.adapt:
                    h *= math.exp(accs[-1] - accept_target)
            x = state.x
            check_finite(x, "smc: particle positions")
        # β = 1: plain MCMC with the frozen step size; the population is the first pool entry.
        pool = Pool(cfg.pool_size)
        pool.add(x)
        state = kernels.State(x, e1, g1)
        run = {"steps": 0, "post_warmup_steps": 0, "acceptance": None}
        if cfg.continue_mcmc:
            run = run_chains(state, lambda st, h_: step_fn(st, target.energy_and_grad, h_, gen, project),
                             h, clock, c, pool, cfg.thinning, steps_done=steps)
            state = run.pop("state")
            run.pop("carry")  # SMC does not continue (no state_dict)
        check_finite(state.energy, "smc: energies")
        self.pool = pool.tensor()
        smc_steps = steps
        if run.get("steps"):
            acc_mean, acc_min = run["acceptance_mean"], run["acceptance_min"]
        elif smc_steps:
            acc_mean = float(acc_slots.mean() / smc_steps)
            acc_min = float(acc_slots.min() / smc_steps)
        else:
            acc_mean = acc_min = math.nan
        warnings = []
        if smc_steps + run["steps"] == 0:
            warnings.append(below_one_step_warning(
                clock, "SMC move", c, "the samples are prior draws importance-resampled to the "
                "target in one jump (no move ran)"))
        if truncated and truncated_at is not None and truncated_at > 0:
            warnings.append(f"tempering schedule truncated at beta={truncated_at:.3g} after "
                            f"{temps - 1} temperatures ({why}): the population jumped to beta=1 "
                            f"by one reweighting; log_z and the samples are unreliable")
        frozen = acceptance_warning(acc_mean)
        if frozen:
            warnings.append(frozen)
        return {"log_z": log_z, "n_temps": temps, "schedule_truncated": truncated,
                "smc_steps": steps, "steps": steps + run["steps"], "mcmc_steps": run["steps"],
                "smc_acceptance_last": accs[-1] if accs else None, "mcmc_acceptance": run["acceptance"],
                "min_ess_fraction": min_ess, "step_size": h, "kernel": cfg.kernel,
                "prior": f"{prior.kind}({prior.scale:g})", "n_chains": c,
                "pool_size": int(self.pool.shape[0]),
                "pool_note": "final SMC population + thinned MCMC states at beta=1; sample(n) draws "
                             "without replacement if n <= pool_size, else with replacement",
                "final_energy_mean": float(state.energy.mean()),
                "energy_evals": clock.energy_evals, "seconds": clock.seconds,
                "acceptance_mean": acc_mean, "acceptance_min": acc_min,
                "budget_binding": clock.binding, "warnings": warnings}

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``[n, dim]`` float32 draws from the pool (without replacement when ``n`` <= pool size)."""
        if self.pool is None:
            raise RuntimeError("smc.sample: call fit first")
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"smc.sample: n must be a positive int, got {n!r}")
        m = self.pool.shape[0]
        idx = (torch.randperm(m, generator=generator)[:n] if n <= m
               else torch.randint(m, (n,), generator=generator))
        x = self.pool[idx]
        return (self.target.remove_mean(x) if is_particle(self.target) else x).float()
