"""FAB's random-walk Metropolis transition for the AIS intermediates (``transition="metropolis"``),
after fab-torch's ``Metropolis`` transition operator
(fab/sampling_methods/transition_operators/metropolis.py); our own code.

Intermediate b of AIS from q to p^2/q (alpha = 2) is pi_b ∝ q^(1-2b) p̃^(2b). One step: y = u + s ξ,
ξ ~ N(0, I); accept with probability min(1, pi_b(y) / pi_b(u)) (the proposal is symmetric, so
there is no Hastings term). A proposal whose log ratio is not finite is rejected. Differences from
theirs: they compare exp(ratio) > U and map an infinite ratio to rejection, we compare log U < log
ratio (the same law wherever the ratio is finite); with more than one step per intermediate they
keep using the density of the point the transition started from in the ratio, we use the current
point's (so every step is an exact MH step; their GMM config takes one step, where both agree).

Step-size rule (``metropolis_adapt``, their ``adjust_step_size``): after each step, the mean over
chains of min(1, ratio) above the target acceptance multiplies that step's size by 1.05, otherwise
divides it by 1.05; one size per intermediate and step. Their GMM config leaves it off.
"""
from __future__ import annotations

from typing import Callable

import torch

LogPQ = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def log_intermediate(log_p: torch.Tensor, log_q: torch.Tensor, b: float) -> torch.Tensor:
    """log pi_b = (1 - 2b) log q + 2b log p̃ ``[n]`` (AIS towards p^2/q)."""
    return (1 - 2 * b) * log_q + 2 * b * log_p


def metropolis_transition(u: torch.Tensor, log_p: torch.Tensor, log_q: torch.Tensor, b: float,
                          log_p_and_q: LogPQ, steps: list[float], generator: torch.Generator):
    """``len(steps)`` Metropolis steps on pi_b from ``u [n, d]`` whose log p̃, log q ``[n]`` are
    given; ``log_p_and_q(y)`` evaluates both at proposals (one energy evaluation per row).

    Returns (u, log p̃, log q, accepted fraction per step, mean min(1, ratio) per step)."""
    accepted, probs = [], []
    for s in steps:
        xi = torch.randn(u.shape, generator=generator, dtype=u.dtype).to(u.device)
        y = u + s * xi
        lp_y, lq_y = log_p_and_q(y)
        log_ratio = log_intermediate(lp_y, lq_y, b) - log_intermediate(log_p, log_q, b)
        finite = torch.isfinite(log_ratio)
        log_ratio = torch.where(finite, log_ratio, torch.full_like(log_ratio, -float("inf")))
        log_uniform = torch.rand(log_ratio.shape, generator=generator,
                                 dtype=log_ratio.dtype).to(u.device).log()
        acc = log_uniform < log_ratio
        u = torch.where(acc[:, None], y, u)
        log_p = torch.where(acc, lp_y, log_p)
        log_q = torch.where(acc, lq_y, log_q)
        accepted.append(float(acc.float().mean()))
        probs.append(float(log_ratio.clamp(max=0).exp().mean()))
    return u, log_p, log_q, accepted, probs


def adapt_step(step: float, mean_accept_prob: float, target_accept: float) -> float:
    """fab-torch's Metropolis step-size rule: x 1.05 when accepting too often, else ÷ 1.05."""
    return step * 1.05 if mean_accept_prob > target_accept else step / 1.05
