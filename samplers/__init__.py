"""Registry of samplers. ``samplers.get("mala")`` returns the class; ``cls.Config`` its config."""
from __future__ import annotations

from .base import (BINDINGS, Budget, BudgetClock, Diverged, Sampler, acceptance_warning,
                   below_one_step_warning, check_bool, check_choice, check_device, check_finite,
                   check_int, check_nonnegative, check_positive, check_range, validated)

_REGISTRY: dict[str, type] = {}


def register(cls: type) -> type:
    """Class decorator: registers ``cls`` under ``cls.name``."""
    if cls.name in _REGISTRY:
        raise ValueError(f"sampler {cls.name!r} is already registered")
    _REGISTRY[cls.name] = cls
    return cls


def names() -> list[str]:
    return list(_REGISTRY)


def get(name: str) -> type:
    if name not in _REGISTRY:
        raise KeyError(f"unknown sampler {name!r}; valid samplers: {', '.join(names())}")
    return _REGISTRY[name]


# Importing a module registers its samplers (explicit list, no folder globbing).
from . import mcmc, smc  # noqa: E402,F401  (MCMC helper: registers mala, hmc, rwm, smc)
from . import dds, fab, pis  # noqa: E402,F401  (PIS/DDS helper)
from . import idem  # noqa: E402,F401  (iDEM helper: registers idem, pdem)

__all__ = ["BINDINGS", "Budget", "BudgetClock", "Diverged", "Sampler", "acceptance_warning",
           "below_one_step_warning", "check_bool", "check_choice", "check_device", "check_finite",
           "check_int", "check_nonnegative", "check_positive", "check_range", "validated",
           "register", "get", "names"]
