"""submitit executors for the grid's launchers: debug (in-process), local subprocesses, SLURM.

:func:`resolve_launcher` turns ``launcher=auto`` into ``slurm`` or ``local``;
:func:`make_executor` sets each executor up from the grid config (SLURM array parameters, the
local wall limit and GPUs). Local jobs go through :class:`SessionLocalExecutor`, which starts
each job's controller in a session of its own, so that a Ctrl-C at the terminal reaches only the
grid and the grid can stop a job with its whole process group (runners/local_procs.py).
"""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import submitit
import submitit.local.local as submitit_local


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
    reaches only the grid, which stops the workers itself (``runners.local_procs.stop_local``), and
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

