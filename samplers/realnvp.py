"""The RealNVP flow of FAB's non-equivariant option (``flow="realnvp"``, samplers/fab.py) and the
orthonormal Helmert basis of the mean-free subspace on which it lives for particle targets.

Affine couplings with a bounded log-scale 2 tanh(s/2) and random half masks (then their
complements), the last Linear of each conditioner flagged ``zero_init`` so the flow starts as its
standard-normal base.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def helmert_basis(n_particles: int, spatial_dim: int) -> torch.Tensor:
    """Orthonormal basis ``[N*D, (N-1)*D]`` of the mean-free subspace (particle-major flat)."""
    n = n_particles
    h = torch.zeros(n - 1, n, dtype=torch.float64)
    for j in range(1, n):
        h[j - 1, :j] = 1.0 / math.sqrt(j * (j + 1))
        h[j - 1, j] = -j / math.sqrt(j * (j + 1))
    return torch.kron(h.T.contiguous(), torch.eye(spatial_dim, dtype=torch.float64)).float()


class Coupling(nn.Module):
    """Affine coupling: the masked part conditions a bounded log-scale and a shift of the rest."""

    def __init__(self, mask: torch.Tensor, hidden: int):
        super().__init__()
        d = mask.numel()
        self.register_buffer("mask", mask.float())
        self.net = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, hidden),
                                 nn.GELU(), nn.Linear(hidden, 2 * d))
        self.net[-1].zero_init = True

    def _params(self, v):
        s, t = self.net(v * self.mask).chunk(2, -1)
        free = 1 - self.mask
        return 2 * torch.tanh(s / 2) * free, t * free

    def forward(self, u):   # base -> data; returns (y, log|det dy/du|)
        s, t = self._params(u)
        return u * s.exp() + t, s.sum(-1)

    def inverse(self, y):   # data -> base
        s, t = self._params(y)
        return (y - t) * (-s).exp(), -s.sum(-1)


class RealNVP(nn.Module):
    """Flow on R^d with a standard-normal base. ``sample(n, g) -> (u, log q(u))``,
    ``log_prob(u) -> [n]``."""

    def __init__(self, dim: int, n_layers: int, hidden: int, generator: torch.Generator):
        super().__init__()
        self.dim = dim
        layers = []
        for k in range(n_layers):
            if k % 2 == 0:
                mask = torch.zeros(dim)
                mask[torch.randperm(dim, generator=generator)[: dim // 2]] = 1.0
            else:
                mask = 1 - layers[-1].mask
            layers.append(Coupling(mask, hidden))
        self.layers = nn.ModuleList(layers)

    def _base_log_prob(self, e):
        return -0.5 * e.pow(2).sum(-1) - 0.5 * self.dim * math.log(2 * math.pi)

    def sample(self, n: int, generator: torch.Generator, device="cpu"):
        # drawn in float32 and then cast, so a float64 flow sees the float32 flow's stream
        e = torch.randn(n, self.dim, generator=generator).to(device, self.layers[0].mask.dtype)
        log_q, u = self._base_log_prob(e), e
        for layer in self.layers:
            u, ld = layer(u)
            log_q = log_q - ld
        return u, log_q

    def log_prob(self, u: torch.Tensor) -> torch.Tensor:
        ld_sum = u.new_zeros(u.shape[0])
        for layer in reversed(self.layers):
            u, ld = layer.inverse(u)
            ld_sum = ld_sum + ld
        return self._base_log_prob(u) + ld_sum
