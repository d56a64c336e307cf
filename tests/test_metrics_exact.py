"""Metrics against brute force on tiny inputs, for the survivors of mutmut's first run on
metrics/ (docs/testing.md, "Latest scores"): W2 by enumerating permutations (equal sizes: the
optimal plan is a permutation) or by a linear program (unequal sizes), eq_w2's one-pass costs,
histogram TV and the importance-weight metrics written out by hand, the shared validation. The
aligned W2 is in tests/test_alignment_exact.py.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment, linprog

import metrics
import targets
from metrics import _common, density, eq_w2, histograms, wasserstein


def _g(seed):
    return torch.Generator().manual_seed(seed)


def subsample_indices(n_x: int, n_y: int, k: int, seed: int):
    """The metrics' documented subsampling: k of the samples, then k of the reference, by
    randperm from one generator seeded ``seed``."""
    g = _g(seed)
    return torch.randperm(n_x, generator=g)[:k], torch.randperm(n_y, generator=g)[:k]


def ot_by_lp(cost):
    """Exact OT value with uniform marginals by scipy's linear program (independent of POT)."""
    n, m = cost.shape
    a_eq = np.zeros((n + m, n * m))
    for i in range(n):
        a_eq[i, i * m:(i + 1) * m] = 1.0
    for j in range(m):
        a_eq[n + j, j::m] = 1.0
    b_eq = np.concatenate([np.full(n, 1.0 / n), np.full(m, 1.0 / m)])
    res = linprog(cost.reshape(-1), A_eq=a_eq, b_eq=b_eq, bounds=(0, None), method="highs")
    assert res.success
    return res.fun


def w2_by_permutations(x, y):
    """Equal sizes: min over permutations of mean ||x_i - y_σ(i)||², root taken."""
    n = x.shape[0]
    best = min(sum(float((x[i] - y[s[i]]).pow(2).sum()) for i in range(n)) / n
               for s in itertools.permutations(range(n)))
    return math.sqrt(best)


# ----------------------------------------------------------------------------- plain W2
def test_w2_equals_the_best_permutation_and_the_lp():
    x = torch.randn(6, 3, generator=_g(0), dtype=torch.float64)
    y = torch.randn(6, 3, generator=_g(1), dtype=torch.float64) + 0.5
    assert wasserstein.w2(x, y) == pytest.approx(w2_by_permutations(x, y), rel=1e-10)
    z = torch.randn(4, 3, generator=_g(2), dtype=torch.float64)
    cost = torch.cdist(x, z).pow(2).numpy()
    assert wasserstein.w2(x, z) == pytest.approx(math.sqrt(ot_by_lp(cost)), rel=1e-7)
    assert wasserstein.emd_cost(cost) == pytest.approx(ot_by_lp(cost), rel=1e-7)
    # float32 inputs are transported in float64
    assert wasserstein.w2(x.float(), z.float()) == pytest.approx(
        wasserstein.w2(x.float().double(), z.float().double()), rel=1e-13)


def test_emd_gets_uniform_weights_and_the_iteration_cap(monkeypatch):
    seen = {}
    real = wasserstein.ot.emd2

    def spy(a, b, m, **kw):
        seen.update(a=a, b=b, **kw)
        return real(a, b, m, **kw)

    monkeypatch.setattr(wasserstein.ot, "emd2", spy)
    wasserstein.emd_cost(np.ones((2, 4)))
    np.testing.assert_array_equal(seen["a"], [0.5, 0.5])
    np.testing.assert_array_equal(seen["b"], [0.25] * 4)
    assert seen["numItermax"] == 10_000_000 and seen["log"] is True


def test_emd_that_stops_early_is_an_error(monkeypatch):
    monkeypatch.setattr(wasserstein, "EMD_NUM_ITER_MAX", 1)
    cost = torch.rand(40, 40, generator=_g(3), dtype=torch.float64).numpy()
    with pytest.raises(RuntimeError, match="did not reach the optimum on a 40 x 40 problem"), \
            pytest.warns(UserWarning, match="numItermax"):  # POT's own warning, expected here
        wasserstein.emd_cost(cost)


