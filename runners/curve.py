"""``python -m runners.curve targets=gmm40 samplers=idem outer=400 every=25 [grid options]``

A learning curve of iDEM / pDEM: train outer iteration by outer iteration (``n_inner`` optimiser
steps, then for iDEM a generation into the buffer) and, every ``every`` outer iterations, draw
``n_eval`` samples and score them with the grid's metrics (runners/scoring.py, same reference
points). One CSV row per evaluated sample set is appended to ``OUT/curve.csv`` as soon as it
exists, so a run stopped at any point keeps every finished evaluation.

It takes the grid's ``key=value`` options for exactly one target and one sampler (``profile``,
``seeds=[k]`` (default ``[0]``), ``threads``, ``base_seed``, ``n_eval``, per-sampler overrides
such as ``idem.n_mc=100``); the sampler config, cell seed and evaluation protocol are the grid
cell's, so the last row (batch 0) of a run of N outer iterations scores what a grid cell with
``idem.max_outer=N`` would sample (the grid's sampling generator, evaluated at that point).
Its own options: ``outer`` (outer iterations, default 100), ``every`` (default 10),
``batches`` (independent sample sets per evaluation, default 1; one row each, ``batch`` 0 drawn
with the grid cell's sampling seed) and ``select`` (``none``, the default, or ``val``).

``select=val`` reproduces the official code's model selection (reference-idem.md §3.1: the
checkpoint with the best ``val/2-Wasserstein``), for comparing with numbers obtained that way: at
every evaluation one more set of ``n_eval`` samples (its own seed) is scored by ``x_w2`` against
the target's *val* split (column ``val_x_w2``); whenever it improves, the sampler state is saved
to ``OUT/state_selected.pt``, and at the end ``OUT/selected.json`` names the selected outer
iteration with its test-split metrics (mean over the batches). Selection looks at reference data,
which a sampler in practice does not have, so the suite's own numbers never select; on DW-4 the
val and test splits share 2,535 configurations, so selection there also leaks test points.

At the end the sampler's ``state_dict`` is saved to ``OUT/state.pt``. The profile's energy
budget is not applied: ``outer`` is the budget, and each row records the energy evaluations
spent so far. Evaluation samples come from a generator separate from the training one, so
evaluating does not change the training trajectory. A divergence (NaN/inf loss or samples)
ends the curve with a row of status ``diverged`` and its reason, exit status 0.
"""
from __future__ import annotations

import csv
import io
import json
import math
import sys
import time
from pathlib import Path

import torch

import metrics
import samplers
import targets
from targets import ReferenceDataError
from . import rows, scoring
from .cell import cell_seed, stable_int
from .config import ConfigError, build_sampler_config, parse

OWN = {"outer": 100, "every": 10, "batches": 1}
SELECT = ("none", "val")
SUPPORTED = ("idem", "pdem")
METRIC_COLUMNS = ("x_w2", "x_w2_aligned", "energy_w1", "energy_w2", "energy_w2_sq", "dist_tvd",
                  "energy_tvd")


def _split(argv: list[str]) -> tuple[dict, list[str]]:
    own, rest = {**OWN, "select": "none"}, []
    for tok in argv:
        key, eq, val = tok.partition("=")
        if eq and key == "select":
            if val not in SELECT:
                raise ConfigError(f"select: got {val!r}; expected one of {', '.join(SELECT)}")
            own[key] = val
        elif eq and key in OWN:
            try:
                own[key] = int(val)
            except ValueError:
                raise ConfigError(f"{key}: got {val!r}; expected a positive integer") from None
            if own[key] < 1:
                raise ConfigError(f"{key}: got {own[key]}; expected a positive integer")
        else:
            rest.append(tok)
    return own, rest


FIELDS = ["target", "sampler", "seed", "cell_seed", "status", "reason", "outer", "batch", "steps",
          "energy_evals", "train_seconds", "eval_seconds", "mean_loss", *METRIC_COLUMNS, "val_x_w2",
          "code_version", "config"]


def _grid(argv: list[str]):
    if not any(t.startswith("profile=") for t in argv):
        argv = [*argv, "profile=paper"]
    if not any(t.startswith("seeds=") for t in argv):
        argv = [*argv, "seeds=[0]"]  # one seed unless told (profiles list several)
    grid = parse(argv)
    if len(grid.targets) != 1 or len(grid.samplers) != 1 or len(grid.seeds) != 1:
        raise ConfigError(f"a curve needs one target, one sampler and one seed; got targets "
                          f"{grid.targets}, samplers {grid.samplers}, seeds {grid.seeds}")
    if grid.samplers[0] not in SUPPORTED:
        raise ConfigError(f"samplers: got {grid.samplers[0]!r}; curves need outer iterations: "
                          f"{', '.join(SUPPORTED)}")
    return grid


def _score_batches(sampler, target, grid, cseed: int, batches: int) -> list[dict]:
    """Metric values of ``batches`` independent sample sets of ``n_eval``; batch 0 is drawn with
    the grid cell's sampling seed. Evaluation spends nothing (counters restored)."""
    spent = target.counter.snapshot()
    out = []
    for b in range(batches):
        seed = stable_int(cseed, "sample") if b == 0 else stable_int(cseed, "sample", b)
        x = sampler.sample(grid.n_eval, torch.Generator().manual_seed(seed))
        out.append(scoring.score(target, x, metric_options=grid.metric_options)[0])
    # sampling for the curve (LJ-55's negative-time gradients) is not training spend
    target.counter.energy_evals = spent["energy_evals"]
    target.counter.grad_evals = spent["grad_evals"]
    return out


