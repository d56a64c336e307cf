"""GMM-40: the 2-D mixture of 40 Gaussians of FAB (Midgley et al. 2023) as the iDEM code builds it.

Means U[-40, 40]^2 from a generator seeded 0 (identical to ``torch.manual_seed(0);
(torch.rand(40, 2) - 0.5) * 80``), equal weights, per-axis standard deviation softplus(1.0)
≈ 1.3133 (fab's "log_var" is passed through softplus and used as a std). The density is
normalised, so log Z = 0. Coordinates are the original ones; the iDEM sampler's 1/50 scaling
lives in the sampler, not here.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import fast
from .base import Target, subsample_rows

# Official test set size (fab's n_test_set_samples) and DEM's val set size.
SPLIT_SIZES = {"test": 1000, "val": 2000}
# The official test set is drawn from an unseeded RNG (reference-idem.md §6.5); ours is fixed.
SPLIT_SEEDS = {"test": 1000, "val": 2000}


def gmm_means(n_modes: int = 40, loc_scaling: float = 40.0, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n_modes, 2, generator=g) - 0.5) * 2 * loc_scaling


def gmm_log_prob(x: torch.Tensor, means: torch.Tensor, std: float) -> torch.Tensor:
    """log of the equally weighted isotropic mixture; x ``[..., 2]`` -> ``[...]``."""
    d = means.shape[-1]
    diff = (x.unsqueeze(-2) - means) / std  # [..., K, 2]
    comp = -0.5 * diff.pow(2).sum(-1) - d * math.log(std) - 0.5 * d * math.log(2 * math.pi)
    return torch.logsumexp(comp, dim=-1) - math.log(means.shape[0])


class GMM40(Target):
    name = "gmm40"
    pretty_name = "GMM-40"
    has_exact_samples = True
    log_Z = 0.0

    def __init__(self, n_modes: int = 40, loc_scaling: float = 40.0, log_var_scaling: float = 1.0,
                 seed: int = 0):
        super().__init__(dim=2, params={"n_modes": n_modes, "loc_scaling": loc_scaling,
                                        "log_var_scaling": log_var_scaling, "means_seed": seed})
        self.means = gmm_means(n_modes, loc_scaling, seed)
        self.std = float(F.softplus(torch.tensor(log_var_scaling, dtype=torch.float64)))

    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        return -gmm_log_prob(x, self.means.to(x), self.std)

    def _energy_and_grad(self, x):
        # Closed form, ∇E = Σ_k w_k(x) (x - μ_k) / σ² with responsibilities w, as one fused kernel
        # (targets/fast.py).
        return fast.fused(fast.gmm_energy_and_grad, x, self.means.to(x), self.std, event_dims=1,
                          entries_per_config=self.means.shape[0])

    def sample_exact(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n exact samples ``[n, 2]``; not charged (no energy evaluation is involved)."""
        k = torch.randint(self.means.shape[0], (n,), generator=generator)
        return self.means[k] + self.std * torch.randn(n, 2, generator=generator)

    def reference(self, split="test", n=None, generator=None):
        if split not in SPLIT_SIZES:
            raise ValueError(f"gmm40: split must be one of {sorted(SPLIT_SIZES)}, got {split!r}")
        if generator is not None:  # fresh exact samples
            return self.sample_exact(n or SPLIT_SIZES[split], generator)
        g = torch.Generator().manual_seed(SPLIT_SEEDS[split])
        return subsample_rows(self.sample_exact(max(n or 0, SPLIT_SIZES[split]), g)[: n or None],
                              None, None, "gmm40.reference")

    def reference_info(self, split="test"):
        return {"reference_source": "exact", "reference_file": f"exact seed {SPLIT_SEEDS.get(split)}",
                "reference_sha256": ""}
