"""Registry of target energies. ``targets.get("lj13")``, ``targets.names()``."""
from __future__ import annotations

from typing import Callable

from .base import EvalCounter, Target, TargetInputError, TargetProtocol
from .data import ReferenceCorrupt, ReferenceDataError, ReferenceMissing
from .gmm import GMM40
from .particles import LJ13, LJ55, DoubleWell4, LennardJones, remove_mean

_REGISTRY: dict[str, Callable[..., Target]] = {}
_SOURCES: dict[str, str] = {}   # name -> where it came from
_BROKEN: dict[str, str] = {}    # plugin name -> why it failed to load (runners/plugins.py)


def register(name: str, factory: Callable[..., Target], source: str | None = None) -> None:
    """Register ``factory`` (a Target subclass or a function returning one) under ``name``;
    a taken name raises, naming both sources."""
    src = source or f"module {getattr(factory, '__module__', '?')}"
    old = _REGISTRY.get(name)
    if old is factory:
        if source:
            _SOURCES[name] = source
        return
    if old is not None:
        raise ValueError(f"target name clash: {name!r} from {src} is already registered from "
                         f"{_SOURCES[name]}; rename one")
    _REGISTRY[name] = factory
    _SOURCES[name] = src
    _BROKEN.pop(name, None)


def mark_broken(name: str, why: str) -> None:
    if name not in _REGISTRY:
        _BROKEN[name] = why


def source(name: str) -> str:
    return _SOURCES.get(name, "")


def names() -> list[str]:
    return list(_REGISTRY)


def get(name: str, **kwargs) -> Target:
    """A fresh target instance (own counters). kwargs go to its constructor,
    e.g. ``get("lj13", convention="paper")`` or ``get("dw4", data_dir=...)``."""
    if name not in _REGISTRY:
        if name in _BROKEN:
            raise KeyError(_BROKEN[name])
        raise KeyError(f"unknown target {name!r}; valid targets: {', '.join(names())}")
    return _REGISTRY[name](**kwargs)


register("gmm40", GMM40, source="built-in (targets)")
register("dw4", DoubleWell4, source="built-in (targets)")
register("lj13", LJ13, source="built-in (targets)")
register("lj55", LJ55, source="built-in (targets)")

__all__ = ["Target", "TargetProtocol", "EvalCounter", "TargetInputError", "ReferenceDataError",
           "ReferenceMissing", "ReferenceCorrupt",
           "GMM40", "DoubleWell4", "LennardJones", "LJ13", "LJ55", "remove_mean",
           "register", "get", "names", "source", "mark_broken"]
