"""The K-sample Monte Carlo score estimator of DEM and the official score-norm clipping.

DEM (Akhound-Sadegh et al. 2024, eq. 8) regresses the network on

    S_K(x_t, t) = grad_x log (1/K) sum_k exp(log p~(x_t + sqrt(h(t)) eps_k)),   eps_k ~ N(0, I),

an estimate of the score of p_t = p * N(0, h(t) I). Differentiating the log-mean-exp gives the
softmax(log p~)-weighted mean of grad log p~ at the K perturbed points, which is what
:func:`mc_score` computes: one energy+gradient evaluation of all B x K points (the official code
gets the same number through ``torch.func.grad`` under ``torch.vmap``). Fresh noise per sample;
perturbations are not projected to the mean-free subspace (as in the official code; the particle
energies are translation-invariant, so their gradients are mean-free anyway).

:func:`clip_norm` is the official ``Clipper.clip_scores``: s <- s * min(1, c / (||s|| + 1e-6)),
with the norm over groups of ``group`` coordinates (per particle for particle targets, the whole
vector otherwise). In training it is applied to the regression target only.

Float32 overflow, where we deliberately differ from the official code: LJ gradients overflow to inf
when two particles come within ~1.5e-3 of each other (rare perturbed points at large h). Such a
point has weight exactly 0, and 0 * inf = NaN would poison the whole target (the official
autograd does this); we let weight-0 points contribute 0. And the official norm, computed in
float32, is inf once a component exceeds ~1.8e19, which sets the clip coefficient to 0 (the
target, or LJ-55's negative-time step, silently vanishes); we compute the norm in float64 and
map +-inf components to +-float32 max first, so the clipped vector keeps its direction.
NaN stays NaN, so a broken energy still ends as `Diverged`.
"""
from __future__ import annotations

from typing import Callable

import torch

from samplers.dem.noise import standard_normal

EnergyAndGrad = Callable[[torch.Tensor], "tuple[torch.Tensor, torch.Tensor]"]
_EPS = 1e-6  # official clipper epsilon


def clip_norm(s: torch.Tensor, max_norm: float | None, group: int | None = None) -> torch.Tensor:
    """Scale each group of ``group`` trailing coordinates of ``s [..., dim]`` to norm <= max_norm.

    ``group=None`` takes the norm over the whole last axis. ``max_norm=None`` returns ``s``."""
    if max_norm is None:
        return s
    dim = s.shape[-1]
    group = dim if group is None else group
    if dim % group:
        raise ValueError(f"clip_norm: last axis {dim} is not a multiple of group={group}")
    big = torch.finfo(s.dtype).max
    sg = torch.nan_to_num(s, nan=float("nan"), posinf=big, neginf=-big)
    sg = sg.reshape(*s.shape[:-1], dim // group, group)
    norm = torch.linalg.vector_norm(sg, dim=-1, keepdim=True, dtype=torch.float64)
    coef = (max_norm / (norm + _EPS)).clamp_(max=1.0).to(s.dtype)
    return (sg * coef).reshape(s.shape)


def mc_score(x_t: torch.Tensor, h_t: torch.Tensor, energy_and_grad: EnergyAndGrad, K: int,
             generator: torch.Generator, clip: float | None = None, group: int | None = None,
             chunk: int | None = None) -> torch.Tensor:
    """S_K(x_t, t), optionally clipped: ``x_t [B, dim]``, ``h_t [B]`` (noise variances) -> ``[B, dim]``.

    ``energy_and_grad(y [M, dim]) -> (E [M], grad E [M, dim])`` is called once on all M = B*K
    perturbed points (or in slices of ``chunk`` points, to bound memory; same result).
    ``generator`` must live on ``x_t``'s device. No autograd graph is built.
    """
    if x_t.ndim != 2:
        raise ValueError(f"mc_score: x_t must be [B, dim], got {tuple(x_t.shape)}")
    B, dim = x_t.shape
    if h_t.shape != (B,):
        raise ValueError(f"mc_score: h_t must be [B]={B}, got {tuple(h_t.shape)}")
    if not isinstance(K, int) or K < 1:
        raise ValueError(f"mc_score: K must be a positive int, got {K!r}")
    with torch.no_grad():
        # y = x_t + sqrt(h) eps, built in place in the noise tensor (one B*K*dim allocation).
        y = standard_normal((B, K, dim), generator, dtype=x_t.dtype, device=x_t.device)
        y.mul_(h_t.clamp(min=0).sqrt().to(x_t.dtype)[:, None, None]).add_(x_t[:, None, :])
        y = y.view(B * K, dim)
        if chunk is None or chunk >= B * K:
            energy, grad = energy_and_grad(y)
        else:
            energy = y.new_empty(B * K)
            grad = torch.empty_like(y)
            for i in range(0, B * K, chunk):
                energy[i:i + chunk], grad[i:i + chunk] = energy_and_grad(y[i:i + chunk])
        # log p~ = -E: softmax weights over the K copies, then the weighted mean of -grad E.
        w = torch.softmax(-energy.view(B, K), dim=1)
        score = torch.bmm(w.unsqueeze(1), grad.view(B, K, dim)).squeeze(1).neg_()
        if not torch.isfinite(score).all():  # rare: inf gradients at weight-0 points (0 * inf)
            grad = torch.where((w == 0).view(B * K, 1), 0.0, grad)
            score = torch.bmm(w.unsqueeze(1), grad.view(B, K, dim)).squeeze(1).neg_()
        return clip_norm(score, clip, group)
