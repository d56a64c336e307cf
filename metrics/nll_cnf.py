"""``nll_cnf``: the NLL of the test split under a CNF fitted to a sampler's samples (iDEM paper).

Unlike ``nll`` (the sampler's own density, metrics/density.py) it needs only samples, so every
sampler and every sample file gets one. Definition and choices: docs/metrics.md, "nll_cnf".

:class:`NLLCNFOptions` holds the metric's options (one profile entry
``metric_options.nll_cnf: {...}``); unset fields take the official per-target values of
:data:`TARGET_DEFAULTS`. :func:`nll_cnf` fits the flow and scores the test points; it receives the
network builder from its caller because the vector-field networks (MLP, EGNN) are the samplers'
(samplers/dem/networks.py), which metrics may not import.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, fields
from typing import Any, Callable

import torch

from . import cnf
from ._common import MetricInputError, is_particle

# Official per-target CFM settings (jarridrb/DEM configs: cfm_prior_std, the sampler's network as
# the CFM network, the model optimiser's lr; reference-nll.md).
# Ours: ``steps`` (the official CFM trains up to 2000 epochs x 100 steps and keeps the checkpoint
# with the best val NLL, a GPU budget and a selection on reference data; ours is a fixed length
# sized for a 2-core CPU, docs/metrics.md) and GMM-40's ``coord_scale`` 50: the official MLP's
# coordinate embedding (scale 25) is built for the sampler's x/50 coordinates, and fed raw ones
# it gave a stiff field (measured, 20k steps: nll_cnf 7.47 raw vs 7.09 scaled, exact 6.88).
# GMM-40 80k steps: the fewest measured within 0.1 nats of the exact NLL (6.979 vs 6.880; 40k:
# 7.012).
TARGET_DEFAULTS: dict[str, dict[str, Any]] = {
    "gmm40": {"prior_std": 50.0, "network": "mlp", "hidden": 128, "n_layers": 3, "lr": 5e-4,
              "coord_scale": 50.0, "steps": 80000},
    "dw4": {"prior_std": 2.0, "network": "egnn", "hidden": 128, "n_layers": 3, "lr": 1e-3,
            "steps": 2000},
    "lj13": {"prior_std": 2.0, "network": "egnn", "hidden": 128, "n_layers": 5, "lr": 1e-3,
             "steps": 2000},
    "lj55": {"prior_std": 1.0, "network": "egnn", "hidden": 128, "n_layers": 5, "lr": 1e-3,
             "steps": 2000},
}
NETWORKS = ("mlp", "egnn")


@dataclass(frozen=True)
class NLLCNFOptions:
    """Options of ``nll_cnf``. ``None`` = the target's official value (:data:`TARGET_DEFAULTS`).

    n_train: how many of the samples train the CNF (the first n_train; all if fewer are given).
    n_test: how many test-split points are scored (the first n_test).
    steps, batch_size, lr, lr_final, grad_clip: the flow-matching training (Adam; cosine decay of
      the rate to ``lr_final``, null = constant; ``grad_clip`` = max gradient norm, official 0.5).
    prior_std, network, hidden, n_layers: prior and vector-field network.
    coord_scale: the network sees x / coord_scale and its output is multiplied back (1 = the
      official raw coordinates).
    atol, rtol, nll_batch_size: the dopri5 likelihood (official 1e-5, 1e-5, 256).
    divergence: "exact" (official default: trace of the Jacobian) or "hutchinson" (one Gaussian
      probe per point, one backward pass instead of one per dimension; the official LJ-55 CFM's
      choice), for LJ-13/LJ-55 on a CPU.
    seed: seeds the one generator of network init, training batches and prior draws.
    """

    n_train: int = 100_000
    n_test: int = 1000
    steps: int | None = None
    batch_size: int = 512
    lr: float | None = None
    lr_final: float | None = 1e-6
    grad_clip: float | None = 0.5
    prior_std: float | None = None
    network: str | None = None
    hidden: int | None = None
    n_layers: int | None = None
    coord_scale: float | None = None
    atol: float = 1e-5
    rtol: float = 1e-5
    nll_batch_size: int = 256
    divergence: str = "exact"
    seed: int = 0

    def __post_init__(self):
        for name in ("n_train", "n_test", "steps", "batch_size", "nll_batch_size", "hidden",
                     "n_layers"):
            v = getattr(self, name)
            if v is None and name in ("hidden", "n_layers", "steps"):
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "steps" else 1):
                raise MetricInputError(f"nll_cnf.{name} must be a positive int, got {v!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise MetricInputError(f"nll_cnf.seed must be an int, got {self.seed!r}")
        for name in ("lr", "lr_final", "grad_clip", "prior_std", "coord_scale", "atol", "rtol"):
            v = getattr(self, name)
            if v is None and name not in ("atol", "rtol"):
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 \
                    or not math.isfinite(v):
                raise MetricInputError(f"nll_cnf.{name} must be a positive number"
                                       f"{' or null' if name not in ('atol', 'rtol') else ''}, "
                                       f"got {v!r}")
        if self.divergence not in cnf.DIVERGENCES:
            raise MetricInputError(f"nll_cnf.divergence must be one of {cnf.DIVERGENCES}, "
                                   f"got {self.divergence!r}")
        if self.network is not None and self.network not in NETWORKS:
            raise MetricInputError(f"nll_cnf.network must be one of {NETWORKS} or null, "
                                   f"got {self.network!r}")

    @classmethod
    def from_dict(cls, opts: dict | None) -> "NLLCNFOptions":
        """From a profile's ``metric_options.nll_cnf`` mapping; unknown keys are refused."""
        opts = dict(opts or {})
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(opts) - set(known))
        if unknown:
            raise MetricInputError(f"nll_cnf: unknown option(s) {unknown}; allowed: "
                                   f"{', '.join(known)}")
        for k in ("lr", "lr_final", "grad_clip", "prior_std", "coord_scale", "atol", "rtol"):
            if isinstance(opts.get(k), int) and not isinstance(opts.get(k), bool):
                opts[k] = float(opts[k])  # YAML `1` for a float field
        return cls(**opts)

    def resolved(self, target_name: str) -> "NLLCNFOptions":
        """Every ``None`` replaced by the target's official value."""
        if target_name not in TARGET_DEFAULTS:
            raise MetricInputError(f"nll_cnf: no defaults for target {target_name!r}; known: "
                                   f"{', '.join(TARGET_DEFAULTS)}")
        fill = {k: v for k, v in TARGET_DEFAULTS[target_name].items() if getattr(self, k) is None}
        return dataclasses.replace(self, **fill)


