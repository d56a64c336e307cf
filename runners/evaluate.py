"""``python -m runners.evaluate target=lj13 samples=FILE.npy [out=DIR] [label=NAME] [n_eval=1000]``

Scores samples produced by any code with the grid's metrics and writes the same row format into
``DIR/cells/<key>/`` (default DIR: results/runs/external), so ``runners.collect`` puts them in the
tables beside the grid's samplers. The first ``n_eval`` samples are used (all of them if fewer),
compared with as many reference test points (runners/scoring.py). Samples may be ``[n, dim]`` or
``[n, n_particles, spatial_dim]``, in a ``.npy``, ``.npz`` (one array, or one named ``samples``) or
``.pt`` (one tensor) file of real floats; particle samples are made mean-free. Anything else is
refused with exit 2 before a file is written. Exit 1 when the samples cannot be scored: no usable
reference (the message says how to get it), non-finite samples (row status ``diverged``) or a
metric that failed. No energy is charged to a sampler: ``energy_evals`` is empty (unknown).

``metrics=a,b`` computes only those metrics; ``metrics=nll_cnf`` (or any ``nll_cnf.<option>=``)
turns on the CNF likelihood (docs/metrics.md, "nll_cnf"), which trains on up to its ``n_train``
rows of the whole file (not only the first ``n_eval``) and caches the CNF in the row's folder, so
the same command again reuses it. Example: ``metrics=nll_cnf nll_cnf.steps=2000``.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

import metrics
import targets
from . import cnf as cnf_metric, references, rows, scoring
from .cell import _now

USAGE = ("usage: python -m runners.evaluate target=NAME samples=FILE.{npy,npz,pt} [out=DIR] "
         "[label=NAME] [n_eval=N] [metrics=a,b,...] [nll_cnf.OPTION=VALUE ...]")
KEYS = ("target", "samples", "out", "label", "n_eval", "metrics")


class EvalError(ValueError):
    pass


def _parse(argv: list[str]) -> dict:
    opts, cnf_opts = {}, {}
    for tok in argv:
        key, eq, val = tok.partition("=")
        if eq and key.startswith("nll_cnf."):
            cnf_opts[key[len("nll_cnf."):]] = _value(val)
            continue
        if not eq or key not in KEYS:
            raise EvalError(f"argument {tok!r}: expected key=value with key in {', '.join(KEYS)} "
                            f"or nll_cnf.<option>")
        opts[key] = val
    allowed = metrics.names() + list(metrics.DENSITY_METRICS) + list(metrics.OPT_IN)
    if "metrics" in opts:
        opts["metrics"] = [m for m in opts["metrics"].split(",") if m]
        bad = [m for m in opts["metrics"] if m not in allowed]
        if bad or not opts["metrics"]:
            raise EvalError(f"metrics: got {bad or opts['metrics']}; allowed: {', '.join(allowed)}")
    if cnf_opts and "nll_cnf" not in opts.get("metrics", ["nll_cnf"]):
        raise EvalError("nll_cnf.<option> given but metrics= does not include nll_cnf")
    if cnf_opts or "nll_cnf" in opts.get("metrics", []):
        try:
            metrics.nll_cnf.NLLCNFOptions.from_dict(cnf_opts)
        except ValueError as exc:
            raise EvalError(str(exc)) from None
        opts["nll_cnf"] = cnf_opts
    for req in ("target", "samples"):
        if req not in opts:
            raise EvalError(f"{req} is required. {USAGE}")
    if opts["target"] not in targets.names():
        raise EvalError(f"target: got {opts['target']!r}; allowed: {', '.join(targets.names())}")
    if not Path(opts["samples"]).is_file():
        raise EvalError(f"samples: file {opts['samples']!r} does not exist")
    label = opts.get("label")
    if label is not None and not re.fullmatch(r"[A-Za-z0-9_.+-]+", label):
        raise EvalError(f"label: got {label!r}; allowed characters: letters, digits, _ . + -")
    try:
        opts["n_eval"] = int(opts.get("n_eval", 1000))
        if opts["n_eval"] < 2:
            raise ValueError
    except ValueError:
        raise EvalError(f"n_eval: got {opts.get('n_eval')!r}; expected an integer >= 2") from None
    return opts


def _value(text: str):
    """``nll_cnf.steps=2000`` -> 2000; floats, null/none and true/false likewise; else the text."""
    low = text.lower()
    if low in ("null", "none"):
        return None
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


FORMATS = (".npy", ".npz", ".pt")


def _read_array(path: str) -> np.ndarray:
    """The one array in ``path``: ``.npy``; ``.npz`` with one array (or one named ``samples``);
    ``.pt`` holding a tensor (loaded with ``weights_only=True``: never unpickles code)."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise EvalError(f"samples: {path!r} has suffix {suffix or '(none)'!r}; allowed: "
                        f"{', '.join(FORMATS)}")
    try:
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                keys = list(z.keys())
                if len(keys) != 1 and "samples" not in keys:
                    raise EvalError(f"samples: {path!r} holds arrays {keys}; expected one array, "
                                    f"or one named 'samples'")
                return z["samples" if "samples" in keys else keys[0]]
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except EvalError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the reader says, the file is the problem
        raise EvalError(f"samples: cannot read {path!r} as {suffix}: "
                        f"{' '.join(str(exc).split())[:300]}") from None
    if not isinstance(obj, torch.Tensor):
        raise EvalError(f"samples: {path!r} holds a {type(obj).__name__}; expected one tensor")
    if obj.is_complex():
        raise EvalError(f"samples: {path!r} has complex dtype {obj.dtype}; expected real floats")
    return obj.detach().to(torch.float64 if obj.dtype == torch.float64 else torch.float32).numpy() \
        if obj.is_floating_point() else obj.numpy()


