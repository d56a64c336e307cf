"""Keep freed memory in the process instead of returning it to the OS (glibc ``mallopt``).

Why: samplers allocate and free the same large tensors over and over (iDEM's EGNN edge tensors on
LJ-13 are ``[256, 13, 12, 128]`` float32 = 20 MB per activation, thousands of times per
generation). glibc serves blocks that large with ``mmap`` and unmaps them on free, so every new
tensor starts on fresh pages and pays a page fault per 4 KiB on first touch: on a 2-core CPU a
20 MB ``addmm`` bias copy took 28 ms instead of 8 ms, and an LJ-13 training step's network
forward+backward took 4.4 s instead of 1.7 s (one thread, same conditions; page faults per LJ-13
sampling forward 60k -> 0). Raising the mmap threshold and turning heap trimming off makes freed
blocks stay in the heap, where the next allocation of that size reuses already-mapped pages.
samplers.idem (``setup``) and runners.cell (``run_cell``) apply it; it is process-wide.

The cost is that the process keeps its peak heap until it exits (the ``peak_memory_mb`` a grid
row reports is unchanged: it is the peak resident set either way). Numbers are unaffected. It is
a no-op off glibc (macOS, musl) and can be disabled with ``BOLTZBENCH_MALLOC_TUNING=0``.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

# glibc <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 30   # blocks below 1 GiB come from the heap (a glibc that refuses the
#                            value returns 0 and keeps its default)
TRIM_THRESHOLD = -1        # never shrink the heap (mallopt(3): -1 disables trimming; a positive
#                            value is an int, at most 2 GiB, below an LJ-13 training step's peak)

_state: dict[str, bool] = {}


def retain_freed_memory() -> bool:
    """Apply the thresholds once per process; returns whether glibc accepted them."""
    if "applied" in _state:
        return _state["applied"]
    ok = False
    if os.environ.get("BOLTZBENCH_MALLOC_TUNING", "1") != "0":
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
        except (OSError, AttributeError):  # not glibc: nothing to tune
            mallopt = None
        if mallopt is not None:
            ok = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and \
                bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    _state["applied"] = ok
    return ok
