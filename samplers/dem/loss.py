"""The DEM regression loss and its time weighting lambda(t) (reference-idem.md §4.4).

loss = mean_b lambda(t_b) * mean_d (s_theta(t_b, x_t)_d - clip(S_K(x_t, t_b))_d)^2

lambda(t) = h(t) + 1e-3 for GMM-40 (official ``BasicLambdaWeighter``, epsilon 1e-3) and 1 for the
particle targets (``NoLambdaWeighter``).
"""
from __future__ import annotations

import torch

from .schedule import GeometricSchedule

LAMBDA_KINDS = ("h", "none")


def lambda_weight(t: torch.Tensor, schedule: GeometricSchedule, kind: str,
                  eps: float = 1e-3) -> torch.Tensor:
    """lambda(t) ``[B]`` for times ``t [B]``: ``"h"`` -> h(t) + eps, ``"none"`` -> 1."""
    if kind == "h":
        return schedule.h(t) + eps
    if kind == "none":
        return torch.ones_like(t)
    raise ValueError(f"lambda_weight: kind must be one of {LAMBDA_KINDS}, got {kind!r}")


def dem_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Scalar loss from predictions and targets ``[B, dim]`` and weights ``[B]``."""
    return (weight * (pred - target).pow(2).mean(-1)).mean()
