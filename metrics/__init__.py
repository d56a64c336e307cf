"""Registry of metrics: ``metrics.get(name)(samples [n, dim], reference [m, dim], target) -> float``.
Definitions: docs/metrics.md (spec v1)."""
from __future__ import annotations

from typing import Callable

_REGISTRY: dict[str, Callable] = {}


def register(name: str, fn: Callable) -> Callable:
    if name in _REGISTRY:
        raise ValueError(f"metric {name!r} is already registered")
    _REGISTRY[name] = fn
    return fn


def names() -> list[str]:
    return list(_REGISTRY)


def get(name: str) -> Callable:
    if name not in _REGISTRY:
        raise KeyError(f"unknown metric {name!r}; valid metrics: {', '.join(names())}")
    return _REGISTRY[name]


__all__ = ["register", "get", "names"]
