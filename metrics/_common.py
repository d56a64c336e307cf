"""Shared pieces of every metric: input validation, coordinates, subsampling, uncounted energies.

Every metric of spec v1 takes ``samples [n, dim]``, ``reference [m, dim]`` and the target. It
validates both point sets once here, converts them to float64 (exact OT and 1-D transport are
sensitive to float32 rounding at the 1e-4 level) and, for particle targets, compares them in
mean-free coordinates (``target.remove_mean`` on both sides, as the official iDEM code does).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import torch

# Seed of the generator that subsamples when a point set exceeds a metric's size cap. Fixed so that
# a metric is a deterministic function of its inputs; documented in docs/metrics.md.
SUBSAMPLE_SEED = 20240207


class MetricInputError(ValueError):
    """Samples or reference handed to a metric have the wrong type, shape or values."""


def is_particle(target: Any) -> bool:
    """True for targets made of particles (DW-4, LJ-13, LJ-55): they have ``n_particles``."""
    return getattr(target, "n_particles", None) is not None


def as_points(x: Any, target: Any, what: str) -> torch.Tensor:
    """Validate ``x`` as ``[n, target.dim]`` finite points; return a float64 CPU tensor.

    Raises MetricInputError naming ``what`` ("samples" or "reference"), what arrived and what is
    allowed. Non-finite points are refused: a sampler that produced them should have raised
    ``Diverged`` (the runner records that status instead of a metric value)."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise MetricInputError(f"{what} must be a torch.Tensor or numpy array of shape "
                               f"[n, {target.dim}], got {type(x).__name__}")
    if x.ndim != 2 or x.shape[1] != target.dim or x.shape[0] == 0:
        raise MetricInputError(f"{what} must have shape [n, {target.dim}] with n >= 1 for target "
                               f"{target.name!r}, got {tuple(x.shape)}")
    if not (x.is_floating_point() or x.dtype in (torch.int32, torch.int64)):
        raise MetricInputError(f"{what} must hold real numbers, got dtype {x.dtype}")
    x = x.detach().to(device="cpu", dtype=torch.float64)
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).any(-1).sum())
        raise MetricInputError(f"{what} contains {bad} configuration(s) with NaN or inf "
                               f"coordinates; metrics need finite points")
    return x


def prepare(samples: Any, reference: Any, target: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Validated float64 ``(samples, reference)``, mean-free for particle targets."""
    x = as_points(samples, target, "samples")
    y = as_points(reference, target, "reference")
    if is_particle(target):
        x, y = target.remove_mean(x), target.remove_mean(y)
    return x, y


def require_particles(target: Any, metric: str) -> None:
    if not is_particle(target):
        raise MetricInputError(f"metric {metric!r} needs a particle target (dw4, lj13, lj55); "
                               f"target {target.name!r} has no particles")


def check_max_n(max_n: int | None, what: str = "max_n") -> None:
    if max_n is not None and (isinstance(max_n, bool) or not isinstance(max_n, int) or max_n < 1):
        raise MetricInputError(f"{what} must be a positive int or None (no cap), got {max_n!r}")


def subsample(x: torch.Tensor, max_n: int | None, generator: torch.Generator) -> torch.Tensor:
    """``x`` itself when it has at most ``max_n`` rows, else ``max_n`` rows drawn without
    replacement by ``generator``."""
    if max_n is None or x.shape[0] <= max_n:
        return x
    idx = torch.randperm(x.shape[0], generator=generator)[:max_n]
    return x[idx]


def subsample_pair(x: torch.Tensor, y: torch.Tensor, max_n: int | None,
                   generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply the size cap to both sides. Without a generator a fresh one seeded with
    ``SUBSAMPLE_SEED`` is used, so the result depends only on the inputs; samples are drawn
    first, then the reference, from the same generator."""
    check_max_n(max_n)
    if generator is None:
        generator = torch.Generator().manual_seed(SUBSAMPLE_SEED)
    elif not isinstance(generator, torch.Generator):
        raise MetricInputError(f"generator must be a torch.Generator or None, "
                               f"got {type(generator).__name__}")
    return subsample(x, max_n, generator), subsample(y, max_n, generator)


@contextmanager
def counters_restored(target: Any) -> Iterator[None]:
    """Run a block of metric work and put ``target.counter`` back as it was afterwards.

    Metrics evaluate energies of samples and references; those evaluations are the
    benchmark's, not the sampler's, so they must not appear in the sampler's accounting."""
    counter = target.counter
    saved = (counter.energy_evals, counter.grad_evals)
    try:
        yield
    finally:
        counter.energy_evals, counter.grad_evals = saved


def uncounted_energy(target: Any, x: torch.Tensor) -> torch.Tensor:
    """E(x) ``[n]`` (float64) through the target's public ``energy``, counters restored."""
    with counters_restored(target), torch.no_grad():
        return target.energy(x).detach().to(torch.float64)


def pooled_distances(target: Any, x: torch.Tensor) -> np.ndarray:
    """All interatomic distances d_ij, i < j, of every configuration, pooled: ``[n * N(N-1)/2]``.
    No softening (the official ``interatomic_dist`` is a plain cdist)."""
    from targets.particles import pair_distances

    xp = x.reshape(x.shape[0], target.n_particles, target.spatial_dim)
    return pair_distances(xp).reshape(-1).numpy()
