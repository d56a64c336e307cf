"""Reproduce a published table with one command, and say whether it reproduced.

    python -m runners.paper list
    python -m runners.paper blog-gmm40 [out=DIR] [run=true] [grid options...]

Every table in :data:`TABLES` names its source (a ``source`` of results/published.csv), targets,
how each published method maps onto ours, and the source's protocol. ``python -m runners.paper
<id>`` fills what this machine can compute at once (rows of exact samples), reads our sampler
rows from ``DIR/results.csv`` (a grid run with the source's protocol; ``run=true`` starts that
grid through ``runners.grid``, so SLURM, resume and ``launcher=`` work as there), and writes
``DIR/tables/paper-<id>.{md,csv}``: each published cell beside ours, the difference in units of
the combined uncertainty of the two means, and a verdict (:func:`verdict`).

Verdicts: ``reproduced`` (|z| <= 2.5), ``differs`` (|z| > 2.5), ``not run`` (the suite can compute
it but has not: which command would, and its cost), ``not comparable`` (with the reason: a method
the suite does not have, a metric definition it does not implement, a different reference set,
or our rows scored against another reference, at another ``n_eval`` or with the metric capped
below the source's sample count).

``list`` prints per table: source, targets x methods, the metric definitions of
results/published.csv, the protocol (samples, batches, seeds, budget), a cost estimate per cell
here and on one GPU (:mod:`runners.paper_cost`: measured rates scaled by the budget) and the
command.

z = (ours - published) / sqrt(s_pub^2 / n_pub + s_ours^2 / n_ours), with s the spread each
reports (the blog: std over 5 runs x 5 batches, so n = 25) and n the number of values it was
taken over: the uncertainty of each *mean*, not the batch-to-batch spread, so a verdict of
``reproduced`` says the two means agree, not merely that the spreads overlap.
"""
from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import metrics
import targets

from . import collect, paper_cost, rows

THRESHOLD = 2.5
PUBLISHED = collect.PUBLISHED


@dataclass(frozen=True)
class PaperTable:
    """One reproducible table. ``methods`` maps the source's method name to ours: a sampler name,
    ``"exact"`` (exact samples of the target), or a reason it is not comparable."""

    id: str
    source: str
    title: str
    targets: tuple[str, ...]
    methods: dict[str, str]
    runs: int
    batches: int
    n_samples: int
    reference_set: str
    protocol: str
    cost: str
    grid_samplers: tuple[str, ...] = field(default=())
    budget: str = ""


_BLOG = dict(
    source="blog-iclr2025-ebm-vs-mcmc", runs=5, batches=5, n_samples=1000, reference_set="official",
    protocol=("5 runs x 5 batches of 1000 samples, mean ± std over the 25 batches; W2 in raw "
              "coordinates, no alignment (our x_w2); MCMC = Metropolis at iDEM's energy budget "
              "(our rwm in the paper profile, whose budget is one full official iDEM run)"),
    budget=("iDEM's energy budget: one full official iDEM run per cell (GMM-40 2.56e10, DW-4 and "
            "LJ-13 5.12e10, LJ-55 2.56e9 energy evaluations; runners/profiles/paper.yaml)"),
    methods={"exact samples": "exact", "MCMC": "rwm", "iDEM": "idem",
             "iEFM": "not comparable: iEFM is not in the suite",
             "long MCMC": "not comparable: the blog's own long-MCMC samples; ours would be the "
                          "reference split scored against itself"},
    grid_samplers=("rwm", "idem"))

TABLES: dict[str, PaperTable] = {
    "blog-gmm40": PaperTable(id="blog-gmm40", title="ICLR 2025 blog, GMM-40 W2", targets=("gmm40",),
                             cost="exact row: ~10 s here; rwm/idem rows: one iDEM run each "
                                  "(2.6e10 energy evaluations; ~1 GPU-day per run for iDEM)",
                             **_BLOG),
    "blog-dw4": PaperTable(id="blog-dw4", title="ICLR 2025 blog, DW-4 W2 / energy W2 / distance W2",
                           targets=("dw4",),
                           cost="5.1e10 energy evaluations per run: GPU (days on this CPU)", **_BLOG),
    "blog-lj13": PaperTable(id="blog-lj13", title="ICLR 2025 blog, LJ-13", targets=("lj13",),
                            cost="5.1e10 energy evaluations per run: GPU", **_BLOG),
    "blog-lj55": PaperTable(id="blog-lj55", title="ICLR 2025 blog, LJ-55", targets=("lj55",),
                            cost="2.6e9 energy evaluations per run; iDEM ~2.5 GPU-days", **_BLOG),
    "asbs-table2": PaperTable(
        id="asbs-table2", source="asbs-2025-table2", title="ASBS (arXiv 2506.22565) Table 2",
        targets=("dw4", "lj13", "lj55"), runs=3, batches=1, n_samples=2000, reference_set="official",
        methods={"iDEM": "idem", "PIS": "pis", "DDS": "dds",
                 **{m: f"not comparable: {m} is not in the suite"
                    for m in ("PDDS", "SCLD", "LV-PIS", "AS", "ASBS")}},
        protocol=("3 seeds (mean ± std over the three), 2000 samples against 2000 rows of DEM's "
                  "test split; W2 = ASBS's aligned eq_w2 (our eq_w2), E-W2 = energy W2 with the "
                  "root taken (our energy_w2)"),
        budget=("ASBS trains each method to convergence, its budget unpublished; ours run at the "
                "paper profile's (iDEM's) energy budget, so a verdict also tests that budget"),
        cost="GPU: one iDEM/PIS/DDS training per seed and target", grid_samplers=("idem", "pis", "dds")),
}


