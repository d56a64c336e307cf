"""``python -m runners.curve targets=<one> samplers=<one> steps=N every=M [grid options]``

A quality-vs-compute curve of one (target, sampler, seed): the grid's budget ladder
(runners/ladder.py, docs/budgets.md) run rung by rung in this process, so a curve point *is* a
grid cell, with the cell's key, row, saved samples and continuation. Every sampler has one:

* ``steps=N every=M``: a ladder of the sampler's own steps M, 2M, ..., N (optimiser steps of a
  learned sampler, transitions of MCMC chains, moves of SMC); N is always the last rung;
* ``outer=N every=M`` (iDEM, pDEM): the same in outer iterations, i.e. steps
  ``k * M * n_inner`` (default ``outer=100 every=10`` for these two);
* or the grid's own ladder options, ``budgets=[1e4,1e5,1e6]`` (energy evaluations),
  ``budgets_s=[...]`` (wall seconds) or ``budgets_steps=[...]``.

Each rung continues from the rung below's saved state where the sampler has ``state_dict``
(iDEM, pDEM, PIS, DDS, FAB, MALA, HMC, RWM: the point at N steps equals one fit of N steps, tested)
and runs fresh otherwise (SMC: each point is its own fit); the row's ``continuation`` says which.
A steps rung caps steps only (no energy or time cap: the ladder is the budget), and every row
records the energy evaluations and seconds spent, so the same curve is drawn against either.

Outputs, in ``out`` (default ``results/runs/curve-<target>-<sampler>-s<seed>``): the rung cells
under ``cells/`` (``python -m runners.collect out=...`` draws their budget figures), and
``curve.csv``, one row per (rung, sample batch), rewritten after every rung so a stopped curve
keeps its finished points. A rerun with the same options resumes: finished rungs are kept. The
curve stops at the first rung that does not finish ``ok`` (diverged, error, timeout: that row
records it, exit status 0); the grid, by contrast, runs the rungs above fresh.

Its own options besides the ladder: ``batches`` (sample sets scored per point, default 1: batch 0
is the cell's own, batches 1.. are drawn from the rung's saved state with their own seeds) and
``select`` (``none``, the default, or ``val``). ``select=val`` reproduces the official iDEM
code's model selection (reference-idem.md §3.1: the checkpoint with the best
``val/2-Wasserstein``), for comparing with numbers obtained that way: at every point one more set
of ``n_eval`` samples is scored by ``x_w2`` against the target's *val* split (``val_x_w2``), and
``selected.json`` names the best point with its test-split metrics (mean over the batches),
``state_selected.pt`` holds its sampler state. Selection looks at reference data, which a sampler
in practice does not have, so the suite's own numbers never select; on DW-4 the val and test
splits share 2,535 configurations, so selection there also leaks test points. Batches above 0 and
``select=val`` need a saved state, so samplers without ``state_dict`` (SMC) allow neither.

The other options are the grid's, for exactly one target, sampler and seed (``profile``,
default ``paper``; ``seeds=[k]``, default ``[0]``; ``n_eval``, ``threads``, ``base_seed``,
per-sampler overrides such as ``idem.n_mc=100``). ``OUT/state.pt`` is the top rung's sampler state.
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

import torch

import metrics
import samplers
import targets
from targets import ReferenceDataError
from . import ladder, rows
from .cell import CellSpec, run_cell, stable_int
from .config import ConfigError, build_sampler_config, load_plugins, parse
from .grid import build_specs, check_out
from .lock import LockHeld, RunLock
from .scoring import score

OWN_INT = ("outer", "steps", "every", "batches")
# every metric column a row can carry: registered, density, path-space and opt-in (nll_cnf)
METRICS = tuple(dict.fromkeys([*metrics.names(), *metrics.DENSITY_METRICS, *metrics.PATH_METRICS,
                               *metrics.OPT_IN, "log_z"]))
SELECT = ("none", "val")
OUTER_SAMPLERS = ("idem", "pdem")  # samplers with outer iterations (n_inner steps each)
LADDER_KEYS = tuple(ladder.CLI)
FIELDS = ["target", "sampler", "seed", "cell_seed", "status", "reason", "budget_unit", "rung",
          "outer", "batch", "steps", "energy_evals", "fit_energy_evals", "grad_evals", "network_evals",
          "train_seconds", "sample_seconds", "eval_seconds", "mean_loss", "ran_fresh",
          "continuation", "val_x_w2", "cell_key", "code_version", "config"]


def _split(argv: list[str]) -> tuple[dict, list[str]]:
    own, rest = {"select": "none"}, []
    for tok in argv:
        key, eq, val = tok.partition("=")
        if eq and key == "select":
            if val not in SELECT:
                raise ConfigError(f"select: got {val!r}; expected one of {', '.join(SELECT)}")
            own[key] = val
        elif eq and key in OWN_INT:
            try:
                own[key] = int(val)
            except ValueError:
                raise ConfigError(f"{key}: got {val!r}; expected a positive integer") from None
            if own[key] < 1:
                raise ConfigError(f"{key}: got {own[key]}; expected a positive integer")
        else:
            rest.append(tok)
    return own, rest


def _grid(argv: list[str]):
    if not any(t.startswith("profile=") for t in argv):
        argv = [*argv, "profile=paper"]
    if not any(t.startswith("seeds=") for t in argv):
        argv = [*argv, "seeds=[0]"]  # one seed unless told (profiles list several)
    grid = parse(argv)
    if len(grid.targets) != 1 or len(grid.samplers) != 1 or len(grid.seeds) != 1:
        raise ConfigError(f"a curve needs one target, one sampler and one seed; got targets "
                          f"{grid.targets}, samplers {grid.samplers}, seeds {grid.seeds}")
    return grid


def steps_ladder(own: dict, sampler: str, config) -> list[int]:
    """The rungs in steps from ``steps=``/``outer=`` and ``every=``: every, 2*every, ..., last."""
    if "steps" in own and "outer" in own:
        raise ConfigError(f"steps, outer: got steps={own['steps']} and outer={own['outer']}; "
                          f"give one (outer iterations are n_inner={config.n_inner} steps each)"
                          if hasattr(config, "n_inner") else
                          "steps, outer: got both; give steps=")
    per = 1
    if "outer" in own or ("steps" not in own and sampler in OUTER_SAMPLERS):
        if sampler not in OUTER_SAMPLERS:
            raise ConfigError(f"outer: got {own['outer']} for {sampler}, which has no outer "
                              f"iterations (only {', '.join(OUTER_SAMPLERS)}); use steps=N every=M")
        per, last = config.n_inner, own.get("outer", 100)
        every = own.get("every", 10)
    elif "steps" in own:
        last, every = own["steps"], own.get("every", max(1, own["steps"] // 10))
    else:
        raise ConfigError(f"steps: missing; a curve of {sampler} needs steps=N (every=M, default "
                          f"N/10) or a ladder: budgets=[...], budgets_s=[...] or budgets_steps=[...]")
    rungs = sorted({*range(every, last + 1, every), last})
    return [r * per for r in rungs]


def _specs(own: dict, grid) -> list[CellSpec]:
    t_name, s_name = grid.targets[0], grid.samplers[0]
    config = build_sampler_config(s_name, grid.sampler_configs[(s_name, t_name)])
    if t_name in grid.ladders:  # budgets= / budgets_s= / budgets_steps= (or the profile's)
        if "steps" in own or "outer" in own:
            raise ConfigError("steps/outer and budgets*: got both; a curve has one ladder")
    else:
        rungs = steps_ladder(own, s_name, config)
        grid.ladders[t_name] = ("steps", [ladder.rung_budget("steps", r) for r in rungs])
    specs = build_specs(grid, "debug")
    needs_state = own.get("batches", 1) > 1 or own["select"] == "val"
    if needs_state and not hasattr(samplers.get(s_name), "state_dict"):
        raise ConfigError(f"batches/select: {s_name} has no state_dict, so a point has only the "
                          f"cell's own sample set; use batches=1 select=none")
    # The curve process runs the cells itself; a stuck rung is stopped by the user (Ctrl-C).
    return [dataclasses.replace(s, timeout_s=None) for s in specs]


def restore(spec: CellSpec):
    """(sampler, target) as the rung's fit left them, from its saved ``state.pt``: loaded, then a
    ``fit`` under a spent budget, as a continued rung does, so that samplers which finish setting
    up when they see the target do so (tested: it samples what the cell sampled)."""
    load_plugins(spec.plugins)
    target = targets.get(spec.target)
    sampler = samplers.get(spec.sampler)(build_sampler_config(spec.sampler, spec.sampler_config))
    ckpt = torch.load(spec.dir / ladder.STATE_FILE, weights_only=False)
    sampler.load_state_dict(ckpt["state"])
    sampler.fit(target, samplers.Budget(max_energy_evals=1, max_seconds=1e-6),
                torch.Generator().manual_seed(spec.cell_seed))
    return sampler, target


def _extra_scores(spec: CellSpec, row: dict, grid, own: dict, val_ref) -> tuple[list, float]:
    """Metric dicts of batches 1.. and the val x_w2 of one more sample set (both drawn from the
    restored state with their own seeds; nothing is charged to the sampler)."""
    batches, val_w2 = own.get("batches", 1), math.nan
    if batches == 1 and val_ref is None:
        return [], val_w2
    sampler, target = restore(spec)
    extra = []
    for b in range(1, batches):
        x = sampler.sample(grid.n_eval, torch.Generator().manual_seed(
            stable_int(spec.cell_seed, "sample", b)))
        extra.append(score(target, x, metric_options=spec.metric_options)[0])
    if val_ref is not None:
        x = sampler.sample(grid.n_eval, torch.Generator().manual_seed(
            stable_int(spec.cell_seed, "select", int(spec.rung))))
        opts = (grid.metric_options or {}).get("x_w2", {})
        val_w2 = float(metrics.get("x_w2")(x, val_ref[: x.shape[0]], target, **opts))
    return extra, val_w2


def _val_reference(target_name: str) -> torch.Tensor:
    try:
        return targets.get(target_name).reference("val")
    except (ReferenceDataError, ValueError, KeyError) as exc:
        raise ConfigError(f"select: got 'val', but {target_name} has no val split here ({exc}); "
                          f"use select=none") from None


def _points(spec: CellSpec, row: dict, extra: list[dict], val_w2: float) -> list[dict]:
    """curve.csv rows of one rung: batch 0 from the cell's row, then the extra batches."""
    info = json.loads(row.get("fit_info") or "{}")
    outer = info.get("outer_iterations", "")
    if outer == "" and spec.sampler in OUTER_SAMPLERS and spec.budget_unit == "steps":
        # a rung that did not finish still names the outer iteration it was run to
        outer = int(spec.rung) // build_sampler_config(spec.sampler, spec.sampler_config).n_inner
    eval_s = sum(v for v in (row.get("sample_seconds"), row.get("metric_seconds"))
                 if isinstance(v, (int, float)) and math.isfinite(v))
    base = {"target": spec.target, "sampler": spec.sampler, "seed": spec.seed,
            "cell_seed": spec.cell_seed, "status": row["status"], "reason": row.get("reason", ""),
            "budget_unit": spec.budget_unit, "rung": spec.rung,
            "outer": outer, "steps": info.get("steps", ""),
            "energy_evals": row.get("energy_evals"), "fit_energy_evals": row.get("fit_energy_evals"),
            "grad_evals": row.get("grad_evals"), "network_evals": row.get("network_evals"),
            "train_seconds": row.get("fit_seconds"),
            "sample_seconds": row.get("sample_seconds"), "eval_seconds": round(eval_s, 3),
            "mean_loss": info.get("final_loss", ""), "ran_fresh": row.get("ran_fresh"),
            "continuation": row.get("continuation", ""),
            "val_x_w2": "" if math.isnan(val_w2) else val_w2, "cell_key": spec.key,
            "code_version": row.get("code_version", ""),
            "config": json.dumps(rows.jsonable(spec.sampler_config), sort_keys=True)}
    scored = [{m: row[m] for m in METRICS if m in row}] if row["status"] == "ok" else [{}]
    return [{**base, "batch": b, **s} for b, s in enumerate(scored + extra)]


