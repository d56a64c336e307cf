"""The E(3)-equivariant augmented coupling flow (samplers/se3_flow.py): symmetries of the map and of
log q(x, a), invertibility, normalisation (grid integral on a 2-particle 1-D toy, importance
sampling on a 3-particle 2-D one), and the marginal importance-sampling estimate."""
import math

import pytest
import torch

from samplers.se3_flow import AugmentedCouplingFlow
from samplers.se3_nets import equivariant_frame

SMALL = dict(n_layers=2, hidden=16, n_blocks=2, n_features=16)


def _flow(n, d, seed=0, **kw):
    args = {**SMALL, "identity_init": False, "aug_scale": 0.3, **kw}
    return AugmentedCouplingFlow(n, d, torch.Generator().manual_seed(seed), **args).double()


def _orthogonal(d, reflect, seed=0):
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed),
                                       dtype=torch.float64))
    if (torch.det(q) < 0) != reflect:
        q[:, 0] = -q[:, 0]
    return q


def _base_points(flow, b, seed=1):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(b, flow.n, 1 + flow.n_aug, flow.d, generator=g, dtype=torch.float64)
    z[:, :, 0] -= z[:, :, 0].mean(1, keepdim=True)
    return z


@pytest.mark.parametrize("n,d", [(4, 2), (5, 3)])
@pytest.mark.parametrize("reflect", [False, True])
def test_map_and_log_q_equivariant_to_rotation_reflection_permutation_translation(n, d, reflect):
    flow = _flow(n, d)
    z0 = _base_points(flow, 6)
    with torch.no_grad():
        z, ld = flow.forward_map(z0)
        x, a = z[:, :, 0], z[:, :, 1:]
        lq = flow.log_prob_joint(x, a)
        assert (lq - flow.base_log_prob(z0)).abs().max() > 0.1      # a non-trivial map
        R = _orthogonal(d, reflect)
        t = torch.linspace(-1.5, 2.0, d, dtype=torch.float64)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(3))
        zr, ldr = flow.forward_map(z0 @ R.T)
        assert torch.allclose(zr, z @ R.T, atol=1e-10) and torch.allclose(ldr, ld, atol=1e-10)
        zp, ldp = flow.forward_map(z0[:, perm])
        assert torch.allclose(zp, z[:, perm], atol=1e-10) and torch.allclose(ldp, ld, atol=1e-10)
        zt, ldt = flow.forward_map(z0 + t)          # outputs are gauge-fixed: x mean-free
        assert torch.allclose(zt, z, atol=1e-10) and torch.allclose(ldt, ld, atol=1e-10)
        assert z[:, :, 0].sum(1).abs().max() < 1e-10
        for xx, aa in ((x @ R.T, a @ R.T), (x[:, perm], a[:, perm]), (x + t, a + t)):
            assert torch.allclose(flow.log_prob_joint(xx, aa), lq, atol=1e-9)


def test_forward_inverse_is_identity_in_float64_and_log_dets_cancel():
    flow = _flow(4, 2, n_aug=3)
    z0 = _base_points(flow, 8)
    with torch.no_grad():
        z, ld = flow.forward_map(z0)
        back, ld_inv = flow.inverse_map(z)
    assert (z - z0).abs().max() > 0.05
    assert torch.allclose(back, z0, atol=1e-10)
    assert torch.allclose(ld + ld_inv, torch.zeros_like(ld), atol=1e-10)


