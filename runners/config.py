"""Grid configuration: typed omegaconf dataclasses, profiles, and command-line validation.

``parse(argv)`` turns ``key=value`` tokens into a validated :class:`Grid` (the resolved
``GridConfig`` plus, for every sampler, its per-target config values) or raises
:class:`ConfigError` naming the field, what arrived and what is allowed. Nothing is written to disk
here, so bad input exits before any file exists.

Precedence of a sampler's config values on a target: its ``Config`` dataclass defaults < profile
``samplers.<name>.all`` < profile ``samplers.<name>.<target>`` < command line ``<name>.<key>=v``.
Profiles are YAML files of values only (runners/profiles/smoke.yaml documents the structure).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from . import ladder as _ladder
from . import plugins as _plugins

import metrics
import samplers
import targets

PROFILE_DIR = Path(__file__).resolve().parent / "profiles"
LAUNCHERS = ("auto", "local", "slurm", "debug")
BUDGET_KEYS = ("max_energy_evals", "max_seconds", "max_steps")
PROFILE_KEYS = ("seeds", "n_eval", "budget", "budget_ladder", "budget_ladder_s",
                "budget_ladder_steps", "metric_options",
                "samplers", "description")
PLUGINS_ENV = _plugins.PLUGINS_ENV


class ConfigError(ValueError):
    """Bad user input; the CLI prints it and exits with status 2."""


@dataclass
class SlurmConfig:
    partition: Optional[str] = None
    gpus_per_node: int = 0
    cpus_per_task: int = 1
    timeout_min: int = 60           # wall limit of one job (a pack of cells_per_job cells)
    mem_gb: float = 4.0
    array_parallelism: int = 32     # cap on simultaneously running array tasks
    cells_per_job: int = 1          # small cells packed into one job run one after another
    signal_delay_s: int = 90        # USR2 this long before the limit: checkpoint and requeue
    max_num_timeout: int = 3        # requeues after timeout/preemption before giving up
    setup: list = field(default_factory=list)  # shell lines run before the job (e.g. module load)


@dataclass
class GridConfig:
    targets: Any = "all"            # "all", "gmm40,dw4" or [gmm40, dw4]
    samplers: Any = "all"
    seeds: Any = None               # n (seeds 0..n-1) or a list; None: the profile's
    profile: Optional[str] = None   # smoke | paper | path/to/preset.yaml; None: paper + estimate
    launcher: str = "auto"
    out: Optional[str] = None       # default results/runs/<profile>
    n_eval: Optional[int] = None    # samples scored per cell; None: the profile's
    base_seed: int = 0
    workers: int = 0                # local launcher: cells at once; 0 = CPU cores // threads
    threads: int = 1                # torch threads per cell
    timeout_min: float = 120.0      # local launcher: wall limit of one cell process
    collect: bool = True            # write results.csv, tables and figures at the end
    figures: bool = True            # with collect: also the figures (the slowest part)
    yes: bool = False               # skip the confirmation prompt of an unprofiled (paper) run
    plugins: Any = None             # extra sampler/target modules or .py files: "mod,path/x.py"
    budgets: Any = None             # budget axis: energy-evaluation ladder [1e5,1e6,1e7]
    budgets_s: Any = None           # budget axis: wall-seconds ladder [30,300]
    budgets_steps: Any = None       # budget axis: sampler-steps ladder [100,1000] (runners.curve)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)


@dataclass
class Grid:
    """A validated grid: the config, the chosen names and the resolved per-cell settings."""

    config: GridConfig
    profile_name: str
    profile_path: str
    targets: list[str]
    samplers: list[str]
    seeds: list[int]
    n_eval: int
    budgets: dict[str, dict]                      # target -> Budget kwargs
    sampler_configs: dict[tuple[str, str], dict]  # (sampler, target) -> Config values
    metric_options: dict[str, dict]
    plugins: tuple[str, ...]
    out: str
    # target -> (unit, [budget per rung]) for targets with a budget axis (runners/ladder.py)
    ladders: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------- plugins
def plugin_modules(cli=None) -> tuple[str, ...]:
    """``plugins=`` (module names or .py paths) merged with $BOLTZBENCH_PLUGINS (runners/plugins.py)."""
    return _plugins.requested(cli)


def load_plugins(mods: tuple[str, ...]) -> None:
    """Installed entry points plus ``mods``; workers call this with the grid's list."""
    try:
        _plugins.load(mods)
    except (_plugins.PluginError, ValueError) as exc:
        raise ConfigError(str(exc)) from None


