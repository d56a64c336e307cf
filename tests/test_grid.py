"""Grid runner: CLI validation, config, cells and their rows, resume and rescoring (launchers:
test_grid_launch.py)."""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers_grid import ROOT, load_rows, run_grid
from helpers_samplers import test_samplers, tiny_profile  # noqa: F401 - fixtures
from runners import config as cfgmod
from runners import grid, rows
from runners.cell import CellSpec, cell_seed, run_cell, stable_int


# ------------------------------------------------------------------------------ bad inputs
BAD = [
    (["targets=foo"], ["targets", "'foo'", "gmm40", "lj55"]),
    (["samplers=nope"], ["samplers", "'nope'", "t_gauss"]),
    (["seeds=abc"], ["seeds", "'abc'", "positive integer"]),
    (["seeds=0"], ["seeds", "0"]),
    (["launcher=foo"], ["launcher", "'foo'", "auto, local, slurm, debug"]),
    (["bogus=1"], ["bogus", "allowed options", "targets"]),
    (["t_gauss.stepsize=0.1"], ["t_gauss.stepsize", "scale, batch, sleep_s, count_dir"]),
    (["t_gauss.scale=abc"], ["t_gauss.scale", "abc"]),
    (["n_eval=abc"], ["n_eval: got 'abc'", "Integer"]),
    (["seeds=[0,"], ["seeds: cannot parse 'seeds=[0,'"]),
    (["profile=nope"], ["profile", "'nope'", "smoke", "paper"]),
    (["targets"], ["'targets'", "key=value"]),
    (["slurm.partitionn=gpu"], ["partitionn", "cells_per_job"]),
    (["workers=-1"], ["workers", "-1"]),
]


@pytest.mark.parametrize("args,needles", BAD, ids=[a[0][0] for a in BAD])
def test_bad_input_exits_2_with_message_and_writes_nothing(args, needles, tmp_path, capsys,
                                                           test_samplers, tiny_profile):
    out = tmp_path / "out"
    base = [f"out={out}", "launcher=debug", f"profile={tiny_profile}", "samplers=t_gauss"]
    base = [b for b in base if b.split("=")[0] not in {a.split("=")[0].split(".")[0] for a in args}]
    code, err = run_grid(base + args, capsys)
    assert code == 2
    assert err.startswith("error: ")
    for needle in needles:
        assert needle in err, (needle, err)
    assert not out.exists()


def test_bad_input_from_the_shell_exits_2(tmp_path):
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, "-m", "runners.grid", "launcher=foo", f"out={out}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert "launcher: got 'foo'; allowed: auto, local, slurm, debug" in p.stderr
    assert not out.exists()


def test_help_lists_options_and_registered_names(capsys, test_samplers):
    assert grid.main(["--help"]) == 0
    text = capsys.readouterr().out
    for needle in ("targets", "seeds", "launcher", "slurm.<field>", "cells_per_job", "gmm40",
                   "lj55", "t_gauss (TestGauss): scale, batch", "smoke", "paper"):
        assert needle in text


# ------------------------------------------------------------------------------ config
def test_profile_and_command_line_precedence(tmp_path, test_samplers):
    prof = tmp_path / "p.yaml"
    prof.write_text("seeds: 2\nn_eval: 10\nbudget:\n  gmm40: {max_steps: 1}\n  dw4: {max_steps: 1}\n"
                    "samplers:\n  t_gauss:\n    all: {scale: 2.0, batch: 5}\n    dw4: {scale: 3.0}\n")
    g = cfgmod.parse([f"profile={prof}", "targets=gmm40,dw4", "samplers=t_gauss",
                      "t_gauss.batch=7", "seeds=[0,4]"])
    assert g.seeds == [0, 4] and g.n_eval == 10
    assert g.sampler_configs[("t_gauss", "gmm40")] == {"scale": 2.0, "batch": 7, "sleep_s": 0.0,
                                                       "count_dir": ""}
    assert g.sampler_configs[("t_gauss", "dw4")]["scale"] == 3.0
    assert cfgmod.parse([f"profile={prof}", "targets=gmm40", "samplers=t_gauss"]).seeds == [0, 1]
    assert g.budgets["dw4"] == {"max_energy_evals": None, "max_seconds": None, "max_steps": 1}


def test_builtin_profiles_cover_every_target_and_registered_sampler():
    for name in ("smoke", "paper"):
        g = cfgmod.parse([f"profile={name}", "launcher=debug"])
        assert set(g.budgets) == {"gmm40", "dw4", "lj13", "lj55"}
        assert all(any(v is not None for v in b.values()) for b in g.budgets.values())


