"""A continuous normalising flow fitted by conditional flow matching, and its exact likelihood.

This is the estimator the iDEM paper and its official code use for the NLL of samplers without a
tractable density (reference-nll.md; official ``dem_module.py`` CFM branch and ``cnf.py``):

* Prior q_0 = N(0, s^2 I) with s = the target's ``cfm_prior_std`` (GMM-40 50, DW-4 2, LJ-13 2,
  LJ-55 1). For particle targets the prior is the mean-free Gaussian: its density lives on the
  (N-1)·D-dimensional mean-free subspace, log q_0(x) = -|x|^2 / (2 s^2) - (N-1)D/2 log(2 pi s^2)
  for mean-free x, so the NLL is on the same subspace as :func:`metrics.density.nll`'s.
* Training (conditional flow matching, sigma = 0, independent coupling): x_0 ~ q_0, x_1 = a
  sample, t ~ U(0, 1), x_t = t x_1 + (1 - t) x_0; the field regresses u = x_1 - x_0 with the loss
  mean over dimensions of |v(t, x_t) - u|^2.
* Likelihood: dx/dt = v(t, x) carries q_0 at t = 0 to q_1 at t = 1. Integrating the state
  augmented with a = ∫ div v dt backwards from t = 1 (a test point) to t = 0 gives
  log q_1(y) = log q_0(x_0) - ∫_0^1 div v(t, x_t) dt, with torchdiffeq's dopri5 and the exact
  divergence (trace of the Jacobian by ``torch.func.jacrev``, vmapped over the batch).

For particle targets the field must be mean-free and translation invariant (the EGNN is): then
its full Jacobian equals its restriction to the mean-free subspace and the trace over all N·D
coordinates is the divergence on the subspace, and the flow never leaves it.

Everything here is a pure function of tensors, a field module and a ``torch.Generator``; building
the network, options and caching are the runner's (runners/cnf.py), since metrics may not import
the samplers' networks.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.func import jacrev, vmap
from torchdiffeq import odeint

from targets.particles import remove_mean

from ._common import MetricInputError

# Fewest training samples / test points accepted: below this a flow fit or an average is noise.
MIN_TRAIN = 50
MIN_TEST = 1


@dataclass(frozen=True)
class Geometry:
    """What the prior needs to know about the target: its flat dimension and, for particle
    targets, ``(n_particles, spatial_dim)`` (None for GMM-40)."""

    dim: int
    particles: tuple[int, int] | None = None

    @property
    def dof(self) -> int:
        """Degrees of freedom of the density: dim, or (N-1)·D on the mean-free subspace."""
        if self.particles is None:
            return self.dim
        n, d = self.particles
        return (n - 1) * d

    def remove_mean(self, x: torch.Tensor) -> torch.Tensor:
        if self.particles is None:
            return x
        return remove_mean(x, *self.particles)


class Scaled(nn.Module):
    """v(t, x) = c · net(t, x / c): the network works in coordinates divided by ``c`` (as the
    iDEM sampler's GMM-40 network does with c = 50), the flow stays in the original ones."""

    def __init__(self, net: nn.Module, scale: float):
        super().__init__()
        self.net, self.scale = net, float(scale)

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.net(t, x / self.scale) * self.scale


def prior_log_prob(x: torch.Tensor, std: float, geom: Geometry) -> torch.Tensor:
    """log q_0(x) ``[b]`` of the (mean-free) Gaussian prior at ``x [b, dim]`` (mean-free points
    for particle targets: the norm is taken as given)."""
    k = geom.dof
    return -0.5 * x.pow(2).sum(-1) / std ** 2 - 0.5 * k * math.log(2 * math.pi * std ** 2)


def prior_sample(n: int, std: float, geom: Geometry, generator: torch.Generator,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``[n, dim]`` draws of the prior (particles: a Gaussian with its particle mean removed, which
    is the isotropic Gaussian of the mean-free subspace, as the official MeanFreePrior)."""
    z = torch.randn(n, geom.dim, generator=generator, dtype=dtype) * std
    return geom.remove_mean(z)


def cfm_loss(field: nn.Module, x1: torch.Tensor, std: float, geom: Geometry,
             generator: torch.Generator) -> torch.Tensor:
    """Flow-matching loss (sigma = 0, independent coupling) of one batch ``x1 [b, dim]``."""
    x0 = prior_sample(x1.shape[0], std, geom, generator, x1.dtype)
    t = torch.rand(x1.shape[0], generator=generator, dtype=x1.dtype)
    xt = t[:, None] * x1 + (1 - t[:, None]) * x0
    return (field(t, xt) - (x1 - x0)).pow(2).mean()


def train_cfm(field: nn.Module, samples: torch.Tensor, std: float, geom: Geometry, *, steps: int,
              batch_size: int, lr: float, generator: torch.Generator,
              grad_clip: float | None = None, lr_final: float | None = None) -> dict:
    """Fit ``field`` in place to ``samples [n, dim]`` by flow matching: ``steps`` Adam steps on
    batches drawn with replacement (as the official buffer does). ``lr_final`` (if set) decays the
    rate by a cosine to that value at the last step. Returns ``{"steps", "seconds", "loss"}``
    (loss = mean of the last 10% of steps)."""
    opt = torch.optim.Adam(field.parameters(), lr=lr)
    sched = None
    if lr_final is not None:
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1),
                                                           eta_min=lr_final)
    t0, tail = time.perf_counter(), []
    field.train()
    for step in range(steps):
        idx = torch.randint(samples.shape[0], (batch_size,), generator=generator)
        loss = cfm_loss(field, samples[idx], std, geom, generator)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            nn.utils.clip_grad_norm_(field.parameters(), grad_clip)
        opt.step()
        if sched is not None:
            sched.step()
        if step >= steps - max(1, steps // 10):
            tail.append(float(loss.detach()))
    if tail and not math.isfinite(sum(tail)):
        raise MetricInputError(f"nll_cnf: flow-matching loss became {sum(tail) / len(tail)}; "
                               f"lower lr (got {lr})")
    field.eval()
    return {"steps": steps, "seconds": time.perf_counter() - t0,
            "loss": sum(tail) / len(tail) if tail else math.nan}


def _augmented_rhs(field: nn.Module, counter: list[int]) -> Callable:
    """d/dt [x, a] = [v(t, x), div v(t, x)] for the state ``[b, dim + 1]``."""

    def one(x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v = field(t.reshape(1), x.unsqueeze(0)).squeeze(0)
        return v, v  # the second copy comes back as jacrev's aux: value and Jacobian in one pass

    jac = vmap(jacrev(one, has_aux=True), in_dims=(0, None))

    def rhs(t: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        counter[0] += 1
        x = state[:, :-1]
        with torch.enable_grad():
            J, v = jac(x, t.to(x.dtype))
        div = torch.diagonal(J, dim1=-2, dim2=-1).sum(-1)
        return torch.cat([v, div[:, None]], dim=-1).detach()

    return rhs


def _hutchinson_rhs(field: nn.Module, counter: list[int], probe: list) -> Callable:
    """As :func:`_augmented_rhs` with div v ≈ eps^T (dv/dx) eps, one vector-Jacobian product
    (one backward pass instead of one per dimension; the official LJ-55 CFM's estimator). The
    probe ``probe[0] [b, dim]`` is fixed along a trajectory (FFJORD), so the ODE stays smooth."""

    def rhs(t: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        counter[0] += 1
        eps = probe[0]
        with torch.enable_grad():
            x = state[:, :-1].detach().requires_grad_(True)
            v = field(t.to(x.dtype).reshape(1), x)
            (g,) = torch.autograd.grad(v, x, eps)
        return torch.cat([v, (g * eps).sum(-1, keepdim=True)], dim=-1).detach()

    return rhs


DIVERGENCES = ("exact", "hutchinson")


def log_likelihood(field: nn.Module, y: torch.Tensor, std: float, geom: Geometry, *,
                   atol: float = 1e-5, rtol: float = 1e-5, batch_size: int = 256,
                   method: str = "dopri5", divergence: str = "exact",
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, int]:
    """log q_1(y) ``[m]`` of the flow at points ``y [m, dim]`` (mean-free for particle targets),
    in batches of ``batch_size`` (each batch shares dopri5's adaptive steps, as officially), and
    the number of field evaluations. The field's dtype is used throughout. ``divergence``
    "hutchinson" draws one Gaussian probe per point from ``generator`` (mean-free for particle
    targets, so that it probes the subspace): an unbiased, noisy log-likelihood."""
    if divergence not in DIVERGENCES:
        raise MetricInputError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
    dtype = next(field.parameters()).dtype
    times = torch.tensor([1.0, 0.0], dtype=dtype)
    out, nfe, probe = [], [0], [None]
    rhs = _augmented_rhs(field, nfe) if divergence == "exact" else \
        _hutchinson_rhs(field, nfe, probe)
    for i0 in range(0, y.shape[0], batch_size):
        yb = y[i0:i0 + batch_size].to(dtype)
        if divergence == "hutchinson":
            if generator is None:
                raise MetricInputError("divergence 'hutchinson' needs a torch.Generator")
            eps = geom.remove_mean(torch.randn(yb.shape, generator=generator, dtype=dtype))
            # a mean-free Gaussian has covariance P (the projector) with trace (N-1)D: rescaling
            # is not needed, E[eps^T J eps] = tr(J P) = tr(J) for the mean-free field
            probe[0] = eps
        state = torch.cat([yb, torch.zeros(yb.shape[0], 1, dtype=dtype)], dim=-1)
        with torch.no_grad():
            # step_t = the end: torchdiffeq's adaptive solvers otherwise step past t = 0 and
            # interpolate back, evaluating the field at t < 0 where it was never trained
            end = odeint(rhs, state, times, method=method, atol=atol, rtol=rtol,
                         options={"step_t": times[-1:]})[-1]
        x0, a0 = end[:, :-1], end[:, -1]
        # a(0) = -∫_0^1 div v dt, so log q_1(y) = log q_0(x_0) + a(0)
        out.append(prior_log_prob(geom.remove_mean(x0), std, geom) + a0)
    return torch.cat(out), nfe[0]


def check_points(x, geom: Geometry, what: str, minimum: int) -> torch.Tensor:
    """``x`` as a float64 ``[n, dim]`` tensor with n >= ``minimum`` and no NaN/inf rows, else
    MetricInputError naming ``what``."""
    if not isinstance(x, torch.Tensor):
        try:
            x = torch.as_tensor(x)
        except (TypeError, ValueError, RuntimeError):
            raise MetricInputError(f"{what} must be an array of shape [n, {geom.dim}], got "
                                   f"{type(x).__name__}") from None
    if x.ndim != 2 or x.shape[1] != geom.dim:
        raise MetricInputError(f"{what} must have shape [n, {geom.dim}], got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise MetricInputError(f"{what} must hold floats, got dtype {x.dtype}")
    bad = int((~torch.isfinite(x)).any(-1).sum())
    if bad:
        raise MetricInputError(f"{what} has {bad} row(s) with NaN or inf coordinates")
    if x.shape[0] < minimum:
        raise MetricInputError(f"{what} has {x.shape[0]} row(s); nll_cnf needs at least {minimum}")
    return x.detach().to("cpu", torch.float64)