def load_samples(path: str, target) -> np.ndarray:
    x = _read_array(path)
    if not np.issubdtype(x.dtype, np.floating):
        kind = "complex" if np.iscomplexobj(x) else str(x.dtype)
        raise EvalError(f"samples: {path!r} has dtype {kind}; expected real floating-point "
                        f"coordinates (float16/32/64); complex, integer, boolean, string and "
                        f"object arrays are refused")
    if x.ndim == 3 and target.n_particles and x.shape[1:] == (target.n_particles, target.spatial_dim):
        x = x.reshape(x.shape[0], -1)
    if x.ndim != 2 or x.shape[1] != target.dim or x.shape[0] < 2:
        want = f"[n, {target.dim}]" + (f" or [n, {target.n_particles}, {target.spatial_dim}]"
                                       if target.n_particles else "")
        raise EvalError(f"samples: {target.name} needs an array {want} with n >= 2, got {x.shape}")
    return x


def evaluate(target_name: str, samples_path: str, out: str, label: str, n_eval: int = 1000,
             only: list[str] | None = None, nll_cnf: dict | None = None) -> dict:
    """Score the file's first ``n_eval`` samples; ``only``: just these metrics; ``nll_cnf``:
    options of the opt-in CNF likelihood (None = off unless ``only`` names it), which trains on
    up to its ``n_train`` samples of the whole file."""
    target = targets.get(target_name)
    full = torch.as_tensor(np.asarray(load_samples(samples_path, target)), dtype=torch.float32)
    x = full[:n_eval]
    if target.n_particles:
        x, full = target.remove_mean(x), target.remove_mean(full)
    if nll_cnf is None and only is not None and "nll_cnf" in only:
        nll_cnf = {}
    metric_options = {} if nll_cnf is None else {"nll_cnf": nll_cnf}
    digest = hashlib.sha256(Path(samples_path).read_bytes()).hexdigest()
    cfg = {"target": target.name, "target_fingerprint": target.fingerprint, "sampler": label,
           "samples_sha256": digest, "n_eval": n_eval, "metric_spec_version": metrics.SPEC_VERSION}
    if only is not None or metric_options:  # keeps the key of a plain run unchanged
        cfg.update(metrics=only, metric_options=metric_options)
    key = f"{target.name}-{label}-ext-" + hashlib.sha256(
        json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:12]
    d = rows.cell_dir(out, key)
    row = {"target": target.name, "target_fingerprint": target.fingerprint,
           "target_pretty": target.pretty_name, "sampler": label, "sampler_pretty": label, "seed": 0,
           "cell_seed": None, "cell_key": key, "profile": "external", "status": "ok", "reason": "",
           "energy_evals": None, "grad_evals": None, "fit_seconds": math.nan,
           "sample_seconds": math.nan, "n_eval": int(x.shape[0]),
           "code_version": rows.code_version(), **rows.library_versions(),
           "metric_spec_version": metrics.SPEC_VERSION, "config": json.dumps(cfg, sort_keys=True),
           "external_file": str(Path(samples_path).resolve()), "started_at": _now()}
    if not torch.isfinite(x).all():
        row.update(status="diverged", reason=f"{int((~torch.isfinite(x)).sum())} non-finite values")
    else:
        rows.write_npy(d / rows.SAMPLES_FILE, x.numpy())
        row["samples_file"] = str(d / rows.SAMPLES_FILE)
        t0 = time.perf_counter()
        values, errors, ref_cols = scoring.score(target, x, metric_options=metric_options,
                                                 cache_dir=d, cnf_samples=full, only=only)
        row.update(ref_cols, **values, metric_seconds=time.perf_counter() - t0,
                   metric_errors=json.dumps(errors, sort_keys=True) if errors else "",
                   reason=ref_cols.get("reference_reason", ""))
    row["peak_memory_mb"] = rows.peak_memory_mb()
    row["finished_at"] = _now()
    rows.write_json(d / rows.ROW_FILE, row)
    return row


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or any(a in ("-h", "--help") for a in argv):
        print(USAGE + "\n\n" + __doc__.strip())
        return 0 if argv else 2
    try:
        opts = _parse(argv)
        target = targets.get(opts["target"])
        load_samples(opts["samples"], target)  # validate before writing anything
    except EvalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = references.resolve([opts["target"]])
    if report.corrupt or report.missing:  # nothing to score against: say so, write nothing
        reason = {**report.corrupt, **report.missing}[opts["target"]]
        print(f"error: cannot score against {opts['target']}'s reference: {reason}\n"
              f"fix: {references.FIX.get(opts['target'], 'see the README, Reference data')}",
              file=sys.stderr)
        return 1
    label = opts.get("label") or Path(opts["samples"]).stem
    row = evaluate(opts["target"], opts["samples"], opts.get("out", "results/runs/external"),
                   label, opts["n_eval"], only=opts.get("metrics"), nll_cnf=opts.get("nll_cnf"))
    print(f"[evaluate] {row['target']} / {label}: status {row['status']} -> "
          f"{rows.cell_dir(opts.get('out', 'results/runs/external'), row['cell_key'])}")
    if row["status"] != "ok":
        print(f"error: {row['status']}: {row['reason']}", file=sys.stderr)
        return 1
    errors = json.loads(row["metric_errors"]) if row.get("metric_errors") else {}
    for m in metrics.names() + list(metrics.DENSITY_METRICS) + list(cnf_metric.COLUMNS):
        if m in row:
            why = f"   ({errors[m]})" if m in errors else ""
            print(f"  {m:<20} {float(row[m]):.6g}{why}")
    if errors:
        print(f"error: {len(errors)} metric(s) could not be computed: {', '.join(errors)}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
