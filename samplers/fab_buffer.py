"""FAB's prioritised replay buffer as pure functions: drawing a round's batches and re-weighting the
drawn points after the flow changed (samplers/fab.py keeps the buffer as three tensors).

The buffer holds points u ``[L, d]`` with log weights log w ``[L]`` (AIS weights for p^α / q^(α-1))
and log q_old ``[L]``, the flow's log-density when log w was last made current.

Drawing (``buffer_sampling``), one call per AIS round for all ``n_updates_per_ais`` batches:

- ``"no_replacement"``: fab-torch's default (fab/utils/prioritised_replay_buffer.py,
  ``PrioritisedReplayBuffer.sample_n_batches`` with ``sample_with_replacement=False``; fab-jax's
  ``build_prioritised_buffer`` the same): n·B distinct indices by the Gumbel-top-k trick (the
  n·B largest of log w + Gumbel noise: successive sampling ∝ w without replacement, Vieira 2014),
  shuffled, then cut into n batches of B. No point appears twice in a round, so a point's chance
  to be in the round is not exactly ∝ w where a few weights dominate (it saturates at 1); with
  n·B small against the buffer (512 of 12800 in their GMM config) the two laws nearly agree.
- ``"with_replacement"``: their ``sample_with_replacement=True``: n·B i.i.d. draws ∝ w, cut the
  same way.
- ``"per_step"``: earlier versions of this suite: each batch drawn with replacement just before
  its gradient step, from the weights as re-weighted after the previous step.

Re-weighting (:func:`reweight`): log w += (1 - α)(log q_new - log q_old), log q_old <- log q_new;
a point whose adjustment or new log q is not finite gets log w = -inf (never drawn again), as
their ``adjust``.
"""
from __future__ import annotations

import torch

SAMPLING = ("no_replacement", "with_replacement", "per_step")


def append(buffer: tuple, new: tuple, size: int) -> tuple:
    """FIFO: the tensors of ``new`` appended to those of ``buffer``, the last ``size`` rows kept."""
    return tuple(torch.cat([b, n])[-size:] for b, n in zip(buffer, new))


def gumbel_top_k(log_w: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """``k`` distinct indices ``[k]`` drawn by successive sampling ∝ exp(log_w) without replacement,
    in random order. Needs ``k <= len(log_w)``."""
    if k > log_w.shape[0]:
        raise ValueError(f"gumbel_top_k: k={k} distinct draws from {log_w.shape[0]} points")
    u = torch.rand(log_w.shape, generator=generator, dtype=torch.float64)
    # -log(-log U) is standard Gumbel; clamp keeps U away from 0 and 1 exactly
    g = -torch.log(-torch.log(u.clamp(1e-300, 1 - 1e-16)))
    top = torch.topk(log_w.double().cpu() + g, k, sorted=False).indices
    return top[torch.randperm(k, generator=generator)]


def categorical(log_w: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """``k`` i.i.d. indices ``[k]`` drawn ∝ exp(log_w)."""
    p = torch.softmax(log_w.double().cpu(), 0).float()
    return torch.multinomial(p, k, replacement=True, generator=generator)


def draw_round(log_w: torch.Tensor, n_batches: int, batch_size: int, mode: str,
               generator: torch.Generator) -> list[torch.Tensor]:
    """The round's ``n_batches`` index batches ``[batch_size]`` (CPU, long) for ``mode``
    ``"no_replacement"`` or ``"with_replacement"``; ``"per_step"`` draws in the training loop."""
    k = n_batches * batch_size
    if mode == "no_replacement":
        idx = gumbel_top_k(log_w, k, generator)
    elif mode == "with_replacement":
        idx = categorical(log_w, k, generator)
    else:
        raise ValueError(f"draw_round: mode {mode!r}; allowed: no_replacement, with_replacement")
    return list(idx.split(batch_size))


def reweight(log_w: torch.Tensor, log_q_old: torch.Tensor, log_q_new: torch.Tensor,
             alpha: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """New (log w, log q_old) ``[b]`` of drawn points whose flow log q is now ``log_q_new``."""
    adjust = (1.0 - alpha) * (log_q_new - log_q_old)
    valid = torch.isfinite(adjust) & torch.isfinite(log_q_new)
    new_w = torch.where(valid, log_w + adjust, torch.full_like(log_w, -float("inf")))
    new_q = torch.where(valid, log_q_new, log_q_old)
    return new_w, new_q
