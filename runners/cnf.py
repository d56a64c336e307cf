"""``nll_cnf`` in a grid cell or for a sample file: options, the CNF cache, the row's columns.

The metric itself is :mod:`metrics.nll_cnf`; this shell gives it the samplers' networks
(``samplers.dem.networks.build_network``: iDEM's MLP and EGNN), and keeps the fitted CNF in the
cell's folder (``cnf.pt``) keyed by everything that defines the fit (target fingerprint, the
training options, a hash of the training samples), so a cell scored again (rescore after a new
reference, a changed ``n_test``) reuses it instead of training again.

Columns (never charged to the sampler: its ``fit_seconds``/``energy_evals`` exclude them):
``nll_cnf``, ``cnf_train_steps``, ``cnf_train_seconds`` (of the fit, also when reused),
``cnf_seconds`` (this scoring: training if it trained + likelihood), ``cnf_reused``,
``cnf_n_train``, ``cnf_n_test``, ``cnf_nfe``, ``cnf_loss``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import time
from pathlib import Path

import numpy as np
import torch

from metrics import nll_cnf as M
from samplers.dem.networks import build_network

from . import rows

CNF_FILE = "cnf.pt"
SAMPLES_FILE = "cnf_samples.npy"  # extra samples a cell drew for the CNF (n_train > n_eval)
NAME = "nll_cnf"
# Options that change the likelihood pass only, not the fitted flow.
SCORE_ONLY = ("n_test", "atol", "rtol", "nll_batch_size", "divergence")
COLUMNS = ("nll_cnf", "cnf_train_steps", "cnf_train_seconds", "cnf_seconds", "cnf_reused",
           "cnf_n_train", "cnf_n_test", "cnf_nfe", "cnf_loss")


def enabled(metric_options: dict | None) -> bool:
    """Whether the profile opts in (``metric_options.nll_cnf: {...}``, even ``{}``)."""
    return NAME in (metric_options or {})


def options(metric_options: dict | None, target) -> M.NLLCNFOptions:
    return M.NLLCNFOptions.from_dict((metric_options or {}).get(NAME) or {}).resolved(target.name)


def n_train(metric_options: dict | None, target) -> int:
    """How many samples the CNF trains on (0 when nll_cnf is off)."""
    return options(metric_options, target).n_train if enabled(metric_options) else 0


def fit_key(target, opts: M.NLLCNFOptions, x: torch.Tensor) -> str:
    fit_opts = {k: v for k, v in dataclasses.asdict(opts).items() if k not in SCORE_ONLY}
    blob = json.dumps({"target_fingerprint": target.fingerprint, "options": fit_opts,
                       "samples_sha256": hashlib.sha256(
                           np.ascontiguousarray(x.numpy()).tobytes()).hexdigest()},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _load(path: Path, key: str, opts: M.NLLCNFOptions, target):
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - an unreadable cache is refitted, never trusted
        return None
    if saved.get("key") != key:
        return None
    field = M.build_field(build_network, opts, M.geometry(target), torch.Generator())
    field.load_state_dict(saved["state_dict"])
    field.eval()
    return field, json.loads(saved["info"])


def columns(target, samples: torch.Tensor, test: torch.Tensor, metric_options: dict | None,
            cache_dir: str | Path | None = None) -> dict:
    """The nll_cnf columns for ``samples [n, dim]`` scored on ``test`` (the test split)."""
    t0 = time.perf_counter()
    opts = options(metric_options, target)
    x = M.cnf.check_points(samples, M.geometry(target), "samples", M.cnf.MIN_TRAIN)
    x = M.geometry(target).remove_mean(x[:opts.n_train]).to(torch.float32)
    key = fit_key(target, opts, x)
    path = Path(cache_dir) / CNF_FILE if cache_dir is not None else None
    cached = _load(path, key, opts, target) if path is not None else None
    if cached is None:
        field, info = M.fit(build_network, x, target, opts)
        if path is not None:
            buf = io.BytesIO()
            torch.save({"key": key, "state_dict": field.state_dict(),
                        "options": json.dumps(dataclasses.asdict(opts), sort_keys=True),
                        "info": json.dumps(info, sort_keys=True)}, buf)
            rows.write_bytes(path, buf.getvalue())
    else:
        field, info = cached
    res = M.score(field, test, target, opts)
    return {"nll_cnf": res["nll_cnf"], "cnf_train_steps": int(info["steps"]),
            "cnf_train_seconds": float(info["seconds"]), "cnf_seconds": time.perf_counter() - t0,
            "cnf_reused": cached is not None, "cnf_n_train": int(info["n_train"]),
            "cnf_n_test": res["n_test"], "cnf_nfe": res["cnf_nfe"],
            "cnf_loss": float(info["loss"])}


# ---------------------------------------------------------------------------- floors
FLOOR_USAGE = "usage: python -m runners.cnf target=NAME [n_exact=10000] [nll_cnf.OPTION=VALUE ...]"


def floor(target, n_exact: int = 10000, metric_options: dict | None = None) -> dict:
    """The reference's own nll_cnf: the CNF fitted on the val split (GMM-40: ``n_exact`` fresh
    exact samples, generator seed 1) and scored on the test split; GMM-40 also gets the exact
    NLL −mean log p(y) of the same test points (its density is normalised)."""
    opts = {NAME: dict((metric_options or {}).get(NAME) or {})}
    if getattr(target, "has_exact_samples", False):
        x, source = target.sample_exact(n_exact, torch.Generator().manual_seed(1)), \
            f"{n_exact} fresh exact samples (seed 1)"
    else:
        x = target.reference("val")
        source = f"val split ({x.shape[0]} rows)"
    test = target.reference("test")
    out = {"target": target.name, "train_on": source,
           "options": dataclasses.asdict(options(opts, target)),
           **columns(target, x, test, opts)}
    if getattr(target, "log_Z", None) == 0.0:
        n = out["cnf_n_test"]
        with torch.no_grad():
            out["exact_nll"] = -float(target.log_prob(test[:n].double()).mean())
    return out


def main(argv: list[str] | None = None) -> int:
    import sys

    import targets
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or any(a in ("-h", "--help") for a in argv):
        print(FLOOR_USAGE + "\n\n" + (floor.__doc__ or ""))
        return 0 if argv else 2
    kv, cnf_opts = {}, {}
    for tok in argv:
        key, eq, val = tok.partition("=")
        if eq and key.startswith(NAME + "."):
            cnf_opts[key[len(NAME) + 1:]] = json.loads(val) if val not in ("", "null") else None
        elif eq and key in ("target", "n_exact"):
            kv[key] = val
        else:
            print(f"error: argument {tok!r}. {FLOOR_USAGE}", file=sys.stderr)
            return 2
    if kv.get("target") not in targets.names():
        print(f"error: target: got {kv.get('target')!r}; allowed: {', '.join(targets.names())}",
              file=sys.stderr)
        return 2
    res = floor(targets.get(kv["target"]), int(kv.get("n_exact", 10000)), {NAME: cnf_opts})
    print(json.dumps(res, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
