"""Scoring a set of samples against a target's reference: the metric columns of a row.

Shared by the grid cells (runners/cell.py) and by external samples (runners/evaluate.py), so both
write the same columns. Protocol (documented in the README of runners):

* ``n`` samples are compared with the first ``n`` points of the reference *test* split (the same
  points for every sampler and seed, so differences between rows come from the samples only). If
  the split is smaller than ``n``, all of it is used and ``n_reference`` says so.
* Every metric in ``metrics.applicable(target, has_density)`` is computed; a metric that raises
  becomes NaN with its error text in ``metric_errors`` (the cell does not fail).
* Density metrics: ``nll``, ``log_z``, ``elbo``, ``ess`` through ``metrics.density.evaluate`` when
  the sampler has ``log_prob``; ``log_z``, ``elbo_path``, ``ess_path`` from the sampler's own
  path-space importance weights when it exposes ``log_weights`` (PIS/DDS: exact path weights, no
  marginal density; metrics/density.py says why they get columns of their own).
* A target without a reference (LJ-55 before ``python -m runners.make_reference lj55``) gives NaN
  reference metrics and ``reference_source = "missing"`` with the reason.
* The target's evaluation counters are restored afterwards: metric energies never count as the
  sampler's spending.
"""
from __future__ import annotations

import json
import math
from typing import Callable

import torch

import metrics
from metrics import density
from targets import ReferenceDataError

from . import cnf as cnf_metric

DENSITY = tuple(dict.fromkeys(density.DENSITY_METRICS + density.PATH_METRICS))


def load_reference(target, n: int) -> tuple[torch.Tensor | None, dict]:
    """(first ``n`` test points or None, provenance columns)."""
    try:
        ref = target.reference("test")
        info = dict(target.reference_info("test"))
    except ReferenceDataError as exc:
        return None, {"reference_source": "missing", "reference_reason": str(exc)}
    cols = {k: info.get(k, "") for k in ("reference_source", "reference_file", "reference_sha256")}
    if "reference_converged" in info:  # our own MCMC references say whether they passed
        cols["reference_converged"] = bool(info["reference_converged"])
    return ref[:n], cols


def _weights_metrics(log_w: torch.Tensor) -> dict[str, float]:
    zeros = torch.zeros_like(log_w, dtype=torch.float64)
    return {"log_z": density.log_z(log_w, zeros), "elbo_path": density.elbo(log_w, zeros),
            "ess_path": density.ess(log_w, zeros)}


def score(target, samples: torch.Tensor, *, log_prob: Callable | None = None,
          log_w: torch.Tensor | None = None, metric_options: dict | None = None,
          cache_dir=None, cnf_samples: torch.Tensor | None = None, only=None
          ) -> tuple[dict[str, float], dict[str, str], dict]:
    """Metric values for ``samples [n, dim]``.

    Returns ``(values, errors, reference_columns)``: ``values`` has one float per applicable
    metric (NaN where undefined or failed), ``errors`` maps failed metric names to their error
    text, ``reference_columns`` holds reference_source/file/sha256 and ``n_reference``.
    ``nll_cnf`` (opt-in: ``metric_options.nll_cnf``) trains on ``cnf_samples`` (default
    ``samples``) and caches its CNF in ``cache_dir`` (runners/cnf.py). ``only``: compute just
    these metric names.
    """
    opts = metric_options or {}
    has_density = log_prob is not None or log_w is not None
    ref, ref_cols = load_reference(target, samples.shape[0])
    ref_cols["n_reference"] = 0 if ref is None else int(ref.shape[0])
    names = metrics.applicable(target, log_prob is not None, path_weights=log_w is not None)
    if only is not None:
        names = [n for n in names if n in only]
    values: dict[str, float] = {}
    errors: dict[str, str] = {}
    snapshot = target.counter.snapshot()
    try:
        for name in names:
            if name in DENSITY:
                continue
            if ref is None:
                values[name] = math.nan
                continue
            try:
                values[name] = float(metrics.get(name)(samples, ref, target, **opts.get(name, {})))
            except Exception as exc:  # noqa: BLE001 - recorded per metric, the cell goes on
                values[name] = math.nan
                errors[name] = f"{type(exc).__name__}: {exc}"
        if has_density and (only is None or set(only) & set(DENSITY)):
            values.update(_density_metrics(target, samples, ref, log_prob, log_w, errors))
        if cnf_metric.enabled(opts) and (only is None or cnf_metric.NAME in only):
            values.update(_cnf_metric(target, samples if cnf_samples is None else cnf_samples,
                                      ref is not None, opts, cache_dir, errors))
    finally:
        target.counter.energy_evals = snapshot["energy_evals"]
        target.counter.grad_evals = snapshot["grad_evals"]
    return values, errors, ref_cols


def _density_metrics(target, samples, ref, log_prob, log_w, errors) -> dict[str, float]:
    out = {name: math.nan for name in (density.PATH_METRICS if log_w is not None
                                        else density.DENSITY_METRICS)}
    try:
        if log_w is not None:
            out.update(_weights_metrics(log_w))
        elif ref is not None:
            out.update(density.evaluate(target, log_prob, samples, ref))
        else:  # no reference: everything but the NLL
            x = samples.to(torch.float32)
            if getattr(target, "n_particles", None):
                x = target.remove_mean(x)
            with torch.no_grad():
                lq = log_prob(x)
                lp = -target.energy(x)
            lp = torch.where(torch.isnan(lp), torch.full_like(lp, -math.inf), lp)
            out.update({"log_z": density.log_z(lp, lq), "elbo": density.elbo(lp, lq),
                        "ess": density.ess(lp, lq)})
    except Exception as exc:  # noqa: BLE001
        errors["density"] = f"{type(exc).__name__}: {exc}"
    return out


def _cnf_metric(target, samples, has_ref, opts, cache_dir, errors) -> dict:
    out = {cnf_metric.NAME: math.nan}
    if not has_ref:
        return out
    try:
        out.update(cnf_metric.columns(target, samples, target.reference("test"), opts, cache_dir))
    except Exception as exc:  # noqa: BLE001 - recorded per metric, the cell goes on
        errors[cnf_metric.NAME] = f"{type(exc).__name__}: {exc}"
    return out


def rescore(row: dict, target, samples: torch.Tensor, metric_options: dict | None = None,
            cache_dir=None, cnf_samples: torch.Tensor | None = None) -> dict:
    """A row scored while the target had no reference, scored again now that it has one, from
    its saved samples. Sample-only columns are kept; ``nll`` needs the sampler itself and stays
    NaN (noted in ``metric_errors``)."""
    values, errors, ref_cols = score(target, samples, metric_options=metric_options,
                                     cache_dir=cache_dir, cnf_samples=cnf_samples)
    if ref_cols["reference_source"] == "missing":
        return row
    old = json.loads(row["metric_errors"]) if row.get("metric_errors") else {}
    errors = {**{k: v for k, v in old.items() if k in DENSITY}, **errors}
    if "nll" in row:
        errors["nll"] = "not rescored: the NLL needs the sampler's density, not only its samples"
    out = {k: v for k, v in row.items() if k != "reference_reason"}
    out.update(ref_cols, **values, reason="", metric_errors=json.dumps(errors, sort_keys=True))
    out["warnings"] = "; ".join(w for w in str(row.get("warnings") or "").split("; ")
                                if w and not w.startswith("reference missing"))
    return out
