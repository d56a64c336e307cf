"""eq_w2 (ASBS / Adjoint Sampling aligned W2): closed forms, where it differs from x_w2_aligned,
agreement with a plain per-pair transcription of the documented procedure, and the ASBS energy W2
being our energy_w2."""
import math

import numpy as np
import ot
import pytest
import torch
from scipy.optimize import linear_sum_assignment

import metrics
import targets
from metrics import MetricInputError
from metrics import eq_w2 as eqm

DW4 = targets.get("dw4")
LJ13 = targets.get("lj13")
# an irregular quadrilateral, elongated along x, particles at least 1.3 apart
QUAD = torch.tensor([[-3.0, 0.3, -1.2, -0.4, 1.1, 0.5, 3.4, -0.2]], dtype=torch.float64)


def _rot2(theta):
    c, s = math.cos(theta), math.sin(theta)
    return torch.tensor([[c, -s], [s, c]], dtype=torch.float64)


def _mean_free(t, x):
    return t.remove_mean(x.to(torch.float64))


def test_permuted_copies_score_zero_on_dw4_and_lj13():
    g = torch.Generator().manual_seed(3)
    for t in (DW4, LJ13):
        x = _mean_free(t, torch.randn(5, t.dim, generator=g, dtype=torch.float64) * 2)
        xp = x.view(5, t.n_particles, t.spatial_dim)
        perm = torch.randperm(t.n_particles, generator=g)
        copy = xp[:, perm].reshape(5, t.dim)[torch.tensor([3, 0, 4, 1, 2])]  # rows shuffled too
        assert metrics.get("eq_w2")(x, copy, t) == pytest.approx(0.0, abs=1e-6)


def test_scaled_copy_gives_the_closed_form():
    """y = c·π(x): the assignment is π, the best orthogonal map the identity, so
    M² = (1 - c)² |x|² and, for one configuration per side, eq_w2 = |1 - c| |x|."""
    x = _mean_free(DW4, QUAD)
    y = (1.2 * x.view(4, 2))[[1, 3, 0, 2]].reshape(1, 8)
    assert metrics.get("eq_w2")(x, y, DW4) == pytest.approx(0.2 * float(x.norm()), rel=1e-9)
    # two configurations per side, each with its scaled copy: OT pairs them, W2² = mean of M²
    x2 = torch.cat([x, 0.5 * x @ torch.block_diag(*[_rot2(1.0)] * 4)])
    y2 = torch.cat([y, 1.2 * x2[1:]])
    want = 0.2 * math.sqrt(float(x2.pow(2).sum(1).mean()))
    assert metrics.get("eq_w2")(x2, y2, DW4) == pytest.approx(want, rel=1e-9)


def test_where_eq_w2_and_x_w2_aligned_differ():
    """Reflections: a chiral configuration and its mirror image across the x-axis (small
    displacements, so the raw Hungarian pass keeps the labels): eq_w2 0, x_w2_aligned (proper
    rotations only) positive. Rotations: a quarter turn changes the raw-orientation assignment,
    so eq_w2 is positive where x_w2_aligned (which searches rotations) is 0."""
    x = _mean_free(DW4, QUAD)
    mirror = (x.view(4, 2) * torch.tensor([1.0, -1.0], dtype=torch.float64)).reshape(1, 8)
    assert metrics.get("eq_w2")(x, mirror, DW4) == pytest.approx(0.0, abs=1e-6)
    assert metrics.get("x_w2_aligned")(x, mirror, DW4) > 0.3
    quarter = (x.view(4, 2) @ _rot2(math.pi / 2).T).reshape(1, 8)
    assert metrics.get("x_w2_aligned")(x, quarter, DW4) == pytest.approx(0.0, abs=1e-6)
    assert metrics.get("eq_w2")(x, quarter, DW4) > 1.0
    small = (x.view(4, 2) @ _rot2(0.05).T).reshape(1, 8)  # small turn: same labels, aligned
    assert metrics.get("eq_w2")(x, small, DW4) == pytest.approx(0.0, abs=1e-6)


def _plain_procedure(x, y, n_part, dim):
    """The documented procedure pair by pair: Hungarian on non-squared particle distances in
    the raw orientation, Kabsch by SVD without determinant correction (R = V Uᵀ for
    H = xᵀ y_π = U S Vᵀ), distance of x to y_π R, then OT of the squared costs, root taken."""
    xs = x.numpy().reshape(-1, n_part, dim)
    ys = y.numpy().reshape(-1, n_part, dim)
    m = np.zeros((len(xs), len(ys)))
    for i, a in enumerate(xs):
        for j, b in enumerate(ys):
            _, col = linear_sum_assignment(np.linalg.norm(a[:, None] - b[None], axis=-1))
            bp = b[col]
            u, _, vt = np.linalg.svd(a.T @ bp)
            rot = vt.T @ u.T
            m[i, j] = np.linalg.norm(a - bp @ rot)
    w = np.full(len(xs), 1 / len(xs)), np.full(len(ys), 1 / len(ys))
    return math.sqrt(ot.emd2(*w, m ** 2))


@pytest.mark.reference_data
@pytest.mark.parametrize("name, n", [("dw4", 40), ("lj13", 25)])
def test_matches_the_plain_per_pair_procedure_on_reference_data(name, n):
    t = targets.get(name)
    g = torch.Generator().manual_seed(7)
    a, b = t.reference("val", n=n, generator=g), t.reference("test", n=n + 5, generator=g)
    x, y = _mean_free(t, a), _mean_free(t, b)
    want = _plain_procedure(x, y, t.n_particles, t.spatial_dim)
    assert metrics.get("eq_w2")(a, b, t) == pytest.approx(want, rel=1e-9)


def test_enumerated_assignment_equals_the_hungarian_one():
    g = torch.Generator().manual_seed(11)
    x = _mean_free(DW4, torch.randn(30, 8, generator=g, dtype=torch.float64) * 2)
    y = _mean_free(DW4, torch.randn(20, 8, generator=g, dtype=torch.float64) * 2)
    fast = eqm.one_pass_sq_costs(x, y, 4, 2)
    slow = eqm.one_pass_sq_costs(x, y, 4, 2, enumerate_max=0)
    assert torch.allclose(fast, slow, atol=1e-12)


@pytest.mark.reference_data
@pytest.mark.parametrize("name", ["dw4", "lj13"])
def test_asbs_rooted_energy_w2_is_our_energy_w2(name):
    """ASBS's energy W2 is POT's emd2_1d (squared cost) of the two energy sets, root taken: our
    energy_w2 on the same sets (energies: same conventions, DEM's, as ours)."""
    t = targets.get(name)
    g = torch.Generator().manual_seed(5)
    a, b = t.reference("val", n=300, generator=g), t.reference("test", n=200, generator=g)
    want = math.sqrt(ot.emd2_1d(t.energy(b).double().numpy(), t.energy(a).double().numpy()))
    assert metrics.get("energy_w2")(a, b, t) == pytest.approx(want, rel=1e-6)


def test_particle_only_and_validated_cap():
    gmm = targets.get("gmm40")
    assert "eq_w2" in metrics.applicable(DW4) and "eq_w2" not in metrics.applicable(gmm)
    with pytest.raises(MetricInputError, match="particle target"):
        metrics.get("eq_w2")(torch.zeros(2, 2), torch.zeros(2, 2), gmm)
    with pytest.raises(MetricInputError, match="max_n"):
        metrics.get("eq_w2")(QUAD, QUAD, DW4, max_n=0)
    assert eqm.EQ_W2_MAX_N == eqm.ASBS_N_SAMPLES == 2000
