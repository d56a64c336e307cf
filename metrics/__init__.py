"""Registry of metrics: ``metrics.get(name)(samples [n, dim], reference [m, dim], target) -> float``.

Definitions: docs/metrics.md (spec v1). Every registered metric compares particle targets in
mean-free coordinates and GMM in its original coordinates, is deterministic given its inputs, and
leaves the target's evaluation counters unchanged. Metrics that need the sampler's own density
(``nll``, ``log_z``, ``elbo``, ``ess``) are in :mod:`metrics.density`; ``applicable`` lists them
when the sampler has a density.
"""
from __future__ import annotations

from typing import Callable

from . import cnf, density, eq_w2, histograms, nll_cnf, one_d, wasserstein
from ._common import SUBSAMPLE_SEED, MetricInputError, is_particle
from .density import DENSITY_METRICS, PATH_METRICS
from .histograms import histogram_on_reference_bins

SPEC_VERSION = "1"

_REGISTRY: dict[str, Callable] = {}
# Metrics defined only for particle targets (they need interatomic distances or alignments).
PARTICLE_ONLY = frozenset({"x_w2_aligned", "eq_w2", "dist_tvd", "dist_tvd_official",
                           "dist_w2_sq"})
# Metrics computed only when a profile opts in (``metric_options.<name>``): they train a model
# and need the runner's networks and cell folder (``nll_cnf``: metrics/nll_cnf.py, runners/cnf.py).
OPT_IN = ("nll_cnf",)


def register(name: str, fn: Callable) -> Callable:
    if name in _REGISTRY:
        raise ValueError(f"metric {name!r} is already registered")
    _REGISTRY[name] = fn
    return fn


def names() -> list[str]:
    return list(_REGISTRY)


def get(name: str) -> Callable:
    if name not in _REGISTRY:
        raise KeyError(f"unknown metric {name!r}; valid metrics: {', '.join(names())}")
    return _REGISTRY[name]


def applicable(target, sampler_has_log_prob: bool = False, path_weights: bool = False
               ) -> list[str]:
    """Names of the metrics that apply to ``target``: the registered ones (minus the
    particle-only ones for GMM-40), then the density metrics if the sampler has a density, or the
    path-weight metrics (``log_z``, ``elbo_path``, ``ess_path``) if it has path-space importance
    weights. Registered names go through ``get``; density names through ``metrics.density``."""
    out = [n for n in names() if is_particle(target) or n not in PARTICLE_ONLY]
    if sampler_has_log_prob:
        return out + list(DENSITY_METRICS)
    return out + list(PATH_METRICS) if path_weights else out


for _name, _fn in [
    ("x_w2", wasserstein.x_w2),
    ("x_w2_aligned", wasserstein.x_w2_aligned),
    ("eq_w2", eq_w2.eq_w2),  # ASBS / Adjoint Sampling aligned W2 (metrics/eq_w2.py)
    ("energy_w1", one_d.energy_w1),
    ("energy_w2", one_d.energy_w2),
    ("energy_w2_sq", one_d.energy_w2_sq),
    ("dist_w2_sq", one_d.dist_w2_sq),
    ("dist_tvd", histograms.dist_tvd),
    ("dist_tvd_official", histograms.dist_tvd_official),
    ("energy_tvd", histograms.energy_tvd),
    ("energy_tvd_official", histograms.energy_tvd_official),
]:
    register(_name, _fn)

__all__ = ["SPEC_VERSION", "PARTICLE_ONLY", "OPT_IN", "cnf", "nll_cnf", "DENSITY_METRICS",
           "PATH_METRICS", "SUBSAMPLE_SEED",
           "MetricInputError", "register", "get", "names", "applicable",
           "histogram_on_reference_bins", "density", "eq_w2", "histograms", "one_d", "wasserstein"]
