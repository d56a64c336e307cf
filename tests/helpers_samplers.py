"""Test-only samplers for the grid tests. Never imported by the package, so users never see them
in ``samplers=all``; grid subprocesses load them through ``BOLTZBENCH_PLUGINS=<this file>``.

* ``t_gauss``: N(0, scale^2) (mean-free for particles), with its exact log-density; its ``fit``
  spends energy evaluations in batches until the budget is exhausted, optionally sleeping per step
  (``sleep_s``) and appending one line per fit to ``<count_dir>/<target>-<seed>.runs``.
* ``t_diverge``: raises ``Diverged`` in fit (``where="fit"``) or returns NaN samples.
* ``t_crash``: raises RuntimeError in fit (status ``error`` with a traceback).
* ``t_exit``: kills its own process in fit (a worker dying mid-grid).
* ``t_ckpt``: like t_gauss but with ``state_dict``/``load_state_dict`` (steps done so far).

Also the fixtures the grid/collect/evaluate tests share (``test_samplers``, ``tiny_profile``).
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

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


class TExit(TDiverge):
    """Kills its own process in fit (as a segfault or the OOM killer would)."""

    name = "t_exit"
    pretty_name = "TestExit"

    def fit(self, target, budget, generator):
        os._exit(3)


class TCkpt(TGauss):
    name = "t_ckpt"
    pretty_name = "TestCkpt"

    def state_dict(self) -> dict:
        return {"steps": self.steps, "target": self.target.name}

    def load_state_dict(self, state: dict) -> None:
        # Ready to sample after loading, even if no budget remains for fit.
        import targets
        self.steps = state["steps"]
        self.target = targets.get(state["target"])


# Loaded as a plugin by a grid subprocess ($BOLTZBENCH_PLUGINS): register now. Imported by a test
# module for its fixtures: register only inside the `test_samplers` fixture, so that other
# helpers' registry-driven tests never see these samplers.
if "pytest" not in sys.modules:
    for _cls in (TGauss, TDiverge, TCrash, TCkpt, TExit):
        if _cls.name not in samplers.names():
            samplers.register(_cls)


# ------------------------------------------------------------------------- fixtures for the tests
HELPERS = Path(__file__).resolve()
TEST_SAMPLERS = ("t_gauss", "t_diverge", "t_crash", "t_ckpt", "t_exit")

TINY = """
seeds: 1
n_eval: 64
budget:
  gmm40: {max_steps: 3, max_seconds: 20}
  dw4: {max_steps: 3, max_seconds: 20}
  lj13: {max_steps: 3, max_seconds: 20}
  lj55: {max_steps: 3, max_seconds: 20}
metric_options:
  x_w2_aligned: {max_n: 16}
samplers:
  t_gauss:
    all: {batch: 64}
"""

pytest = sys.modules.get("pytest")  # a grid subprocess loading this as a plugin needs no fixtures

if pytest is not None:
    @pytest.fixture
    def test_samplers(monkeypatch):
        """Registers the test-only samplers for one test (and for its subprocesses through
        $BOLTZBENCH_PLUGINS), then removes them so other tests' registry loops never see them."""
        monkeypatch.setenv("BOLTZBENCH_PLUGINS", str(HELPERS))
        for cls in (TGauss, TDiverge, TCrash, TCkpt, TExit):
            if cls.name not in samplers.names():
                samplers.register(cls)
        sys.modules.setdefault(HELPERS.stem, sys.modules[__name__])
        yield
        for name in TEST_SAMPLERS:
            samplers._REGISTRY.pop(name, None)

    @pytest.fixture
    def tiny_profile(tmp_path) -> Path:
        path = tmp_path / "tiny.yaml"
        path.write_text(TINY)
        return path