def test_x_w2_on_gmm_is_raw_and_on_particles_mean_free():
    gmm = targets.get("gmm40")
    x = torch.randn(5, 2, generator=_g(4), dtype=torch.float64) * 3
    y = x + torch.tensor([1.0, 0.0], dtype=torch.float64)  # a shift costs its length
    assert metrics.get("x_w2")(x, y, gmm) == pytest.approx(1.0, rel=1e-9)
    dw4 = targets.get("dw4")
    xp = torch.randn(5, 8, generator=_g(5), dtype=torch.float64)
    shifted = (xp.reshape(5, 4, 2) + torch.tensor([3.0, -2.0], dtype=torch.float64)).reshape(5, 8)
    yp = torch.randn(5, 8, generator=_g(6), dtype=torch.float64)
    want = w2_by_permutations(dw4.remove_mean(xp), dw4.remove_mean(yp))
    assert metrics.get("x_w2")(shifted, yp, dw4) == pytest.approx(want, rel=1e-9)


def test_x_w2_subsamples_samples_then_reference_from_the_generator():
    gmm = targets.get("gmm40")
    x = torch.randn(9, 2, generator=_g(7), dtype=torch.float64)
    y = torch.randn(8, 2, generator=_g(8), dtype=torch.float64)
    ix, iy = subsample_indices(9, 8, 5, 9)
    want = w2_by_permutations(x[ix], y[iy])
    assert metrics.get("x_w2")(x, y, gmm, max_n=5, generator=_g(9)) == pytest.approx(want, rel=1e-9)
    g = _g(_common.SUBSAMPLE_SEED)
    ix, iy = torch.randperm(9, generator=g)[:5], torch.randperm(8, generator=g)[:5]
    assert metrics.get("x_w2")(x, y, gmm, max_n=5) == pytest.approx(
        w2_by_permutations(x[ix], y[iy]), rel=1e-9)
    with pytest.raises(_common.MetricInputError, match="generator must be a torch.Generator or None, got int"):
        metrics.get("x_w2")(x, y, gmm, max_n=5, generator=3)


# ----------------------------------------------------------------------------- eq_w2
def eq_cost_by_hand(x, y):
    """Their procedure for one pair: Hungarian on non-squared particle distances, then the best
    orthogonal map (reflections allowed) by SVD, squared distance."""
    d = np.linalg.norm(x[:, None] - y[None], axis=-1)
    _, col = linear_sum_assignment(d)
    yp = y[col]
    u, _, vt = np.linalg.svd(yp.T @ x)
    return float(((x - yp @ (u @ vt)) ** 2).sum())


@pytest.mark.parametrize("n,dim,enumerate_max", [(4, 2, 5), (4, 2, 0), (7, 3, 5)])
def test_one_pass_costs_follow_the_procedure(n, dim, enumerate_max):
    x = torch.randn(3, n * dim, generator=_g(19), dtype=torch.float64)
    y = torch.randn(4, n * dim, generator=_g(20), dtype=torch.float64)
    got = eq_w2.one_pass_sq_costs(x, y, n, dim, enumerate_max=enumerate_max)
    for i in range(3):
        for j in range(4):
            want = eq_cost_by_hand(x[i].reshape(n, dim).numpy(), y[j].reshape(n, dim).numpy())
            assert float(got[i, j]) == pytest.approx(want, abs=1e-9)
    assert eq_w2.eq_w2_value(x, y, n, dim) == pytest.approx(math.sqrt(ot_by_lp(
        eq_w2.one_pass_sq_costs(x, y, n, dim).numpy())), rel=1e-7)


def test_eq_w2_is_mean_free_and_capped():
    dw4 = targets.get("dw4")
    x = torch.randn(6, 8, generator=_g(21), dtype=torch.float64)
    y = torch.randn(5, 8, generator=_g(22), dtype=torch.float64)
    moved = (x.reshape(6, 4, 2) + 4.0).reshape(6, 8)
    want = eq_w2.eq_w2_value(dw4.remove_mean(x), dw4.remove_mean(y), 4, 2)
    assert metrics.get("eq_w2")(moved, y, dw4) == pytest.approx(want, rel=1e-12)
    g = _g(_common.SUBSAMPLE_SEED)
    ix, iy = torch.randperm(6, generator=g)[:4], torch.randperm(5, generator=g)[:4]
    capped = eq_w2.eq_w2_value(dw4.remove_mean(x)[ix], dw4.remove_mean(y)[iy], 4, 2)
    assert metrics.get("eq_w2")(x, y, dw4, max_n=4) == pytest.approx(capped, rel=1e-12)
    assert eq_w2.EQ_W2_MAX_N == 2000