# ----------------------------------------------------------------------------- the verdict
def z_score(pub_mean: float, pub_spread: float, pub_n: int,
            ours_mean: float, ours_spread: float, ours_n: int) -> float:
    """Difference of the two means in units of their combined standard error."""
    se = math.sqrt(pub_spread ** 2 / max(pub_n, 1) + ours_spread ** 2 / max(ours_n, 1))
    diff = ours_mean - pub_mean
    if se == 0:
        return 0.0 if diff == 0 else math.copysign(math.inf, diff)
    return diff / se


def verdict(z: float, threshold: float = THRESHOLD) -> str:
    if not math.isfinite(z) and not math.isinf(z):
        raise ValueError(f"verdict: z must be a number, got {z!r}")
    return "reproduced" if abs(z) <= threshold else "differs"


# ----------------------------------------------------------------------------- our numbers
def exact_sample_values(target_name: str, metric: str, table: PaperTable, seed: int = 0
                        ) -> np.ndarray:
    """The metric of ``runs x batches`` batches of exact samples against the reference test
    split (``n_samples`` each, both drawn with a fixed generator per batch)."""
    t = targets.get(target_name)
    if not getattr(t, "has_exact_samples", False):
        raise ValueError(f"{target_name} has no exact sampler")
    fn = metrics.get(metric)
    out = []
    for b in range(table.runs * table.batches):
        g = torch.Generator().manual_seed(seed + 1000 * b)
        x = t.sample_exact(table.n_samples, g)
        ref = t.reference("test", n=table.n_samples, generator=g)
        out.append(float(fn(x, ref, t)))
    return np.array(out)


def _ok_rows(results: pd.DataFrame | None, target: str, sampler: str) -> pd.DataFrame:
    if results is None or results.empty:
        return pd.DataFrame()
    return results[(results["target"] == target) & (results["sampler"] == sampler)
                   & (results.get("status", "ok") == "ok")]


def grid_values(results: pd.DataFrame | None, target: str, sampler: str, metric: str) -> np.ndarray:
    ok = _ok_rows(results, target, sampler)
    if ok.empty or metric not in ok.columns:
        return np.array([])
    return pd.to_numeric(ok[metric], errors="coerce").dropna().to_numpy()


def _metric_cap(config: object, metric: str) -> int | None:
    """The ``max_n`` a row's metric ran with (its ``config`` JSON), None when uncapped/unknown."""
    try:
        opts = json.loads(config).get("metric_options", {}) if isinstance(config, str) else {}
    except (ValueError, AttributeError):
        return None
    cap = (opts.get(metric) or {}).get("max_n") if isinstance(opts, dict) else None
    return cap if isinstance(cap, int) else None


def rows_mismatch(results: pd.DataFrame | None, target: str, sampler: str,
                  table: PaperTable, metric: str = "") -> str:
    """Why our rows cannot stand beside the source's, or "": scored against another reference
    (LJ-55 without the official file uses our MCMC set) or at another sample count (W2 of finite
    samples shrinks with n, so 1000-sample rows are not 2000-sample rows)."""
    ok = _ok_rows(results, target, sampler)
    if ok.empty:
        return ""
    if "reference_source" in ok.columns and table.reference_set == "official":
        other = sorted(set(ok["reference_source"].dropna().astype(str)) - {"official"})
        if other:
            return f"our rows were scored against the '{other[0]}' reference, not the official one"
    if "n_eval" in ok.columns:
        n = sorted(set(pd.to_numeric(ok["n_eval"], errors="coerce").dropna().astype(int)))
        if n and n != [table.n_samples]:
            return (f"our rows were scored with n_eval={n[0]}, the source with {table.n_samples}: "
                    f"run with n_eval={table.n_samples}")
    if metric and "config" in ok.columns:
        caps = [c for c in (_metric_cap(v, metric) for v in ok["config"]) if c is not None]
        if caps and min(caps) < table.n_samples:
            return (f"our {metric} was capped at max_n={min(caps)} (a smoke-type profile), the "
                    f"source used {table.n_samples}")
    return ""


