"""The fast problem with a known answer used by the per-sampler quality tests (test_quality.py).

``Bimodal2D``: an equal-weight mixture of N((-1.5, 0), 0.6² I) and N((1.5, 0), 0.6² I), with
exact samples and a closed-form gradient. Quality = exact W2 (``metrics.wasserstein.w2``) between
``N`` sampler outputs and ``N`` exact samples; its floor is the same W2 between two independent
exact sets. ``measure(name, seeds)`` gives the seed distribution the tests' margins come from:

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD:tests python -c \\
        "from helpers_quality import measure; measure('mala', range(10))"
"""
from __future__ import annotations

import math
import time

import torch

import samplers
from metrics.wasserstein import w2
from samplers import Budget
from targets.base import Target

N = 500  # samples per side of the W2


class Bimodal2D(Target):
    name = "t_bimodal2d"
    pretty_name = "Bimodal-2D"
    has_exact_samples = True
    log_Z = 0.0

    def __init__(self, sep: float = 1.5, std: float = 0.6):
        super().__init__(2, {"sep": sep, "std": std})
        self.means = torch.tensor([[-sep, 0.0], [sep, 0.0]])
        self.std = std

    def _comp(self, x):
        diff = (x.unsqueeze(-2) - self.means.to(x)) / self.std  # [..., 2, 2]
        return -0.5 * diff.pow(2).sum(-1) - 2 * math.log(self.std) - math.log(2 * math.pi)

    def _energy(self, x):
        return -(torch.logsumexp(self._comp(x), -1) - math.log(2))

    def _energy_and_grad(self, x):
        w = torch.softmax(self._comp(x), -1)  # responsibilities [..., 2]
        grad = (w.unsqueeze(-1) * (x.unsqueeze(-2) - self.means.to(x))).sum(-2) / self.std ** 2
        return self._energy(x), grad

    def sample_exact(self, n, generator=None):
        k = torch.randint(2, (n,), generator=generator)
        return self.means[k] + self.std * torch.randn(n, 2, generator=generator)


# Per sampler: (config fields, Budget) giving a quick fit on Bimodal2D.
SETUPS = {
    "mala": ({"n_chains": 128, "thinning": 5}, Budget(max_steps=400)),
    "hmc": ({"n_chains": 128, "thinning": 2, "n_leapfrog": 5}, Budget(max_steps=200)),
    "rwm": ({"n_chains": 128, "thinning": 5, "step_size": 0.8}, Budget(max_steps=400)),
    "smc": ({"n_chains": 512, "steps_per_temp": 5, "thinning": 5}, Budget(max_steps=300)),
}


def quality(name: str, seed: int, setups: dict = SETUPS) -> tuple[float, float]:
    """(W2 of the sampler fitted with seed ``seed`` to exact samples, the floor for that seed)."""
    target = Bimodal2D()
    cls = samplers.get(name)
    fields, budget = setups[name]
    s = cls(cls.Config(**fields))
    s.fit(target, budget, torch.Generator().manual_seed(seed))
    x = s.sample(N, torch.Generator().manual_seed(10_000 + seed)).double()
    g = torch.Generator().manual_seed(20_000 + seed)
    ref, other = target.sample_exact(N, g).double(), target.sample_exact(N, g).double()
    return w2(x, ref), w2(other, ref)


def measure(name: str, seeds, setups: dict = SETUPS) -> None:
    vals, floors = [], []
    for seed in seeds:
        t0 = time.perf_counter()
        v, f = quality(name, seed, setups)
        vals.append(v)
        floors.append(f)
        print(f"{name} seed {seed}: w2 {v:.4f} floor {f:.4f} ({time.perf_counter() - t0:.1f} s)",
              flush=True)
    v, f = torch.tensor(vals), torch.tensor(floors)
    print(f"{name}: w2 mean {v.mean():.4f} sd {v.std():.4f} min {v.min():.4f} max {v.max():.4f}; "
          f"floor mean {f.mean():.4f} sd {f.std():.4f} max {f.max():.4f}", flush=True)

# Neural samplers: longer fits (slow tests).
DEM = {"sigma_min": 1e-3, "sigma_max": 2.0, "n_mc": 256, "batch_size": 256, "n_inner": 50,
       "n_generate": 256, "n_integration_steps": 100, "hidden": 64, "n_layers": 2, "lr": 2e-3,
       "n_init": 256, "buffer_min": 256, "gmm_init": "prior", "network": "mlp"}
SLOW_SETUPS = {
    "idem": (DEM, Budget(max_steps=800)),
    "pdem": (DEM, Budget(max_steps=800)),
    "pis": ({"sigma": 2.0, "n_steps": 30, "batch_size": 128, "hidden": 32, "lr": 3e-3},
            Budget(max_steps=200)),
    "dds": ({"sigma": 1.5, "n_steps": 30, "batch_size": 128, "hidden": 32, "lr": 3e-3},
            Budget(max_steps=200)),
    # buffer_min 512 = 4 updates x 128: a round's batches are distinct points (no_replacement)
    "fab": ({"sigma": 1.5, "n_layers": 4, "hidden": 32, "lr": 1e-3, "buffer_size": 2048,
             "buffer_min": 512}, Budget(max_steps=800)),
}
