"""Interrupting a grid, the run lock on ``out=``, and the modes of results files.

The signal tests start a real grid (``launcher=local workers=1``, one t_gauss cell that sleeps
per step), wait until its worker is inside ``fit``, and signal the grid's PID only (what
``kill``, ``timeout`` and schedulers do) or its whole process group (Ctrl-C at a terminal).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers_grid import alive, descendants, load_rows, run_grid, start_grid, wait_for
from helpers_samplers import test_samplers, tiny_profile  # noqa: F401 - fixtures
from runners import rows
from runners.lock import LOCK_FILE, LockHeld, RunLock

SLEEP_S = 0.7  # per step; the tiny profile allows 3 steps, so an undisturbed fit takes ~2 s


def _grid_args(out, profile, counts):
    return [f"out={out}", "launcher=local", "workers=1", f"profile={profile}", "targets=gmm40",
            "samplers=t_gauss", f"t_gauss.sleep_s={SLEEP_S}", f"t_gauss.count_dir={counts}",
            "collect=false"]


def _start_computing(tmp_path, profile, **popen):
    """A grid whose one worker is inside fit -> (process, its worker pids, args, fit start)."""
    out, counts = tmp_path / "out", tmp_path / "counts"
    counts.mkdir(exist_ok=True)
    args = _grid_args(out, profile, counts)
    proc = start_grid(args, **popen)
    runs = counts / "gmm40-t_gauss.runs"  # t_gauss appends its pid here when fit starts
    if wait_for(lambda: runs.is_file() and runs.read_text().strip(), 60) is None:
        proc.kill()
        pytest.fail("the worker never started fitting: " + proc.communicate()[1])
    fit_started = time.monotonic()
    workers = descendants(proc.pid)
    assert int(runs.read_text().split()[0]) in workers  # the cell runs below the grid
    assert list(out.glob("cells/*/.claim-*"))
    return proc, workers, args, fit_started


def _check_stopped(proc, workers, fit_started, code, out, signalled):
    """Checks after the signal (sent at monotonic time ``signalled``); returns (stderr, seconds
    from the signal until every worker process was gone)."""
    assert wait_for(lambda: not any(alive(p) for p in workers), 5, step=0.01) is not None, \
        [p for p in workers if alive(p)]
    gone = time.monotonic() - signalled
    assert proc.wait(timeout=30) == code
    err = proc.stderr.read()
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if "interrupted" in ln]
    assert len(lines) == 1 and "stopped 1 local worker(s)" in lines[0], err
    # Past the moment the undisturbed cell would have written its row: none appeared.
    time.sleep(max(0.0, fit_started + 3 * SLEEP_S + 1.0 - time.monotonic()))
    assert rows.iter_rows(out) == []
    assert not list(out.glob("cells/*/row.json")) and not list(out.glob("cells/*/.claim-*"))
    assert not (out / LOCK_FILE).exists()  # released on the interrupt path too
    assert not any(alive(p) for p in workers)
    print(f"workers gone {gone:.3f} s after the signal")
    return err


def test_sigterm_to_the_grid_pid_kills_its_workers(tmp_path, capsys, test_samplers, tiny_profile):
    proc, workers, args, fit_started = _start_computing(tmp_path, tiny_profile)
    # A second grid on the same out while the first runs is refused, naming the holder.
    code, err = run_grid(args, capsys)
    assert code == 2, err
    assert f"pid {proc.pid} on host {socket.gethostname()}" in err
    assert str(tmp_path / "out" / LOCK_FILE) in err
    t0 = time.monotonic()
    os.kill(proc.pid, signal.SIGTERM)
    err = _check_stopped(proc, workers, fit_started, 143, tmp_path / "out", t0)
    assert "interrupted (SIGTERM)" in err


@pytest.mark.slow
def test_sigint_to_the_grid_pid_then_rerun_completes(tmp_path, capsys, test_samplers,
                                                     tiny_profile):
    proc, workers, args, fit_started = _start_computing(tmp_path, tiny_profile)
    t0 = time.monotonic()
    os.kill(proc.pid, signal.SIGINT)
    err = _check_stopped(proc, workers, fit_started, 130, tmp_path / "out", t0)
    assert "interrupted (SIGINT)" in err
    again = start_grid(args)
    assert again.wait(timeout=120) == 0, again.stderr.read()
    got = load_rows(tmp_path / "out")
    assert got[("gmm40", "t_gauss", 0)]["status"] == "ok"
    runs = (tmp_path / "counts" / "gmm40-t_gauss.runs").read_text().split()
    assert len(runs) == 2  # the interrupted fit, then the rerun


@pytest.mark.slow
def test_ctrl_c_to_the_whole_process_group(tmp_path, test_samplers, tiny_profile):
    """A terminal's Ctrl-C signals the foreground group: only the grid is in it (its workers
    have sessions of their own), so submitit prints no tracebacks and the grid stops them."""
    proc, workers, _, fit_started = _start_computing(tmp_path, tiny_profile,
                                                     start_new_session=True)
    assert all(os.getpgid(p) != proc.pid for p in workers)
    t0 = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    _check_stopped(proc, workers, fit_started, 130, tmp_path / "out", t0)
    for log in (tmp_path / "out" / "logs").glob("*_log.*"):
        assert "Traceback" not in log.read_text(), log


# ------------------------------------------------------------------------------ the run lock
def _debug_args(out, profile):
    return [f"out={out}", "launcher=debug", f"profile={profile}", "targets=gmm40",
            "samplers=t_gauss", "collect=false"]


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_lock_of_a_dead_grid_is_taken_over_and_stale_claims_removed(tmp_path, capsys,
                                                                    test_samplers, tiny_profile):
    out = tmp_path / "out"
    stale = out / "cells" / "gmm40-t_gauss-s0-000000000000" / ".claim-0123456789"
    stale.parent.mkdir(parents=True)
    stale.write_text("")
    pid = _dead_pid()
    (out / LOCK_FILE).write_text(json.dumps({"pid": pid, "host": socket.gethostname(),
                                             "started_at": "2000-01-01T00:00:00"}))
    code, err = run_grid(_debug_args(out, tiny_profile), capsys)
    assert code == 0, err
    assert f"took over the lock of a grid that is no longer running (pid {pid}" in err
    assert "removed 1 stale claim file(s)" in err and not stale.exists()
    assert not (out / LOCK_FILE).exists()  # released at the end
    assert load_rows(out)[("gmm40", "t_gauss", 0)]["status"] == "ok"


def test_lock_held_by_a_live_process_refuses_a_second_grid(tmp_path, capsys, test_samplers,
                                                           tiny_profile):
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from runners.lock import RunLock; "
         f"RunLock({str(out)!r}).acquire(); print('held', flush=True); time.sleep(60)"],
        cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        code, err = run_grid(_debug_args(out, tiny_profile), capsys)
        assert code == 2 and f"pid {holder.pid} on host {socket.gethostname()}" in err, err
        assert "in use by another grid" in err and str(out / LOCK_FILE) in err
        assert not (out / "cells").exists()  # nothing ran
    finally:
        holder.kill()
        holder.wait()
    # Killed (no cleanup): its lock file stays, and the next grid takes it over.
    assert (out / LOCK_FILE).exists()
    code, err = run_grid(_debug_args(out, tiny_profile), capsys)
    assert code == 0 and "took over the lock" in err, err


def test_lock_written_on_another_host_is_never_taken_over(tmp_path):
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": _dead_pid(), "host": "elsewhere-node7"}))
    with pytest.raises(LockHeld, match="host elsewhere-node7.*cannot be checked from this host"):
        RunLock(tmp_path).acquire()
    (tmp_path / "free").mkdir()
    lock = RunLock(tmp_path / "free").acquire()
    assert json.loads((tmp_path / "free" / LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()
    lock.release()  # twice is harmless
    assert not (tmp_path / "free" / LOCK_FILE).exists()


# ------------------------------------------------------------------------------ file modes
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_results_files_follow_the_umask(tmp_path, umask, mode, test_samplers, tiny_profile):
    from runners.launch import CellBatch
    from test_grid_launch import _spec
    old = os.umask(umask)
    try:
        spec = _spec(tmp_path, sampler="t_gauss")
        CellBatch(claim="abc")([spec])  # the worker path: claim file, then the cell's files
        lock = RunLock(tmp_path).acquire()
        made = [spec.dir / n for n in (rows.ROW_FILE, rows.SAMPLES_FILE, rows.CONFIG_FILE,
                                       ".claim-abc")] + [tmp_path / LOCK_FILE]
        rows.write_json(tmp_path / "x.json", {"a": 1})
        made.append(tmp_path / "x.json")
        for path in made:
            assert path.stat().st_mode & 0o777 == mode, (path, oct(path.stat().st_mode))
        lock.release()
    finally:
        os.umask(old)
    assert not list(spec.dir.glob("*.tmp"))  # atomic writes leave no temporary behind
