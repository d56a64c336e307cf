"""The summary frame behind the tables: per (target, sampler, metric) a state and mean ± s.e.m.

Pure functions of the results frame (one row per cell, as written by ``collect``). Only rows with
``status == "ok"`` and a value enter a mean
(+inf is a value: a W metric of a sample with an infinite energy); s.e.m. = sample std (ddof=1) /
sqrt(n), NaN for a single seed (printed without "±").

Every (target, sampler, metric) gets a *state*, printed as a distinct mark:

========  =========  ===========================================================================
state     mark       meaning
========  =========  ===========================================================================
ok        the value  mean ± s.e.m.; "(n=2/3)" when fewer seeds than ran have a value
na        n/a        not applicable: the metric is undefined for this sampler on this target
                     (e.g. NLL without a sampler density, aligned W2 on GMM-40), or the sampler
                     does not support the target (every row ``skipped``)
noref     no ref     ok seeds, but no reference to score them against (``reference_source``
                     "missing")
failed    failed     no ok seed: every seed ended ``error``, ``diverged`` or ``timeout``
error     err        ok seeds with a reference, but the metric raised on each (``metric_errors``)
none      –          no row: the pair was not run
========  =========  ===========================================================================

Rows' ``warnings`` become footnotes on these cells (runners/table_layout.py).
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import pandas as pd

import metrics

from . import style

ID_COLS = ("target", "sampler")
MARKS = {"na": "n/a", "noref": "no ref", "failed": "failed", "error": "err", "none": "–"}
MARK_TEXT = {
    "na": "not applicable (metric undefined for this sampler/target, or the sampler does not "
          "support the target)",
    "noref": "no reference: the seeds ran but could not be scored (reference_source missing)",
    "failed": "no ok seed (error, diverged or timeout; see the status table)",
    "error": "the metric raised on every ok seed (see metric_errors in results.csv)",
    "none": "not run",
}
FAILED_STATUSES = ("error", "diverged", "timeout")
SUMMARY_COLS = ["target", "sampler", "metric", "mean", "sem", "n", "n_ok", "n_seeds", "state",
                "profile", "n_eval", "units", "direction"]


def metric_columns(df: pd.DataFrame) -> list[str]:
    """Metric columns present in ``df`` (registered metrics, then density metrics), in order."""
    known = list(dict.fromkeys(list(metrics.names()) + list(metrics.DENSITY_METRICS)
                               + list(metrics.PATH_METRICS) + list(metrics.OPT_IN)))
    return [m for m in known if m in df.columns and pd.to_numeric(df[m], errors="coerce").notna().any()]


@lru_cache(maxsize=None)
def applicable(target: str, sampler: str) -> frozenset | None:
    """Metrics defined for ``sampler`` on ``target`` (``metrics.applicable`` with the sampler's
    declared density or importance weights), or None when either name is not registered."""
    import samplers
    import targets
    try:
        cls = samplers.get(sampler)
        t = targets.get(target)
    except Exception:  # noqa: BLE001 - unknown (plugin) names: decided from the rows instead
        return None
    own_log_z = {"log_z"} if getattr(cls, "gives_log_z", False) else set()
    opt_in = frozenset(metrics.OPT_IN)  # from samples only: every sampler, when a profile asks
    if getattr(cls, "has_log_prob", False):
        return frozenset(metrics.applicable(t, True)) | opt_in
    if getattr(cls, "has_importance_weights", False):  # log Z, path ELBO, path ESS
        return frozenset(metrics.applicable(t, False, path_weights=True)) | opt_in
    return frozenset(metrics.applicable(t, False)) | own_log_z | opt_in


def column_or(g: pd.DataFrame, name: str, default="") -> pd.Series:
    """``g[name]``, or ``default`` on every row when the rows do not carry that column."""
    return g[name] if name in g.columns else pd.Series([default] * len(g), index=g.index)


def _no_reference(g: pd.DataFrame) -> pd.Series:
    return column_or(g, "reference_source").astype(str) == "missing"


def _metric_errors(g: pd.DataFrame) -> str:
    return " ".join(str(v) for v in column_or(g, "metric_errors").dropna())


def _profile(g: pd.DataFrame) -> str:
    return ", ".join(dict.fromkeys(str(p) for p in column_or(g, "profile").dropna() if str(p)))


def _n_eval(g: pd.DataFrame) -> str:
    """Samples scored per seed ("1000"; several values "; "-joined; "" when unrecorded)."""
    vals = [str(int(v)) for v in pd.to_numeric(column_or(g, "n_eval"), errors="coerce").dropna()]
    return "; ".join(dict.fromkeys(vals))


def cell_state(g: pd.DataFrame, metric: str) -> tuple[str, np.ndarray]:
    """(state, values) of one (target, sampler) group for ``metric``; values are the ok, scored
    seeds' values without NaN (see the module docstring)."""
    if g.empty:
        return "none", np.array([])
    status = column_or(g, "status", "ok").astype(str)
    run = g[status != "skipped"]
    if run.empty:
        return "na", np.array([])
    t, s = str(g["target"].iloc[0]), str(g["sampler"].iloc[0])
    app = applicable(t, s)
    col = pd.to_numeric(column_or(run, metric, math.nan), errors="coerce")
    ok = (column_or(run, "status", "ok").astype(str) == "ok")
    if app is not None and metric not in app:
        return "na", np.array([])
    if not ok.any():
        return "failed", np.array([])
    v = col[ok].to_numpy(dtype=float)
    v = v[~np.isnan(v)]
    if len(v):  # a value needs no reference (log Z, ELBO, ESS are computed without one)
        return "ok", v
    scored = ok & ~_no_reference(run)
    if not scored.any():
        return "noref", v
    if app is None and metric not in _metric_errors(run[scored]):
        return "na", v  # unknown sampler/target, never computed and never failed: undefined
    return "error", v


