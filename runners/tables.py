"""Summary tables: mean ± s.e.m. over seeds, target × sampler, for each metric.

Pure functions of the results frame (one row per cell, as written by ``collect``). Only rows with
``status == "ok"`` and a finite value enter a mean; s.e.m. = sample std (ddof=1) / sqrt(n), NaN
for a single seed (printed without "±"). ``n`` is kept beside each mean so a cell where some
seeds failed is visible.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

import metrics

ID_COLS = ("target", "sampler")


def metric_columns(df: pd.DataFrame) -> list[str]:
    """Metric columns present in ``df`` (registered metrics, then density metrics), in order."""
    known = list(metrics.names()) + list(metrics.DENSITY_METRICS)
    return [m for m in known if m in df.columns and pd.to_numeric(df[m], errors="coerce").notna().any()]


def summarize(df: pd.DataFrame, columns: list[str] | None = None) -> pd.DataFrame:
    """Long frame: target, sampler, metric, mean, sem, n (ok rows with finite values only)."""
    columns = metric_columns(df) if columns is None else columns
    ok = df[df["status"] == "ok"] if "status" in df.columns else df
    out = []
    for (t, s), g in ok.groupby(list(ID_COLS), sort=False):
        for m in columns:
            v = pd.to_numeric(g[m], errors="coerce").to_numpy(dtype=float) if m in g else np.array([])
            v = v[np.isfinite(v)]
            n = len(v)
            mean = float(v.mean()) if n else math.nan
            sem = float(v.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
            out.append({"target": t, "sampler": s, "metric": m, "mean": mean, "sem": sem, "n": n})
    return pd.DataFrame(out, columns=["target", "sampler", "metric", "mean", "sem", "n"])


def fmt(mean: float, sem: float, latex: bool = False) -> str:
    """"1.234 ± 0.012" (4 significant digits for the mean, 2 for the s.e.m.); "–" when missing."""
    if not math.isfinite(mean):
        return "–" if not latex else "--"
    s = f"{mean:.4g}"
    if math.isfinite(sem):
        s += (r" $\pm$ " if latex else " ± ") + f"{sem:.2g}"
    return s


def wide(summary: pd.DataFrame, metric: str, latex: bool = False) -> pd.DataFrame:
    """One metric as a sampler × target table of formatted "mean ± sem" strings."""
    sub = summary[summary["metric"] == metric]
    if sub.empty:
        return pd.DataFrame()
    cells = sub.assign(text=[fmt(m, s, latex) for m, s in zip(sub["mean"], sub["sem"])])
    table = cells.pivot(index="sampler", columns="target", values="text")
    order_t = list(dict.fromkeys(sub["target"]))
    order_s = list(dict.fromkeys(sub["sampler"]))
    return table.reindex(index=order_s, columns=order_t).fillna("–" if not latex else "--")


def status_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per target × sampler: cells by status, e.g. "3 ok" or "2 ok, 1 diverged"."""
    rows = []
    for (t, s), g in df.groupby(list(ID_COLS), sort=False):
        counts = g["status"].value_counts()
        rows.append({"target": t, "sampler": s,
                     "text": ", ".join(f"{n} {k}" for k, n in counts.items())})
    if not rows:
        return pd.DataFrame()
    r = pd.DataFrame(rows)
    return r.pivot(index="sampler", columns="target", values="text").reindex(
        index=list(dict.fromkeys(r["sampler"])), columns=list(dict.fromkeys(r["target"]))).fillna("–")


def _md(table: pd.DataFrame) -> str:
    cols = [table.index.name or ""] + [str(c) for c in table.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for idx, row in table.iterrows():
        lines.append("| " + " | ".join([str(idx)] + [str(v) for v in row]) + " |")
    return "\n".join(lines)


def to_markdown(df: pd.DataFrame, summary: pd.DataFrame | None = None) -> str:
    """All metrics as Markdown sections (sampler rows × target columns), then the status table."""
    summary = summarize(df) if summary is None else summary
    parts = ["# Results: mean ± s.e.m. over seeds (status ok only)", ""]
    for m in dict.fromkeys(summary["metric"]):
        parts += [f"## {m}", "", _md(wide(summary, m)), ""]
    st = status_table(df)
    if not st.empty:
        parts += ["## cell status", "", _md(st), ""]
    return "\n".join(parts)


def to_latex(df: pd.DataFrame, summary: pd.DataFrame | None = None) -> str:
    """One ``tabular`` per metric (booktabs rules), mean $\\pm$ s.e.m."""
    summary = summarize(df) if summary is None else summary
    out = []
    for m in dict.fromkeys(summary["metric"]):
        t = wide(summary, m, latex=True)
        esc = lambda s: str(s).replace("_", r"\_")  # noqa: E731
        out += [f"% {m}", r"\begin{tabular}{l" + "c" * len(t.columns) + "}", r"\toprule",
                " & ".join(["sampler"] + [esc(c) for c in t.columns]) + r" \\", r"\midrule"]
        out += [" & ".join([esc(i)] + list(r)) + r" \\" for i, r in t.iterrows()]
        out += [r"\bottomrule", r"\end{tabular}", ""]
    return "\n".join(out)


def to_csv_frame(summary: pd.DataFrame) -> pd.DataFrame:
    """Numeric summary for CSV: target, sampler, metric, mean, sem, n."""
    return summary.reset_index(drop=True)


def comparison(summary: pd.DataFrame, published: pd.DataFrame) -> pd.DataFrame:
    """Our means beside published numbers where the metric definition matches (``metric`` set in
    published.csv, same reference set). Columns: target, metric, who, method, value, spread."""
    pub = published[(published["metric"].fillna("") != "") &
                    (published["reference_set"].fillna("") == "official")]
    out = []
    for (t, m), g in pub.groupby(["target", "metric"], sort=False):
        ours = summary[(summary["target"] == t) & (summary["metric"] == m)]
        for _, r in ours.iterrows():
            out.append({"target": t, "metric": m, "who": "ours", "method": r["sampler"],
                        "value": r["mean"], "spread": r["sem"], "spread_kind": "s.e.m.",
                        "n": r["n"]})
        for _, r in g.iterrows():
            out.append({"target": t, "metric": m, "who": r["source"], "method": r["method"],
                        "value": r["value"], "spread": r["std"], "spread_kind": "std",
                        "n": r.get("n_seeds")})
    return pd.DataFrame(out, columns=["target", "metric", "who", "method", "value", "spread",
                                      "spread_kind", "n"])


def comparison_markdown(comp: pd.DataFrame) -> str:
    lines = ["# Ours beside published numbers (same metric definition, official reference sets)",
             "", "Published spreads are the source's std; ours are s.e.m. over seeds. Sample sizes "
             "must match for W2 (biased upwards at small n): see n_eval in results.csv.", "",
             "| target | metric | source | method | value |", "|---|---|---|---|---|"]
    for _, r in comp.iterrows():
        spread = r["spread"]
        if r["who"] == "ours":
            val = fmt(float(r["value"]), float(spread))
        else:  # published numbers exactly as printed by the source
            val = f"{r['value']:g}" + (f" ± {spread:g}" if pd.notna(spread) else "")
        lines.append(f"| {r['target']} | {r['metric']} | {r['who']} | {r['method']} | {val} |")
    return "\n".join(lines) + "\n"
