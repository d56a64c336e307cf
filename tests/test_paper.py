"""runners.paper: the verdict arithmetic, the table built from published rows and our rows, and
the command line. The CPU-feasible published row (the blog's GMM-40 exact samples) runs under
the `paper` marker (also `slow`, so the default run leaves it out)."""
import math

import numpy as np
import pandas as pd
import pytest

from runners import paper


def test_z_score_is_the_difference_over_the_combined_standard_error():
    # published 4.0 ± 1.0 over 25, ours 4.5 ± 0.5 over 4: se = sqrt(1/25 + 0.25/4) = 0.3202
    z = paper.z_score(4.0, 1.0, 25, 4.5, 0.5, 4)
    assert z == pytest.approx(0.5 / math.sqrt(1 / 25 + 0.25 / 4))
    assert paper.z_score(1.0, 0.0, 5, 1.0, 0.0, 5) == 0.0
    assert paper.z_score(1.0, 0.0, 5, 2.0, 0.0, 5) == math.inf


@pytest.mark.parametrize("z, want", [(0.0, "reproduced"), (2.5, "reproduced"), (-2.49, "reproduced"),
                                     (2.51, "differs"), (-7.0, "differs"), (math.inf, "differs")])
def test_verdict_threshold_is_two_and_a_half_sigma(z, want):
    assert paper.verdict(z) == want


def _published():
    base = dict(source="blog-iclr2025-ebm-vs-mcmc", target="gmm40", source_metric="W2",
                reference_set="official")
    return pd.DataFrame([
        {**base, "method": "MCMC", "metric": "x_w2", "value": 4.2, "std": 0.5},
        {**base, "method": "iDEM", "metric": "x_w2", "value": 7.7, "std": 1.4},
        {**base, "method": "iEFM", "metric": "x_w2", "value": 7.3, "std": 0.9},
        {**base, "method": "MCMC", "metric": float("nan"), "source_metric": "Energy W2",
         "value": 0.1, "std": 0.05},
        {**base, "method": "MCMC", "metric": "x_w2", "value": 4.0, "std": 0.5,
         "reference_set": "blog-new"},
    ])


def test_table_gives_every_verdict_from_synthetic_rows():
    ours = pd.DataFrame({"target": ["gmm40"] * 6, "sampler": ["rwm"] * 3 + ["idem"] * 3,
                         "status": ["ok"] * 6,
                         "x_w2": [4.1, 4.3, 4.2, 12.0, 12.5, 13.0]})
    df = paper.build_table(paper.TABLES["blog-gmm40"], _published(), ours, compute_exact=False)
    got = dict(zip(df["method"] + "/" + df["reference_set"] + "/" + df["source_metric"], df["verdict"]))
    assert got["MCMC/official/W2"] == "reproduced"         # 4.2 vs 4.2
    assert got["iDEM/official/W2"] == "differs"             # 12.5 vs 7.7, z ≈ 13
    assert got["iEFM/official/W2"] == "not comparable"      # not in the suite
    assert got["MCMC/official/Energy W2"] == "not comparable"  # no metric definition
    assert got["MCMC/blog-new/W2"] == "not comparable"       # other reference set
    mcmc = df[(df["method"] == "MCMC") & (df["reference_set"] == "official")
              & (df["source_metric"] == "W2")].iloc[0]
    assert mcmc["ours"] == pytest.approx(4.2) and mcmc["n_ours"] == 3
    assert paper.summary_line(paper.TABLES["blog-gmm40"], df).endswith(
        "1 reproduced, 1 differs, 0 not run, 3 not comparable")


def test_rows_without_our_results_are_not_run_and_say_how_to_run_them():
    df = paper.build_table(paper.TABLES["blog-gmm40"], _published(), None, compute_exact=False)
    row = df[(df["method"] == "iDEM")].iloc[0]
    assert row["verdict"] == "not run" and "python -m runners.paper blog-gmm40 run=true" in row["reason"]


def test_list_names_every_table_and_a_bad_id_lists_the_valid_ones(capsys):
    assert paper.main(["list"]) == 0
    out = capsys.readouterr().out
    for tid in paper.TABLES:
        assert tid in out
    assert paper.main(["blog-gmm41"]) == 2
    err = capsys.readouterr().err
    assert "blog-gmm41" in err and "blog-gmm40" in err


def test_every_table_source_is_in_published_csv():
    pub = paper.collect.load_published(paper.PUBLISHED)
    for t in paper.TABLES.values():
        assert (pub["source"] == t.source).sum() > 0, t.id


def _asbs_ours(n_eval=2000, lj55_source="official"):
    """Our rows for the ASBS table: idem on DW-4 close to the published 0.70 ± 0.06 (eq_w2) and
    far from 0.55 ± 0.14 (energy_w2); pis on LJ-55 scored against another reference."""
    base = dict(sampler="idem", target="dw4", status="ok", n_eval=n_eval,
                reference_source="official")
    rows = [{**base, "seed": k, "eq_w2": v, "energy_w2": 2.0}
            for k, v in enumerate([0.69, 0.72, 0.70])]
    rows += [{**base, "sampler": "pis", "target": "lj55", "seed": k, "eq_w2": 4.8,
              "energy_w2": 200.0, "reference_source": lj55_source} for k in range(3)]
    return pd.DataFrame(rows)


