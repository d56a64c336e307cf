"""Pure MCMC kernels for many chains in parallel (blackjax style: state + step functions).

Stable public names (other modules, e.g. ``runners/reference_chains.py``, rely on them):

* ``State(x [C, D], energy [C], grad [C, D])`` and ``init(x, energy_and_grad) -> State``
* ``rwm_step(state, energy_and_grad, step_size, generator, project=None) -> (State, accepted [C])``
* ``mala_step(state, energy_and_grad, step_size, generator, project=None) -> (State, accepted)``
* ``hmc_step(state, energy_and_grad, step_size, n_leapfrog, generator, project=None)
  -> (State, accepted)``
* step-size adaptation (dual averaging): ``DualAveraging``, ``dual_averaging_init(step_size)``,
  ``dual_averaging_update(da, accept_rate, target_accept) -> DualAveraging`` and the thin mutable
  wrapper ``Adapter(step_size, target_accept)`` with ``update(accept_rate) -> step size to use
  next`` and ``final() -> frozen step size`` (use during warm-up only, then freeze).
* SMC helpers: ``log_ess(log_w)``, ``systematic_resample(log_w, generator) -> indices``.

Conventions. ``C`` chains run in parallel (batch dimension first); ``energy_and_grad(x) -> (E [C],
∇E [C, D])`` is the ONLY way a kernel evaluates the target, so the caller passes
``target.energy_and_grad`` and the target counts every evaluation. Each call costs C energy
evaluations: ``rwm_step`` and ``mala_step`` call it once, ``hmc_step`` ``n_leapfrog`` times (the
gradient at the current state is carried in ``State``). ``step_size`` is a float or a ``[C]`` tensor
(per-chain). ``accepted`` is a bool tensor ``[C]``. A proposal whose energy or gradient is not finite
is rejected (its density is 0, or the integrator diverged); the current state never becomes
non-finite unless it started so.

Mean-free particles. Energies of particle systems are translation invariant, so samplers live on
the subspace sum_i x_i = 0. ``project`` (e.g. ``target.remove_mean``) is the orthogonal projection
P onto it; it is applied to the Gaussian noise / momentum and to the move. P ξ with ξ ~ N(0, I) is
a standard Gaussian on the subspace, so the RWM proposal stays symmetric, and since every vector in
the MALA/HMC acceptance ratios lies in the subspace, their full-space norms equal the subspace norms:
the MH corrections below are the exact ones for the target restricted to the subspace.

References: Metropolis et al. (1953); Roberts & Tweedie (1996) for MALA; Neal (2011), "MCMC using
Hamiltonian dynamics", for HMC; Hoffman & Gelman (2014, JMLR, Algorithm 5) for dual averaging.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, NamedTuple

import torch

EnergyAndGrad = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
Project = Callable[[torch.Tensor], torch.Tensor] | None


class State(NamedTuple):
    """Chains' positions ``x [C, D]``, energies ``E(x) [C]`` and gradients ``∇E(x) [C, D]``."""

    x: torch.Tensor
    energy: torch.Tensor
    grad: torch.Tensor


def init(x: torch.Tensor, energy_and_grad: EnergyAndGrad) -> State:
    """Evaluate energy and gradient once at ``x [C, D]`` (C energy evaluations)."""
    if x.ndim != 2:
        raise ValueError(f"init: x must have shape [chains, dim], got {tuple(x.shape)}")
    e, g = energy_and_grad(x)
    return State(x, e, g)


# ----------------------------------------------------------------------------- helpers
def _noise(like: torch.Tensor, generator: torch.Generator, project: Project) -> torch.Tensor:
    z = torch.randn(like.shape, generator=generator, dtype=like.dtype, device=like.device)
    return z if project is None else project(z)


def _col(step_size, like: torch.Tensor):
    """Scalar or ``[C]`` step size -> broadcastable against ``[C, D]`` (``[C, 1]``) and ``[C]``."""
    if isinstance(step_size, torch.Tensor):
        s = step_size.to(like.dtype)
        return s[:, None], s
    return step_size, step_size


