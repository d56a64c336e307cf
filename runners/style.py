"""How results are shown: metric display names, units and direction; sampler colours; pretty names.

One place for what tables (runners/tables.py) and figures (runners/plots.py) print, so a metric
reads the same in summary.md, summary.tex and every axis label, and a sampler has the same colour
in every figure of every run.

* :data:`METRICS` — display name, units and direction of each metric of docs/metrics.md.
* :func:`sampler_color` — each packaged sampler has a fixed colour (:data:`FIXED_COLORS`), so a
  figure lacking one sampler (LJ-55 has no pDEM) does not shift the others; any other name (a
  plugin) is hashed into a second palette.
* :func:`target_pretty`, :func:`sampler_pretty` — display names from the row columns
  (``target_pretty`` / ``sampler_pretty``), else the registries' ``pretty_name``, else the id.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pandas as pd


@dataclass(frozen=True)
class MetricInfo:
    display: str      # "sample W2"
    units: str        # "length", "kT", "nats", "" (dimensionless); no brackets (labels add them)
    better: str       # "lower", "higher", or a phrase ("closer to log Z")

    @property
    def direction(self) -> str:
        """"lower is better", "higher is better", or the phrase itself."""
        return f"{self.better} is better" if self.better in ("lower", "higher") else self.better


METRICS: dict[str, MetricInfo] = {
    "x_w2": MetricInfo("sample-space W2", "length", "lower"),
    "x_w2_aligned": MetricInfo("sample-space W2, aligned (rotations, permutations)", "length",
                               "lower"),
    "eq_w2": MetricInfo("sample-space W2, ASBS eq_w2 (one Hungarian pass, reflections)", "length",
                        "lower"),
    "energy_w1": MetricInfo("energy W1", "kT", "lower"),
    "energy_w2": MetricInfo("energy W2", "kT", "lower"),
    "energy_w2_sq": MetricInfo("energy W2²", "kT²", "lower"),
    "dist_w2_sq": MetricInfo("interatomic-distance W2²", "length²", "lower"),
    "dist_tvd": MetricInfo("interatomic-distance TV (outside mass counted)", "fraction, 0 to 1",
                           "lower"),
    "dist_tvd_official": MetricInfo("interatomic-distance TV (official: inside range only)",
                                    "fraction, 0 to 1", "lower"),
    "energy_tvd": MetricInfo("energy TV (outside mass counted)", "fraction, 0 to 1", "lower"),
    "energy_tvd_official": MetricInfo("energy TV (official: inside range only)",
                                      "fraction, 0 to 1", "lower"),
    "nll": MetricInfo("NLL of the reference under the sampler", "nats", "lower"),
    "nll_cnf": MetricInfo("NLL of the reference under a CNF fitted to the samples", "nats",
                          "lower"),
    "log_z": MetricInfo("log Z estimate (log-mean-exp of weights)", "nats",
                        "closer to the true log Z is better (GMM-40: 0)"),
    "elbo": MetricInfo("ELBO (mean log weight)", "nats", "higher"),
    "ess": MetricInfo("normalised ESS", "fraction of n, 0 to 1", "higher"),
    "elbo_path": MetricInfo("path-space ELBO (mean log path weight; PIS, DDS)", "nats", "higher"),
    "ess_path": MetricInfo("path-space normalised ESS (PIS, DDS)", "fraction of n, 0 to 1",
                           "higher"),
}


def metric_info(name: str) -> MetricInfo:
    """The entry of :data:`METRICS`; an unknown (plugin) metric gets its name and no units."""
    return METRICS.get(name, MetricInfo(name, "", "see the metric's documentation"))


def metric_label(name: str, direction: bool = True) -> str:
    """Axis label: "sample-space W2 [length] (lower is better)"."""
    info = metric_info(name)
    s = info.display + (f" [{info.units}]" if info.units else "")
    return s + (f" ({info.direction})" if direction else "")


# ---- colours --------------------------------------------------------------------------------
# Packaged samplers: a fixed colour each (tab10 without its grey, which would read as the grey
# reference), so neither a figure lacking one sampler nor a plugin registered before or after the
# builtins moves them. A packaged sampler added later without an entry here takes the first free
# colour of _SPARE in registry order. Plugins (a class defined outside the samplers package, or a
# name not registered at all): Dark2 + Set1 by a hash of the name, the same in every figure and run.
FIXED_COLORS = {"mala": "#1f77b4", "hmc": "#ff7f0e", "rwm": "#2ca02c", "smc": "#d62728",
                "pis": "#9467bd", "dds": "#8c564b", "fab": "#e377c2", "idem": "#bcbd22",
                "pdem": "#17becf"}
_SPARE = ["#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2",
          "#dbdb8d", "#9edae5"]
_PLUGIN = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d",
           "#666666", "#e41a1c", "#377eb8", "#4daf4a", "#984ea3", "#ff7f00", "#a65628"]
REFERENCE_COLOR = "0.78"


def _builtin_names() -> list[str]:
    """Registered samplers whose class lives in the samplers package, in registry order."""
    import samplers
    return [n for n in samplers.names()
            if str(getattr(samplers.get(n), "__module__", "")).split(".")[0] == "samplers"]


def sampler_color(name: str) -> str:
    """Fixed hex colour of a sampler (see the comment above :data:`FIXED_COLORS`)."""
    if name in FIXED_COLORS:
        return FIXED_COLORS[name]
    extra = [n for n in _builtin_names() if n not in FIXED_COLORS]
    if name in extra and extra.index(name) < len(_SPARE):
        return _SPARE[extra.index(name)]
    h = int.from_bytes(hashlib.sha256(str(name).encode()).digest()[:8], "big")
    return _PLUGIN[h % len(_PLUGIN)]


def sampler_colors(names) -> dict[str, str]:
    return {n: sampler_color(n) for n in names}


def sampler_order(names) -> list[str]:
    """Builtins in registry order, then the others alphabetically (tables and legends)."""
    builtins = _builtin_names()
    names = list(dict.fromkeys(names))
    return ([n for n in builtins if n in names]
            + sorted(n for n in names if n not in builtins))


# ---- names ----------------------------------------------------------------------------------
def _pretty(df: pd.DataFrame | None, col: str, key: str, registry: str) -> str:
    if df is not None and f"{col}_pretty" in df.columns and col in df.columns:
        v = df.loc[df[col] == key, f"{col}_pretty"].dropna()
        v = v[v.astype(str) != ""]
        if len(v):
            return str(v.iloc[0])
    try:
        mod = __import__(registry)
        obj = mod.get(key)
        return str(getattr(obj, "pretty_name", key) or key)
    except Exception:  # noqa: BLE001 - an unknown or unloadable name is shown as its id
        return str(key)


def target_pretty(name: str, df: pd.DataFrame | None = None) -> str:
    return _pretty(df, "target", name, "targets")


def sampler_pretty(name: str, df: pd.DataFrame | None = None) -> str:
    return _pretty(df, "sampler", name, "samplers")


def is_smoke(profile) -> bool:
    """True for the smoke profile (``smoke``, ``smoke.yaml``, a path to it, ``smoke2``...)."""
    if profile is None or (isinstance(profile, float) and profile != profile):
        return False
    return Path(str(profile)).stem.lower().startswith("smoke")


SMOKE_CAVEAT = ("smoke run: tiny budgets, not comparable to published numbers "
                "(these numbers check the pipeline, not the samplers)")
