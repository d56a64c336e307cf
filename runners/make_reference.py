"""Reference sample sets by long MCMC, with provenance, and a check of the shipped ones.

    python -m runners.make_reference lj55 [--chains N] [--steps S] [--round-steps R]
        [--max-steps M] [--rounds K] [--burn-in B] [--thin T] [--step-size h]
        [--kernel mala|hmc|rwm] [--leapfrog L] [--seed s] [--out DIR] [--split test|val] [--n N]
    python -m runners.make_reference check dw4|lj13 [same options but the round ones]
    python -m runners.make_reference crosscheck lj55 [--out DIR] [--n N]

Build: many parallel chains of a kernel from :mod:`samplers.kernels` (the same steps the MCMC
baselines use; energies only through ``target.energy_and_grad``), started from independent
random rotations and permutations of a low-energy structure (a Mackay icosahedron for LJ), the
step size adapted during burn-in only and then frozen, every ``thin``-th state kept. It runs in
rounds: the first brings each chain to ``--steps``, each later one adds ``--round-steps``; after
each the diagnostics are computed over everything kept so far, a progress line with an ETA is
printed, and the build stops as soon as the :class:`Criteria` hold or at the cap (``--max-steps``
per chain, ``--rounds``). Capped unconverged it exits 3 and says what to change. Writes
``mcmc_{target}_{split}.npy`` (float32, mean-free, ``[n, dim]``, rows shuffled) atomically and a
provenance ``.json`` beside it (criteria, every round, the verdict) whose ``sha256`` and verdict
the loader (``LJ55.reference``) checks. The verdict is computed, not asserted: split-R̂ and bulk
ESS (samplers.diagnostics) of the energy and radius of gyration across chains, equipartition
E[x·∇E] = (N-1)·D (integration by parts on the mean-free subspace), the least-accepting chain;
per-coordinate R̂/ESS are reported.

Check: a fresh run on DW-4 / LJ-13 compared with the shipped test split by energy TV (spec v1)
and energy W1, next to the same numbers for the shipped val split as a yardstick. Crosscheck: our
LJ-55 reference against the official split where a user has it (energy W1, energy TV,
interatomic-distance TV, val-vs-test yardstick); also run after every LJ-55 test build.

A runner, not part of ``targets``: it uses the MCMC kernels (samplers) and the metrics, and
targets import neither (tests/test_layering.py holds the packages to that order).
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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from samplers import kernels
from samplers.diagnostics import ess, mcse_mean, split_rhat

from metrics import get as metric
from targets import data, get

KERNELS = ("hmc", "mala", "rwm")
BUILD_TARGETS = ("lj55", "lj13", "dw4")
LJ55_MCMC_FILE = "mcmc_lj55_test.npy"
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
# Build defaults, measured (docs/metrics.md): LJ-55 Rg² R̂ is 1.011 after 2500 post-burn-in steps
# per chain and 1.007-1.009 after 3500 (R̂ - 1 ≈ 1 / (2 × ESS per half-chain), whatever the number
# of chains), so the defaults converge at 4000 steps, in round 2; later rounds add 1000.
ROUND_STEPS, MAX_STEPS = 1000, 10000
VIRIAL_Z_OK, MIN_ACCEPT = 3.0, 0.05  # equipartition within 3 MCSE; a chain below 5% is stuck


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
@dataclass(frozen=True)
class Criteria:
    """When a reference counts as converged (Vehtari et al. 2021 for R̂ and ESS). Recorded in the
    provenance so a reader knows which test the verdict passed."""

    rhat: float = RHAT_OK            # rank-normalised split-R̂ of energy and Rg² strictly below
    ess: float = ESS_OK              # bulk ESS of the kept energies and of the Rg² trace above
    virial_z: float = VIRIAL_Z_OK    # |<x·∇E> - (N-1)·D| within this many MCSE
    min_accept: float = MIN_ACCEPT   # every chain accepts at least this often (else: stuck)

    def describe(self) -> dict:
        return {"energy_and_rg2_split_rhat_rank_below": self.rhat,
                "energy_draws_and_rg2_ess_bulk_above": self.ess,
                "virial_within_mcse": self.virial_z, "min_chain_acceptance": self.min_accept}


class ChainRun:
    """Parallel chains of one kernel, extendable in rounds: ``burn_in`` adapts the step size and
    then freezes it; every ``advance`` appends to the post-burn-in record (energy, Rg² and the
    virial x·∇E of every state, every ``thin``-th state kept). The kernels stay pure functions;
    this object only holds their state and the record."""

    def __init__(self, target, x0: torch.Tensor, kernel: str, step_size: float,
                 gen: torch.Generator, n_leapfrog: int = 10):
        eg, project = target.energy_and_grad, target.remove_mean  # on the mean-free subspace
        if kernel == "hmc":
            def step(st, h):
                return kernels.hmc_step(st, eg, h, n_leapfrog, gen, project)
        else:
            def step(st, h, _k=getattr(kernels, f"{kernel}_step")):
                return _k(st, eg, h, gen, project)
        self.target, self.kernel, self._step, self.gen = target, kernel, step, gen
        self.state = kernels.init(x0, eg)
        self.h, self.h0 = step_size, step_size
        self.steps, self.burn_in_steps, self.seconds = 0, 0, 0.0
        self._since_draw = 0
        self.draws, self.draw_e, self.trace_e, self.trace_rg2, self.trace_vir = [], [], [], [], []
        self.accepted = torch.zeros(x0.shape[0])

    def _transition(self):
        # Per-chain jitter of the step size, drawn independently of the state (a valid mixture of
        # kernels), breaks the periodic HMC trajectories a fixed length can lock into (Neal 2011).
        jitter = 0.9 + 0.2 * torch.rand(self.state.x.shape[0], generator=self.gen)
        self.state, acc = self._step(self.state, self.h * jitter)
        self.steps += 1
        return acc

    def _log(self, log, s, n, t0):
        if log is not None and (s + 1) % max(1, n // 10) == 0:
            log(f"step {self.steps}: E mean {float(self.state.energy.mean()):.2f} "
                f"std {float(self.state.energy.std()):.2f}, step {self.h:.4g}, "
                f"{time.perf_counter() - t0:.0f} s")

    def burn_in(self, n: int, log=None) -> None:
        """``n`` transitions adapting the step size (dual averaging), then freeze it: from here on
        the chain is time-homogeneous. Nothing of the burn-in is kept."""
        t0 = time.perf_counter()
        adapt = kernels.Adapter(self.h, TARGET_ACCEPT[self.kernel])
        for s in range(n):
            acc = self._transition()
            self.h = adapt.update(float(acc.float().mean()))
            self._log(log, s, n, t0)
        if n:
            self.h = adapt.final()
        self.burn_in_steps = n
        self.seconds += time.perf_counter() - t0

    def advance(self, n: int, thin: int, log=None) -> None:
        """``n`` more transitions at the frozen step size, appended to the record."""
        t0, d = time.perf_counter(), self.target.spatial_dim
        for s in range(n):
            self.accepted += self._transition().float()
            x, e, g = self.state
            self.trace_e.append(e.clone())
            self.trace_rg2.append(x.reshape(x.shape[0], -1, d).pow(2).sum(-1).mean(-1))
            self.trace_vir.append((x * g).sum(-1))  # x mean-free, so x·∇E = x·P∇E
            self._since_draw += 1
            if self._since_draw == thin:
                self._since_draw = 0
                self.draws.append(x.clone())
                self.draw_e.append(e.clone())
            self._log(log, s, n, t0)
        self.seconds += time.perf_counter() - t0

    def result(self) -> dict:
        """``draws [chains, kept, dim]``, ``draw_energies [chains, kept]``, per-state traces
        ``energy_trace``, ``rg2_trace``, ``virial_trace`` ``[chains, steps - burn_in]``,
        ``accept [chains]`` (post-burn-in acceptance per chain), the step size, the seconds."""
        kept = self.steps - self.burn_in_steps
        return {"draws": torch.stack(self.draws, 1), "draw_energies": torch.stack(self.draw_e, 1),
                "energy_trace": torch.stack(self.trace_e, 1),
                "rg2_trace": torch.stack(self.trace_rg2, 1),
                "virial_trace": torch.stack(self.trace_vir, 1),
                "accept": self.accepted / max(kept, 1), "step_size": self.h,
                "seconds": self.seconds}


def run_chains(target, x0: torch.Tensor, kernel: str, steps: int, burn_in: int, thin: int,
               step_size: float, gen: torch.Generator, n_leapfrog: int = 10,
               log=None) -> dict:
    """Run ``x0.shape[0]`` chains for ``steps`` transitions in one go (burn-in included); see
    :class:`ChainRun` for what the returned dict holds."""
    run = ChainRun(target, x0, kernel, step_size, gen, n_leapfrog)
    run.burn_in(burn_in, log)
    run.advance(steps - burn_in, thin, log)
    return run.result()


def summarise(target, run: dict, criteria: Criteria = Criteria()) -> dict:
    """Diagnostics of a run: numbers plus a computed verdict with its reasons. The verdict uses
    invariant quantities (energy, radius of gyration, equipartition) over every post-burn-in
    state: starts have Haar-random orientations and uniform labels and the kernels are
    equivariant, so each chain's law stays invariant; slow rotation within a chain only lowers
    ``coord_ess_bulk_min``."""
    trace, de = run["energy_trace"].double().numpy(), run["draw_energies"].double().numpy()
    rg2, virial = run["rg2_trace"].double().numpy(), run["virial_trace"].double().numpy()
    draws = run["draws"]
    dim = draws.shape[-1]
    expected_virial = (target.n_particles - 1) * target.spatial_dim
    coords = draws.double().numpy()
    out = {
        "acceptance": {"mean": float(run["accept"].mean()), "min_chain": float(run["accept"].min()),
                       "max_chain": float(run["accept"].max())},
        "energy": {"mean": float(trace.mean()), "std": float(trace.std(ddof=1)),
                   "min": float(de.min()), "max": float(de.max()), "mcse_mean": mcse_mean(trace)},
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
    out["virial_z"] = (out["virial_mean"] - expected_virial) / max(out["virial_mcse"], 1e-12)
    reasons = [f"{k} {out[k]:.4f} >= {criteria.rhat}" for k in ("energy_split_rhat_rank",
               "rg2_split_rhat_rank") if not out[k] < criteria.rhat]
    reasons += [f"{k} {out[k]:.0f} < {criteria.ess:.0f}" for k in ("energy_ess_bulk_draws",
                "rg2_ess_bulk") if not out[k] >= criteria.ess]
    if out["acceptance"]["min_chain"] < criteria.min_accept:
        reasons.append(f"a chain accepted only {out['acceptance']['min_chain']:.3f} (stuck)")
    if not abs(out["virial_z"]) <= criteria.virial_z:
        reasons.append(f"equipartition E[x·∇E] = {out['virial_mean']:.2f} vs {expected_virial} "
                       f"({out['virial_z']:+.1f} standard errors, allowed {criteria.virial_z:g})")
    out["converged"], out["not_converged_because"] = not reasons, reasons
    out["criteria"] = criteria.describe()
    out["note"] = ("Verdict from rotation/permutation-invariant quantities only, over every "
                   "post-burn-in state (energy min/max and energy_ess_bulk_draws: the kept draws). "
                   "Orientation and labelling of every start are drawn exactly from their uniform "
                   "law, so coord_ess_bulk_min counts effectively independent orientations "
                   "(precision), not a bias. No diagnostic can see a state that no chain ever "
                   "visited.")
    return out


def steps_needed(diag: dict, kept_steps: int, criteria: Criteria) -> float:
    """Post-burn-in length at which each criterion would just hold, if R̂ - 1 falls as 1/length
    (noise and a fixed initial transient both do), ESS grows as length and a virial offset
    shrinks in standard errors as 1/sqrt(length): the largest of the three. A rough forecast for
    the progress line, never part of the verdict; inf if a chain is stuck."""
    if diag["acceptance"]["min_chain"] < criteria.min_accept:
        return math.inf
    need = [kept_steps * (diag[k] - 1) / (criteria.rhat - 1) for k in
            ("energy_split_rhat_rank", "rg2_split_rhat_rank")]
    need += [kept_steps * criteria.ess / max(diag[k], 1e-9) for k in
             ("energy_ess_bulk_draws", "rg2_ess_bulk")]
    need.append(kept_steps * (abs(diag["virial_z"]) / criteria.virial_z) ** 2)
    return max(need)


# ----------------------------------------------------------------------------- files
def code_version() -> dict:
    """Git commit of this checkout and the files under targets/, samplers/ or this builder that
    differ from it."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=10).stdout.strip() or "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "targets", "samplers",
                                "runners/make_reference.py"],
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
def _settings(target, args, run: ChainRun) -> dict:
    return {"kernel": args.kernel, "chains": args.chains, "steps": run.steps,
            "burn_in": run.burn_in_steps, "thin": args.thin, "draws_per_chain": len(run.draws),
            "step_size_initial": run.h0, "step_size": run.h,
            "step_size_adaptation": f"toward acceptance {TARGET_ACCEPT[args.kernel]} during "
                                    f"burn-in only, frozen after",
            "leapfrog_steps": args.leapfrog if args.kernel == "hmc" else None,
            "init": "random rotation + permutation of a Mackay icosahedron, quenched"
                    if target.name.startswith("lj") else "N(0, 1.5^2) per coordinate, quenched",
            "seed": args.seed, "generator_seed": args.generator_seed}


