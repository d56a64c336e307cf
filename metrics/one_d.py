"""Distances between 1-D distributions: energies of configurations and interatomic distances.

Energies are E(x) = -log p̃(x) from ``target.energy`` (the official code uses log p̃; the sign does
not change a distance between the two distributions). They are evaluated with the target's
counters restored afterwards (``_common.uncounted_energy``), so metrics never show up in a
sampler's energy accounting. A configuration whose energy is NaN counts as +inf (it cannot be
evaluated, so it is infinitely improbable); any infinite sample energy makes the distances inf.

* ``energy_w1``     W1 of the energy distributions (POT ``wasserstein_1d``, p=1).
* ``energy_w2``     the true W2, root taken.
* ``energy_w2_sq``  W2², exactly what the official code logs as ``energy_w2``
                    (``ot.emd2_1d`` with its default 'sqeuclidean' metric, no root).
* ``dist_w2_sq``    W2² of the pooled interatomic distances, the official ``dist_w2``.

1-D optimal transport is a sort, so no subsampling cap applies.
"""
from __future__ import annotations

import math

import numpy as np
import ot
import torch

from ._common import pooled_distances, prepare, require_particles, uncounted_energy


def energies(target, x: torch.Tensor) -> np.ndarray:
    """E(x) as float64 ``[n]`` (NaN mapped to +inf), without charging the target's counters."""
    e = uncounted_energy(target, x).numpy()
    return np.where(np.isnan(e), np.inf, e)


def energy_pair(samples, reference, target) -> tuple[np.ndarray, np.ndarray]:
    """Validated energies of samples and reference."""
    x, y = prepare(samples, reference, target)
    return energies(target, x), energies(target, y)


def _w_p(u: np.ndarray, v: np.ndarray, p: int) -> float:
    """W_p^p between 1-D empirical measures (uniform weights); inf if any value is infinite."""
    if not (np.isfinite(u).all() and np.isfinite(v).all()):
        return math.inf
    if p == 1:
        return float(ot.wasserstein_1d(u, v, p=1))
    return float(ot.emd2_1d(u, v))  # default metric 'sqeuclidean': W2², as the official code


def energy_w1(samples, reference, target) -> float:
    """W1 between the energy distributions of samples and reference (energy units)."""
    return _w_p(*energy_pair(samples, reference, target), p=1)


def energy_w2_sq(samples, reference, target) -> float:
    """Squared W2 of the energy distributions; the official ``energy_w2`` (energy units²)."""
    return _w_p(*energy_pair(samples, reference, target), p=2)


def energy_w2(samples, reference, target) -> float:
    """W2 of the energy distributions, root taken (energy units)."""
    return math.sqrt(max(energy_w2_sq(samples, reference, target), 0.0))


def dist_w2_sq(samples, reference, target) -> float:
    """Squared W2 of the pooled interatomic distances; the official ``dist_w2`` (length²)."""
    require_particles(target, "dist_w2_sq")
    x, y = prepare(samples, reference, target)
    return _w_p(pooled_distances(target, x), pooled_distances(target, y), p=2)
