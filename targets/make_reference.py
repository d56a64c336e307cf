"""Reference sample sets by long MCMC, with provenance, and a check of the shipped ones.

    python -m targets.make_reference lj55 [--chains N] [--steps S] [--burn-in B] [--thin T]
        [--step-size h] [--kernel mala|hmc|rwm] [--leapfrog L] [--seed s] [--out DIR]
        [--split test|val] [--n N]
    python -m targets.make_reference check dw4|lj13 [same options]

Build: many parallel chains of a kernel from :mod:`samplers.kernels` (the same steps the MCMC
baselines use; energies only through ``target.energy_and_grad``), started from independent
random rotations and permutations of a low-energy structure (a Mackay icosahedron for LJ), the
step size adapted during burn-in only and then frozen, every ``thin``-th state kept. Writes
``mcmc_{target}_{split}.npy`` (float32, mean-free, ``[n, dim]``, rows shuffled) atomically and a
provenance ``.json`` beside it whose ``sha256`` the loader (``LJ55.reference``) checks.
The JSON's convergence verdict is computed, not asserted: split-R̂ and bulk ESS (samplers.diagnostics)
of the energy and radius of gyration across chains, equipartition E[x·∇E] = (N-1)·D (integration by
parts on the mean-free subspace), the least-accepting chain; per-coordinate R̂/ESS are reported.

Check: a fresh run on DW-4 / LJ-13 compared with the shipped test split by energy TV (spec v1)
and energy W1, next to the same numbers for the shipped val split as a yardstick.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from samplers import kernels
from samplers.diagnostics import ess, mcse_mean, split_rhat

from . import data, get

KERNELS = ("hmc", "mala", "rwm")
BUILD_TARGETS = ("lj55", "lj13", "dw4")
CHECK_TARGETS = ("dw4", "lj13")
SPLITS = ("test", "val")
# Step sizes that start adaptation in the right decade (HMC/MALA: leapfrog / Langevin step,
# RWM: proposal std, as the blog's tuned values: DW-4 0.5, LJ-13 0.025, LJ-55 0.0075).
DEFAULT_STEP = {"dw4": {"hmc": 0.1, "mala": 0.05, "rwm": 0.5},
                "lj13": {"hmc": 0.02, "mala": 0.005, "rwm": 0.025},
                "lj55": {"hmc": 0.015, "mala": 0.003, "rwm": 0.0075}}
TARGET_ACCEPT = {"hmc": 0.75, "mala": 0.574, "rwm": 0.234}  # usual optima (Roberts & Rosenthal)
# Verdict thresholds (Vehtari et al. 2021): rank-normalised split-R̂ < 1.01, bulk ESS > 400.
RHAT_OK, ESS_OK = 1.01, 400.0


# ----------------------------------------------------------------------------- starting points
def icosahedral_cluster(shells: int) -> torch.Tensor:
    """Mackay icosahedron with ``shells`` shells, unit radial spacing: ``[N, 3]`` float64,
    N = 1, 13, 55, 147 for shells 0..3. Shell k holds the icosahedron scaled by k with k-1
    points along each edge and the interior points of each triangular face."""
    phi = (1 + 5 ** 0.5) / 2
    v = torch.tensor([p for a, b in itertools.product((-1, 1), (-1, 1))
                      for p in ((0, a, b * phi), (a, b * phi, 0), (b * phi, 0, a))],
                     dtype=torch.float64)
    v = v / v.norm(dim=1, keepdim=True)
    d = torch.cdist(v, v)
    adj = (d - d[0][d[0] > 1e-9].min()).abs() < 1e-6
    edges = [(i, j) for i in range(12) for j in range(i + 1, 12) if adj[i, j]]
    faces = [(i, j, k) for i, j in edges for k in range(j + 1, 12) if adj[i, k] and adj[j, k]]
    pts = [torch.zeros(1, 3, dtype=torch.float64)]
    for k in range(1, shells + 1):
        pts.append(k * v)
        pts += [((k - s) * v[i] + s * v[j])[None] for i, j in edges for s in range(1, k)]
        pts += [((k - a - b) * v[i] + a * v[j] + b * v[l])[None] for i, j, l in faces
                for a in range(1, k) for b in range(1, k - a)]
    return torch.cat(pts)


def _random_rotations(n: int, gen: torch.Generator) -> torch.Tensor:
    """``[n, 3, 3]`` Haar-uniform rotations (QR of a Gaussian with the sign fix, det +1)."""
    q, r = torch.linalg.qr(torch.randn(n, 3, 3, generator=gen, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]
    q[:, :, 0] *= torch.det(q)[:, None]
    return q


def initial_states(target, chains: int, gen: torch.Generator) -> torch.Tensor:
    """``[chains, dim]`` float32 mean-free starts, each an independent random rotation and atom
    permutation of one structure (so orientation and labelling are already at equilibrium), then
    quenched briefly so no pair sits in the stiff repulsive wall (a chain started there rejects
    every move). LJ: the icosahedron at the spacing that minimises the energy; DW-4: N(0, 1.5²)."""
    n, d = target.n_particles, target.spatial_dim
    if target.name.startswith("lj"):
        shells = {13: 1, 55: 2, 147: 3}.get(n)
        if shells is None:
            raise ValueError(f"{target.name}: no icosahedral start for {n} particles")
        base = icosahedral_cluster(shells).float()
        scales = torch.linspace(0.85, 1.1, 51)
        e = target.energy((scales[:, None, None] * base).reshape(len(scales), -1))
        base = scales[int(e.argmin())] * base
        x = (base[None].double() @ _random_rotations(chains, gen).transpose(-1, -2)).float()
        x = x + 0.01 * torch.randn(x.shape, generator=gen)
    else:
        x = 1.5 * torch.randn(chains, n, d, generator=gen)
    perm = torch.argsort(torch.rand(chains, n, generator=gen), dim=1)
    x = torch.gather(x, 1, perm[..., None].expand(-1, -1, d)).reshape(chains, -1)
    x = target.remove_mean(x)
    for _ in range(100):  # displacement-capped gradient descent: leaves the wall, keeps the shape
        _, g = target.energy_and_grad(x)
        x = target.remove_mean(x - (1e-3 * g).clamp(-0.01, 0.01))
    return x


# ----------------------------------------------------------------------------- the long run
def run_chains(target, x0: torch.Tensor, kernel: str, steps: int, burn_in: int, thin: int,
               step_size: float, gen: torch.Generator, n_leapfrog: int = 10,
               log=None) -> dict:
    """Run ``x0.shape[0]`` chains for ``steps`` transitions; adapt the step size during the first
    ``burn_in`` only; keep every ``thin``-th state after it.

    Returns ``draws [chains, kept, dim]``, ``draw_energies [chains, kept]``, ``energy_trace
    [chains, steps - burn_in]`` (every post-burn-in state), ``accept [chains]`` (post-burn-in
    acceptance rate per chain), the final step size and evaluation counts."""
    eg, project = target.energy_and_grad, target.remove_mean  # sample on the mean-free subspace
    if kernel == "hmc":
        def step(st, h):
            return kernels.hmc_step(st, eg, h, n_leapfrog, gen, project)
    else:
        def step(st, h, _k=getattr(kernels, f"{kernel}_step")):
            return _k(st, eg, h, gen, project)
    state = kernels.init(x0, eg)
    adapt = kernels.Adapter(step_size, TARGET_ACCEPT[kernel])  # dual averaging, burn-in only
    draws, draw_e, trace, accepted = [], [], [], torch.zeros(x0.shape[0])
    t0, h = time.perf_counter(), step_size
    for s in range(steps):
        if s == burn_in:
            h = adapt.final()  # frozen from here on: the chain is time-homogeneous
        # Per-chain jitter of the step size, drawn independently of the state (a valid mixture of
        # kernels), breaks the periodic HMC trajectories a fixed length can lock into (Neal 2011).
        jitter = 0.9 + 0.2 * torch.rand(x0.shape[0], generator=gen)
        state, acc = step(state, h * jitter)
        if log is not None and (s + 1) % max(1, steps // 10) == 0:
            log(f"step {s + 1}/{steps}: E mean {float(state.energy.mean()):.2f} "
                f"std {float(state.energy.std()):.2f}, step {h:.4g}, "
                f"{time.perf_counter() - t0:.0f} s")
        if s < burn_in:
            h = adapt.update(float(acc.float().mean()))
            continue
        accepted += acc.float()
        trace.append(state.energy.clone())
        if (s - burn_in + 1) % thin == 0:
            draws.append(state.x.clone())
            draw_e.append(state.energy.clone())
    return {"draws": torch.stack(draws, 1), "draw_energies": torch.stack(draw_e, 1),
            "energy_trace": torch.stack(trace, 1), "accept": accepted / (steps - burn_in),
            "step_size": h, "seconds": time.perf_counter() - t0}


def summarise(target, run: dict) -> dict:
    """Diagnostics of a finished run: numbers plus a computed verdict with its reasons. The
    verdict uses invariant quantities (energy, radius of gyration, equipartition): starts have
    Haar-random orientations and uniform labels and the kernels are equivariant, so each chain's
    law stays invariant; slow rotation within a chain only lowers ``coord_ess_bulk_min``."""
    trace, de = run["energy_trace"].double().numpy(), run["draw_energies"].double().numpy()
    draws = run["draws"]
    dim = draws.shape[-1]
    _, g = target.energy_and_grad(draws.reshape(-1, dim))
    virial = (draws.double() * g.double().reshape(draws.shape)).sum(-1).numpy()  # [chains, kept]
    expected_virial = (target.n_particles - 1) * target.spatial_dim
    rg2 = target.particles(target.remove_mean(draws)).double().pow(2).sum(-1).mean(-1).numpy()
    coords = draws.double().numpy()
    out = {
        "acceptance": {"mean": float(run["accept"].mean()), "min_chain": float(run["accept"].min()),
                       "max_chain": float(run["accept"].max())},
        "energy": {"mean": float(de.mean()), "std": float(de.std(ddof=1)), "min": float(de.min()),
                   "max": float(de.max()), "mcse_mean": mcse_mean(trace)},
        "energy_split_rhat": split_rhat(trace),
        "energy_split_rhat_rank": split_rhat(trace, rank=True),
        "energy_ess_bulk_trace": ess(trace),
        "energy_ess_bulk_draws": ess(de),
        "energy_autocorr_time_steps": float(trace.size / ess(trace, rank=False)),
        "rg2_mean": float(rg2.mean()), "rg2_split_rhat_rank": split_rhat(rg2, rank=True),
        "rg2_ess_bulk": ess(rg2),
        "virial_mean": float(virial.mean()), "virial_mcse": mcse_mean(virial),
        "virial_expected": expected_virial,
        "coord_split_rhat_rank_max": max(split_rhat(coords[:, :, k], rank=True) for k in range(dim)),
        "coord_ess_bulk_min": min(ess(coords[:, :, k]) for k in range(dim)),
    }
    reasons = [f"{k} {out[k]:.4f} >= {RHAT_OK}" for k in ("energy_split_rhat_rank",
               "rg2_split_rhat_rank") if out[k] >= RHAT_OK]
    reasons += [f"{k} {out[k]:.0f} < {ESS_OK:.0f}" for k in ("energy_ess_bulk_draws",
                "rg2_ess_bulk") if out[k] < ESS_OK]
    if out["acceptance"]["min_chain"] < 0.05:
        reasons.append(f"a chain accepted only {out['acceptance']['min_chain']:.3f} (stuck)")
    z = (out["virial_mean"] - expected_virial) / max(out["virial_mcse"], 1e-12)
    if abs(z) > 4:
        reasons.append(f"equipartition E[x·∇E] = {out['virial_mean']:.2f} vs {expected_virial} "
                       f"({z:+.1f} standard errors)")
    out["converged"], out["not_converged_because"] = not reasons, reasons
    out["note"] = ("Verdict from rotation/permutation-invariant quantities only. Orientation and "
                   "labelling of every start are drawn exactly from their uniform law, so "
                   "coord_ess_bulk_min counts effectively independent orientations (precision), "
                   "not a bias. No diagnostic can see a state that no chain ever visited.")
    return out


# ----------------------------------------------------------------------------- files
def code_version() -> dict:
    """Git commit of this checkout and the files under targets/ or samplers/ that differ from it."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=10).stdout.strip() or "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "targets", "samplers"],
                               cwd=root, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        head, dirty = "unknown", ""
    return {"git_commit": head, "changed_files": [ln[3:] for ln in dirty.splitlines()]}