# ----------------------------------------------------------------------------- histograms
def test_histogram_tv_by_hand():
    ref = np.array([0.0, 1.0, 1.0, 2.0, 4.0])  # 4 bins of width 1 on [0, 4]
    vals = np.array([-1.0, 0.5, 1.5, 1.5, 3.99, 4.0, 4.5, np.inf])
    edges, rc, sc, under, over = histograms.histogram_on_reference_bins(vals, ref, bins=4)
    np.testing.assert_allclose(edges, [0, 1, 2, 3, 4])
    assert rc.tolist() == [1, 2, 1, 1] and sc.tolist() == [1, 2, 0, 2]
    assert (under, over) == (1, 2)
    p, q = np.array([1, 2, 1, 1]) / 5, np.array([1, 2, 0, 2]) / 8
    assert histograms.tvd(vals, ref, bins=4) == pytest.approx(0.5 * (np.abs(p - q).sum() + 3 / 8))
    q_in = np.array([1, 2, 0, 2]) / 5
    assert histograms.tvd_official(vals, ref, bins=4) == pytest.approx(0.5 * np.abs(p - q_in).sum())
    assert histograms.tvd_official(np.array([9.0]), ref, bins=4) == 1.0
    assert histograms.tvd(np.array([9.0]), ref, bins=4) == pytest.approx(1.0)


@pytest.mark.parametrize("kw,match", [
    ({"bins": 0}, "bins must be a positive int, got 0"),
    ({"bins": 2.0}, "bins must be a positive int"),
    ({"ref_values": np.array([])}, "ref_values must be non-empty and finite, got 0 values with 0"),
    ({"ref_values": np.array([1.0, 2.0, np.nan])}, "got 3 values with 1 non-finite"),
    ({"values": np.array([])}, "values must be non-empty and free of NaN, got 0 values with 0 NaN"),
    ({"values": np.array([np.nan, 1.0, np.nan])}, "got 3 values with 2 NaN"),
])
def test_histogram_input_errors(kw, match):
    args = {"values": np.array([1.0]), "ref_values": np.array([0.0, 2.0]), "bins": 3, **kw}
    with pytest.raises(ValueError, match=match):
        histograms.histogram_on_reference_bins(**args)


def test_particle_tvds_on_pooled_distances_and_energies():
    dw4 = targets.get("dw4")
    x = torch.randn(30, 8, generator=_g(23), dtype=torch.float64) * 2
    y = torch.randn(40, 8, generator=_g(24), dtype=torch.float64) * 2

    def pooled(z):
        zp = z.reshape(-1, 4, 2)
        i, j = np.triu_indices(4, 1)
        return (zp[:, i] - zp[:, j]).norm(dim=-1).reshape(-1).numpy()

    dx, dy = pooled(x), pooled(y)
    assert metrics.get("dist_tvd")(x, y, dw4) == pytest.approx(histograms.tvd(dx, dy))
    assert metrics.get("dist_tvd_official")(x, y, dw4) == pytest.approx(histograms.tvd_official(dx, dy))
    ex, ey = dw4.energy(x).numpy(), dw4.energy(y).numpy()
    assert metrics.get("energy_tvd")(x, y, dw4) == pytest.approx(histograms.tvd(ex, ey))
    assert metrics.get("energy_tvd_official")(x, y, dw4) == pytest.approx(histograms.tvd_official(ex, ey))
    with pytest.raises(_common.MetricInputError, match="'dist_tvd_official' needs a particle"):
        metrics.get("dist_tvd_official")(x[:, :2], y[:, :2], targets.get("gmm40"))
    with pytest.raises(_common.MetricInputError, match="'dist_tvd' needs a particle"):
        metrics.get("dist_tvd")(x[:, :2], y[:, :2], targets.get("gmm40"))


