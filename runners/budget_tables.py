"""Tables of a grid with a budget axis (runners/ladder.py): the best sampler at each budget.

Pure functions of the results frame. :func:`budget_points` is the long frame the budget figures
draw (runners/budget_plots.py): per (target, sampler, rung, metric) the mean ± s.e.m. over the ok
seeds with a value (runners/tables.py's ``cell_state``), beside the mean energy evaluations and
wall seconds those seeds spent. :func:`best_at_budget` ranks the samplers of each (target,
metric, rung) in the metric's direction and says whether the best beats the second by more
than their combined s.e.m. ``sqrt(sem_1² + sem_2²)`` ("yes" / "no"; "?" when either has a single
seed, so no s.e.m.). Metrics without a direction (log Z: "closer to log Z") are not ranked.

``write`` puts ``best_at_budget.{md,csv}`` into the tables folder; ``top_rung`` picks each
(target, sampler)'s largest rung for the ordinary summary tables, which have no budget column.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from . import rows, style
from .tables import cell_state, mean_sem, metric_columns

POINT_COLS = ["target", "sampler", "budget_unit", "budget", "metric", "mean", "sem", "n",
              "energy_evals", "seconds", "continued"]
BEST_COLS = ["target", "metric", "direction", "budget_unit", "budget", "best", "best_mean",
             "best_sem", "best_energy_evals", "second", "second_mean", "second_sem",
             "second_energy_evals", "gap", "combined_sem", "gap_exceeds_sem", "n_samplers"]
UNIT_COL = {"energy_evals": "budget_energy_evals", "seconds": "budget_seconds",
            "steps": "budget_steps"}


def with_budget(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of ``df`` on the budget axis, with a numeric ``budget`` column in their own unit."""
    if "budget_unit" not in df.columns:
        return df.iloc[0:0].assign(budget=pd.Series(dtype=float))
    sub = df[df["budget_unit"].isin(list(UNIT_COL))].copy()
    sub["budget"] = [float(r[UNIT_COL[r["budget_unit"]]]) for _, r in sub.iterrows()]
    return sub


