"""iDEM / pDEM configuration: a typed dataclass whose ``None`` fields take the paper's per-target
value from :data:`PAPER_DEFAULTS` (the official experiment configs, reference-idem.md §4).

Per target (official ``configs/experiment/<target>_idem.yaml``):

===========  ===========  ====  =====  ====  =========  =====  ====  ======  =====  =========
target       sigma range  K     batch  gen   diff.scl.  neg.t  clip  lambda  lr     network
===========  ===========  ====  =====  ====  =========  =====  ====  ======  =====  =========
gmm40        1e-5 .. 1    500   512    1000  1.0        0      70    h+1e-3  5e-4   MLP 128x3
dw4          1e-5 .. 3    1000  512    1000  1.0        0      20    1       1e-3   EGNN 128x3
lj13         0.01 .. 2    1000  512    1000  0.9        0      20    1       1e-3   EGNN 128x5
lj55         0.5 .. 4     100   128    128   0.5        10     20    1       1e-3   EGNN 128x5
===========  ===========  ====  =====  ====  =========  =====  ====  ======  =====  =========

Shared: 100 inner steps per outer iteration, 1000 Euler-Maruyama steps, buffer 10k / min 1k,
1024 initial samples, Adam (no weight decay) with gradient-norm clipping 0.5. GMM-40 is trained in
coordinates divided by 50 (``coord_scale``) and its initial buffer comes from the reverse SDE
driven by the clipped MC estimator (``gmm_init="estimator"``); particle targets start from 1024
prior samples (official ``init_from_prior: true``). Targets outside the paper get the defaults of
their family (``_flat``: GMM-like with scale 1 and a prior start; ``_particles``: LJ-13-like with
diffusion scale 1); set the schedule for them explicitly.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

from ..base import (check_bool, check_choice, check_device, check_int, check_nonnegative,
                    check_positive, validated)

_GMM = dict(sigma_min=1e-5, sigma_max=1.0, n_mc=500, batch_size=512, n_generate=1000,
            diffusion_scale=1.0, n_negative_steps=0, score_clip=70.0, lambda_weighting="h",
            lr=5e-4, gmm_init="estimator", network="mlp", hidden=128, n_layers=3, coord_scale=50.0,
            sample_batch=1000)
_PARTICLE = dict(sigma_min=0.01, sigma_max=2.0, n_mc=1000, batch_size=512, n_generate=1000,
                 diffusion_scale=0.9, n_negative_steps=0, score_clip=20.0, lambda_weighting="none",
                 lr=1e-3, gmm_init="prior", network="egnn", hidden=128, n_layers=5, coord_scale=1.0,
                 sample_batch=1000)

PAPER_DEFAULTS: dict[str, dict] = {
    "gmm40": _GMM,
    "dw4": {**_PARTICLE, "sigma_min": 1e-5, "sigma_max": 3.0, "diffusion_scale": 1.0, "n_layers": 3},
    "lj13": dict(_PARTICLE),
    "lj55": {**_PARTICLE, "sigma_min": 0.5, "sigma_max": 4.0, "n_mc": 100, "batch_size": 128,
             "n_generate": 128, "diffusion_scale": 0.5, "n_negative_steps": 10, "sample_batch": 128},
    # Family defaults for targets that are not in the paper.
    "_flat": {**_GMM, "gmm_init": "prior", "coord_scale": 1.0},
    "_particles": {**_PARTICLE, "diffusion_scale": 1.0},
}
PER_TARGET_FIELDS = tuple(_GMM)
CHOICES = {"lambda_weighting": ("h", "none"), "gmm_init": ("estimator", "prior"),
           "network": ("mlp", "egnn")}


_POSITIVE_INT = ("n_mc", "batch_size", "n_inner", "n_generate", "n_integration_steps", "buffer_size",
                 "n_init", "hidden", "n_layers", "max_outer", "estimator_chunk", "sample_batch")
_NONNEG_INT = ("n_negative_steps", "buffer_min")
_NONNEG = ("score_clip", "grad_clip", "lambda_eps")
_POSITIVE = ("sigma_min", "sigma_max", "diffusion_scale", "negative_dt", "lr", "coord_scale")
_REQUIRED = ("n_inner", "n_integration_steps", "negative_dt", "lambda_eps", "grad_clip",
             "buffer_size", "buffer_min", "n_init")  # fields without a per-target default


@dataclass
class DEMConfig:
    """Hyperparameters of iDEM / pDEM. Fields left ``None`` take ``PAPER_DEFAULTS[target]``."""

    sigma_min: Optional[float] = None        # geometric schedule (training coordinates)
    sigma_max: Optional[float] = None
    n_mc: Optional[int] = None               # K, MC samples of the score estimator
    batch_size: Optional[int] = None         # x_0 per optimiser step
    n_inner: int = 100                       # optimiser steps per outer iteration
    n_generate: Optional[int] = None         # samples pushed to the buffer per outer iteration
    n_integration_steps: int = 1000          # Euler-Maruyama steps of the reverse SDE
    diffusion_scale: Optional[float] = None  # scales the SDE noise only
    n_negative_steps: Optional[int] = None   # negative-time ascent steps in sample() (LJ-55: 10)
    negative_dt: float = 1e-4
    score_clip: Optional[float] = None       # max norm of the regression target; 0 = no clipping
    lambda_weighting: Optional[str] = None   # "h": h(t) + lambda_eps; "none": 1
    lambda_eps: float = 1e-3
    lr: Optional[float] = None               # Adam
    grad_clip: float = 0.5                   # max norm of the parameter gradient; 0 = off
    buffer_size: int = 10_000
    buffer_min: int = 1_000
    n_init: int = 1024                       # initial buffer samples
    gmm_init: Optional[str] = None           # non-particle targets: "estimator" | "prior"
    network: Optional[str] = None            # "mlp" | "egnn"
    hidden: Optional[int] = None
    n_layers: Optional[int] = None           # MLP residual blocks / EGNN layers
    coord_scale: Optional[float] = None      # original = coord_scale * training coordinates
    max_outer: Optional[int] = None          # cap on outer iterations; None: until the budget
    estimator_chunk: Optional[int] = None    # points per energy call; None: all B*K at once
    sample_batch: Optional[int] = None       # samples per reverse-SDE batch (memory only);
    #                                          official eval batches: 1000, LJ-55 128
    compile: bool = False                    # torch.compile the network
    device: str = "cpu"

    def validate(self) -> None:
        """Raise ValueError whose message starts with the field name for any value out of range;
        ``None`` passes for the per-target fields (it means the paper's value)."""
        for name in _POSITIVE_INT:
            check_int(name, getattr(self, name), optional=name not in _REQUIRED)
        for name in _NONNEG_INT:
            check_int(name, getattr(self, name), minimum=0, optional=name not in _REQUIRED)
        for name in _NONNEG:
            check_nonnegative(name, getattr(self, name), optional=name not in _REQUIRED)
        for name in _POSITIVE:
            check_positive(name, getattr(self, name), optional=name not in _REQUIRED)
        for name, allowed in CHOICES.items():
            check_choice(name, getattr(self, name), allowed, optional=True)
        if (self.sigma_min is not None and self.sigma_max is not None
                and self.sigma_max <= self.sigma_min):
            raise ValueError(f"sigma_max: got {self.sigma_max!r}; expected > sigma_min="
                             f"{self.sigma_min!r}")
        if self.buffer_min > self.buffer_size:
            raise ValueError(f"buffer_min: got {self.buffer_min!r}; expected <= buffer_size="
                             f"{self.buffer_size!r}")
        check_bool("compile", self.compile)
        check_device("device", self.device)


def validate(cfg: DEMConfig, who: str) -> None:
    """``cfg.validate()`` with ``who`` prefixed to the message (``idem.n_mc: got 0; ...``)."""
    validated(cfg, who)


def resolve(cfg: DEMConfig, target, who: str) -> DEMConfig:
    """A copy of ``cfg`` with every ``None`` per-target field filled for ``target``."""
    name = getattr(target, "name", "")
    family = "_particles" if getattr(target, "n_particles", None) else "_flat"
    defaults = PAPER_DEFAULTS.get(name, PAPER_DEFAULTS[family])
    filled = {k: defaults[k] for k in PER_TARGET_FIELDS if getattr(cfg, k) is None}
    out = dataclasses.replace(cfg, **filled)
    validate(out, who)
    if out.network == "egnn" and not getattr(target, "n_particles", None):
        raise ValueError(f"{who}.network: got 'egnn', which needs a particle target; {name!r} has "
                         f"no particles; allowed here: mlp")
    if out.buffer_min > out.n_init:
        raise ValueError(f"{who}.buffer_min: got {out.buffer_min}, which exceeds n_init="
                         f"{out.n_init}: the first training batch could not be drawn; expected "
                         f"<= n_init")
    return out