def _start(target, args, log) -> tuple[ChainRun, torch.Generator]:
    """Shared by build and check: starting points, the chains, burn-in done."""
    gen = torch.Generator().manual_seed(args.generator_seed)
    x0 = initial_states(target, args.chains, gen)
    h0 = args.step_size or DEFAULT_STEP[target.name][args.kernel]
    run = ChainRun(target, x0, args.kernel, h0, gen, args.leapfrog)
    run.burn_in(args.burn_in, log)
    return run, gen


def _fmt_s(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def run_rounds(target, run: ChainRun, args, criteria: Criteria, log) -> tuple[dict, list[dict]]:
    """Extend ``run`` round by round until ``criteria`` hold or the cap (``args.max_steps``
    transitions per chain, burn-in included, or ``args.rounds`` rounds) is reached. The first
    round brings the chains to ``args.steps``; each later one adds ``args.round_steps``. After
    each round the diagnostics are computed over everything kept so far and a progress line
    (round, R̂s, ESS, virial z, an ETA) is logged. Returns the last diagnostics and one record
    per round."""
    rounds, t_start = [], time.perf_counter()
    while True:
        n = (args.steps if not rounds else run.steps + args.round_steps) - run.steps
        n = min(n, args.max_steps - run.steps)
        t0 = time.perf_counter()
        run.advance(n, args.thin)
        diag = summarise(target, run.result(), criteria)
        kept = run.steps - run.burn_in_steps
        rate = (time.perf_counter() - t0) / n  # seconds per transition, diagnostics included
        need = steps_needed(diag, kept, criteria)
        rounds.append({"round": len(rounds) + 1, "steps": run.steps, "kept_steps": kept,
                       "draws_per_chain": len(run.draws),
                       "seconds": time.perf_counter() - t0,
                       **{k: diag[k] for k in ("energy_split_rhat_rank", "rg2_split_rhat_rank",
                                               "energy_ess_bulk_draws", "rg2_ess_bulk",
                                               "virial_mean", "virial_mcse", "virial_z",
                                               "converged", "not_converged_because")},
                       "energy_mean": diag["energy"]["mean"],
                       "energy_mcse": diag["energy"]["mcse_mean"],
                       "acceptance_min_chain": diag["acceptance"]["min_chain"],
                       "forecast_kept_steps": need if math.isfinite(need) else None})
        capped = run.steps >= args.max_steps or (args.rounds is not None
                                                 and len(rounds) >= args.rounds)
        if diag["converged"]:
            eta = "converged"
        else:
            more = max(need - kept, args.round_steps)
            eta = (f"ETA {_fmt_s(more * rate)} (~{run.burn_in_steps + need:.0f} steps/chain)"
                   if run.steps + more <= args.max_steps else
                   f"forecast ~{run.burn_in_steps + need:.0f} steps/chain, beyond the cap")
        log(f"round {len(rounds)}: {run.steps}/{args.max_steps} steps/chain, "
            f"R̂ energy {diag['energy_split_rhat_rank']:.4f} rg² {diag['rg2_split_rhat_rank']:.4f} "
            f"(< {criteria.rhat}), ESS energy {diag['energy_ess_bulk_draws']:.0f} rg² "
            f"{diag['rg2_ess_bulk']:.0f} (> {criteria.ess:.0f}), virial z "
            f"{diag['virial_z']:+.2f} (|z| <= {criteria.virial_z:g}), min accept "
            f"{diag['acceptance']['min_chain']:.2f}; {_fmt_s(time.perf_counter() - t_start)} "
            f"so far; {eta}")
        if diag["converged"] or capped:
            return diag, rounds


def _unconverged_advice(args, diag, rounds) -> str:
    need = rounds[-1]["forecast_kept_steps"]
    more = (f"the last round forecasts about {args.burn_in + need:.0f} steps per chain, so try "
            f"--max-steps {int(math.ceil((args.burn_in + 1.2 * need) / 1000) * 1000)}"
            if need is not None else "a chain is stuck: lower --step-size or change --kernel")
    return (f"not converged after {rounds[-1]['steps']} steps per chain ({len(rounds)} round(s)): "
            f"{'; '.join(diag['not_converged_because'])}. {more[0].upper() + more[1:]}, or raise "
            f"--chains (more chains raise ESS, not R̂); --rounds caps the number of rounds.")


def build(args, log=print) -> int:
    """``make_reference <target>``: burn in, run rounds until converged or capped, shuffle, keep
    ``n`` rows, write samples + provenance. Returns the exit status: 0 converged, 3 capped
    unconverged (the file is then written marked ``converged: false``, which the loader refuses
    without BOLTZBENCH_ALLOW_UNCONVERGED=1, unless it would replace a converged reference)."""
    torch.set_num_threads(args.threads)
    target = get(args.target)
    criteria = Criteria()
    t0, c0 = time.perf_counter(), time.process_time()
    version = code_version()  # taken at the start: the code that ran
    run, gen = _start(target, args, log)
    diag, rounds = run_rounds(target, run, args, criteria, log)
    out = Path(args.out)
    old = out / f"mcmc_{target.name}_{args.split}.json"
    if not diag["converged"] and _is_converged_reference(old):
        log(f"{_unconverged_advice(args, diag, rounds)}\nNot written: {old.with_suffix('.npy')} "
            f"is a converged reference and an unconverged build does not replace it.")
        return 3
    x = run.result()["draws"].reshape(-1, target.dim)
    n = args.n or x.shape[0]
    x = target.remove_mean(x[torch.randperm(x.shape[0], generator=gen)][:n])
    e = target.energy(x).double()
    prov = {"format": "boltzbench-mcmc-reference/2", **target.describe(), "split": args.split,
            "n": int(x.shape[0]), "mean_free": True,
            "rows": "a random n of the chains x draws_per_chain draws, shuffled; diagnostics are "
                    "over every post-burn-in state (kept draws for energy_ess_bulk_draws)",
            "energy_of_file": {"mean": float(e.mean()), "std": float(e.std())},
            **_settings(target, args, run), "max_steps": args.max_steps,
            "round_steps": args.round_steps, "max_rounds": args.rounds,
            "criteria": criteria.describe(), "rounds": rounds, "code_version": version,
            "diagnostics": diag, "energy_evals": target.counter.energy_evals,
            "grad_evals": target.counter.grad_evals, "wall_seconds": time.perf_counter() - t0,
            "cpu_seconds": time.process_time() - c0, "torch_threads": args.threads,
            "command": "python -m runners.make_reference " + " ".join(args.argv),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    npy, meta = write_reference(x, prov, out, target.name, args.split)
    log(json.dumps({"file": str(npy), "provenance": str(meta), "converged": diag["converged"],
                    "not_converged_because": diag["not_converged_because"],
                    "steps": run.steps, "rounds": len(rounds),
                    "wall_seconds": round(prov["wall_seconds"], 1)}, indent=2))
    if target.name == "lj55" and args.split == "test":
        crosscheck(out, log)  # where the official split is present
    if not diag["converged"]:
        log(f"{_unconverged_advice(args, diag, rounds)}\nWritten marked converged: false; "
            f"scoring against it needs BOLTZBENCH_ALLOW_UNCONVERGED=1.")
        return 3
    return 0


def _is_converged_reference(meta_path: Path) -> bool:
    try:
        return json.loads(meta_path.read_text())["diagnostics"]["converged"] is True
    except (OSError, ValueError, KeyError, TypeError):
        return False


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


def check(args, log=print) -> dict:
    """``make_reference check <target>``: a fresh run compared with the shipped sets."""
    torch.set_num_threads(args.threads)
    target = get(args.target)
    t0 = time.perf_counter()
    version = code_version()
    chains, _ = _start(target, args, log)
    chains.advance(args.steps - args.burn_in, args.thin, log)
    run, settings = chains.result(), {**_settings(target, args, chains), "code_version": version}
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
              "command": "python -m runners.make_reference " + " ".join(args.argv)}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    path = Path(args.out) / f"check_{target.name}.json"
    _atomic_write(path, lambda f: f.write(json.dumps(report, indent=2).encode()))
    log(f"{target.pretty_name}: energy TV fresh-vs-test {cmp['energy_tvd']['fresh_vs_test']:.4f} "
        f"(val-vs-test {cmp['energy_tvd']['val_vs_test']:.4f}); energy W1 "
        f"{cmp['energy_w1']['fresh_vs_test']:.4f} (val-vs-test {cmp['energy_w1']['val_vs_test']:.4f});"
        f" mean E fresh {diag['energy']['mean']:.3f} ± {diag['energy']['mcse_mean']:.3f} vs test "
        f"{t['mean']:.3f}; verdict: {verdict}; report {path}")
    return report


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
    _atomic_write(path, lambda f: f.write(json.dumps(report, indent=2).encode()))
    log("LJ-55 ours vs official test: " + ", ".join(
        f"{k} {cmp[k]['ours_vs_test']:.4f} (val-vs-test {cmp[k]['val_vs_test']:.4f})"
        for k in CROSSCHECK_METRICS) + f"; mean E z {cmp['mean_energy_z']:+.2f}; "
        f"{cmp['verdict']}; report {path}")
    return report


# ----------------------------------------------------------------------------- command line
def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    for flag, typ, default, text in [
            ("--chains", int, 128, "parallel chains (>= 2)"),
            ("--steps", int, 3000, "transitions per chain, burn-in included, before the first "
                                   "diagnostics (check: the whole run)"),
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
    p = argparse.ArgumentParser(prog="python -m runners.make_reference",
                                description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", parents=[common], help="build a reference set")
    b.add_argument("target", help=f"one of {', '.join(BUILD_TARGETS)}")
    b.add_argument("--round-steps", type=int, default=ROUND_STEPS,
                   help="transitions per chain added by each round after the first")
    b.add_argument("--max-steps", type=int, default=None,
                   help=f"cap on transitions per chain, burn-in included (default "
                        f"max({MAX_STEPS}, --steps)); capped unconverged: exit 3")
    b.add_argument("--rounds", type=int, default=None,
                   help="cap on the number of rounds (default: none, only --max-steps)")
    sub.add_parser("check", parents=[common], help="compare a fresh run with the shipped sets"
                   ).add_argument("target", help=f"one of {', '.join(CHECK_TARGETS)}")
    c = sub.add_parser("crosscheck", help="compare our LJ-55 reference with the official split")
    c.add_argument("target", help="lj55")
    c.add_argument("--out", type=str, default=None,
                   help="folder of our reference and of the report (default: the cache)")
    c.add_argument("--n", type=int, default=None, help="rows compared (default: all that fit)")
    return p


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse and validate; a bad value exits 2 with a message naming the option."""
    p = _parser()
    # ``make_reference lj55 ...`` is shorthand for ``make_reference build lj55 ...``.
    full = list(argv) if argv and argv[0] in ("build", "check", "crosscheck", "-h", "--help") \
        else ["build", *argv]
    args = p.parse_args(full)
    if args.command == "crosscheck":
        if args.target != "lj55" or (args.n is not None and args.n < 1):
            p.error(f"crosscheck: target must be lj55, got {args.target!r}" if args.target != "lj55"
                    else f"--n must be >= 1, got {args.n}")
        args.out = args.out or str(data.cache_dir())
        return args
    err = _validate(args, BUILD_TARGETS if args.command == "build" else CHECK_TARGETS)
    if err:
        p.error(err)  # prints usage + message, exits 2
    args.argv = list(argv)
    if args.command == "build" and args.max_steps is None:
        args.max_steps = max(MAX_STEPS, args.steps)
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
        (getattr(a, "round_steps", 1) >= 1,
         f"--round-steps must be >= 1, got {getattr(a, 'round_steps', None)}"),
        (getattr(a, "max_steps", None) is None or a.max_steps >= a.steps,
         f"--max-steps must be >= --steps={a.steps}, got {getattr(a, 'max_steps', None)}"),
        (getattr(a, "rounds", None) is None or a.rounds >= 1,
         f"--rounds must be >= 1, got {getattr(a, 'rounds', None)}"),
        (a.n is None or 1 <= a.n <= a.chains * kept,
         f"--n must be in [1, chains * draws per chain = {a.chains * kept}], got {a.n}"),
    ]
    return next((msg for ok, msg in checks if not ok), None)


def _log(*a) -> None:
    print(*a, flush=True)  # progress lines appear at once also when stdout is a file


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "build":
        return build(args, _log)
    if args.command == "crosscheck":
        return 0 if crosscheck(Path(args.out), _log, m=args.n) is not None else 1
    check(args, _log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
