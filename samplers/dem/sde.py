"""Reverse-SDE sampling and LJ-55's negative-time ascent (official ``sde_integration.py``, §4.7).

Euler-Maruyama on the reverse VE SDE from t = 1 to 0 with ``n_steps`` steps, t_i = 1 - i/n:

    x <- x + g(t_i)^2 s(t_i, x) dt + diffusion_scale * g(t_i) sqrt(dt) z,    z ~ N(0, I),

then ``project`` (mean removal for particle targets) after every step. ``diffusion_scale`` < 1
(LJ-13 0.9, LJ-55 0.5) lowers only the noise, as in the official code (reference-idem.md §6.13).

Negative time (LJ-55 only in the paper): ``n_steps`` deterministic steps
x <- x + clip(grad log p~(x)) * dt with the TRUE score, the norm clipped over the whole flattened
vector (the official clipper applied to a ``[n, dim]`` tensor), projected after every step.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from .estimator import clip_norm
from .schedule import GeometricSchedule

# (t [1] shared by the batch, x [B, dim]) -> [B, dim]
ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Project = Callable[[torch.Tensor], torch.Tensor]


class Interrupted(Exception):
    """``reverse_sde``'s ``stop()`` returned True before the integration finished (the caller's
    budget ran out); there is no result."""


def reverse_sde(score: ScoreFn, x: torch.Tensor, schedule: GeometricSchedule, n_steps: int,
                diffusion_scale: float, generator: torch.Generator,
                project: Project | None = None,
                stop: Callable[[], bool] | None = None) -> torch.Tensor:
    """Integrate from ``x [B, dim]`` (prior samples at t = 1) to t = 0; returns ``[B, dim]``.

    ``score(t, x)`` is called under ``torch.no_grad`` once per step with ``t`` a ``[1]`` tensor
    (one time for the whole batch); ``generator`` must live on ``x``'s device. ``stop()`` (if
    given) is asked before every step; True raises :class:`Interrupted`."""
    if n_steps < 1:
        raise ValueError(f"reverse_sde: n_steps must be >= 1, got {n_steps}")
    dt = 1.0 / n_steps
    z = torch.empty_like(x)
    t_vec = torch.empty(1, device=x.device, dtype=x.dtype)
    with torch.no_grad():
        for i in range(n_steps):
            if stop is not None and stop():
                raise Interrupted(f"reverse_sde: stopped after {i} of {n_steps} steps")
            t = 1.0 - i * dt
            g = schedule.g(t)
            s = score(t_vec.fill_(t), x)
            torch.randn(x.shape, generator=generator, out=z)
            x = torch.add(x, s, alpha=g * g * dt)
            x.add_(z, alpha=diffusion_scale * g * math.sqrt(dt))
            if project is not None:
                x = project(x)
    return x


def negative_time(x: torch.Tensor, true_score: Callable[[torch.Tensor], torch.Tensor],
                  n_steps: int, dt: float = 1e-4, clip: float | None = None,
                  project: Project | None = None) -> torch.Tensor:
    """``n_steps`` ascent steps on log p~ from ``x [B, dim]`` with ``true_score(x) -> [B, dim]``."""
    for _ in range(n_steps):
        x = x + clip_norm(true_score(x), clip) * dt
        if project is not None:
            x = project(x)
    return x
