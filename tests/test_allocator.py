"""samplers.allocator: with the tuning, re-allocating a large tensor reuses mapped pages (no page
faults); without it, glibc unmaps it on free and every new tensor faults its pages in again."""
from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

PROBE = r"""
import resource, sys
from samplers.allocator import retain_freed_memory
print("applied", retain_freed_memory())
import torch
torch.set_num_threads(1)
def forward():  # several 20 MB activations alive at once, then all freed, as in a forward
    live = [torch.empty(5 * 1024 * 1024).fill_(1.0) for _ in range(6)]
    del live
for _ in range(3):
    forward()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    forward()
print("faults", (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 10)
"""


def _probe(tuning: str) -> tuple[bool, float]:
    env = {**os.environ, "BOLTZBENCH_MALLOC_TUNING": tuning}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    return out[1] == "True", float(out[3])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="mallopt tuning exists on glibc only")
def test_tuning_removes_page_faults_of_repeated_large_allocations():
    applied, faults = _probe("1")
    off_applied, off_faults = _probe("0")
    assert applied and not off_applied
    assert faults < 100          # pages reused: (almost) no fault per pass (measured: 0)
    assert off_faults > 5000     # measured 30,688 = 6 x 5120 pages of 4 KiB faulted in again
