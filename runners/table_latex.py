"""summary.tex: the summary tables as LaTeX ``table`` floats (booktabs), with escaping.

:func:`to_latex` renders the tables of runners/table_layout.py; :func:`tex_escape` is also
importable from runners.tables.
"""
from __future__ import annotations

import pandas as pd

from . import style
from .table_layout import (caption, marks_line, seeds_table, smoke, used_warnings, warning_index,
                           wide)
from .table_stats import summarize

_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
        "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
        "±": r"$\pm$", "²": r"$^2$", "√": r"$\sqrt{}$", "∞": r"$\infty$", "–": "--"}


def tex_escape(s) -> str:
    return "".join(_TEX.get(c, c) for c in str(s))


def to_latex(df: pd.DataFrame, summary: pd.DataFrame | None = None) -> str:
    """summary.tex: complete ``table`` environments (booktabs rules, so the document needs
    ``\\usepackage{booktabs}``) with pretty names: the seeds (ok / run, label ``tab:seeds``), then
    one per metric with a caption giving units, direction and provenance, a label
    ``tab:<metric>`` and the marks and warnings under the tabular."""
    summary = summarize(df) if summary is None else summary
    windex = warning_index(df)
    cap = caption(df)
    if smoke(df):
        cap = style.SMOKE_CAVEAT[0].upper() + style.SMOKE_CAVEAT[1:] + ". " + cap
    out = ["% boltzbench summary tables; needs \\usepackage{booktabs}", ""]
    seeds = seeds_table(df)
    out += _tex_table(f"Seeds per cell: ok seeds / seeds run (skipped seeds not counted). "
                      f"{cap}", "tab:seeds", seeds.map(tex_escape), [])
    for m in dict.fromkeys(summary["metric"]):
        t = wide(summary, m, latex=True, df=df, warn_index=windex)
        info = style.metric_info(m)
        units = f" [{info.units}]" if info.units else ""
        notes = [marks_line(t, latex=True)] + [f"w{i}: {w}" for i, w in used_warnings(t, windex)]
        out += _tex_table(f"{info.display}{units}, {info.direction}. {cap}",
                          f"tab:{m.replace('_', '-')}", t, [n for n in notes if n])
    return "\n".join(out)


def _tex_table(cap: str, label: str, t: pd.DataFrame, notes: list[str]) -> list[str]:
    """One ``table`` float: caption (escaped here), label, booktabs tabular of the already
    formatted cells of ``t`` (index = sampler), notes under it."""
    out = [r"\begin{table}[htbp]", r"\centering", r"\small",
           rf"\caption{{{tex_escape(cap)}}}", rf"\label{{{label}}}",
           r"\begin{tabular}{l" + "c" * len(t.columns) + "}", r"\toprule",
           " & ".join(["Sampler"] + [tex_escape(c) for c in t.columns]) + r" \\", r"\midrule"]
    out += [" & ".join([tex_escape(i)] + [str(v) for v in r]) + r" \\" for i, r in t.iterrows()]
    out += [r"\bottomrule", r"\end{tabular}"]
    if notes:
        out += [r"\par\smallskip\footnotesize " + r" \\ ".join(tex_escape(n) for n in notes)]
    return out + [r"\end{table}", ""]

