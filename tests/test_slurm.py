"""The grid against a real SLURM cluster (tests/slurm/up.sh: one node on localhost, munge,
slurmctld, slurmd, slurmdbd + MariaDB so that sacct reports job states).

Every test here is marked ``slurm`` and SKIPS, saying why, when no cluster answers: ``sinfo``
missing, not answering, no idle node, or ``sacct`` failing (without accounting submitit cannot
see a job's state and waits forever on a dead one). These tests never start a cluster unless
``BOLTZBENCH_START_SLURM=1``; then the session starts one with up.sh (installing the packages
if needed) and stops it at the end, unless one was already up. By hand:

    tests/slurm/install.sh && eval "$(tests/slurm/up.sh)"
    pytest -m slurm -rs tests/test_slurm.py; tests/slurm/down.sh

The grid runs as the user runs it, ``python -m runners.grid ... launcher=slurm``, in a
subprocess; test samplers come from tests/helpers_samplers.py (t_crash, t_ckpt) and
tests/slurm/dying_sampler.py (t_die) through $BOLTZBENCH_PLUGINS, which the SLURM jobs inherit.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import submitit

ROOT = Path(__file__).resolve().parents[1]
SLURM_DIR = ROOT / "tests" / "slurm"
PLUGINS = f"{ROOT / 'tests' / 'helpers_samplers.py'},{SLURM_DIR / 'dying_sampler.py'}"
GRID_TIMEOUT_S = 240  # a hung job must fail the test, never hang CI

pytestmark = pytest.mark.slurm


# ------------------------------------------------------------------------------ the cluster
def _default_conf() -> str | None:
    """Where up.sh writes slurm.conf (used when neither SLURM_CONF nor /etc/slurm has one)."""
    conf = Path(os.environ.get("SLURM_LOCAL_DIR", "/tmp/boltzbench-slurm")) / "etc" / "slurm.conf"
    return str(conf) if conf.is_file() else None


def _unreachable() -> str | None:
    """Why no usable cluster answers with the current environment (None: it does)."""
    for cmd in ("sinfo", "sbatch", "srun", "sacct", "scontrol"):
        if shutil.which(cmd) is None:
            return f"`{cmd}` is not on the PATH"
    # `scontrol ping` answers at once; sinfo retries a dead controller for ~9 s
    p = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=15)
    if p.returncode != 0:
        first = (p.stdout + p.stderr).strip().splitlines()[:1] or ["no output"]
        conf = os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf")
        if not Path(conf).is_file():
            conf += " does not exist; nor does tests/slurm/up.sh's config"
        return f"the controller does not answer (SLURM_CONF {conf}; `scontrol ping`: {first[0]})"
    try:
        p = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return "`sinfo` did not answer within 15 s"
    if p.returncode != 0:
        return f"`sinfo` failed: {(p.stderr or p.stdout).strip()[:300]}"
    states = p.stdout.split()
    if not any(s.rstrip("*~#") in ("idle", "mixed", "allocated") for s in states):
        return f"no usable node (sinfo states: {states or 'none'})"
    p = subprocess.run(["sacct", "-n", "-X", "-S", "now"], capture_output=True, text=True,
                       timeout=15)
    if p.returncode != 0:
        return (f"`sacct` failed ({p.stderr.strip()[:200]}): without job accounting submitit "
                f"cannot see job states")
    return None


def _run_script(name: str, env: dict, timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SLURM_DIR / name)], env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="session")
def slurm_cluster():
    """A reachable cluster (else skip). Sets SLURM_CONF for the session when up.sh's config is
    the one to use, so that `eval "$(tests/slurm/up.sh)"` is not even needed before pytest."""
    saved = os.environ.get("SLURM_CONF")
    if saved is None and not Path("/etc/slurm/slurm.conf").is_file() and _default_conf():
        os.environ["SLURM_CONF"] = _default_conf()
    started = False
    why = _unreachable()
    if why is not None and os.environ.get("BOLTZBENCH_START_SLURM") == "1":
        env = dict(os.environ, SLURM_LOCAL_INSTALL="1")
        env.pop("SLURM_CONF", None)
        try:
            up = _run_script("up.sh", env, timeout=900)
        except subprocess.TimeoutExpired:
            up = subprocess.CompletedProcess([], 1, "", "tests/slurm/up.sh took over 900 s")
        if up.returncode == 0:
            started = True
            os.environ["SLURM_CONF"] = up.stdout.strip().split("=", 1)[1]
            why = _unreachable()
        else:
            _run_script("down.sh", env, timeout=120)
            tail = "\n".join(up.stderr.strip().splitlines()[-15:])
            why = f"BOLTZBENCH_START_SLURM=1 but tests/slurm/up.sh failed:\n{tail}"
    try:
        if why is not None:
            pytest.skip(f"no SLURM cluster: {why}. Start one as .ci/run does: "
                        f"`tests/slurm/ci.sh up && source tests/slurm/env.sh` (root, Debian), "
                        f"or set BOLTZBENCH_START_SLURM=1")
        yield os.environ["SLURM_CONF"]
    finally:
        if started:
            _run_script("down.sh", dict(os.environ), timeout=120)
        if saved is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = saved


# ------------------------------------------------------------------------------ helpers
def start_grid(out: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "runners.grid", "launcher=slurm", f"out={out}", *args]
    env = dict(os.environ, BOLTZBENCH_PLUGINS=PLUGINS, **(env or {}))
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = GRID_TIMEOUT_S) -> str:
    """Waits for a grid subprocess; returns its stderr; asserts exit status 0."""
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"the grid did not finish within {timeout} s:\n{err[-3000:]}")
    assert proc.returncode == 0, err[-3000:]
    return err


def cell_rows(out: Path) -> dict[tuple, dict]:
    found = {}
    for path in (out / "cells").glob("*/row.json"):
        row = json.loads(path.read_text())
        found[(row["sampler"], row["seed"])] = row
    return found


def sacct_state(job_id: str, timeout: float = 20) -> str:
    """The job's sacct state, polled: sacct lags the controller by a fraction of a second."""
    deadline, state = time.time() + timeout, ""
    while time.time() < deadline:
        out = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State"],
                             capture_output=True, text=True).stdout.split()
        state = out[0] if out else ""
        if state and state not in ("PENDING", "RUNNING", "COMPLETING", "REQUEUED"):
            return state
        time.sleep(0.3)
    return state