def mean_sem(v: np.ndarray) -> tuple[float, float]:
    n = len(v)
    if n == 0:
        return math.nan, math.nan
    if not np.isfinite(v).all():
        return float(np.mean(v)), math.nan  # +inf (or nan for +inf and -inf together)
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan


def summarize(df: pd.DataFrame, columns: list[str] | None = None) -> pd.DataFrame:
    """Long frame, one row per (target, sampler, metric): mean, sem, n (seeds with a value),
    n_ok (ok seeds), n_seeds (seeds run, skipped ones excluded), state, profile, units,
    direction."""
    columns = metric_columns(df) if columns is None else columns
    out = []
    if df.empty:
        return pd.DataFrame(columns=SUMMARY_COLS)
    for (t, s), g in df.groupby(list(ID_COLS), sort=False):
        status = column_or(g, "status", "ok").astype(str)
        n_seeds = int((status != "skipped").sum())
        n_ok = int((status == "ok").sum())
        for m in columns:
            state, v = cell_state(g, m)
            mean, sem = mean_sem(v)
            info = style.metric_info(m)
            out.append({"target": t, "sampler": s, "metric": m, "mean": mean, "sem": sem,
                        "n": len(v), "n_ok": n_ok, "n_seeds": n_seeds, "state": state,
                        "profile": _profile(g), "n_eval": _n_eval(g), "units": info.units,
                        "direction": info.direction})
    return pd.DataFrame(out, columns=SUMMARY_COLS)


def fmt(mean: float, sem: float, latex: bool = False) -> str:
    """"1.234 ± 0.012" (4 significant digits for the mean, 2 for the s.e.m.); "–" when missing."""
    if math.isnan(mean):
        return "–" if not latex else "--"
    if math.isinf(mean):
        return ("+" if mean > 0 else "-") + (r"$\infty$" if latex else "∞")
    s = f"{mean:.4g}"
    if math.isfinite(sem):
        s += (r" $\pm$ " if latex else " ± ") + f"{sem:.2g}"
    return s


def to_csv_frame(summary: pd.DataFrame) -> pd.DataFrame:
    """Numeric summary for CSV: target, sampler, metric, mean, sem, n, n_ok, n_seeds, state,
    profile, units, direction."""
    return summary.reset_index(drop=True)