def test_cell_seed_and_key_are_stable_and_sensitive():
    expect = int(hashlib.sha256(b"0|dw4|mala|1").hexdigest()[:15], 16)
    assert cell_seed(0, "dw4", "mala", 1) == expect == stable_int(0, "dw4", "mala", 1)
    assert len({cell_seed(0, "dw4", "mala", s) for s in range(5)}) == 5
    assert cell_seed(0, "dw4", "mala", 1) != cell_seed(0, "dw4", "hmc", 1)
    kw = dict(target="dw4", target_fingerprint="abc", sampler="mala", seed=1, base_seed=0,
              sampler_config={"step": 0.1}, budget={"max_steps": 3}, n_eval=10, metric_options={},
              out="/tmp/x")
    a = CellSpec(**kw)
    assert a.key == CellSpec(**kw).key and a.key.startswith("dw4-mala-s1-")
    assert CellSpec(**{**kw, "target_fingerprint": "abd"}).key != a.key
    assert CellSpec(**{**kw, "sampler_config": {"step": 0.2}}).key != a.key
    assert CellSpec(**{**kw, "threads": 4}).key == a.key  # threads do not change results' identity
    assert pickle.loads(pickle.dumps(a)) == a


# ------------------------------------------------------------------------------ cells
@pytest.mark.reference_data
def test_debug_grid_records_diverged_and_error_while_others_finish(tmp_path, capsys, test_samplers,
                                                                   tiny_profile):
    out = tmp_path / "out"
    code, err = run_grid([f"out={out}", "launcher=debug", f"profile={tiny_profile}",
                          "targets=gmm40,dw4", "samplers=t_gauss,t_diverge,t_crash",
                          "figures=false"], capsys)
    assert code == 0
    got = load_rows(out)
    assert len(got) == 6
    for t in ("gmm40", "dw4"):
        ok, dv, er = got[(t, "t_gauss", 0)], got[(t, "t_diverge", 0)], got[(t, "t_crash", 0)]
        assert ok["status"] == "ok"
        # fit: max_steps=3 batches of 64 configurations; sampling costs none; the metrics' energy
        # evaluations are not charged to the sampler.
        assert ok["energy_evals"] == ok["grad_evals"] == 192
        assert ok["cell_seed"] == cell_seed(0, t, "t_gauss", 0)
        assert ok["n_reference"] == 64 and ok["metric_errors"] == ""
        assert 0 < ok["x_w2"] < 100 and 0 < ok["ess"] <= 1 and ok["nll"] > 0
        assert ok["code_version"] != "" and ok["version_torch"] == torch.__version__
        assert ok["reference_source"] in ("exact", "official")
        assert json.loads(ok["config"])["sampler_config"]["batch"] == 64
        assert dv["status"] == "diverged" and "NaN" in dv["reason"]
        assert dv["energy_evals"] == 3  # the spending up to the failure is kept
        assert er["status"] == "error" and "boom" in er["reason"]
        assert Path(er["traceback"]).is_file() and "RuntimeError" in Path(er["traceback"]).read_text()
        cell = out / "cells" / ok["cell_key"]
        assert torch.as_tensor(__import__("numpy").load(cell / "samples.npy")).shape[0] == 64
        assert "sampler_config" in (cell / "config.yaml").read_text()
    assert "x_w2_aligned" in got[("dw4", "t_gauss", 0)] and "x_w2_aligned" not in got[("gmm40", "t_gauss", 0)]
    assert "summary: diverged 2, error 2, ok 2" in err
    assert (out / "results.csv").is_file() and (out / "tables" / "summary.md").is_file()

    # Re-running skips finished cells (ok, diverged) and retries failed ones (error).
    mtimes = {k: (out / "cells" / r["cell_key"] / "row.json").stat().st_mtime_ns for k, r in got.items()}
    code, err = run_grid([f"out={out}", "launcher=debug", f"profile={tiny_profile}", "collect=false",
                          "targets=gmm40,dw4", "samplers=t_gauss,t_diverge,t_crash"], capsys)
    assert code == 0 and "4 finished cell(s) kept, 2 to run" in err
    again = load_rows(out)
    for k, r in again.items():
        changed = (out / "cells" / r["cell_key"] / "row.json").stat().st_mtime_ns != mtimes[k]
        assert changed == (k[1] == "t_crash"), k


def test_nan_samples_are_diverged(tmp_path, test_samplers, tiny_profile, capsys):
    out = tmp_path / "out"
    code, _ = run_grid([f"out={out}", "launcher=debug", f"profile={tiny_profile}", "targets=dw4",
                        "samplers=t_diverge", "t_diverge.where=samples", "collect=false"], capsys)
    row = load_rows(out)[("dw4", "t_diverge", 0)]
    assert code == 0 and row["status"] == "diverged" and "non-finite" in row["reason"]


