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

This module is the command line and the ``build``/``check`` commands (rounds, progress lines,
exit statuses); the pieces they use live beside it: ``reference_chains`` (starting points and the
chains), ``reference_diagnostics`` (criteria, diagnostics, verdict), ``reference_files`` (the
reference file, its provenance, atomic writes) and ``reference_compare`` (comparisons with the
shipped and official sets, the LJ-55 cross-check).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from targets import data, get

# The builder's pieces, one concept per module; every public name stays importable from here.
from .reference_chains import (DEFAULT_STEP, KERNELS, TARGET_ACCEPT, ChainRun,  # noqa: F401
                               icosahedral_cluster, initial_states, run_chains)
from .reference_compare import (CROSSCHECK_METRICS, compare_energies,  # noqa: F401
                                compare_with_official, crosscheck, official_lj55)
from .reference_diagnostics import (ESS_OK, MIN_ACCEPT, RHAT_OK, VIRIAL_Z_OK,  # noqa: F401
                                    Criteria, steps_needed, summarise)
from .reference_files import (LJ55_MCMC_FILE, SPLITS, atomic_write, code_version,  # noqa: F401
                              is_converged_reference, write_reference)

BUILD_TARGETS = ("lj55", "lj13", "dw4")
CHECK_TARGETS = ("dw4", "lj13")
# Build defaults, measured (docs/metrics.md): LJ-55 Rg² R̂ is 1.011 after 2500 post-burn-in steps
# per chain and 1.007-1.009 after 3500 (R̂ - 1 ≈ 1 / (2 × ESS per half-chain), whatever the number
# of chains), so the defaults converge at 4000 steps, in round 2; later rounds add 1000.
ROUND_STEPS, MAX_STEPS = 1000, 10000


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
    if not diag["converged"] and is_converged_reference(old):
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
    atomic_write(path, lambda f: f.write(json.dumps(report, indent=2).encode()))
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
