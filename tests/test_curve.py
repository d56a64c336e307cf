"""runners.curve: a learning curve scores, at outer iteration N, exactly what a grid cell capped
at N outer iterations samples (same config, seeds and evaluation protocol)."""
from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from runners import curve, grid, rows

TINY = ["idem.n_mc=4", "idem.batch_size=16", "idem.n_inner=3", "idem.n_generate=32",
        "idem.n_integration_steps=10", "idem.hidden=8", "idem.n_layers=1", "idem.n_init=64",
        "idem.buffer_min=32", "idem.sample_batch=64", "n_eval=64", "profile=smoke"]


def _curve_rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.reference_data
def test_curve_matches_a_grid_cell_at_the_same_outer_iteration(tmp_path, capsys):
    c_out, g_out = tmp_path / "curve", tmp_path / "grid"
    assert curve.main(["targets=dw4", "samplers=idem", "outer=4", "every=2", "batches=2",
                       f"out={c_out}",
                       *TINY]) == 0
    rows_all = _curve_rows(c_out / "curve.csv")
    got_index = [(int(r["outer"]), int(r["batch"])) for r in rows_all]
    assert got_index == [(2, 0), (2, 1), (4, 0), (4, 1)]
    got = [r for r in rows_all if r["batch"] == "0"]
    assert [int(r["steps"]) for r in got] == [6, 12]
    # 3 steps x 16 x K=4 energy evaluations per outer iteration; evaluation spends none
    assert [int(r["energy_evals"]) for r in got] == [2 * 3 * 16 * 4, 4 * 3 * 16 * 4]
    assert rows_all[2]["x_w2"] != rows_all[3]["x_w2"]  # batch 1: other samples, other value
    state = torch.load(c_out / "state.pt", weights_only=False)
    assert state["outer"] == 4 and state["steps"] == 12
    assert json.loads(got[-1]["config"])["n_mc"] == 4
    for r in got:
        assert math.isfinite(float(r["x_w2"])) and math.isfinite(float(r["dist_tvd"]))

    assert grid.main(["targets=dw4", "samplers=idem", "seeds=[0]", "launcher=debug",
                      "idem.max_outer=4", "figures=false", f"out={g_out}", *TINY]) == 0
    (cell,) = rows.iter_rows(g_out)
    assert cell["status"] == "ok" and cell["fit_info"]
    assert json.loads(cell["fit_info"])["outer_iterations"] == 4
    for metric in ("x_w2", "energy_w2", "dist_tvd"):
        assert float(got[-1][metric]) == pytest.approx(cell[metric], rel=1e-6), metric


@pytest.mark.parametrize("args,needle", [
    (["targets=dw4,lj13", "samplers=idem"], "one target"),
    (["targets=dw4", "samplers=mala"], "steps: missing"),
    (["targets=dw4", "samplers=mala", "outer=3"], "has no outer iterations"),
    (["targets=dw4", "samplers=idem", "outer=3", "steps=9"], "give one"),
    (["targets=dw4", "samplers=idem", "outer=3", "budgets=[1e4]"], "one ladder"),
    (["targets=dw4", "samplers=smc", "steps=9", "batches=2"], "smc has no state_dict"),
    (["targets=dw4", "samplers=idem", "outer=0"], "outer: got 0"),
    (["targets=dw4", "samplers=idem", "every=x"], "every: got 'x'"),
    (["targets=dw4", "samplers=idem", "select=best"],
     "select: got 'best'; expected one of none, val"),
])
def test_bad_input_exits_2_and_writes_nothing(args, needle, tmp_path, capsys):
    out = tmp_path / "c"
    assert curve.main([*args, f"out={out}", "profile=smoke"]) == 2
    assert needle in capsys.readouterr().err
    assert not out.exists()


def test_divergence_is_a_recorded_row_not_a_crash(tmp_path, monkeypatch):
    from samplers import Diverged
    from samplers.idem import IDEM
    real = IDEM.train_step

    def diverge_at_third(self, generator):
        if self.steps == 6:  # the first step of outer iteration 3 (n_inner = 3)
            raise Diverged("idem: training loss is nan at step 6")
        return real(self, generator)
    monkeypatch.setattr(IDEM, "train_step", diverge_at_third)
    out = tmp_path / "c"
    assert curve.main(["targets=dw4", "samplers=idem", "outer=5", "every=1", f"out={out}",
                       *TINY]) == 0
    got = _curve_rows(out / "curve.csv")
    assert [(int(r["outer"]), r["status"]) for r in got] == [(1, "ok"), (2, "ok"), (3, "diverged")]
    assert "loss is nan" in got[-1]["reason"] and got[-1]["x_w2"] == ""


