"""Total-variation distances between histograms on reference-derived bins.

The official iDEM ``dist_total_var`` pools all interatomic distances, takes 200 equal-width bins
spanning the reference values (``np.histogram(ref, bins=200)``), histograms the generated values on
those edges, normalises each histogram by its own count and returns 0.5 Σ|p - q|. Values outside
the reference range are dropped by ``np.histogram`` before normalising, so mass a sampler puts
outside the reference range is not penalised (reference-idem.md §6.8).

Spec v1 keeps those bins but adds one underflow and one overflow bin: a sample value below the
first edge or above the last one counts there (the reference has no mass there by construction),
and each histogram is normalised by its total count including those bins. Hence
TV = 0.5 (Σ_b |p_b - q_b| + under/n + over/n), in [0, 1], and 1 for disjoint supports.
The ``*_official`` variants reproduce the official rule; when no sample value falls inside the
reference range the official formula is 0/0 (NaN), and we return 1.0 instead.

``histogram_on_reference_bins`` returns the counts themselves so plots show exactly the
histograms the metric compared.
"""
from __future__ import annotations

import numpy as np

from ._common import pooled_distances, prepare, require_particles
from .one_d import energies

N_BINS = 200


def histogram_on_reference_bins(values, ref_values, bins: int = N_BINS):
    """Histograms of ``values`` and ``ref_values`` on ``bins`` equal-width bins spanning the
    reference values.

    Returns ``(edges [bins+1], ref_counts [bins], sample_counts [bins], under, over)``: ``under``
    / ``over`` count sample values below ``edges[0]`` / above ``edges[-1]`` (+inf counts as over;
    NaN is refused). Bins are half-open [a, b) except the last, which includes its right edge,
    as ``np.histogram``."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    ref_values = np.asarray(ref_values, dtype=np.float64).reshape(-1)
    if not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a positive int, got {bins!r}")
    if ref_values.size == 0 or not np.isfinite(ref_values).all():
        raise ValueError(f"ref_values must be non-empty and finite, got {ref_values.size} values "
                         f"with {int((~np.isfinite(ref_values)).sum())} non-finite")
    if values.size == 0 or np.isnan(values).any():
        raise ValueError(f"values must be non-empty and free of NaN, got {values.size} values "
                         f"with {int(np.isnan(values).sum())} NaN")
    edges = np.histogram_bin_edges(ref_values, bins=bins)
    ref_counts, _ = np.histogram(ref_values, bins=edges)
    inside = (values >= edges[0]) & (values <= edges[-1])
    sample_counts, _ = np.histogram(values[inside], bins=edges)
    under = int((values < edges[0]).sum())
    over = int((values > edges[-1]).sum())
    return edges, ref_counts, sample_counts, under, over


def tvd(values, ref_values, bins: int = N_BINS) -> float:
    """Spec-v1 TV: outside-range sample mass counted in an underflow and an overflow bin."""
    _, ref_counts, sample_counts, under, over = histogram_on_reference_bins(values, ref_values,
                                                                            bins)
    n = sample_counts.sum() + under + over
    p = ref_counts / ref_counts.sum()
    q = sample_counts / n
    return float(0.5 * (np.abs(p - q).sum() + (under + over) / n))


def tvd_official(values, ref_values, bins: int = N_BINS) -> float:
    """Official TV: outside-range sample values dropped, inside mass renormalised to 1
    (1.0 when nothing falls inside, where the official code would give NaN)."""
    _, ref_counts, sample_counts, _, _ = histogram_on_reference_bins(values, ref_values, bins)
    if sample_counts.sum() == 0:
        return 1.0
    p = ref_counts / ref_counts.sum()
    q = sample_counts / sample_counts.sum()
    return float(0.5 * np.abs(p - q).sum())


def _distances(samples, reference, target, metric):
    require_particles(target, metric)
    x, y = prepare(samples, reference, target)
    return pooled_distances(target, x), pooled_distances(target, y)


def _energies(samples, reference, target):
    x, y = prepare(samples, reference, target)
    return energies(target, x), energies(target, y)


def dist_tvd(samples, reference, target) -> float:
    """TV between pooled interatomic-distance histograms, outside mass counted (particles)."""
    return tvd(*_distances(samples, reference, target, "dist_tvd"))


def dist_tvd_official(samples, reference, target) -> float:
    """The official ``dist_total_var`` (outside mass dropped) (particles)."""
    return tvd_official(*_distances(samples, reference, target, "dist_tvd_official"))


def energy_tvd(samples, reference, target) -> float:
    """TV between energy histograms on 200 bins spanning the reference energies, outside mass
    counted."""
    return tvd(*_energies(samples, reference, target))


def energy_tvd_official(samples, reference, target) -> float:
    """Energy TV with the official rule (outside mass dropped); not logged by the official code,
    given for comparison with ``dist_tvd_official``."""
    return tvd_official(*_energies(samples, reference, target))
