"""One grid cell (target, sampler, seed): fit under the budget, sample, score, write its row.

``run_cell(spec)`` is the single picklable seam every launcher calls (in-process, local
subprocesses or SLURM array tasks). It never raises for a sampler's failure: the outcome is a row
with ``status`` in ok / skipped / diverged / error (timeouts are written by the grid process,
which sees the job die). Files, all written atomically into ``OUT/cells/<cell_key>/``:
``row.json``, ``samples.npy`` (``[n_eval, dim]`` float32), ``config.yaml`` (the resolved cell
config), ``traceback.txt`` for errors, ``checkpoint.pt`` while a checkpointable sampler runs.

Seeds: the cell seed is a stable hash of (base seed, target, sampler, seed index) — never Python's
salted ``hash()`` — so a cell draws the same numbers in any process. ``fit`` gets a generator seeded
with the cell seed, ``sample`` one seeded with a second hash of it.

Wall limit: with ``timeout_s`` set (local and debug launchers: ``timeout_min``), SIGALRM ends
the cell with status ``timeout``; SLURM jobs have their own limit (``slurm.timeout_min``).

Skipping: a sampler that cannot handle a target says so with a ``supports(target)`` class method
returning False or a reason string, or by raising ``NotImplementedError`` in ``fit``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import signal
import socket
import threading
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import submitit
import torch
from omegaconf import OmegaConf
from submitit.core.utils import UncompletedJobError

import metrics
import samplers
import targets
from samplers.allocator import retain_freed_memory
from . import cnf as cnf_metric, ladder, rows, scoring
from .cell_state import (CHECKPOINT_FILE, NetworkCount, resume as _resume,  # noqa: F401
                         save_checkpoint, save_state)
from .config import build_sampler_config, load_plugins



def stable_int(*parts: Any) -> int:
    """A 60-bit integer from sha256 of the parts joined by '|' (identical across processes)."""
    blob = "|".join(str(p) for p in parts).encode()
    return int(hashlib.sha256(blob).hexdigest()[:15], 16)


def cell_seed(base_seed: int, target: str, sampler: str, seed: int) -> int:
    return stable_int(base_seed, target, sampler, seed)


@dataclass(frozen=True)
class CellSpec:
    """Everything a cell needs, resolved in the grid process; picklable and JSON-able."""

    target: str
    target_fingerprint: str
    sampler: str
    seed: int
    base_seed: int
    sampler_config: dict
    budget: dict
    n_eval: int
    metric_options: dict
    out: str
    threads: int = 1
    profile: str = ""
    plugins: tuple = ()
    timeout_s: float | None = None  # wall limit of the cell (SIGALRM); not part of its key
    # The budget axis (runners/ladder.py); all empty for a grid without one, whose keys and rows
    # are unchanged.
    budget_unit: str = ""           # "energy_evals" | "seconds": this cell is a rung of a ladder
    previous: str = ""              # key of the rung below (continuation source); "" for the first
    previous_budget: dict | None = None
    group: str = ""                 # key of the ladder's first rung: one worker runs the ladder

    @property
    def cell_seed(self) -> int:
        return cell_seed(self.base_seed, self.target, self.sampler, self.seed)

    def resolved(self) -> dict:
        """The config that defines the cell's result (hashed into its key)."""
        return {"target": self.target, "target_fingerprint": self.target_fingerprint,
                "sampler": self.sampler, "sampler_config": self.sampler_config,
                "budget": self.budget, "seed": self.seed, "base_seed": self.base_seed,
                "cell_seed": self.cell_seed, "n_eval": self.n_eval,
                "metric_options": self.metric_options, "metric_spec_version": metrics.SPEC_VERSION,
                **({"budget_unit": self.budget_unit, "continue_from": self.previous_budget}
                   if self.budget_unit else {})}

    @property
    def key(self) -> str:
        """``<target>-<sampler>-s<seed>-<hash>``: readable, and a new folder whenever anything in
        :meth:`resolved` changes (the hash covers it all, target fingerprint included)."""
        blob = json.dumps(rows.jsonable(self.resolved()), sort_keys=True)
        digest = hashlib.sha256(blob.encode()).hexdigest()[:12]
        rung = f"-{ladder.label(self.budget_unit, self.rung)}" if self.budget_unit else ""
        return f"{self.target}-{self.sampler}-s{self.seed}{rung}-{digest}"

    @property
    def rung(self) -> float | None:
        """The budget of this rung in its unit (None without a budget axis)."""
        return ladder.rung_value(self.budget_unit, self.budget) if self.budget_unit else None

    @property
    def claim_dir(self) -> Path:
        """Where a local worker claims this cell: the ladder's first rung for every rung, so one
        worker runs a whole ladder, in order."""
        return rows.cell_dir(self.out, self.group or self.key)

    @property
    def dir(self) -> Path:
        return rows.cell_dir(self.out, self.key)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def job_info() -> dict:
    """submitit job id and log path when running inside a submitit job (empty otherwise)."""
    try:
        env = submitit.JobEnvironment()
        return {"job_id": str(env.job_id), "log": str(env.paths.stderr)}
    except Exception:  # noqa: BLE001 - not in a job (direct call, evaluate)
        return {}