def test_select_val_keeps_the_best_val_evaluation_and_leaves_training_alone(tmp_path):
    plain, sel = tmp_path / "plain", tmp_path / "sel"
    common = ["targets=gmm40", "samplers=idem", "outer=6", "every=1", "batches=2", *TINY]
    assert curve.main([*common, f"out={plain}"]) == 0
    assert curve.main([*common, "select=val", f"out={sel}"]) == 0
    a, b = _curve_rows(plain / "curve.csv"), _curve_rows(sel / "curve.csv")
    # the extra val-scored samples come from their own generator: same training, same test rows
    for key in ("mean_loss", "x_w2", "energy_w2"):
        assert [r[key] for r in a] == [r[key] for r in b], key
    assert all(r["val_x_w2"] == "" for r in a)
    first = [r for r in b if r["batch"] == "0"]
    val = [float(r["val_x_w2"]) for r in first]
    assert all(math.isfinite(v) for v in val) and len(set(val)) == len(val)
    k_best = int(first[val.index(min(val))]["outer"])
    chosen = json.loads((sel / "selected.json").read_text())
    assert chosen["outer"] == k_best and chosen["val_x_w2"] == pytest.approx(min(val))
    at_best = [float(r["x_w2"]) for r in b if int(r["outer"]) == k_best]
    assert chosen["test"]["x_w2"] == pytest.approx(sum(at_best) / len(at_best))
    state = torch.load(sel / "state_selected.pt", weights_only=False)
    assert state["outer"] == k_best and state["steps"] == 3 * k_best
    assert not (plain / "selected.json").exists()


def test_select_val_without_a_val_split_is_refused(tmp_path, capsys, monkeypatch):
    import targets
    from targets import ReferenceDataError
    real = targets.get

    def no_val(name, **kw):
        t = real(name, **kw)
        def reference(split="test", n=None, generator=None):
            raise ReferenceDataError(f"{name}: no reference for split {split!r}")
        t.reference = reference
        return t
    monkeypatch.setattr(curve.targets, "get", no_val)
    out = tmp_path / "c"
    assert curve.main(["targets=dw4", "samplers=idem", "select=val", f"out={out}",
                       "profile=smoke"]) == 2
    assert "has no val split" in capsys.readouterr().err
    assert not out.exists()


MALA = ["mala.n_chains=32", "mala.max_warmup_steps=5", "n_eval=64", "profile=smoke"]


def test_any_sampler_gets_a_steps_curve_whose_points_are_fresh_fits(tmp_path, capsys):
    """A curve of MALA (no outer iterations) on GMM-40: each point is a ladder cell continued
    from the one below, and the top point equals one fresh fit of that many steps (warm-up capped
    below the first rung, docs/budgets.md), bit for bit."""
    c_out, g_out = tmp_path / "curve", tmp_path / "grid"
    assert curve.main(["targets=gmm40", "samplers=mala", "steps=40", "every=20",
                       f"out={c_out}", *MALA]) == 0
    got = _curve_rows(c_out / "curve.csv")
    assert [int(r["steps"]) for r in got] == [20, 40]
    assert [r["ran_fresh"] for r in got] == ["True", "False"]
    # MALA: one energy+gradient evaluation per chain for the start and per chain and step,
    # nothing for sampling; the continued rung does not evaluate a new start
    assert [int(r["energy_evals"]) for r in got] == [21 * 32, 41 * 32]
    assert got[1]["x_w2"] != got[0]["x_w2"]
    assert grid.main(["targets=gmm40", "samplers=mala", "seeds=[0]", "launcher=debug",
                      "budgets_steps=[40]", "figures=false", f"out={g_out}", *MALA]) == 0
    (cell,) = rows.iter_rows(g_out)
    for metric in ("x_w2", "energy_w2", "energy_w1"):
        assert float(got[-1][metric]) == cell[metric], metric


def test_a_rerun_keeps_finished_points_and_extends_the_ladder(tmp_path, capsys):
    out = tmp_path / "c"
    args = ["targets=gmm40", "samplers=mala", "every=10", f"out={out}", *MALA]
    assert curve.main([*args, "steps=20"]) == 0
    first = _curve_rows(out / "curve.csv")
    capsys.readouterr()
    assert curve.main([*args, "steps=30"]) == 0
    log = capsys.readouterr().out
    assert log.count("kept from an earlier run") == 2
    again = _curve_rows(out / "curve.csv")
    assert [r["x_w2"] for r in again[:2]] == [r["x_w2"] for r in first]
    assert [int(r["steps"]) for r in again] == [10, 20, 30] and again[2]["ran_fresh"] == "False"


@pytest.mark.parametrize("sampler, extra", [
    ("mala", MALA),
    ("pis", ["pis.n_steps=5", "pis.batch_size=16", "pis.hidden=8", "n_eval=64", "profile=smoke"]),
    ("fab", ["fab.n_layers=2", "fab.hidden=8", "fab.batch_size=16", "fab.buffer_min=64",
             "fab.buffer_size=128", "n_eval=64", "profile=smoke"]),
])
def test_a_restored_rung_samples_what_its_cell_sampled(sampler, extra, tmp_path):
    """Batches above 0 and select=val draw from the rung's saved state; restoring it must give
    the sampler the fit left (same samples for the cell's own sampling seed)."""
    out = tmp_path / "c"
    assert curve.main(["targets=gmm40", f"samplers={sampler}", "steps=4", "every=4",
                       f"out={out}", *extra]) == 0
    (point,) = _curve_rows(out / "curve.csv")
    assert point["status"] == "ok", point["reason"]
    g = curve._grid(["targets=gmm40", f"samplers={sampler}", f"out={out}", *extra])
    (spec,) = curve._specs({"select": "none", "steps": 4, "every": 4}, g)
    restored, _ = curve.restore(spec)
    gen = torch.Generator().manual_seed(curve.stable_int(spec.cell_seed, "sample"))
    x = restored.log_weights(64, gen)[0] if sampler == "pis" else restored.sample(64, gen)
    saved = torch.from_numpy(__import__("numpy").load(spec.dir / rows.SAMPLES_FILE))
    assert torch.equal(x.to(saved.dtype), saved)
