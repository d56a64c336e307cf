"""summary.md / summary.tex / published_comparison on hand-built rows (no sampler runs)."""
from __future__ import annotations

import math
import re

import pandas as pd
import pytest

from runners import published_comparison, style, tables


def rows() -> pd.DataFrame:
    """Builtin names, so applicability comes from the registries.

    * mala on dw4: 3 ok seeds x_w2 = 1, 2, 4 (mean 7/3, sem = std/sqrt 3), one with a warning.
    * mala on lj55: ok, but reference_source "missing" -> "no ref".
    * idem on dw4: every seed error/diverged -> "failed".
    * nll for mala: not applicable (MALA has no density) -> "n/a".
    * fab on dw4: nll 10 and 12 plus one timeout seed -> "11 ± 1 (n=2/3)".
    """
    base = dict(profile="paper", n_eval=1000, metric_spec_version="1", code_version="abc123",
                reference_source="official", warnings="")
    r = []
    for seed, v in enumerate([1.0, 2.0, 4.0]):
        r.append(dict(base, target="dw4", sampler="mala", seed=seed, status="ok", x_w2=v,
                      nll=math.nan, energy_evals=1000, acceptance_mean=0.5 + 0.1 * seed,
                      acceptance_min=0.4, budget_binding="energy_evals",
                      warnings="acceptance 0.004 below 1 %: the chains are frozen" if seed == 2
                      else math.nan))
    r.append(dict(base, target="lj55", sampler="mala", seed=0, status="ok", x_w2=math.nan,
                  nll=math.nan, energy_evals=1000, reference_source="missing",
                  warnings="reference missing: the cell is unscored until it exists"))
    r.append(dict(base, target="dw4", sampler="idem", seed=0, status="error", x_w2=math.nan,
                  energy_evals=10))
    r.append(dict(base, target="dw4", sampler="idem", seed=1, status="diverged", x_w2=math.nan,
                  energy_evals=10))
    for seed, (x, nll) in enumerate([(3.0, 10.0), (5.0, 12.0)]):
        r.append(dict(base, target="dw4", sampler="fab", seed=seed, status="ok", x_w2=x, nll=nll,
                      energy_evals=2000))
    r.append(dict(base, target="dw4", sampler="fab", seed=2, status="timeout", x_w2=math.nan,
                  nll=math.nan, energy_evals=5))
    return pd.DataFrame(r)


def _section(md: str, metric: str) -> str:
    return md.split(f"## {metric}:")[1].split("\n## ")[0]


def _cell(section: str, sampler: str, col: int) -> str:
    line = next(ln for ln in section.splitlines() if ln.startswith(f"| {sampler} |"))
    return [c.strip() for c in line.strip("|").split("|")][col]


def test_mean_sem_and_counts_in_summary_md():
    md = tables.to_markdown(rows())
    sec = _section(md, "x_w2")
    header = next(ln for ln in sec.splitlines() if ln.startswith("| sampler"))
    assert header == "| sampler | DW-4 | LJ-55 |"  # pretty target names
    sem = pd.Series([1.0, 2.0, 4.0]).std(ddof=1) / math.sqrt(3)
    assert _cell(sec, "MALA", 1) == f"{7 / 3:.4g} ± {sem:.2g} [w1]"
    assert _cell(sec, "FAB", 1) == "4 ± 1 (n=2/3)"
    assert _cell(_section(md, "nll"), "FAB", 1) == "11 ± 1 (n=2/3)"
    seeds = md.split("## Seeds (ok / run)")[1].split("\n## ")[0]
    assert _cell(seeds, "MALA", 1) == "3/3" and _cell(seeds, "FAB", 1) == "2/3"
    assert _cell(seeds, "iDEM", 1) == "0/2"


def test_three_marks_in_the_right_cells_and_explained():
    md = tables.to_markdown(rows())
    sec = _section(md, "x_w2")
    assert _cell(sec, "MALA", 2).startswith("no ref")   # lj55: reference missing
    assert _cell(sec, "iDEM", 1) == "failed"           # dw4: error + diverged
    assert _cell(_section(md, "nll"), "MALA", 1) == "n/a"  # MALA has no density
    assert _cell(sec, "iDEM", 2) == "–"                # never run
    for mark in ("no ref = ", "failed = ", "– = not run"):
        assert mark in sec
    assert "n/a = not applicable" in _section(md, "nll")
    s = tables.summarize(rows()).set_index(["target", "sampler", "metric"])
    assert s.loc[("lj55", "mala", "x_w2"), "state"] == "noref"
    assert s.loc[("dw4", "idem", "x_w2"), "state"] == "failed"
    assert s.loc[("dw4", "mala", "nll"), "state"] == "na"
    assert s.loc[("dw4", "mala", "x_w2"), "mean"] == pytest.approx(7 / 3)