def build_table(table: PaperTable, published: pd.DataFrame, results: pd.DataFrame | None,
                compute_exact: bool = True) -> pd.DataFrame:
    pub = published[(published["source"] == table.source)
                    & published["target"].isin(table.targets)]
    out = []
    for _, p in pub.iterrows():
        row = {"target": p["target"], "method": p["method"],
               "metric": p["metric"] if isinstance(p["metric"], str) else "",
               "source_metric": p.get("source_metric", ""), "reference_set": p["reference_set"],
               "published": float(p["value"]), "published_spread": float(p["std"]),
               "ours": math.nan, "ours_spread": math.nan, "n_ours": 0, "z": math.nan}
        ours_name = table.methods.get(p["method"], "not comparable: method not in the suite")
        reason = _not_comparable(row, ours_name, table)
        if reason:
            row.update(verdict="not comparable", reason=reason)
            out.append(row)
            continue
        if ours_name == "exact":
            vals = exact_sample_values(row["target"], row["metric"], table) if compute_exact \
                else np.array([])
        else:
            mismatch = rows_mismatch(results, row["target"], ours_name, table, row["metric"])
            if mismatch:
                row.update(verdict="not comparable", reason=mismatch)
                out.append(row)
                continue
            vals = grid_values(results, row["target"], ours_name, row["metric"])
        if vals.size == 0:
            sec, _ = paper_cost.cpu_seconds(ours_name, row["target"])
            row.update(verdict="not run", reason=f"run: python -m runners.paper {table.id} run=true "
                                                 f"({ours_name} on {row['target']}: "
                                                 f"{paper_cost.human(sec)} per seed on this "
                                                 f"CPU; see `list`)"
                                                 + _reference_note(row["target"], table))
        else:
            n_pub = table.runs * table.batches
            spread = float(vals.std(ddof=1)) if vals.size > 1 else 0.0
            z = z_score(row["published"], row["published_spread"], n_pub,
                        float(vals.mean()), spread, int(vals.size))
            row.update(ours=float(vals.mean()), ours_spread=spread, n_ours=int(vals.size), z=z,
                       verdict=verdict(z), reason="")
        out.append(row)
    return pd.DataFrame(out)


@lru_cache(maxsize=None)
def _reference_source(target: str) -> str:
    try:
        return str(targets.get(target).reference_info("test").get("reference_source", ""))
    except targets.ReferenceDataError:
        return "missing"


def _reference_note(target: str, table: PaperTable) -> str:
    """Said on a `not run` row whose rows, run here now, would not be comparable (LJ-55 without
    the official test split)."""
    src = _reference_source(target)
    if table.reference_set != "official" or src == "official":
        return ""
    return (f"; first put the official {target} test split in $BOLTZBENCH_DATA (this machine has "
            f"{'none' if src == 'missing' else 'only our ' + repr(src) + ' reference'})")


def _not_comparable(row: dict, ours_name: str, table: PaperTable) -> str:
    if ours_name.startswith("not comparable"):
        return ours_name.split(": ", 1)[-1]
    if not row["metric"]:
        return f"metric '{row['source_metric']}' has no definition the suite implements"
    if row["metric"] not in metrics.names():
        return f"metric {row['metric']} is not registered"
    if row["reference_set"] != table.reference_set:
        return f"reference set '{row['reference_set']}' is not ours ({table.reference_set})"
    return ""


def summary_line(table: PaperTable, df: pd.DataFrame) -> str:
    counts = df["verdict"].value_counts() if not df.empty else pd.Series(dtype=int)
    parts = [f"{counts.get(v, 0)} {v}" for v in ("reproduced", "differs", "not run", "not comparable")]
    return f"{table.id} ({table.title}): " + ", ".join(parts)


def to_markdown(table: PaperTable, df: pd.DataFrame) -> str:
    lines = [f"# {table.title}", "", f"Source: `{table.source}`. Protocol: {table.protocol}.",
             f"Verdict: |z| <= {THRESHOLD} reproduced (z: difference of the means over their "
             "combined standard error).", "",
             "| target | method | metric | published | ours | n ours | z | verdict | reason |",
             "|---|---|---|---|---|---|---|---|---|"]
    for _, r in df.iterrows():
        ours = "" if math.isnan(r["ours"]) else f"{r['ours']:.3f} ± {r['ours_spread']:.3f}"
        z = "" if math.isnan(r["z"]) else f"{r['z']:+.2f}"
        metric = r["metric"] or r["source_metric"]
        lines.append(f"| {r['target']} | {r['method']} | {metric} | {r['published']:.3f} ± "
                     f"{r['published_spread']:.3f} | {ours} | {r['n_ours'] or ''} | {z} | "
                     f"{r['verdict']} | {r['reason']} |")
    return "\n".join(lines + ["", summary_line(table, df), ""])


