"""``python -m runners.bench sampler=idem target=lj13 [threads=2] [device=cpu] [repeats=3]``

Times iDEM (or pDEM) on the current machine at the paper's batch size and K (issue 4, item 3):

* ``step_s``: one optimiser step (``sampler.train_step``): B x K energy+gradient evaluations in the
  MC score estimator, the network's forward and backward on B points, Adam. Best of ``repeats``.
* ``floor_s``: what a step cannot avoid: one batched ``target.energy_and_grad`` over the same
  B x K points plus the network's forward and backward on the batch, each timed separately
  (best of ``repeats``) and added. ``ratio = step_s / floor_s`` shows the overhead of everything
  else (noise generation, softmax weighting, clipping, optimiser); the aim is <= 1.25 on CPU.
* ``sample_s``: one reverse-SDE generation of ``sample_n`` (1000) samples with 1000
  Euler-Maruyama steps. Every step costs the same (fixed batch and network), so with
  ``sample_steps=S < 1000`` it times S steps after one warm-up step and scales by 1000 / S
  (``sample_extrapolated`` says so). For LJ-13, whose official figure is for 256 samples,
  ``sample_256_s`` times 256 samples the same way.
* ``energy_evals_per_s``: B x K / (time of the batched energy+gradient call).

The last output line is one JSON object with these, the machine (threads, device, torch version,
load average before and after: other processes on a shared machine make timings noisy), and the
official implementation's figures on a 2-core CPU with 2 threads (issue 4) with speedup factors.
Only iDEM's public pieces are used: ``setup``, ``train_step``, ``generate``, ``space``, ``net``.
The GMM-40 start (a reverse SDE driven by the MC estimator, about 5e8 evaluations) is replaced by
prior samples here: the start does not change what a step or a generation costs.

Timings need an otherwise idle machine. On a 2-core machine shared with other busy processes,
``threads=2`` collapses (OpenMP waits at every parallel region for a descheduled thread: GMM-40
generation took 163 s at 2 threads and 14 s at 1 thread back to back at load average 8), and one
thread is inflated 2-4x; ``load_avg_before``/``after`` in the JSON line record the conditions.

Other keys: ``sample_n`` (1000; 0 skips generation), ``sample_steps`` (1000), ``seed`` (0),
``net_compile`` (false: passes ``compile`` to the iDEM config, torch.compile of the network),
``batch`` and ``k`` (override B and K, for quick checks; the official figures then do not apply).
"""
from __future__ import annotations

import json
import math
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable

import torch

import samplers
import targets

KEYS = {"sampler": "idem", "target": None, "threads": "2", "device": "cpu", "repeats": "3",
        "sample_n": "1000", "sample_steps": "1000", "seed": "0", "net_compile": "false",
        "batch": None, "k": None}
SAMPLERS = ("idem", "pdem")
PAPER_SDE_STEPS = 1000

# Official jarridrb/DEM @ 8e95319 on a 2-core CPU, torch 2.13, 2 threads (issue 4):
# seconds per training step and per generation of `sample_n` samples with 1000 steps.
OFFICIAL_CPU_2_THREADS: dict[str, dict[str, Any]] = {
    "gmm40": {"step_s": 0.53, "sample_s": 2.1, "sample_s_range": [2.1, 2.5], "sample_n": 1000},
    "dw4": {"step_s": 0.27, "sample_s": 42.0, "sample_n": 1000},
    "lj13": {"step_s": 20.0, "sample_s": 349.0, "sample_n": 256},
}


class BenchError(ValueError):
    """Bad command-line input; printed, exit status 2."""


