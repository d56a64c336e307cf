"""Deliberately broken samplers for tests/test_check.py: each breaks one protocol requirement.

Not registered anywhere: the tests pass the classes to ``runners.check.check_sampler`` or name
them on the command line as ``tests/helpers_check.py:Uncounted``.
"""
from __future__ import annotations

import math
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


class WithDensity(Good):
    """Standard normal samples (on particles: on the mean-free subspace) with their exact
    log-density: N(0, I) in any orthonormal basis of the space the samples live in."""
    name = "t_with_density"
    has_log_prob = True

    def _d(self):
        t = self.target
        return t.dim if t.n_particles is None else (t.n_particles - 1) * t.spatial_dim

    def log_prob(self, x):
        x = x.double()
        return (-0.5 * (x * x).sum(-1) - 0.5 * self._d() * math.log(2 * math.pi)).float()


class OffByConstant(WithDensity):
    """log_prob one nat too high (e.g. a log-determinant term dropped)."""
    name = "t_off_by_constant"

    def log_prob(self, x):
        return super().log_prob(x) + 1.0


class FullSpaceDensity(WithDensity):
    """Particles: the density of the full N·D-dimensional Gaussian instead of the mean-free
    subspace one (D/2·log 2π off)."""
    name = "t_full_space_density"

    def _d(self):
        return self.target.dim


class Stateful(Good):
    """Fit learns a scale (from the steps it ran); state_dict carries it, and a state loaded
    before ``fit`` is applied when the target is bound, as the built-in samplers do."""
    name = "t_stateful"

    def __init__(self, config=None):
        super().__init__(config)
        self.scale, self._pending = 1.0, None

    def fit(self, target, budget, generator):
        info = super().fit(target, budget, generator)
        self.scale = 1.0 + 0.01 * target.counter.energy_evals / self.config.n_chains
        if self._pending is not None:
            self.scale, self._pending = self._pending["scale"], None
        return info

    def _noise(self, n, generator):
        return self.scale * super()._noise(n, generator)

    def state_dict(self):
        return {"scale": self.scale}

    def load_state_dict(self, state):
        self._pending = dict(state)


class ForgetfulState(Stateful):
    """load_state_dict accepts the state and drops it."""
    name = "t_forgetful_state"

    def load_state_dict(self, state):
        pass


class AutogradGradient(Good):
    """Takes the gradient by autograd through the public energy: charged by the target."""
    name = "t_autograd_gradient"

    def _spend(self, x):
        x = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(self.target.energy(x).sum(), x)
        return g
