"""The alignment-aware W2 (metrics/alignment.py, x_w2_aligned) against brute force on tiny
inputs, for the survivors of mutmut's runs on metrics/ (docs/testing.md, "Latest scores"): aligned
costs by enumerating permutations and scanning rotation angles, the Kabsch optimum by direct
numerical maximisation over rotations, and the search's rounds, starts and caps. The other
metrics are in tests/test_metrics_exact.py.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from scipy.spatial.transform import Rotation

import metrics
import targets
from metrics import _common, alignment, eq_w2, wasserstein
from test_metrics_exact import ot_by_lp, subsample_indices


def _g(seed):
    return torch.Generator().manual_seed(seed)

# ----------------------------------------------------------------------------- aligned W2
def aligned_sq_by_scan(x, y, reflections):
    """min over the 24 permutations and rotation angles (a 720-point scan, the best three
    permutations refined by a local minimiser) of ||x_π R - y||² for one pair of 4-particle 2-D
    configurations ``[4, 2]`` (numpy)."""
    theta = np.linspace(0, 2 * math.pi, 720, endpoint=False)
    rots = np.stack([np.stack([np.cos(theta), -np.sin(theta)], -1),
                     np.stack([np.sin(theta), np.cos(theta)], -1)], -2)  # [T, 2, 2]
    mirrors = [np.eye(2)] + ([np.diag([-1.0, 1.0])] if reflections else [])
    cands = []
    for p in itertools.permutations(range(4)):
        for m in mirrors:
            xm = x[list(p)] @ m
            costs = ((np.einsum("ka,tab->tkb", xm, rots) - y) ** 2).sum((-2, -1))
            cands.append((costs.min(), theta[costs.argmin()], xm))
    best = math.inf
    for _, t0, xm in sorted(cands, key=lambda c: c[0])[:3]:
        def f(t):
            c, s = math.cos(t[0]), math.sin(t[0])
            return float(((xm @ np.array([[c, -s], [s, c]]) - y) ** 2).sum())
        best = min(best, minimize(f, [t0], method="Nelder-Mead",
                                  options={"xatol": 1e-12, "fatol": 1e-14}).fun)
    return best


@pytest.mark.parametrize("reflections", [False, True])
def test_dw4_aligned_costs_are_the_brute_force_minimum(reflections):
    dw4 = targets.get("dw4")
    x = dw4.remove_mean(torch.randn(3, 8, generator=_g(10), dtype=torch.float64) * 2)
    y = dw4.remove_mean(torch.randn(2, 8, generator=_g(11), dtype=torch.float64) * 2)
    got = alignment.aligned_sq_costs(x, y, 4, 2, reflections=reflections)
    for i in range(3):
        for j in range(2):
            want = aligned_sq_by_scan(x[i].reshape(4, 2).numpy(), y[j].reshape(4, 2).numpy(),
                                      reflections)
            assert float(got[i, j]) == pytest.approx(want, abs=1e-8)
    assert wasserstein.aligned_w2(x, y, 4, 2, reflections=reflections) == pytest.approx(
        math.sqrt(ot_by_lp(got.numpy())), rel=1e-7)
    value = metrics.get("x_w2_aligned")(x, y, dw4, reflections=reflections)
    assert value == pytest.approx(math.sqrt(ot_by_lp(got.numpy())), rel=1e-7)


def test_x_w2_aligned_argument_checks_and_caps():
    dw4, lj55 = targets.get("dw4"), targets.get("lj55")
    assert wasserstein.default_aligned_max_n(dw4) == 500
    assert wasserstein.default_aligned_max_n(targets.get("lj13")) == 500
    assert wasserstein.default_aligned_max_n(lj55) == 128
    x = torch.randn(4, 8, generator=_g(12), dtype=torch.float64)
    with pytest.raises(_common.MetricInputError, match="reflections must be a bool, got 1"):
        metrics.get("x_w2_aligned")(x, x, dw4, reflections=1)
    with pytest.raises(_common.MetricInputError, match="needs a particle target"):
        metrics.get("x_w2_aligned")(x[:, :2], x[:, :2], targets.get("gmm40"))
    # a cap of 3 takes 3 of each side, drawn as the other capped metrics draw them
    g = _g(_common.SUBSAMPLE_SEED)
    ix, iy = torch.randperm(4, generator=g)[:3], torch.randperm(4, generator=g)[:3]
    y = torch.randn(4, 8, generator=_g(13), dtype=torch.float64)
    want = wasserstein.aligned_w2(dw4.remove_mean(x)[ix], dw4.remove_mean(y)[iy], 4, 2)
    assert metrics.get("x_w2_aligned")(x, y, dw4, max_n=3) == pytest.approx(want, rel=1e-12)


def kabsch_by_optimisation(h):
    """max over proper rotations of tr(R^T H), by Nelder-Mead on rotation vectors from 8 starts."""
    def f(v):
        return -float(np.trace(Rotation.from_rotvec(v).as_matrix().T @ h))

    rng = np.random.default_rng(0)
    return max(-minimize(f, rng.normal(size=3), method="Nelder-Mead",
                         options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 4000}).fun
               for _ in range(8))


def test_max_trace_and_kabsch_in_3d_against_direct_maximisation():
    h = torch.randn(4, 3, 3, generator=_g(14), dtype=torch.float64)
    h[0] = -h[0].abs()  # make sure both signs of det H occur
    h[1, 0] = -h[1, 0]
    got = alignment.max_trace(h, reflections=False)
    r = alignment.kabsch(h, reflections=False)
    assert torch.allclose(torch.linalg.det(r), torch.ones(4, dtype=torch.float64))
    assert torch.allclose(r @ r.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand(4, 3, 3))
    for k in range(4):
        want = kabsch_by_optimisation(h[k].numpy())
        assert float(got[k]) == pytest.approx(want, abs=1e-7)
        assert float(torch.trace(r[k].T @ h[k])) == pytest.approx(want, abs=1e-7)
    # with reflections: the nuclear norm, attained by an orthogonal map of either sign
    nuc = torch.linalg.matrix_norm(h, ord="nuc")
    assert torch.allclose(alignment.max_trace(h, reflections=True), nuc)
    q = alignment.kabsch(h, reflections=True)
    assert torch.allclose(torch.einsum("kab,kab->k", q, h), nuc)
    assert (torch.linalg.det(q) < 0).any()


def test_kabsch_of_a_singular_matrix_is_a_rotation():
    h = torch.zeros(1, 3, 3, dtype=torch.float64)
    h[0, 0, 0] = 1.0  # rank 1: det(u vh) may come out as 0 in sign(); must stay proper
    r = alignment.kabsch(h, reflections=False)
    assert float(torch.linalg.det(r)) == pytest.approx(1.0)
    assert float(torch.trace(r[0].T @ h[0])) == pytest.approx(1.0)


def test_rotation_starts():
    for d, proper, full in [(2, 4, 8), (3, 24, 48)]:
        for refl, count in [(False, proper), (True, full)]:
            mats = alignment.cube_rotations(d, refl)
            assert mats.shape == (count, d, d)
            assert len({tuple(m.reshape(-1).tolist()) for m in mats}) == count
            assert torch.allclose(mats @ mats.transpose(-1, -2), torch.eye(d, dtype=torch.float64))
            assert (mats.abs().sum(-1) == 1).all()  # signed permutations
    r = alignment.random_rotations(2000, 3)
    assert torch.allclose(torch.linalg.det(r), torch.ones(2000, dtype=torch.float64))
    assert torch.allclose(r @ r.transpose(-1, -2), torch.eye(3, dtype=torch.float64))
    # Haar measure on SO(3): E tr R = 0 and E tr(R)^2 = 1 (sd of tr R is 1)
    tr = torch.diagonal(r, dim1=-2, dim2=-1).sum(-1)
    assert abs(float(tr.mean())) < 4 / math.sqrt(2000)
    assert float(tr.pow(2).mean()) == pytest.approx(1.0, abs=0.15)
    assert torch.equal(alignment.random_rotations(5, 3, seed=alignment.EXTRA_STARTS_SEED),
                       alignment.random_rotations(5, 3))
    assert not torch.allclose(alignment.random_rotations(5, 3, seed=1), alignment.random_rotations(5, 3))
    s = alignment.start_rotations(3, False, 5)
    assert s.shape == (29, 3, 3) and torch.equal(s[24:], alignment.random_rotations(5, 3))
    s = alignment.start_rotations(3, True, 5)
    assert s.shape == (58, 3, 3)
    assert torch.allclose(torch.linalg.det(s[53:]), -torch.ones(5, dtype=torch.float64))
    assert torch.allclose(s[53:, :, 1:], s[48:53, :, 1:]) and torch.allclose(s[53:, :, 0], -s[48:53, :, 0])
    assert alignment.start_rotations(3, True, 0).shape == (48, 3, 3)


def test_principal_frame_is_a_proper_rotation_onto_the_axes():
    x = torch.randn(6, 7, 3, generator=_g(15), dtype=torch.float64) * torch.tensor([3.0, 2.0, 1.0],
                                                                                   dtype=torch.float64)
    f = alignment.principal_frame(x)
    gram = f.transpose(-1, -2) @ f
    off = gram - torch.diag_embed(torch.diagonal(gram, dim1=-2, dim2=-1))
    assert off.abs().max() < 1e-9
    r = torch.linalg.lstsq(x, f).solution  # f = x r
    assert torch.allclose(torch.linalg.det(r), torch.ones(6, dtype=torch.float64))
    assert torch.allclose(x @ r, f, atol=1e-10)


def aligned_sq_brute(x, y):
    """min over all N! permutations of the Kabsch-optimal squared distance (numpy SVD)."""
    best = math.inf
    for p in itertools.permutations(range(x.shape[0])):
        h = x[list(p)].T @ y
        u, s, vt = np.linalg.svd(h)
        tr = s.sum() - (2 * s[-1] if np.linalg.det(h) < 0 else 0.0)
        best = min(best, (x ** 2).sum() + (y ** 2).sum() - 2 * tr)
    return best


def test_search_on_six_particles_is_an_upper_bound_and_exact_for_near_copies():
    x = torch.randn(3, 6, 3, generator=_g(16), dtype=torch.float64)
    x = x - x.mean(1, keepdim=True)
    rot = torch.tensor(Rotation.random(3, random_state=1).as_matrix(), dtype=torch.float64)
    near = (x @ rot + 0.02 * torch.randn(3, 6, 3, generator=_g(17), dtype=torch.float64))
    near = near[:, torch.randperm(6, generator=_g(18))]
    near = near - near.mean(1, keepdim=True)
    got = alignment.aligned_sq_costs(near.reshape(3, 18), x.reshape(3, 18), 6, 3)
    for i in range(3):
        for j in range(3):
            want = aligned_sq_brute(near[i].numpy(), x[j].numpy())
            assert float(got[i, j]) >= want - 1e-9
            if i == j:
                assert float(got[i, j]) == pytest.approx(want, abs=1e-9)
    # more rounds and starts never increase the cost
    more = alignment.aligned_sq_costs(near.reshape(3, 18), x.reshape(3, 18), 6, 3, n_rounds=3,
                                      extra_starts=4)
    assert (more <= got + 1e-12).all()
    one = alignment.aligned_sq_costs(near.reshape(3, 18), x.reshape(3, 18), 6, 3, n_rounds=1)
    assert (got <= one + 1e-12).all()


@pytest.mark.parametrize("kw,match", [({"n_rounds": 0}, "n_rounds must be an int >= 1, got 0"),
                                      ({"n_rounds": 1.0}, "n_rounds must be an int >= 1, got 1.0"),
                                      ({"extra_starts": -1}, "extra_starts must be an int >= 0, got -1"),
                                      ({"extra_starts": 0.0}, "extra_starts must be an int >= 0")])
def test_search_arguments_are_checked(kw, match):
    x = torch.zeros(1, 18, dtype=torch.float64)
    with pytest.raises(ValueError, match=match):
        alignment.aligned_sq_costs(x, x, 6, 3, **kw)


def test_one_extra_start_is_used():
    s = alignment.start_rotations(3, False, 1)
    assert s.shape == (25, 3, 3) and torch.equal(s[24], alignment.random_rotations(1, 3)[0])


def _clusters(n, n_part, seed, scale=1.0):
    x = scale * torch.randn(n, n_part, 3, generator=_g(seed), dtype=torch.float64)
    return (x - x.mean(1, keepdim=True)).reshape(n, n_part * 3)


def test_search_defaults_and_their_pass_through():
    # 13 particles, random clusters: each non-default setting changes some cost here, so a
    # default or an argument that is not passed on shows.
    x, y = _clusters(4, 13, 36), _clusters(4, 13, 37)
    base = alignment.aligned_sq_costs(x, y, 13, 3)
    torch.testing.assert_close(base, alignment.aligned_sq_costs(x, y, 13, 3, reflections=False,
                                                                n_rounds=2, extra_starts=0))
    for key, value in [("reflections", True), ("n_rounds", 1), ("n_rounds", 3), ("extra_starts", 1)]:
        other = alignment.aligned_sq_costs(x, y, 13, 3, **{key: value})
        assert not torch.allclose(other, base), key
        assert wasserstein.aligned_w2(x, y, 13, 3, **{key: value}) == pytest.approx(
            math.sqrt(ot_by_lp(other.numpy())), rel=1e-7)
        lj13 = targets.get("lj13")
        assert metrics.get("x_w2_aligned")(x, y, lj13, **{key: value}) == pytest.approx(
            math.sqrt(ot_by_lp(other.numpy())), rel=1e-7)
    assert wasserstein.aligned_w2(x, y, 13, 3) == pytest.approx(math.sqrt(ot_by_lp(base.numpy())),
                                                                rel=1e-7)


def test_search_runs_starts_plus_rounds_minus_one_assignment_rounds(monkeypatch):
    calls = []
    real = alignment._round
    monkeypatch.setattr(alignment, "_round", lambda *a: calls.append(1) or real(*a))
    x, y = _clusters(2, 6, 34), _clusters(3, 6, 35)
    for n_rounds, extra in [(1, 0), (2, 0), (3, 2)]:
        calls.clear()
        alignment.aligned_sq_costs(x, y, 6, 3, n_rounds=n_rounds, extra_starts=extra)
        assert len(calls) == 24 + extra + n_rounds - 1
        calls.clear()
        alignment.aligned_sq_costs(x, y, 6, 3, reflections=True, n_rounds=n_rounds, extra_starts=extra)
        assert len(calls) == 48 + 2 * extra + n_rounds - 1


def test_reflections_reach_the_search():
    x = _clusters(3, 7, 36)
    mirrored = (x.reshape(3, 7, 3) * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64))
    mirrored = mirrored[:, torch.randperm(7, generator=_g(37))].reshape(3, 21)
    allowed = alignment.aligned_sq_costs(mirrored, x, 7, 3, reflections=True).diagonal()
    proper = alignment.aligned_sq_costs(mirrored, x, 7, 3).diagonal()
    assert allowed.max() < 1e-9 and proper.min() > 1e-3


def test_assignment_minimises_the_squared_distances():
    a = torch.randn(6, 5, 3, generator=_g(38), dtype=torch.float64)
    b = torch.randn(6, 5, 3, generator=_g(39), dtype=torch.float64)
    perm = alignment._assign(a, b)
    for k in range(6):
        got = float((a[k][perm[k]] - b[k]).pow(2).sum())
        want = min(float((a[k][list(p)] - b[k]).pow(2).sum())
                   for p in itertools.permutations(range(5)))
        assert got == pytest.approx(want, abs=1e-12)


def test_five_particles_are_aligned_exactly():
    x, y = _clusters(3, 5, 40), _clusters(3, 5, 41)
    got = alignment.aligned_sq_costs(x, y, 5, 3)
    for i in range(3):
        for j in range(3):
            want = aligned_sq_brute(x[i].reshape(5, 3).numpy(), y[j].reshape(5, 3).numpy())
            assert float(got[i, j]) == pytest.approx(want, abs=1e-9)


def test_costs_are_float64_and_do_not_depend_on_the_block_size(monkeypatch):
    x, y = _clusters(3, 6, 42), _clusters(4, 6, 43)
    xd, yd = _clusters(3, 4, 44)[:, :8], _clusters(4, 4, 45)[:, :8]
    search = alignment.aligned_sq_costs(x, y, 6, 3)
    exact = alignment.aligned_sq_costs(xd, yd, 4, 2)
    one_pass = eq_w2.one_pass_sq_costs(x, y, 6, 3)
    torch.testing.assert_close(alignment.aligned_sq_costs(x.float(), y.float(), 6, 3),
                               alignment.aligned_sq_costs(x.float().double(), y.float().double(), 6, 3),
                               rtol=1e-12, atol=1e-12)
    monkeypatch.setattr(alignment, "_BLOCK_PAIRS", 5)
    monkeypatch.setattr(eq_w2, "_BLOCK_PAIRS", 5)
    torch.testing.assert_close(alignment.aligned_sq_costs(x, y, 6, 3), search)
    torch.testing.assert_close(alignment.aligned_sq_costs(xd, yd, 4, 2), exact)
    torch.testing.assert_close(eq_w2.one_pass_sq_costs(x, y, 6, 3), one_pass)


def test_max_trace_keeps_batch_axes():
    h = torch.randn(2, 2, 3, 3, generator=_g(46), dtype=torch.float64)
    for refl in (False, True):
        torch.testing.assert_close(alignment.max_trace(h, refl),
                                   alignment.max_trace(h.reshape(4, 3, 3), refl).reshape(2, 2))


def test_aligned_cap_switches_above_13_particles_and_uses_the_generator():
    assert wasserstein.default_aligned_max_n(targets.LennardJones(14)) == 128
    dw4 = targets.get("dw4")
    x = torch.randn(5, 8, generator=_g(47), dtype=torch.float64)
    y = torch.randn(4, 8, generator=_g(48), dtype=torch.float64)
    ix, iy = subsample_indices(5, 4, 3, 49)
    want = wasserstein.aligned_w2(dw4.remove_mean(x)[ix], dw4.remove_mean(y)[iy], 4, 2)
    assert metrics.get("x_w2_aligned")(x, y, dw4, max_n=3, generator=_g(49)) == pytest.approx(want)
    with pytest.raises(_common.MetricInputError, match="metric 'x_w2_aligned' needs a particle"):
        metrics.get("x_w2_aligned")(x[:, :2], y[:, :2], targets.get("gmm40"))
