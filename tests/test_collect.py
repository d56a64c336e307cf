"""Collect, tables and plots on hand-made results (no sampler runs)."""
from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest
import torch

import targets
from runners import collect, plots, published_comparison, rows, tables


def frame() -> pd.DataFrame:
    r = []
    for seed, v in enumerate([1.0, 2.0, 3.0]):
        r.append(dict(target="gmm40", sampler="a", seed=seed, status="ok", x_w2=v, energy_evals=100))
    r.append(dict(target="gmm40", sampler="a", seed=3, status="error", x_w2=math.nan, energy_evals=5))
    r.append(dict(target="gmm40", sampler="b", seed=0, status="ok", x_w2=5.0, energy_evals=100))
    r.append(dict(target="dw4", sampler="a", seed=0, status="ok", x_w2=0.5, energy_evals=100))
    r.append(dict(target="dw4", sampler="a", seed=1, status="ok", x_w2=0.7, energy_evals=100))
    r.append(dict(target="dw4", sampler="a", seed=2, status="diverged", x_w2=99.0, energy_evals=1))
    return pd.DataFrame(r)


def test_summary_mean_and_sem_over_ok_seeds_only():
    s = tables.summarize(frame()).set_index(["target", "sampler", "metric"])
    a = s.loc[("gmm40", "a", "x_w2")]
    assert a["mean"] == pytest.approx(2.0) and a["n"] == 3
    assert a["sem"] == pytest.approx(1 / math.sqrt(3))  # std 1 (ddof=1) / sqrt 3
    d = s.loc[("dw4", "a", "x_w2")]  # the diverged 99.0 is left out
    assert d["mean"] == pytest.approx(0.6) and d["sem"] == pytest.approx(0.1) and d["n"] == 2
    assert math.isnan(s.loc[("gmm40", "b", "x_w2")]["sem"])


def test_markdown_latex_and_status_tables():
    md = tables.to_markdown(frame())
    assert "## x_w2" in md
    assert "| a | 2 ± 0.58 (n=3/4) | 0.6 ± 0.1 (n=2/3) |" in md
    assert "| b | 5 | – |" in md  # one seed: no ±; no dw4 row for b
    assert "| a | 3 ok, 1 error | 2 ok, 1 diverged |" in md
    tex = tables.to_latex(frame())
    assert r"2 $\pm$ 0.58 (n=3/4) & 0.6 $\pm$ 0.1 (n=2/3) \\" in tex
    assert r"\begin{tabular}{lcc}" in tex
    assert tables.fmt(1234.5678, 0.01234) == "1235 ± 0.012"


def test_comparison_uses_only_matching_definitions():
    pub = pd.DataFrame([
        dict(source="blog", target="gmm40", method="MCMC", metric="x_w2", value=4.2, std=0.5,
             reference_set="official", n_seeds=5),
        dict(source="blog", target="gmm40", method="MCMC", metric="x_w2", value=9.9, std=0.5,
             reference_set="blog-new", n_seeds=5),
        dict(source="asbs", target="dw4", method="iDEM", metric="", value=0.7, std=0.06,
             reference_set="unknown", n_seeds=3)])
    comp = published_comparison.comparison(tables.summarize(frame()), pub)
    assert set(comp["target"]) == {"gmm40"}
    assert sorted(comp["method"]) == ["MCMC", "a", "b"]
    assert 9.9 not in set(comp["value"])
    md = published_comparison.comparison_markdown(comp)
    assert "| gmm40 | x_w2 | blog | MCMC |  | 4.2 ± 0.5 |" in md


def test_published_csv_is_well_formed():
    pub = collect.load_published()
    assert len(pub) > 50
    assert set(pub["target"]) <= set(targets.names())
    assert pub["value"].notna().all()
    known = set(tables.metric_columns(pd.DataFrame({m: [1.0] for m in
                                                    tables.metrics.names()}))) | {""}
    assert set(pub["metric"].fillna("")) <= known
    row = pub[(pub["target"] == "lj13") & (pub["method"] == "iDEM") & (pub["metric"] == "x_w2")
              & (pub["reference_set"] == "official")]
    assert row["value"].tolist() == [4.266] and row["std"].tolist() == [0.007]


def _write_cell(out, target, sampler, seed, x, finished="2025-01-01T00:00:00", **extra):
    key = f"{target}-{sampler}-s{seed}-{finished[-2:]}"
    d = rows.cell_dir(out, key)
    rows.write_npy(d / rows.SAMPLES_FILE, x)
    row = dict(target=target, sampler=sampler, seed=seed, status="ok", reason="", cell_key=key,
               energy_evals=1000 * (seed + 1), finished_at=finished, **extra)
    rows.write_json(d / rows.ROW_FILE, row)
    return d