def _atomic_write(path: Path, write) -> None:
    """Write via a temporary file in the same folder and rename: never a half-written file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_reference(samples: torch.Tensor, provenance: dict, out: Path, name: str,
                    split: str) -> tuple[Path, Path]:
    """Save ``samples`` ``[n, dim]`` as float32 ``mcmc_{name}_{split}.npy`` and the provenance,
    with the file's sha256 added, as the ``.json`` beside it. Returns both paths."""
    out.mkdir(parents=True, exist_ok=True)
    npy = out / f"mcmc_{name}_{split}.npy"
    arr = np.ascontiguousarray(samples.detach().cpu().numpy().astype(np.float32))
    _atomic_write(npy, lambda f: np.save(f, arr))
    meta = {**provenance, "file": npy.name, "shape": list(arr.shape), "dtype": "float32",
            "sha256": data.sha256_of(npy)}
    meta_path = npy.with_suffix(".json")
    _atomic_write(meta_path, lambda f: f.write(json.dumps(meta, indent=2).encode()))
    return npy, meta_path


# ----------------------------------------------------------------------------- commands
def _run(target, args, log) -> tuple[dict, dict, torch.Generator]:
    """Shared by build and check: starting points, the run, its settings, the generator."""
    gen = torch.Generator().manual_seed(args.generator_seed)
    x0 = initial_states(target, args.chains, gen)
    h0 = args.step_size or DEFAULT_STEP[target.name][args.kernel]
    run = run_chains(target, x0, args.kernel, args.steps, args.burn_in, args.thin, h0, gen,
                     args.leapfrog, log)
    settings = {"kernel": args.kernel, "chains": args.chains, "steps": args.steps,
                "burn_in": args.burn_in, "thin": args.thin, "draws_per_chain": run["draws"].shape[1],
                "step_size_initial": h0, "step_size": run["step_size"],
                "step_size_adaptation": f"toward acceptance {TARGET_ACCEPT[args.kernel]} during "
                                        f"burn-in only, frozen after",
                "leapfrog_steps": args.leapfrog if args.kernel == "hmc" else None,
                "init": "random rotation + permutation of a Mackay icosahedron, quenched"
                        if target.name.startswith("lj") else "N(0, 1.5^2) per coordinate, quenched",
                "seed": args.seed, "generator_seed": args.generator_seed,
                "code_version": code_version()}  # taken at the start: the code that ran
    return run, settings, gen