def _mh(state: State, prop: State, log_ratio: torch.Tensor, generator: torch.Generator
        ) -> tuple[State, torch.Tensor]:
    """Accept ``prop`` per chain with probability min(1, exp(log_ratio)); non-finite -> reject."""
    finite = torch.isfinite(prop.energy) & torch.isfinite(prop.grad).all(-1) & torch.isfinite(log_ratio)
    log_u = torch.rand(log_ratio.shape, generator=generator, dtype=log_ratio.dtype,
                       device=log_ratio.device).log()
    acc = finite & (log_u < torch.where(finite, log_ratio, torch.zeros_like(log_ratio)))
    a2 = acc[:, None]
    return State(torch.where(a2, prop.x, state.x), torch.where(acc, prop.energy, state.energy),
                 torch.where(a2, prop.grad, state.grad)), acc


# ----------------------------------------------------------------------------- kernels
def rwm_step(state: State, energy_and_grad: EnergyAndGrad, step_size, generator: torch.Generator,
             project: Project = None) -> tuple[State, torch.Tensor]:
    """Random-walk Metropolis: y = x + step_size · P ξ; accept with min(1, exp(E(x) - E(y))).

    The proposal is symmetric, so no Hastings correction. ``step_size`` is the proposal std per
    coordinate (the blog baseline's tuned values: DW-4 0.5, LJ-13 0.025, LJ-55 0.0075, GMM 1.25).
    """
    s, _ = _col(step_size, state.x)
    y = state.x + s * _noise(state.x, generator, project)
    e, g = energy_and_grad(y)
    return _mh(state, State(y, e, g), state.energy - e, generator)


def _mala_log_q(to_x, from_x, from_grad, h_col, h_row):
    """log q(to | from) up to a constant: -|to - from + h ∇E(from)|² / (4h), ``[C]``."""
    d = to_x - from_x + h_col * from_grad
    return -d.pow(2).sum(-1) / (4 * h_row)


def mala_step(state: State, energy_and_grad: EnergyAndGrad, step_size, generator: torch.Generator,
              project: Project = None) -> tuple[State, torch.Tensor]:
    """Metropolis-adjusted Langevin: y = x - h ∇E(x) + sqrt(2h) P ξ, with the exact MH correction
    log α = E(x) - E(y) + log q(x|y) - log q(y|x), q(y|x) = N(y; x - h ∇E(x), 2h I) on the subspace.
    """
    h_col, h_row = _col(step_size, state.x)
    drift = -h_col * state.grad
    if project is not None:  # ∇E is mean-free for translation-invariant E; project anyway (round-off)
        drift = project(drift)
    y = state.x + drift + (2 * h_col) ** 0.5 * _noise(state.x, generator, project)
    e, g = energy_and_grad(y)
    log_ratio = (state.energy - e + _mala_log_q(state.x, y, g, h_col, h_row)
                 - _mala_log_q(y, state.x, state.grad, h_col, h_row))
    return _mh(state, State(y, e, g), log_ratio, generator)


def hmc_step(state: State, energy_and_grad: EnergyAndGrad, step_size, n_leapfrog: int,
             generator: torch.Generator, project: Project = None) -> tuple[State, torch.Tensor]:
    """Hamiltonian Monte Carlo with unit mass: p ~ P N(0, I), ``n_leapfrog`` leapfrog steps of size
    ``step_size``, accept per chain with min(1, exp(H(x, p) - H(y, q))), H = E + |p|²/2.

    Costs ``n_leapfrog`` energy-and-gradient calls (the first half-kick reuses ``state.grad``).
    Leapfrog is volume preserving and reversible (with momentum flip), so the ratio is exact.
    """
    if int(n_leapfrog) < 1:
        raise ValueError(f"hmc_step: n_leapfrog must be >= 1, got {n_leapfrog}")
    eps, _ = _col(step_size, state.x)
    p0 = _noise(state.x, generator, project)
    x, g, e = state.x, state.grad, state.energy
    p = p0 - 0.5 * eps * g
    for i in range(int(n_leapfrog)):
        x = x + eps * p
        e, g = energy_and_grad(x)
        kick = eps if i < n_leapfrog - 1 else 0.5 * eps
        p = p - kick * g
    if project is not None:
        x, p = project(x), project(p)  # ∇E is mean-free; this only removes float round-off drift
    log_ratio = (state.energy + 0.5 * p0.pow(2).sum(-1)) - (e + 0.5 * p.pow(2).sum(-1))
    return _mh(state, State(x, e, g), log_ratio, generator)


