"""Grid runner launchers: local subprocesses, SLURM arrays, checkpoints and requeue (signals and
the run lock: test_signals.py)."""
from __future__ import annotations

import json
import os
import pickle
import time
from pathlib import Path

import pytest
import torch

from helpers_grid import load_rows, run_grid
from helpers_samplers import test_samplers, tiny_profile  # noqa: F401 - fixtures
from runners import config as cfgmod
from runners import rows
from runners.cell import CHECKPOINT_FILE, CellSpec, run_cell
from runners.launch import CellBatch


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
    same = json.dumps(out[0], sort_keys=True) == json.dumps(first, sort_keys=True)  # NaN columns
    assert same and (a.dir / "row.json").stat().st_mtime_ns == mtime
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


def test_slurm_launcher_without_slurm_exits_2(tmp_path, capsys, monkeypatch, test_samplers,
                                              tiny_profile):
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun, no sbatch
    code, err = run_grid([f"out={tmp_path / 'o'}", "launcher=slurm", f"profile={tiny_profile}"],
                         capsys)
    assert code == 2 and "srun/sbatch are not on the PATH" in err
    assert not (tmp_path / "o").exists()


def test_local_cells_see_the_gpus_of_the_grid_process(monkeypatch):
    """submitit's local executor would hide every GPU (CUDA_VISIBLE_DEVICES="") by default."""
    from runners.executors import _local_gpus
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
