"""Dispatching cells through submitit: debug (in-process), local subprocesses, SLURM job arrays.

Locally, ``workers`` long-lived jobs share the cell list through claim files; on SLURM, cells
are packed into a job array (``slurm.cells_per_job`` per task). A list of cells is run by
:class:`CellBatch` (runners/cell_batch.py), which checkpoints and requeues on a timeout or
preemption; the executors are set up in runners/executors.py.

The grid process watches the jobs, prints progress, and writes the row of any cell whose job
died without writing one (``timeout`` when the job hit its wall limit, ``error`` otherwise, with
the job's log path).

Interruption (Ctrl-C, SIGINT or SIGTERM to the grid, raised in it as KeyboardInterrupt): local
workers are SIGKILLed at once, each with its whole process group. Each local job's controller is
started in a session of its own, so a Ctrl-C at the terminal reaches only the grid (not
submitit's controller and worker, which would print tracebacks), and signalling the group kills
the worker too: submitit's worker ignores SIGTERM ("Bypassing signal SIGTERM") and its controller
only forwards it. A killed cell leaves no row (rows are replaced atomically) and reruns next
time. SLURM jobs are left running.

This module is the dispatch loop (:func:`dispatch`), the progress line and the rows of dead
jobs; the local processes are stopped by runners/local_procs.py.
"""
from __future__ import annotations

import os
import signal
import sys
import time
import uuid
from pathlib import Path

from . import rows
from .cell import CellSpec, base_row
# CellBatch, batches, make_executor and resolve_launcher stay importable from here.
from .cell_batch import CellBatch, batches
from .executors import make_executor, resolve_launcher  # noqa: F401
from .local_procs import stop_local

POLL_S = 0.5


class Interrupted(KeyboardInterrupt):
    """The grid was interrupted by ``signum`` (SIGINT for Ctrl-C, SIGTERM, SIGHUP); ``detail``
    (set by :func:`dispatch`) says what became of the running jobs."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signum)
        self.signum, self.detail = int(signum), ""


class Progress:
    """One status line: cells done / failed / running, elapsed, estimated remaining."""

    def __init__(self, total: int, already: int, stream=None):
        self.total, self.already = total, already
        self.stream = stream if stream is not None else sys.stderr
        self.t0 = time.time()
        self.tty = self.stream.isatty()
        self.last = ""

    def show(self, counts: dict[str, int], running: int, final: bool = False,
             partial: int = 0) -> None:
        """``partial``: cells already finished inside jobs that still run (packed cells)."""
        done = sum(counts.values()) + partial
        failed = counts.get("error", 0) + counts.get("timeout", 0) + counts.get("diverged", 0)
        elapsed = time.time() - self.t0
        new = done - self.already
        eta = "?" if new <= 0 else _hms(elapsed / new * (self.total - done))
        line = (f"[grid] {done}/{self.total} cells | ok {counts.get('ok', 0)} "
                f"failed {failed} skipped {counts.get('skipped', 0)} | running {running} | "
                f"elapsed {_hms(elapsed)} | eta {eta if done < self.total else '0:00'}")
        key = line.split("| elapsed")[0]
        if self.tty:
            print("\r" + line.ljust(len(self.last)), end="\n" if final else "", file=self.stream,
                  flush=True)
        elif key != self.last.split("| elapsed")[0]:
            print(line, file=self.stream, flush=True)
        self.last = line


def _hms(s: float) -> str:
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def dispatch(specs: list[CellSpec], cfg, launcher: str, out: Path, progress: Progress,
             counts: dict[str, int]) -> list[dict]:
    """Run ``specs``; returns their rows (written by the cells or, for dead jobs, here).

    local: ``workers`` worker jobs share the whole list (claims); slurm: one job array of packs
    of ``slurm.cells_per_job``; debug: one cell at a time in-process. Progress counts the rows
    that appear on disk, so cells finished inside a still-running job are counted too.
    """
    if not specs:
        return []
    t0 = time.time()
    executor = make_executor(launcher, out / "logs", cfg, n_cells=len(specs))
    tag = None
    if launcher == "local":
        tag = uuid.uuid4().hex[:10]
        worker = CellBatch(claim=tag, parent_pid=os.getpid())
        jobs, queue = [], []
    elif launcher == "slurm":
        packs = batches(specs, cfg.slurm.cells_per_job)
        jobs = list(zip(executor.map_array(CellBatch(), packs), packs))
        queue = []
    else:
        jobs, queue = [], batches(specs, 1)
    results: dict[str, dict] = {}

    def harvest():
        for spec in specs:
            if spec.key not in results:
                row = _fresh_row(spec, t0)
                if row is not None:
                    results[spec.key] = row
                    counts[row["status"]] = counts.get(row["status"], 0) + 1

    try:
        while True:
            if launcher == "debug" and not jobs and queue:
                batch = queue.pop(0)
                jobs.append((executor.submit(CellBatch(), batch), batch))
            still = []
            for job, batch in jobs:
                if launcher != "debug" and not job.done():
                    still.append((job, batch))
                    continue
                try:
                    _result(job, launcher)
                except Exception as exc:  # noqa: BLE001 - the job died; its cells get rows here
                    harvest()
                    for spec in batch:
                        if spec.key not in results and (tag is None or _claimed(spec, tag)):
                            _dead_row(spec, job, exc, launcher, cfg, t0, tag)
            jobs[:] = still
            if launcher == "local":  # start workers, and replace any that died mid-grid
                free = sum(1 for sp in specs if sp.key not in results and not _claimed(sp, tag))
                for _ in range(min(_workers(cfg), free) - len(jobs)):
                    jobs.append((executor.submit(worker, specs), specs))
            harvest()
            progress.show(counts, _running(jobs, launcher, specs, results, tag))
            if not jobs and not queue:
                break
            time.sleep(POLL_S if launcher != "debug" else 0)
    except KeyboardInterrupt as exc:
        # Ctrl-C / SIGTERM: kill the local workers (their running cells write no row and rerun
        # next time); SLURM jobs are left to finish and are collected by a later run.
        stop = exc if isinstance(exc, Interrupted) else Interrupted(signal.SIGINT)
        if launcher == "local":
            n = stop_local([job for job, _ in jobs])
            stop.detail = f"stopped {n} local worker(s), their running cells wrote no row"
        elif launcher == "slurm" and jobs:
            stop.detail = (f"{len(jobs)} SLURM job(s) keep running (re-run the command later "
                           f"to collect them, or scancel them)")
        raise stop from None
    finally:
        if tag is not None:
            for spec in specs:
                (spec.claim_dir / f".claim-{tag}").unlink(missing_ok=True)
    for spec in specs:  # every worker stopped but some cells were never taken
        if spec.key not in results:
            row = base_row(spec)
            row.update(reason="not run: every job of the grid ended before this cell "
                              f"(see {out / 'logs'})", finished_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
            rows.write_json(spec.dir / rows.ROW_FILE, row)
            results[spec.key] = row
            counts["error"] = counts.get("error", 0) + 1
    progress.show(counts, 0, final=True)
    return [results[s.key] for s in specs]


def _result(job, launcher: str):
    """The job's result. A local process that died leaves no result file: say so at once, rather
    than through ``job.result()``, which waits 15 s for files on slow network file systems."""
    if launcher == "local" and not job.paths.result_pickle.exists():
        log = job.paths.stderr
        tail = log.read_text(errors="replace").strip().splitlines()[-3:] if log.is_file() else []
        raise RuntimeError(f"the cell process exited without a result ({job.state}); "
                           f"last log lines: {' | '.join(tail) or '(none)'}")
    return job.result()


def _fresh_row(spec: CellSpec, t0: float) -> dict | None:
    """The cell's row if it was written during this dispatch."""
    path = spec.dir / rows.ROW_FILE
    try:
        if path.stat().st_mtime < t0 - 1:
            return None
    except OSError:
        return None
    return rows.read_row(path)


