"""The equivariant PIS/DDS control (samplers.nets.EquivariantControlNet): u(t, Rz P + c, R s P)
= R u(t, z, s) P for rotations and reflections R, particle permutations P and translations c,
to float tolerance; zero at initialisation; used by PIS and DDS with network=egnn."""
import math

import pytest
import torch

import samplers
import targets
from samplers import Budget
from samplers.nets import build_control_net

N, D = 4, 2


@pytest.fixture(scope="module")
def net():
    g = torch.Generator().manual_seed(0)
    net = build_control_net("egnn", N * D, 16, 2, (N, D), g).double()
    with torch.no_grad():   # move away from the zero initialisation so every term matters
        net.gate.fill_(0.7)
        last = net.time_grad[-1]
        last.weight.normal_(generator=g)
        last.bias.normal_(generator=g)
    return net


def _config(g, n=5):
    x = torch.randn(n, N, D, generator=g, dtype=torch.float64) * 1.5
    return x - x.mean(1, keepdim=True)


def _orthogonal(g, reflect):
    q, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))
    if (torch.det(q) < 0) != reflect:
        q[:, 0] = -q[:, 0]
    return q


@pytest.mark.parametrize("reflect", [False, True])
def test_rotation_and_reflection_equivariance(net, reflect):
    g = torch.Generator().manual_seed(1)
    z, s = _config(g), _config(g)
    R = _orthogonal(g, reflect)
    t = torch.full((5,), 0.3, dtype=torch.float64)
    u = net(t, z.reshape(5, -1), s.reshape(5, -1)).reshape(5, N, D)
    u_rot = net(t, (z @ R.T).reshape(5, -1), (s @ R.T).reshape(5, -1)).reshape(5, N, D)
    assert u.abs().max() > 1e-3
    assert torch.allclose(u_rot, u @ R.T, atol=1e-10)


def test_permutation_equivariance_and_translation_invariance(net):
    g = torch.Generator().manual_seed(2)
    z, s = _config(g), _config(g)
    perm = torch.tensor([2, 0, 3, 1])
    t = torch.full((5,), 0.6, dtype=torch.float64)
    u = net(t, z.reshape(5, -1), s.reshape(5, -1)).reshape(5, N, D)
    u_perm = net(t, z[:, perm].reshape(5, -1), s[:, perm].reshape(5, -1)).reshape(5, N, D)
    assert torch.allclose(u_perm, u[:, perm], atol=1e-10)
    shift = torch.tensor([3.0, -1.0], dtype=torch.float64)
    u_shift = net(t, (z + shift).reshape(5, -1), s.reshape(5, -1)).reshape(5, N, D)
    assert torch.allclose(u_shift, u, atol=1e-10)
    assert torch.allclose(u.sum(1), torch.zeros(5, D, dtype=torch.float64), atol=1e-10)


def test_untrained_equivariant_control_is_zero():
    g = torch.Generator().manual_seed(0)
    net = build_control_net("egnn", N * D, 16, 2, (N, D), g)
    z = torch.randn(3, N * D, generator=g)
    assert torch.equal(net(0.5, z, torch.randn(3, N * D, generator=g)), torch.zeros(3, N * D))


@pytest.mark.parametrize("name", ["pis", "dds"])
def test_pis_dds_train_with_the_equivariant_control_on_dw4(name):
    """A few steps on DW-4: finite mean-free samples, the gate moved off zero, the budget kept."""
    t = targets.get("dw4")
    cls = samplers.get(name)
    s = cls(cls.Config(network="egnn", hidden=16, n_layers=2, n_steps=10, batch_size=16,
                       max_iters=3, sample_batch=64))
    info = s.fit(t, Budget(max_energy_evals=10**6), torch.Generator().manual_seed(0))
    assert info["steps"] == 3 and info["energy_evals"] == 3 * 16 * 11
    assert s.net.gate.item() != 0.0
    x = s.sample(64, torch.Generator().manual_seed(1))
    assert torch.isfinite(x).all()
    assert x.reshape(64, 4, 2).mean(1).abs().max() < 1e-5


def test_egnn_control_on_a_non_particle_target_names_the_field():
    cls = samplers.get("pis")
    s = cls(cls.Config(network="egnn", max_iters=1))
    with pytest.raises(ValueError, match="network"):
        s.fit(targets.get("gmm40"), Budget(max_steps=1), torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="network"):
        cls.Config(network="transformer").validate()
