"""A cell's saved sampler state: the preemption checkpoint (``checkpoint.pt``), a budget rung's
state (``state.pt``, runners/ladder.py), where a cell's fit resumes from, and the network
passes carried across them. Used by runners/cell.py (``run_cell``) and the launchers'
preemption handler (``save_checkpoint``)."""
from __future__ import annotations

import io
import math
import time
from pathlib import Path

import torch

import samplers
from . import ladder, rows

CHECKPOINT_FILE = "checkpoint.pt"


def save_checkpoint(live: dict) -> bool:
    """Save the running sampler's ``state_dict`` with the spending so far (called from the
    preemption handler). Returns whether a checkpoint was written."""
    sampler, target, spec = live.get("sampler"), live.get("target"), live.get("spec")
    if sampler is None or not hasattr(sampler, "state_dict"):
        return False
    nets = live.get("nets")
    save_state(spec.dir / CHECKPOINT_FILE, sampler, target,
                time.perf_counter() - live["t0"] + live["prior_seconds"],
                {**(live.get("extra") or {}), "network_evals": nets.total() if nets else 0})
    return True


class NetworkCount:
    """The sampler's network passes (``network_evals``, samplers/base.py) since this cell built
    or loaded it, plus what the rung below or a checkpoint had spent; NaN for a sampler that does
    not count (a plugin)."""

    def __init__(self, sampler, prior: float) -> None:
        self.sampler, self.prior = sampler, prior
        self.start = getattr(sampler, "network_evals", None)

    def total(self) -> float:
        now = getattr(self.sampler, "network_evals", None)
        if now is None or self.start is None:
            return math.nan
        return self.prior + now - self.start


def save_state(path: Path, sampler, target, fit_seconds: float, extra: dict | None = None) -> None:
    """The sampler's ``state_dict`` with the spending so far (a checkpoint, or a rung's state)."""
    buf = io.BytesIO()
    torch.save({"state": sampler.state_dict(), **target.counter.snapshot(),
                "fit_seconds": fit_seconds, **(extra or {})}, buf)
    rows.write_bytes(path, buf.getvalue())


def resume(spec, sampler, target) -> tuple[samplers.Budget, dict | None, str]:
    """The budget for ``fit`` and where the sampler's state came from: ``"checkpoint"`` (this
    cell was preempted), ``"previous"`` (the rung below's saved state) or ``""`` (a fresh fit,
    the full budget). After a load the budget is the remainder (energy and time caps minus what
    was spent); step caps are the sampler's own (counted in its state)."""
    source, path = "", None
    if hasattr(sampler, "load_state_dict"):
        if (spec.dir / CHECKPOINT_FILE).is_file():
            source, path = "checkpoint", spec.dir / CHECKPOINT_FILE
        elif spec.previous:
            below = rows.cell_dir(spec.out, spec.previous) / ladder.STATE_FILE
            source, path = ("previous", below) if below.is_file() else ("", None)
    if path is None:
        return samplers.Budget(**spec.budget), None, ""
    ckpt = torch.load(path, weights_only=False)
    sampler.load_state_dict(ckpt["state"])
    target.counter.energy_evals, target.counter.grad_evals = ckpt["energy_evals"], ckpt["grad_evals"]
    b = ladder.remaining(spec.budget, ckpt["energy_evals"], ckpt["fit_seconds"])
    if any(v is not None and v <= 0 for v in b.values()):
        # Nothing remains: fit still runs, with a budget that is spent at once, so a sampler
        # that applies its loaded state when it sees the target finishes setting up.
        return samplers.Budget(max_energy_evals=1, max_seconds=1e-6), ckpt, source
    return samplers.Budget(**b), ckpt, source
