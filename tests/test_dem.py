"""DEM building blocks against closed forms: schedule integrals, the MC score estimator on a
Gaussian (whose noised score is exact), score clipping, EGNN symmetries and equality with an
edge-list reference implementation, the reverse SDE on a Gaussian, and the replay buffer."""
from __future__ import annotations

import math

import pytest
import torch

from samplers.dem import (EGNN, GeometricSchedule, ReplayBuffer, ScoreMLP, build_network,
                          clip_norm, mc_score, negative_time, remove_mean, reverse_sde)
from samplers.dem.networks import init_parameters

M = torch.tensor([1.5, -0.5])
S2 = 0.7  # variance of the Gaussian target


@pytest.fixture(autouse=True)
def _one_thread():
    """Small tensors: one thread avoids OpenMP contention on the shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def gauss_energy_and_grad(y):
    """p~ = N(M, S2 I): E = |y - M|^2 / (2 S2), grad E = (y - M) / S2."""
    d = y - M.to(y)
    return d.pow(2).sum(-1) / (2 * S2), d / S2


# ------------------------------------------------------------------ schedule
@pytest.mark.parametrize("smin,smax", [(1e-5, 1.0), (1e-5, 3.0), (0.01, 2.0), (0.5, 4.0)])
def test_schedule_h_is_integral_of_g_squared(smin, smax):
    s = GeometricSchedule(smin, smax)
    ts = torch.linspace(0, 1, 20001, dtype=torch.float64)
    g2 = s.g(ts) ** 2
    h_num = torch.cat([torch.zeros(1, dtype=torch.float64),
                       torch.cumsum((g2[1:] + g2[:-1]) / 2 * (ts[1] - ts[0]), 0)])
    h = s.h(ts)
    assert torch.allclose(h, h_num, rtol=1e-6, atol=1e-12)
    # closed forms of the official code, and the prior scale sqrt(h(1)) ~ sigma_max
    r = smax / smin
    for t in (0.0, 0.3, 1.0):
        assert s.g(t) == pytest.approx(smin * r ** t * math.sqrt(2 * math.log(r)), rel=1e-12)
        assert s.h(t) == pytest.approx(smin ** 2 * (r ** (2 * t) - 1), rel=1e-9, abs=1e-300)
    assert s.prior_std == pytest.approx(math.sqrt(smax ** 2 - smin ** 2), rel=1e-12)
    # float32 small-t accuracy (expm1), where the plain form cancels to 0
    assert float(s.h(torch.tensor([1e-6]))[0]) == pytest.approx(smin ** 2 * 2e-6 * math.log(r), rel=1e-3)


def test_schedule_rejects_bad_sigmas():
    with pytest.raises(ValueError, match="sigma_min"):
        GeometricSchedule(1.0, 0.5)


# ------------------------------------------------------------------ estimator
def _exact_noised_score(x, h):
    return -(x - M) / (S2 + h[:, None])


def test_estimator_converges_to_exact_noised_score_and_bias_shrinks_with_K():
    g = torch.Generator().manual_seed(0)
    B = 400
    x = torch.randn(B, 2, generator=g) * 1.5 + M
    h = torch.full((B,), 0.5)
    exact = _exact_noised_score(x, h)
    err = {}
    for K in (10, 1000):
        s = mc_score(x, h, gauss_energy_and_grad, K, g)
        err[K] = (s - exact).pow(2).sum(-1).mean().item()
    scale = exact.pow(2).sum(-1).mean().item()
    # relative errors measured over seeds: K=10 ~0.15, K=1000 ~0.005 (a wrong weighting or a
    # missing sqrt on h would leave an O(1) error at any K)
    assert err[1000] < 0.012 * scale
    assert err[1000] < err[10] / 12


def test_estimator_at_zero_noise_is_the_true_score_and_one_batched_call():
    calls = []

    def eg(y):
        calls.append(tuple(y.shape))
        return gauss_energy_and_grad(y)

    g = torch.Generator().manual_seed(1)
    x = torch.randn(7, 2, generator=g)
    s = mc_score(x, torch.zeros(7), eg, 5, g)
    assert calls == [(35, 2)]
    assert torch.allclose(s, -(x - M) / S2, atol=1e-6)
    # chunked evaluation gives the same numbers for the same noise
    s1 = mc_score(x, torch.ones(7), gauss_energy_and_grad, 50, torch.Generator().manual_seed(3))
    s2 = mc_score(x, torch.ones(7), gauss_energy_and_grad, 50, torch.Generator().manual_seed(3), chunk=64)
    assert torch.allclose(s1, s2, atol=1e-6)


def test_clip_norm_per_particle_and_per_vector():
    s = torch.tensor([[3.0, 4.0, 0.3, 0.4]])          # two 2-D particles, norms 5 and 0.5
    per_particle = clip_norm(s, 1.0, group=2)
    assert torch.allclose(per_particle, torch.tensor([[0.6, 0.8, 0.3, 0.4]]), atol=1e-5)
    whole = clip_norm(s, 1.0)                          # norm of the vector ~ 5.025
    assert torch.linalg.vector_norm(whole) == pytest.approx(1.0, abs=1e-5)
    assert torch.equal(clip_norm(s, None), s)
    estimate = mc_score(torch.full((3, 2), 50.0), torch.zeros(3), gauss_energy_and_grad, 4,
                        torch.Generator().manual_seed(0), clip=70.0)
    assert torch.linalg.vector_norm(estimate, dim=-1).max() <= 70.0 + 1e-3
    # float32 overflow: the direction survives (the official float32 norm would zero it)
    huge = torch.tensor([[3e19, 4e19], [float("inf"), 0.0]])
    assert torch.allclose(clip_norm(huge, 20.0), torch.tensor([[12.0, 16.0], [20.0, 0.0]]))
    assert clip_norm(torch.tensor([[float("nan"), 1.0]]), 20.0).isnan().any()


def test_weight_zero_points_with_infinite_gradient_do_not_poison_the_estimate():
    def eg(y):  # copy k=1 of every sample: energy 1e30 (weight exactly 0) and an inf gradient
        k1 = (torch.arange(y.shape[0]) % 2 == 1)[:, None]
        e = torch.where(k1[:, 0], 1e30, 0.0)
        return e, torch.where(k1, float("inf"), torch.ones_like(y))

    s = mc_score(torch.zeros(3, 2), torch.ones(3), eg, 2, torch.Generator().manual_seed(0))
    assert torch.equal(s, -torch.ones(3, 2))


# ------------------------------------------------------------------ networks
def _random_orthogonal(d, g):
    q, r = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def _egnn(n, d, layers=2, hidden=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    net = build_network("egnn", n * d, (n, d), hidden, layers, g)
    with torch.no_grad():  # larger coordinate updates than the official 0.001 gain: a sharper test
        for layer in net.layers:
            layer.coord2.weight.uniform_(-0.5, 0.5, generator=g)
    return net.double()


@pytest.mark.parametrize("n,d", [(4, 2), (13, 3)])
def test_egnn_equivariance(n, d):
    g = torch.Generator().manual_seed(5)
    net = _egnn(n, d)
    B = 6
    x = remove_mean(torch.randn(B, n * d, generator=g, dtype=torch.float64) * 1.5, n, d)
    t = torch.rand(B, generator=g, dtype=torch.float64)
    out = net(t, x)
    assert out.abs().max() > 1e-3  # not trivially zero
    op = out.view(B, n, d)
    assert torch.allclose(op.mean(1), torch.zeros(B, d, dtype=torch.float64), atol=1e-12)
    R = _random_orthogonal(d, g).double()
    xr = (x.view(B, n, d) @ R.T).reshape(B, -1)
    assert torch.allclose(net(t, xr).view(B, n, d), op @ R.T, atol=1e-9)
    perm = torch.randperm(n, generator=g)
    xp = x.view(B, n, d)[:, perm].reshape(B, -1)
    assert torch.allclose(net(t, xp).view(B, n, d), op[:, perm], atol=1e-9)
    shift = torch.randn(1, 1, d, generator=g, dtype=torch.float64) * 3
    xs = (x.view(B, n, d) + shift).reshape(B, -1)
    assert torch.allclose(net(t, xs), out, atol=1e-9)


def _egnn_edge_list_reference(net: EGNN, t, x):
    """The official formulation: explicit edge list i != j, messages summed per receiving node."""
    B, n, d = x.shape[0], net.n_particles, net.spatial_dim
    x0 = x.view(B, n, d)
    rows = [i for i in range(n) for j in range(n) if i != j]
    cols = [j for i in range(n) for j in range(n) if i != j]
    a0 = (x0[:, rows] - x0[:, cols]).pow(2).sum(-1, keepdim=True)
    h = net.embedding(t.view(B, 1, 1)).expand(B, n, net.hidden)
    y = x0
    for L in net.layers:
        diff = y[:, rows] - y[:, cols]
        radial = diff.pow(2).sum(-1, keepdim=True)
        e = torch.cat([h[:, rows], h[:, cols], radial, a0], dim=-1)
        m = torch.nn.functional.silu(L.edge2(torch.nn.functional.silu(L.edge1(e))))
        m = m * torch.sigmoid(L.att(m))
        trans = diff / (torch.sqrt(radial + 1e-8) + 1) * torch.tanh(
            L.coord2(torch.nn.functional.silu(L.coord1(m)))) * L.coords_range
        agg_x = torch.zeros_like(y).index_add_(1, torch.tensor(rows), trans)
        agg_h = torch.zeros_like(h).index_add_(1, torch.tensor(rows), m)
        y = y + agg_x
        h = h + L.node2(torch.nn.functional.silu(L.node1(torch.cat([h, agg_h], -1))))
    v = y - x0
    return (v - v.mean(1, keepdim=True)).reshape(B, -1)


@pytest.mark.parametrize("layers", [1, 3])
def test_dense_egnn_equals_edge_list_formulation(layers):
    g = torch.Generator().manual_seed(2)
    net = _egnn(5, 3, layers=layers, hidden=8, seed=3)
    x = torch.randn(4, 15, generator=g, dtype=torch.float64)
    t = torch.rand(4, generator=g, dtype=torch.float64)
    ref = _egnn_edge_list_reference(net, t, x)
    assert torch.allclose(net(t, x), ref, atol=1e-10)
    with torch.no_grad():  # the sampling path runs activations in place
        assert torch.allclose(net(t, x), ref, atol=1e-10)


def test_float32_sampling_path_equals_the_autograd_path():
    """Without autograd, float32 CPU layers use oneDNN's fused linear+SiLU (where available) and
    in-place activations; the function must be the autograd path's to float32 rounding."""
    g = torch.Generator().manual_seed(5)
    from samplers.dem import networks
    if torch.backends.mkldnn.is_available():  # the fast path must not silently disappear
        assert networks._FUSED
    net = _egnn(13, 3, layers=3, hidden=32, seed=6).float()
    x = torch.randn(64, 39, generator=g)
    t = torch.rand(64, generator=g)
    train_path = net(t, x).detach()
    with torch.no_grad():
        sample_path = net(t, x)
    assert train_path.abs().max() > 1e-3  # a non-trivial output
    assert torch.allclose(sample_path, train_path, rtol=1e-4, atol=1e-6)


