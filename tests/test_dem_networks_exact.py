"""samplers/dem/networks.py against the official DEM code (jarridrb/DEM 8e95319,
dem/models/components/mlp.py and egnn.py) transcribed here: ``MyMLP`` with its sinusoidal
embeddings and the edge-list ``EGNN_dynamics`` (both directions of every pair, segment sums, the
last layer's node update computed and dropped), in float64 with the module's parameters; the
architecture constants written out from those files; PyTorch's default initialisation replayed
from the generator; the neighbour tables by brute force; symmetry checks with random rotations,
reflections, permutations and shifts on the float32 sampling path."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from samplers.dem import networks
from samplers.dem.networks import EGNN, ScoreMLP, build_network, init_parameters

OFFICIAL_COORDS_RANGE = 15.0   # EGNN(coords_range=15), split evenly over the layers
OFFICIAL_XAVIER_GAIN = 0.001   # last coordinate Linear(H, 1, bias=False)


def official_sinusoidal(x, size, scale):
    """mlp.py SinusoidalEmbedding: exp(-log(10000)/(half-1) * k) computed in float32 as there,
    [sin, cos] of the scaled argument times those frequencies."""
    half = size // 2
    emb = torch.log(torch.Tensor([10000.0])) / (half - 1)
    freqs = torch.exp(-emb * torch.arange(half))
    arg = (x * scale).unsqueeze(-1) * freqs.unsqueeze(0)
    return torch.cat([arg.sin(), arg.cos()], -1)


def official_mlp(net: ScoreMLP, t, x, emb_size=128):
    """mlp.py MyMLP.forward: input embeddings (scale 25) per coordinate, then t (scale 1)."""
    parts = [official_sinusoidal(x[:, i], emb_size, 25.0) for i in range(x.shape[1])]
    z = torch.cat(parts + [official_sinusoidal(t, emb_size, 1.0)], -1)
    h = F.gelu(F.linear(z, net.inp.weight, net.inp.bias))
    for blk in net.blocks:
        h = h + F.gelu(blk(h))
    return net.out(h)


def official_egnn(net: EGNN, t, xs):
    """egnn.py EGNN_dynamics.forward with EGNN / E_GCL (attention, tanh, recurrent, sum)."""
    B, n, d = xs.shape[0], net.n_particles, net.spatial_dim
    rows, cols = [], []
    for i in range(n):
        for j in range(i + 1, n):
            rows += [i, j]
            cols += [j, i]
    rows = torch.cat([torch.tensor(rows) + b * n for b in range(B)])
    cols = torch.cat([torch.tensor(cols) + b * n for b in range(B)])
    x = xs.reshape(B * n, d).clone()
    h = (torch.ones(B, n, dtype=xs.dtype) * t.reshape(-1, 1)).reshape(B * n, 1)
    edge_attr = ((x[rows] - x[cols]) ** 2).sum(1, keepdim=True)
    h = net.embedding(h)
    rng = OFFICIAL_COORDS_RANGE / len(net.layers)
    for L in net.layers:
        diff = x[rows] - x[cols]
        radial = (diff ** 2).sum(1, keepdim=True)
        coord_diff = diff / (torch.sqrt(radial + 1e-8) + 1)
        e = F.silu(L.edge2(F.silu(L.edge1(torch.cat([h[rows], h[cols], radial, edge_attr], 1)))))
        e = e * torch.sigmoid(L.att(e))
        trans = coord_diff * torch.tanh(L.coord2(F.silu(L.coord1(e)))) * rng
        x = x + torch.zeros_like(x).index_add_(0, rows, trans)
        agg = torch.zeros_like(h).index_add_(0, rows, e)
        h = h + L.node2(F.silu(L.node1(torch.cat([h, agg], 1))))
    vel = (x - xs.reshape(B * n, d)).view(B, n, d)
    return (vel - vel.mean(1, keepdim=True)).reshape(B, n * d)


def _sharp_egnn(n, d, layers, hidden=8, seed=0, dtype=torch.float64):
    """A built EGNN with coordinate weights far above the official 0.001 gain (visible updates)."""
    g = torch.Generator().manual_seed(seed)
    net = build_network("egnn", n * d, (n, d), hidden, layers, g)
    with torch.no_grad():
        for layer in net.layers:
            layer.coord2.weight.uniform_(-0.5, 0.5, generator=g)
    return net.to(dtype)


def _inputs(B, dim, seed, dtype=torch.float64, scale=1.5):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, generator=g, dtype=dtype), torch.randn(B, dim, generator=g, dtype=dtype) * scale


def test_score_mlp_is_the_official_mymlp_for_per_sample_and_shared_times():
    for dim, hidden, blocks in ((2, 128, 3), (3, 16, 1), (1, 8, 2)):
        net = build_network("mlp", dim, None, hidden, blocks, torch.Generator().manual_seed(dim))
        net = net.double()
        t, x = _inputs(5, dim, seed=dim)
        out = net(t, x)
        assert out.shape == (5, dim)
        torch.testing.assert_close(out, official_mlp(net, t, x), rtol=1e-10, atol=1e-12)
        shared = net(t[:1], x)  # one time for the batch, as the reverse SDE passes it
        torch.testing.assert_close(shared, official_mlp(net, t[:1].expand(5), x),
                                   rtol=1e-10, atol=1e-12)


def test_score_mlp_constants_are_the_official_ones():
    net = ScoreMLP(2)   # MyMLP defaults: hidden 128, 3 blocks, embeddings of size 128, scale 25
    assert net.input_scale == 25.0 and net.dim == 2
    assert (net.inp.in_features, net.inp.out_features) == (3 * 128, 128)
    assert len(net.blocks) == 3 and all(
        (b.in_features, b.out_features) == (128, 128) for b in net.blocks)
    assert (net.out.in_features, net.out.out_features) == (128, 2)
    want = torch.exp(-math.log(10000.0) / 63 * torch.arange(64, dtype=torch.float64))
    torch.testing.assert_close(net.freqs.double(), want, rtol=1e-6, atol=0)
    assert net.freqs.dtype == torch.float32 and dict(net.named_buffers()).keys() == {"freqs"}
    small = ScoreMLP(3, hidden=8, n_blocks=2, emb_size=16, input_scale=2.0)
    assert small.inp.in_features == 4 * 16 and small.freqs.numel() == 8
    assert small.input_scale == 2.0 and len(small.blocks) == 2


def test_sinusoidal_is_sin_then_cos_of_the_scaled_argument():
    x = torch.tensor([[0.3, -1.2]], dtype=torch.float64)
    f = torch.tensor([1.0, 0.5, 0.01], dtype=torch.float64)
    out = networks.sinusoidal(x, f)
    assert out.shape == (1, 2, 6)
    want = [[math.sin(v * k) for k in (1.0, 0.5, 0.01)] + [math.cos(v * k) for k in (1.0, 0.5, 0.01)]
            for v in (0.3, -1.2)]
    torch.testing.assert_close(out[0], torch.tensor(want, dtype=torch.float64))


@pytest.mark.parametrize("layers", [1, 2, 3, 4])
def test_egnn_is_the_official_edge_list_egnn_on_both_paths(layers):
    net = _sharp_egnn(5, 3, layers, seed=layers)
    t, x = _inputs(4, 15, seed=10 + layers)
    ref = official_egnn(net, t, x)
    out = net(t, x)
    assert out.shape == (4, 15) and ref.abs().max() > 1e-2
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-11)
    with torch.no_grad():   # the sampling path: in-place activations
        torch.testing.assert_close(net(t, x), ref, rtol=1e-9, atol=1e-11)
        torch.testing.assert_close(net(t[:1], x), official_egnn(net, t[:1].expand(4), x),
                                   rtol=1e-9, atol=1e-11)


def test_egnn_layers_update_the_node_features_by_default():
    net = _sharp_egnn(4, 2, 2, seed=1)
    t, x = _inputs(3, 8, seed=2)
    h0 = net.embedding(t.reshape(-1, 1))
    pairs = (net.pi, net.pj, net.pair_of, net.sign.double(), net.incidence.double())
    first = net.layers[0]
    h, y, a0 = first.forward_first(h0, x.view(3, 4, 2), pairs)
    h_on, y_on, _ = first.forward_first(h0, x.view(3, 4, 2), pairs, update_h=True)
    assert torch.equal(h, h_on) and not torch.equal(h, h0.unsqueeze(1).expand(-1, 4, -1))
    h2, _ = net.layers[1](h, y, a0, net.nbr)
    h2_on, _ = net.layers[1](h, y, a0, net.nbr, update_h=True)
    assert torch.equal(h2, h2_on) and not torch.equal(h2, h)


def test_egnn_float32_paths_and_gradients_match_the_float64_transcription():
    """float32 without autograd runs oneDNN's fused linear+SiLU where available; with autograd the
    plain ops. Both give the official function, and the training path's gradients are right."""
    net64 = _sharp_egnn(4, 2, 3, hidden=16, seed=4)
    net32 = _sharp_egnn(4, 2, 3, hidden=16, seed=4, dtype=torch.float32)
    t, x = _inputs(6, 8, seed=5)
    ref = official_egnn(net64, t, x)
    with torch.no_grad():
        torch.testing.assert_close(net32(t.float(), x.float()).double(), ref, rtol=1e-4, atol=1e-5)
    x32 = x.float().requires_grad_(True)
    out = net32(t.float(), x32)
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-5)
    w = torch.randn(6, 8, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    (out * w.float()).sum().backward()
    x64 = x.clone().requires_grad_(True)
    (official_egnn(net64, t, x64) * w).sum().backward()
    torch.testing.assert_close(x32.grad.double(), x64.grad, rtol=1e-3, atol=1e-4)
    for p32, p64 in zip(net32.parameters(), net64.parameters()):
        if p64.grad is not None:
            torch.testing.assert_close(p32.grad.double(), p64.grad, rtol=1e-3, atol=1e-4)
    # the float32 time is cast to the coordinates' dtype
    torch.testing.assert_close(net64(t.float(), x), ref, rtol=1e-6, atol=1e-7)


def test_fused_path_is_taken_only_without_autograd_on_cpu_float32(monkeypatch):
    if not torch.backends.mkldnn.is_available():
        pytest.skip("no oneDNN here")
    assert networks._fused_linear_silu_available() is True
    with monkeypatch.context() as m:   # a build without the oneDNN op: the unfused path
        m.setattr(torch.ops.mkldnn, "_linear_pointwise", lambda *a: 1 / 0)
        assert networks._fused_linear_silu_available() is False
    calls = []
    orig = torch.ops.mkldnn._linear_pointwise
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise",
                        lambda *a: (calls.append(a[3]), orig(*a))[1])
    lin = torch.nn.Linear(3, 4)
    x = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(0))
    want = F.silu(F.linear(x, lin.weight, lin.bias))
    with torch.no_grad():
        torch.testing.assert_close(networks._linear_silu(x, lin), want)
        assert calls == ["swish"]
        networks._linear_silu(x.double(), lin.double())
        lin.float()
        monkeypatch.setattr(networks, "_compiling", lambda: True)
        torch.testing.assert_close(networks._linear_silu(x, lin), want)
    assert calls == ["swish"]   # neither float64 nor a compiling trace used it
    monkeypatch.setattr(networks, "_compiling", lambda: False)
    out = networks._linear_silu(x, lin)
    torch.testing.assert_close(out, want)
    assert calls == ["swish"] and out.requires_grad   # autograd: the plain ops


