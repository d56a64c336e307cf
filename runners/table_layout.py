"""The formatted tables shared by summary.md and summary.tex: cells, marks, footnotes, caption.

Sampler × target tables of formatted cells (:func:`wide` for one metric, :func:`seeds_table`,
:func:`status_table`, :func:`health_table`), the marks line under a table, and the caption with
the provenance. Rows' ``warnings`` (``; ``-joined texts) become footnotes: each distinct text
gets a number ``w1, w2, …`` (in order of first appearance), cells whose rows carry it are marked
``[w1]``, and the texts are listed under each table that uses them. Pure functions of the
results frame and of the summary frame (runners/table_stats.py); runners/tables.py renders them
as Markdown, runners/table_latex.py as LaTeX.
"""
from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd

from . import style
from .table_stats import ID_COLS, MARK_TEXT, MARKS, column_or, fmt


# ---- warnings --------------------------------------------------------------------------------
def _split_warnings(v) -> list[str]:
    """Texts of one row's ``warnings``: a ``"; "``-joined string (a list, or a list stored as
    JSON by ``collect.load_results``, is accepted too); NaN/None/"" -> []."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return []
    if isinstance(v, str) and v.startswith("["):
        try:
            v = json.loads(v)
        except ValueError:
            pass
    if isinstance(v, (list, tuple)):
        return [str(w).strip() for w in v if str(w).strip()]
    return [w.strip() for w in str(v).split("; ") if w.strip() and w.strip().lower() != "nan"]


def warning_index(df: pd.DataFrame) -> dict[str, int]:
    """Distinct warning texts -> footnote number (1, 2, … in order of first appearance)."""
    idx: dict[str, int] = {}
    for v in column_or(df, "warnings", None):
        for w in _split_warnings(v):
            idx.setdefault(w, len(idx) + 1)
    return idx


def cell_warnings(df: pd.DataFrame, target: str, sampler: str,
                  index: dict[str, int] | None = None) -> list[int]:
    index = warning_index(df) if index is None else index
    g = df[(df["target"] == target) & (df["sampler"] == sampler)]
    return sorted({index[w] for v in column_or(g, "warnings", None) for w in _split_warnings(v)})


def warning_where(df: pd.DataFrame, text: str) -> str:
    """"LJ-55: DDS s0, FAB s0" for the rows carrying ``text``."""
    parts: dict[str, list[str]] = {}
    for _, r in df.iterrows():
        if text in _split_warnings(r.get("warnings")):
            parts.setdefault(style.target_pretty(r["target"], df), []).append(
                f"{style.sampler_pretty(r['sampler'], df)} s{r.get('seed', '?')}")
    return "; ".join(f"{t}: {', '.join(v)}" for t, v in parts.items())


# ---- wide tables -----------------------------------------------------------------------------
def _orders(df: pd.DataFrame, summary: pd.DataFrame | None = None) -> tuple[list, list]:
    src = summary if summary is not None and len(summary) else df
    return list(dict.fromkeys(src["target"])), style.sampler_order(src["sampler"])


def wide(summary: pd.DataFrame, metric: str, latex: bool = False, df: pd.DataFrame | None = None,
         warn_index: dict[str, int] | None = None) -> pd.DataFrame:
    """One metric as a sampler × target table of formatted cells (values or marks, see the module
    docstring). With ``df``, cells whose rows carry warnings get their footnote marks and the
    headers are pretty names."""
    sub = summary[summary["metric"] == metric]
    if sub.empty:
        return pd.DataFrame()
    order_t, order_s = _orders(sub, sub)
    if df is not None and warn_index is None:
        warn_index = warning_index(df)
    table = pd.DataFrame(MARKS["none"] if not latex else "--", index=order_s, columns=order_t)
    for _, r in sub.iterrows():
        if r["state"] == "ok":
            text = fmt(r["mean"], r["sem"], latex)
            if r["n"] < r["n_seeds"]:
                text += f" (n={int(r['n'])}/{int(r['n_seeds'])})"
        else:
            text = MARKS[r["state"]]
        if df is not None and r["state"] != "na":
            w = cell_warnings(df, r["target"], r["sampler"], warn_index)
            if w:
                tag = ",".join(f"w{i}" for i in w)
                text += rf"\textsuperscript{{{tag}}}" if latex else f" [{tag}]"
        table.loc[r["sampler"], r["target"]] = text
    if df is not None:
        table.index = [style.sampler_pretty(s, df) for s in table.index]
        table.columns = [style.target_pretty(t, df) for t in table.columns]
    table.index.name = "sampler"
    return table


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
    order_t, order_s = _orders(r)
    return r.pivot(index="sampler", columns="target", values="text").reindex(
        index=order_s, columns=order_t).fillna("–")


def seeds_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per target × sampler: "ok seeds / seeds run" ("skipped" when every seed was skipped)."""
    rows = []
    for (t, s), g in df.groupby(list(ID_COLS), sort=False):
        status = column_or(g, "status", "ok").astype(str)
        run = int((status != "skipped").sum())
        text = f"{int((status == 'ok').sum())}/{run}" if run else "skipped"
        rows.append({"target": t, "sampler": s, "text": text})
    r = pd.DataFrame(rows)
    order_t, order_s = _orders(r)
    table = r.pivot(index="sampler", columns="target", values="text").reindex(
        index=order_s, columns=order_t).fillna("–")
    table.index = [style.sampler_pretty(s, df) for s in table.index]
    table.columns = [style.target_pretty(t, df) for t in table.columns]
    table.index.name = "sampler"
    return table


