"""Equivariant pieces of the augmented coupling flow (samplers/se3_flow.py): the EGNN conditioner
and the equivariant local frames.

* :class:`EGNNConditioner` (after Satorras et al. 2021, as Midgley et al. 2023 build their
  conditioners): a fully connected graph whose nodes are (particle, channel) pairs of the
  conditioning half of the augmented state. Node features start from the channel's one-hot code and
  log(1 + squared distance to the graph's centroid); edges carry log(1 + squared distance). Ours:
  EGNNs (theirs too) take squared distances, but then a coupling's shift and origin can grow like
  the square of its input's scale, which compounds over stacked couplings (DW-4 FAB runs on
  squared distances gave non-finite flow samples, 16 of 4000 after ~1200 steps); with
  log(1 + d^2) each coupling grows at most linearly. It returns, per
  node, ``n_vectors`` equivariant vectors (sums of neighbour differences weighted by learned edge
  scalars, translation-invariant) and invariant features. Rotations, reflections, translations and
  particle permutations act on the outputs as on the inputs.
* :func:`equivariant_frame`: an orthonormal frame per node from D such vectors. The first D-1
  come from Gram-Schmidt; the last is the (generalised) cross product of those, signed by the last
  input vector. Every frame is exactly orthonormal (the coupling's log-det assumes it) and the map
  vectors -> frame is O(D)-equivariant: a reflection flips the cross product and the sign together.
  Their code (``get_equivariant_orthonormal_basis``) takes the cross product unsigned, which is
  only SO(D)-equivariant. Degenerate inputs (v1 = 0, or v2 parallel to v1 in 3-D; e.g. two
  particles on top of each other in the conditioning half) have measure zero: there a fixed unit
  vector replaces the missing direction, so the frame is still orthonormal (equivariance, not
  exactness, is lost on that set).

All Linear layers are initialised by the caller from an explicit generator
(``samplers.nets.init_parameters``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_TINY = 1e-12


def _unit(v: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """v / |v|, or the unit vector ``fallback`` where |v| is below _TINY: on that measure-zero set
    no equivariant direction exists, and a unit vector keeps the frame orthonormal (the map stays a
    bijection with the stated log-det)."""
    norm = v.norm(dim=-1, keepdim=True)
    return torch.where(norm > _TINY, v / norm.clamp_min(_TINY), fallback)


def _signed(c: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """c times the sign of <v, c> (+1 where it is 0, so the frame stays orthonormal)."""
    s = torch.sign((v * c).sum(-1, keepdim=True))
    return c * torch.where(s == 0, torch.ones_like(s), s)


def equivariant_frame(vectors: torch.Tensor) -> torch.Tensor:
    """``vectors [..., D, D]`` (D vectors of dimension D, D in 1..3) -> orthonormal frame
    ``[..., D, D]`` whose rows are the frame's unit vectors, O(D)-equivariant: frame(v R^T) =
    frame(v) R^T for every orthogonal R."""
    d = vectors.shape[-1]
    if vectors.shape[-2] != d or d not in (1, 2, 3):
        raise ValueError(f"equivariant_frame: needs [..., D, D] with D in 1..3, "
                         f"got {tuple(vectors.shape)}")
    e = torch.eye(d, dtype=vectors.dtype, device=vectors.device)
    q1 = _unit(vectors[..., 0, :], e[0])
    if d == 1:
        return q1.unsqueeze(-2)
    if d == 2:
        perp = torch.stack([-q1[..., 1], q1[..., 0]], -1)   # q1 turned by +90 degrees
        return torch.stack([q1, _signed(perp, vectors[..., 1, :])], -2)
    def reject(v):
        return v - (v * q1).sum(-1, keepdim=True) * q1
    # fallback for v2 parallel to q1: the axis least aligned with q1, made orthogonal to it
    axis = e[q1.abs().argmin(-1)]
    q2 = _unit(reject(vectors[..., 1, :]), _unit(reject(axis), e[1]))
    q3 = _signed(torch.linalg.cross(q1, q2, dim=-1), vectors[..., 2, :])
    return torch.stack([q1, q2, q3], -2)


def _mlp(sizes: list[int], act_last: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2 or act_last:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


def edge_messages(edge: nn.Sequential, h: torch.Tensor, y: torch.Tensor, mask: torch.Tensor):
    """m_ij = edge([h_i, h_j, log(1 + |y_i - y_j|^2)]) ``[B, K, K, H]`` (0 on the diagonal) and the
    normalised differences (y_i - y_j) / (|y_i - y_j| + 1) ``[B, K, K, D]`` (EGNN's bounded form,
    smooth at 0). The first Linear is split into its h_i, h_j and distance parts, so the
    [B, K, K, 2H + 1] concatenation is never built (same function, less work)."""
    diff = y.unsqueeze(2) - y.unsqueeze(1)
    d2 = diff.pow(2).sum(-1, keepdim=True)
    first, hdim = edge[0], h.shape[-1]
    w = first.weight
    pre = (F.linear(h, w[:, :hdim], first.bias).unsqueeze(2)
           + F.linear(h, w[:, hdim:2 * hdim]).unsqueeze(1) + torch.log1p(d2) * w[:, 2 * hdim])
    m = edge[1:](pre) * mask
    return m, diff / (d2 + 1e-12).sqrt().add(1.0)


class _Layer(nn.Module):
    """One E(n)-equivariant message-passing layer on ``h [B, K, H]``, ``y [B, K, D]``."""

    def __init__(self, hidden: int):
        super().__init__()
        self.edge = _mlp([2 * hidden + 1, hidden, hidden], act_last=True)
        self.gate = nn.Linear(hidden, 1)
        self.coord = _mlp([hidden, hidden, 1])
        self.node = _mlp([2 * hidden, hidden, hidden])

    def messages(self, h, y, mask):
        m, unit = edge_messages(self.edge, h, y, mask)
        return m, unit

    def forward(self, h, y, mask):
        m, unit = self.messages(h, y, mask)
        scale = 1.0 / max(h.shape[1] - 1, 1)
        y = y + (unit * self.coord(m)).sum(2) * scale
        agg = (m * torch.sigmoid(self.gate(m))).sum(2) * scale
        return h + self.node(torch.cat([h, agg], -1)), y


class EGNNConditioner(nn.Module):
    """``pos [B, K, D]`` (K = particles x channels, channel of node k = ``types[k]``) ->
    (``vectors [B, K, n_vectors, D]`` equivariant and translation-invariant,
    ``features [B, K, n_features]`` invariant)."""

    def __init__(self, n_types: int, types: torch.Tensor, n_vectors: int, n_features: int,
                 hidden: int, n_blocks: int):
        super().__init__()
        self.register_buffer("onehot", F.one_hot(types.long(), n_types).float(), persistent=False)
        self.embed = nn.Linear(n_types + 1, hidden)
        self.blocks = nn.ModuleList(_Layer(hidden) for _ in range(n_blocks))
        self.out_edge = _mlp([2 * hidden + 1, hidden, hidden], act_last=True)
        self.out_vec = nn.Linear(hidden, n_vectors)
        self.out_feat = _mlp([hidden, hidden, n_features])
        self.n_vectors = n_vectors

    def forward(self, pos: torch.Tensor):
        b, k, _ = pos.shape
        y = pos - pos.mean(1, keepdim=True)                      # translation-invariant from here
        mask = 1.0 - torch.eye(k, dtype=pos.dtype, device=pos.device).unsqueeze(-1)
        r2 = torch.log1p(y.pow(2).sum(-1, keepdim=True))
        h = self.embed(torch.cat([self.onehot.to(pos).expand(b, -1, -1), r2], -1))
        for blk in self.blocks:
            h, y = blk(h, y, mask)
        m, unit = edge_messages(self.out_edge, h, y, mask)
        w = self.out_vec(m)                                       # [B, K, K, n_vectors]
        vectors = torch.einsum("bijv,bijd->bivd", w, unit) / max(k - 1, 1)
        return vectors, self.out_feat(h)
