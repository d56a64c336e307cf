"""A list of cells run one after another in one job: :class:`CellBatch`, and packing cells.

:class:`CellBatch` is the callable every submitit job runs (debug, local workers, SLURM array
tasks), a ``submitit.helpers.Checkpointable``: when SLURM (or the local controller) signals a
timeout or preemption, ``checkpoint`` saves the running sampler's state if it has
``state_dict`` and resubmits the same batch; on restart, cells whose row is already finished are
skipped and the interrupted one resumes from its checkpoint (or restarts cleanly). Locally,
long-lived workers share one cell list through claim files. :func:`batches` packs cells for a
SLURM array (``slurm.cells_per_job`` per task).
"""
from __future__ import annotations

import os
import sys

import submitit
from submitit.core.utils import DelayedSubmission

from . import rows
from .cell import CellSpec, run_cell, save_checkpoint
from .lock import pid_alive


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