# ----------------------------------------------------------------------------- adaptation
@dataclass(frozen=True)
class DualAveraging:
    """Dual-averaging state (Hoffman & Gelman 2014, Alg. 5): iteration ``t``, running mean of
    (target - acceptance) ``h_bar``, current ``log_step`` and averaged ``log_step_avg``."""

    t: int
    h_bar: float
    log_step: float
    log_step_avg: float
    mu: float
    gamma: float = 0.05
    t0: float = 10.0
    kappa: float = 0.75

    @property
    def step_size(self) -> float:
        """The step size to use during warm-up (explores)."""
        return math.exp(self.log_step)

    @property
    def final_step_size(self) -> float:
        """The weighted average of the warm-up iterates: the value to freeze after warm-up."""
        return math.exp(self.log_step_avg)


def dual_averaging_init(step_size: float) -> DualAveraging:
    """Start at ``step_size``; shrink towards μ = log(10 · step_size) as in the NUTS paper."""
    if not (step_size > 0 and math.isfinite(step_size)):
        raise ValueError(f"dual_averaging_init: step_size must be positive and finite, got {step_size}")
    ls = math.log(step_size)
    return DualAveraging(t=0, h_bar=0.0, log_step=ls, log_step_avg=ls, mu=math.log(10 * step_size))


def dual_averaging_update(da: DualAveraging, accept_rate: float, target_accept: float
                          ) -> DualAveraging:
    """One update from the chains' mean acceptance probability/rate of the last transition."""
    if not 0 < target_accept < 1:
        raise ValueError(f"dual_averaging_update: target_accept must be in (0, 1), got {target_accept}")
    a = float(accept_rate) if math.isfinite(accept_rate) else 0.0
    t = da.t + 1
    w = 1.0 / (t + da.t0)
    h_bar = (1 - w) * da.h_bar + w * (target_accept - a)
    log_step = da.mu - math.sqrt(t) / da.gamma * h_bar
    eta = t ** (-da.kappa)
    log_avg = eta * log_step + (1 - eta) * da.log_step_avg
    return replace(da, t=t, h_bar=h_bar, log_step=log_step, log_step_avg=log_avg)


class Adapter:
    """Mutable wrapper around dual averaging for warm-up loops::

        adapt = Adapter(h0, 0.574)
        for step in warm-up: state, acc = kernel(..., h, ...); h = adapt.update(acc.float().mean())
        h = adapt.final()   # frozen afterwards
    """

    def __init__(self, step_size: float, target_accept: float):
        if not 0 < target_accept < 1:
            raise ValueError(f"Adapter: target_accept must be in (0, 1), got {target_accept}")
        self.target_accept = float(target_accept)
        self.state = dual_averaging_init(float(step_size))

    def update(self, accept_rate) -> float:
        self.state = dual_averaging_update(self.state, float(accept_rate), self.target_accept)
        return self.state.step_size

    def final(self) -> float:
        return self.state.final_step_size


# ----------------------------------------------------------------------------- SMC helpers
def log_ess(log_w: torch.Tensor) -> torch.Tensor:
    """log of the effective sample size (Σw)² / Σw² of unnormalised log-weights ``[C]``."""
    return 2 * torch.logsumexp(log_w, 0) - torch.logsumexp(2 * log_w, 0)


def systematic_resample(log_w: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Indices ``[C]`` (long) of a systematic resample of ``C`` particles with log-weights ``log_w``:
    one uniform offset, C evenly spaced points through the cumulative weights (low variance)."""
    c = log_w.shape[0]
    w = torch.softmax(log_w.double(), 0)
    cdf = torch.cumsum(w, 0)
    cdf[-1] = 1.0
    dev = log_w.device
    u = (torch.rand((), generator=generator, dtype=torch.float64, device=dev)
         + torch.arange(c, dtype=torch.float64, device=dev)) / c
    return torch.searchsorted(cdf, u).clamp_(max=c - 1)
