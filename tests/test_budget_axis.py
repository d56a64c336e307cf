"""The grid's budget axis (runners/ladder.py): parsing, one cell per rung, continuation equal to a
fresh fit of the larger budget, resume of a ladder after a kill, and the best-at-budget table."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest

from helpers_grid import run_grid
from runners import budget_tables, ladder, rows
from runners import config as cfgmod
from runners import grid as gridmod
from runners.cell import run_cell
from runners.launch import batches

N_EVAL = 64
TINY = {
    "mala": ["mala.n_chains=16", "mala.max_warmup_steps=5"],
    "pis": ["pis.batch_size=8", "pis.n_steps=6", "pis.hidden=8", "pis.sample_batch=64"],
    "smc": ["smc.n_chains=16"],
    # 16 x (1 + 2 x 2) = 80 evaluations per AIS round: both rungs end on a round boundary
    "fab": ["fab.batch_size=16", "fab.n_layers=2", "fab.hidden=8", "fab.buffer_min=64",
            "fab.buffer_size=128", "fab.n_leapfrog=2", "fab.sample_batch=64"],
    "idem": ["idem.batch_size=16", "idem.n_mc=8", "idem.n_inner=5", "idem.hidden=16",
             "idem.n_layers=1", "idem.n_init=64", "idem.buffer_min=64", "idem.n_generate=32",
             "idem.n_integration_steps=10", "idem.sample_batch=64"],
}


def _same(a, b) -> bool:
    """Equal, or both NaN (a metric stays NaN where the reference data are absent)."""
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a)
                      and math.isnan(b))


def _grid(tmp_path, samplers: str, budgets: str, *extra):
    return cfgmod.parse(["targets=dw4", f"samplers={samplers}", "seeds=1", f"budgets={budgets}",
                         "profile=smoke", f"out={tmp_path}", f"n_eval={N_EVAL}", *extra])


# ------------------------------------------------------------------------------ parsing
def test_each_rung_is_a_cell_with_its_budget_in_key_and_no_time_cap(tmp_path):
    g = _grid(tmp_path, "mala,pis", "[3e4,1e4,1e4]")
    specs = gridmod.build_specs(g, "debug")
    assert [s.rung for s in specs] == [10_000, 30_000] * 2  # sorted, duplicates dropped
    assert specs[0].budget == {"max_energy_evals": 10_000, "max_seconds": None, "max_steps": None}
    assert specs[0].key.startswith("dw4-mala-s0-e1e4-")
    assert specs[1].key.startswith("dw4-mala-s0-e3e4-")
    assert specs[1].previous == specs[0].key and specs[1].previous_budget == specs[0].budget
    assert specs[0].group == specs[1].group == specs[0].key != specs[2].group
    # a pack never splits a ladder, even when it exceeds cells_per_job
    assert [len(p) for p in batches(specs, 1)] == [2, 2]
    assert [len(p) for p in batches(specs, 2)] == [2, 2]
    # a ladder starts in a pack with room and brings every rung along
    assert [[s.key for s in p] for p in batches(specs, 3)] == [[s.key for s in specs]]


def test_without_budgets_keys_and_specs_are_unchanged(tmp_path):
    g = cfgmod.parse(["targets=dw4", "samplers=mala", "seeds=2", "profile=smoke",
                      f"out={tmp_path}"])
    specs = gridmod.build_specs(g, "debug")
    assert g.ladders == {} and [s.budget_unit for s in specs] == ["", ""]
    assert all(s.key.count("-") == 3 and "budget_unit" not in s.resolved() for s in specs)
    assert [len(p) for p in batches(specs, 1)] == [1, 1]


def test_seconds_ladder_caps_time_only():
    g = cfgmod.parse(["targets=dw4", "samplers=mala", "budgets_s=[2.5,10]", "profile=smoke"])
    unit, rungs = g.ladders["dw4"]
    assert unit == "seconds" and [r["max_seconds"] for r in rungs] == [2.5, 10.0]
    assert all(r["max_energy_evals"] is None for r in rungs)
    assert ladder.label("seconds", 2.5) == "t2.5s"
    assert ladder.label("energy_evals", 2.5e6) == "e2.5e6"


def test_steps_ladder_caps_steps_only_and_labels_its_cells(tmp_path):
    g = cfgmod.parse(["targets=dw4", "samplers=pis", "budgets_steps=[40,10,20,20]",
                      "profile=smoke", f"out={tmp_path}"])
    unit, rungs = g.ladders["dw4"]
    assert unit == "steps" and [r["max_steps"] for r in rungs] == [10, 20, 40]
    assert all(r["max_energy_evals"] is None and r["max_seconds"] is None for r in rungs)
    specs = gridmod.build_specs(g, "debug")
    assert [s.key.split("-")[3] for s in specs] == ["st10", "st20", "st40"]
    assert [s.previous for s in specs] == ["", specs[0].key, specs[1].key]


@pytest.mark.parametrize("args, words", [
    (["budgets=[-1]"], ["budgets: got", "-1", "positive numbers of energy evaluations"]),
    (["budgets=[1.5]"], ["budgets:", "whole numbers"]),
    (["budgets=abc"], ["budgets: got 'abc'", "budgets=[1e5,1e6,1e7]"]),
    (["budgets=[]"], ["budgets: got []"]),
    (["budgets_s=[0]"], ["budgets_s: got", "wall seconds"]),
    (["budgets=[1e5]", "budgets_s=[10]"], ["budgets, budgets_s: got 2", "one budget axis"]),
    (["budgets=[1e5]", "budgets_steps=[10]"], ["budgets, budgets_steps: got 2"]),
    (["budgets_steps=[2.5]"], ["budgets_steps:", "sampler steps", "whole numbers"]),
    (["budgets_steps=[0]"], ["budgets_steps: got", "budgets_steps=[100,1000]"]),
])
def test_bad_budgets_name_the_field(args, words):
    with pytest.raises(cfgmod.ConfigError) as err:
        cfgmod.parse(["targets=dw4", "samplers=mala", "profile=smoke", *args])
    for w in words:
        assert w in str(err.value)


@pytest.mark.parametrize("block, words", [
    ("budget_ladder: {nosuch: [1000]}", ["budget_ladder.nosuch: unknown target", "dw4"]),
    ("budget_ladder: {dw4: [0]}", ["budget_ladder.dw4: got [0]", "positive"]),
    ("budget_ladder: [1000]", ["budget_ladder: got [1000]", "mapping of target names"]),
    ("budget_ladder: {dw4: [1000]}\nbudget_ladder_s: {dw4: [1]}", ["both set for dw4"]),
])
def test_bad_profile_ladders_name_the_field(tmp_path, block, words):
    p = tmp_path / "p.yaml"
    p.write_text("budget:\n  dw4: {max_energy_evals: 1000}\n" + block + "\n")
    with pytest.raises(cfgmod.ConfigError) as err:
        cfgmod.parse(["targets=dw4", "samplers=mala", f"profile={p}"])
    for w in words:
        assert w in str(err.value)


def test_profile_ladder_per_target_and_cli_wins(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("budget:\n  dw4: {max_energy_evals: 1000, max_steps: 7}\n"
                 "  gmm40: {max_energy_evals: 1000}\nbudget_ladder: {dw4: [2000, 1e3]}\n")
    g = cfgmod.parse(["targets=dw4,gmm40", "samplers=mala", f"profile={p}"])
    assert set(g.ladders) == {"dw4"}  # gmm40 keeps its single budget
    assert [r["max_energy_evals"] for r in g.ladders["dw4"][1]] == [1000, 2000]
    assert all(r["max_steps"] == 7 for r in g.ladders["dw4"][1])  # the profile's step cap kept
    g = cfgmod.parse(["targets=dw4,gmm40", "samplers=mala", f"profile={p}", "budgets=[5e3]"])
    assert {t: [r["max_energy_evals"] for r in v[1]] for t, v in g.ladders.items()} == \
        {"dw4": [5000], "gmm40": [5000]}


# ------------------------------------------------------------------------------ continuation
# FAB as fab-torch's GMM run and the se3 configs' lr schedule: Metropolis (16 x (1 + 2 x 2) = 80
# evaluations per round again), float64, and warm-up + cosine whose warm-up ends in the lower rung
# (24 steps there) and whose decay runs on in the continued one: the schedule position continues.
FAB_AUTHORS = ["fab.transition=metropolis", "fab.n_metropolis=2", "fab.metropolis_step=2.0",
               "fab.metropolis_adapt=true", "fab.dtype=float64", "fab.lr_schedule=warmup_cosine",
               "fab.lr=1e-3", "fab.lr_warmup_steps=10", "fab.lr_decay_steps=80"]


@pytest.mark.parametrize("sampler, budgets, extra", [
    ("mala", "[2000,4000]", ()),
    ("fab", "[800,2000]", ()),
    ("fab", "[800,2000]", FAB_AUTHORS),
    # ~3 s: the first PIS fit warms up
    pytest.param("pis", "[600,1500]", (), marks=pytest.mark.slow),
    # 3000 = 23 steps of 128: the budget cuts the 5th outer iteration after 3 of its 5 steps
    pytest.param("idem", "[3000,9000]", (), marks=pytest.mark.slow),
])
def test_continued_rung_equals_a_fresh_fit_of_its_budget_bit_for_bit(tmp_path, sampler, budgets,
                                                                       extra):
    """MALA with a warm-up capped below both rungs (max_warmup_steps), FAB (also as its authors
    ran it: Metropolis, float64, warm-up + cosine lr), PIS and iDEM: the rung that
    continues from the one below spends only the difference and lands on the same samples,
    evaluations and metrics as one fresh fit of the larger budget."""
    specs = gridmod.build_specs(_grid(tmp_path, sampler, budgets, *TINY[sampler], *extra),
                                "debug")
    low, high = [run_cell(s) for s in specs]
    assert (specs[0].dir / ladder.STATE_FILE).is_file() and low["ran_fresh"] is True
    assert high["ran_fresh"] is False and high["continued_from"] == specs[0].rung
    assert "continued from the" in high["continuation"]
    fresh_spec = dataclasses.replace(specs[1], budget_unit="", previous="", previous_budget=None,
                                     group="")
    fresh = run_cell(fresh_spec)
    assert fresh["status"] == high["status"] == "ok"
    assert np.array_equal(np.load(specs[1].dir / rows.SAMPLES_FILE),
                          np.load(fresh_spec.dir / rows.SAMPLES_FILE))
    for col in ("energy_evals", "grad_evals", "fit_energy_evals", "x_w2", "energy_w2"):
        assert _same(high[col], fresh[col]), col   # metrics NaN (unscored) without DW-4 data
    assert low["fit_energy_evals"] < high["fit_energy_evals"] <= specs[1].rung


def test_ladder_resumes_after_a_kill_running_only_the_missing_rung(tmp_path, capsys):
    """Three rungs of MALA (continues) and SMC (no state_dict: fresh at every rung); the top
    rungs' rows are removed as if the grid had been killed there, and a rerun runs only them."""
    args = ["targets=dw4", "samplers=mala,smc", "seeds=1", "budgets=[1000,2000,3000]",
            "profile=smoke", f"out={tmp_path}", f"n_eval={N_EVAL}", "launcher=debug",
            "collect=false", *TINY["mala"], *TINY["smc"]]
    assert run_grid(args, capsys)[0] == 0
    first = {(r["sampler"], r["budget_energy_evals"]): r for r in rows.iter_rows(tmp_path)}
    assert len(first) == 6 and all(r["status"] == "ok" for r in first.values())
    assert first[("smc", 2000)]["ran_fresh"] is True
    assert "smc has no state_dict" in first[("smc", 2000)]["continuation"]
    assert first[("mala", 3000)]["continued_from"] == 2000
    top_samples = {}
    for s in ("mala", "smc"):  # killed in the top rung: no row there
        cell = tmp_path / "cells" / first[(s, 3000)]["cell_key"]
        top_samples[s] = np.load(cell / rows.SAMPLES_FILE)
        (cell / rows.ROW_FILE).unlink()
    code, err = run_grid(args, capsys)
    assert code == 0 and "4 finished cell(s) kept, 2 to run" in err
    again = {(r["sampler"], r["budget_energy_evals"]): r for r in rows.iter_rows(tmp_path)}
    for key, r in first.items():
        if key[1] < 3000:  # untouched
            assert again[key]["finished_at"] == r["finished_at"] and again[key]["cell_key"] == \
                r["cell_key"]
        else:  # rerun, from the rung below's saved state, to the same numbers
            assert again[key]["started_at"] >= r["finished_at"]
            assert _same(again[key]["x_w2"], r["x_w2"]) and again[key]["energy_evals"] == \
                r["energy_evals"]
            cell = tmp_path / "cells" / again[key]["cell_key"]
            assert np.array_equal(np.load(cell / rows.SAMPLES_FILE), top_samples[key[0]])
    assert again[("mala", 3000)]["continued_from"] == 2000