def test_compiling_asks_torch_compiler_or_dynamo(monkeypatch):
    """torch.compiler when it answers (torch._dynamo, 2 s to import, stands in with the wrong
    answer here), torch._dynamo only on torch < 2.3."""
    for flag in (True, False):
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda flag=flag: flag)
        monkeypatch.setitem(vars(torch), "_dynamo", SimpleNamespace(is_compiling=lambda: not flag))
        assert networks._compiling() is flag
    monkeypatch.setattr(torch, "compiler", object())   # torch < 2.3: no is_compiling there
    for flag in (True, False):   # a stand-in torch._dynamo (importing the real one takes 2 s)
        monkeypatch.setitem(vars(torch), "_dynamo", SimpleNamespace(is_compiling=lambda: flag))
        assert networks._compiling() is flag


def test_neighbour_and_pair_tables_by_brute_force():
    for n in (2, 3, 5):
        nbr = networks.neighbour_index(n)
        assert nbr.tolist() == [[j for j in range(n) if j != i] for i in range(n)]
        pi, pj, pair_of, sign = networks.pair_index(n)
        pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
        assert list(zip(pi.tolist(), pj.tolist())) == pairs
        for i in range(n):
            for k, j in enumerate(nbr[i].tolist()):
                assert pairs[pair_of[i, k]] == (min(i, j), max(i, j))
                assert sign[i, k].item() == (1.0 if i < j else -1.0)
        net = EGNN(n, 2, hidden=4, n_layers=1)
        assert net.incidence.tolist() == [[1.0 if i in p else 0.0 for p in pairs] for i in range(n)]


