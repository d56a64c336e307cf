"""The sampler's training coordinates: y = x / coord_scale, energies always through the target.

The official GMM-40 energy ``__call__`` unnormalises before evaluating log p~: the sampler lives in
y with x = unnormalize(y) = (y + 1) / 2 * 100 - 50 = 50 y (exactly), so scores are in
normalised units, grad_y log p~(50 y) = 50 grad_x log p~(x). The official forward map
((x + 50) / (100 + 1e-5)) * 2 - 1 is applied only to data sets, which iDEM never uses, so the
sampler needs only x = coord_scale * y. Particle targets use coord_scale 1 and keep every
configuration mean-free (:meth:`Space.project`).
"""
from __future__ import annotations

import torch


def remove_mean(x: torch.Tensor, n_particles: int, spatial_dim: int) -> torch.Tensor:
    """``[B, N*D]`` -> the same with each configuration's particle mean subtracted."""
    xp = x.view(x.shape[0], n_particles, spatial_dim)
    return (xp - xp.mean(1, keepdim=True)).view(x.shape)


class Space:
    """Training coordinates of ``target``. Every energy goes through the target's counted public
    methods; ``energy_and_grad`` / ``energy`` take and return training-coordinate quantities."""

    def __init__(self, target, coord_scale: float = 1.0):
        self.target = target
        self.dim = target.dim
        self.scale = float(coord_scale)
        n = getattr(target, "n_particles", None)
        self.particles = (n, target.spatial_dim) if n else None

    def to_original(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.scale if self.scale != 1.0 else y

    def energy_and_grad(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(E(s y) ``[M]``, d/dy E(s y) = s grad E ``[M, dim]``) for ``y [M, dim]``."""
        e, g = self.target.energy_and_grad(self.to_original(y))
        return e, (g * self.scale if self.scale != 1.0 else g)

    def energy(self, y: torch.Tensor) -> torch.Tensor:
        return self.target.energy(self.to_original(y))

    def true_score(self, y: torch.Tensor) -> torch.Tensor:
        """grad_y log p~ = -d/dy E(s y); one counted energy+gradient evaluation per row."""
        return -self.energy_and_grad(y)[1]

    def project(self, y: torch.Tensor) -> torch.Tensor:
        return remove_mean(y, *self.particles) if self.particles else y

    @property
    def clip_group(self) -> int | None:
        """Coordinates per clipping group: one particle, or the whole vector."""
        return self.particles[1] if self.particles else None

    def prior(self, n: int, std: float, generator: torch.Generator, device) -> torch.Tensor:
        """``[n, dim]`` from N(0, std^2 I), mean-free for particles (official Prior / MeanFreePrior)."""
        x = torch.randn(n, self.dim, generator=generator, device=device) * std
        return self.project(x)
