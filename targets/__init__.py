"""Registry of target energies. ``targets.get("lj13")``, ``targets.names()``."""
from __future__ import annotations

from typing import Callable

from .base import EvalCounter, Target, TargetInputError, TargetProtocol
from .data import ReferenceCorrupt, ReferenceDataError, ReferenceMissing
from .gmm import GMM40
from .particles import LJ13, LJ55, DoubleWell4, LennardJones, remove_mean

_REGISTRY: dict[str, Callable[..., Target]] = {}


def register(name: str, factory: Callable[..., Target]) -> None:
    if name in _REGISTRY:
        raise ValueError(f"target {name!r} is already registered")
    _REGISTRY[name] = factory


def names() -> list[str]:
    return list(_REGISTRY)


def get(name: str, **kwargs) -> Target:
    """A fresh target instance (own counters). kwargs go to its constructor,
    e.g. ``get("lj13", convention="paper")`` or ``get("dw4", data_dir=...)``."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown target {name!r}; valid targets: {', '.join(names())}")
    return _REGISTRY[name](**kwargs)


register("gmm40", GMM40)
register("dw4", DoubleWell4)
register("lj13", LJ13)
register("lj55", LJ55)

__all__ = ["Target", "TargetProtocol", "EvalCounter", "TargetInputError", "ReferenceDataError",
           "ReferenceMissing", "ReferenceCorrupt",
           "GMM40", "DoubleWell4", "LennardJones", "LJ13", "LJ55", "remove_mean",
           "register", "get", "names"]