def test_egnn_constants_are_the_official_ones():
    net = EGNN(4, 2)      # the DW-4 network: hidden 128, 3 layers, coords_range 15
    assert (net.n_particles, net.spatial_dim, net.hidden, len(net.layers)) == (4, 2, 128, 3)
    assert (net.embedding.in_features, net.embedding.out_features) == (1, 128)
    H = 128
    sizes = {"edge1": (2 * H + 2, H), "edge2": (H, H), "att": (H, 1), "node1": (2 * H, H),
             "node2": (H, H), "coord1": (H, H), "coord2": (H, 1)}
    for layer in net.layers:
        assert layer.hidden == H and layer.coords_range == pytest.approx(OFFICIAL_COORDS_RANGE / 3)
        for name, (fi, fo) in sizes.items():
            lin = getattr(layer, name)
            assert (lin.in_features, lin.out_features) == (fi, fo), name
            assert (lin.bias is None) == (name == "coord2"), name
        assert layer.coord2.xavier_gain == OFFICIAL_XAVIER_GAIN
    tables = {"nbr", "pi", "pj", "pair_of", "sign", "incidence"}
    assert {k for k, _ in net.named_buffers()} == tables and not tables & set(net.state_dict())
    built = build_network("egnn", 39, (13, 3), 32, 5, torch.Generator().manual_seed(0))
    assert (built.n_particles, built.spatial_dim, built.hidden, len(built.layers)) == (13, 3, 32, 5)
    assert built.layers[0].coords_range == pytest.approx(3.0)
    mlp = build_network("mlp", 3, None, 24, 4, torch.Generator().manual_seed(0))
    assert isinstance(mlp, ScoreMLP) and len(mlp.blocks) == 4 and mlp.inp.out_features == 24


