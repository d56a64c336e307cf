"""FAB's configuration and its prioritised-buffer loss (samplers/fab.py has the sampler)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .base import (check_bool, check_choice, check_device, check_int, check_positive,
                   check_range)
from .fab_buffer import SAMPLING

# "realnvp": the non-equivariant RealNVP on Helmert coordinates (any target); "se3_aug": the
# E(3)-equivariant augmented coupling flow of Midgley et al. 2023 (particle targets only).
FLOWS = ("realnvp", "se3_aug")
# "before_step": the drawn points are re-weighted with the log q computed for the loss, before the
# optimiser step (fab-torch PrioritisedBufferTrainer.run with its default
# w_adjust_in_buffer_after_update=False; se3-augmented-coupling-flows fab_train_with_buffer.step);
# "after_step": with log q recomputed after the step (one more flow pass; earlier versions here).
ADJUST = ("before_step", "after_step")
TRANSITIONS = ("hmc", "metropolis")
DTYPES = ("float32", "float64")
LR_SCHEDULES = ("constant", "warmup_cosine")


@dataclass
class FABConfig:
    sigma: float | None = None        # base N(0, sigma^2 I); None: samplers.pis.SIGMA_DEFAULTS
    n_layers: int = 10                # affine coupling layers
    hidden: int = 128
    lr: float = 1e-4
    max_grad_norm: float | None = 100.0
    batch_size: int = 128             # flow samples per AIS round and buffer batch size
    n_updates_per_ais: int = 4
    buffer_size: int = 12800
    buffer_min: int = 1280
    n_intermediate: int = 2
    n_leapfrog: int = 5
    step_size: float = 0.1            # initial HMC step, in units of sigma
    target_accept: float = 0.65
    buffer_correction: bool = True    # fab-torch's w_adjust importance correction of buffer points
    w_adjust_clip: float | None = 10.0  # fab-torch's w_adjust_max_clip; None: no clip
    max_iters: int | None = None      # gradient steps
    sample_batch: int = 1000
    device: str = "cpu"
    # flow="se3_aug" (particle targets; samplers/se3_flow.py): n_layers coupling pairs, hidden =
    # MLP width, egnn_blocks / egnn_features the conditioner EGNN's depth / invariant features.
    flow: str = "realnvp"
    n_aug: int = 1                    # augmented sets (odd)
    aug_scale: float = 0.1            # a | x ~ N(x, aug_scale^2) in the base and the aux target
    n_aug_samples: int = 20           # draws of a for the marginal log q(x) estimate
    egnn_blocks: int = 3
    egnn_features: int = 128
    # Buffer use (samplers/fab_buffer.py). Defaults as fab-torch's PrioritisedReplayBuffer
    # (sample_with_replacement=False) and PrioritisedBufferTrainer (adjust before the step).
    buffer_sampling: str = "no_replacement"
    buffer_adjust: str = "before_step"
    # AIS transition. "hmc": n_leapfrog steps from step_size (units of sigma), dual-averaged;
    # "metropolis": fab-torch's Metropolis (sampling_methods/transition_operators/metropolis.py):
    # n_metropolis random-walk steps of std metropolis_step in data units per intermediate,
    # no gradient; metropolis_adapt: its rule (x / ÷ 1.05 per step towards target_accept), off
    # as their experiments/config/gmm.yaml (tune_step_size: false, init_step_size 5.0, 1 step).
    transition: str = "hmc"
    n_metropolis: int = 1
    metropolis_step: float = 5.0
    metropolis_adapt: bool = False
    dtype: str = "float32"            # flow, AIS and buffer; fab-torch's GMM run uses float64
    # lr: constant, or "warmup_cosine" as se3-augmented-coupling-flows' optimizer config
    # (default_lr_schedule.yaml; eacf/utils/optimize.py get_optimizer, optax's
    # warmup_cosine_decay_schedule): linear from lr_init to lr (the peak) over lr_warmup_steps
    # gradient steps, then cosine to lr_end at lr_decay_steps (counted from step 0, warm-up
    # included; None: max_iters); theirs 2e-5 -> 2e-4 -> 2e-5, warm-up 30 AIS rounds x 8 = 240.
    lr_schedule: str = "constant"
    lr_init: float = 2e-5
    lr_end: float = 2e-5
    lr_warmup_steps: int = 240
    lr_decay_steps: int | None = None

    def validate(self) -> None:
        """Raise ValueError (message starts with the field name) for any value out of range."""
        if self.flow not in FLOWS:
            raise ValueError(f"flow: got {self.flow!r}; allowed: {', '.join(FLOWS)}")
        if self.n_aug < 1 or self.n_aug % 2 == 0:
            raise ValueError(f"n_aug: got {self.n_aug!r}; expected an odd integer >= 1")
        for name in ("n_aug_samples", "egnn_blocks", "egnn_features"):
            check_int(name, getattr(self, name))
        check_positive("aug_scale", self.aug_scale)
        check_positive("sigma", self.sigma, optional=True)
        check_positive("w_adjust_clip", self.w_adjust_clip, optional=True)
        if not isinstance(self.buffer_correction, bool):
            raise ValueError(f"buffer_correction: got {self.buffer_correction!r}; "
                             f"expected true or false")
        for name in ("n_layers", "hidden", "batch_size", "n_updates_per_ais", "buffer_size",
                     "buffer_min", "n_intermediate", "n_leapfrog", "sample_batch"):
            check_int(name, getattr(self, name))
        check_positive("lr", self.lr)
        check_positive("max_grad_norm", self.max_grad_norm, optional=True)
        check_positive("step_size", self.step_size)
        check_range("target_accept", self.target_accept, 0, 1)
        check_int("max_iters", self.max_iters, minimum=0, optional=True)
        if self.buffer_min > self.buffer_size:
            raise ValueError(f"buffer_min: got {self.buffer_min}; expected <= buffer_size="
                             f"{self.buffer_size}")
        check_device("device", self.device)
        check_choice("buffer_sampling", self.buffer_sampling, SAMPLING)
        check_choice("buffer_adjust", self.buffer_adjust, ADJUST)
        round_draws = self.n_updates_per_ais * self.batch_size
        if self.buffer_sampling == "no_replacement" and self.buffer_min < round_draws:
            # fab-jax asserts the same (batch_size * n_batches <= min_length_to_sample)
            raise ValueError(
                f"buffer_min: got {self.buffer_min}; buffer_sampling=no_replacement draws "
                f"n_updates_per_ais x batch_size = {round_draws} distinct points per round, so "
                f"buffer_min must be >= {round_draws}; raise it or use "
                f"buffer_sampling=with_replacement")
        check_choice("transition", self.transition, TRANSITIONS)
        check_int("n_metropolis", self.n_metropolis)
        check_positive("metropolis_step", self.metropolis_step)
        check_bool("metropolis_adapt", self.metropolis_adapt)
        check_choice("dtype", self.dtype, DTYPES)
        check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        check_positive("lr_init", self.lr_init)
        check_positive("lr_end", self.lr_end)
        check_int("lr_warmup_steps", self.lr_warmup_steps, minimum=0)
        check_int("lr_decay_steps", self.lr_decay_steps, optional=True)
        if self.lr_schedule == "warmup_cosine":
            total = self.lr_decay_steps if self.lr_decay_steps is not None else self.max_iters
            if total is None:
                raise ValueError("lr_decay_steps: got None with max_iters None; "
                                 "lr_schedule=warmup_cosine needs the schedule's length")
            if total <= self.lr_warmup_steps:
                raise ValueError(f"lr_decay_steps: got {total} (max_iters if None); expected > "
                                 f"lr_warmup_steps={self.lr_warmup_steps}")

    def lr_at(self, step: int) -> float:
        """The learning rate of gradient step ``step`` (0-based)."""
        if self.lr_schedule == "constant":
            return self.lr
        total = self.lr_decay_steps if self.lr_decay_steps is not None else self.max_iters
        return warmup_cosine_lr(step, self.lr_init, self.lr, self.lr_end, self.lr_warmup_steps,
                                total)


def warmup_cosine_lr(step: int, init: float, peak: float, end: float, warmup: int,
                     total: int) -> float:
    """Linear from ``init`` at step 0 to ``peak`` at ``warmup``, then half a cosine from ``peak`` to
    ``end`` at ``total`` (warm-up included), ``end`` afterwards: the schedule optax's
    ``warmup_cosine_decay_schedule`` defines, evaluated at the optimiser's step count."""
    if step < warmup:
        return init + (peak - init) * step / warmup
    t = min(step - warmup, total - warmup) / (total - warmup)
    return end + (peak - end) * 0.5 * (1.0 + math.cos(math.pi * t))


def buffer_loss(log_q: torch.Tensor, log_q_old: torch.Tensor, alpha: float = 2.0,
                clip: float | None = 10.0) -> torch.Tensor:
    """FAB's loss on points drawn from the prioritised buffer (Midgley et al. 2023, Alg. 2).

    The points were drawn with probability ∝ w_old, importance weights for p^α / q_old^(α-1);
    multiplying by w_adjust = (q_old / q_θ)^(α-1) (no gradient through it) makes the expected loss
    gradient proportional to the gradient under p^α / q_θ^(α-1). fab-torch clips w_adjust from
    above at 10 to bound the variance from points q_θ now underweights.
    """
    w_adjust = torch.exp((alpha - 1.0) * (log_q_old - log_q.detach()))
    if clip is not None:
        w_adjust = torch.clamp(w_adjust, max=clip)
    return -(w_adjust * log_q).mean()
