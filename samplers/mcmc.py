"""MCMC baselines: random-walk Metropolis (``rwm``), MALA (``mala``) and HMC (``hmc``).

Thin shells around the pure kernels of :mod:`samplers.kernels`: ``n_chains`` chains run in
parallel; the step size is adapted by dual averaging during warm-up only and then frozen (so the
post-warm-up chain is a time-homogeneous Markov chain that leaves the target invariant); every
``thinning``-th post-warm-up state of every chain goes into a sample pool from which ``sample(n)``
draws. A *step* (``Budget.max_steps``) is one MCMC transition of all chains (warm-up included);
it costs ``n_chains`` energy-and-gradient evaluations (HMC: ``n_leapfrog · n_chains``), plus
``n_chains`` once to initialise (and DW-4's quench steps, which are not steps). The energy cap is
never exceeded: a step runs only if ``clock.allows`` its cost; ``max_seconds`` is checked before
every transition and every quench step. A budget below one evaluation of the chains raises
ValueError; one that allows the initial evaluation but no transition returns the starts with a
``warnings`` entry. Health in the info: ``acceptance_mean`` / ``acceptance_min`` (over chains,
post-warm-up steps, or all steps when none was post-warm-up; NaN with no step) and a warning when
the mean is below 1 % (frozen chains, e.g. a huge fixed ``step_size`` with ``adapt=False``).

``rwm`` follows the ICLR 2025 blog's MCMC baseline (reference-idem.md §1.1 A): Metropolis with a
symmetric Gaussian proposal and the tuned, fixed proposal std DW-4 0.5, LJ-13 0.025 (Klein et al.),
LJ-55 0.0075, GMM 1.25. MALA and HMC adapt toward acceptance 0.574 (Roberts & Rosenthal 1998) and
0.8 (Stan's default) from per-target starting step sizes.

Warm-up length: ``warmup_fraction`` of the steps the budget allows (energy or step cap), capped at
``max_warmup_steps``; with only a time cap, ``warmup_fraction`` of ``max_seconds``.

Initialisation (``init``, per-target default in ``samplers.starts.INIT_DEFAULTS``): ``"prior"``
draws from :func:`samplers.starts.prior_for` (GMM-40: uniform on [-45, 45]^2; particles: mean-free Gaussian);
``"lattice"`` (LJ) places the particles on the sites of a cubic lattice with spacing 1 (the LJ pair
minimum) nearest to a random centre, randomly rotated and jittered by ``init_scale``, so no pair
starts in the repulsive wall (random Gaussian starts overlap and then reject every move).
DW-4 starts are then quenched by a short displacement-capped gradient descent (``QUENCH_DEFAULTS``,
its evaluations are charged to the budget), see :func:`samplers.starts.quench`.

``device="cuda"`` runs the chains on a GPU with a generator there seeded once from ``fit``'s;
the pool and ``sample`` output stay CPU float32.

Continuation (``state_dict`` / ``load_state_dict`` before ``fit``): the chains, pool, loop counts,
dual-averaging state and the fit generator's state are saved, and a fit after a load continues
them with its budget (the remainder, runners/cell.py). The warm-up is planned as a single fit of
the whole budget would plan it, so a continued fit equals one fit of the larger budget bit for
bit when the earlier fit ended inside its warm-up, ran no step, or both plans give the same
warm-up (capped by ``max_warmup_steps``). When the earlier fit had finished a shorter warm-up,
warm-up is reopened up to the new plan (``run_chains``): the chains then differ from one fit
only by the steps the earlier fit ran with its frozen step size (docs/budgets.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from . import kernels, register
from .base import (Budget, acceptance_warning, below_one_step_warning, check_bool, check_choice,
                   check_device, check_finite, check_int, check_positive, check_range, validated)
from .starts import (INIT_DEFAULTS, INITS, PRIOR_DEFAULTS, QUENCH_DEFAULTS, QUENCH_FALLBACK,
                     device_generator, initial_positions, is_particle, quench, resolve_device)

# Starting step sizes per kernel and target (RWM: proposal std; MALA: Langevin step h with noise
# sqrt(2h); HMC: leapfrog step). RWM values are the blog's tuned ones and stay fixed by default.
STEP_DEFAULTS = {
    "rwm": {"gmm40": 1.25, "dw4": 0.5, "lj13": 0.025, "lj55": 0.0075},
    "mala": {"gmm40": 0.5, "dw4": 0.05, "lj13": 0.005, "lj55": 0.003},
    "hmc": {"gmm40": 0.5, "dw4": 0.1, "lj13": 0.02, "lj55": 0.015},
}
FALLBACK_STEP = {"rwm": 0.5, "mala": 0.1, "hmc": 0.1}  # targets not listed above
TARGET_ACCEPT = {"rwm": 0.234, "mala": 0.574, "hmc": 0.8}


@dataclass
class MCMCConfig:
    """Shared MCMC settings. ``None`` = per-target default (STEP_DEFAULTS, INIT_DEFAULTS)."""

    n_chains: int = 1024
    step_size: float | None = None      # starting value if adapt, else fixed
    adapt: bool = True                  # dual averaging during warm-up only, then frozen
    target_accept: float | None = None  # None: kernel default (TARGET_ACCEPT)
    warmup_fraction: float = 0.5
    max_warmup_steps: int | None = 5000
    thinning: int = 10
    pool_size: int = 100_000            # most recent thinned states kept (FIFO)
    n_leapfrog: int = 10                # HMC only
    init: str | None = None             # "prior" | "lattice"
    init_scale: float | None = None
    quench_steps: int | None = None     # None: QUENCH_DEFAULTS (DW-4 50, others 0)
    device: str = "cpu"                 # chains live here; the pool and samples are CPU float32

    def validate(self) -> None:
        """Raise ValueError (message starts with the field name) for any value out of range."""
        for f in ("n_chains", "thinning", "pool_size", "n_leapfrog"):
            check_int(f, getattr(self, f))
        for f in ("max_warmup_steps", "quench_steps"):
            check_int(f, getattr(self, f), minimum=0, optional=True)
        check_range("warmup_fraction", self.warmup_fraction, 0, 1, low_open=False)
        check_positive("step_size", self.step_size, optional=True)
        check_positive("init_scale", self.init_scale, optional=True)
        check_range("target_accept", self.target_accept, 0, 1, optional=True)
        check_bool("adapt", self.adapt)
        check_choice("init", self.init, INITS, optional=True)
        check_device("device", self.device)


@dataclass
class RWMConfig(MCMCConfig):
    adapt: bool = False  # the blog's tuned fixed proposal std


class _MCMCSampler:
    kernel: ClassVar[str]
    has_log_prob: ClassVar[bool] = False
    network_evals: ClassVar[int] = 0  # no networks: generation costs energy evaluations only
    Config: ClassVar[type] = MCMCConfig

    def __init__(self, config=None):
        cfg = config if config is not None else self.Config()
        if not isinstance(cfg, MCMCConfig):
            raise TypeError(f"{self.name}: config must be a {self.Config.__name__}, "
                            f"got {type(cfg).__name__}")
        self.config = validated(cfg, self.name)
        self.pool: torch.Tensor | None = None
        self.target = None
        self._pending_state: dict | None = None
        self._saved: dict | None = None  # what state_dict returns (set at the end of fit)

    @classmethod
    def tiny_config(cls, target):
        """A configuration that fits and samples in well under a second (contract tests)."""
        return cls.Config(n_chains=16, thinning=2, max_warmup_steps=5, n_leapfrog=3)

    # ------------------------------------------------------------------ public API
    def fit(self, target, budget: Budget, generator: torch.Generator) -> dict[str, Any]:
        if not isinstance(budget, Budget):
            raise TypeError(f"{self.name}.fit: budget must be a Budget, got {type(budget).__name__}")
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"{self.name}.fit: generator must be a torch.Generator, "
                            f"got {type(generator).__name__}")
        cfg, c = self.config, self.config.n_chains
        self.target = target
        dev = resolve_device(cfg.device, self.name)
        clock = budget.start(target)
        if self._pending_state is not None:  # continue the chains of a state_dict
            saved, self._pending_state = self._pending_state, None
            return self._continue(target, saved, budget, clock, device_generator(generator, dev))
        if not clock.allows(c):
            raise ValueError(f"{self.name}: budget max_energy_evals={budget.max_energy_evals} is "
                             f"below one evaluation of n_chains={c} chains; lower n_chains")
        init, scale = INIT_DEFAULTS.get(target.name, ("prior", None))
        init = cfg.init or init
        scale = cfg.init_scale or scale or PRIOR_DEFAULTS.get(target.name, ("", 1.0))[1]
        x0 = initial_positions(target, c, init, scale, generator).to(dev)
        n_q, lr, cap = QUENCH_DEFAULTS.get(target.name, QUENCH_FALLBACK)
        n_q = n_q if cfg.quench_steps is None else cfg.quench_steps
        project = target.remove_mean if is_particle(target) else None
        # Keep room for the initial evaluation of the state after the quench.
        x0, n_q = quench(x0, target.energy_and_grad, n_q, lr, cap, project,
                         lambda n: clock.allows(n + c, record=False) and not clock.exhausted())
        state = kernels.init(x0, target.energy_and_grad)
        self._check(state, "initial state")
        return self._run(target, state, budget, clock, device_generator(generator, dev),
                         {"init": init, "init_scale": scale, "quench_steps": n_q})

    # ------------------------------------------------------------------ continuation
    def state_dict(self) -> dict[str, Any]:
        """Chains, step size, dual-averaging state, pool, loop counts and the fit generator's
        state after ``fit``: a later ``fit`` after ``load_state_dict`` continues the same chains
        (runners/cell.py: the next rung of a budget ladder, or a preempted cell)."""
        if self._saved is None:
            raise RuntimeError(f"{self.name}.state_dict: call fit first")
        return {**self._saved, "generator": self._gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Before ``fit``: the next ``fit`` continues these chains with its (remaining) budget.
        After ``fit``: the pool is restored at once (``sample`` draws as before)."""
        if state.get("kernel") != self.kernel:
            raise ValueError(f"{self.name}.load_state_dict: the state is of kernel "
                             f"{state.get('kernel')!r}, not {self.kernel!r}")
        if self.pool is None:
            self._pending_state = state
        else:
            self._saved, self.pool = state, state["final_pool"]

    def _continue(self, target, saved, budget, clock, gen) -> dict[str, Any]:
        if saved["target"] != target.name:
            raise ValueError(f"{self.name}.fit: the loaded state is of target {saved['target']!r}, "
                             f"not {target.name!r}")
        gen.set_state(saved["generator"])
        dev = gen.device if gen.device.type != "cpu" else torch.device(self.config.device)
        state = kernels.State(*(t.to(dev) for t in saved["chain"]))
        pool = Pool(self.config.pool_size)
        pool.chunks, pool.rows = list(saved["pool_chunks"]), saved["pool_rows"]
        return self._run(target, state, budget, clock, gen, dict(saved["info"]),
                         resume={"carry": saved["carry"], "adapter": saved["adapter"],
                                 "pool": pool})

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``[n, dim]`` float32 states from the pool, without replacement when ``n`` <= pool size
        (``fit`` info ``pool_size``), otherwise with replacement."""
        if self.pool is None:
            raise RuntimeError(f"{self.name}.sample: call fit first")
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"{self.name}.sample: n must be a positive int, got {n!r}")
        m = self.pool.shape[0]
        idx = (torch.randperm(m, generator=generator)[:n] if n <= m
               else torch.randint(m, (n,), generator=generator))
        x = self.pool[idx]
        return (self.target.remove_mean(x) if is_particle(self.target) else x).float()

    # ------------------------------------------------------------------ the loop
    def _step(self, state, eg, h, gen, project):
        if self.kernel == "hmc":
            return kernels.hmc_step(state, eg, h, self.config.n_leapfrog, gen, project)
        return getattr(kernels, f"{self.kernel}_step")(state, eg, h, gen, project)

    def _check(self, state, what):
        check_finite(state.energy, f"{self.name}: energy of the {what}")
        check_finite(state.x, f"{self.name}: positions of the {what}")

    def _plan_warmup(self, budget: Budget, cost: int, done: int = 0) -> tuple[float, float]:
        """(warm-up steps, warm-up seconds) from the budget; inf where that cap is absent.
        ``done``: steps run before a continued fit, whose budget is the remainder (so the plan
        is the one a single fit of the whole budget makes)."""
        cfg = self.config
        planned = math.inf
        if budget.max_energy_evals is not None:
            planned = done + (budget.max_energy_evals - self._spent) // cost
        if budget.max_steps is not None:
            planned = min(planned, budget.max_steps)
        steps = math.ceil(cfg.warmup_fraction * planned) if planned < math.inf else math.inf
        if cfg.max_warmup_steps is not None:
            steps = min(steps, cfg.max_warmup_steps)
        secs = cfg.warmup_fraction * budget.max_seconds if budget.max_seconds is not None else math.inf
        if steps == math.inf and secs == math.inf:  # no cap to take a fraction of
            steps = 1000
        return steps, secs

    def _run(self, target, state, budget, clock, gen, info, resume=None) -> dict[str, Any]:
        cfg = self.config
        cost = cfg.n_chains * (cfg.n_leapfrog if self.kernel == "hmc" else 1)
        project = target.remove_mean if is_particle(target) else None
        h = cfg.step_size or STEP_DEFAULTS[self.kernel].get(target.name, FALLBACK_STEP[self.kernel])
        accept_target = cfg.target_accept or TARGET_ACCEPT[self.kernel]
        adapter = kernels.Adapter(h, accept_target) if cfg.adapt else None
        carry = None
        if resume is not None:
            carry = resume["carry"]
            if adapter is not None and resume["adapter"] is not None:
                adapter.state = resume["adapter"]
        self._spent = clock.energy_evals
        warm_steps, warm_secs = self._plan_warmup(budget, cost, carry["step"] if carry else 0)
        if cfg.warmup_fraction == 0:
            warm_steps = 0
        pool = resume["pool"] if resume is not None else Pool(cfg.pool_size)
        run = run_chains(state, lambda st, h_: self._step(st, target.energy_and_grad, h_, gen, project),
                         h, clock, cost, pool, cfg.thinning, adapter, warm_steps, warm_secs,
                         check=self._check, carry=carry)
        state, h = run.pop("state"), run["step_size"]
        self._gen = gen
        self._saved = {"kernel": self.kernel, "target": target.name, "info": info,
                       "chain": tuple(t.detach().cpu() for t in state), "carry": run.pop("carry"),
                       "adapter": adapter.state if adapter is not None else None,
                       "pool_chunks": list(pool.chunks), "pool_rows": pool.rows}
        if not pool.chunks:
            pool.add(state.x)
        self.pool = self._saved["final_pool"] = pool.tensor()
        self.step_size = h
        warnings = []
        if run["steps"] == 0:
            warnings.append(below_one_step_warning(
                clock, "MCMC step", cost, "the samples are the chains' starting points"))
        elif run["post_warmup_steps"] < cfg.thinning:
            warnings.append(f"no post-warm-up state entered the pool ({run['post_warmup_steps']} "
                            f"post-warm-up steps < thinning={cfg.thinning}; budget {clock.cap()}): "
                            f"the samples are the final chain states")
        frozen = acceptance_warning(run["acceptance_mean"])
        if frozen:
            warnings.append(frozen)
        return {**info, **run, "adapted": adapter is not None, "target_accept": accept_target,
                "n_chains": cfg.n_chains, "n_leapfrog": cfg.n_leapfrog if self.kernel == "hmc" else None,
                "pool_size": int(self.pool.shape[0]), "pool_source": (
                    "thinned post-warm-up states" if run["post_warmup_steps"] >= cfg.thinning
                    else "final chain states (no post-warm-up draw)"),
                "pool_note": "sample(n) draws without replacement if n <= pool_size, else with replacement",
                "final_energy_mean": float(state.energy.mean()),
                "energy_evals": clock.energy_evals, "seconds": clock.seconds,
                "budget_binding": clock.binding, "warnings": warnings}


class Pool:
    """FIFO store of thinned states ``[C, D]`` chunks, keeping the latest ``max_size`` rows."""

    def __init__(self, max_size: int):
        self.max_size, self.chunks, self.rows = int(max_size), [], 0

    def add(self, x: torch.Tensor) -> None:
        self.chunks.append(x.detach().to("cpu", torch.float32, copy=True))
        self.rows += x.shape[0]
        while self.rows - self.chunks[0].shape[0] >= self.max_size:
            self.rows -= self.chunks.pop(0).shape[0]

    def tensor(self) -> torch.Tensor:
        return torch.cat(self.chunks)[-self.max_size:]


def run_chains(state, step_fn, h, clock, cost: int, pool: Pool, thinning: int, adapter=None,
               warm_steps: float = 0, warm_secs: float = math.inf, check=None,
               steps_done: int = 0, carry: dict | None = None) -> dict[str, Any]:
    """The shared loop: ``state, acc = step_fn(state, h)`` while the budget allows ``cost`` more
    evaluations. The first ``warm_steps`` steps (or ``warm_secs`` seconds) are warm-up: ``adapter``
    (if any) updates h after each, and at the end h is frozen at ``adapter.final()``. Afterwards
    every ``thinning``-th state goes into ``pool``. ``steps_done`` steps spent before this loop
    count toward ``Budget.max_steps``. Returns the final state, step size and counts, and the
    acceptance: ``acceptance`` / ``acceptance_min_chain`` over post-warm-up steps (None without
    any), ``acceptance_mean`` / ``acceptance_min`` (over chains) over the post-warm-up steps, or
    over all steps when none was post-warm-up (NaN without any step).

    ``carry`` (the ``"carry"`` of an earlier return, with the same ``pool`` and ``adapter``)
    continues that loop where it stopped: counts, acceptance sums, the live step size and a
    warm-up that the budget had cut (it goes on to ``warm_steps``), as if it had never stopped.
    A warm-up that had ended before ``warm_steps`` (planned on a smaller budget) is reopened:
    adaptation resumes from the adapter's state up to ``warm_steps`` and the states pooled
    after the short warm-up are dropped; only the frozen steps in between differ from one fit."""
    step, warmup_done, post = 0, 0, 0
    warming = warm_steps > 0
    accepted = torch.zeros(state.x.shape[0], device=state.x.device)
    accepted_all = torch.zeros_like(accepted)
    if carry is not None:
        step, warmup_done, post, warming, h = (carry["step"], carry["warmup_done"], carry["post"],
                                               carry["warming"], carry["h"])
        accepted, accepted_all = carry["accepted"].to(accepted), carry["accepted_all"].to(accepted)
        warming = warming and step < warm_steps
        if not warming and carry["warming"]:  # the plan is already reached: freeze now
            warmup_done, h = step, adapter.final() if adapter is not None else h
        elif not carry["warming"] and warmup_done < warm_steps and step < warm_steps:
            # The fit below froze a shorter warm-up (a smaller budget plans a shorter one): warm
            # up again until this budget's plan, from the dual-averaging state it reached, and
            # drop what it pooled since, so the chains leave warm-up where one fit would.
            warming, post = True, 0
            h = adapter.state.step_size if adapter is not None else h
            accepted = torch.zeros_like(accepted)
            pool.chunks.clear()
            pool.rows = 0
    while not clock.exhausted(steps_done + step) and clock.allows(cost):
        state, acc = step_fn(state, h)
        step += 1
        accepted_all += acc.float()
        if check is not None:
            check(state, f"chains after step {step}")
        if warming:
            if adapter is not None:
                h = adapter.update(float(acc.float().mean()))
            if step >= warm_steps or clock.seconds >= warm_secs:
                warming, warmup_done = False, step
                h = adapter.final() if adapter is not None else h
            continue
        post += 1
        accepted += acc.float()
        if post % thinning == 0:
            pool.add(state.x)
    live = {"step": step, "warmup_done": warmup_done, "post": post, "warming": warming, "h": h,
            "accepted": accepted.cpu(), "accepted_all": accepted_all.cpu()}
    if warming:  # the budget ended inside warm-up: freeze what adaptation reached
        warmup_done = step
        h = adapter.final() if adapter is not None else h
    return {"state": state, "carry": live, "steps": step, "warmup_steps": warmup_done,
            "post_warmup_steps": post,
            "step_size": h, "acceptance": float(accepted.mean() / post) if post else None,
            "acceptance_min_chain": float(accepted.min() / post) if post else None,
            "acceptance_mean": (float(accepted.mean() / post) if post else
                                float(accepted_all.mean() / step) if step else math.nan),
            "acceptance_min": (float(accepted.min() / post) if post else
                               float(accepted_all.min() / step) if step else math.nan)}


@register
class MALA(_MCMCSampler):
    name = "mala"
    pretty_name = "MALA"
    kernel = "mala"


@register
class HMC(_MCMCSampler):
    name = "hmc"
    pretty_name = "HMC"
    kernel = "hmc"


@register
class RWM(_MCMCSampler):
    name = "rwm"
    pretty_name = "MCMC (RWM)"
    kernel = "rwm"
    Config = RWMConfig
