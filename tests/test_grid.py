"""Grid runner: CLI validation, cells and their rows, resume, launchers (debug, local), checkpoints."""
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

from helpers_samplers import test_samplers, tiny_profile  # noqa: F401 - fixtures
from runners import config as cfgmod
from runners import grid, rows
from runners.cell import CHECKPOINT_FILE, CellSpec, cell_seed, run_cell, stable_int
from runners.launch import CellBatch

ROOT = Path(__file__).resolve().parents[1]


def run_grid(args, capsys=None):
    code = grid.main([str(a) for a in args])
    err = capsys.readouterr().err if capsys is not None else ""
    return code, err


def load_rows(out: Path) -> dict[tuple, dict]:
    return {(r["target"], r["sampler"], r["seed"]): r for r in rows.iter_rows(out)}


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


# ------------------------------------------------------------------------------ local executor
def test_whole_grid_through_local_subprocesses(tmp_path, capsys, test_samplers, tiny_profile):
    out, counts = tmp_path / "out", tmp_path / "counts"
    counts.mkdir()
    code, err = run_grid([f"out={out}", "launcher=local", "workers=2", f"profile={tiny_profile}",
                          "targets=gmm40", "samplers=t_exit,t_gauss,t_crash", "timeout_min=5",
                          f"t_gauss.count_dir={counts}", "figures=false"], capsys)
    assert code == 0, err
    got = load_rows(out)
    assert len(got) == 3
    # Worker processes shared the cells and each cell ran once. The t_exit cell killed its
    # worker: it got an error row naming that worker's log, and a new worker took over.
    assert len((counts / "gmm40-t_gauss.runs").read_text().split()) == 1
    dead = got[("gmm40", "t_exit", 0)]
    assert dead["status"] == "error" and "exited without a result" in dead["reason"]
    assert dead["log"].endswith("_log.err") and dead["log"] in dead["reason"]
    assert not list(out.glob("cells/*/.claim-*"))
    assert got[("gmm40", "t_gauss", 0)]["status"] == "ok"
    assert got[("gmm40", "t_gauss", 0)]["energy_evals"] == 192
    crash = got[("gmm40", "t_crash", 0)]
    assert crash["status"] == "error" and Path(crash["log"]).is_file()  # the job's own log
    assert crash["log"].endswith("_log.err") and f"(log {crash['log']})" in err
    assert got[("gmm40", "t_gauss", 0)]["host"]
    assert any((out / "logs").glob("*_log.out"))  # real submitit subprocess logs
    assert (out / "results.csv").read_text().count("\n") == 4
    assert "[grid] 3/3 cells" in err


@pytest.mark.slow
def test_local_cell_past_its_wall_limit_is_timeout(tmp_path, capsys, test_samplers, tiny_profile):
    out = tmp_path / "out"
    code, err = run_grid([f"out={out}", "launcher=local", "workers=2", f"profile={tiny_profile}",
                          "targets=gmm40", "samplers=t_gauss,t_ckpt", "timeout_min=0.75",
                          "t_ckpt.sleep_s=60", "collect=false"], capsys)
    assert code == 0, err
    got = load_rows(out)
    assert got[("gmm40", "t_gauss", 0)]["status"] == "ok"
    slow = got[("gmm40", "t_ckpt", 0)]  # 3 steps x 60 s > the 45 s wall limit: killed
    assert slow["status"] == "timeout" and "wall limit" in slow["reason"]
    assert Path(slow["log"]).name.endswith("_log.err")
    assert "timeout 1" in err


# ------------------------------------------------------------------------------ checkpoints
def _spec(tmp_path, sampler="t_ckpt", **budget):
    import targets
    return CellSpec(target="gmm40", target_fingerprint=targets.get("gmm40").fingerprint,
                    sampler=sampler, seed=0, base_seed=0,
                    sampler_config=cfgmod.resolve_sampler_config(sampler, {"batch": 10}),
                    budget=budget or {"max_steps": 5}, n_eval=16, metric_options={},
                    out=str(tmp_path / "out"))


def test_checkpoint_saves_live_state_and_resubmits_the_same_batch(tmp_path, test_samplers):
    import samplers
    import targets
    spec = _spec(tmp_path)
    batch = CellBatch()
    sampler, target = samplers.get("t_ckpt")(), targets.get("gmm40")
    sampler.steps, sampler.target = 3, target
    target.counter.energy_evals = target.counter.grad_evals = 30
    batch._live.update(sampler=sampler, target=target, spec=spec, t0=time.perf_counter(),
                       prior_seconds=1.0)
    delayed = batch.checkpoint([spec])
    assert isinstance(delayed.function, CellBatch) and delayed.args == ([spec],)
    assert (spec.dir / CHECKPOINT_FILE).is_file()
    assert pickle.loads(pickle.dumps(batch))._live == {}  # the live sampler is never pickled
    # The requeued batch resumes: 3 of 5 steps and 30 evaluations were spent before.
    row = delayed.function(*delayed.args)[0]
    assert row["status"] == "ok" and row["resumed_from_checkpoint"] is True
    assert json.loads(row["fit_info"])["steps"] == 5
    assert row["energy_evals"] == 30 + 2 * 10
    assert not (spec.dir / CHECKPOINT_FILE).exists()  # removed once the cell finished
    assert row["fit_seconds"] >= 1.0


def test_requeued_batch_skips_finished_cells(tmp_path, test_samplers):
    a = _spec(tmp_path, sampler="t_gauss")
    b = CellSpec(**{**a.__dict__, "seed": 1})
    first = run_cell(a)
    mtime = (a.dir / "row.json").stat().st_mtime_ns
    out = CellBatch()([a, b])
    assert out[0] == first and (a.dir / "row.json").stat().st_mtime_ns == mtime
    assert out[1]["status"] == "ok" and out[1]["seed"] == 1


