"""Unadjusted Langevin algorithm (ULA): x <- x - h grad E(x) + sqrt(2h) xi, no accept/reject.

Roberts & Tweedie (1996), "Exponential convergence of Langevin distributions and their discrete
approximations", Bernoulli 2(4). Biased by O(h) because nothing corrects the discretisation, which
is what a comparison beside MALA (the same step plus a Metropolis test) shows.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from samplers import Budget, check_finite, check_int, check_positive, validated


class ULA:
    name = "ula"                    # the key in tables and on the command line (= entry-point name)
    pretty_name = "ULA"             # the name in plots
    has_log_prob = False            # no density of its own samples

    @dataclass
    class Config:
        n_chains: int = 64
        step_size: float = 1e-3
        init_scale: float = 1.0     # chains start at init_scale * N(0, I), mean-free for particles

        def validate(self) -> None:
            check_int("n_chains", self.n_chains)
            check_positive("step_size", self.step_size)
            check_positive("init_scale", self.init_scale)

    @classmethod
    def supports(cls, target):
        # Measured: from random starts the LJ gradients (~1e10 at overlapping pairs) throw ULA's
        # unrejected steps to ~1e4, at any step size the smoke budget affords; MALA rejects them.
        if target.name.startswith("lj"):
            return "ULA has no accept/reject step and diverges from random Lennard-Jones starts"
        return True

    def __init__(self, config: Config | None = None):
        self.config = validated(config or self.Config(), self.name)
        self.pool = None

    def _mean_free(self, x):
        return x if self.target.n_particles is None else self.target.remove_mean(x)

    def fit(self, target, budget: Budget, generator: torch.Generator) -> dict:
        cfg, self.target = self.config, target
        clock = budget.start(target)  # reads the target's own counter: every energy call counts
        x = cfg.init_scale * torch.randn(cfg.n_chains, target.dim, generator=generator)
        x = self._mean_free(x)
        states, steps = [], 0
        while not clock.exhausted(steps) and clock.allows(cfg.n_chains):
            _, grad = target.energy_and_grad(x)  # n_chains energy+gradient evaluations
            noise = torch.randn(x.shape, generator=generator)
            # Re-centring is exact for translation-invariant particle energies (their gradient is
            # mean-free) and removes the centre-of-mass drift that float rounding adds.
            x = self._mean_free(x - cfg.step_size * grad + (2 * cfg.step_size) ** 0.5 * noise)
            check_finite(x, "ula x")
            states.append(x)
            steps += 1
        # The second half of the trajectory is the sample pool (the first half is burn-in).
        self.pool = torch.cat(states[len(states) // 2:]) if states else x
        warnings = [] if steps else [f"budget below one ULA step ({cfg.n_chains} evaluations): "
                                     f"samples are the initial draws ({clock.cap()})"]
        return {"budget_binding": clock.binding, "warnings": warnings, "steps": steps,
                "energy_evals": clock.energy_evals}

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        idx = torch.randint(len(self.pool), (n,), generator=generator)
        return self.pool[idx].float()