# ------------------------------------------------------------------------------ tables
def _synthetic() -> pd.DataFrame:
    """x_w2 (lower is better) and ess (higher is better) of three samplers at two rungs."""
    vals = {  # (sampler, budget) -> x_w2 per seed
        ("a", 1e3): [5.0, 5.2, 5.4], ("b", 1e3): [3.0, 3.1, 3.2], ("c", 1e3): [3.1, 3.3, 3.5],
        ("a", 1e4): [1.0, 1.1, 1.2], ("b", 1e4): [2.0, 2.0, 2.0], ("c", 1e4): [3.0, 3.0, 3.0],
    }
    out = []
    for (s, b), xs in vals.items():
        for seed, x in enumerate(xs):
            out.append({"target": "dw4", "sampler": s, "seed": seed, "status": "ok",
                        "budget_unit": "energy_evals", "budget_energy_evals": b,
                        "budget_seconds": None, "energy_evals": b, "fit_seconds": 1.0,
                        "sample_seconds": 0.1, "ran_fresh": s == "c", "x_w2": x,
                        "ess": {"a": 0.1, "b": 0.5, "c": 0.2}[s] + 0.01 * seed})
    return pd.DataFrame(out)


def test_best_at_budget_picks_the_best_in_the_metrics_direction():
    best = budget_tables.best_at_budget(_synthetic(), ["x_w2", "ess"])
    row = {(r["metric"], r["budget"]): r for _, r in best.iterrows()}
    r = row[("x_w2", 1e3)]
    assert (r["best"], r["second"]) == ("b", "c") and r["best_mean"] == pytest.approx(3.1)
    # gap 0.2 vs combined s.e.m. sqrt(0.0577² + 0.1155²) = 0.129: exceeds
    assert r["combined_sem"] == pytest.approx(math.sqrt(0.1 ** 2 / 3 + 0.2 ** 2 / 3))
    assert r["gap"] == pytest.approx(0.2) and r["gap_exceeds_sem"] == "yes"
    r = row[("x_w2", 1e4)]
    assert (r["best"], r["second"], r["gap_exceeds_sem"]) == ("a", "b", "yes")
    r = row[("ess", 1e3)]  # higher is better
    assert (r["best"], r["second"]) == ("b", "c") and r["direction"] == "higher is better"


