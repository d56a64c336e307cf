"""Dispatching cells through submitit: debug (in-process), local subprocesses, SLURM job arrays.

Locally, ``workers`` long-lived jobs share the cell list through claim files; on SLURM, cells
are packed into a job array (``slurm.cells_per_job`` per task). A list of cells is run by
:class:`CellBatch`, a ``submitit.helpers.Checkpointable``: when SLURM (or the local
controller) signals a timeout or preemption, ``checkpoint`` saves the running sampler's state if
it has ``state_dict`` and resubmits the same batch; on restart, cells whose row is already
finished are skipped and the interrupted one resumes from its checkpoint (or restarts cleanly).

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
"""
from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import time
import types
import uuid
from pathlib import Path

import submitit
import submitit.local.local as submitit_local
from submitit.core.utils import DelayedSubmission

from . import rows
from .cell import CellSpec, base_row, run_cell, save_checkpoint
from .lock import pid_alive

POLL_S = 0.5
CONTROLLER_MODULE = "submitit.local._local"  # what a local job's controller process runs


class Interrupted(KeyboardInterrupt):
    """The grid was interrupted by ``signum`` (SIGINT for Ctrl-C, SIGTERM, SIGHUP); ``detail``
    (set by :func:`dispatch`) says what became of the running jobs."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signum)
        self.signum, self.detail = int(signum), ""


class CellBatch(submitit.helpers.Checkpointable):
    """Runs a list of cells one after another; checkpointable for requeue.

    With ``claim`` set (local workers) several CellBatch jobs share one list: each cell is run by
    the worker that first creates its claim file ``.claim-<claim>`` (``O_EXCL``, atomic), so
    ``workers`` long-lived processes drain the grid without importing torch once per cell. A
    worker stops taking cells when the grid process ``parent_pid`` is gone (SIGKILL). The rungs
    of a budget ladder share one claim (``CellSpec.claim_dir``, the first rung's folder): the
    worker that takes it runs every rung, in order, so each rung finds the one below finished.
    """

    def __init__(self, claim: str | None = None, parent_pid: int | None = None) -> None:
        self.claim, self.parent_pid = claim, parent_pid
        self._live: dict = {}
        self._mine: set = set()  # claim folders this worker holds

    def __call__(self, specs: list[CellSpec]) -> list[dict]:
        out = []
        for spec in specs:
            row = rows.read_row(spec.dir)
            if row is not None and row["status"] in rows.FINISHED and self.claim is None:
                out.append(row)  # done before a requeue
                continue
            if self.claim is not None:
                if not _alive(self.parent_pid):
                    break
                if spec.claim_dir not in self._mine:
                    if not self._take(spec):
                        continue
                    self._mine.add(spec.claim_dir)
            out.append(run_cell(spec, live=self._live))
        return out

    def _take(self, spec: CellSpec) -> bool:
        spec.claim_dir.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(spec.claim_dir / f".claim-{self.claim}",
                         os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)  # umask applies, as for every results file
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:  # which worker (and its log) took the cell
            try:
                f.write(str(submitit.JobEnvironment().paths.stderr))
            except Exception:  # noqa: BLE001 - outside a submitit job
                f.write("")
        return True

    def checkpoint(self, specs: list[CellSpec]) -> DelayedSubmission:
        try:
            save_checkpoint(self._live)
        except Exception as exc:  # noqa: BLE001 - a failed save must not block the requeue
            print(f"[cell] checkpoint not saved: {exc}", file=sys.stderr)
        return DelayedSubmission(CellBatch(self.claim, self.parent_pid), specs)

    def __getstate__(self) -> dict:
        return {"claim": self.claim, "parent_pid": self.parent_pid, "_live": {},  # no live sampler
                "_mine": set()}


def _alive(pid: int | None) -> bool:
    return True if pid is None else pid_alive(pid)


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


def make_executor(launcher: str, folder: Path, cfg, n_cells: int = 1) -> submitit.Executor:
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
        # No requeue locally (max_num_timeout=0): a timeout there is a runaway, not a preemption.
        # Cells time themselves out (CellSpec.timeout_s); the job limit is a safety net for a
        # worker that may run every cell.
        ex = SessionLocalExecutor(folder=folder, max_num_timeout=0)
        ex.update_parameters(timeout_min=float(cfg.timeout_min) * n_cells + 1,
                             signal_delay_s=30, **_local_gpus())
        return ex
    ex = submitit.AutoExecutor(folder=folder, cluster=launcher)
    return ex


class SessionLocalExecutor(submitit.LocalExecutor):
    """submitit's LocalExecutor, with each job's controller (and so its worker) started in a
    session and process group of its own (``start_new_session``): a Ctrl-C at the terminal then
    reaches only the grid, which stops the workers itself (:func:`_stop_local`), and
    ``killpg(job_id)`` reaches the controller, the worker and anything the worker started."""

    def _submit_command(self, command: str):
        real = submitit_local.subprocess
        submitit_local.subprocess = types.SimpleNamespace(
            Popen=functools.partial(subprocess.Popen, start_new_session=True))
        try:
            return super()._submit_command(command)
        finally:
            submitit_local.subprocess = real


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
    """Packs of up to ``size`` cells; the rungs of one budget ladder (consecutive in ``specs``)
    always share a pack, which then may hold more than ``size`` cells."""
    packs: list[list[CellSpec]] = []
    for spec in specs:
        same_ladder = bool(spec.group) and bool(packs) and packs[-1][-1].group == spec.group
        if packs and (same_ladder or len(packs[-1]) < size):
            packs[-1].append(spec)
        else:
            packs.append([spec])
    return packs


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
            n = _stop_local([job for job, _ in jobs])
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


def _stop_local(jobs: list) -> int:
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
