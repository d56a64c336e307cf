"""Dispatching cells through submitit: debug (in-process), local subprocesses, SLURM job arrays.

Cells are packed into batches (``slurm.cells_per_job`` on SLURM, one per job elsewhere); a batch
is run by :class:`CellBatch`, a ``submitit.helpers.Checkpointable``: when SLURM (or the local
controller) signals a timeout or preemption, ``checkpoint`` saves the running sampler's state if
it has ``state_dict`` and resubmits the same batch; on restart, cells whose row is already
finished are skipped and the interrupted one resumes from its checkpoint (or restarts cleanly).

The grid process watches the jobs, prints progress, and writes the row of any cell whose job
died without writing one (``timeout`` when the job hit its wall limit, ``error`` otherwise, with
the job's log path).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import submitit
from submitit.core.utils import DelayedSubmission

from . import rows
from .cell import CellSpec, base_row, run_cell, save_checkpoint

POLL_S = 0.5


class CellBatch(submitit.helpers.Checkpointable):
    """Runs a list of cells one after another; checkpointable for requeue."""

    def __init__(self) -> None:
        self._live: dict = {}

    def __call__(self, specs: list[CellSpec]) -> list[dict]:
        out = []
        for spec in specs:
            row = rows.read_row(spec.dir)
            if row is not None and row["status"] in rows.FINISHED:
                out.append(row)  # done before a requeue
                continue
            out.append(run_cell(spec, live=self._live))
        return out

    def checkpoint(self, specs: list[CellSpec]) -> DelayedSubmission:
        try:
            save_checkpoint(self._live)
        except Exception as exc:  # noqa: BLE001 - a failed save must not block the requeue
            print(f"[cell] checkpoint not saved: {exc}", file=sys.stderr)
        return DelayedSubmission(CellBatch(), specs)

    def __getstate__(self) -> dict:
        return {"_live": {}}  # the live sampler is never pickled


def resolve_launcher(name: str) -> str:
    """``auto`` -> slurm where ``srun``/``sbatch`` are on the PATH and the controller answers
    ``scontrol ping`` (installed SLURM clients without a reachable cluster are common on
    laptops), local elsewhere."""
    if name != "auto":
        return name
    if not (shutil.which("srun") and shutil.which("sbatch") and shutil.which("scontrol")):
        return "local"
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "local"
    if ping.returncode != 0 or "UP" not in ping.stdout:
        print("[grid] note: SLURM commands found but no controller answers; running locally",
              file=sys.stderr)
        return "local"
    return "slurm"


def make_executor(launcher: str, folder: Path, cfg) -> submitit.Executor:
    if launcher == "slurm":
        s = cfg.slurm
        ex = submitit.AutoExecutor(folder=folder, cluster="slurm",
                                   slurm_max_num_timeout=s.max_num_timeout)
        params = dict(timeout_min=int(s.timeout_min), mem_gb=s.mem_gb, cpus_per_task=s.cpus_per_task,
                      gpus_per_node=s.gpus_per_node or None, name="boltzbench",
                      slurm_array_parallelism=s.array_parallelism,
                      slurm_signal_delay_s=s.signal_delay_s)
        if s.partition:
            params["slurm_partition"] = s.partition
        if s.setup:
            params["slurm_setup"] = list(s.setup)
        ex.update_parameters(**params)
        return ex
    if launcher == "local":
        # A local wall limit stops a runaway cell: no requeue (max_num_timeout=0), the cell is
        # recorded as timeout. LocalExecutor itself takes fractional minutes and the signal delay.
        ex = submitit.LocalExecutor(folder=folder, max_num_timeout=0)
        ex.update_parameters(timeout_min=float(cfg.timeout_min),
                             signal_delay_s=int(min(30, 6 * cfg.timeout_min)), **_local_gpus())
        return ex
    ex = submitit.AutoExecutor(folder=folder, cluster=launcher)
    return ex


def _local_gpus() -> dict:
    """GPUs for local cells. submitit's local executor sets CUDA_VISIBLE_DEVICES to its
    ``gpus_per_node`` first devices (none by default), so pass every GPU this process sees; each
    concurrent cell may use them (a sampler's ``device`` config chooses)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        try:
            ids = [int(v) for v in env.split(",") if v.strip()]
        except ValueError:  # GPU UUIDs: submitit only takes indices
            print("[grid] note: CUDA_VISIBLE_DEVICES holds non-integer ids; local cells get no GPU",
                  file=sys.stderr)
            return {}
        return {"gpus_per_node": len(ids), "visible_gpus": ids} if ids else {}
    import torch
    n = torch.cuda.device_count()
    return {"gpus_per_node": n} if n else {}


def batches(specs: list[CellSpec], size: int) -> list[list[CellSpec]]:
    return [specs[i:i + size] for i in range(0, len(specs), size)]


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
    """Run ``specs``; returns their rows (written by the cells or, for dead jobs, here)."""
    if not specs:
        return []
    folder = out / "logs"
    executor = make_executor(launcher, folder, cfg)
    size = cfg.slurm.cells_per_job if launcher == "slurm" else 1
    queue = batches(specs, size)
    window = {"debug": 1, "local": _workers(cfg), "slurm": len(queue)}[launcher]
    pending: list = []  # (job, batch, submitted_at)
    results: dict[str, dict] = {}

    def submit_more():
        n = min(window - len(pending), len(queue))
        if n <= 0:
            return
        todo = [queue.pop(0) for _ in range(n)]
        if launcher == "slurm":
            jobs = executor.map_array(CellBatch(), todo)
        else:
            jobs = [executor.submit(CellBatch(), b) for b in todo]
        now = time.time()
        pending.extend((j, b, now) for j, b in zip(jobs, todo))

    try:
        submit_more()
        while pending:
            still = []
            for job, batch, t_sub in pending:
                if launcher != "debug" and not job.done():
                    still.append((job, batch, t_sub))
                    continue
                for row in _collect_job(job, batch, launcher, cfg, t_sub):
                    results[row["cell_key"]] = row
                    counts[row["status"]] = counts.get(row["status"], 0) + 1
            pending[:] = still
            submit_more()
            progress.show(counts, _running(pending, launcher),
                          partial=_rows_in_flight(pending) if size > 1 else 0)
            if pending:
                time.sleep(POLL_S)
    except KeyboardInterrupt:
        # Ctrl-C / SIGTERM: stop local cell processes (their rows are not written, the cells
        # rerun next time); SLURM jobs are left to finish and can be collected later.
        if launcher == "local":
            _stop_local([job for job, _, _ in pending])
        elif launcher == "slurm" and pending:
            print(f"\n[grid] {len(pending)} SLURM job(s) keep running; re-run the command "
                  f"later to collect them, or scancel them", file=sys.stderr)
        raise
    progress.show(counts, 0, final=True)
    return [results[s.key] for s in specs if s.key in results]


def _stop_local(jobs: list) -> None:
    """SIGTERM each local job's controller (its job id is the controller's pid), which forwards
    it to the cell process. Not SIGINT (submitit's cancel): processes started from a
    non-interactive shell in the background ignore SIGINT."""
    for job in jobs:
        try:
            os.kill(int(job.job_id), signal.SIGTERM)
        except (ValueError, ProcessLookupError, PermissionError):
            pass


def _workers(cfg) -> int:
    if cfg.workers > 0:
        return cfg.workers
    return max(1, (os.cpu_count() or 1) // max(1, cfg.threads))


def _rows_in_flight(pending: list) -> int:
    n = 0
    for _, batch, t_sub in pending:
        for spec in batch:
            path = spec.dir / rows.ROW_FILE
            n += path.is_file() and path.stat().st_mtime >= t_sub - 1
    return n


def _running(pending: list, launcher: str) -> int:
    if launcher != "slurm":
        return len(pending)
    return sum(1 for job, _, _ in pending if job.state in ("RUNNING", "COMPLETING"))


def _collect_job(job, batch: list[CellSpec], launcher: str, cfg, t_sub: float) -> list[dict]:
    try:
        out = job.result()
        return list(out)
    except Exception as exc:  # noqa: BLE001 - the job died; its cells get rows from here
        return [_dead_row(spec, job, exc, launcher, cfg, t_sub) for spec in batch]


def _dead_row(spec: CellSpec, job, exc: Exception, launcher: str, cfg, t_sub: float) -> dict:
    row = rows.read_row(spec.dir)
    path = spec.dir / rows.ROW_FILE
    if row is not None and path.stat().st_mtime >= t_sub - 1:
        return row  # the cell wrote its row (this run) before the job died
    text = str(exc)
    limit_s = 60 * (cfg.slurm.timeout_min if launcher == "slurm" else cfg.timeout_min)
    timed_out = "TIMEOUT" in text.upper() or "TIMED-OUT" in text.upper() or \
        (time.time() - t_sub) >= 0.97 * limit_s
    log = str(getattr(getattr(job, "paths", None), "stderr", ""))
    row = base_row(spec)
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    row.update(status="timeout" if timed_out else "error", job_id=str(job.job_id), log=log,
               reason=(f"job hit its wall limit ({limit_s / 60:g} min)" if timed_out
                       else f"job died: {first}") + f"; log: {log}",
               finished_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
    rows.write_json(spec.dir / rows.ROW_FILE, row)
    return row
