"""A test-only sampler whose process dies hard in ``fit`` (SIGKILL of itself), as after the
kernel's OOM killer or a segfault in an extension: no Python exception, no row, no submitit
result. The grid process must then write the cell's row itself (status ``error``, the job's log
path in the reason). tests/helpers_samplers.py has the samplers that fail *inside* Python
(``t_crash``, ``t_diverge``); this one completes the set for tests/test_slurm.py.

Loaded only as a plugin (``BOLTZBENCH_PLUGINS=.../tests/slurm/dying_sampler.py``) by the grid
subprocess and its SLURM jobs; never imported by the package, so users never see ``t_die``.
"""
from __future__ import annotations

import os
import signal
from dataclasses import dataclass

import torch

import samplers


@dataclass
class DieConfig:
    evals_before: int = 3  # energy evaluations spent before dying (so the cell did start)


class TDie:
    name = "t_die"
    pretty_name = "TestDie"
    has_log_prob = False
    Config = DieConfig

    def __init__(self, config: DieConfig | None = None):
        self.config = config or DieConfig()

    def fit(self, target, budget, generator: torch.Generator) -> dict:
        target.energy(torch.zeros(self.config.evals_before, target.dim))
        os.kill(os.getpid(), signal.SIGKILL)  # never returns
        return {}

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        raise AssertionError("unreachable: fit killed the process")


if TDie.name not in samplers.names():
    samplers.register(TDie)