def test_a_shared_time_gives_the_same_output_as_a_per_sample_time():
    g = torch.Generator().manual_seed(4)
    for net, dim in ((build_network("mlp", 2, None, 32, 2, g), 2), (_egnn(4, 2).float(), 8)):
        x = torch.randn(5, dim, generator=g)
        assert torch.allclose(net(torch.full((1,), 0.3), x), net(torch.full((5,), 0.3), x),
                              atol=1e-6)


def test_official_sizes_and_init():
    g = torch.Generator().manual_seed(0)
    mlp = build_network("mlp", 2, None, 128, 3, g)
    # Linear(384,128) + 3 x Linear(128,128) + Linear(128,2)
    assert sum(p.numel() for p in mlp.parameters()) == 384 * 128 + 128 + 3 * (128 * 128 + 128) + 128 * 2 + 2
    egnn = build_network("egnn", 8, (4, 2), 128, 3, g)
    lay = egnn.layers[0]
    assert lay.edge1.in_features == 2 * 128 + 2 and lay.coord2.bias is None
    assert lay.coords_range == pytest.approx(5.0)          # 15 / 3 layers
    bound = 0.001 * math.sqrt(6 / 129)
    assert lay.coord2.weight.abs().max() <= bound and lay.coord2.weight.abs().max() > bound / 2
    assert isinstance(mlp, ScoreMLP)
    # init is a function of the generator only
    a = init_parameters(ScoreMLP(2, 16, 1), torch.Generator().manual_seed(9))
    b = init_parameters(ScoreMLP(2, 16, 1), torch.Generator().manual_seed(9))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