def test_best_at_budget_gap_within_sem_and_single_seed():
    df = _synthetic()
    df.loc[(df["sampler"] == "c") & (df["budget_energy_evals"] == 1e3), "x_w2"] = [3.0, 3.3, 3.0]
    r = budget_tables.best_at_budget(df, ["x_w2"]).iloc[0]
    assert r["best"] == "b" and r["second"] == "c" and r["gap_exceeds_sem"] == "no"
    one = df[df["seed"] == 0]
    r = budget_tables.best_at_budget(one, ["x_w2"]).iloc[0]
    assert r["gap_exceeds_sem"] == "?" and math.isnan(r["combined_sem"])
    md = budget_tables.to_markdown(budget_tables.best_at_budget(df, ["x_w2"]))
    assert "| 1e3 evals | b | 3.1 ± 0.058 | 1e3 | c | 3.1 ± 0.1 | 1e3 | no |" in md


def test_top_rung_keeps_each_samplers_largest_budget():
    df = _synthetic()
    top = budget_tables.top_rung(df)
    assert set(top["budget_energy_evals"]) == {1e4} and len(top) == 9
    # a ladder extended for one sampler only: the others stay at their own top
    top = budget_tables.top_rung(df[~((df["sampler"] == "c") & (df["budget_energy_evals"] == 1e4))])
    assert {s: set(g["budget_energy_evals"]) for s, g in top.groupby("sampler")} == \
        {"a": {1e4}, "b": {1e4}, "c": {1e3}}


