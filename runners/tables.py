"""Summary tables: mean ± s.e.m. over seeds, sampler × target, for each metric.

Pure functions of the results frame (one row per cell, as written by ``collect``), in four
modules; import them from here. runners/table_stats.py: the summary frame (each cell's state
and mark, mean ± s.e.m., the module docstring there says what each mark means);
runners/table_layout.py: the formatted tables, warning footnotes, marks line and caption;
this module: summary.md (:func:`to_markdown`) and the nll_cnf floors under its table;
runners/table_latex.py: summary.tex (:func:`to_latex`, :func:`tex_escape`).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

import metrics  # noqa: F401 - kept as ``tables.metrics`` (tests/test_collect.py reads it)

from . import style
# The public names of the split modules stay importable from runners.tables.
from .table_latex import tex_escape, to_latex  # noqa: F401
from .table_layout import (caption, cell_warnings, health_table, marks_line,  # noqa: F401
                           provenance, seeds_table, smoke, status_table, used_warnings,
                           warning_index, warning_where, wide)
from .table_stats import (FAILED_STATUSES, ID_COLS, MARK_TEXT, MARKS, SUMMARY_COLS,  # noqa: F401
                          applicable, cell_state, fmt, mean_sem, metric_columns, summarize,
                          to_csv_frame)


# ---- Markdown --------------------------------------------------------------------------------
def _md(table: pd.DataFrame, index: bool = True) -> str:
    cols = ([table.index.name or ""] if index else []) + [str(c) for c in table.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for idx, row in table.iterrows():
        cells = ([str(idx)] if index else []) + [str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def to_markdown(df: pd.DataFrame, summary: pd.DataFrame | None = None) -> str:
    """summary.md: caption and provenance, seeds, health, one table per metric (marks and
    warning footnotes under each), cell statuses."""
    summary = summarize(df) if summary is None else summary
    windex = warning_index(df)
    parts = ["# Results: mean ± s.e.m. over ok seeds", ""]
    if smoke(df):
        parts += [f"> **{style.SMOKE_CAVEAT}**", ""]
    parts += [caption(df), ""]
    parts += ["## Seeds (ok / run)", "", _md(seeds_table(df)), ""]
    health = health_table(df)
    if not health.empty:
        parts += ["## Health", "", "Acceptance: MCMC samplers only (n/a for the others). "
                  "Budget binding: which Budget field stopped fit.", "",
                  _md(health, index=False), ""]
        used = [(windex[w], w) for w in windex]
        parts += [f"- w{i}: {w} ({warning_where(df, w)})" for i, w in used]
        parts += [""] if used else []
    for m in dict.fromkeys(summary["metric"]):
        t = wide(summary, m, df=df, warn_index=windex)
        info = style.metric_info(m)
        units = info.units or "dimensionless"
        parts += [f"## {m}: {info.display}", "", f"Units: {units}; {info.direction}.", "",
                  _md(t), ""]
        line = marks_line(t)
        parts += [line] if line else []
        parts += [f"- w{i}: {w}" for i, w in used_warnings(t, windex)]
        parts += [""] + floor_lines(m, list(dict.fromkeys(summary["target"])))
    st = status_table(df)
    if not st.empty:
        st.index = [style.sampler_pretty(s, df) for s in st.index]
        st.columns = [style.target_pretty(c, df) for c in st.columns]
        st.index.name = "sampler"
        parts += ["## Cell status", "", _md(st), ""]
    return "\n".join(parts)


FLOORS = Path(__file__).resolve().parents[1] / "results" / "measured" / "nll_cnf_floors.csv"


def floor_lines(metric: str, target_names: list[str], path: Path = FLOORS) -> list[str]:
    """Under the nll_cnf table: the measured floors of ``target_names`` (the reference's own
    nll_cnf, and GMM-40's exact NLL) from results/measured/nll_cnf_floors.csv, with their
    settings; nothing for other metrics or when the file is absent."""
    if metric != "nll_cnf" or not path.is_file():
        return []
    fl = pd.read_csv(path, keep_default_na=False)
    fl = fl[fl["target"].isin(target_names)]
    if fl.empty:
        return []
    out = ["Floors (results/measured/nll_cnf_floors.csv, docs/metrics.md), at the settings "
           "given: compare only with rows whose CNF was trained the same way.", ""]
    for _, r in fl.iterrows():
        out.append(f"- {style.target_pretty(r['target'])}: {r['quantity']} = {r['value']:.3f} "
                   f"nats ({r['settings']})")
    return out + [""]

