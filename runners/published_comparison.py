"""Ours beside published numbers (results/published.csv) where the metric definition matches.

Pure functions of the summary frame (runners/tables.py ``summarize``) and the published frame
(runners/collect.py ``load_published``); collect writes ``tables/published_comparison.{md,csv}``.
A published figure enters only with a metric name of ours and the official reference set; our rows
say when their sample size differs from the published one.
"""
from __future__ import annotations

import pandas as pd

from . import style
from .tables import MARK_TEXT, MARKS, fmt

def comparison(summary: pd.DataFrame, published: pd.DataFrame) -> pd.DataFrame:
    """Our means beside published numbers where the metric definition matches (``metric`` set in
    published.csv, same reference set). Columns: target, metric, who, method, value, spread,
    spread_kind, n, profile (ours), state (ours: see the module docstring), note."""
    pub = published[(published["metric"].fillna("") != "") &
                    (published["reference_set"].fillna("") == "official")]
    out = []
    for (t, m), g in pub.groupby(["target", "metric"], sort=False):
        ours = summary[(summary["target"] == t) & (summary["metric"] == m)]
        published_sizes = {str(int(v)) for v in pd.to_numeric(g["n_samples"], errors="coerce")
                           .dropna()} if "n_samples" in g else set()
        for _, r in ours.iterrows():
            prof, n_eval = r.get("profile", ""), str(r.get("n_eval", "") or "")
            notes = [style.SMOKE_CAVEAT] if style.is_smoke(prof) else []
            if n_eval and published_sizes and n_eval not in published_sizes:
                # W2-type metrics are biased upwards at small n: a figure at another sample size
                # is not the same number (results/published.csv n_samples).
                notes.append(f"scored on {n_eval} samples; published on "
                             f"{', '.join(sorted(published_sizes))}: not comparable")
            out.append({"target": t, "metric": m, "who": "ours",
                        "method": style.sampler_pretty(r["sampler"]),
                        "value": r["mean"], "spread": r["sem"], "spread_kind": "s.e.m.",
                        "n": r["n"], "n_samples": n_eval, "profile": prof,
                        "state": r.get("state", "ok"), "note": "; ".join(notes)})
        for _, r in g.iterrows():
            n_samples = pd.to_numeric(pd.Series([r.get("n_samples")]), errors="coerce").iloc[0]
            out.append({"target": t, "metric": m, "who": r["source"], "method": r["method"],
                        "value": r["value"], "spread": r["std"], "spread_kind": "std",
                        "n": r.get("n_seeds"),
                        "n_samples": "" if pd.isna(n_samples) else str(int(n_samples)),
                        "profile": "", "state": "", "note": ""})
    return pd.DataFrame(out, columns=["target", "metric", "who", "method", "value", "spread",
                                      "spread_kind", "n", "n_samples", "profile", "state",
                                      "note"])


def comparison_markdown(comp: pd.DataFrame) -> str:
    ours = comp[comp["who"] == "ours"]
    smoke_run = any(style.is_smoke(p) for p in ours.get("profile", pd.Series([], dtype=str)))
    lines = ["# Ours beside published numbers (same metric definition, official reference sets)",
             ""]
    if smoke_run:
        lines += [f"> **WARNING — {style.SMOKE_CAVEAT}.** Rerun without `profile=smoke` (the "
                  f"paper settings) before comparing.", ""]
    profiles = ", ".join(dict.fromkeys(str(p) for p in ours.get("profile", []) if str(p)))
    profiles = profiles or "unknown"
    lines += [f"Our side: profile {profiles}; mean ± s.e.m. over ok seeds. Published spreads are "
              "the source's std. Sample sizes must match for W2 (biased upwards at small n): see "
              "n_eval in results.csv.", "",
              "| target | metric | source | method | samples | value | note |",
              "|---|---|---|---|---|---|---|"]
    for _, r in comp.iterrows():
        spread = r["spread"]
        who = r["who"]
        if who == "ours":
            state = r.get("state", "ok") or "ok"
            val = (fmt(float(r["value"]), float(spread)) if state == "ok"
                   else MARKS.get(state, "–"))
            if style.is_smoke(r.get("profile", "")):
                who = "ours (smoke run)"
        else:  # published numbers exactly as printed by the source
            val = f"{r['value']:g}" + (f" ± {spread:g}" if pd.notna(spread) else "")
        note = r.get("note", "") if r["who"] == "ours" else ""
        note = "" if style.is_smoke(r.get("profile", "")) and note == style.SMOKE_CAVEAT else note
        lines.append(f"| {r['target']} | {r['metric']} | {who} | {r['method']} | "
                     f"{r.get('n_samples', '')} | {val} | {note} |")
    marks = [f"{MARKS[k]} = {MARK_TEXT[k]}" for k in ("na", "noref", "failed", "error")
             if (comp["state"] == k).any()]
    if marks:
        lines += ["", "Marks: " + "; ".join(marks) + "."]
    return "\n".join(lines) + "\n"