# ------------------------------------------------------------------------------ slurm submission
def test_slurm_array_packs_cells_and_caps_parallelism(tmp_path, monkeypatch, test_samplers,
                                                      tiny_profile):
    """Without a cluster: fake sbatch/srun on the PATH record the job array submitit writes."""
    from runners.grid import build_specs
    from runners.launch import batches, make_executor
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "sbatch").write_text("#!/bin/sh\necho \"$@\" >> %s\necho 'Submitted batch job 4242'\n"
                                   % (tmp_path / "sbatch.log"))
    (bindir / "srun").write_text("#!/bin/sh\nexit 0\n")
    for f in bindir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    g = cfgmod.parse([f"profile={tiny_profile}", "launcher=slurm", "targets=gmm40,dw4",
                      "samplers=t_gauss", "seeds=3", "slurm.cells_per_job=4",
                      "slurm.array_parallelism=2", "slurm.partition=debug", "slurm.timeout_min=7",
                      f"out={tmp_path / 'out'}"])
    specs = build_specs(g, "slurm")
    packs = batches(specs, g.config.slurm.cells_per_job)
    assert [len(p) for p in packs] == [4, 2]
    ex = make_executor("slurm", tmp_path / "logs", g.config)
    jobs = ex.map_array(CellBatch(), packs)
    assert [j.job_id for j in jobs] == ["4242_0", "4242_1"]
    script = next((tmp_path / "logs").glob("*.sh")).read_text()
    for needle in ("#SBATCH --array=0-1%2", "#SBATCH --partition=debug", "#SBATCH --time=7",
                   "#SBATCH --signal=USR2@90", "#SBATCH --cpus-per-task=1"):
        assert needle in script, needle
    submitted = [pickle.loads(p.read_bytes()) for p in (tmp_path / "logs").glob("*_submitted.pkl")]
    assert sorted(len(d.args[0]) for d in submitted) == [2, 4]
    assert all(isinstance(d.function, CellBatch) for d in submitted)


def test_slurm_launcher_without_slurm_exits_2(tmp_path, capsys, monkeypatch, tiny_profile):
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun, no sbatch
    code, err = run_grid([f"out={tmp_path / 'o'}", "launcher=slurm", f"profile={tiny_profile}"],
                         capsys)
    assert code == 2 and "srun/sbatch are not on the PATH" in err
    assert not (tmp_path / "o").exists()


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


def test_sigterm_stops_local_cell_processes(tmp_path, test_samplers, tiny_profile):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "runners.grid", f"out={out}", "launcher=local",
                             f"profile={tiny_profile}", "targets=gmm40,dw4", "samplers=t_gauss",
                             "t_gauss.sleep_s=30", "collect=false"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while len(list((out / "logs").glob("*_log.out"))) < 2 and time.time() < deadline:
        time.sleep(0.2)
    controllers = [int(p.name.split("_")[0]) for p in (out / "logs").glob("*_log.out")]
    assert len(controllers) == 2
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 130
    assert "interrupted" in proc.stderr.read()
    deadline = time.time() + 30
    alive = controllers
    while alive and time.time() < deadline:
        time.sleep(0.2)
        alive = [pid for pid in alive if _alive(pid)]
    assert not alive
    assert rows.iter_rows(out) == []  # the interrupted cells wrote no rows: they rerun next time


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purpose
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


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


def test_local_cells_see_the_gpus_of_the_grid_process(monkeypatch):
    """submitit's local executor would hide every GPU (CUDA_VISIBLE_DEVICES="") by default."""
    from runners.launch import _local_gpus
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert _local_gpus() == {"gpus_per_node": 2, "visible_gpus": [2, 3]}
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert _local_gpus() == {}
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-1a2b")
    assert _local_gpus() == {}


def test_auto_launcher_needs_an_answering_controller(tmp_path, monkeypatch, capsys):
    from runners.launch import resolve_launcher
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for cmd, body in (("srun", "exit 0"), ("sbatch", "exit 0"),
                      ("scontrol", "echo 'Slurmctld(primary) at x is DOWN'; exit 1")):
        (bindir / cmd).write_text(f"#!/bin/sh\n{body}\n")
        (bindir / cmd).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin")
    assert resolve_launcher("auto") == "local"
    assert "no controller answers" in capsys.readouterr().err
    (bindir / "scontrol").write_text("#!/bin/sh\necho 'Slurmctld(primary) at x is UP'\n")
    assert resolve_launcher("auto") == "slurm"
    monkeypatch.setenv("PATH", str(tmp_path))  # no SLURM commands at all
    assert resolve_launcher("auto") == "local" and resolve_launcher("debug") == "debug"


def test_resume_with_the_budget_already_spent_only_samples(tmp_path, test_samplers):
    import io

    spec = _spec(tmp_path, max_energy_evals=40)
    buf = io.BytesIO()
    torch.save({"state": {"steps": 4, "target": "gmm40"}, "energy_evals": 50, "grad_evals": 50,
                "fit_seconds": 2.0}, buf)
    spec.dir.mkdir(parents=True)
    (spec.dir / CHECKPOINT_FILE).write_bytes(buf.getvalue())
    row = run_cell(spec)
    assert row["status"] == "ok" and row["resumed_from_checkpoint"] is True
    assert row["energy_evals"] == 50 and json.loads(row["fit_info"])["steps"] == 4


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
