"""Pairwise alignment costs of particle configurations under permutations and rotations.

``aligned_sq_costs(x, y, N, D)`` returns the ``[n, m]`` matrix of

    c_ij = min over permutations π and rotations R of  Σ_k || x_i,π(k) R - y_j,k ||²

(squared Euclidean distance of the flattened configurations after aligning sample i onto
reference j), for mean-free configurations. Proper rotations only by default; ``reflections=True``
also allows improper orthogonal maps, as the official iDEM ``Eq-EMD2`` does (Kabsch without a
determinant correction).

How the minimum is found (documented in docs/metrics.md, "x_w2_aligned"):

* ``N <= EXACT_MAX_PARTICLES`` (DW-4): exactly. Every one of the N! permutations is tried and the
  best rotation for each has a closed form (Kabsch: the maximal trace of R^T H over rotations is
  the sum of singular values of H = X_π^T Y, the smallest one subtracted twice when det H < 0).
* larger N (LJ-13, LJ-55): a rotation- and permutation-invariant multi-start local search. Each
  configuration is first rotated into its principal-axes frame (eigenvectors of X^T X, made a
  proper rotation). Starts: the 24 rotations of the cube (signed axis permutations with
  determinant +1; all 48 signed permutations with reflections), applied to the sample's frame,
  plus ``extra_starts`` random rotations drawn from a fixed seed. Per start, one round =
  Hungarian assignment (``scipy.optimize.linear_sum_assignment`` on squared particle distances)
  then Kabsch. The best start is refined by ``n_rounds - 1`` further alternating rounds
  (assignment under the current rotation, then Kabsch); no round can increase the cost. The
  result is an upper bound on the true minimum; it is exact when the two configurations are a
  rotated and permuted copy of each other (distinct principal moments). LJ-13 clusters are
  nearly spherical, so their principal axes are poorly defined and the landscape has many local
  minima: docs/metrics.md records how far this search is from a 200-start search.

Cost: (starts + n_rounds - 1) Hungarian calls of size N per pair: about 180 µs per pair for
N = 13 and 4 ms for N = 55 on one core, so callers cap n and m (``x_w2_aligned``: 500 per side
for N <= 13, 128 above).
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

# Up to this many particles every permutation is enumerated (5! = 120 per pair).
EXACT_MAX_PARTICLES = 5
# Pairs handled per vectorised block (bounds memory: block x starts x N x N doubles).
_BLOCK_PAIRS = 8192
# Seed of the optional extra random starts (fixed: the metric is deterministic).
EXTRA_STARTS_SEED = 13013


def max_trace(h: torch.Tensor, reflections: bool) -> torch.Tensor:
    """max over orthogonal R (proper only unless ``reflections``) of tr(R^T H); ``[..., D, D]`` ->
    ``[...]``. This is the Kabsch optimum: ||X_π R - Y||² = |X|² + |Y|² - 2 max_trace."""
    if h.shape[-1] == 2:
        # Closed form in 2-D: rotations give sqrt((a+d)² + (b-c)²), reflections sqrt((a-d)² + (b+c)²).
        a, b, c, d = h[..., 0, 0], h[..., 0, 1], h[..., 1, 0], h[..., 1, 1]
        proper = torch.sqrt((a + d) ** 2 + (b - c) ** 2)
        return torch.maximum(proper, torch.sqrt((a - d) ** 2 + (b + c) ** 2)) if reflections else proper
    s = torch.linalg.svdvals(h)
    if reflections:
        return s.sum(-1)
    negative = torch.linalg.det(h) < 0
    return s.sum(-1) - 2 * s[..., -1] * negative


def kabsch(h: torch.Tensor, reflections: bool) -> torch.Tensor:
    """The optimal R ``[..., D, D]`` maximising tr(R^T H) (so that X_π R ≈ Y)."""
    u, _, vh = torch.linalg.svd(h)
    if not reflections:
        sign = torch.sign(torch.linalg.det(u @ vh))
        sign = torch.where(sign == 0, torch.ones_like(sign), sign)
        u = torch.cat([u[..., :-1], u[..., -1:] * sign[..., None, None]], dim=-1)
    return u @ vh


def principal_frame(xp: torch.Tensor) -> torch.Tensor:
    """Coordinates in the principal-axes frame: ``[n, N, D]`` -> ``[n, N, D]``, obtained by a
    proper rotation (so the frame is defined up to proper axis-sign flips)."""
    _, v = torch.linalg.eigh(xp.transpose(-1, -2) @ xp)
    flip = torch.linalg.det(v) < 0
    v = torch.cat([v[..., :-1], torch.where(flip[:, None, None], -v[..., -1:], v[..., -1:])], dim=-1)
    return xp @ v


def cube_rotations(spatial_dim: int, reflections: bool) -> torch.Tensor:
    """Signed permutation matrices ``[k, D, D]``: the 24 proper ones in 3-D (4 in 2-D), or all of
    them (48 / 8) with ``reflections``. A group, so the set of starts does not depend on which
    sign the eigen-solver gave each principal axis."""
    mats = []
    for perm in itertools.permutations(range(spatial_dim)):
        for signs in itertools.product((1.0, -1.0), repeat=spatial_dim):
            m = torch.zeros(spatial_dim, spatial_dim, dtype=torch.float64)
            m[range(spatial_dim), perm] = torch.tensor(signs, dtype=torch.float64)
            if reflections or torch.linalg.det(m) > 0:
                mats.append(m)
    return torch.stack(mats)


def random_rotations(k: int, spatial_dim: int, seed: int = EXTRA_STARTS_SEED) -> torch.Tensor:
    """``k`` Haar-random proper rotations ``[k, D, D]`` from a generator seeded ``seed``."""
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(k, spatial_dim, spatial_dim, generator=g,
                                       dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]
    q[:, :, 0] *= torch.linalg.det(q)[:, None]  # make every one proper
    return q


def start_rotations(spatial_dim: int, reflections: bool, extra_starts: int) -> torch.Tensor:
    starts = [cube_rotations(spatial_dim, reflections)]
    if extra_starts > 0:
        extra = random_rotations(extra_starts, spatial_dim)
        starts.append(extra)
        if reflections:
            mirror = torch.ones(spatial_dim, dtype=torch.float64)
            mirror[0] = -1.0
            starts.append(extra * mirror)
    return torch.cat(starts)


def aligned_sq_costs(x: torch.Tensor, y: torch.Tensor, n_particles: int, spatial_dim: int,
                     reflections: bool = False, n_rounds: int = 2,
                     extra_starts: int = 0) -> torch.Tensor:
    """Squared aligned distances ``[n, m]`` between mean-free ``x [n, N*D]`` and ``y [m, N*D]``.

    ``n_rounds`` (>= 1) and ``extra_starts`` (>= 0) apply to the local search used above
    ``EXACT_MAX_PARTICLES``; below it the result is exact and they are ignored."""
    if not isinstance(n_rounds, int) or n_rounds < 1:
        raise ValueError(f"n_rounds must be an int >= 1, got {n_rounds!r}")
    if not isinstance(extra_starts, int) or extra_starts < 0:
        raise ValueError(f"extra_starts must be an int >= 0, got {extra_starts!r}")
    xp = x.to(torch.float64).reshape(x.shape[0], n_particles, spatial_dim)
    yp = y.to(torch.float64).reshape(y.shape[0], n_particles, spatial_dim)
    if n_particles <= EXACT_MAX_PARTICLES:
        return _exact_costs(xp, yp, reflections)
    starts = start_rotations(spatial_dim, reflections, extra_starts)
    return _search_costs(principal_frame(xp), principal_frame(yp), starts, reflections, n_rounds)


def _exact_costs(xp, yp, reflections):
    n, npart, _ = xp.shape
    perms = torch.tensor(list(itertools.permutations(range(npart))))  # [P, N]
    x_perm = xp[:, perms]  # [n, P, N, D]
    norms = xp.pow(2).sum((-2, -1))[:, None] + yp.pow(2).sum((-2, -1))[None, :]
    out = torch.empty(n, yp.shape[0], dtype=torch.float64)
    rows = max(1, _BLOCK_PAIRS // max(1, yp.shape[0]))
    for i0 in range(0, n, rows):
        h = torch.einsum("ipka,jkc->ijpac", x_perm[i0:i0 + rows], yp)  # [r, m, P, D, D]
        best = max_trace(h, reflections).amax(-1)
        out[i0:i0 + rows] = (norms[i0:i0 + rows] - 2 * best).clamp_min(0)
    return out


def _assign(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """For each pair, the permutation π ``[B, N]`` such that a[π] best matches b (minimal sum of
    squared distances), by one Hungarian solve per pair."""
    cost = torch.cdist(a, b).pow(2).numpy()
    perm = np.empty(cost.shape[:2], dtype=np.int64)
    rows = np.arange(cost.shape[1])
    for k in range(cost.shape[0]):
        _, col = linear_sum_assignment(cost[k])
        perm[k, col] = rows  # row r of a is matched with row col[r] of b
    return torch.from_numpy(perm)


def _round(xa: torch.Tensor, xb: torch.Tensor, moved: torch.Tensor) -> torch.Tensor:
    """One round: assign ``moved`` (xa under the current rotation) onto xb, then return
    H = xa[π]^T xb ``[B, D, D]`` for Kabsch on the unmoved xa."""
    perm = _assign(moved, xb)
    xperm = torch.gather(xa, 1, perm[..., None].expand_as(xa))
    return xperm.transpose(-1, -2) @ xb


def _search_costs(xc, yc, starts, reflections, n_rounds):
    n, m = xc.shape[0], yc.shape[0]
    norms = (xc.pow(2).sum((-2, -1))[:, None] + yc.pow(2).sum((-2, -1))[None, :]).reshape(-1)
    out = torch.empty(n * m, dtype=torch.float64)
    for p0 in range(0, n * m, _BLOCK_PAIRS):
        idx = torch.arange(p0, min(p0 + _BLOCK_PAIRS, n * m))
        xa, xb = xc[idx // m], yc[idx % m]
        best_tr = torch.full((len(idx),), -math.inf, dtype=torch.float64)
        best_h = torch.zeros(len(idx), xc.shape[-1], xc.shape[-1], dtype=torch.float64)
        for k in range(len(starts) + n_rounds - 1):
            # starts first, then refinement rounds from the best rotation found so far
            rot = starts[k] if k < len(starts) else kabsch(best_h, reflections)
            h = _round(xa, xb, xa @ rot)
            tr = max_trace(h, reflections)
            better = tr > best_tr
            best_tr = torch.where(better, tr, best_tr)
            best_h[better] = h[better]
        out[idx] = (norms[idx] - 2 * best_tr).clamp_min(0)
    return out.reshape(n, m)
