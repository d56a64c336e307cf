"""``python -m runners.grid targets=all samplers=all profile=smoke``: the benchmark grid.

Every (target, sampler, seed) cell is fitted under its target's budget, sampled, scored and written
as its own row (runners/cell.py); rows are collected into results.csv, tables and figures
(runners/collect.py). Re-running the same command skips finished cells (ok, skipped, diverged)
and retries failed ones (error, timeout). Exit status: 0 when the grid ran (failed cells are
data, listed in the summary), 2 for bad input, unusable reference data or an ``out=`` another
grid holds (nothing written), 128 + the signal when interrupted (130 Ctrl-C/SIGINT, 143 SIGTERM).

Without ``profile=`` the paper's settings are used and the cost is estimated before dispatch;
on a terminal the user is asked to confirm (``yes=true`` skips the question); a non-interactive
run without ``yes=true`` prints the estimate and exits 2 instead of starting days of work.

Before dispatch the grid resolves every target's reference (runners/references.py): a corrupt one
exits 2, a missing one prints a warning block and its cells are counted as "ok, unscored".
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from submitit.core.utils import FailedSubmissionError

import samplers
import targets
from targets.data import OFFLINE_ENV

from . import config as cfgmod
from . import cnf as cnf_metric, plugins, references, rows, scoring
from .cell import CellSpec
from .launch import Interrupted, Progress, dispatch, resolve_launcher
from .lock import LockHeld, RunLock, remove_stale_claims


HELP = {
    "targets": "all, or names: gmm40,dw4 or [gmm40,dw4]",
    "samplers": "all, or names: idem,mala",
    "seeds": "n (seeds 0..n-1) or a list [0,4]; None: the profile's",
    "profile": "smoke | paper | path/to/preset.yaml; None: paper settings, cost estimate first",
    "launcher": "auto (slurm where `scontrol ping` answers, else local) | local | slurm | debug",
    "out": "output folder; None: results/runs/<profile>",
    "n_eval": "samples scored per cell (vs as many reference points); None: the profile's",
    "base_seed": "mixed into every cell seed",
    "workers": "local: cells at once (0: CPU cores // threads)",
    "threads": "torch threads per cell",
    "timeout_min": "local/debug: wall limit of one cell (status timeout)",
    "collect": "write results.csv, tables and figures at the end",
    "figures": "with collect: also the figures",
    "yes": "do not ask before an unprofiled (paper) run",
    "plugins": "extra sampler/target modules or .py files (mod,path/x.py); installed entry points "
               "load by themselves",
    "budgets": "budget axis: energy-evaluation ladder, e.g. [1e5,1e6,1e7] (one cell per rung)",
    "budgets_s": "budget axis: wall-seconds ladder of fit, e.g. [30,300] (machine-dependent)",
    "budgets_steps": "budget axis: ladder of the sampler's steps, e.g. [100,1000] (optimiser steps "
                     "or chain transitions; runners.curve)",
}


def help_text(argv: list[str] | None = None) -> str:
    cli = [a.split("=", 1)[1] for a in (argv or []) if a.startswith("plugins=")]
    cfgmod.load_plugins(cfgmod.plugin_modules(",".join(cli) or None))
    g = cfgmod.GridConfig()
    lines = [__doc__.strip(), "", "Options (key=value, omegaconf syntax):"]
    for f in dataclasses.fields(cfgmod.GridConfig):
        if f.name != "slurm":
            lines.append(f"  {f.name:<12} {HELP.get(f.name, '')} [default {getattr(g, f.name)!r}]")
    lines.append("  slurm.<field>  " + ", ".join(
        f"{f.name}={getattr(g.slurm, f.name)!r}" for f in dataclasses.fields(cfgmod.SlurmConfig)))
    lines.append("  <sampler>.<key>=<value>  override a sampler's Config on every target")
    lines.append("")
    lines.append("Targets: " + ", ".join(f"{n} ({targets.get(n).pretty_name})" for n in targets.names()))
    lines.append("Samplers:")
    for name in samplers.names():
        cls = samplers.get(name)
        keys = ", ".join(cfgmod.config_keys(name))
        lines.append(f"  {name} ({getattr(cls, 'pretty_name', name)}): {keys}")
    plugin_lines = plugins.describe()
    if plugin_lines:
        lines.append("Plugins (entry points boltzbench.samplers / boltzbench.targets, plugins=):")
        lines += plugin_lines
    builtin = sorted(p.stem for p in cfgmod.PROFILE_DIR.glob("*.yaml"))
    lines.append("Profiles: " + ", ".join(builtin) + " or path/to/preset.yaml")
    lines.append("")
    lines.append("Examples:\n  python -m runners.grid targets=all samplers=all profile=smoke\n"
                 "  python -m runners.grid targets=gmm40,dw4 samplers=mala seeds=[0,4] "
                 "mala.step_size=0.1 profile=smoke\n"
                 "  python -m runners.grid profile=paper launcher=slurm slurm.partition=gpu "
                 "slurm.cells_per_job=4")
    return "\n".join(lines)


def build_specs(grid: cfgmod.Grid, launcher: str = "local") -> list[CellSpec]:
    """One cell per (target, sampler, seed), or per rung of the target's budget ladder; the rungs
    of one ladder are consecutive, in increasing budget (runners/ladder.py)."""
    fingerprints = {t: targets.get(t).fingerprint for t in grid.targets}
    out = str(Path(grid.out).resolve())
    timeout_s = None if launcher == "slurm" else 60.0 * grid.config.timeout_min
    specs = []
    for t in grid.targets:
        for s in grid.samplers:
            for seed in grid.seeds:
                common = dict(target=t, target_fingerprint=fingerprints[t], sampler=s, seed=seed,
                              base_seed=grid.config.base_seed,
                              sampler_config=grid.sampler_configs[(s, t)], n_eval=grid.n_eval,
                              metric_options=grid.metric_options, out=out,
                              threads=grid.config.threads, profile=grid.profile_name,
                              plugins=grid.plugins, timeout_s=timeout_s)
                if t not in grid.ladders:
                    specs.append(CellSpec(budget=grid.budgets[t], **common))
                    continue
                unit, rungs = grid.ladders[t]
                below, group = None, ""
                for b in rungs:
                    spec = CellSpec(budget=b, budget_unit=unit, previous=below.key if below else "",
                                    previous_budget=below.budget if below else None,
                                    group=group, **common)
                    if not group:  # the first rung names the ladder
                        group = spec.key
                        spec = dataclasses.replace(spec, group=group)
                    specs.append(spec)
                    below = spec
    return specs


def energy_throughput(target_name: str, seconds: float = 0.3) -> float:
    """Energy+gradient evaluations per second of one thread on this machine (batch 256)."""
    t = targets.get(target_name)
    x = torch.randn(256, t.dim, generator=torch.Generator().manual_seed(0))
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        t.energy_and_grad(x)
        n += x.shape[0]
    return n / (time.perf_counter() - t0)


def estimate(grid: cfgmod.Grid, specs: list[CellSpec], workers: int) -> str:
    """Cells, energy evaluations and a rough wall time (energy cost only: a lower bound)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        speed = {t: energy_throughput(t) for t in grid.targets}
    finally:
        torch.set_num_threads(threads)
    evals, seconds = 0, 0.0
    for s in specs:
        b = s.budget
        cell_s = b["max_energy_evals"] / speed[s.target] if b.get("max_energy_evals") else None
        if b.get("max_seconds"):
            cell_s = min(cell_s or b["max_seconds"], b["max_seconds"])
        seconds += cell_s or 0.0
        evals += b.get("max_energy_evals") or 0
    wall = seconds / max(1, workers)
    lines = [f"[grid] cost estimate: {len(specs)} cells, up to {evals:.3g} energy evaluations",
             "[grid] energy throughput here (1 thread): " + ", ".join(
                 f"{t} {v:.3g}/s" for t, v in speed.items()),
             f"[grid] rough wall time on {workers} worker(s): {wall / 3600:.3g} h "
             f"({wall / 86400:.3g} days), energy cost only; networks add more"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help", "help") for a in argv):
        print(help_text(argv))
        return 0
    try:
        grid = cfgmod.parse(argv)
        for failure in plugins.FAILURES:  # reported; the other samplers run as usual
            print(f"warning: {failure.message()}", file=sys.stderr)
        launcher = resolve_launcher(grid.config.launcher)
        if launcher == "slurm" and not (shutil.which("srun") and shutil.which("sbatch")):
            raise cfgmod.ConfigError("launcher: got 'slurm' but srun/sbatch are not on the PATH; "
                                     "use launcher=local (or auto) on a machine without SLURM")
        specs = build_specs(grid, launcher)
    except cfgmod.ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cfg = grid.config
    report = references.resolve(grid.targets)
    if report.corrupt:
        print(references.corrupt_message(report), file=sys.stderr)
        return 2
    if report.missing:
        per_target = {t: sum(s.target == t for s in specs) for t in report.missing}
        print(references.missing_message(report, per_target), file=sys.stderr)
    workers = cfg.workers or max(1, (os.cpu_count() or 1) // cfg.threads)
    rungs = "".join(f" x {len(r)} budget(s) on {t}" for t, (_, r) in grid.ladders.items())
    print(f"[grid] {len(grid.targets)} target(s) x {len(grid.samplers)} sampler(s) x "
          f"{len(grid.seeds)} seed(s){rungs} = {len(specs)} cells | profile {grid.profile_name} | "
          f"launcher {launcher} | out {grid.out}", file=sys.stderr)
    if cfg.profile is None:
        print(estimate(grid, specs, workers), file=sys.stderr)
        if sys.stdin.isatty() and not cfg.yes:
            answer = input("[grid] no profile given: run the paper settings? "
                           "(profile=smoke is the quick one) [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                print("[grid] stopped before dispatch; nothing was run", file=sys.stderr)
                return 0
        elif not cfg.yes:  # nobody to ask: never start days of work by accident
            print("error: profile: not given, so the paper settings would run (estimate above) "
                  "and nobody can confirm in a non-interactive run; add yes=true (or profile=paper) "
                  "to run them, or choose profile=smoke (minutes)", file=sys.stderr)
            return 2
    try:
        check_out(Path(grid.out))
    except cfgmod.ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(grid.out)
    try:  # one grid at a time on `out`; a dead holder's lock is taken over
        run_lock = RunLock(out).acquire()
    except LockHeld as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    previous_offline = os.environ.get(OFFLINE_ENV)
    if report.missing:
        # Every download that could succeed has just been tried: cells, workers and collect must
        # not wait on the network again, once each (workers inherit the environment).
        os.environ[OFFLINE_ENV] = "1"
    try:  # held from the first read of a row to the last file collect writes
        return _run_locked(grid, specs, launcher, out)
    except KeyboardInterrupt:  # outside dispatch (rescoring, collect): no traceback either
        print("\n[grid] interrupted; finished rows are kept, re-run the command to resume",
              file=sys.stderr)
        return 130
    finally:
        run_lock.release()
        if previous_offline is None:
            os.environ.pop(OFFLINE_ENV, None)
        else:
            os.environ[OFFLINE_ENV] = previous_offline


def _run_locked(grid: cfgmod.Grid, specs: list[CellSpec], launcher: str, out: Path) -> int:
    """Resume, dispatch, summarise and collect, under the run lock of ``out``."""
    cfg = grid.config
    if stale := remove_stale_claims(out):
        print(f"[grid] removed {stale} stale claim file(s) left by a killed grid", file=sys.stderr)
    counts: dict[str, int] = {}
    todo, unscored = [], []
    for spec in specs:
        row = rows.read_row(spec.dir)
        if row is not None and row["status"] in rows.FINISHED:
            counts[row["status"]] = counts.get(row["status"], 0) + 1
            if row["status"] == "ok" and row.get("reference_source") == "missing":
                unscored.append((spec, row))
        else:
            todo.append(spec)
    rescore_finished(unscored)
    if len(todo) < len(specs):
        print(f"[grid] resuming: {len(specs) - len(todo)} finished cell(s) kept, "
              f"{len(todo)} to run", file=sys.stderr)
    progress = Progress(len(specs), len(specs) - len(todo))
    previous = {}
    try:
        # SIGTERM and SIGHUP stop it like Ctrl-C; a signal the shell set to ignore (SIGINT of a
        # background job, SIGHUP under nohup) stays ignored.
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            if sig == signal.SIGTERM or signal.getsignal(sig) is not signal.SIG_IGN:
                previous[sig] = signal.signal(sig, _raise_interrupt)
        dispatch(todo, cfg, launcher, out, progress, counts)
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        detail = getattr(exc, "detail", "")
        print(("\n" if progress.tty else "") + f"[grid] interrupted ({signal.Signals(signum).name}): "
              + (f"{detail}; " if detail else "")
              + "finished rows are kept, re-run the command to resume", file=sys.stderr)
        return 128 + signum
    except (FailedSubmissionError, subprocess.CalledProcessError) as exc:
        print(f"error: could not submit the cells ({launcher}): {exc}", file=sys.stderr)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    summary(specs)
    if cfg.collect and not todo and _collected_after_rows(out):
        print(f"[grid] nothing new since the last collect: {out / 'results.csv'} is up to date",
              file=sys.stderr)
    elif cfg.collect:
        from .collect import collect
        collect(out, figures=cfg.figures)
    return 0


def check_out(out: Path) -> None:
    """``out=`` must be a folder we can create and write into (checked by doing it: permissions
    alone miss read-only file systems and root). Raises ConfigError; leaves no probe behind."""
    if out.exists() and not out.is_dir():
        raise cfgmod.ConfigError(f"out: got {str(out)!r}, which is an existing file, not a folder; "
                                 f"choose a folder path (it is created if missing)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-probe-"):
            pass
    except OSError as exc:
        raise cfgmod.ConfigError(f"out: cannot write into {str(out)!r} ({exc.strerror or exc}); "
                                 f"choose a writable folder") from None


def _collected_after_rows(out: Path) -> bool:
    """Whether results.csv is newer than every row (so collecting again would change nothing)."""
    csv = out / "results.csv"
    if not csv.is_file():
        return False
    newest = max((p.stat().st_mtime for p in (out / "cells").glob(f"*/{rows.ROW_FILE}")), default=0)
    return csv.stat().st_mtime >= newest


def rescore_finished(cells: list) -> int:
    """Finished cells scored while their target had no reference (e.g. LJ-55 before
    ``python -m runners.make_reference lj55``): score their saved samples again when the
    reference now exists. Returns how many were rescored."""
    done, cache = 0, {}
    for spec, row in cells:
        path = spec.dir / rows.SAMPLES_FILE
        if not path.is_file():
            continue
        target = cache.setdefault(spec.target, targets.get(spec.target))
        x = torch.as_tensor(np.load(path), dtype=torch.float32)
        cnf_path = spec.dir / cnf_metric.SAMPLES_FILE
        cnf_x = torch.as_tensor(np.load(cnf_path), dtype=torch.float32) \
            if cnf_path.is_file() else None
        new = scoring.rescore(row, target, x, spec.metric_options, cache_dir=spec.dir,
                              cnf_samples=cnf_x)
        if new is not row:
            new["rescored_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
            rows.write_json(spec.dir / rows.ROW_FILE, new)
            done += 1
    if done:
        print(f"[grid] rescored {done} finished cell(s) against a reference that is now "
              f"available (their nll stays NaN)", file=sys.stderr)
    return done


def _raise_interrupt(signum, frame):
    """The grid's handler of SIGINT/SIGTERM/SIGHUP during dispatch: later signals are ignored
    while the workers are stopped (main restores the handlers), so cleanup is never cut short."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    raise Interrupted(signum)


def summary(specs: list[CellSpec]) -> dict[str, int]:
    """Print the status counts of the grid's cells and the reasons of those that failed."""
    counts: dict[str, int] = {}
    bad, warned = [], {}  # warning text -> the cells that carry it
    for spec in specs:
        row = rows.read_row(spec.dir) or {"status": "error", "reason": "no row written"}
        status = row["status"]
        if status == "ok" and row.get("reference_source") == "missing":
            status = "ok, unscored"  # ran, but nothing to score against: not a success to read
        counts[status] = counts.get(status, 0) + 1
        if row["status"] == "ok" and row.get("warnings"):
            for text in row["warnings"].split("; "):
                warned.setdefault(text, []).append(f"{spec.target}/{spec.sampler}/s{spec.seed}")
        if row["status"] not in ("ok",):
            bad.append(f"  {spec.target} / {spec.sampler} / seed {spec.seed}: {row['status']}: "
                       f"{row.get('reason', '')}"
                       + (f" (traceback {row['traceback']})" if row.get("traceback") else "")
                       + (f" (log {row['log']})" if row.get("log") and row["status"] == "error"
                          else ""))
    print("[grid] summary: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
          file=sys.stderr)
    for line in bad:
        print(line, file=sys.stderr)
    if warned:
        n = len({cell for cells in warned.values() for cell in cells})
        print(f"[grid] warnings in {n} ok cell(s):", file=sys.stderr)
        for text, cells in warned.items():
            shown = ", ".join(cells[:6]) + (f" and {len(cells) - 6} more" if len(cells) > 6 else "")
            print(f"  {text}: {shown}", file=sys.stderr)
    return counts


if __name__ == "__main__":
    sys.exit(main())
