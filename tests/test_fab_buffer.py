"""FAB's prioritised-buffer loss with fab-torch's w_adjust correction (samplers.fab.buffer_loss).

Toy with a closed form: p = N(0, 1), flow q_μ = N(μ, 1) in 1-D. For α = 2 the FAB objective is
log ∫ p²/q_μ = μ² (p²/q_μ = e^{μ²} N(-μ, 1)), so its gradient is 2μ. Buffer points x_i ~ r =
N(0, 2²) carry the weights the buffer stores, w_i = p(x_i)² / (q_old(x_i) r(x_i)), computed under
the flow q_old = N(μ_old, 1) that was current when they were stored. Drawing indices ∝ w and
differentiating the loss on them has expectation

    corrected:   Σ w_i (q_old/q_μ)(x_i) g_i / Σ w_i  →  2μ · e^{μ² - μ_old²}   (∝ the true gradient)
    uncorrected: Σ w_i g_i / Σ w_i                   →  μ + μ_old              (biased)

with g = -∂_μ log q_μ = -(x - μ).
"""
import math

import pytest
import torch

from samplers.fab import FABConfig, buffer_loss


def _normal_log_pdf(x, mean, std):
    return -0.5 * ((x - mean) / std) ** 2 - math.log(std) - 0.5 * math.log(2 * math.pi)


def _expected_gradient(mu, mu_old, correction, n=400_000, draws=400_000, seed=0):
    """The gradient of the loss on a batch drawn from the buffer ∝ w with replacement
    (fab.fit's buffer_sampling=with_replacement; its default draws without, which is close to it
    when a round is small against the buffer, samplers/fab_buffer.py)."""
    g = torch.Generator().manual_seed(seed)
    x = 2.0 * torch.randn(n, generator=g, dtype=torch.float64)
    log_w = 2 * _normal_log_pdf(x, 0.0, 1.0) - _normal_log_pdf(x, mu_old, 1.0) \
        - _normal_log_pdf(x, 0.0, 2.0)
    idx = torch.multinomial(torch.softmax(log_w, 0), draws, replacement=True, generator=g)
    mu_t = torch.tensor(mu, dtype=torch.float64, requires_grad=True)
    log_q = _normal_log_pdf(x[idx], mu_t, 1.0)
    log_q_old = _normal_log_pdf(x[idx], mu_old, 1.0)
    loss = buffer_loss(log_q, log_q_old, alpha=2.0, clip=None) if correction else -log_q.mean()
    (grad,) = torch.autograd.grad(loss, mu_t)
    return float(grad)


@pytest.mark.parametrize("mu, mu_old", [(0.0, 1.0), (0.5, -0.3), (-0.4, 0.2)])
def test_corrected_buffer_gradient_is_the_alpha2_gradient(mu, mu_old):
    exact = 2 * mu * math.exp(mu ** 2 - mu_old ** 2)
    assert _expected_gradient(mu, mu_old, correction=True) == pytest.approx(exact, abs=0.03)


def test_uncorrected_buffer_gradient_is_biased_towards_the_stale_flow():
    # at the optimum μ = 0 the uncorrected loss still pushes towards μ_old
    assert _expected_gradient(0.0, 1.0, correction=False) == pytest.approx(1.0, abs=0.03)
    assert _expected_gradient(0.0, 1.0, correction=True) == pytest.approx(0.0, abs=0.03)


def test_w_adjust_is_clipped_at_ten_and_carries_no_gradient():
    log_q = torch.tensor([0.0, -5.0], requires_grad=True)
    log_q_old = torch.tensor([math.log(3.0), 0.0])      # w_adjust = 3 and e^5 ≈ 148 -> 10
    loss = buffer_loss(log_q, log_q_old, alpha=2.0, clip=10.0)
    assert loss.item() == pytest.approx(-(3.0 * 0.0 + 10.0 * -5.0) / 2)
    (grad,) = torch.autograd.grad(loss, log_q)
    assert grad.tolist() == pytest.approx([-3.0 / 2, -10.0 / 2])


def test_alpha_one_has_no_correction():
    log_q = torch.tensor([0.3, -1.2], requires_grad=True)
    loss = buffer_loss(log_q, torch.tensor([5.0, -4.0]), alpha=1.0, clip=10.0)
    assert loss.item() == pytest.approx(-log_q.mean().item())


@pytest.mark.parametrize("field, value", [("w_adjust_clip", 0.0), ("w_adjust_clip", -1.0),
                                          ("buffer_correction", "yes")])
def test_bad_correction_settings_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        FABConfig(**{field: value}).validate()