def top_rung(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with only each (target, sampler)'s largest rung (a ladder extended for some
    samplers only keeps the others at their own top); rows without a rung are kept."""
    sub = with_budget(df)
    if sub.empty:
        return df
    keep = sub.groupby(["target", "sampler"])["budget"].transform("max") == sub["budget"]
    return pd.concat([df.drop(index=sub.index), df.loc[sub.index[keep]]]).sort_index()


def budget_points(df: pd.DataFrame, metrics: list[str] | None = None) -> pd.DataFrame:
    sub = with_budget(df)
    metrics = metric_columns(sub) if metrics is None else metrics
    out = []
    for (t, s, unit, b), g in sub.groupby(["target", "sampler", "budget_unit", "budget"],
                                          sort=False):
        ok = g[g["status"] == "ok"] if "status" in g.columns else g
        ev = pd.to_numeric(ok.get("energy_evals"), errors="coerce")
        secs = (pd.to_numeric(ok.get("fit_seconds"), errors="coerce")
                + pd.to_numeric(ok.get("sample_seconds"), errors="coerce").fillna(0))
        cont = ok["ran_fresh"].astype(str).str.lower().eq("false").any() \
            if "ran_fresh" in ok.columns else False
        for m in metrics:
            state, v = cell_state(g, m)
            if state != "ok":
                continue
            mean, sem = mean_sem(v)
            out.append({"target": t, "sampler": s, "budget_unit": unit, "budget": b, "metric": m,
                        "mean": mean, "sem": sem, "n": len(v),
                        "energy_evals": float(ev.mean()) if len(ev) else math.nan,
                        "seconds": float(secs.mean()) if len(secs) else math.nan,
                        "continued": bool(cont)})
    return pd.DataFrame(out, columns=POINT_COLS)


def best_at_budget(df: pd.DataFrame, metrics: list[str] | None = None) -> pd.DataFrame:
    """One row per (target, metric, rung): best and second sampler with mean ± s.e.m., the gap
    and whether it exceeds the combined s.e.m. Steps rungs are not ranked: a step is each
    sampler's own unit (an optimiser step, a chain transition), so equal steps are not equal
    compute."""
    pts = budget_points(df, metrics)
    if not pts.empty:
        pts = pts[pts["budget_unit"] != "steps"]
    out = []
    for (t, m, unit, b), g in pts.groupby(["target", "metric", "budget_unit", "budget"],
                                          sort=False):
        better = style.metric_info(m).better
        if better not in ("lower", "higher"):
            continue
        g = g[np.isfinite(g["mean"].to_numpy(float))]
        if g.empty:
            continue
        g = g.sort_values("mean", ascending=better == "lower", kind="stable")
        first = g.iloc[0]
        r = {"target": t, "metric": m, "direction": f"{better} is better", "budget_unit": unit,
             "budget": b, "best": first["sampler"], "best_mean": first["mean"],
             "best_sem": first["sem"], "best_energy_evals": first["energy_evals"], "second": "",
             "second_mean": math.nan, "second_sem": math.nan,
             "second_energy_evals": math.nan, "gap": math.nan, "combined_sem": math.nan,
             "gap_exceeds_sem": "", "n_samplers": len(g)}
        if len(g) > 1:
            second = g.iloc[1]
            comb = math.sqrt(first["sem"] ** 2 + second["sem"] ** 2)
            gap = abs(second["mean"] - first["mean"])
            r.update(second=second["sampler"], second_mean=second["mean"],
                     second_sem=second["sem"], second_energy_evals=second["energy_evals"],
                     gap=gap, combined_sem=comb,
                     gap_exceeds_sem="?" if math.isnan(comb) else ("yes" if gap > comb else "no"))
        out.append(r)
    return pd.DataFrame(out, columns=BEST_COLS)


def _pm(mean: float, sem: float) -> str:
    if not np.isfinite(mean):
        return "–"
    return f"{mean:.4g}" + (f" ± {sem:.2g}" if np.isfinite(sem) else "")


def _short(v: float) -> str:
    """1e4, 2.5e6, 120: short numbers for the table."""
    return f"{v:.3g}".replace("e+0", "e").replace("e+", "e") if np.isfinite(v) else "–"


def _budget_text(unit: str, b: float) -> str:
    return {"energy_evals": f"{_short(b)} evals", "steps": f"{b:g} steps"}.get(unit, f"{b:g} s")


def to_markdown(best: pd.DataFrame, df: pd.DataFrame | None = None) -> str:
    lines = ["# Best sampler at each budget", "",
             "Mean ± s.e.m. over ok seeds; 'gap > s.e.m.' compares the difference of the best "
             "and the second with their combined s.e.m. sqrt(sem₁² + sem₂²) ('?': a single "
             "seed, no s.e.m.). The budget caps each sampler's fit; 'spent' is what the cells "
             "spent in all, sampling included (PIS/DDS pay for generation in energy evaluations; "
             "iDEM and FAB in network evaluations: results.csv's network_evals, "
             "docs/budgets.md).", ""]
    for (t, m), g in best.groupby(["target", "metric"], sort=False):
        lines += [f"## {style.target_pretty(t, df)}: {style.metric_label(m)}", "",
                  "| budget | best | mean ± s.e.m. | spent | second | mean ± s.e.m. | spent "
                  "| gap > s.e.m. |",
                  "|---|---|---|---|---|---|---|---|"]
        for _, r in g.iterrows():
            second = style.sampler_pretty(r["second"], df) if r["second"] else "–"
            lines.append(f"| {_budget_text(r['budget_unit'], r['budget'])} | "
                         f"{style.sampler_pretty(r['best'], df)} | "
                         f"{_pm(r['best_mean'], r['best_sem'])} | "
                         f"{_short(r['best_energy_evals'])} | {second} | "
                         f"{_pm(r['second_mean'], r['second_sem'])} | "
                         f"{_short(r['second_energy_evals'])} | "
                         f"{r['gap_exceeds_sem'] or '–'} |")
        lines.append("")
    return "\n".join(lines)


def write(df: pd.DataFrame, table_dir) -> list:
    best = best_at_budget(df)
    md, csv = table_dir / "best_at_budget.md", table_dir / "best_at_budget.csv"
    rows.write_text(md, to_markdown(best, df))
    rows.write_text(csv, best.to_csv(index=False))
    return [md, csv]