def test_extending_a_ladder_reuses_its_rungs_and_continues_from_the_old_top(tmp_path, capsys):
    args = ["targets=dw4", "samplers=mala", "seeds=1", "profile=smoke", f"out={tmp_path}",
            f"n_eval={N_EVAL}", "launcher=debug", "collect=false", *TINY["mala"]]
    assert run_grid([*args, "budgets=[1000,2000]"], capsys)[0] == 0
    code, err = run_grid([*args, "budgets=[1000,2000,3000]"], capsys)
    assert code == 0 and "2 finished cell(s) kept, 1 to run" in err
    top = {r["budget_energy_evals"]: r for r in rows.iter_rows(tmp_path)}[3000]
    assert top["continued_from"] == 2000 and top["ran_fresh"] is False


def test_mcmc_reopens_a_warm_up_frozen_by_a_smaller_budget():
    """The rung below planned 50 % of 2,000 evaluations as warm-up; the continued rung warms up
    to 50 % of 20,000 like one fit of 20,000 (and drops what the short warm-up had pooled)."""
    import samplers
    import targets
    from samplers import Budget
    cls, t = samplers.get("mala"), targets.get("gmm40")
    cfg = cls.Config(n_chains=16, thinning=1)
    low = cls(cfg)
    low.fit(t, Budget(max_energy_evals=2000), torch_gen())
    assert low.state_dict()["carry"]["warmup_done"] == 62  # ceil(0.5 * ((2000 - 16) // 16))
    cont = cls(cfg)
    cont.load_state_dict(low.state_dict())
    info = cont.fit(t, Budget(max_energy_evals=20_000 - 2000), torch_gen())
    fresh = cls(cfg).fit(t, Budget(max_energy_evals=20_000), torch_gen())
    for key in ("steps", "warmup_steps", "post_warmup_steps", "pool_size"):
        assert info[key] == fresh[key], key
    assert info["warmup_steps"] == 625  # ceil(0.5 * ((20000 - 16) // 16))


def torch_gen():
    import torch
    return torch.Generator().manual_seed(3)


def test_steps_rungs_have_points_but_no_best_sampler():
    """A step is each sampler's own unit: steps rungs are drawn, never ranked."""
    df = _synthetic().assign(budget_unit="steps", budget_energy_evals=None,
                             budget_steps=lambda d: d["energy_evals"])
    pts = budget_tables.budget_points(df, ["x_w2"])
    assert sorted(set(pts["budget"])) == [1e3, 1e4] and set(pts["budget_unit"]) == {"steps"}
    assert budget_tables.best_at_budget(df, ["x_w2"]).empty
    mixed = pd.concat([_synthetic(), df.assign(target="gmm40")])
    assert set(budget_tables.best_at_budget(mixed, ["x_w2"])["target"]) == {"dw4"}
