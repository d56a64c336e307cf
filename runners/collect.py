"""``python -m runners.collect out=DIR``: rows -> results.csv, summary tables, figures.

Reads every ``DIR/cells/*/row.json`` (temporary files from killed writers are ignored) and writes
``DIR/results.csv`` (one row per cell), ``DIR/tables/summary.{md,tex,csv}`` (caption, seed
counts, health, one table per metric with units, direction, marks and warning footnotes; see
runners/tables.py),
``DIR/tables/published_comparison.{md,csv}`` (ours beside results/published.csv where the metric
definition matches; a smoke run is flagged) and ``DIR/figures/*.png``, all through the atomic
writers of runners/rows.py.

When a folder holds several rows for the same (target, sampler, seed) — a setting was changed and
the grid rerun into the same ``out`` — the most recently finished row is used and the others are
reported as superseded (they stay on disk).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

from . import published_comparison, rows, tables

PUBLISHED = Path(__file__).resolve().parents[1] / "results" / "published.csv"
BUDGET_COLS = ["budget_energy_evals", "budget_seconds", "budget_steps"]  # the budget axis (runners/ladder.py)
UNIT_WORDS = {"seconds": "s", "energy_evals": "energy evaluations", "steps": "steps"}
FIRST_COLS = ["target", "sampler", "seed", "status", "reason", "energy_evals", "grad_evals",
              "fit_seconds", "sample_seconds", "peak_memory_mb"]


def load_results(out: str | Path, verbose: bool = True) -> pd.DataFrame:
    """The results frame of ``out``: one row per (target, sampler, seed), newest wins."""
    data = rows.iter_rows(out)
    if not data:
        return pd.DataFrame(columns=FIRST_COLS)
    for r in data:
        for k, v in list(r.items()):
            if isinstance(v, (dict, list)):
                r[k] = json.dumps(v, sort_keys=True)
    df = pd.DataFrame(data)
    df["finished_at"] = df.get("finished_at", pd.Series([""] * len(df))).fillna("")
    df = df.sort_values("finished_at", kind="stable")
    ident = ["target", "sampler", "seed"] + [c for c in BUDGET_COLS if c in df.columns]
    dup = df.duplicated(ident, keep="last")
    if dup.any() and verbose:
        print(f"[collect] {int(dup.sum())} superseded row(s) ignored (same target/sampler/seed, "
              f"older): {', '.join(df.loc[dup, 'cell_key'])}", file=sys.stderr)
    df = df[~dup]
    order = {t: i for i, t in enumerate(dict.fromkeys(df["target"]))}
    df = df.sort_values(ident,
                        key=lambda c: c.map(order) if c.name == "target" else c, kind="stable")
    cols = [c for c in FIRST_COLS if c in df.columns] + [c for c in df.columns if c not in FIRST_COLS]
    return df[cols].reset_index(drop=True)


def load_published(path: Path = PUBLISHED) -> pd.DataFrame:
    return pd.read_csv(path, keep_default_na=False, na_values=[""]) if path.is_file() else pd.DataFrame(
        columns=["source", "target", "method", "metric", "value", "std", "reference_set", "n_seeds"])


def write_tables(df: pd.DataFrame, table_dir: Path) -> list[Path]:
    table_dir.mkdir(parents=True, exist_ok=True)
    axis = any(c in df.columns for c in BUDGET_COLS)
    full = df
    if axis:  # the summary has no budget column: it shows each target's largest rung
        from . import budget_tables
        df = budget_tables.top_rung(df)
    summary = tables.summarize(df)
    paths = [table_dir / "summary.md", table_dir / "summary.tex", table_dir / "summary.csv"]
    md = tables.to_markdown(df, summary)
    if axis:
        md = (f"> Budget axis: this summary shows each sampler's largest rung "
              f"({_rungs(df)}); every rung is in best_at_budget.md and the budget_*.png "
              f"figures (docs/budgets.md).\n\n") + md
    rows.write_text(paths[0], md)
    rows.write_text(paths[1], tables.to_latex(df, summary))
    rows.write_text(paths[2], tables.to_csv_frame(summary).to_csv(index=False))
    comp = published_comparison.comparison(summary, load_published())
    if not comp.empty:
        paths += [table_dir / "published_comparison.md", table_dir / "published_comparison.csv"]
        rows.write_text(paths[3], published_comparison.comparison_markdown(comp))
        rows.write_text(paths[4], comp.to_csv(index=False))
    if axis:
        paths += budget_tables.write(full, table_dir)
    return paths


def _rungs(df: pd.DataFrame) -> str:
    from . import budget_tables
    sub = budget_tables.with_budget(df)
    return "; ".join(f"{t} {s} {budget_tables._short(b)} "
                     f"{UNIT_WORDS.get(u, u)}"
                     for (t, s, u), b in sub.groupby(["target", "sampler", "budget_unit"],
                                                     sort=False)["budget"].max().items())


def collect(out: str | Path, figures: bool = True) -> dict[str, list[Path]]:
    out = Path(out)
    df = load_results(out)
    csv = out / "results.csv"
    rows.write_text(csv, df.to_csv(index=False))
    written = {"results": [csv], "tables": [], "figures": []}
    if len(df):
        written["tables"] = write_tables(df, out / "tables")
        if figures:
            from . import plots  # matplotlib only when figures are wanted
            if any(c in df.columns for c in BUDGET_COLS):  # the figures above at the top rung
                from . import budget_plots, budget_tables
                written["figures"] = plots.make_all(out, budget_tables.top_rung(df))
                written["figures"] += budget_plots.make_all(df, out / "figures")
            else:
                written["figures"] = plots.make_all(out, df)
    print(f"[collect] {len(df)} row(s) -> {csv}; {len(written['tables'])} table file(s) in "
          f"{out / 'tables'}; {len(written['figures'])} figure(s) in {out / 'figures'}",
          file=sys.stderr)
    return written


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv) or not argv:
        print("usage: python -m runners.collect out=DIR [figures=false]\n" + __doc__.strip())
        return 0 if argv else 2
    opts = {}
    for tok in argv:
        key, eq, val = tok.partition("=")
        if not eq or key not in ("out", "figures"):
            print(f"error: argument {tok!r}: expected out=DIR or figures=true|false", file=sys.stderr)
            return 2
        opts[key] = val
    out = Path(opts.get("out", ""))
    if not (out / "cells").is_dir():
        print(f"error: out: got {str(out)!r}, which has no cells/ folder (a grid output folder is "
              f"expected)", file=sys.stderr)
        return 2
    figures = opts.get("figures", "true").lower()
    if figures not in ("true", "false"):
        print(f"error: figures: got {figures!r}; allowed: true, false", file=sys.stderr)
        return 2
    collect(out, figures=figures == "true")
    return 0


if __name__ == "__main__":
    sys.exit(main())