def parse(argv: list[str]) -> dict[str, Any]:
    opts = {k: v for k, v in KEYS.items()}
    for tok in argv:
        key, eq, val = tok.partition("=")
        if not eq or key not in KEYS:
            raise BenchError(f"argument {tok!r}: expected key=value with key in {', '.join(KEYS)}")
        opts[key] = val
    if opts["target"] not in targets.names():
        raise BenchError(f"target: got {opts['target']!r}; allowed: {', '.join(targets.names())}")
    if opts["sampler"] not in SAMPLERS:
        raise BenchError(f"sampler: got {opts['sampler']!r}; allowed: {', '.join(SAMPLERS)}")
    for key, low in (("threads", 1), ("repeats", 1), ("sample_n", 0), ("sample_steps", 1),
                     ("seed", 0), ("batch", 1), ("k", 1)):
        if opts[key] is None:
            continue
        raw = opts[key]
        try:
            opts[key] = int(raw)
            if opts[key] < low:
                raise ValueError
        except ValueError:
            raise BenchError(f"{key}: got {raw!r}; expected an integer >= {low}") from None
    opts["sample_steps"] = min(opts["sample_steps"], PAPER_SDE_STEPS)
    if opts["net_compile"] not in ("true", "false"):
        raise BenchError(f"net_compile: got {opts['net_compile']!r}; allowed: true, false")
    opts["net_compile"] = opts["net_compile"] == "true"
    if opts["device"] not in ("cpu", "cuda"):
        raise BenchError(f"device: got {opts['device']!r}; allowed: cpu, cuda")
    if opts["device"] == "cuda" and not torch.cuda.is_available():
        raise BenchError("device: cuda requested but torch.cuda.is_available() is False")
    return opts


def _timer(device: torch.device) -> Callable[[Callable[[], Any]], float]:
    def run(fn):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0
    return run


