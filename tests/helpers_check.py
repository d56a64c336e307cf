"""Deliberately broken samplers for tests/test_check.py: each breaks one protocol requirement.

Not registered anywhere: the tests pass the classes to ``runners.check.check_sampler`` or name
them on the command line as ``tests/helpers_check.py:Uncounted``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from samplers import Budget


class Good:
    """Langevin-free toy: fit spends ``n_chains`` energy+gradient evaluations per step within the
    budget; samples are Gaussian draws from the explicit generator (mean-free on particles)."""

    name = "t_good"
    pretty_name = "Good"
    has_log_prob = False

    @dataclass
    class Config:
        n_chains: int = 32

        def validate(self) -> None:
            if not isinstance(self.n_chains, int) or self.n_chains < 1:
                raise ValueError(f"n_chains: got {self.n_chains!r}; expected a positive integer")

    def __init__(self, config=None):
        self.config = config or self.Config()

    def _centre(self, x):
        return x if self.target.n_particles is None else self.target.remove_mean(x)

    def _spend(self, x):
        return self.target.energy_and_grad(x)

    def fit(self, target, budget: Budget, generator: torch.Generator) -> dict:
        self.target, clock, steps = target, budget.start(target), 0
        x = torch.randn(self.config.n_chains, target.dim, generator=generator)
        while not clock.exhausted(steps) and self._allows(clock):
            self._spend(x)
            steps += 1
        return {"budget_binding": clock.binding, "warnings": []}

    def _allows(self, clock):
        return clock.allows(self.config.n_chains)

    def _noise(self, n, generator):
        return torch.randn(n, self.target.dim, generator=generator)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return self._centre(self._noise(n, generator))


class Uncounted(Good):
    """Reaches the energy through the private method: the target's counter misses it."""
    name = "t_uncounted"

    def _spend(self, x):
        return self.target._energy_and_grad(x)


class Overrun(Good):
    """Ignores the energy cap: one batch of 4000 configurations against a cap of 3001."""
    name = "t_overrun"

    def _spend(self, x):
        return self.target.energy_and_grad(x.repeat(125, 1))  # 32 * 125 = 4000


class GlobalRNG(Good):
    """Draws its samples from the global RNG instead of the given generator."""
    name = "t_global_rng"

    def _noise(self, n, generator):
        return torch.randn(n, self.target.dim)


class WrongShape(Good):
    """One coordinate too many."""
    name = "t_wrong_shape"

    def sample(self, n, generator):
        return torch.randn(n, self.target.dim + 1, generator=generator)


class NotMeanFree(Good):
    """Particle samples keep a centre of mass."""
    name = "t_not_mean_free"

    def sample(self, n, generator):
        return self._centre(self._noise(n, generator)) + 0.5


class Zeros(Good):
    """Returns zeros (the planted PIS bug of issue 15)."""
    name = "t_zeros"

    def sample(self, n, generator):
        return torch.zeros(n, self.target.dim)