def test_missing_reference_gives_nan_metrics_but_ok(tmp_path, monkeypatch, test_samplers):
    """LJ-55 without a reference (nothing in an empty data dir, offline): ok, NaN, 'missing'."""
    monkeypatch.setenv("BOLTZBENCH_DATA", str(tmp_path / "empty"))
    monkeypatch.setenv("BOLTZBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("BOLTZBENCH_OFFLINE", "1")
    import targets
    spec = CellSpec(target="lj55", target_fingerprint=targets.get("lj55").fingerprint,
                    sampler="t_gauss", seed=0, base_seed=0,
                    sampler_config=cfgmod.resolve_sampler_config("t_gauss", {"batch": 8}),
                    budget={"max_steps": 1}, n_eval=8, metric_options={}, out=str(tmp_path / "o"))
    row = run_cell(spec)
    assert row["status"] == "ok" and row["reference_source"] == "missing"
    assert "make_reference" in row["reason"]
    assert row["x_w2"] != row["x_w2"]  # NaN
    assert 0 < row["ess"] <= 1  # density metrics from the samples still work


# ------------------------------------------------------------------------------ resume
def test_resume_after_sigkill_loses_and_corrupts_nothing(tmp_path, test_samplers, tiny_profile):
    out, counts = tmp_path / "out", tmp_path / "counts"
    counts.mkdir()
    args = [sys.executable, "-m", "runners.grid", f"out={out}", "launcher=debug",
            f"profile={tiny_profile}", "targets=gmm40", "samplers=t_gauss", "seeds=3",
            "t_gauss.sleep_s=0.25", f"t_gauss.count_dir={counts}", "collect=false"]
    env = dict(os.environ)
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 90
    while len(rows.iter_rows(out)) < 1 and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # mid-grid: the second cell is running
    proc.wait()
    before = {r["cell_key"]: (out / "cells" / r["cell_key"] / "row.json").stat().st_mtime_ns
              for r in rows.iter_rows(out)}
    assert 1 <= len(before) < 3
    p = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    after = rows.iter_rows(out)
    assert sorted(r["seed"] for r in after) == [0, 1, 2]
    assert all(r["status"] == "ok" and r["energy_evals"] == 192 for r in after)
    for key, mtime in before.items():  # finished cells were not rerun
        assert (out / "cells" / key / "row.json").stat().st_mtime_ns == mtime
    runs = (counts / "gmm40-t_gauss.runs").read_text().split()
    assert 3 <= len(runs) <= 4  # at most the one interrupted cell ran twice
    for d in (out / "cells").iterdir():  # every row parses; no stray row-less sample files
        assert json.loads((d / "row.json").read_text())["status"] == "ok"


def test_unprofiled_run_prints_estimate_and_asks_on_a_terminal(tmp_path, capsys, monkeypatch,
                                                               test_samplers):
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    monkeypatch.setattr("builtins.input", lambda prompt: "n")
    code, err = run_grid([f"out={tmp_path / 'o'}", "launcher=debug", "targets=gmm40",
                          "samplers=t_gauss", "seeds=2"], capsys)
    assert code == 0
    assert "cost estimate: 2 cells, up to 5.12e+10 energy evaluations" in err
    assert "energy throughput here" in err and "stopped before dispatch" in err
    assert not (tmp_path / "o").exists()


def test_rerun_of_a_finished_grid_recomputes_nothing(tmp_path, capsys, test_samplers, tiny_profile):
    out = tmp_path / "out"
    args = [f"out={out}", "launcher=debug", f"profile={tiny_profile}", "targets=gmm40",
            "samplers=t_gauss", "figures=false"]
    assert run_grid(args, capsys)[0] == 0
    csv_mtime = (out / "results.csv").stat().st_mtime_ns
    t0 = time.perf_counter()
    code, err = run_grid(args, capsys)
    assert code == 0 and time.perf_counter() - t0 < 5
    assert "1 finished cell(s) kept, 0 to run" in err and "is up to date" in err
    assert (out / "results.csv").stat().st_mtime_ns == csv_mtime


@pytest.mark.reference_data
def test_cells_scored_without_a_reference_are_rescored_once_it_exists(
        tmp_path, capsys, monkeypatch, test_samplers, tiny_profile):
    out = tmp_path / "out"
    args = [f"out={out}", "launcher=debug", f"profile={tiny_profile}", "targets=dw4",
            "samplers=t_gauss", "collect=false"]
    data = os.environ["BOLTZBENCH_DATA"]
    monkeypatch.setenv("BOLTZBENCH_DATA", str(tmp_path / "empty"))
    monkeypatch.setenv("BOLTZBENCH_CACHE", str(tmp_path / "cache"))
    assert run_grid(args, capsys)[0] == 0
    (before,) = rows.iter_rows(out)
    assert before["reference_source"] == "missing" and before["x_w2"] != before["x_w2"]
    monkeypatch.setenv("BOLTZBENCH_DATA", data)  # the reference appears
    code, err = run_grid(args, capsys)
    assert code == 0 and "rescored 1 finished cell(s)" in err and "0 to run" in err
    (after,) = rows.iter_rows(out)
    assert after["reference_source"] == "official" and 1.0 < after["x_w2"] < 10.0
    assert after["energy_evals"] == before["energy_evals"] and after["ess"] == before["ess"]
    assert "not rescored" in json.loads(after["metric_errors"])["nll"]
    assert run_grid(args, capsys)[1].count("rescored") == 0  # nothing left to rescore