def test_asbs_w2_columns_carry_metric_names_and_get_verdicts():
    pub = paper.collect.load_published(paper.PUBLISHED)
    asbs = pub[pub["source"] == "asbs-2025-table2"]
    assert set(asbs.loc[asbs["source_metric"] == "W2", "metric"]) == {"eq_w2"}
    assert set(asbs.loc[asbs["source_metric"] == "E-W2", "metric"]) == {"energy_w2"}
    table = paper.TABLES["asbs-table2"]
    df = paper.build_table(table, pub, _asbs_ours(lj55_source="mcmc"), compute_exact=False)
    v = {(r.target, r.method, r.metric): (r.verdict, r.reason) for r in df.itertuples()}
    # published 0.70 ± 0.06 over 3, ours 0.703 ± 0.015 over 3: z ≈ 0.1
    assert v[("dw4", "iDEM", "eq_w2")][0] == "reproduced"
    assert v[("dw4", "iDEM", "energy_w2")][0] == "differs"      # 2.0 vs 0.55 ± 0.14
    assert v[("dw4", "PIS", "eq_w2")][0] == "not run"           # no pis rows on DW-4
    assert "python -m runners.paper asbs-table2 run=true" in v[("dw4", "PIS", "eq_w2")][1]
    assert v[("dw4", "ASBS", "eq_w2")] == ("not comparable", "ASBS is not in the suite")
    assert v[("lj55", "PIS", "eq_w2")][0] == "not comparable"   # our LJ-55 reference is not theirs
    assert "'mcmc' reference" in v[("lj55", "PIS", "eq_w2")][1]
    row = df[(df["method"] == "iDEM") & (df["target"] == "dw4") & (df["metric"] == "eq_w2")].iloc[0]
    se = math.sqrt(0.06 ** 2 / 3 + 0.015275 ** 2 / 3)
    assert row["z"] == pytest.approx((0.70333 - 0.70) / se, rel=1e-3)


def test_rows_scored_at_another_sample_count_are_not_comparable():
    pub = paper.collect.load_published(paper.PUBLISHED)
    df = paper.build_table(paper.TABLES["asbs-table2"], pub, _asbs_ours(n_eval=1000),
                           compute_exact=False)
    row = df[(df["method"] == "iDEM") & (df["target"] == "dw4") & (df["metric"] == "eq_w2")].iloc[0]
    assert row["verdict"] == "not comparable" and "n_eval=2000" in row["reason"]


def test_list_gives_protocol_metrics_and_cost_per_table(capsys):
    assert paper.main(["list"]) == 0
    out = capsys.readouterr().out
    asbs = out[out.index("asbs-table2:"):]
    assert "W2 -> eq_w2" in asbs and "E-W2 -> energy_w2" in asbs
    assert "2000 samples per evaluation, 1 batch(es) per run, 3 runs (seeds)" in asbs
    assert "lj13: PDDS (not ours), SCLD (not ours), PIS -> pis" in asbs
    blog = out[out.index("blog-gmm40:"):out.index("blog-dw4:")]
    assert "exact on gmm40: 10 s per cell here" in blog and "Energy W2" not in blog
    assert "idem on gmm40: 89 min per cell here" in blog  # 1000 x (100 x 0.0366 + 1.70) s
    assert out.count("cost estimate") == len(paper.TABLES)


@pytest.mark.paper
@pytest.mark.slow
def test_blog_gmm40_exact_samples_row_reproduces(tmp_path):
    """The blog's GMM-40 "exact samples" W2 4.159 ± 0.604 (25 batches of 1000): ours from 25
    batches of 1000 exact samples against the test split. Measured here: 4.611 ± 0.707, z = +2.43
    (reproduced, close to the threshold: our exact-vs-exact calibration over 10 repeats is 4.487 ±
    0.724, docs/metrics.md)."""
    assert paper.main(["blog-gmm40", f"out={tmp_path}"]) == 0
    df = pd.read_csv(tmp_path / "tables" / "paper-blog-gmm40.csv")
    row = df[df["method"] == "exact samples"].iloc[0]
    assert row["verdict"] == "reproduced" and row["n_ours"] == 25
    assert 3.8 < row["ours"] < 5.0


def test_not_run_rows_say_when_the_official_reference_is_missing(monkeypatch):
    monkeypatch.setattr(paper, "_reference_source", lambda t: "mcmc" if t == "lj55" else "official")
    pub = paper.collect.load_published(paper.PUBLISHED)
    df = paper.build_table(paper.TABLES["asbs-table2"], pub, None, compute_exact=False)
    why = dict(zip(df["target"] + "/" + df["method"] + "/" + df["metric"], df["reason"]))
    assert "official lj55 test split" in why["lj55/DDS/eq_w2"] and "'mcmc'" in why["lj55/DDS/eq_w2"]
    assert "official" not in why["dw4/DDS/eq_w2"].split(")")[-1]
    assert why["dw4/DDS/eq_w2"].startswith("run: python -m runners.paper asbs-table2 run=true")


def test_rows_whose_metric_was_capped_below_the_source_size_are_not_comparable():
    ours = _asbs_ours()
    ours["config"] = '{"metric_options": {"eq_w2": {"max_n": 32}}, "n_eval": 2000}'
    pub = paper.collect.load_published(paper.PUBLISHED)
    df = paper.build_table(paper.TABLES["asbs-table2"], pub, ours, compute_exact=False)
    v = {(r.target, r.method, r.metric): (r.verdict, r.reason) for r in df.itertuples()}
    assert v[("dw4", "iDEM", "eq_w2")][0] == "not comparable"
    assert "max_n=32" in v[("dw4", "iDEM", "eq_w2")][1]
    assert v[("dw4", "iDEM", "energy_w2")][0] == "differs"  # energy_w2 has no cap