def test_load_results_dedupes_and_ignores_partial_files(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = targets.get("gmm40").sample_exact(50, g).numpy()
    _write_cell(tmp_path, "gmm40", "a", 0, x, finished="2025-01-01T00:00:01", x_w2=1.0)
    _write_cell(tmp_path, "gmm40", "a", 0, x, finished="2025-01-02T00:00:02", x_w2=2.0)
    d = _write_cell(tmp_path, "gmm40", "b", 0, x, x_w2=3.0)
    (d / ".row.json.abc.tmp").write_text('{"status": "ok", "tar')  # a killed writer's leftover
    bad = rows.cell_dir(tmp_path, "broken")
    bad.mkdir(parents=True)
    (bad / "row.json").write_text('{"status": "o')  # not valid JSON: ignored
    df = collect.load_results(tmp_path, verbose=False)
    assert len(df) == 2
    assert df.set_index("sampler").loc["a", "x_w2"] == 2.0  # newest wins


@pytest.mark.reference_data
def test_figures_from_results_files(tmp_path):
    g = torch.Generator().manual_seed(1)
    gmm, dw4 = targets.get("gmm40"), targets.get("dw4")
    for seed in range(2):
        _write_cell(tmp_path, "gmm40", "good", seed, gmm.sample_exact(300, g).numpy(),
                    x_w2=4.0 + seed, nll=7.0)
        _write_cell(tmp_path, "gmm40", "bad", seed, 3 * torch.randn(300, 2, generator=g).numpy(),
                    x_w2=30.0 + seed)
        _write_cell(tmp_path, "dw4", "good", seed, dw4.reference("val")[:300].numpy(), x_w2=1.8)
    df = collect.load_results(tmp_path, verbose=False)
    paths = plots.make_all(tmp_path, df)
    names = {p.name for p in paths}
    assert {"energy_gmm40.png", "energy_dw4.png", "distances_dw4.png", "gmm40_samples.png",
            "metric_x_w2.png", "metric_nll.png"} <= names
    assert "distances_gmm40.png" not in names
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000


def test_reference_bins_and_density():
    ref = np.linspace(0, 1, 10001)
    edges = plots.reference_bins(ref, n_bins=10)
    assert edges[0] == pytest.approx(0.005) and edges[-1] == pytest.approx(0.995)
    v = np.concatenate([np.full(50, 0.5), np.full(50, 7.0)])  # half outside the range
    dens = plots._density(v, edges)
    assert (dens * np.diff(edges)).sum() == pytest.approx(0.5)


def test_collect_cli_writes_everything_and_rejects_bad_input(tmp_path, capsys):
    assert collect.main([f"out={tmp_path / 'nothing'}"]) == 2
    assert "has no cells/ folder" in capsys.readouterr().err
    assert collect.main(["outt=x"]) == 2
    g = torch.Generator().manual_seed(2)
    _write_cell(tmp_path, "gmm40", "good", 0, targets.get("gmm40").sample_exact(100, g).numpy(),
                x_w2=4.5)
    assert collect.main([f"out={tmp_path}", "figures=false"]) == 0
    csv = pd.read_csv(tmp_path / "results.csv")
    assert list(csv.columns[:4]) == ["target", "sampler", "seed", "status"]
    assert (tmp_path / "tables" / "summary.tex").is_file()
    comparison_md = (tmp_path / "tables" / "published_comparison.md").read_text()
    assert re.search(r"\| gmm40 \| x_w2 \| ours \| good \| \d* \| 4\.5 \|", comparison_md)


def test_comparison_says_when_sample_sizes_differ():
    """W2 is biased upwards at small n: ours at 1000 samples beside a figure published at 2000 is
    flagged, at the same size it is not."""
    pub = pd.DataFrame([dict(source="asbs", target="gmm40", method="MCMC", metric="x_w2",
                             value=4.2, std=0.5, reference_set="official", n_seeds=3,
                             n_samples=2000)])
    df = frame().assign(n_eval=1000)
    md = published_comparison.comparison_markdown(published_comparison.comparison(tables.summarize(df), pub))
    assert "| gmm40 | x_w2 | asbs | MCMC | 2000 | 4.2 ± 0.5 |  |" in md
    assert "| gmm40 | x_w2 | ours | b | 1000 | 5 | scored on 1000 samples; published on 2000: " \
           "not comparable |" in md
    same = published_comparison.comparison(tables.summarize(df.assign(n_eval=2000)), pub)
    assert not same["note"].str.contains("not comparable").any()