# ------------------------------------------------------------------ SDE
def test_reverse_sde_with_exact_score_recovers_the_gaussian():
    s = GeometricSchedule(0.01, 3.0)
    g = torch.Generator().manual_seed(0)
    n, var = 10000, 0.5
    x = torch.randn(n, 2, generator=g) * s.prior_std

    def score(t, y):  # t: [1], one time for the batch
        assert t.shape == (1,)
        return -y / (var + s.h(t))

    y = reverse_sde(score, x, s, 1000, 1.0, g)
    assert y.var(0).sub(var).abs().max() < 0.03      # s.e. of a variance at n=10000: ~0.007
    assert y.mean(0).abs().max() < 0.03
    # diffusion_scale lowers only the noise: the sampler is then colder than the target
    y9 = reverse_sde(score, torch.randn(n, 2, generator=g) * s.prior_std, s, 1000, 0.5, g)
    assert y9.var(0).max() < var * 0.8


def test_negative_time_ascends_log_density_and_keeps_mean_free():
    g = torch.Generator().manual_seed(0)
    x = remove_mean(torch.randn(16, 6, generator=g), 3, 2)

    def true_score(y):  # harmonic well around the origin plus a pull on particle 0
        s = -y.clone()
        s[:, :2] += 1.0
        return s

    proj = lambda y: remove_mean(y, 3, 2)  # noqa: E731
    y = negative_time(x, true_score, 10, dt=1e-2, clip=20.0, project=proj)
    e = lambda z: 0.5 * z.pow(2).sum(-1) - z[:, :2].sum(-1)  # noqa: E731  (E with -grad E = score)
    assert (e(y) < e(x)).all()
    assert torch.allclose(y.view(16, 3, 2).mean(1), torch.zeros(16, 2), atol=1e-6)