def _claimed(spec: CellSpec, tag: str) -> bool:
    return (spec.claim_dir / f".claim-{tag}").is_file()


def _workers(cfg) -> int:
    if cfg.workers > 0:
        return cfg.workers
    return max(1, (os.cpu_count() or 1) // max(1, cfg.threads))


def _running(jobs: list, launcher: str, specs, results, tag) -> int:
    """Cells running now: local, claimed without a row; slurm, array tasks in RUNNING."""
    if launcher == "local":
        # one running cell per claim: the rungs of a ladder share theirs and run one by one
        return len({s.claim_dir for s in specs if s.key not in results and _claimed(s, tag)})
    if launcher == "slurm":
        return sum(1 for job, _ in jobs if job.state in ("RUNNING", "COMPLETING"))
    return len(jobs)


def _dead_row(spec: CellSpec, job, exc: Exception, launcher: str, cfg, t0: float,
              tag: str | None = None) -> dict:
    """Row for a cell whose job died before the cell wrote one (error, or timeout when the job
    hit its wall limit), naming the job's log."""
    text = str(exc)
    limit_s = 60 * (cfg.slurm.timeout_min if launcher == "slurm" else cfg.timeout_min)
    timed_out = "TIMEOUT" in text.upper() or "TIMED-OUT" in text.upper()
    log = str(getattr(getattr(job, "paths", None), "stderr", ""))
    if tag is not None:
        log = (spec.claim_dir / f".claim-{tag}").read_text() or log
    row = base_row(spec)
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    row.update(status="timeout" if timed_out else "error", job_id=str(job.job_id), log=log,
               reason=(f"job hit its wall limit ({limit_s / 60:g} min)" if timed_out
                       else f"job died: {first}") + f"; log: {log}",
               finished_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
    rows.write_json(spec.dir / rows.ROW_FILE, row)
    return row