def test_init_replays_pytorch_defaults_from_the_generator():
    for net in (EGNN(3, 2, hidden=6, n_layers=2), ScoreMLP(2, hidden=5, n_blocks=2, emb_size=8)):
        init_parameters(net, torch.Generator().manual_seed(1))
        g = torch.Generator().manual_seed(1)
        for m in net.modules():
            if not isinstance(m, torch.nn.Linear):
                continue
            fan_in, fan_out = m.in_features, m.out_features
            flagged = getattr(m, "xavier_gain", None) is not None
            b = OFFICIAL_XAVIER_GAIN * math.sqrt(6 / (fan_in + fan_out)) if flagged \
                else 1 / math.sqrt(fan_in)
            w = torch.empty(fan_out, fan_in).uniform_(-b, b, generator=g)
            assert torch.equal(m.weight.detach(), w)
            if m.bias is not None:
                c = 1 / math.sqrt(fan_in)
                assert torch.equal(m.bias.detach(), torch.empty(fan_out).uniform_(-c, c, generator=g))
    assert init_parameters(net, torch.Generator()) is net


def test_build_network_refuses_unknown_kinds_and_egnn_without_particles():
    g = torch.Generator()
    with pytest.raises(ValueError) as err:
        build_network("egnn", 8, None, 8, 1, g)
    assert str(err.value) == ("build_network: network 'egnn' needs a particle target "
                              "(n_particles and spatial_dim); use network 'mlp'")
    with pytest.raises(ValueError) as err:
        build_network("gnn", 8, (4, 2), 8, 1, g)
    assert str(err.value) == "build_network: network must be one of ('mlp', 'egnn'), got 'gnn'"


def _orthogonal(d, g, reflect):
    q, r = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if (torch.det(q) < 0) != reflect:
        q[:, 0] = -q[:, 0]
    return q


@pytest.mark.parametrize("n,d,layers", [(4, 2, 3), (13, 3, 1), (6, 3, 4)])
def test_egnn_float32_sampling_path_is_equivariant_invariant_and_mean_free(n, d, layers):
    net = _sharp_egnn(n, d, layers, hidden=16, seed=n, dtype=torch.float32)
    g = torch.Generator().manual_seed(d)
    x = torch.randn(7, n, d, generator=g, dtype=torch.float64)
    t = torch.rand(1, generator=g).expand(7)
    run = lambda y: net(t, y.reshape(7, -1).float()).double().view(7, n, d)  # noqa: E731
    with torch.no_grad():
        out = run(x)
        assert out.abs().max() > 1e-2
        assert out.mean(1).abs().max() < 1e-5                        # mean-free
        for reflect in (False, True):
            R = _orthogonal(d, g, reflect)
            torch.testing.assert_close(run(x @ R.T), out @ R.T, rtol=1e-4, atol=1e-4)
        perm = torch.randperm(n, generator=g)
        torch.testing.assert_close(run(x[:, perm]), out[:, perm], rtol=1e-4, atol=1e-4)
        shift = torch.randn(7, 1, d, generator=g, dtype=torch.float64) * 2
        torch.testing.assert_close(run(x + shift), out, rtol=1e-4, atol=1e-4)
