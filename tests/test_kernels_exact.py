"""The MCMC kernels (samplers/kernels.py) against independent transcriptions, draw for draw.

tests/test_mcmc.py checks the kernels statistically (moments, invariance); these tests replay
the same generator draws through a plain transcription of each algorithm and require the same
proposals, the same accept/reject decisions and the same adaptation iterates. They were written
for the mutants that survived the statistical tests (docs/testing.md, samplers/kernels.py):
HMC with half kicks throughout (still a valid MCMC, so invisible to moments), a proposal with a
NaN energy accepted, per-chain step sizes ignored, the global RNG used in place of the given
generator, a wrong sign in dual averaging's iterate average, a broken cumulative sum in the
systematic resampler.
"""
from __future__ import annotations

import math

import pytest
import torch

from samplers import kernels

C, D = 400, 3


def gaussian(x):
    """E = |x|²/2 and its gradient (float64, no autograd: the transcriptions use it too)."""
    return 0.5 * (x * x).sum(-1), x.clone()


def _start(seed=0):
    x = torch.randn(C, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return kernels.init(x, gaussian)


def _per_chain_steps():
    return torch.linspace(0.2, 1.4, C, dtype=torch.float64)


def _accept(log_ratio, u):
    return torch.log(u) < log_ratio


def test_hmc_matches_a_transcribed_velocity_verlet():
    state, eps, n_leap = _start(), _per_chain_steps()[:, None], 3
    new, acc = kernels.hmc_step(state, gaussian, _per_chain_steps(), n_leap,
                                torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    p0 = torch.randn(C, D, generator=g, dtype=torch.float64)
    u = torch.rand(C, generator=g, dtype=torch.float64)
    x, p = state.x.clone(), p0.clone()
    for _ in range(n_leap):          # half kick, drift, half kick: one velocity-Verlet step
        p = p - 0.5 * eps * gaussian(x)[1]
        x = x + eps * p
        p = p - 0.5 * eps * gaussian(x)[1]
    log_ratio = (state.energy + 0.5 * (p0 * p0).sum(-1)) - (gaussian(x)[0] + 0.5 * (p * p).sum(-1))
    want = _accept(log_ratio, u)
    assert 0.2 < want.double().mean() < 0.95          # a test of both branches
    assert torch.equal(acc, want)
    assert torch.allclose(new.x, torch.where(want[:, None], x, state.x), atol=1e-12)


def test_hmc_one_leapfrog_step_is_allowed_and_zero_is_refused():
    new, _ = kernels.hmc_step(_start(), gaussian, 0.5, 1, torch.Generator().manual_seed(0))
    assert new.x.shape == (C, D)
    with pytest.raises(ValueError, match="n_leapfrog"):
        kernels.hmc_step(_start(), gaussian, 0.5, 0, torch.Generator().manual_seed(0))


def test_mala_matches_its_transcription_with_per_chain_steps():
    state, h = _start(1), _per_chain_steps()
    new, acc = kernels.mala_step(state, gaussian, h, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    xi = torch.randn(C, D, generator=g, dtype=torch.float64)
    u = torch.rand(C, generator=g, dtype=torch.float64)
    hc = h[:, None]
    y = state.x - hc * state.x + torch.sqrt(2 * hc) * xi
    # log q(a | b) = -|a - b + h ∇E(b)|² / (4h), ∇E(b) = b
    log_q_x_given_y = -((state.x - y + hc * y) ** 2).sum(-1) / (4 * h)
    log_q_y_given_x = -((y - state.x + hc * state.x) ** 2).sum(-1) / (4 * h)
    log_ratio = state.energy - gaussian(y)[0] + log_q_x_given_y - log_q_y_given_x
    want = _accept(log_ratio, u)
    assert 0.2 < want.double().mean() < 0.99
    assert torch.equal(acc, want)
    assert torch.allclose(new.x, torch.where(want[:, None], y, state.x), atol=1e-12)


def test_rwm_uses_the_given_generator_and_per_chain_steps():
    state, s = _start(2), _per_chain_steps()
    torch.manual_seed(123)          # a kernel reading the global RNG would not match the replay
    new, acc = kernels.rwm_step(state, gaussian, s, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    y = state.x + s[:, None] * torch.randn(C, D, generator=g, dtype=torch.float64)
    u = torch.rand(C, generator=g, dtype=torch.float64)
    want = _accept(state.energy - gaussian(y)[0], u)
    assert torch.equal(acc, want)
    assert torch.allclose(new.x, torch.where(want[:, None], y, state.x), atol=1e-12)


def test_mh_rejects_every_non_finite_proposal_whatever_the_ratio():
    x = torch.zeros(4, 2, dtype=torch.float64)
    cur = kernels.State(x, torch.zeros(4, dtype=torch.float64), torch.zeros(4, 2, dtype=torch.float64))
    grad = torch.zeros(4, 2, dtype=torch.float64)
    grad[2, 1] = float("inf")
    prop = kernels.State(x + 1, torch.tensor([float("nan"), float("inf"), 0.0, 0.0],
                                             dtype=torch.float64), grad)
    log_ratio = torch.tensor([50.0, 50.0, 50.0, float("nan")], dtype=torch.float64)
    new, acc = kernels._mh(cur, prop, log_ratio, torch.Generator().manual_seed(0))
    assert acc.tolist() == [False, False, False, False]
    assert torch.equal(new.x, x)
    ok = kernels.State(x + 1, torch.zeros(4, dtype=torch.float64), torch.zeros(4, 2, dtype=torch.float64))
    assert kernels._mh(cur, ok, torch.full((4,), 50.0, dtype=torch.float64),
                       torch.Generator().manual_seed(0))[1].all()


def test_init_refuses_a_flat_vector_and_says_the_shape():
    with pytest.raises(ValueError, match=r"\[chains, dim\], got \(3,\)"):
        kernels.init(torch.zeros(3), gaussian)


def _resample_transcribed(w, u0):
    """Systematic resampling by a plain loop: point k = (u0 + k)/C takes the first index whose
    cumulative weight exceeds it."""
    c, out, cum, i = len(w), [], 0.0, 0
    cums = []
    for wi in w:
        cum += wi
        cums.append(cum)
    cums[-1] = 1.0
    for k in range(c):
        point = (u0 + k) / c
        while cums[i] < point:
            i += 1
        out.append(i)
    return out


@pytest.mark.parametrize("seed", range(20))
def test_systematic_resample_equals_the_loop_and_counts_are_floor_or_ceil(seed):
    g = torch.Generator().manual_seed(seed)
    c = 9
    log_w = 2.0 * torch.randn(c, generator=g, dtype=torch.float64)
    idx = kernels.systematic_resample(log_w, torch.Generator().manual_seed(100 + seed))
    u0 = float(torch.rand((), generator=torch.Generator().manual_seed(100 + seed),
                          dtype=torch.float64))
    w = torch.softmax(log_w, 0).tolist()
    assert idx.tolist() == _resample_transcribed(w, u0)
    counts = torch.bincount(idx, minlength=c).tolist()
    for n_i, w_i in zip(counts, w):
        assert math.floor(c * w_i) <= n_i <= math.ceil(c * w_i)


def _dual_averaging_transcribed(step0, accepts, delta, gamma=0.05, t0=10.0, kappa=0.75):
    """Hoffman & Gelman (2014), Algorithm 5, the step-size lines, written out."""
    mu, h_bar, log_eps_bar = math.log(10 * step0), 0.0, math.log(step0)
    log_eps = log_eps_bar
    for m, a in enumerate(accepts, start=1):
        h_bar = (1 - 1 / (m + t0)) * h_bar + (delta - a) / (m + t0)
        log_eps = mu - math.sqrt(m) / gamma * h_bar
        log_eps_bar = m ** (-kappa) * log_eps + (1 - m ** (-kappa)) * log_eps_bar
    return log_eps, log_eps_bar


def test_dual_averaging_follows_hoffman_gelman_algorithm_5():
    accepts = [0.9, 0.1, 0.5, 0.7, 0.3, 0.65, 0.6, 0.55] * 6
    adapt = kernels.Adapter(0.3, 0.65)
    for a in accepts:
        adapt.update(a)
    log_eps, log_eps_bar = _dual_averaging_transcribed(0.3, accepts, 0.65)
    assert adapt.state.t == len(accepts)
    assert math.log(adapt.state.step_size) == pytest.approx(log_eps, abs=1e-12)
    assert math.log(adapt.final()) == pytest.approx(log_eps_bar, abs=1e-12)


@pytest.mark.parametrize("target_accept", [0.0, 1.0, 1.5, -0.1])
def test_target_acceptance_outside_the_open_unit_interval_is_refused(target_accept):
    with pytest.raises(ValueError, match="target_accept"):
        kernels.Adapter(0.1, target_accept)
    with pytest.raises(ValueError, match="target_accept"):
        kernels.dual_averaging_update(kernels.dual_averaging_init(0.1), 0.5, target_accept)


@pytest.mark.parametrize("step", [0.0, -1.0, float("inf"), float("nan")])
def test_dual_averaging_refuses_a_bad_initial_step(step):
    with pytest.raises(ValueError, match="step_size"):
        kernels.dual_averaging_init(step)


def test_dual_averaging_reads_a_nan_acceptance_as_zero():
    """No finite acceptance (every proposal non-finite) counts as acceptance 0: the step shrinks."""
    da = kernels.dual_averaging_init(0.3)
    nan = kernels.dual_averaging_update(da, float("nan"), 0.65)
    zero = kernels.dual_averaging_update(da, 0.0, 0.65)
    assert (nan.log_step, nan.log_step_avg, nan.h_bar) == (zero.log_step, zero.log_step_avg,
                                                           zero.h_bar)
    assert nan.h_bar == pytest.approx(0.65 / 11)