# ---------------------------------------------------------------------------- sampler configs
def config_class(name: str) -> type:
    cls = samplers.get(name)
    cfg = getattr(cls, "Config", None)
    if cfg is None or not dataclasses.is_dataclass(cfg):
        raise ConfigError(f"sampler {name!r} has no Config dataclass (its class must expose one)")
    return cfg


def config_keys(name: str) -> list[str]:
    return [f.name for f in dataclasses.fields(config_class(name))]


def check_sampler_values(name: str, values: dict, where: str) -> dict:
    """Type-check ``values`` against sampler ``name``'s Config; returns the resolved full dict."""
    cfg_cls = config_class(name)
    valid = config_keys(name)
    for key in values:
        if key not in valid:
            raise ConfigError(f"{where}: unknown key {key!r} for sampler {name!r}; valid keys of "
                              f"{cfg_cls.__name__}: {', '.join(valid)}")
    return resolve_sampler_config(name, values, where)


def resolve_sampler_config(name: str, values: dict, where: str = "config") -> dict:
    cfg_cls = config_class(name)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(cfg_cls), values)
        return OmegaConf.to_container(merged, resolve=True)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "?"
        raise ConfigError(f"{where}: bad value for {name}.{key}: {_first_line(exc)}") from None


def validate_sampler_config(name: str, target: str, values: dict) -> None:
    """The sampler's own checks (ranges, NaN, enums, device availability) at parse time, so a bad
    value stops the grid before any file exists. ``Config.validate()`` raises ValueError whose
    message starts with the field name; plugin Configs without ``validate`` get type checks only."""
    try:
        cfg = build_sampler_config(name, values)
    except Exception as exc:  # noqa: BLE001 - a Config constructor rejecting the values
        raise ConfigError(f"{name} (target {target}): {_first_line(exc)}") from None
    validate = getattr(cfg, "validate", None)
    if validate is None:
        return
    try:
        validate()
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{name}.{exc} (target {target}; set it in the profile's samplers."
                          f"{name} block or as {name}.<key>=<value>)") from None


def build_sampler_config(name: str, values: dict):
    """The sampler's Config instance (nested dataclasses rebuilt) from a resolved dict."""
    cfg_cls = config_class(name)
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cfg_cls), values))


