"""Metrics that need the sampler's own density q: NLL, log Z, ELBO and ESS.

They do not fit the ``(samples, reference, target)`` signature of the registry, so they live here
and the runner calls them only when ``sampler.has_log_prob`` (see :func:`evaluate`).

* ``nll(log_prob_fn, reference)`` = -mean_j log q(y_j) over reference points, in nats. GMM: 2-D
  original coordinates. Particle targets: references are mean-free and q must be a density on the
  (N-1)·D-dimensional mean-free subspace (DW-4 6-D, LJ-13 36-D, LJ-55 162-D), as the official
  CFM likelihood with its mean-free Gaussian prior is (reference-idem.md §3.4).
* Importance weights of samples x_i ~ q: log w_i = log p̃(x_i) - log q(x_i), log p̃ = -E.
  ``log_z`` = log( (1/n) Σ w_i ) (log-mean-exp), whose exponential is an unbiased estimate of Z.
  ``elbo`` = (1/n) Σ log w_i, a lower bound on log Z in expectation; this is what the official
  ``compute_log_z`` logs as ``logz`` (reference-idem.md §3.5).
  ``ess`` = 1 / (n Σ_i w̄_i²), w̄ = softmax(log w): the normalised effective sample size in (0, 1],
  as the official code divides by n.
  For particles Z is the integral of exp(-E) over the mean-free subspace.
* Path-space weights (PIS, DDS: w = p̃(x_T) · path density ratio, no marginal density of x): the
  same estimators on path weights give ``log_z`` (still an unbiased estimate of Z, so it shares the
  column) but ``elbo_path`` and ``ess_path``, which bound and measure the *path* KL, not the
  marginal one: a path ELBO is lower than the marginal ELBO of the same sampler, and a path ESS
  lower than its marginal ESS, so they get columns of their own (``PATH_METRICS``).
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from ._common import MetricInputError, as_points, counters_restored, is_particle, uncounted_energy

DENSITY_METRICS = ("nll", "log_z", "elbo", "ess")
PATH_METRICS = ("log_z", "elbo_path", "ess_path")


def _vector(v, what: str, n: int | None = None) -> torch.Tensor:
    if not isinstance(v, torch.Tensor):
        v = torch.as_tensor(v)
    v = v.detach().to(device="cpu", dtype=torch.float64)
    if v.ndim != 1 or v.shape[0] == 0 or (n is not None and v.shape[0] != n):
        want = f"[{n}]" if n is not None else "[n] with n >= 1"
        raise MetricInputError(f"{what} must have shape {want}, got {tuple(v.shape)}")
    if torch.isnan(v).any():
        raise MetricInputError(f"{what} contains {int(torch.isnan(v).sum())} NaN value(s)")
    return v


def log_weights(log_p_tilde, log_q) -> torch.Tensor:
    """log w = log p̃ - log q, float64 ``[n]``. -inf in log p̃ is allowed (weight 0); log q must
    be finite (the samples were drawn from q)."""
    lp = _vector(log_p_tilde, "log_p_tilde")
    lq = _vector(log_q, "log_q", lp.shape[0])
    if not torch.isfinite(lq).all():
        raise MetricInputError("log_q must be finite at points sampled from q; got "
                               f"{int((~torch.isfinite(lq)).sum())} non-finite value(s)")
    if (lp == math.inf).any():
        raise MetricInputError("log_p_tilde contains +inf")
    return lp - lq


def log_z(log_p_tilde, log_q) -> float:
    """log of the importance-sampling estimate of Z: logmeanexp(log p̃ - log q)."""
    lw = log_weights(log_p_tilde, log_q)
    return float(torch.logsumexp(lw, 0) - math.log(lw.shape[0]))


def elbo(log_p_tilde, log_q) -> float:
    """mean(log p̃ - log q): the official code's ``logz``; -inf if some p̃ is 0."""
    return float(log_weights(log_p_tilde, log_q).mean())


def ess(log_p_tilde, log_q) -> float:
    """Normalised effective sample size 1 / (n Σ softmax(log w)²) in (0, 1] (0 if all weights
    are 0)."""
    lw = log_weights(log_p_tilde, log_q)
    if not torch.isfinite(lw).any():
        return 0.0
    w = torch.softmax(lw, 0)
    return float(1.0 / (lw.shape[0] * w.pow(2).sum()))


def nll(log_prob_fn: Callable[[torch.Tensor], torch.Tensor], reference: torch.Tensor,
        batch_size: int = 1000) -> float:
    """-mean log q(reference) in nats; ``log_prob_fn([b, dim]) -> [b]`` is called on batches of
    ``batch_size`` float32 rows (the dtype samplers use)."""
    if not callable(log_prob_fn):
        raise MetricInputError(f"log_prob_fn must be callable, got {type(log_prob_fn).__name__}")
    reference = torch.as_tensor(reference)
    if reference.ndim != 2 or reference.shape[0] == 0:
        raise MetricInputError(f"reference must have shape [m, dim] with m >= 1, "
                               f"got {tuple(reference.shape)}")
    total = 0.0
    for i0 in range(0, reference.shape[0], batch_size):
        batch = reference[i0:i0 + batch_size].to(torch.float32)
        with torch.no_grad():
            lq = _vector(log_prob_fn(batch), "log_prob_fn(reference)", batch.shape[0])
        total += float(lq.sum())
    return -total / reference.shape[0]


def evaluate(target, log_prob_fn: Callable[[torch.Tensor], torch.Tensor],
             samples: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """All density metrics of a sampler with a density, as the runner calls them:
    ``nll`` on the reference split, ``log_z``/``elbo``/``ess`` from ``samples`` drawn from it.
    Target energies are evaluated without charging the target's counters."""
    x = as_points(samples, target, "samples")
    y = as_points(reference, target, "reference")
    if is_particle(target):
        x, y = target.remove_mean(x), target.remove_mean(y)
    # Restore the counters around everything, in case log_prob_fn itself touches the target.
    with counters_restored(target):
        with torch.no_grad():
            lq = log_prob_fn(x.to(torch.float32))
        lp = -uncounted_energy(target, x)
        lp = torch.where(torch.isnan(lp), torch.full_like(lp, -math.inf), lp)
        return {"nll": nll(log_prob_fn, y), "log_z": log_z(lp, lq), "elbo": elbo(lp, lq),
                "ess": ess(lp, lq)}