def _write_csv(path: Path, points: list[dict]) -> None:
    import pandas as pd
    cols = FIELDS + [m for m in METRICS if any(m in p for p in points)]
    rows.write_text(path, pd.DataFrame(points, columns=cols).to_csv(index=False))


def _mean(points: list[dict], m: str) -> float:
    vals = [p[m] for p in points if isinstance(p.get(m), (int, float))]
    return sum(vals) / len(vals) if vals else math.nan


def run(argv: list[str]) -> Path:
    own, grid_argv = _split(argv)
    grid = _grid(grid_argv)
    t_name, s_name, seed = grid.targets[0], grid.samplers[0], grid.seeds[0]
    out = Path(grid.config.out or f"results/runs/curve-{t_name}-{s_name}-s{seed}")
    grid.out = str(out)
    specs = _specs(own, grid)
    val_ref = _val_reference(t_name) if own["select"] == "val" else None
    check_out(out)
    try:
        lock = RunLock(out).acquire()
    except LockHeld as exc:
        raise ConfigError(str(exc)) from None
    try:
        return _run_ladder(specs, grid, own, val_ref, out)
    finally:
        lock.release()


def _run_ladder(specs, grid, own, val_ref, out: Path) -> Path:
    path, points, best = out / "curve.csv", [], None
    unit = specs[0].budget_unit
    print(f"[curve] {specs[0].target} / {specs[0].sampler} / seed {specs[0].seed}: "
          f"{len(specs)} points ({unit} {', '.join(f'{s.rung:g}' for s in specs)}), "
          f"{own.get('batches', 1)} x {grid.n_eval} samples each -> {path}", flush=True)
    for spec in specs:
        row = rows.read_row(spec.dir)
        kept = row is not None and row["status"] == "ok" and (
            not hasattr(samplers.get(spec.sampler), "state_dict")
            or (spec.dir / ladder.STATE_FILE).is_file())
        if not kept:
            row = run_cell(spec)
        extra, val_w2 = _extra_scores(spec, row, grid, own, val_ref) \
            if row["status"] == "ok" else ([], math.nan)
        new = _points(spec, row, extra, val_w2)
        points += new
        _write_csv(path, points)
        if row["status"] != "ok":
            print(f"[curve] {unit} {spec.rung:g}: {row['status']}: {row.get('reason', '')}; the "
                  f"curve stops here", flush=True)
            break
        if math.isfinite(val_w2) and (best is None or val_w2 < best["val_x_w2"]):
            best = {"rung": spec.rung, "budget_unit": unit, "outer": new[0]["outer"],
                    "steps": new[0]["steps"], "val_x_w2": val_w2,
                    "energy_evals": new[0]["energy_evals"], "cell_key": spec.key,
                    "criterion": "min x_w2 vs the val split (official val/2-Wasserstein)",
                    "test": {m: _mean(new, m) for m in METRICS if m in new[0]}}
            rows.write_bytes(out / "state_selected.pt",
                             _sampler_state(spec.dir / ladder.STATE_FILE))
        shown = ", ".join(f"{m} {_mean(new, m):.4g}" for m in ("x_w2", "x_w2_aligned",
                                                                "energy_w2", "dist_tvd")
                          if m in new[0])
        kept_note = " (kept from an earlier run)" if kept else ""
        print(f"[curve] {unit} {spec.rung:g}{kept_note}: {new[0]['energy_evals']} energy evals, "
              f"{row['fit_seconds']:.1f} s fit; {shown}"
              + (f"; val x_w2 {val_w2:.4g}" if math.isfinite(val_w2) else ""), flush=True)
    top = specs[-1].dir / ladder.STATE_FILE
    if points and points[-1]["status"] == "ok" and top.is_file():
        rows.write_bytes(out / "state.pt", _sampler_state(top))
    if best is not None:
        rows.write_text(out / "selected.json", json.dumps(best, indent=2, sort_keys=True) + "\n")
        print(f"[curve] selected by val x_w2: {unit} {best['rung']:g} (val x_w2 "
              f"{best['val_x_w2']:.4g}); test x_w2 {best['test'].get('x_w2', math.nan):.4g} -> "
              f"{out / 'selected.json'}", flush=True)
    return path


def _sampler_state(cell_state: Path) -> bytes:
    """The sampler's own ``state_dict`` from a rung's ``state.pt`` (which adds the spending)."""
    import io
    buf = io.BytesIO()
    torch.save(torch.load(cell_state, weights_only=False)["state"], buf)
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help", "help") for a in argv):
        print(__doc__.strip())
        return 0
    try:
        run(argv)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\n[curve] interrupted; finished points are kept, re-run the command to resume",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