def _yaml_error(exc: Exception) -> str:
    """A YAML error with its line and column (1-based), which the first line alone loses."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if mark is not None:
        return f"line {mark.line + 1}, column {mark.column + 1}: {problem or _first_line(exc)}"
    return " ".join(str(exc).split())


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


# ---------------------------------------------------------------------------- profiles
def profile_path(name: str) -> Path:
    builtin = sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))
    if name in builtin:
        return PROFILE_DIR / f"{name}.yaml"
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    raise ConfigError(f"profile: got {name!r}; allowed: {', '.join(builtin)} or the path of an "
                      f"existing .yaml preset")


def load_profile(path: Path) -> dict:
    try:
        data = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception as exc:  # noqa: BLE001 - any YAML error is the user's input
        raise ConfigError(f"profile {path}: cannot read it: {_yaml_error(exc)}") from None
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"profile {path}: expected a mapping at the top, got {type(data).__name__}")
    for key in data:
        if key not in PROFILE_KEYS:
            raise ConfigError(f"profile {path}: unknown key {key!r}; allowed: {', '.join(PROFILE_KEYS)}")
    for sect in ("budget", "metric_options", "samplers"):
        data[sect] = data.get(sect) or {}
    return data


def _profile_sampler_values(profile: dict, path: Path, sampler: str, target: str) -> dict:
    entry = profile["samplers"].get(sampler) or {}
    if not isinstance(entry, dict):
        raise ConfigError(f"profile {path}: samplers.{sampler} must map targets (or `all`) to values")
    for tkey in entry:
        if tkey != "all" and tkey not in targets.names():
            raise ConfigError(f"profile {path}: samplers.{sampler}.{tkey}: unknown target; allowed: "
                              f"all, {', '.join(targets.names())}")
    out = {}
    for tkey in ("all", target):
        vals = entry.get(tkey) or {}
        if not isinstance(vals, dict):
            raise ConfigError(f"profile {path}: samplers.{sampler}.{tkey} must be a mapping of "
                              f"{sampler} Config keys to values, got {vals!r}")
        out.update(vals)
    return out


# ---------------------------------------------------------------------------- CLI parsing
def _names(value: Any, field_name: str, valid: list[str]) -> list[str]:
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",") if v.strip()]
    elif isinstance(value, (list, tuple)):
        items = [str(v).strip() for v in value]
    else:
        items = None
    if not items:
        raise ConfigError(f"{field_name}: got {value!r}; expected `all` or a comma-separated list of "
                          f"{', '.join(valid)}")
    if items == ["all"]:
        return list(valid)
    bad = [v for v in items if v not in valid]
    if bad:
        raise ConfigError(f"{field_name}: unknown name(s) {', '.join(map(repr, bad))}; allowed: "
                          f"all, {', '.join(valid)}")
    return list(dict.fromkeys(items))


def _seeds(value: Any) -> list[int]:
    msg = (f"seeds: got {value!r}; expected a positive integer n (seeds 0..n-1) or a list of "
           f"non-negative integers such as [0,4]")
    if isinstance(value, bool):
        raise ConfigError(msg)
    if isinstance(value, int):
        if value < 1:
            raise ConfigError(msg)
        return list(range(value))
    if isinstance(value, (list, tuple)) and value and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
        return list(dict.fromkeys(value))
    raise ConfigError(msg)


def split_tokens(argv: list[str]) -> dict:
    """``key=value`` tokens -> nested plain dict (omegaconf grammar for values)."""
    for tok in argv:
        if "=" not in tok or tok.startswith("="):
            raise ConfigError(f"argument {tok!r} is not of the form key=value (see --help)")
    tree: dict = {}
    for tok in argv:
        try:  # one token at a time, so the error names the token that is malformed
            part = OmegaConf.to_container(OmegaConf.from_dotlist([tok]), resolve=False)
        except Exception as exc:  # noqa: BLE001 - omegaconf grammar or YAML errors
            raise ConfigError(f"{tok.split('=', 1)[0]}: cannot parse {tok!r}: "
                              f"{_first_line(exc)}") from None
        tree = OmegaConf.to_container(OmegaConf.merge(tree, part), resolve=False)
    return tree


def grid_fields() -> list[str]:
    return [f.name for f in dataclasses.fields(GridConfig)]


def parse(argv: list[str]) -> Grid:
    """Validate the command line into a :class:`Grid` (raises ConfigError; writes nothing)."""
    tree = split_tokens(argv)
    plugins = plugin_modules(tree.get("plugins"))
    load_plugins(plugins)
    sampler_names = samplers.names()
    grid_part, cli_sampler = {}, {}
    for key, value in tree.items():
        if key in grid_fields():
            grid_part[key] = value
        elif key in sampler_names:
            if not isinstance(value, dict):
                raise ConfigError(f"{key}: got {value!r}; sampler overrides are written "
                                  f"{key}.<key>=<value>, keys: {', '.join(config_keys(key))}")
            cli_sampler[key] = value
        else:
            raise ConfigError(f"unknown option {key!r}; allowed options: {', '.join(grid_fields())}; "
                              f"sampler sections: {', '.join(sampler_names) or '(none registered)'}")
    if "slurm" in grid_part and not isinstance(grid_part["slurm"], dict):
        raise ConfigError(f"slurm: got {grid_part['slurm']!r}; set fields as slurm.<field>=<value>, "
                          f"fields: {', '.join(f.name for f in dataclasses.fields(SlurmConfig))}")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(GridConfig), grid_part)
        cfg: GridConfig = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        key = str(getattr(exc, "full_key", None) or "")
        value = grid_part
        for part in key.split(".") if key else []:
            value = value.get(part) if isinstance(value, dict) else None
        if key.startswith("slurm"):
            allowed = "slurm fields: " + ", ".join(f.name for f in dataclasses.fields(SlurmConfig))
        else:
            allowed = "options: " + ", ".join(grid_fields())
        raise ConfigError(f"{key or 'config'}: got {value!r}: {_first_line(exc)} ({allowed})") from None

    if cfg.launcher not in LAUNCHERS:
        raise ConfigError(f"launcher: got {cfg.launcher!r}; allowed: {', '.join(LAUNCHERS)}")
    t_names = _names(cfg.targets, "targets", targets.names())
    s_names = _names(cfg.samplers, "samplers", sampler_names)
    for name, low in (("workers", 0), ("threads", 1), ("base_seed", 0)):
        if getattr(cfg, name) < low:
            raise ConfigError(f"{name}: got {getattr(cfg, name)!r}; expected an integer >= {low}")
    if cfg.timeout_min <= 0:
        raise ConfigError(f"timeout_min: got {cfg.timeout_min!r}; expected a positive number")
    for name in ("cpus_per_task", "timeout_min", "array_parallelism", "cells_per_job"):
        if getattr(cfg.slurm, name) < 1:
            raise ConfigError(f"slurm.{name}: got {getattr(cfg.slurm, name)!r}; expected >= 1")

    pname = cfg.profile or "paper"
    ppath = profile_path(pname)
    profile = load_profile(ppath)
    seeds = _seeds(cfg.seeds if cfg.seeds is not None else profile.get("seeds", 1))
    n_eval = cfg.n_eval if cfg.n_eval is not None else profile.get("n_eval", 1000)
    if isinstance(n_eval, bool) or not isinstance(n_eval, int) or n_eval < 2:
        raise ConfigError(f"n_eval: got {n_eval!r}; expected an integer >= 2")

    budgets = {}
    for t in t_names:
        b = profile["budget"].get(t)
        bad = [k for k in b if k not in BUDGET_KEYS] if isinstance(b, dict) else []
        if bad:  # before "no budget": a typo such as max_secs must be named as the problem
            raise ConfigError(f"profile {ppath}: budget.{t}: unknown key(s) "
                              f"{', '.join(map(repr, bad))}; allowed: {', '.join(BUDGET_KEYS)}")
        if not isinstance(b, dict) or not any(b.get(k) is not None for k in BUDGET_KEYS):
            raise ConfigError(f"profile {ppath}: no budget for target {t!r} (budget.{t} needs one "
                              f"of {', '.join(BUDGET_KEYS)})")
        try:
            samplers.Budget(**b)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"profile {ppath}: budget.{t}: {exc}") from None
        budgets[t] = {k: b.get(k) for k in BUDGET_KEYS}

    for m, opts in profile["metric_options"].items():
        if m not in metrics.names() + list(metrics.OPT_IN):
            raise ConfigError(f"profile {ppath}: metric_options.{m}: unknown metric; allowed: "
                              f"{', '.join(metrics.names() + list(metrics.OPT_IN))}")
        if not isinstance(opts, dict):
            raise ConfigError(f"profile {ppath}: metric_options.{m} must be a mapping of keyword "
                              f"arguments, got {opts!r}")
        if m == "nll_cnf":
            try:
                metrics.nll_cnf.NLLCNFOptions.from_dict(opts)
            except ValueError as exc:
                raise ConfigError(f"profile {ppath}: metric_options.{exc}") from None
    for s in profile["samplers"]:
        if s not in sampler_names:
            raise ConfigError(f"profile {ppath}: samplers.{s}: unknown sampler; registered: "
                              f"{', '.join(sampler_names)}")
    for t in profile["budget"]:
        if t not in targets.names():
            raise ConfigError(f"profile {ppath}: budget.{t}: unknown target; allowed: "
                              f"{', '.join(targets.names())}")

    sampler_configs = {}
    for s in s_names:
        for key in cli_sampler.get(s, {}):
            if key not in config_keys(s):
                raise ConfigError(f"{s}.{key}: unknown key for sampler {s!r}; valid keys of "
                                  f"{config_class(s).__name__}: {', '.join(config_keys(s))}")
        for t in t_names:
            values = _profile_sampler_values(profile, ppath, s, t)
            check_sampler_values(s, values, f"profile {ppath.name}: samplers.{s}")
            values.update(cli_sampler.get(s, {}))
            sampler_configs[(s, t)] = check_sampler_values(s, values, "command line")
            validate_sampler_config(s, t, sampler_configs[(s, t)])

    try:
        ladders = _ladder.resolve({"budgets": cfg.budgets, "budgets_s": cfg.budgets_s,
                                   "budgets_steps": cfg.budgets_steps}, profile,
                                  str(ppath), t_names, budgets, targets.names())
    except _ladder.LadderError as exc:
        raise ConfigError(str(exc)) from None

    out = cfg.out or str(Path("results") / "runs" / (ppath.stem if cfg.profile else "paper"))
    return Grid(ladders=ladders, config=cfg, profile_name=ppath.stem, profile_path=str(ppath),
                targets=t_names,
                samplers=s_names, seeds=seeds, n_eval=int(n_eval), budgets=budgets,
                sampler_configs=sampler_configs, metric_options=dict(profile["metric_options"]),
                plugins=plugins, out=out)