def test_warning_footnotes_listed_under_the_table():
    md = tables.to_markdown(rows())
    sec = _section(md, "x_w2")
    idx = tables.warning_index(rows())
    frozen = idx["acceptance 0.004 below 1 %: the chains are frozen"]
    assert f"[w{frozen}]" in _cell(sec, "MALA", 1)
    assert f"- w{frozen}: acceptance 0.004 below 1 %: the chains are frozen" in sec
    assert "[w" not in _cell(sec, "FAB", 1)


def test_caption_units_direction_profile_and_health():
    md = tables.to_markdown(rows())
    assert "Mean ± s.e.m. over ok seeds" in md and "reference test split" in md
    assert "n_eval = 1000" in md and "Profile: paper" in md
    assert "smoke run" not in md
    sec = _section(md, "x_w2")
    assert "Units: length; lower is better." in sec
    health = md.split("## Health")[1].split("\n## ")[0]
    assert "acceptance mean" in health and "budget binding" in health
    line = next(ln for ln in health.splitlines() if "| DW-4 | MALA |" in ln)
    assert "0.6" in line and "0.4" in line and "energy_evals" in line
    # old rows without the health or warnings columns still make a summary
    old = rows().drop(columns=["acceptance_mean", "acceptance_min", "budget_binding", "warnings"])
    md_old = tables.to_markdown(old)
    assert "acceptance mean" not in md_old and "[w" not in md_old


def test_latex_is_a_booktabs_table_with_pretty_names_and_caption():
    tex = tables.to_latex(rows())
    for piece in (r"\begin{table}", r"\toprule", r"\midrule", r"\bottomrule", r"\end{table}",
                  r"\caption{sample-space W2 [length], lower is better.", r"\label{tab:x-w2}"):
        assert piece in tex
    # seeds, x_w2 and nll, each a complete float
    assert tex.count(r"\begin{table}") == tex.count(r"\end{table}") == 3
    assert tex.count(r"\begin{tabular}") == tex.count(r"\end{tabular}") == 3
    assert tex.count(r"\toprule") == tex.count(r"\bottomrule") == 3
    seeds = tex.split(r"\label{tab:seeds}")[1].split(r"\end{table}")[0]
    assert r"MALA & 3/3 & 1/1 \\" in seeds and r"iDEM & 0/2 & -- \\" in seeds
    assert r"Sampler & DW-4 & LJ-55 \\" in tex
    assert re.search(r"^MALA & .* \\\\$", tex, re.M) and "mala &" not in tex
    assert r"iDEM & failed" in tex
    assert "n\\_eval" in tex  # escaped
    assert "smoke" not in tex.lower()


def test_published_comparison_flags_smoke_runs_only():
    pub = pd.DataFrame([dict(source="paper", target="dw4", method="iDEM", metric="x_w2",
                             value=2.0, std=0.1, reference_set="official", n_seeds=3)])
    paper = published_comparison.comparison(tables.summarize(rows()), pub)
    md = published_comparison.comparison_markdown(paper)
    assert "smoke" not in md.lower()
    assert "| dw4 | x_w2 | ours | FAB | 1000 | 4 ± 1 |" in md
    assert "| dw4 | x_w2 | ours | iDEM | 1000 | failed |" in md
    smoke = rows().assign(profile="smoke")
    comp = published_comparison.comparison(tables.summarize(smoke), pub)
    md = published_comparison.comparison_markdown(comp)
    assert "smoke run: tiny budgets, not comparable to published numbers" in md.split("|")[0]
    assert "| dw4 | x_w2 | ours (smoke run) | FAB |" in md
    assert (comp.loc[comp["who"] == "ours", "note"] == style.SMOKE_CAVEAT).all()
    assert "smoke run" in tables.to_markdown(smoke) and "Smoke run" in tables.to_latex(smoke)


def test_metric_display_names_cover_every_metric():
    import metrics
    for m in list(metrics.names()) + list(metrics.DENSITY_METRICS):
        info = style.METRICS[m]
        assert info.display and info.direction
    assert style.metric_label("x_w2") == "sample-space W2 [length] (lower is better)"
    assert style.metric_label("ess").endswith("(higher is better)")


def test_health_counts_and_warnings_stored_as_a_list():
    df = rows()
    # a list (stored as JSON by collect.load_results) reads as two warnings, not one text
    df.loc[df["sampler"] == "fab", "warnings"] = '["w one", "w two"]'
    df = pd.concat([df, pd.DataFrame([dict(target="dw4", sampler="pdem", seed=0,
                                           status="skipped", energy_evals=0)])])
    idx = tables.warning_index(df)
    assert "w one" in idx and "w two" in idx
    md = tables.to_markdown(df)
    health = md.split("## Health")[1].split("\n## ")[0]
    fab = next(ln for ln in health.splitlines() if "| DW-4 | FAB |" in ln)
    assert "| 2/3 |" in fab and "| 1,335 |" in fab  # mean of 2000, 2000, 5
    assert "| DW-4 | pDEM | skipped |" in health
    assert _cell(_section(md, "x_w2"), "pDEM", 1) == "n/a"  # every seed skipped