# ----------------------------------------------------------------------------- density metrics
def test_importance_weight_metrics_by_hand():
    lp = torch.tensor([-1.0, -2.0, -0.5, -3.0], dtype=torch.float64)
    lq = torch.tensor([-1.5, -1.0, -1.0, -2.0], dtype=torch.float64)
    w = torch.exp(lp - lq)
    assert density.log_z(lp, lq) == pytest.approx(math.log(float(w.mean())))
    assert density.elbo(lp, lq) == pytest.approx(float((lp - lq).mean()))
    wn = w / w.sum()
    assert density.ess(lp, lq) == pytest.approx(1.0 / (4 * float(wn.pow(2).sum())))
    zero = torch.full((3,), -math.inf, dtype=torch.float64)
    assert density.ess(zero, torch.zeros(3)) == 0.0
    lp2 = torch.tensor([0.0, -math.inf], dtype=torch.float64)
    assert density.ess(lp2, torch.zeros(2)) == pytest.approx(0.5)
    assert density.elbo(lp2, torch.zeros(2)) == -math.inf
    assert density.log_z(lp2, torch.zeros(2)) == pytest.approx(math.log(0.5))
    # plain lists are accepted
    assert density.log_z([0.0, 0.0], [0.0, 0.0]) == pytest.approx(0.0)


@pytest.mark.parametrize("lp,lq,match", [
    ([[0.0]], [0.0], r"log_p_tilde must have shape \[n\] with n >= 1, got \(1, 1\)"),
    ([], [], r"log_p_tilde must have shape \[n\] with n >= 1, got \(0,\)"),
    ([0.0, 1.0], [0.0], r"log_q must have shape \[2\], got \(1,\)"),
    ([0.0, float("nan")], [0.0, 0.0], "log_p_tilde contains 1 NaN value"),
    ([0.0, 0.0], [0.0, float("inf")], "log_q must be finite .* got 1 non-finite"),
    ([0.0, float("inf")], [0.0, 0.0], r"log_p_tilde contains \+inf"),
])
def test_importance_weight_input_errors(lp, lq, match):
    with pytest.raises(_common.MetricInputError, match=match):
        density.log_weights(lp, lq)


def test_nll_batches_in_float32_and_averages_over_rows():
    seen = []

    def log_q(b):
        seen.append((b.shape[0], b.dtype))
        return -b.double().pow(2).sum(-1)

    y = torch.arange(10.0, dtype=torch.float64).reshape(5, 2)
    assert density.nll(log_q, y, batch_size=2) == pytest.approx(float(y.pow(2).sum(-1).mean()))
    assert seen == [(2, torch.float32), (2, torch.float32), (1, torch.float32)]
    assert density.nll(log_q, y) == pytest.approx(float(y.pow(2).sum(-1).mean()))
    with pytest.raises(_common.MetricInputError, match="log_prob_fn must be callable, got int"):
        density.nll(3, y)
    with pytest.raises(_common.MetricInputError, match=r"reference must have shape \[m, dim\] with m >= 1, got \(5,\)"):
        density.nll(log_q, y[:, 0])
    with pytest.raises(_common.MetricInputError, match=r"log_prob_fn\(reference\) must have shape \[2\]"):
        density.nll(lambda b: torch.zeros(3), y, batch_size=2)


def test_density_evaluate_is_mean_free_and_leaves_counters_alone():
    dw4 = targets.get("dw4")
    x = torch.randn(6, 8, generator=_g(25), dtype=torch.float64)
    y = torch.randn(5, 8, generator=_g(26), dtype=torch.float64)
    moved = (x.reshape(6, 4, 2) + 2.0).reshape(6, 8)
    seen = []

    def log_q(b):
        seen.append(b)
        dw4.energy(b)  # touching the target inside log q must not be charged either
        return -0.5 * b.double().pow(2).sum(-1)

    out = density.evaluate(dw4, log_q, moved, y)
    assert dw4.counter.snapshot() == {"energy_evals": 0, "grad_evals": 0}
    xc, yc = dw4.remove_mean(x), dw4.remove_mean(y)
    torch.testing.assert_close(seen[0], xc.float())
    lp, lq = -dw4.energy(xc), -0.5 * xc.float().double().pow(2).sum(-1)
    assert out["nll"] == pytest.approx(float(0.5 * yc.float().double().pow(2).sum(-1).mean()))
    assert out["log_z"] == pytest.approx(density.log_z(lp, lq))
    assert out["elbo"] == pytest.approx(density.elbo(lp, lq))
    assert out["ess"] == pytest.approx(density.ess(lp, lq))