def _num(g: pd.DataFrame, col: str) -> np.ndarray:
    v = pd.to_numeric(column_or(g, col, math.nan), errors="coerce").to_numpy(dtype=float)
    return v[np.isfinite(v)]


def health_table(df: pd.DataFrame) -> pd.DataFrame:
    """One line per (target, sampler): seeds, statuses, energy evaluations, budget binding,
    MCMC acceptance (mean over seeds of the chains' mean; min over seeds and chains) and warning
    footnotes. Columns the rows do not carry are left out."""
    windex = warning_index(df)
    has_bind = "budget_binding" in df.columns
    has_acc = any(len(_num(df, c)) for c in ("acceptance_mean", "acceptance_min"))
    out = []
    order_t, order_s = _orders(df)
    for t in order_t:
        for s in order_s:
            g = df[(df["target"] == t) & (df["sampler"] == s)]
            if g.empty:
                continue
            status = column_or(g, "status", "ok").astype(str)
            run = int((status != "skipped").sum())
            r = {"target": style.target_pretty(t, df), "sampler": style.sampler_pretty(s, df),
                 "ok seeds": f"{int((status == 'ok').sum())}/{run}" if run else "skipped",
                 "statuses": ", ".join(f"{n} {k}" for k, n in status.value_counts().items())}
            ev = _num(g, "energy_evals")
            r["energy evals (mean)"] = f"{ev.mean():,.0f}" if len(ev) else "–"
            if has_bind:
                b = [str(x) for x in column_or(g, "budget_binding").dropna()
                     if str(x) not in ("", "nan")]
                r["budget binding"] = ", ".join(dict.fromkeys(b)) or "–"
            if has_acc:
                am, an = _num(g, "acceptance_mean"), _num(g, "acceptance_min")
                r["acceptance mean"] = f"{am.mean():.3g}" if len(am) else "n/a"
                r["acceptance min"] = f"{an.min():.3g}" if len(an) else "n/a"
            w = cell_warnings(df, t, s, windex)
            r["warnings"] = ", ".join(f"w{i}" for i in w) or "–"
            out.append(r)
    return pd.DataFrame(out)


# ---- caption, marks ---------------------------------------------------------------------------
def _unique(df: pd.DataFrame, col: str) -> list[str]:
    vals = []
    for v in column_or(df, col, None).dropna():
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        vals.append(str(v))
    return list(dict.fromkeys(v for v in vals if v not in ("", "nan")))


def provenance(df: pd.DataFrame) -> dict[str, str]:
    """profile, n_eval, metric spec version, code version: the distinct values, "; "-joined."""
    return {k: ", ".join(_unique(df, c)) or "unknown"
            for k, c in [("profile", "profile"), ("n_eval", "n_eval"),
                         ("metric spec", "metric_spec_version"), ("code", "code_version")]}


def caption(df: pd.DataFrame) -> str:
    p = provenance(df)
    return (f"Mean ± s.e.m. over ok seeds (s.e.m. = std (ddof=1) / sqrt(n); one seed: the value "
            f"alone). Each seed's n_eval = {p['n_eval']} samples are scored against the first "
            f"n_eval points of the reference test split (the same points for every sampler and "
            f"seed; log Z, ELBO and ESS use only the samples' weights). Profile: "
            f"{p['profile']}; metric spec v{p['metric spec']}; code "
            f"{p['code']}.")


def smoke(df: pd.DataFrame) -> bool:
    return any(style.is_smoke(p) for p in _unique(df, "profile"))


def marks_line(table: pd.DataFrame, latex: bool = False) -> str:
    """"Marks: n/a = not applicable …; failed = …" for the marks present in ``table``."""
    cells = [str(v) for v in table.to_numpy().ravel()]
    present = [k for k, mark in MARKS.items()
               if any(c == mark or c.startswith(mark + " ") or c.startswith(mark + "\\")
                      for c in cells)
               or (latex and k == "none" and any(c.startswith("--") for c in cells))]
    parts = [f"{MARKS[k] if not latex else (MARKS[k] if k != 'none' else '--')} = {MARK_TEXT[k]}"
             for k in present]
    if any("(n=" in c for c in cells):
        parts.append("(n=k/m) = k of the m seeds run have a value")
    return ("Marks: " + "; ".join(parts) + ".") if parts else ""


def used_warnings(table: pd.DataFrame, windex: dict[str, int]) -> list[tuple[int, str]]:
    cells = " ".join(str(v) for v in table.to_numpy().ravel())
    used = {int(i) for tags in re.findall(r"w(\d+(?:,w\d+)*)", cells)
            for i in tags.replace("w", "").split(",")}
    return [(i, w) for w, i in windex.items() if i in used]

