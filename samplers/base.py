"""The `Sampler` protocol, the compute `Budget`, and the errors samplers raise.

Protocol: ``sampler = samplers.get("mala")(config)``; ``sampler.fit(target, budget, generator)``;
``sampler.sample(n, generator) -> [n, dim]``; ``sampler.log_prob(x)`` where ``has_log_prob``.
Every energy evaluation goes through the target's public methods, which count it.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch


class Diverged(RuntimeError):
    """A sampler produced NaN/inf (samples, loss or parameters). Recorded as status ``diverged``."""


@dataclass(frozen=True)
class Budget:
    """Caps on what ``fit`` may spend; ``None`` means no cap. At least one cap must be set.

    ``max_energy_evals`` counts energy evaluations charged to the target (one per configuration),
    ``max_seconds`` wall time of ``fit``, ``max_steps`` the sampler's own notion of a step
    (an MCMC transition, an optimiser step), documented per sampler.
    """

    max_energy_evals: int | None = None
    max_seconds: float | None = None
    max_steps: int | None = None

    def __post_init__(self):
        for field_name in ("max_energy_evals", "max_seconds", "max_steps"):
            v = getattr(self, field_name)
            if v is not None and (not isinstance(v, (int, float)) or v <= 0 or math.isnan(v)):
                raise ValueError(f"Budget.{field_name} must be a positive number or None, got {v!r}")
        if self.max_energy_evals is None and self.max_seconds is None and self.max_steps is None:
            raise ValueError("Budget: set at least one of max_energy_evals, max_seconds, max_steps")

    def start(self, target) -> "BudgetClock":
        return BudgetClock(self, target)


class BudgetClock:
    """Tracks spending since ``fit`` began; samplers call ``exhausted(step)`` between steps.

    ``allows(evals)`` says whether a further call costing ``evals`` energy evaluations fits, so a
    sampler can stop *before* overshooting the energy cap.
    """

    def __init__(self, budget: Budget, target):
        self.budget = budget
        self.target = target
        self.t0 = time.perf_counter()
        self.e0 = target.counter.energy_evals

    @property
    def energy_evals(self) -> int:
        return self.target.counter.energy_evals - self.e0

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.t0

    def allows(self, evals: int) -> bool:
        b = self.budget
        return b.max_energy_evals is None or self.energy_evals + evals <= b.max_energy_evals

    def exhausted(self, steps_done: int = 0) -> bool:
        b = self.budget
        return ((b.max_energy_evals is not None and self.energy_evals >= b.max_energy_evals)
                or (b.max_seconds is not None and self.seconds >= b.max_seconds)
                or (b.max_steps is not None and steps_done >= b.max_steps))


@runtime_checkable
class Sampler(Protocol):
    name: ClassVar[str]
    pretty_name: ClassVar[str]
    has_log_prob: ClassVar[bool]

    def fit(self, target, budget: Budget, generator: torch.Generator) -> dict[str, Any]: ...
    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor: ...


def check_finite(x: torch.Tensor, what: str) -> torch.Tensor:
    """Raise `Diverged` naming ``what`` if ``x`` holds NaN or inf."""
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).sum())
        raise Diverged(f"{what}: {bad} non-finite values")
    return x