# ----------------------------------------------------------------------------- shared validation
def test_as_points_accepts_numpy_and_ints_and_names_bad_input():
    gmm = targets.get("gmm40")
    got = _common.as_points(np.array([[1, 2], [3, 4]]), gmm, "samples")
    assert got.dtype == torch.float64 and got.tolist() == [[1.0, 2.0], [3.0, 4.0]]
    assert _common.as_points(torch.tensor([[1, 2]], dtype=torch.int32), gmm, "x").dtype == torch.float64
    with pytest.raises(_common.MetricInputError, match=r"reference must be a torch.Tensor or numpy array of shape \[n, 2\], got list"):
        _common.as_points([[1.0, 2.0]], gmm, "reference")
    with pytest.raises(_common.MetricInputError, match=r"samples must have shape \[n, 2\] with n >= 1 for target 'gmm40', got \(0, 2\)"):
        _common.as_points(torch.zeros(0, 2), gmm, "samples")
    with pytest.raises(_common.MetricInputError, match=r"got \(2,\)"):
        _common.as_points(torch.zeros(2), gmm, "samples")
    with pytest.raises(_common.MetricInputError, match="samples must hold real numbers, got dtype torch.bool"):
        _common.as_points(torch.zeros(2, 2, dtype=torch.bool), gmm, "samples")
    with pytest.raises(_common.MetricInputError, match="samples must hold real numbers"):
        _common.as_points(torch.zeros(2, 2, dtype=torch.int16), gmm, "samples")
    bad = torch.zeros(4, 2)
    bad[0, 0], bad[1, 0], bad[2, 1] = math.inf, -math.inf, math.nan  # 3 rows, 2 columns
    with pytest.raises(_common.MetricInputError, match="samples contains 3 configuration"):
        _common.as_points(bad, gmm, "samples")


@pytest.mark.parametrize("value", [0, -1, True, 2.0, "auto"])
def test_check_max_n_refuses_non_positive_ints(value):
    with pytest.raises(_common.MetricInputError, match=f"max_n must be a positive int or None"):
        _common.check_max_n(value)
    _common.check_max_n(1)
    _common.check_max_n(None)


def test_counters_are_restored_after_an_error():
    dw4 = targets.get("dw4")
    dw4.energy(torch.zeros(2, 8))
    with pytest.raises(RuntimeError):
        with _common.counters_restored(dw4):
            dw4.energy_and_grad(torch.zeros(5, 8))
            raise RuntimeError("metric failed")
    assert dw4.counter.snapshot() == {"energy_evals": 2, "grad_evals": 0}


def test_density_vectors_of_length_one_and_the_default_batch():
    assert density.log_z([0.5], [0.0]) == pytest.approx(0.5)
    assert density.ess(torch.tensor([0.5]), torch.tensor([0.0])) == pytest.approx(1.0)
    sizes = []

    def log_q(b):
        sizes.append(b.shape[0])
        return torch.zeros(b.shape[0])

    assert density.nll(log_q, torch.zeros(1001, 2)) == 0.0
    assert sizes == [1000, 1]
    assert density.nll(lambda b: torch.ones(b.shape[0]), torch.zeros(3, 0)) == -1.0  # m rows suffice
    assert density.nll(lambda b: torch.full((b.shape[0],), 2.0), torch.zeros(1, 2)) == -2.0


