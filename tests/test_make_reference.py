"""Reference builder: convergence diagnostics against known cases, the icosahedral start, the
written reference and its provenance, tamper refusal, and CLI validation."""
from __future__ import annotations

import numpy as np
import pytest

from samplers.diagnostics import ess, mcse_mean, split_rhat


# ----------------------------------------------------------------------------- diagnostics
def _ar1(rho, chains, n, rng):
    e = rng.normal(size=(chains, n))
    z = np.empty_like(e)
    z[:, 0] = e[:, 0] / np.sqrt(1 - rho ** 2)  # stationary start
    for t in range(1, n):
        z[:, t] = rho * z[:, t - 1] + e[:, t]
    return z


def test_iid_chains_have_rhat_one_and_ess_near_n():
    x = np.random.default_rng(0).normal(size=(8, 2000))
    assert abs(split_rhat(x) - 1) < 0.01
    assert abs(split_rhat(x, rank=True) - 1) < 0.01
    # ESS of iid draws is n up to estimation noise (a few percent at this size).
    assert 0.9 * x.size < ess(x) < 1.1 * x.size
    assert 0.9 * x.size < ess(x, rank=False) < 1.1 * x.size


def test_chains_with_different_means_have_large_rhat():
    x = np.random.default_rng(1).normal(size=(8, 1000)) + np.arange(8)[:, None]
    # between-chain variance of the means (var 6) dominates the within variance 1: R̂ ≈ sqrt(7)
    assert split_rhat(x) > 2.0
    assert split_rhat(x, rank=True) > 1.5
    assert ess(x) < 0.05 * x.size


def test_drifting_single_chain_is_caught_by_the_split():
    # One chain whose first half sits at 0 and second half at 3: only splitting can see it.
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.normal(size=500), 3 + rng.normal(size=500)])[None, :]
    assert split_rhat(x) > 1.5


@pytest.mark.parametrize("rho", [0.5, 0.9])
def test_ar1_ess_matches_closed_form(rho):
    z = _ar1(rho, 4, 20000, np.random.default_rng(3))
    expected = z.size * (1 - rho) / (1 + rho)
    assert abs(ess(z, rank=False) / expected - 1) < 0.15
    assert abs(ess(z) / expected - 1) < 0.15  # rank-normalised: same for a Gaussian process
    # the MCSE of the mean uses that ESS: stationary variance 1/(1-ρ²)
    assert abs(mcse_mean(z) / np.sqrt(1 / (1 - rho ** 2) / expected) - 1) < 0.15


def test_diagnostics_refuse_bad_shapes():
    with pytest.raises(ValueError, match=r"\[chains, draws\]"):
        split_rhat(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="at least 4 draws"):
        ess(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="non-finite"):
        ess(np.array([[0.0, 1.0, np.nan, 2.0, 3.0]]))
