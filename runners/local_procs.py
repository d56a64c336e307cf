"""Stopping the grid's local jobs: SIGKILL each submitit controller with its process group.

On an interruption (Ctrl-C, SIGINT or SIGTERM to the grid) local workers are SIGKILLed at once,
each with its whole process group (:func:`stop_local`). Each local job's controller is started
in a session of its own (runners/executors.py, ``SessionLocalExecutor``), so signalling the
group kills the worker too: submitit's worker ignores SIGTERM ("Bypassing signal SIGTERM") and
its controller only forwards it. Where a job is not its own group leader, the process tree found
in /proc is killed instead (:func:`_kill_tree`), never a group that may be the grid's own.
"""
from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

CONTROLLER_MODULE = "submitit.local._local"  # what a local job's controller process runs


def stop_local(jobs: list) -> int:
    """SIGKILL every local job of this grid: each controller (its pid is the job id) with its
    process group, i.e. its worker and whatever that started. Returns how many were stopped.

    Not SIGTERM: submitit's worker ignores it ("Bypassing signal SIGTERM") and its controller
    only forwards it, so the cell would run to its end and write its row; not SIGINT (submitit's
    ``cancel``): background processes of a non-interactive shell ignore it. SIGKILL is safe for
    the results: a cell replaces its files atomically, so it leaves its row or none. Controllers
    this process started but has no job for yet (a signal during ``submit``) are found as its
    children in /proc.
    """
    procs = {int(job.job_id): getattr(job, "_process", None) for job in jobs
             if str(job.job_id).isdigit()}
    for pid in _child_controllers():
        procs.setdefault(pid, None)
    stopped = 0
    for pid, proc in list(procs.items()):
        if proc is not None and proc.poll() is not None:
            del procs[pid]  # exited and reaped: its pid may belong to someone else now
            continue
        try:
            if os.getpgid(pid) == pid:  # its own group (SessionLocalExecutor): one call
                os.killpg(pid, signal.SIGKILL)
            else:  # never killpg a group that may be ours; kill the tree instead
                _kill_tree(pid)
            stopped += 1
        except (ProcessLookupError, PermissionError):
            pass
    for pid, proc in procs.items():  # reap the controllers (their workers go to init)
        try:
            if proc is not None:
                proc.wait(timeout=5)
            else:
                os.waitpid(pid, 0)
        except (ChildProcessError, subprocess.TimeoutExpired, OSError):
            pass
    return stopped


def _proc_children(pid: int) -> list[int]:
    """The children of ``pid`` from /proc (empty where there is no /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _child_controllers() -> list[int]:
    """This process's children that run a submitit local controller."""
    pids = []
    for pid in _proc_children(os.getpid()):
        try:
            if CONTROLLER_MODULE.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                pids.append(pid)
        except OSError:
            pass
    return pids


def _kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and its descendants, each stopped (SIGSTOP) before its children are
    listed so that none starts another meanwhile."""
    todo, seen = [pid], []
    while todo:
        p = todo.pop()
        try:
            os.kill(p, signal.SIGSTOP)
        except ProcessLookupError:
            continue
        seen.append(p)
        todo.extend(_proc_children(p))
    for p in seen:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