class _HoleTarget(targets.Target):
    """E(x) = x² except NaN for x > 1 (an energy undefined somewhere)."""

    name = "hole"
    pretty_name = "Hole"

    def __init__(self):
        super().__init__(dim=1, params={})

    def _energy(self, x):
        e = x[..., 0] ** 2
        return torch.where(x[..., 0] > 1, torch.full_like(e, math.nan), e)


def test_density_evaluate_reads_a_nan_energy_as_zero_weight():
    t = _HoleTarget()
    x = torch.tensor([[0.0], [0.5], [2.0]], dtype=torch.float64)
    out = density.evaluate(t, lambda b: torch.zeros(b.shape[0]), x, x)
    lp = torch.tensor([0.0, -0.25, -math.inf], dtype=torch.float64)
    assert out["elbo"] == -math.inf
    assert out["log_z"] == pytest.approx(density.log_z(lp, torch.zeros(3)))
    assert out["ess"] == pytest.approx(density.ess(lp, torch.zeros(3)))


def test_one_pass_costs_compute_in_float64():
    x = torch.randn(3, 8, generator=_g(27))
    y = torch.randn(2, 8, generator=_g(28))
    got = eq_w2.one_pass_sq_costs(x, y, 4, 2)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, eq_w2.one_pass_sq_costs(x.double(), y.double(), 4, 2),
                               rtol=1e-13, atol=1e-13)


def test_eq_w2_uses_the_callers_generator_and_names_a_string_cap():
    dw4 = targets.get("dw4")
    x = torch.randn(6, 8, generator=_g(29), dtype=torch.float64)
    y = torch.randn(5, 8, generator=_g(30), dtype=torch.float64)
    ix, iy = subsample_indices(6, 5, 3, 31)
    want = eq_w2.eq_w2_value(dw4.remove_mean(x)[ix], dw4.remove_mean(y)[iy], 4, 2)
    assert metrics.get("eq_w2")(x, y, dw4, max_n=3, generator=_g(31)) == pytest.approx(want, rel=1e-12)
    with pytest.raises(_common.MetricInputError, match="eq_w2: max_n must be a positive int or None, got 'auto'"):
        metrics.get("eq_w2")(x, y, dw4, max_n="auto")
    with pytest.raises(_common.MetricInputError, match="metric 'eq_w2' needs a particle target"):
        metrics.get("eq_w2")(x[:, :2], y[:, :2], targets.get("gmm40"))


def test_metric_registry_refuses_a_taken_name(monkeypatch):
    monkeypatch.setattr(metrics, "_REGISTRY", dict(metrics._REGISTRY))

    def mine(samples, reference, target):
        return 0.0

    assert metrics.register("mine", mine) is mine
    assert metrics.get("mine") is mine and metrics.names()[-1] == "mine"
    with pytest.raises(ValueError, match="metric 'x_w2' is already registered"):
        metrics.register("x_w2", mine)
    assert metrics.get("x_w2") is wasserstein.x_w2


def test_histogram_edge_cases_one_bin_one_reference_value_and_2d_input():
    ref = np.array([0.0, 1.0, 3.0])
    assert histograms.tvd(np.array([0.5, 2.0]), ref, bins=1) == 0.0  # one bin holds everything
    edges, rc, sc, under, over = histograms.histogram_on_reference_bins(
        np.array([[1.9, 2.1], [2.6, 0.0]]), np.array([2.0]), bins=2)  # numpy: range [1.5, 2.5]
    np.testing.assert_allclose(edges, [1.5, 2.0, 2.5])
    assert rc.tolist() == [0, 1] and sc.tolist() == [1, 1] and (under, over) == (1, 1)


def test_uncounted_energy_is_float64_and_applicable_path_metrics():
    dw4 = targets.get("dw4")
    e = _common.uncounted_energy(dw4, torch.zeros(2, 8))
    assert e.dtype == torch.float64 and dw4.counter.energy_evals == 0
    gmm = targets.get("gmm40")
    plain = metrics.applicable(gmm)
    assert metrics.applicable(gmm, path_weights=True) == plain + ["log_z", "elbo_path", "ess_path"]
    assert metrics.applicable(gmm, sampler_has_log_prob=True, path_weights=True) == \
        plain + ["nll", "log_z", "elbo", "ess"]