# ------------------------------------------------------------------ buffer
def test_buffer_fifo_and_uniform_sampling():
    buf = ReplayBuffer(1, capacity=10, min_size=4)
    buf.add(torch.arange(3.0)[:, None])
    assert not buf.can_sample
    with pytest.raises(RuntimeError, match="min_size"):
        buf.sample(2, torch.Generator())
    buf.add(torch.arange(3.0, 12.0)[:, None])          # 12 added, capacity 10: 0 and 1 evicted
    assert len(buf) == 10
    assert sorted(buf.x[:, 0].tolist()) == list(range(2, 12))
    assert buf.last(3)[:, 0].tolist() == [9.0, 10.0, 11.0]
    draws = buf.sample(20000, torch.Generator().manual_seed(0))[:, 0]
    counts = torch.bincount(draws.long(), minlength=12)
    assert counts[:2].sum() == 0
    assert (counts[2:].float() / 20000 - 0.1).abs().max() < 0.015


def test_compiled_network_samples_like_the_eager_one():
    """``compile=True`` (torch.compile of the network) on the no-grad sampling path, where the
    eager network calls oneDNN's fused linear+SiLU: the traced graph must use plain ops."""
    net = _egnn(4, 2, layers=2, hidden=8, seed=7).float()
    compiled = torch.compile(net)
    g = torch.Generator().manual_seed(8)
    x, t = torch.randn(16, 8, generator=g), torch.tensor([0.4])
    with torch.no_grad():
        assert torch.allclose(compiled(t, x), net(t, x), rtol=1e-4, atol=1e-6)
