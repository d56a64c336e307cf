"""Small time-conditioned networks shared by the path-space samplers (PIS, DDS).

The control network follows the "PIS-Grad" form of Zhang & Chen (2022), which the iDEM code's PIS
module calls ``t_tnet_grad`` and which DDS (Vargas et al. 2023) reuses:

    u(t, z, s) = NN(z, emb(t)) + NN_t(emb(t)) * s,        s = clipped target score feature,

with a sinusoidal time embedding whose frequencies are fixed (0.1 ... 100, as in PIS) and whose phase
is learned. Both output layers start at zero, so an untrained sampler *is* its reference process
(zero control), which makes the initial loss a known quantity.

Particle targets, ``network="mlp"``: NN is a plain MLP on the flattened mean-free coordinates
followed by mean removal, translation-invariant but neither permutation- nor rotation-equivariant.
``network="egnn"`` (:class:`EquivariantControlNet`): NN is the EGNN that iDEM uses
(samplers/dem/networks.py, the official ``EGNN_dynamics``), whose output is E(n)-equivariant
(rotations, reflections, translations) and permutation-equivariant, times a learned scalar gate
that starts at 0 (so the untrained control is still exactly zero). NN_t(t) is a scalar, so the
score term keeps every symmetry of the target either way, and the whole control is equivariant.

All parameters are initialised from an explicit ``torch.Generator`` (:func:`init_parameters`),
never from the global RNG.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from targets.particles import remove_mean


class FourierTime(nn.Module):
    """``t [B]`` (in [0, 1]) -> ``[B, 2 * channels]``: sin/cos of (fixed freq * t + learned phase)."""

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("freqs", torch.linspace(0.1, 100.0, channels))
        self.phase = nn.Parameter(torch.zeros(channels))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        arg = t[:, None] * self.freqs + self.phase
        return torch.cat([arg.sin(), arg.cos()], dim=-1)


def _mlp(sizes: list[int], zero_last: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.GELU())
    if zero_last:
        layers[-1].zero_init = True  # read by init_parameters
    return nn.Sequential(*layers)


class ControlNet(nn.Module):
    """u(t, z, s) = NN(z, emb(t)) + NN_t(emb(t)) * s.

    Shapes: ``t`` scalar or ``[B]``, ``z`` and ``s`` ``[B, dim]`` -> ``[B, dim]``.
    ``particles = (n_particles, spatial_dim)`` makes the output mean-free per configuration.
    """

    def __init__(self, dim: int, hidden: int = 64, n_layers: int = 2,
                 particles: tuple[int, int] | None = None):
        super().__init__()
        if dim < 1 or hidden < 1 or n_layers < 1:
            raise ValueError(f"ControlNet: dim, hidden, n_layers must be >= 1, got "
                             f"{dim}, {hidden}, {n_layers}")
        if particles is not None and particles[0] * particles[1] != dim:
            raise ValueError(f"ControlNet: particles {particles} do not match dim {dim}")
        self.dim, self.particles = dim, particles
        self.embed = FourierTime(hidden)
        self.time_state = _mlp([2 * hidden, hidden, hidden], zero_last=False)
        self.state = _mlp([dim + hidden] + [hidden] * n_layers + [dim], zero_last=True)
        self.time_grad = _mlp([2 * hidden] + [hidden] * (n_layers + 1) + [1], zero_last=True)

    def forward(self, t, z: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=z.dtype, device=z.device)
        if t.ndim == 0:
            t = t.expand(z.shape[0])
        emb = self.embed(t)
        out = self.state(torch.cat([z, self.time_state(emb)], dim=-1)) + self.time_grad(emb) * s
        return self.project(out)

    def project(self, v: torch.Tensor) -> torch.Tensor:
        """Remove the per-configuration particle mean (identity for non-particle targets)."""
        if self.particles is None:
            return v
        return remove_mean(v, *self.particles)


class EquivariantControlNet(nn.Module):
    """u(t, z, s) = g · EGNN(t, z) + NN_t(emb(t)) * s for particle targets, E(n)- and
    permutation-equivariant; ``g`` a scalar parameter initialised at 0 (ReZero-style), so the
    sampler starts as its reference process like :class:`ControlNet`."""

    def __init__(self, dim: int, hidden: int, n_layers: int, particles: tuple[int, int]):
        super().__init__()
        from .dem.networks import EGNN
        if particles is None or particles[0] * particles[1] != dim:
            raise ValueError(f"network 'egnn': needs a particle target (n_particles, spatial_dim) "
                             f"matching dim {dim}, got {particles}; use network 'mlp'")
        self.dim, self.particles = dim, particles
        self.egnn = EGNN(particles[0], particles[1], hidden=hidden, n_layers=n_layers)
        self.gate = nn.Parameter(torch.zeros(()))
        self.embed = FourierTime(hidden)
        self.time_grad = _mlp([2 * hidden] + [hidden] * 2 + [1], zero_last=True)

    def forward(self, t, z: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=z.dtype, device=z.device)
        if t.ndim == 0:
            t = t.expand(z.shape[0])
        out = self.gate * self.egnn(t, z) + self.time_grad(self.embed(t)) * s
        return self.project(out)

    project = ControlNet.project


NETWORKS = ("mlp", "egnn")


def build_control_net(kind: str, dim: int, hidden: int, n_layers: int,
                      particles: tuple[int, int] | None, generator: torch.Generator) -> nn.Module:
    """The control network ``kind`` ("mlp": :class:`ControlNet`; "egnn":
    :class:`EquivariantControlNet`), every parameter drawn from ``generator``."""
    if kind == "mlp":
        return init_parameters(ControlNet(dim, hidden, n_layers, particles), generator)
    if kind == "egnn":
        from .dem.networks import init_parameters as init_egnn
        net = EquivariantControlNet(dim, hidden, n_layers, particles)
        init_egnn(net.egnn, generator)          # the EGNN's own (Xavier-flagged) initialisation
        init_parameters(net.time_grad, generator)
        return net
    raise ValueError(f"network: got {kind!r}; allowed: {', '.join(NETWORKS)}")


@torch.no_grad()
def init_parameters(module: nn.Module, generator: torch.Generator) -> nn.Module:
    """Initialise every ``nn.Linear`` like PyTorch's default (U(±1/sqrt(fan_in)) for weight and
    bias) but from ``generator``; layers flagged ``zero_init`` get zeros. Other parameters (the
    time-embedding phase) start at zero."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            if getattr(m, "zero_init", False):
                m.weight.zero_()
                m.bias.zero_()
            else:
                bound = 1.0 / math.sqrt(m.in_features)
                m.weight.uniform_(-bound, bound, generator=generator)
                m.bias.uniform_(-bound, bound, generator=generator)
        elif isinstance(m, FourierTime):
            m.phase.zero_()
    return module
