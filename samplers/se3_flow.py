"""E(3)-equivariant augmented coupling flow (after Midgley et al. 2023, "SE(3) equivariant
augmented coupling flows", code lollcat/se3-augmented-coupling-flows; our own torch code).

State: N particles in D dims, data x ``[B, N, D]`` on the mean-free subspace (Σ_i x_i = 0) and
``n_aug`` augmented sets a ``[B, N, n_aug, D]`` (unconstrained), stacked as channels
z = [x, a_1, ..., a_n_aug] ``[B, N, 1 + n_aug, D]``. The joint density lives on the
((N-1)·D + n_aug·N·D)-dimensional space {x mean-free} x R^(n_aug·N·D) (``metrics.density``'s
convention for x).

Base: x ~ N(0, sigma^2) on the mean-free subspace, a_k | x ~ N(x, aug_scale^2 I) (their
``centre_gravity_gaussian`` with ``conditioned_on_x``; their configs use sigma 1, aug_scale 0.1).

Couplings: the channels split into two halves of (1 + n_aug) / 2 channels (n_aug odd as theirs; x
in the first half). Each of ``n_layers`` layers has two couplings (as their ``for swap in (False,
True)``): the second half given the first, then the first given the second. We use their
"proj" variant with an affine ("real_nvp") inner transform, the simplest one that is exact and
equivariant: for transformed channel c of particle i, an EGNN on the conditioning half (
:class:`samplers.se3_nets.EGNNConditioner`) gives an origin o = z_cond + v_0 and D vectors that
:func:`samplers.se3_nets.equivariant_frame` turns into an orthonormal frame Q; the point is moved
in that frame, p = Q (z - o), p' = s ⊙ p + t, z' = Q^T p' + o, with invariant log s and t from
the EGNN's invariant features through an MLP head whose last layer starts at zero (the identity
map, their ``identity_init``). log|det| = Σ log s over the N·D coordinates moved. Ours: log s =
2 tanh(raw / 2) is bounded (|log s| < 2 per coupling, as our RealNVP), where theirs is
softplus(raw + softplus^-1(1)), unbounded: a safeguard, since we clip gradients at a fixed norm
where they skip and clip dynamically, and a 600 s DW-4 run with the unbounded scale (and squared
distances in the conditioner, see samplers/se3_nets.py) ended with NaN log q at 69 of 4000
samples; with both changes 1200 steps gave none.
Their default is the "spherical" variant (splines in spherical coordinates); "proj" is one of the
variants their paper and code provide, and with affine maps it needs no spline bounds.

Centre of mass: when the first half (holding x) is transformed, the map is applied as is (it is
translation-equivariant) and then every channel is shifted by the new mean of x, so x stays
mean-free (their ``adjust_centering_post_proj``). Because the un-shifted map fixes the translation
direction, the log-det on the quotient space equals Σ log s over all N·D moved coordinates, which
is what we add. Inputs not mean-free are first shifted by their x mean (translation invariance).

Symmetries: log q(x, a) is invariant, and the forward map equivariant, under rotations,
reflections (the frame is O(D)-equivariant; their cross-product frame is only SO(3)), particle
permutations applied to every channel, and translations of all channels together.

Marginal: q(x) = E_{a ~ pi(.|x)} [q(x, a) / pi(a|x)], pi(a|x) = N(x, target_aug_scale^2 I) (their
aux target, scale 0.1), estimated with ``n_samples`` draws (their ``K_marginal_log_lik`` 20); its
exponential is unbiased, its log biased low by ~Var/2.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .nets import init_parameters
from .se3_nets import EGNNConditioner, equivariant_frame


def gaussian_log_prob(r: torch.Tensor, scale: float, dims: tuple[int, ...], n: int) -> torch.Tensor:
    """log N(r; 0, scale^2) summed over ``dims`` whose total size (degrees of freedom) is n."""
    log_norm = n * (math.log(scale) + 0.5 * math.log(2 * math.pi))
    return -0.5 * r.pow(2).sum(dims) / scale ** 2 - log_norm


class ProjCoupling(nn.Module):
    """One coupling: the ``moved`` channels ``[B, N, M, D]`` are transformed given ``cond``
    ``[B, N, M, D]`` (channel c of ``cond`` anchors channel c of ``moved``)."""

    def __init__(self, n_particles: int, n_channels: int, spatial_dim: int, hidden: int,
                 n_blocks: int, n_features: int):
        super().__init__()
        types = torch.arange(n_channels).repeat(n_particles)      # node (i, c) -> c
        self.d = spatial_dim
        self.net = EGNNConditioner(n_channels, types, spatial_dim + 1, n_features, hidden, n_blocks)
        self.head = nn.Sequential(nn.Linear(n_features, hidden), nn.SiLU(),
                                  nn.Linear(hidden, hidden), nn.SiLU(),
                                  nn.Linear(hidden, 2 * spatial_dim))
        self.head[-1].zero_init = True                            # identity at initialisation

    def _params(self, cond):
        b, n, m, d = cond.shape
        vec, feat = self.net(cond.reshape(b, n * m, d))
        vec = vec.reshape(b, n, m, d + 1, d)
        origin = cond + vec[..., 0, :]
        frame = equivariant_frame(vec[..., 1:, :])                # [B, N, M, D, D] rows
        raw, t = self.head(feat).reshape(b, n, m, 2 * d).chunk(2, -1)
        log_s = 2.0 * torch.tanh(raw / 2.0)                      # |log s| < 2 per coupling
        return origin, frame, log_s, t

    def forward(self, moved, cond):
        """-> (moved', log|det d moved'/d moved| ``[B]``)."""
        origin, frame, log_s, t = self._params(cond)
        p = torch.einsum("...kd,...d->...k", frame, moved - origin)
        out = torch.einsum("...kd,...k->...d", frame, log_s.exp() * p + t) + origin
        return out, log_s.sum((1, 2, 3))

    def inverse(self, moved, cond):
        origin, frame, log_s, t = self._params(cond)
        p = torch.einsum("...kd,...d->...k", frame, moved - origin)
        out = torch.einsum("...kd,...k->...d", frame, (p - t) * (-log_s).exp()) + origin
        return out, -log_s.sum((1, 2, 3))


class AugmentedCouplingFlow(nn.Module):
    """q(x, a) on N particles in D dims with ``n_aug`` augmented sets (see the module doc).

    ``sample_joint(n, g) -> (x, a, log q(x, a))``, ``log_prob_joint(x, a)``,
    ``log_prob(x, n_samples, g)`` (marginal estimate), ``sample(n, g) -> (x, log q(x) estimate)``.
    """

    def __init__(self, n_particles: int, spatial_dim: int, generator: torch.Generator,
                 n_aug: int = 1, n_layers: int = 12, hidden: int = 64, n_blocks: int = 3,
                 n_features: int = 128, sigma: float = 1.0, aug_scale: float = 0.1,
                 target_aug_scale: float | None = None, identity_init: bool = True):
        super().__init__()
        if n_aug < 1 or n_aug % 2 == 0:
            raise ValueError(f"n_aug: got {n_aug}; expected an odd integer >= 1 (x and the "
                             f"augmented sets split into two equal halves)")
        if n_particles < 2:
            raise ValueError(f"n_particles: got {n_particles}; expected >= 2")
        self.n, self.d, self.n_aug = n_particles, spatial_dim, n_aug
        self.half = (1 + n_aug) // 2
        self.sigma, self.aug_scale = float(sigma), float(aug_scale)
        self.target_aug_scale = float(aug_scale if target_aug_scale is None else target_aug_scale)
        self.couplings = nn.ModuleList(
            ProjCoupling(n_particles, self.half, spatial_dim, hidden, n_blocks, n_features)
            for _ in range(2 * n_layers))
        init_parameters(self, generator)
        if not identity_init:   # a non-trivial random map (tests)
            with torch.no_grad():
                for c in self.couplings:
                    last = c.head[-1]
                    last.weight.uniform_(-0.3, 0.3, generator=generator)
                    last.bias.uniform_(-0.3, 0.3, generator=generator)

    @property
    def dim_x(self) -> int:
        return (self.n - 1) * self.d

    # ------------------------------------------------------------------ bijection
    def _centre(self, z: torch.Tensor) -> torch.Tensor:
        return z - z[:, :, :1].mean(1, keepdim=True)

    def _step(self, z, k: int, inverse: bool):
        """Coupling k: even k moves the second half given the first, odd k the first (with x)."""
        h = self.half
        first, second = z[:, :, :h], z[:, :, h:]
        c = self.couplings[k]
        if k % 2 == 0:
            second, ld = (c.inverse if inverse else c.forward)(second, first)
            return torch.cat([first, second], 2), ld
        first, ld = (c.inverse if inverse else c.forward)(first, second)
        return self._centre(torch.cat([first, second], 2)), ld

    def forward_map(self, z0: torch.Tensor):
        """Base -> data on ``[B, N, 1 + n_aug, D]``; returns (z, log|det dz/dz0| ``[B]``)."""
        z, total = self._centre(z0), z0.new_zeros(z0.shape[0])
        for k in range(len(self.couplings)):
            z, ld = self._step(z, k, inverse=False)
            total = total + ld
        return z, total

    def inverse_map(self, z: torch.Tensor):
        """Data -> base; returns (z0, log|det dz0/dz| ``[B]``)."""
        z, total = self._centre(z), z.new_zeros(z.shape[0])
        for k in reversed(range(len(self.couplings))):
            z, ld = self._step(z, k, inverse=True)
            total = total + ld
        return z, total

    # ------------------------------------------------------------------ densities
    def base_log_prob(self, z0: torch.Tensor) -> torch.Tensor:
        x, a = z0[:, :, 0], z0[:, :, 1:]
        x = x - x.mean(1, keepdim=True)
        return (gaussian_log_prob(x, self.sigma, (1, 2), self.dim_x)
                + self.aux_log_prob(a, x, self.aug_scale))

    def aux_log_prob(self, a: torch.Tensor, x: torch.Tensor, scale: float | None = None):
        """log N(a; x, scale^2 I) ``[B]`` (default: the aux target's scale)."""
        s = self.target_aug_scale if scale is None else scale
        return gaussian_log_prob(a - x.unsqueeze(2), s, (1, 2, 3), self.n * self.n_aug * self.d)

    def aux_sample(self, x: torch.Tensor, generator: torch.Generator, scale: float | None = None):
        s = self.target_aug_scale if scale is None else scale
        eps = torch.randn(x.shape[0], self.n, self.n_aug, self.d, generator=generator,
                          device=generator.device)
        return x.unsqueeze(2) + s * eps.to(x)

    def log_prob_joint(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Exact log q(x, a) ``[B]`` for x ``[B, N, D]``, a ``[B, N, n_aug, D]``."""
        z0, ld = self.inverse_map(torch.cat([x.unsqueeze(2), a], 2))
        return self.base_log_prob(z0) + ld

    def sample_joint(self, n: int, generator: torch.Generator, device="cpu", dtype=torch.float32):
        eps = torch.randn(n, self.n, self.d, generator=generator).to(device, dtype)
        x0 = self.sigma * (eps - eps.mean(1, keepdim=True))
        a0 = self.aux_sample(x0, generator, self.aug_scale)
        z0 = torch.cat([x0.unsqueeze(2), a0], 2)
        z, ld = self.forward_map(z0)
        return z[:, :, 0], z[:, :, 1:], self.base_log_prob(z0) - ld

    def log_prob(self, x: torch.Tensor, n_samples: int, generator: torch.Generator,
                 chunk: int = 4096) -> torch.Tensor:
        """Importance-sampling estimate of log q(x) ``[B]`` with ``n_samples`` draws of a ~ pi."""
        x = x - x.mean(1, keepdim=True)
        out = []
        rows = max(1, chunk // n_samples)
        for i0 in range(0, x.shape[0], rows):
            xb = x[i0:i0 + rows].repeat_interleave(n_samples, 0)
            a = self.aux_sample(xb, generator)
            lw = self.log_prob_joint(xb, a) - self.aux_log_prob(a, xb)
            lw = lw.reshape(-1, n_samples)
            out.append(torch.logsumexp(lw, 1) - math.log(n_samples))
        return torch.cat(out)

    def sample(self, n: int, generator: torch.Generator, n_samples: int = 20, device="cpu"):
        """x ``[n, N, D]`` mean-free and the estimate of its log q(x)."""
        x, _, _ = self.sample_joint(n, generator, device)
        return x, self.log_prob(x, n_samples, generator)


class FlatAugmentedFlow(nn.Module):
    """The joint flow on flat coordinates u = [x in an orthonormal (Helmert) basis of the mean-free
    subspace, a flattened] ``[B, (N-1)D + n_aug N D]``, with the interface FAB's AIS and buffer use
    (``sample(n, g, device) -> (u, log q(u))``, ``log_prob(u)``): densities in u equal densities on
    the subspace because the basis is orthonormal."""

    def __init__(self, flow: AugmentedCouplingFlow, basis: torch.Tensor):
        super().__init__()
        self.flow = flow
        self.register_buffer("basis", basis)                      # [N*D, (N-1)*D]
        self.dim = flow.dim_x + flow.n * flow.n_aug * flow.d

    def split(self, u: torch.Tensor):
        f = self.flow
        x = (u[:, :f.dim_x] @ self.basis.T).reshape(-1, f.n, f.d)
        return x, u[:, f.dim_x:].reshape(-1, f.n, f.n_aug, f.d)

    def join(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        xc = (x - x.mean(1, keepdim=True)).reshape(x.shape[0], -1)
        return torch.cat([xc @ self.basis, a.reshape(a.shape[0], -1)], 1)

    def sample(self, n: int, generator: torch.Generator, device="cpu"):
        x, a, log_q = self.flow.sample_joint(n, generator, device, self.basis.dtype)
        return self.join(x, a), log_q

    def log_prob(self, u: torch.Tensor) -> torch.Tensor:
        return self.flow.log_prob_joint(*self.split(u))


def joint_log_p_and_grad(flat: FlatAugmentedFlow, target, u: torch.Tensor):
    """FAB's AIS target on the joint space, log p̃(x) + log pi(a|x) (their ``joint_log_prob``), and
    its gradient in u ``[n, dim]``; Z is unchanged because pi is normalised. The target's energy is
    charged through ``target.energy_and_grad``."""
    f = flat.flow
    x, a = flat.split(u.detach())
    e, g = target.energy_and_grad(x.reshape(x.shape[0], -1))
    e, g = e.to(u), g.to(u).reshape(x.shape)
    s2 = f.target_aug_scale ** 2
    r = (a - x.unsqueeze(2)) / s2                                  # -d log pi / d a
    grad_x = r.sum(2) - g
    grad_u = torch.cat([grad_x.reshape(x.shape[0], -1) @ flat.basis, -r.reshape(r.shape[0], -1)], 1)
    return -e + f.aux_log_prob(a, x), grad_u