def test_log_det_equals_autograd_jacobian_on_the_quotient():
    """2 particles in 1-D: the joint space (u = (x1 - x2)/sqrt 2, a1, a2) is 3-dimensional."""
    flow = _flow(2, 1, n_layers=1)
    r2 = math.sqrt(2.0)

    def fn(v):
        z0 = torch.stack([v[0] / r2, v[1], -v[0] / r2, v[2]]).reshape(1, 2, 2, 1)
        z, _ = flow.forward_map(z0)
        return torch.stack([(z[0, 0, 0, 0] - z[0, 1, 0, 0]) / r2, z[0, 0, 1, 0], z[0, 1, 1, 0]])

    v = torch.tensor([0.7, -0.4, 1.1], dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(fn, v)
    z0 = torch.stack([v[0] / r2, v[1], -v[0] / r2, v[2]]).reshape(1, 2, 2, 1)
    with torch.no_grad():
        log_det = float(flow.forward_map(z0)[1])
    assert log_det == pytest.approx(float(torch.linalg.slogdet(jac)[1]), abs=1e-10)


def test_joint_density_integrates_to_one_on_a_two_particle_1d_toy():
    """Riemann sum on a 3-D grid over (u, a1, a2); a1 and a2 use grids offset from each other so
    no node has a1 = a2 (the measure-zero set without an equivariant frame). The density is only
    piecewise smooth (in 1-D the frame is a sign, which flips the shift t where the conditioner's
    vector crosses 0), so the sum converges like h: at h = 0.2 it is within 0.02 of 1 (measured
    1.011), while the same flow without its log-det integrates to far from 1."""
    flow = _flow(2, 1, n_layers=1, hidden=8, n_blocks=1, n_features=8, aug_scale=0.5)
    m, lim = 51, 5.0
    g = torch.linspace(-lim, lim, m, dtype=torch.float64)
    h = float(g[1] - g[0])
    u, a1, a2 = torch.meshgrid(g, g + h / 2, g - h / 4, indexing="ij")
    x = torch.stack([u / math.sqrt(2), -u / math.sqrt(2)], -1).reshape(-1, 2, 1)
    a = torch.stack([a1, a2], -1).reshape(-1, 2, 1, 1)
    with torch.no_grad():
        z0, log_det = flow.inverse_map(torch.cat([x.unsqueeze(2), a], 2))
        without_log_det = flow.base_log_prob(z0)
        lq = without_log_det + log_det
        assert torch.allclose(flow.log_prob_joint(x[::97], a[::97]), lq[::97])
    assert float((lq.exp() * h ** 3).sum()) == pytest.approx(1.0, abs=0.02)
    assert abs(float((without_log_det.exp() * h ** 3).sum()) - 1.0) > 0.1


def test_importance_weights_of_own_samples_average_to_one_in_2d():
    """E_{(x,a)~q}[p(x,a) / q(x,a)] = 1 for a normalised p (here the base density)."""
    flow = _flow(3, 2, n_layers=1)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        x, a, lq = flow.sample_joint(20000, g, dtype=torch.float64)
        lp = flow.base_log_prob(torch.cat([x.unsqueeze(2), a], 2))
    w = (lp - lq).exp()
    assert float((lp - lq).abs().mean()) > 0.1
    assert float(w.mean()) == pytest.approx(1.0, abs=4 * float(w.std()) / math.sqrt(len(w)))


def test_marginal_estimate_exact_for_identity_flow_and_unbiased_in_exp():
    g = torch.Generator().manual_seed(0)
    kw = dict(n_layers=1, hidden=8, n_blocks=1, n_features=8, identity_init=True, aug_scale=0.1)
    x = _flow(4, 2, identity_init=True).sample_joint(3, g, dtype=torch.float64)[0].detach()
    exact = -0.5 * x.pow(2).sum((1, 2)) - 3 * math.log(2 * math.pi)   # N_mf(0, 1), 6 dof
    same = AugmentedCouplingFlow(4, 2, g, **kw).double()
    with torch.no_grad():
        assert torch.allclose(same.log_prob(x, 5, g), exact, atol=1e-10)
        other = AugmentedCouplingFlow(4, 2, g, target_aug_scale=0.13, **kw).double()
        est = other.log_prob(x.repeat_interleave(4000, 0), 1, g).reshape(3, 4000)
    ratio = (est - exact[:, None]).exp()
    assert (ratio.std(1) > 0.1).all()                                 # the estimate is noisy
    assert torch.allclose(ratio.mean(1), torch.ones(3, dtype=torch.float64),
                          atol=float(4 * ratio.std(1).max() / math.sqrt(4000)))


def test_marginal_estimate_matches_grid_marginal_of_a_nontrivial_flow():
    flow = _flow(2, 1, n_layers=1, hidden=8, n_blocks=1, n_features=8, aug_scale=0.5)
    m, lim = 121, 8.0
    g1 = torch.linspace(-lim, lim, m, dtype=torch.float64)
    h = float(g1[1] - g1[0])
    a1, a2 = torch.meshgrid(g1 + h / 2, g1 - h / 4, indexing="ij")
    a = torch.stack([a1, a2], -1).reshape(-1, 2, 1, 1)
    gen = torch.Generator().manual_seed(2)
    for u in (-1.3, 0.4):
        x = torch.tensor([[u / math.sqrt(2)], [-u / math.sqrt(2)]], dtype=torch.float64)
        with torch.no_grad():
            exact = math.log(float(flow.log_prob_joint(x.expand(len(a), 2, 1), a).exp().sum())
                             * h * h)
            est = flow.log_prob(x.unsqueeze(0), 20000, gen)
        assert float(est) == pytest.approx(exact, abs=0.03)


@pytest.mark.parametrize("d", [1, 2, 3])
def test_frame_is_orthonormal_and_O_d_equivariant(d):
    v = torch.randn(50, d, d, generator=torch.Generator().manual_seed(d), dtype=torch.float64)
    q = equivariant_frame(v)
    eye = torch.eye(d, dtype=torch.float64).expand(50, d, d)
    assert torch.allclose(q @ q.transpose(-1, -2), eye, atol=1e-12)
    for reflect in (False, True):
        R = _orthogonal(d, reflect, seed=7) if d > 1 else torch.tensor([[-1.0 if reflect else 1.0]],
                                                                       dtype=torch.float64)
        assert torch.allclose(equivariant_frame(v @ R.T), q @ R.T, atol=1e-12)
    degenerate = torch.zeros(2, d, d, dtype=torch.float64)
    q0 = equivariant_frame(degenerate)
    assert torch.allclose(q0 @ q0.transpose(-1, -2), eye[:2], atol=1e-12)


def test_bad_n_aug_names_the_field():
    with pytest.raises(ValueError, match="n_aug"):
        AugmentedCouplingFlow(4, 2, torch.Generator().manual_seed(0), n_aug=2)