def build(args, log=print) -> Path:
    """``make_reference <target>``: run, shuffle, keep ``n`` rows, write samples + provenance."""
    torch.set_num_threads(args.threads)
    target = get(args.target)
    t0, c0 = time.perf_counter(), time.process_time()
    run, settings, gen = _run(target, args, log)
    diag = summarise(target, run)
    x = run["draws"].reshape(-1, target.dim)
    x = target.remove_mean(x[torch.randperm(x.shape[0], generator=gen)][: args.n])
    e = target.energy(x).double()
    prov = {"format": "boltzbench-mcmc-reference/1", **target.describe(), "split": args.split,
            "n": int(x.shape[0]), "mean_free": True,
            "rows": "a random n of the chains x draws_per_chain draws, shuffled; diagnostics are "
                    "over all draws",
            "energy_of_file": {"mean": float(e.mean()), "std": float(e.std())},
            **settings, "diagnostics": diag, "energy_evals": target.counter.energy_evals,
            "grad_evals": target.counter.grad_evals, "wall_seconds": time.perf_counter() - t0,
            "cpu_seconds": time.process_time() - c0, "torch_threads": args.threads,
            "command": "python -m targets.make_reference " + " ".join(args.argv),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    npy, meta = write_reference(x, prov, Path(args.out), target.name, args.split)
    log(json.dumps({"file": str(npy), "provenance": str(meta), "converged": diag["converged"],
                    "not_converged_because": diag["not_converged_because"]}, indent=2))
    return npy


def compare_energies(target, fresh: torch.Tensor, m: int) -> dict:
    """Energy TV (spec v1, 200 bins on the reference) and energy W1 of ``fresh`` vs the shipped
    test split, and of the shipped val split vs test as a yardstick; ``m`` rows of each."""
    from metrics import get as metric  # local: metrics imports targets

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


def check(args, log=print) -> dict:
    """``make_reference check <target>``: a fresh run compared with the shipped sets."""
    torch.set_num_threads(args.threads)
    target = get(args.target)
    t0 = time.perf_counter()
    run, settings, _ = _run(target, args, log)
    diag = summarise(target, run)
    fresh = target.remove_mean(run["draws"].transpose(0, 1).reshape(-1, target.dim))[: args.n]
    cmp = compare_energies(target, fresh, fresh.shape[0])
    # z of the mean energy: fresh MCSE from its ESS; the shipped draws treated as independent
    # (they are not quite: DW-4 repeats configurations), so |z| is if anything overstated.
    t = cmp["shipped_energy"]["test"]
    z = (diag["energy"]["mean"] - t["mean"]) / math.hypot(diag["energy"]["mcse_mean"],
                                                          t["std"] / math.sqrt(t["n"]))
    reasons = [f"{k} fresh/yardstick ratio {cmp[k]['ratio']:.2f} > 2" for k in
               ("energy_tvd", "energy_w1") if cmp[k]["ratio"] > 2.0]
    if abs(z) > 4:
        reasons.append(f"mean energy differs by {z:.1f} standard errors")
    verdict = ("fresh run not converged: " + "; ".join(diag["not_converged_because"])
               if not diag["converged"] else
               "consistent" if not reasons else "inconsistent: " + "; ".join(reasons))
    report = {"format": "boltzbench-reference-check/1", **target.describe(), **settings,
              "diagnostics": diag, "comparison": cmp, "mean_energy_z": z,
              "verdict": verdict, "wall_seconds": time.perf_counter() - t0,
              "command": "python -m targets.make_reference " + " ".join(args.argv)}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    path = Path(args.out) / f"check_{target.name}.json"
    _atomic_write(path, lambda f: f.write(json.dumps(report, indent=2).encode()))
    log(f"{target.pretty_name}: energy TV fresh-vs-test {cmp['energy_tvd']['fresh_vs_test']:.4f} "
        f"(val-vs-test {cmp['energy_tvd']['val_vs_test']:.4f}); energy W1 "
        f"{cmp['energy_w1']['fresh_vs_test']:.4f} (val-vs-test {cmp['energy_w1']['val_vs_test']:.4f});"
        f" mean E fresh {diag['energy']['mean']:.3f} ± {diag['energy']['mcse_mean']:.3f} vs test "
        f"{t['mean']:.3f}; verdict: {verdict}; report {path}")
    return report


# ----------------------------------------------------------------------------- command line
def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    for flag, typ, default, text in [
            ("--chains", int, 128, "parallel chains (>= 2)"),
            ("--steps", int, 2000, "transitions per chain, burn-in included"),
            ("--burn-in", int, 500, "first transitions, discarded; the step size adapts here"),
            ("--thin", int, 20, "keep every thin-th state after burn-in"),
            ("--step-size", float, None, "initial step size (default per target and kernel)"),
            ("--kernel", str, "hmc", f"one of {', '.join(KERNELS)}"),
            ("--leapfrog", int, 10, "HMC leapfrog steps per transition"),
            ("--seed", int, 0, "seed of the run (test and val use distinct streams)"),
            ("--split", str, "test", f"one of {', '.join(SPLITS)}"),
            ("--n", int, None, "rows to keep (default: all draws)"),
            ("--out", str, None, "output folder (default: targets.data.cache_dir())"),
            ("--threads", int, 1, "torch threads")]:
        common.add_argument(flag, type=typ, default=default, help=text)
    p = argparse.ArgumentParser(prog="python -m targets.make_reference",
                                description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("build", parents=[common], help="build a reference set").add_argument(
        "target", help=f"one of {', '.join(BUILD_TARGETS)}")
    sub.add_parser("check", parents=[common], help="compare a fresh run with the shipped sets"
                   ).add_argument("target", help=f"one of {', '.join(CHECK_TARGETS)}")
    return p


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse and validate; a bad value exits 2 with a message naming the option."""
    p = _parser()
    # ``make_reference lj55 ...`` is shorthand for ``make_reference build lj55 ...``.
    full = list(argv) if argv and argv[0] in ("build", "check", "-h", "--help") \
        else ["build", *argv]
    args = p.parse_args(full)
    err = _validate(args, BUILD_TARGETS if args.command == "build" else CHECK_TARGETS)
    if err:
        p.error(err)  # prints usage + message, exits 2
    args.argv = list(argv)
    args.out = args.out or str(data.cache_dir())
    # Distinct streams for the two splits, so test and val built with one seed are independent.
    args.generator_seed = 2 * args.seed + SPLITS.index(args.split)
    return args


def _validate(a, allowed) -> str | None:
    kept = (a.steps - a.burn_in) // a.thin if a.thin >= 1 else 0
    checks = [
        (a.target in allowed, f"target must be one of {', '.join(allowed)}, got {a.target!r}"),
        (a.kernel in KERNELS, f"--kernel must be one of {', '.join(KERNELS)}, got {a.kernel!r}"),
        (a.split in SPLITS, f"--split must be one of {', '.join(SPLITS)}, got {a.split!r}"),
        (a.chains >= 2, f"--chains must be >= 2 (R̂ compares chains), got {a.chains}"),
        (a.steps >= 1, f"--steps must be >= 1, got {a.steps}"),
        (0 <= a.burn_in < a.steps, f"--burn-in must be in [0, --steps={a.steps}), got {a.burn_in}"),
        (a.thin >= 1, f"--thin must be >= 1, got {a.thin}"),
        (kept >= 4, f"--steps/--burn-in/--thin keep {kept} draws per chain "
                    f"((steps - burn_in) // thin); at least 4 are needed for split diagnostics"),
        (a.step_size is None or (math.isfinite(a.step_size) and a.step_size > 0),
         f"--step-size must be a positive number, got {a.step_size}"),
        (a.leapfrog >= 1, f"--leapfrog must be >= 1, got {a.leapfrog}"),
        (a.threads >= 1, f"--threads must be >= 1, got {a.threads}"),
        (a.n is None or 1 <= a.n <= a.chains * kept,
         f"--n must be in [1, chains * draws per chain = {a.chains * kept}], got {a.n}"),
    ]
    return next((msg for ok, msg in checks if not ok), None)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    (build if args.command == "build" else check)(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