def base_row(spec: CellSpec) -> dict:
    """Identity and provenance columns, before anything runs."""
    return {"target": spec.target, "target_fingerprint": spec.target_fingerprint,
            "sampler": spec.sampler, "seed": spec.seed, "cell_seed": spec.cell_seed,
            "base_seed": spec.base_seed, "cell_key": spec.key, "profile": spec.profile,
            "status": "error", "reason": "", "energy_evals": 0, "grad_evals": 0,
            "fit_energy_evals": 0, "fit_grad_evals": 0, "fit_seconds": math.nan,
            "sample_seconds": math.nan, "metric_seconds": math.nan, "n_eval": spec.n_eval,
            **(ladder.columns(spec) if spec.budget_unit else {}),
            "code_version": rows.code_version(), **rows.library_versions(),
            "metric_spec_version": metrics.SPEC_VERSION, "reference_source": "",
            "config": json.dumps(rows.jsonable(spec.resolved()), sort_keys=True),
            "host": socket.gethostname(), "started_at": _now(), **job_info()}


def run_cell(spec: CellSpec, live: dict | None = None) -> dict:
    """Run one cell and write its files; returns the row. ``live`` (optional) is filled with the
    running sampler and target so that a checkpoint handler can save the sampler's state."""
    row = base_row(spec)
    spec.dir.mkdir(parents=True, exist_ok=True)
    rows.write_text(spec.dir / rows.CONFIG_FILE, OmegaConf.to_yaml(rows.jsonable(spec.resolved())))
    # A rung's saved state is written after its fit completes; a stale one from an earlier attempt
    # must not be continued from if this attempt fails before that point.
    (spec.dir / ladder.STATE_FILE).unlink(missing_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(spec.threads)
    retain_freed_memory()  # every sampler's large temporaries reuse mapped pages
    live = live if live is not None else {}
    try:
        previous = _arm(spec.timeout_s)
        try:
            _run(spec, row, live)
        finally:
            _disarm(previous)
    except CellTimeout:
        row.update(status="timeout", reason=f"the cell ran past its wall limit "
                                            f"({spec.timeout_s / 60:g} min, timeout_min)")
    except samplers.Diverged as exc:
        row.update(status="diverged", reason=str(exc))
    except NotImplementedError as exc:
        row.update(status="skipped", reason=f"not supported: {exc}")
    except UncompletedJobError as exc:
        # Raised by submitit's signal handler inside fit when the job timed out and may not be
        # requeued again: record the cell as timeout, then let the job end.
        row.update(status="timeout", reason=f"{exc} (wall limit reached in this cell); "
                                            f"log: {row.get('log', '?')}")
        _finish(spec, row, threads, live)
        raise
    except Exception as exc:  # noqa: BLE001 - any failure is data, never a crash of the grid
        tb = spec.dir / "traceback.txt"
        rows.write_text(tb, traceback.format_exc())
        row.update(status="error", reason=f"{type(exc).__name__}: {exc}", traceback=str(tb))
    except BaseException:
        # SystemExit of a requeue (submitit) or KeyboardInterrupt: no row; the cell reruns.
        torch.set_num_threads(threads)
        live.clear()
        raise
    _finish(spec, row, threads, live)
    return row


class CellTimeout(BaseException):
    """Raised by SIGALRM when a cell passes ``timeout_s``. A BaseException, so that a sampler's
    ``except Exception`` cannot swallow it."""


def _on_alarm(signum, frame):
    raise CellTimeout


def _arm(timeout_s: float | None):
    """Start the cell's wall clock (main thread only; signals cannot be set elsewhere)."""
    if not timeout_s or threading.current_thread() is not threading.main_thread():
        return None
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, float(timeout_s))
    return previous


