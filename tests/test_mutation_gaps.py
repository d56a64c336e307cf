"""Tests added for mutants that survived ``mutmut run`` (docs/testing.md): DEM loss and time
weighting, reverse-SDE guards, generator and projection, negative time, schedule bounds, the
sampler's coordinate space, and the 1-D metrics' handling of infinite energies."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import metrics
import targets
from metrics._common import MetricInputError
from samplers.dem import GeometricSchedule, Space
from samplers.dem.loss import dem_loss, lambda_weight
from samplers.dem.sde import Interrupted, negative_time, reverse_sde
from targets.base import Target


# ------------------------------------------------------------------ loss
def test_lambda_weight_closed_forms_and_bad_kind():
    s = GeometricSchedule(1e-5, 1.0)
    t = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64)
    h = 1e-10 * (torch.exp(2 * math.log(1e5) * t) - 1)
    assert torch.allclose(lambda_weight(t, s, "h"), h + 1e-3, rtol=1e-9, atol=1e-15)
    assert lambda_weight(t[:1], s, "h").item() == pytest.approx(1e-3, rel=1e-12)  # h(0) = 0
    assert torch.equal(lambda_weight(t, s, "none"), torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"kind must be one of \('h', 'none'\), got 'NONE'"):
        lambda_weight(t, s, "NONE")


def test_dem_loss_is_the_weighted_mean_squared_error_by_hand():
    pred = torch.tensor([[1.0, 2.0, 0.0], [0.5, -1.0, 3.0]])
    target = torch.tensor([[0.0, 0.0, 1.0], [0.5, 1.0, 1.0]])
    w = torch.tensor([2.0, 0.5])
    # row 0: (1 + 4 + 1) / 3 = 2; row 1: (0 + 4 + 4) / 3 = 8/3; mean(2 * 2, 0.5 * 8/3)
    assert dem_loss(pred, target, w).item() == pytest.approx((4.0 + 4.0 / 3.0) / 2, rel=1e-6)


# ------------------------------------------------------------------ schedule bounds
@pytest.mark.parametrize("smin,smax", [(0.0, 1.0), (1.0, 1.0), (-1.0, 2.0), (2.0, 1.0)])
def test_schedule_rejects_degenerate_sigmas(smin, smax):
    with pytest.raises(ValueError, match="0 < sigma_min < sigma_max"):
        GeometricSchedule(smin, smax)


# ------------------------------------------------------------------ reverse SDE
def _zero_score(t, y):
    return torch.zeros_like(y)


def test_reverse_sde_step_count_guard_and_interruption():
    s = GeometricSchedule(0.1, 1.0)
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="n_steps must be >= 1, got 0"):
        reverse_sde(_zero_score, x, s, 0, 1.0, torch.Generator().manual_seed(0))
    one = reverse_sde(_zero_score, x, s, 1, 1.0, torch.Generator().manual_seed(0))
    assert one.shape == (4, 2) and float(one.abs().sum()) > 0  # one step of noise
    calls = []

    def stop():
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(Interrupted, match="stopped after 2 of 5 steps"):
        reverse_sde(_zero_score, x, s, 5, 1.0, torch.Generator().manual_seed(0), stop=stop)


def test_reverse_sde_uses_its_generator_projection_and_the_inputs_dtype():
    s = GeometricSchedule(0.1, 1.0)
    x = torch.zeros(64, 8, dtype=torch.float64)
    dtypes = []

    def score(t, y):
        dtypes.append(t.dtype)
        return torch.zeros_like(y)

    dw4 = targets.get("dw4")
    run = lambda seed: reverse_sde(score, x, s, 3, 1.0, torch.Generator().manual_seed(seed),  # noqa: E731
                                   project=dw4.remove_mean)
    torch.manual_seed(123)
    a = run(0)
    torch.manual_seed(456)  # the global RNG must not matter
    assert torch.equal(a, run(0)) and not torch.equal(a, run(1))
    assert set(dtypes) == {torch.float64}
    assert a.view(64, 4, 2).mean(1).abs().max() < 1e-12       # projected: mean-free
    # pure noise: variance sum_i g_i^2 dt per coordinate, times (N-1)/N for the projection
    dt = 1 / 3
    v = sum(s.g(1 - i * dt) ** 2 * dt for i in range(3)) * 3 / 4
    big = reverse_sde(_zero_score, torch.zeros(20000, 8, dtype=torch.float64), s, 3, 1.0,
                      torch.Generator().manual_seed(2), project=dw4.remove_mean)
    assert float(big.var(0).mean()) == pytest.approx(v, rel=0.03)


def test_negative_time_default_step_and_clip():
    x = torch.zeros(3, 2)
    score = lambda y: torch.full_like(y, 100.0)  # noqa: E731
    one = negative_time(x, score, 1)
    assert torch.allclose(one, torch.full_like(x, 100.0 * 1e-4))            # dt = 1e-4
    clipped = negative_time(x, score, 2, dt=0.5, clip=1.0)
    assert torch.allclose(clipped.norm(dim=-1), torch.full((3,), 1.0), rtol=1e-5)  # 2 * 0.5 * 1


# ------------------------------------------------------------------ training coordinates
def test_space_defaults_prior_and_projection():
    dw4, gmm = targets.get("dw4"), targets.get("gmm40")
    sp = Space(dw4)
    y = torch.randn(5, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sp.to_original(y), y) and sp.scale == 1.0 and sp.target is dw4
    p = sp.project(y + 3.0)
    assert torch.allclose(p, dw4.remove_mean(y), atol=1e-6)
    assert torch.equal(Space(gmm, 50.0).project(y[:, :2]), y[:, :2])       # no particles: unchanged
    prior = sp.prior(20000, 2.0, torch.Generator().manual_seed(1), "cpu")
    assert torch.equal(prior, sp.prior(20000, 2.0, torch.Generator().manual_seed(1), "cpu"))
    assert prior.view(-1, 4, 2).mean(1).abs().max() < 1e-5
    assert float(prior.var(0).mean()) == pytest.approx(4.0 * 3 / 4, rel=0.03)  # std 2, mean-free
    e, g = Space(gmm, 50.0).energy_and_grad(y[:, :2])
    e0, g0 = gmm.energy_and_grad(50 * y[:, :2])
    assert torch.allclose(e, e0) and torch.allclose(g, 50 * g0)
    assert torch.allclose(Space(gmm, 50.0).energy(y[:, :2]), e0)
    assert torch.allclose(Space(gmm, 50.0).true_score(y[:, :2]), -50 * g0)


# ------------------------------------------------------------------ 1-D metrics: infinities
class _Line(Target):
    name = "line"
    pretty_name = "Line"

    def __init__(self):
        super().__init__(dim=1, params={})

    def _energy(self, x):
        e = x[..., 0]
        return torch.where(e > 100, torch.full_like(e, math.nan), e)  # NaN energy past 100


def test_nan_energies_make_the_energy_distances_infinite_on_either_side():
    t = _Line()
    y = torch.linspace(0, 1, 50, dtype=torch.float64)[:, None]
    bad = y.clone()
    bad[3] = 500.0  # its energy is NaN, mapped to +inf
    for name in ("energy_w1", "energy_w2", "energy_w2_sq"):
        assert metrics.get(name)(bad, y, t) == math.inf
        assert metrics.get(name)(y, bad, t) == math.inf
    assert metrics.get("energy_w1")(y + 0.25, y, t) == pytest.approx(0.25, abs=1e-12)
    # W1 and W2 differ where the shift is not uniform: |d| mean vs (d^2) mean
    z = y.clone()
    z[-1] += 1.0
    assert metrics.get("energy_w1")(z, y, t) == pytest.approx(1 / 50, abs=1e-12)
    assert metrics.get("energy_w2_sq")(z, y, t) == pytest.approx(1 / 50, abs=1e-12)
    z[-1] += 1.0
    assert metrics.get("energy_w2_sq")(z, y, t) == pytest.approx(4 / 50, abs=1e-12)


def test_dist_w2_sq_refuses_a_target_without_particles_by_name():
    gmm = targets.get("gmm40")
    x = gmm.sample_exact(10, torch.Generator().manual_seed(0))
    with pytest.raises(MetricInputError, match="metric 'dist_w2_sq' needs a particle target"):
        metrics.get("dist_w2_sq")(x, x, gmm)
    assert np.isfinite(metrics.get("energy_w1")(x, x, gmm))