def geometry(target) -> cnf.Geometry:
    if is_particle(target):
        return cnf.Geometry(target.dim, (target.n_particles, target.spatial_dim))
    return cnf.Geometry(target.dim)


Builder = Callable[..., torch.nn.Module]  # (kind, dim, particles, hidden, n_layers, generator)


def build_field(builder: Builder, opts: NLLCNFOptions, geom: cnf.Geometry,
                generator: torch.Generator) -> torch.nn.Module:
    if opts.network == "egnn" and geom.particles is None:
        raise MetricInputError("nll_cnf.network 'egnn' needs a particle target; use 'mlp'")
    net = builder(opts.network, geom.dim, geom.particles, opts.hidden, opts.n_layers, generator)
    return net if opts.coord_scale is None else cnf.Scaled(net, opts.coord_scale)


def fit(builder: Builder, samples, target, options: NLLCNFOptions) -> tuple[torch.nn.Module, dict]:
    """The CNF fitted to the first ``n_train`` of ``samples [n, dim]`` (mean-free for particle
    targets), and its training record. ``options`` must be resolved."""
    geom = geometry(target)
    x = cnf.check_points(samples, geom, "samples", cnf.MIN_TRAIN)[:options.n_train]
    x = geom.remove_mean(x).to(torch.float32)
    gen = torch.Generator().manual_seed(options.seed)
    field = build_field(builder, options, geom, gen)
    info = cnf.train_cfm(field, x, options.prior_std, geom, steps=options.steps,
                         batch_size=options.batch_size, lr=options.lr, generator=gen,
                         grad_clip=options.grad_clip, lr_final=options.lr_final)
    return field, {**info, "n_train": int(x.shape[0])}


def score(field: torch.nn.Module, test, target, options: NLLCNFOptions) -> dict:
    """``{"nll_cnf", "cnf_nfe", "cnf_likelihood_seconds", "n_test"}`` of the first ``n_test``
    points of ``test`` under a fitted field."""
    geom = geometry(target)
    y = cnf.check_points(test, geom, "reference", cnf.MIN_TEST)[:options.n_test]
    y = geom.remove_mean(y)
    t0 = time.perf_counter()
    probes = torch.Generator().manual_seed(options.seed + 1)  # Hutchinson probes only
    lq, nfe = cnf.log_likelihood(field, y, options.prior_std, geom, atol=options.atol,
                                 rtol=options.rtol, batch_size=options.nll_batch_size,
                                 divergence=options.divergence, generator=probes)
    if not torch.isfinite(lq).all():
        raise MetricInputError(f"nll_cnf: {int((~torch.isfinite(lq)).sum())} test point(s) got a "
                               f"non-finite log-likelihood")
    return {"nll_cnf": -float(lq.double().mean()), "cnf_nfe": nfe,
            "cnf_likelihood_seconds": time.perf_counter() - t0, "n_test": int(y.shape[0])}


def nll_cnf(builder: Builder, samples, reference, target, **options) -> float:
    """-mean log q(y) over the first ``n_test`` reference points, q the CNF fitted to the
    samples, in nats (no caching; the runner's :mod:`runners.cnf` adds the cell cache)."""
    opts = NLLCNFOptions.from_dict(options).resolved(target.name)
    field, _ = fit(builder, samples, target, opts)
    return score(field, reference, target, opts)["nll_cnf"]