def _val_reference(target) -> torch.Tensor:
    try:
        return target.reference("val")
    except (ReferenceDataError, ValueError, KeyError) as exc:
        raise ConfigError(f"select: got 'val', but {target.name} has no val split here ({exc}); "
                          f"use select=none") from None


def _val_x_w2(sampler, target, grid, cseed: int, k: int, val_ref: torch.Tensor) -> float:
    """x_w2 of a separate set of ``n_eval`` samples against the val split (spends nothing)."""
    spent = target.counter.snapshot()
    x = sampler.sample(grid.n_eval, torch.Generator().manual_seed(stable_int(cseed, "select", k)))
    opts = (grid.metric_options or {}).get("x_w2", {})
    value = float(metrics.get("x_w2")(x, val_ref[: x.shape[0]], target, **opts))
    target.counter.energy_evals = spent["energy_evals"]
    target.counter.grad_evals = spent["grad_evals"]
    return value


def _save_state(sampler, path: Path) -> None:
    buf = io.BytesIO()
    torch.save(sampler.state_dict(), buf)
    rows.write_bytes(path, buf.getvalue())


def _write_selected(out: Path, best: dict) -> None:
    text = json.dumps(best, indent=2, sort_keys=True) + "\n"
    rows.write_bytes(out / "selected.json", text.encode())
    print(f"[curve] selected by val x_w2: outer {best['outer']} (val x_w2 {best['val_x_w2']:.4g}); "
          f"test x_w2 {best['test'].get('x_w2', math.nan):.4g} -> {out / 'selected.json'}",
          flush=True)


def run(argv: list[str]) -> Path:
    own, grid_argv = _split(argv)
    grid = _grid(grid_argv)
    t_name, s_name, seed = grid.targets[0], grid.samplers[0], grid.seeds[0]
    out = Path(grid.config.out or f"results/runs/curve-{t_name}-{s_name}-s{seed}")
    target = targets.get(t_name)
    val_ref = _val_reference(target) if own["select"] == "val" else None
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(grid.config.threads)
    values = grid.sampler_configs[(s_name, t_name)]
    sampler = samplers.get(s_name)(build_sampler_config(s_name, values))
    cseed = cell_seed(grid.config.base_seed, t_name, s_name, seed)
    train_gen = torch.Generator().manual_seed(cseed)
    path = out / "curve.csv"
    print(f"[curve] {t_name} / {s_name} / seed {seed}: {own['outer']} outer iterations, scored "
          f"every {own['every']} on {own['batches']} x {grid.n_eval} samples -> {path}", flush=True)
    ident = {"target": t_name, "sampler": s_name, "seed": seed, "cell_seed": cseed,
             "code_version": rows.code_version()}
    best: dict | None = None
    t0 = time.perf_counter()
    sampler.setup(target, train_gen)
    train_s = time.perf_counter() - t0
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS, extrasaction="ignore")
        writer.writeheader()
        for k in range(1, own["outer"] + 1):
            t1 = time.perf_counter()
            try:
                loss = sampler.outer_iteration(train_gen)
                train_s += time.perf_counter() - t1
                if k % own["every"] and k != own["outer"]:
                    continue
                t2 = time.perf_counter()
                scored = _score_batches(sampler, target, grid, cseed, own["batches"])
                val_w2 = math.nan if val_ref is None else \
                    _val_x_w2(sampler, target, grid, cseed, k, val_ref)
            except samplers.Diverged as exc:  # a recorded outcome, as in a grid cell
                writer.writerow({**ident, "outer": k, "steps": sampler.steps,
                                 "status": "diverged", "reason": str(exc)})
                print(f"[curve] outer {k}: diverged: {exc}", flush=True)
                break
            common = {**ident, "status": "ok", "reason": "", "outer": k, "steps": sampler.steps,
                      "energy_evals": target.counter.snapshot()["energy_evals"],
                      "train_seconds": round(train_s, 2),
                      "eval_seconds": round(time.perf_counter() - t2, 2), "mean_loss": loss,
                      "config": json.dumps(rows.jsonable(values), sort_keys=True)}
            for b, scores in enumerate(scored):
                writer.writerow({**common, "batch": b, **scores,
                                 "val_x_w2": "" if val_ref is None else val_w2})
            fh.flush()
            if val_ref is not None and math.isfinite(val_w2) and \
                    (best is None or val_w2 < best["val_x_w2"]):
                best = {"outer": k, "steps": sampler.steps, "val_x_w2": val_w2,
                        "energy_evals": common["energy_evals"],
                        "criterion": "min x_w2 vs the val split (official val/2-Wasserstein)",
                        "test": {m: sum(sc[m] for sc in scored) / len(scored)
                                 for m in METRIC_COLUMNS if m in scored[0]}}
                _save_state(sampler, out / "state_selected.pt")
            shown = ", ".join(
                f"{m} {sum(sc[m] for sc in scored) / len(scored):.4g}"
                for m in METRIC_COLUMNS if m in scored[0])
            if val_ref is not None:
                shown += f"; val x_w2 {val_w2:.4g}"
            print(f"[curve] outer {k} ({train_s:.0f} s training): loss {loss:.4g}; {shown}",
                  flush=True)
    state = out / "state.pt"
    _save_state(sampler, state)
    if best is not None:
        _write_selected(out, best)
    print(f"[curve] sampler state after {sampler.outer} outer iterations -> {state}", flush=True)
    return path


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
    return 0


if __name__ == "__main__":
    sys.exit(main())