def profile(tmp_path: Path, name: str, budget: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"seeds: 1\nn_eval: 64\nbudget:\n  gmm40: {budget}\n"
                    "metric_options:\n  x_w2_aligned: {max_n: 16}\n")
    return path


# ------------------------------------------------------------------------------ tests
def test_submitit_round_trip(slurm_cluster, tmp_path):
    """The cluster itself, through submitit alone: a job runs, returns, and sacct sees it."""
    ex = submitit.AutoExecutor(folder=tmp_path, cluster="slurm")
    ex.update_parameters(timeout_min=5, mem_gb=1, cpus_per_task=1)
    job = ex.submit(os.getenv, "SLURM_JOB_ID")
    deadline = time.time() + 120  # result() itself would wait forever on a job that never runs
    while not job.done() and time.time() < deadline:
        time.sleep(0.5)
    assert job.done(), f"job {job.job_id} not done after 120 s"
    assert job.result() == job.job_id  # it really ran inside that SLURM job
    assert sacct_state(job.job_id) == "COMPLETED"


@pytest.fixture(scope="module")
def grids(slurm_cluster, tmp_path_factory):
    """The ok grid and the failing grid, started together so that their jobs share the cluster's
    two slots and the failing grid's wait for a dead job's result overlaps the ok cells' work."""
    base = tmp_path_factory.mktemp("slurm_grids")
    ok_out, bad_out = base / "ok", base / "bad"
    bad = start_grid(bad_out, "targets=gmm40", "samplers=t_crash,t_die", "collect=false",
                     f"profile={profile(base, 'tiny', '{max_steps: 3}')}")
    # The failing cells go first (SLURM starts jobs in submission order): they end in seconds,
    # and then the grid's wait for the dead job's result (15 s in submitit) overlaps the ok cells.
    deadline = time.time() + 60
    while not any((bad_out / "logs").glob("*_submitted.pkl")) and time.time() < deadline \
            and bad.poll() is None:
        time.sleep(0.2)
    ok = start_grid(ok_out, "targets=gmm40", "samplers=pis", "seeds=2", "profile=smoke")
    yield {"ok": (ok, ok_out), "bad": (bad, bad_out)}
    for proc in (ok, bad):  # a test that failed early (or was deselected) left its grid running
        if proc.poll() is None:
            try:
                proc.communicate(timeout=GRID_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()


def test_grid_end_to_end_on_slurm(grids):
    proc, out = grids["ok"]
    err = finish(proc)
    assert "launcher slurm" in err and "[grid] summary: ok 2" in err
    table = pd.read_csv(out / "results.csv")
    assert sorted(table["seed"]) == [0, 1]
    assert set(table["status"]) == {"ok"} and set(table["sampler"]) == {"pis"}
    assert (table["energy_evals"] > 0).all() and table["x_w2"].notna().all()
    # Each cell ran in a SLURM array task: its job id is recorded, sacct knows it, and the
    # submitit log it names exists.
    ids = sorted(str(j) for j in table["job_id"])
    array = ids[0].split("_")[0]
    assert ids == [f"{array}_0", f"{array}_1"]  # one job array, one task per cell
    for job_id, log in zip(table["job_id"], table["log"]):
        assert sacct_state(str(job_id)) == "COMPLETED"
        assert Path(log).is_file() and Path(log).name.startswith(f"{job_id}_")
    assert any((out / "logs").glob("*_submission.sh"))
    assert (out / "tables" / "summary.md").is_file() and any((out / "figures").glob("*.png"))


def test_failing_cells_report_their_log(grids):
    proc, out = grids["bad"]
    err = finish(proc)
    got = cell_rows(out)
    assert "[grid] summary: error 2" in err

    # A Python exception in fit: the cell writes its own error row, with the traceback and the
    # job's log.
    crash = got[("t_crash", 0)]
    assert crash["status"] == "error" and "boom: deliberately broken sampler" in crash["reason"]
    assert "RuntimeError" in Path(crash["traceback"]).read_text()
    assert Path(crash["log"]).is_file() and Path(crash["log"]).name.startswith(crash["job_id"])
    assert f"(log {crash['log']})" in err

    # The process killed (SIGKILL, as by the OOM killer): no row from the cell, so the grid writes
    # it, naming the job's submitit log, where srun said what happened.
    die = got[("t_die", 0)]
    log = Path(die["log"])
    assert die["status"] == "error" and die["reason"].startswith("job died")
    assert f"log: {log}" in die["reason"] and log.is_file()
    assert log.name.startswith(die["job_id"]) and "Killed" in log.read_text()
    assert sacct_state(die["job_id"]) == "FAILED"


def test_preempted_checkpointed_cell_resumes(slurm_cluster, tmp_path):
    """Preemption as SLURM does it (what submitit's ``job._interrupt()`` sends: SIGTERM, then
    USR2): the running cell checkpoints, the job is requeued, and the cell resumes from its
    checkpoint, finishing with one row and exactly its budget spent."""
    out, counts = tmp_path / "out", tmp_path / "counts"
    counts.mkdir()
    steps, batch = 8, 16
    proc = start_grid(out, "targets=gmm40", "samplers=t_ckpt", "collect=false",
                      f"profile={profile(tmp_path, 'ckpt', '{max_steps: ' + str(steps) + '}')}",
                      "t_ckpt.sleep_s=0.5", f"t_ckpt.batch={batch}", f"t_ckpt.count_dir={counts}")
    runs = counts / "gmm40-t_ckpt.runs"  # one line per call of fit
    deadline = time.time() + 120
    while not runs.is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert runs.is_file(), "the cell never started fitting"
    time.sleep(1.5)  # a few of the 8 steps (0.5 s each) are done; the rest are not
    # This grid's one job, named by its submitit files (other users may share the cluster)
    submitted = [p.name[:-len("_submitted.pkl")] for p in (out / "logs").glob("*_submitted.pkl")]
    assert len(submitted) == 1, submitted
    job_id = submitted[0]
    for sig in ("SIGTERM", "USR2"):  # preemption, not timeout: submitit requeues without a count
        subprocess.run(["scancel", job_id, "--signal", sig], check=True)
    err = finish(proc)

    row = cell_rows(out)[("t_ckpt", 0)]
    assert row["status"] == "ok" and row["job_id"] == job_id
    assert row["resumed_from_checkpoint"] is True
    assert json.loads(row["fit_info"])["steps"] == steps
    assert row["energy_evals"] == steps * batch  # the spending before the preemption is kept
    assert len(runs.read_text().split()) == 2  # fit was entered twice: before and after
    assert not (Path(row["samples_file"]).parent / "checkpoint.pt").exists()
    assert len(list((out / "cells").glob("*/row.json"))) == 1 and "summary: ok 1" in err
    show = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True)
    assert "Restarts=1" in show.stdout
    assert sacct_state(job_id) == "COMPLETED"
