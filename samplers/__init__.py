"""Registry of samplers. ``samplers.get("mala")`` returns the class; ``cls.Config`` its config."""
from __future__ import annotations

from .base import (BINDINGS, Budget, BudgetClock, Diverged, Sampler, acceptance_warning,
                   below_one_step_warning, check_bool, check_choice, check_device, check_finite,
                   check_int, check_nonnegative, check_positive, check_range, validated)

_REGISTRY: dict[str, type] = {}
_SOURCES: dict[str, str] = {}   # name -> where it came from ("built-in (samplers.mcmc)", ...)
_BROKEN: dict[str, str] = {}    # plugin name -> why it failed to load (runners/plugins.py)


def _default_source(cls: type) -> str:
    mod = getattr(cls, "__module__", "?")
    return f"built-in ({mod})" if mod.startswith("samplers.") else f"module {mod}"


def register(cls: type = None, *, source: str | None = None):
    """Class decorator: registers ``cls`` under ``cls.name``. ``source`` says where it came from
    (default: its module); a second class under a taken name raises, naming both sources.
    Usable as ``@register`` or ``register(cls, source=...)``."""
    if cls is None:
        return lambda c: register(c, source=source)
    src = source or _default_source(cls)
    old = _REGISTRY.get(cls.name)
    if old is cls:  # the same class again (a module that registers itself and an entry point)
        if source:
            _SOURCES[cls.name] = source
        return cls
    if old is not None:
        raise ValueError(f"sampler name clash: {cls.name!r} from {src} is already registered "
                         f"from {_SOURCES.get(cls.name, _default_source(old))}; rename one")
    _REGISTRY[cls.name] = cls
    _SOURCES[cls.name] = src
    _BROKEN.pop(cls.name, None)
    return cls


def mark_broken(name: str, why: str) -> None:
    """A plugin named ``name`` failed to load; ``get(name)`` raises with ``why``."""
    if name not in _REGISTRY:
        _BROKEN[name] = why


def source(name: str) -> str:
    """Where sampler ``name`` came from ("" when unknown)."""
    if name in _REGISTRY:
        return _SOURCES.get(name, _default_source(_REGISTRY[name]))
    return ""


def names() -> list[str]:
    return list(_REGISTRY)


def get(name: str) -> type:
    if name not in _REGISTRY:
        if name in _BROKEN:
            raise KeyError(_BROKEN[name])
        raise KeyError(f"unknown sampler {name!r}; valid samplers: {', '.join(names())}")
    return _REGISTRY[name]


# Importing a module registers its samplers (explicit list, no folder globbing).
from . import mcmc, smc  # noqa: E402,F401  (MCMC helper: registers mala, hmc, rwm, smc)
from . import dds, fab, pis  # noqa: E402,F401  (PIS/DDS helper)
from . import idem  # noqa: E402,F401  (iDEM helper: registers idem, pdem)

__all__ = ["BINDINGS", "Budget", "BudgetClock", "Diverged", "Sampler", "acceptance_warning",
           "below_one_step_warning", "check_bool", "check_choice", "check_device", "check_finite",
           "check_int", "check_nonnegative", "check_positive", "check_range", "validated",
           "register", "get", "names", "source", "mark_broken"]