# ----------------------------------------------------------------------------- command line
def _method_cell(name: str, ours: str) -> str:
    return f"{name} -> {ours}" if not ours.startswith("not comparable") else f"{name} (not ours)"


def describe(table: PaperTable, published: pd.DataFrame) -> list[str]:
    """The listing of one table: source, targets x methods, metric definitions (from
    results/published.csv), protocol, budget, cost here and on one GPU, the command."""
    pub = published[(published["source"] == table.source)
                    & published["target"].isin(table.targets)]
    lines = [f"{table.id}: {table.title}"]
    ref = pub["source_ref"].dropna().iloc[0] if "source_ref" in pub and len(pub) else ""
    lines.append(f"  source: {table.source}" + (f" ({ref})" if ref else ""))
    lines.append("  targets x methods:")
    for t in table.targets:
        names = list(dict.fromkeys(pub.loc[pub["target"] == t, "method"]))
        cells = [_method_cell(m, table.methods.get(m, "not comparable")) for m in names]
        lines.append(f"    {t}: " + ", ".join(cells))
    lines.append("  metrics:")
    defs = pub.drop_duplicates(["source_metric", "metric"])
    for _, d in defs.iterrows():
        ours = d["metric"] if isinstance(d["metric"], str) and d["metric"] else "no metric of ours"
        lines.append(f"    {d['source_metric']} -> {ours}: {d['metric_definition']}")
    lines += [f"  protocol: {table.n_samples} samples per evaluation, {table.batches} batch(es) "
              f"per run, {table.runs} runs (seeds); {table.protocol}",
              f"  budget: {table.budget}", "  cost estimate (runners/paper_cost.py: rates measured "
              "here, scaled by the budget):"]
    cells = list(dict.fromkeys(
        (table.methods.get(m, "not comparable"), t) for m, t in zip(pub["method"], pub["target"])))
    cells = [c for c in cells if not c[0].startswith("not comparable")]
    needs_eq = any(pub["metric"].fillna("") == "eq_w2")
    metric_s = {t: paper_cost.EQ_W2_2000_S.get(t, 0.0) for t in table.targets} if needs_eq else None
    lines += [f"    {x}" for x in paper_cost.table_cost(cells, table.runs, metric_s)]
    lines += [f"  run: python -m runners.paper {table.id} run=true [samplers=...] [launcher=slurm "
              "slurm.partition=<gpu> slurm.gpus_per_node=1 slurm.timeout_min=<min> "
              "<sampler>.device=cuda] (docs/paper-reproduction.md)", ""]
    return lines


def list_tables(published: pd.DataFrame | None = None) -> str:
    published = collect.load_published(PUBLISHED) if published is None else published
    return "\n".join(line for t in TABLES.values() for line in describe(t, published))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        print(list_tables())
        return 0
    if argv[0] == "list":
        print(list_tables())
        return 0
    table_id, rest = argv[0], argv[1:]
    if table_id not in TABLES:
        print(f"error: table: got {table_id!r}; allowed: list, {', '.join(TABLES)}", file=sys.stderr)
        return 2
    table = TABLES[table_id]
    opts = dict(a.split("=", 1) for a in rest if "=" in a and a.split("=", 1)[0] in ("out", "run"))
    grid_args = [a for a in rest if a.split("=", 1)[0] not in ("out", "run")]
    out = Path(opts.get("out", f"results/runs/paper-{table.id}"))
    if opts.get("run", "false").lower() not in ("true", "false", "1", "0", "yes", "no"):
        print(f"error: run: got {opts['run']!r}; allowed: true, false", file=sys.stderr)
        return 2
    if opts.get("run", "false").lower() in ("true", "1", "yes"):
        from . import grid
        rc = grid.main([f"targets={','.join(table.targets)}",
                        f"samplers={','.join(table.grid_samplers)}", f"seeds={table.runs}",
                        f"n_eval={table.n_samples}", "profile=paper", f"out={out}", *grid_args])
        if rc not in (0, 1):
            return rc
    results_file = out / "results.csv"
    results = pd.read_csv(results_file) if results_file.is_file() else None
    df = build_table(table, collect.load_published(PUBLISHED), results)
    tdir = out / "tables"
    tdir.mkdir(parents=True, exist_ok=True)
    rows.write_text(tdir / f"paper-{table.id}.md", to_markdown(table, df))
    rows.write_text(tdir / f"paper-{table.id}.csv", df.to_csv(index=False))
    print(to_markdown(table, df))
    print(f"[paper] wrote {tdir / f'paper-{table.id}.md'} and .csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
