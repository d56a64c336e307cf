"""What reproducing a published table costs: per-cell estimates from rates measured here.

Used by ``python -m runners.paper list``. Every figure is a rate measured on this project's
development machine (a 2-core VM, shared with other work, so timings drift by ±25 %,
docs/performance.md) scaled by the paper budget of the cell; nothing is measured at list time,
so the listing is instant and the same on every machine. How each rate was measured is written
beside it; re-measure with the commands there when the code gets faster.

GPU figures: no GPU was available to the sessions that measured these rates, so the GPU column
gives what the sources published (the blog's L40 figure for iDEM on LJ-55) or says "not measured".
"""
from __future__ import annotations

# Budgets of the paper profile (runners/profiles/paper.yaml): one full official iDEM run.
PAPER_BUDGET = {"gmm40": 2.56e10, "dw4": 5.12e10, "lj13": 5.12e10, "lj55": 2.56e9}

# RWM in the paper profile (16,384 chains), one torch thread: CPU seconds of `fit` per energy
# evaluation, measured 2026-12-03 by `samplers.get("rwm")(n_chains=16384).fit` under budgets of
# 4e7 (GMM-40, DW-4), 1e7 (LJ-13) and 3e6 (LJ-55, 12,800 chains as the paper profile)
# evaluations, time.process_time (CPU time, so the load of
# the shared machine, 6-8 on 2 cores then, does not enter; wall time was 2.5-5x longer). The same
# settings through runners.grid at 2e8: GMM-40 106 s, DW-4 195 s wall at that load.
RWM_S_PER_EVAL = {"gmm40": 315e-9, "dw4": 297e-9, "lj13": 1619e-9, "lj55": 13690e-9}

# iDEM, docs/performance.md (session 7 table, `python -m runners.bench sampler=idem`, 2 threads):
# one optimiser step, and one generation of the epoch's 1000 samples (LJ-13 measured for 256 and
# scaled by 1000/256). An official run is EPOCHS x (100 steps + 1 generation).
IDEM_STEP_S = {"gmm40": 0.0366, "dw4": 0.092, "lj13": 1.46}
IDEM_GENERATION_S = {"gmm40": 1.70, "dw4": 32.9, "lj13": 134.0 * 1000 / 256}
IDEM_EPOCHS = {"gmm40": 1000, "dw4": 1000, "lj13": 1000, "lj55": 2000}
IDEM_INNER_STEPS = 100

# Energy+gradient evaluations per second (docs/performance.md, batched, 2 threads): the floor of
# any gradient-based sampler under the paper budget; networks (PIS/DDS) add more.
ENERGY_GRAD_PER_S = {"gmm40": 14.0e6, "dw4": 20.2e6, "lj13": 1.77e6}

# eq_w2 at the ASBS size (2000 x 2000), one thread: DW-4 5.0 s, LJ-13 48 s (measured with the
# floors of docs/metrics.md); LJ-55 ~4 M Hungarian solves of 55 x 55 at ~82 µs: ~330 s.
EQ_W2_2000_S = {"dw4": 5.0, "lj13": 48.0, "lj55": 330.0}

GPU_PUBLISHED = {("idem", "lj55"): "2.5 days on one L40 (blog draft, reference-idem.md §1.1 A)"}


def cpu_seconds(sampler: str, target: str) -> tuple[float | None, str]:
    """(seconds of one cell on this CPU, or None when no rate is known; how it was derived)."""
    budget = PAPER_BUDGET[target]
    if sampler == "exact":
        return 10.0, "25 batches of exact samples scored: ~10 s measured"
    if sampler in ("rwm", "smc") and RWM_S_PER_EVAL.get(target):
        rate = RWM_S_PER_EVAL[target]
        return budget * rate, f"budget {budget:.3g} x {rate * 1e9:.3g} s per 1e9 RWM evaluations"
    if sampler == "idem" and target in IDEM_STEP_S:
        per_epoch = IDEM_INNER_STEPS * IDEM_STEP_S[target] + IDEM_GENERATION_S[target]
        return (IDEM_EPOCHS[target] * per_epoch,
                f"{IDEM_EPOCHS[target]} epochs x ({IDEM_INNER_STEPS} steps x "
                f"{IDEM_STEP_S[target]} s + generation {IDEM_GENERATION_S[target]:.3g} s)")
    if sampler in ("pis", "dds") and target in ENERGY_GRAD_PER_S:
        rate = ENERGY_GRAD_PER_S[target]
        return budget / rate, (f"lower bound: budget {budget:.3g} / {rate:.3g} energy+grad "
                               "evaluations per s; the network adds more")
    return None, "no rate measured here"


def human(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def table_cost(cells: list[tuple[str, str]], seeds: int,
               metric_seconds: dict[str, float] | None = None) -> list[str]:
    """Lines: per (sampler, target) one cell's CPU time and how, the GPU figure, and the total
    over ``seeds`` cells of each."""
    lines, total, unknown = [], 0.0, []
    for s, t in cells:
        sec, how = cpu_seconds(s, t)
        extra = (metric_seconds or {}).get(t, 0.0) if s != "exact" else 0.0
        if sec is not None:
            sec += extra
            total += seeds * sec
        else:
            unknown.append(f"{s}/{t}")
        gpu = GPU_PUBLISHED.get((s, t), "not measured (no GPU in the measuring session)")
        metric = f" + eq_w2 {human(extra)}" if extra and sec is not None else ""
        lines.append(f"{s} on {t}: {human(sec)} per cell here ({how}{metric}), x {seeds}; "
                     f"one GPU: {gpu}")
    tail = f" + {', '.join(unknown)} (no rate)" if unknown else ""
    known = human(total) if total or not unknown else "unknown"
    lines.append(f"total here, one cell after another: {known}{tail}")
    return lines
