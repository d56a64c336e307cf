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
    (["targets=dw4", "samplers=mala"], "curves need outer iterations"),
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
    real = IDEM.outer_iteration

    def diverge_at_third(self, generator):
        if self.outer == 2:
            raise Diverged("idem: training loss is nan at step 6")
        return real(self, generator)
    monkeypatch.setattr(IDEM, "outer_iteration", diverge_at_third)
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
