"""Third-party samplers and targets: entry points and ``plugins=`` modules, one mechanism.

Two ways in, both ending in the ordinary registries (``samplers.register``/``targets.register``):

* **Installed packages** declare entry points in their pyproject.toml::

      [project.entry-points."boltzbench.samplers"]
      ula = "ula_plugin.sampler:ULA"          # a class with name, pretty_name, Config, fit, sample
      [project.entry-points."boltzbench.targets"]
      ring = "mypkg.targets:Ring"             # a factory: Ring(**kwargs) -> Target

  and are found through ``importlib.metadata.entry_points`` after ``pip install``.
* **Code that is not installed**: ``plugins=mod.name,path/to/file.py`` on the command line (and,
  the same mechanism, ``$BOLTZBENCH_PLUGINS``). Importing such a module registers what it defines
  (``@samplers.register`` or ``targets.register(...)``).

The grid records the module list in every cell spec; each worker (local subprocess, SLURM job)
calls :func:`load` with it, and finds the entry points of its own Python environment, which is the
grid's (the launchers start the same interpreter).

A name already taken is an error naming both sources (raised by the registries). An entry point
that fails to import is recorded in :data:`FAILURES` (name, distribution, exception), reported,
and the other samplers stay usable; asking for it by name raises that report. A ``plugins=``
module that fails is a :class:`PluginError`, since the user asked for it explicitly.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import samplers
import targets

GROUPS = {"samplers": "boltzbench.samplers", "targets": "boltzbench.targets"}
PLUGINS_ENV = "BOLTZBENCH_PLUGINS"


class PluginError(ValueError):
    """A plugin clashes with a registered name or cannot be imported (explicit modules)."""


@dataclass(frozen=True)
class Failure:
    kind: str          # "sampler" | "target"
    name: str          # the entry point's name
    source: str        # distribution and entry-point value
    error: str         # "ExceptionType: message"

    def message(self) -> str:
        return f"{self.kind} plugin {self.name!r} from {self.source} failed to load: {self.error}"

    __str__ = message


FAILURES: list[Failure] = []
_DISCOVERED = False


def _where(ep) -> str:
    dist = getattr(ep, "dist", None)
    name = f"distribution {dist.metadata['Name']} {dist.version}" if dist is not None else \
        "an unnamed distribution"
    return f"{name} (entry point {ep.name} = {ep.value})"


def _register(kind: str, name: str, obj, where: str) -> None:
    if kind == "sampler":
        if getattr(obj, "name", None) != name:
            raise PluginError(f"sampler plugin {name!r} from {where}: its class's `name` is "
                              f"{getattr(obj, 'name', None)!r}; it must equal the entry-point name")
        try:
            samplers.register(obj, source=where)
        except ValueError as exc:
            raise PluginError(str(exc)) from None
    else:
        try:
            targets.register(name, obj, source=where)
        except ValueError as exc:
            raise PluginError(str(exc)) from None


def discover() -> list[Failure]:
    """Register every installed entry point of both groups (once per process); returns failures.
    A clash with a registered name raises :class:`PluginError` naming both sources."""
    global _DISCOVERED
    if _DISCOVERED:
        return list(FAILURES)
    _DISCOVERED = True
    for kind, group in (("sampler", GROUPS["samplers"]), ("target", GROUPS["targets"])):
        for ep in sorted(importlib.metadata.entry_points(group=group), key=lambda e: e.name):
            where = _where(ep)
            try:
                obj = ep.load()
            except Exception as exc:  # noqa: BLE001 - a broken plugin must not break the rest
                fail = Failure(kind, ep.name, where, f"{type(exc).__name__}: {exc}")
                FAILURES.append(fail)
                (samplers if kind == "sampler" else targets).mark_broken(ep.name, fail.message())
                continue
            _register(kind, ep.name, obj, where)
    return list(FAILURES)


def split(value) -> tuple[str, ...]:
    """``"a.b,x.py"`` or ``["a.b", "x.py"]`` -> ``("a.b", "x.py")``."""
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(str(p).strip() for p in items if str(p).strip())


def requested(cli=None) -> tuple[str, ...]:
    """$BOLTZBENCH_PLUGINS then ``plugins=`` (module names or .py paths), without repeats."""
    return tuple(dict.fromkeys(split(os.environ.get(PLUGINS_ENV, "")) + split(cli)))


def import_module(mod: str) -> None:
    """Import one ``plugins=`` entry (a module name or a .py path); it registers itself."""
    try:
        if mod.endswith(".py"):
            path = Path(mod)
            name = path.stem
            if name in sys.modules:
                return
            if not path.is_file():
                raise PluginError(f"plugins: {mod!r} is not an existing .py file")
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                sys.modules.pop(name, None)
                raise
        else:
            importlib.import_module(mod)
    except PluginError:
        raise
    except Exception as exc:  # noqa: BLE001 - reported with the module's name
        raise PluginError(f"plugins: cannot import {mod!r}: {type(exc).__name__}: {exc}") from exc


def load(modules=()) -> tuple[str, ...]:
    """Entry points, then ``modules`` (pass :func:`requested`); returns the module list a worker
    needs. Safe to call repeatedly."""
    discover()
    mods = split(modules)
    for mod in mods:
        import_module(mod)
    return mods


def describe() -> list[str]:
    """``--help`` lines: every sampler/target not built in, where it came from, and failures."""
    lines = []
    for kind, reg in (("sampler", samplers), ("target", targets)):
        for name in reg.names():
            src = reg.source(name)
            if src and not src.startswith("built-in"):
                lines.append(f"  {kind} {name}: {src}")
    lines += [f"  FAILED {f.message()}" for f in FAILURES]
    return lines
