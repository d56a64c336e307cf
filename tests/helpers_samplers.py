"""Test-only samplers for the grid tests. Never imported by the package, so users never see them
in ``samplers=all``; grid subprocesses load them through ``BOLTZBENCH_PLUGINS=<this file>``.

* ``t_gauss``: N(0, scale^2) (mean-free for particles), with its exact log-density; its ``fit``
  spends energy evaluations in batches until the budget is exhausted, optionally sleeping per step
  (``sleep_s``) and appending one line per fit to ``<count_dir>/<target>-<seed>.runs``.
* ``t_diverge``: raises ``Diverged`` in fit (``where="fit"``) or returns NaN samples.
* ``t_crash``: raises RuntimeError in fit (status ``error`` with a traceback).
* ``t_ckpt``: like t_gauss but with ``state_dict``/``load_state_dict`` (steps done so far).
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

import torch

import samplers
from samplers import Budget, Diverged


@dataclass
class GaussConfig:
    scale: float = 1.0
    batch: int = 64
    sleep_s: float = 0.0
    count_dir: str = ""


class TGauss:
    name = "t_gauss"
    pretty_name = "TestGauss"
    has_log_prob = True
    Config = GaussConfig

    def __init__(self, config: GaussConfig | None = None):
        self.config = config or GaussConfig()
        self.steps = 0

    def fit(self, target, budget: Budget, generator: torch.Generator) -> dict:
        self.target = target
        c = self.config
        if c.count_dir:
            with open(os.path.join(c.count_dir, f"{target.name}-{self.name}.runs"), "a") as f:
                f.write(f"{os.getpid()}\n")
        clock = budget.start(target)
        while not clock.exhausted(self.steps) and clock.allows(c.batch):
            target.energy_and_grad(torch.randn(c.batch, target.dim, generator=generator))
            self.steps += 1
            if c.sleep_s:
                time.sleep(c.sleep_s)
        return {"steps": self.steps, "loss": 0.5}

    def _dof(self) -> int:
        t = self.target
        return t.dim - (t.spatial_dim or 0)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        x = self.config.scale * torch.randn(n, self.target.dim, generator=generator)
        return self.target.remove_mean(x) if self.target.n_particles else x

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        s, d = self.config.scale, self._dof()
        return -0.5 * x.pow(2).sum(-1) / s**2 - 0.5 * d * math.log(2 * math.pi * s**2)


@dataclass
class DivergeConfig:
    where: str = "fit"


class TDiverge:
    name = "t_diverge"
    pretty_name = "TestDiverge"
    has_log_prob = False
    Config = DivergeConfig

    def __init__(self, config: DivergeConfig | None = None):
        self.config = config or DivergeConfig()

    def fit(self, target, budget, generator):
        self.dim = target.dim
        target.energy(torch.zeros(3, target.dim))
        if self.config.where == "fit":
            raise Diverged("loss became NaN at step 3")
        return {}

    def sample(self, n, generator):
        return torch.full((n, self.dim), float("nan"))


class TCrash(TDiverge):
    name = "t_crash"
    pretty_name = "TestCrash"

    def fit(self, target, budget, generator):
        raise RuntimeError("boom: deliberately broken sampler")


class TCkpt(TGauss):
    name = "t_ckpt"
    pretty_name = "TestCkpt"

    def state_dict(self) -> dict:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.steps = state["steps"]


for _cls in (TGauss, TDiverge, TCrash, TCkpt):
    if _cls.name not in samplers.names():
        samplers.register(_cls)