def _disarm(previous) -> None:
    if previous is not None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _finish(spec: CellSpec, row: dict, threads: int, live: dict) -> None:
    torch.set_num_threads(threads)
    live.clear()
    target = row.pop("_target", None)
    if target is not None and row["status"] != "ok":  # the spending up to the failure
        row.update(energy_evals=target.counter.energy_evals, grad_evals=target.counter.grad_evals)
    row["peak_memory_mb"] = rows.peak_memory_mb()
    row["finished_at"] = _now()
    rows.write_json(spec.dir / rows.ROW_FILE, row)
    if row["status"] in rows.FINISHED:
        (spec.dir / CHECKPOINT_FILE).unlink(missing_ok=True)


def _run(spec: CellSpec, row: dict, live: dict) -> None:
    load_plugins(spec.plugins)
    target = targets.get(spec.target)
    row["_target"] = target
    if target.fingerprint != spec.target_fingerprint:
        raise RuntimeError(f"target {spec.target} fingerprint {target.fingerprint} differs from the "
                           f"grid's {spec.target_fingerprint}: the code changed under the grid")
    cls = samplers.get(spec.sampler)
    supports = getattr(cls, "supports", None)
    verdict = supports(target) if callable(supports) else True
    if verdict is not True:
        row.update(status="skipped", reason=str(verdict) if verdict else "not supported")
        return
    row.update(target_pretty=target.pretty_name, sampler_pretty=getattr(cls, "pretty_name", spec.sampler))
    sampler = cls(build_sampler_config(spec.sampler, spec.sampler_config))
    budget, resumed, source = _resume(spec, sampler, target)
    row["resumed_from_checkpoint"] = source == "checkpoint"
    prior = (resumed or {}).get("fit_seconds", 0.0)
    if spec.budget_unit:
        row.update(ladder.continuation(spec, sampler, resumed, source))
    extra = {k: row[k] for k in ("continued_from", "ran_fresh", "continuation") if k in row}
    nets = NetworkCount(sampler, (resumed or {}).get("network_evals", 0))
    live.update(sampler=sampler, target=target, spec=spec, t0=time.perf_counter(),
                prior_seconds=prior, extra=extra, nets=nets)
    t0 = time.perf_counter()
    info = sampler.fit(target, budget, torch.Generator().manual_seed(spec.cell_seed))
    row["fit_seconds"] = time.perf_counter() - t0 + prior
    row["fit_seconds_this_cell"] = time.perf_counter() - t0
    row["fit_network_evals"] = nets.total()
    live.clear()
    # Every rung saves its state, the top one too: a ladder extended later continues from it.
    if spec.budget_unit and hasattr(sampler, "state_dict"):
        save_state(spec.dir / ladder.STATE_FILE, sampler, target, row["fit_seconds"],
                    {"network_evals": row["fit_network_evals"]})
    row["fit_info"] = json.dumps(rows.jsonable(info or {}), sort_keys=True)
    warnings = health_columns(row, info or {}, spec.budget)
    fit_counts = target.counter.snapshot()
    row.update(fit_energy_evals=fit_counts["energy_evals"], fit_grad_evals=fit_counts["grad_evals"])
    _check_losses(info or {})

    gen = torch.Generator().manual_seed(stable_int(spec.cell_seed, "sample"))
    t0 = time.perf_counter()
    log_w = None
    if getattr(cls, "has_importance_weights", False):
        x, log_w = sampler.log_weights(spec.n_eval, gen)
    else:
        x = sampler.sample(spec.n_eval, gen)
    row["sample_seconds"] = time.perf_counter() - t0
    row["network_evals"] = nets.total()
    row["sample_network_evals"] = row["network_evals"] - row["fit_network_evals"]
    counts = target.counter.snapshot()  # before metrics: metric energies are not the sampler's
    row.update(energy_evals=counts["energy_evals"], grad_evals=counts["grad_evals"],
               sample_energy_evals=counts["energy_evals"] - fit_counts["energy_evals"],
               sample_grad_evals=counts["grad_evals"] - fit_counts["grad_evals"])
    x = _check_samples(x, spec, target)
    rows.write_npy(spec.dir / rows.SAMPLES_FILE, x.numpy())
    row["samples_file"] = str(spec.dir / rows.SAMPLES_FILE)

    t0 = time.perf_counter()
    cnf_x = _cnf_samples(sampler, spec, target)
    if cnf_x is not None:
        row["cnf_sample_seconds"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    log_prob = sampler.log_prob if getattr(cls, "has_log_prob", False) else None
    values, errors, ref_cols = scoring.score(target, x, log_prob=log_prob, log_w=log_w,
                                             metric_options=spec.metric_options,
                                             cache_dir=spec.dir, cnf_samples=cnf_x)
    row["metric_seconds"] = time.perf_counter() - t0
    row.update(ref_cols)
    row.update(values)
    if getattr(cls, "gives_log_z", False):  # the sampler's own estimate from its fit (SMC)
        row["log_z"] = float(info.get("log_z", math.nan)) if info else math.nan
    row["metric_errors"] = json.dumps(errors, sort_keys=True) if errors else ""
    if ref_cols.get("reference_source") == "missing":
        warnings.append("reference missing: the cell is unscored until it exists")
    if ref_cols.get("reference_converged") is False:
        warnings.append("scored against an unconverged reference (BOLTZBENCH_ALLOW_UNCONVERGED)")
    row["warnings"] = "; ".join(warnings)
    row.update(status="ok", reason=ref_cols.get("reference_reason", ""))


def _cnf_samples(sampler, spec: CellSpec, target) -> torch.Tensor | None:
    """nll_cnf trains on ``n_train`` samples; when that is more than the cell's ``n_eval``, draw
    them now (after the sampler's spending was read, counters restored: the metric's cost, not
    the sampler's) and keep them in the cell folder for a rescore. None = train on the cell's."""
    n = cnf_metric.n_train(spec.metric_options, target)
    if n <= spec.n_eval:
        return None
    path = spec.dir / cnf_metric.SAMPLES_FILE
    saved = target.counter.snapshot()
    try:
        x = sampler.sample(n, torch.Generator().manual_seed(stable_int(spec.cell_seed, "cnf")))
    finally:
        target.counter.energy_evals, target.counter.grad_evals = (saved["energy_evals"],
                                                                  saved["grad_evals"])
    x = _check_samples(x, dataclasses.replace(spec, n_eval=n), target)
    rows.write_npy(path, x.numpy())
    return x


# What the sampler's fit info may report about its own health (samplers/base.py documents it).
HEALTH_KEYS = ("budget_binding", "acceptance_mean", "acceptance_min")
LOW_ACCEPTANCE = 0.01


def health_columns(row: dict, info: dict, budget: dict) -> list[str]:
    """Copy the sampler's health into row columns; return the cell's warnings (sampler's own,
    plus a time-bound budget, which makes the numbers depend on the machine's speed)."""
    for key in HEALTH_KEYS:
        row[key] = info.get(key, "" if key == "budget_binding" else math.nan)
    warnings = [str(w) for w in (info.get("warnings") or [])]
    if row["budget_binding"] == "seconds":
        warnings.append(f"budget bound by max_seconds={budget.get('max_seconds')}: the result "
                        f"depends on this machine's speed and is not reproducible by the seed")
    acc = row["acceptance_mean"]
    if isinstance(acc, (int, float)) and acc < LOW_ACCEPTANCE and not any(
            "acceptance" in w for w in warnings):
        warnings.append(f"acceptance {acc:.3g} below 1 %: the chains are frozen")
    return warnings


def _check_losses(info: dict) -> None:
    for k, v in info.items():
        if "loss" in k and isinstance(v, (int, float)) and not math.isfinite(v):
            raise samplers.Diverged(f"fit info {k} = {v}")


def _check_samples(x, spec: CellSpec, target) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.shape != (spec.n_eval, target.dim):
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise RuntimeError(f"{spec.sampler}.sample({spec.n_eval}) must return a tensor "
                           f"[{spec.n_eval}, {target.dim}], got {shape}")
    x = x.detach().to("cpu", torch.float32)
    samplers.check_finite(x, f"{spec.sampler} samples")
    return x


def spec_asdict(spec: CellSpec) -> dict:
    return dataclasses.asdict(spec)
