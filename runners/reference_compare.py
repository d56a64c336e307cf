"""Reference sets compared with independent ones: energy TV/W1 and distance TV against a yardstick.

:func:`compare_energies` (``make_reference check``): a fresh DW-4 / LJ-13 run against the shipped
test split, beside the shipped val split against the same test split. :func:`crosscheck`
(``make_reference crosscheck lj55``, also run after every LJ-55 test build): our LJ-55 reference
against the official split where a user has it. Metrics are the suite's own (spec v1,
``metrics``).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from metrics import get as metric
from targets import data, get

from .reference_files import LJ55_MCMC_FILE, SPLITS, atomic_write


def compare_energies(target, fresh: torch.Tensor, m: int) -> dict:
    """Energy TV (spec v1, 200 bins on the reference) and energy W1 of ``fresh`` vs the shipped
    test split, and of the shipped val split vs test as a yardstick; ``m`` rows of each."""

    test, val = target.reference("test"), target.reference("val")
    m = min(m, fresh.shape[0], test.shape[0], val.shape[0])
    out = {"n_compared": m}
    for name in ("energy_tvd", "energy_w1"):
        out[name] = {"fresh_vs_test": metric(name)(fresh[:m], test[:m], target),
                     "val_vs_test": metric(name)(val[:m], test[:m], target)}
        out[name]["ratio"] = out[name]["fresh_vs_test"] / max(out[name]["val_vs_test"], 1e-12)
    e = {k: target.energy(v).double().numpy() for k, v in (("test", test), ("val", val))}
    out["shipped_energy"] = {k: {"mean": float(v.mean()), "std": float(v.std(ddof=1)),
                                 "n": int(v.size)} for k, v in e.items()}
    return out


# ----------------------------------------------------------------------------- LJ-55 cross-check
CROSSCHECK_METRICS = ("energy_w1", "energy_tvd", "dist_tvd")


def compare_with_official(target, ours: torch.Tensor, test: torch.Tensor, val: torch.Tensor,
                          ours_energy_mcse: float | None = None, m: int | None = None) -> dict:
    """Our reference against the official test split, next to the official val split against the
    same test split as a yardstick (what two sets of one law score), for energy W1, energy TV and
    interatomic-distance TV (spec v1, ``metrics``); the first ``m`` rows of each (all that the
    smallest has by default). ``ratio`` = ours-vs-test / val-vs-test; the mean-energy ``z``
    combines our MCSE (if given) with the official test set's standard error (its rows treated as
    independent, so |z| is if anything overstated). Verdict: consistent when every ratio <= 2
    and |z| <= 4, the thresholds ``check`` uses for DW-4/LJ-13."""

    m = min(m or math.inf, ours.shape[0], test.shape[0], val.shape[0])
    sets = {k: target.remove_mean(v[:m].float()) for k, v in
            (("ours", ours), ("test", test), ("val", val))}
    out = {"n_compared": int(m)}
    for name in CROSSCHECK_METRICS:
        a = metric(name)(sets["ours"], sets["test"], target)
        b = metric(name)(sets["val"], sets["test"], target)
        out[name] = {"ours_vs_test": a, "val_vs_test": b, "ratio": a / max(b, 1e-12)}
    e = {k: target.energy(v).double().numpy() for k, v in sets.items()}
    out["energy"] = {k: {"mean": float(v.mean()), "std": float(v.std(ddof=1)), "n": int(v.size)}
                     for k, v in e.items()}
    se_test = out["energy"]["test"]["std"] / math.sqrt(m)
    se_ours = ours_energy_mcse if ours_energy_mcse is not None else \
        out["energy"]["ours"]["std"] / math.sqrt(m)
    out["mean_energy_z"] = (out["energy"]["ours"]["mean"] - out["energy"]["test"]["mean"]) / \
        math.hypot(se_ours, se_test)
    reasons = [f"{k} ours/yardstick ratio {out[k]['ratio']:.2f} > 2" for k in CROSSCHECK_METRICS
               if not out[k]["ratio"] <= 2.0]
    if not abs(out["mean_energy_z"]) <= 4:
        reasons.append(f"mean energy differs by {out['mean_energy_z']:+.1f} standard errors")
    out["verdict"] = "consistent" if not reasons else "inconsistent: " + "; ".join(reasons)
    return out


def official_lj55(data_dir=None) -> tuple[Path, Path] | None:
    """The official LJ-55 test and val split files if both are present (``BOLTZBENCH_DATA``,
    the cache or ``data_dir``), else None: they are not downloaded for this."""
    files = [data.find_file(f, data_dir) for f in (get("lj55").reference_files[s] for s in SPLITS)]
    return (files[0], files[1]) if all(files) else None


def crosscheck(out_dir: Path, log=print, data_dir=None, m: int | None = None) -> dict | None:
    """Compare our ``mcmc_lj55_test.npy`` in ``out_dir`` with the official split where it is
    present; write ``crosscheck_lj55.json`` beside it. None (and a log line) when it is not."""
    target = get("lj55")
    found = official_lj55(data_dir)
    ours_path = Path(out_dir) / LJ55_MCMC_FILE
    if found is None:
        log(f"cross-check skipped: the official {' and '.join(target.reference_files.values())} "
            f"are not in {[str(d) for d in data.candidate_dirs(data_dir)]} (set BOLTZBENCH_DATA)")
        return None
    if not ours_path.is_file():
        raise data.ReferenceMissing(f"cross-check: no {ours_path}; build it with "
                                    f"`python -m runners.make_reference lj55 --out {out_dir}`")
    meta = get("lj55")._provenance(ours_path)
    if meta.get("sha256") != data.sha256_of(ours_path):
        raise data.ReferenceCorrupt(f"cross-check: {ours_path} does not match the sha256 in its "
                                    f"provenance; rebuild it with `python -m runners.make_reference "
                                    f"lj55 --out {out_dir}`")
    arrays = [torch.as_tensor(data.load_array(f, target.dim), dtype=torch.float32)
              for f in (ours_path, *found)]
    mcse = (meta.get("diagnostics") or {}).get("energy", {}).get("mcse_mean")
    cmp = compare_with_official(target, *arrays, ours_energy_mcse=mcse, m=m)
    report = {"format": "boltzbench-lj55-crosscheck/1", **target.describe(),
              "ours": {"file": str(ours_path), "sha256": data.sha256_of(ours_path),
                       "converged": (meta.get("diagnostics") or {}).get("converged")},
              "official": {s: {"file": str(f), "sha256": data.sha256_of(f)}
                           for s, f in zip(SPLITS, found)},
              "comparison": cmp, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    path = Path(out_dir) / "crosscheck_lj55.json"
    atomic_write(path, lambda f: f.write(json.dumps(report, indent=2).encode()))
    log("LJ-55 ours vs official test: " + ", ".join(
        f"{k} {cmp[k]['ours_vs_test']:.4f} (val-vs-test {cmp[k]['val_vs_test']:.4f})"
        for k in CROSSCHECK_METRICS) + f"; mean E z {cmp['mean_energy_z']:+.2f}; "
        f"{cmp['verdict']}; report {path}")
    return report