def machine_info(device: torch.device) -> dict[str, Any]:
    info = {"threads": torch.get_num_threads(), "device": device.type, "torch": torch.__version__,
            "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "cpu": _cpu_model(), "energy_compile": os.environ.get("BOLTZBENCH_COMPILE", "auto")}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _load() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def bench(opts: dict[str, Any]) -> dict[str, Any]:
    torch.set_num_threads(opts["threads"])
    device = torch.device(opts["device"])
    timed = _timer(device)
    load_before = _load()
    target = targets.get(opts["target"])
    cls = samplers.get(opts["sampler"])
    overrides = {k: opts[v] for k, v in (("batch_size", "batch"), ("n_mc", "k")) if opts[v]}
    config = cls.Config(device=device.type, compile=opts["net_compile"], gmm_init="prior",
                        n_integration_steps=opts["sample_steps"], **overrides)
    sampler = cls(config)
    gen = torch.Generator().manual_seed(opts["seed"])
    sampler.setup(target, gen)
    rc, space = sampler.rc, sampler.space
    B, K = rc.batch_size, rc.n_mc
    reps = opts["repeats"]
    print(f"[bench] {opts['sampler']} on {target.name}: B={B} K={K} ({B * K:,} energy+grad "
          f"evaluations per step), {opts['threads']} threads, device {device.type}", flush=True)

    # --- one training step (the first includes compilation and allocator warm-up)
    warm = timed(lambda: sampler.train_step(gen))
    steps = [timed(lambda: sampler.train_step(gen)) for _ in range(reps)]
    print(f"[bench] step: warm-up {warm:.3f}s, then {', '.join(f'{s:.3f}' for s in steps)} s",
          flush=True)

    # --- floor: the batched energy+gradient call and the network's forward + backward
    g = sampler._gen(gen)
    with torch.no_grad():
        t = torch.rand(B, generator=g, device=device)
        h = sampler.schedule.h(t)
        x0 = space.prior(B, sampler.schedule.prior_std, g, device)
        xt = space.project(x0 + h.sqrt()[:, None] * torch.randn(x0.shape, generator=g, device=device))
        y = xt[:, None, :] + h.sqrt()[:, None, None] * torch.randn(B, K, target.dim, generator=g,
                                                                   device=device)
        y = space.to_original(y.reshape(B * K, target.dim))

    def energy_call():
        target.energy_and_grad(y)

    def net_fb():
        out = sampler._net_fn(t, xt)
        out.pow(2).mean().backward()
        sampler.net.zero_grad(set_to_none=True)

    energy_call(), net_fb()  # warm-up
    e_times = [timed(energy_call) for _ in range(reps)]
    n_times = [timed(net_fb) for _ in range(reps)]
    del y
    floor = min(e_times) + min(n_times)
    print(f"[bench] floor: energy+grad {min(e_times):.3f}s + net fwd/bwd {min(n_times):.3f}s "
          f"= {floor:.3f}s", flush=True)

    result: dict[str, Any] = {
        "sampler": opts["sampler"], "target": target.name, "batch": B, "k": K,
        "evals_per_step": B * K, "step_s": min(steps), "step_s_median": statistics.median(steps),
        "step_warmup_s": warm, "floor_s": floor, "floor_energy_s": min(e_times),
        "floor_net_s": min(n_times), "ratio": min(steps) / floor,
        "energy_evals_per_s": B * K / min(e_times), "step_evals_per_s": B * K / min(steps)}

    # --- generation: sample_n samples, 1000 reverse-SDE steps (extrapolated from sample_steps)
    sizes = [opts["sample_n"]] if opts["sample_n"] else []
    if target.name == "lj13" and opts["sample_n"] and opts["sample_n"] != 256:
        sizes.append(256)  # the official LJ-13 figure is for 256 samples
    for n in sizes:
        s = _time_generation(sampler, n, gen, timed, opts["sample_steps"])
        key = "sample_s" if n == opts["sample_n"] else f"sample_{n}_s"
        result[key] = s
        print(f"[bench] generation of {n} samples x {PAPER_SDE_STEPS} steps: {s:.2f}s", flush=True)
    if sizes:
        result["sample_n"] = opts["sample_n"]
        result["sample_steps_timed"] = opts["sample_steps"]
        result["sample_extrapolated"] = opts["sample_steps"] < PAPER_SDE_STEPS

    result.update(machine_info(device))
    result["net_compile"] = opts["net_compile"]
    result["load_avg_before"], result["load_avg_after"] = load_before, _load()
    result.update(_compare(target.name, result, opts))
    return result


def _time_generation(sampler, n: int, gen: torch.Generator, timed, steps: int) -> float:
    """Seconds for ``n`` samples with the paper's 1000 steps (``steps`` timed, scaled linearly)."""
    if steps < PAPER_SDE_STEPS:
        sampler.rc.n_integration_steps = 1
        timed(lambda: sampler.generate(min(n, 16), gen))  # warm-up (compilation, allocator)
        sampler.rc.n_integration_steps = steps
        return timed(lambda: sampler.generate(n, gen)) * PAPER_SDE_STEPS / steps
    return timed(lambda: sampler.generate(n, gen))


def _compare(name: str, r: dict[str, Any], opts: dict[str, Any]) -> dict[str, Any]:
    official = OFFICIAL_CPU_2_THREADS.get(name)
    if official is None or opts["batch"] or opts["k"]:
        return {"official": None, "speedup": None}
    speedup = {"step": official["step_s"] / r["step_s"]}
    key = "sample_s" if official["sample_n"] == r.get("sample_n") else \
        f"sample_{official['sample_n']}_s"
    if key in r:
        speedup["sample"] = official["sample_s"] / r[key]
    return {"official": {"source": "issue 4: official code, 2-core CPU, torch 2.13, 2 threads",
                         **official}, "speedup": speedup}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help", "help") for a in argv):
        print(__doc__.strip())
        return 0
    try:
        opts = parse(argv)
    except BenchError as err:
        print(f"runners.bench: {err}", file=sys.stderr)
        return 2
    result = bench(opts)
    print(json.dumps({k: (round(v, 6) if isinstance(v, float) and math.isfinite(v) else v)
                      for k, v in result.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
