"""FAB's configuration and its prioritised-buffer loss (samplers/fab.py has the sampler)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import check_device, check_int, check_positive, check_range

# "realnvp": the non-equivariant RealNVP on Helmert coordinates (any target); "se3_aug": the
# E(3)-equivariant augmented coupling flow of Midgley et al. 2023 (particle targets only).
FLOWS = ("realnvp", "se3_aug")


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
