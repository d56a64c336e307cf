"""FAB's fit at its edges, against closed forms and hand counts: the untrained flow is its base
N(0, sigma² I) (on the Helmert coordinates of particle targets), so its samples are sigma·ε·Bᵀ of
the generator's normal draws (in ``sample_batch`` chunks) and its log_prob the Gaussian density
written out here; the conditioner layers start as U(-1/√fan_in, 1/√fan_in) with the last layer of
each zero; the budget caps stop where counted by hand (a gradient step is free, an AIS round
costs batch · (1 + K · n_leapfrog)), with the warnings' texts field by field."""
import math

import pytest
import torch
from torch import nn

import targets
from samplers.base import Budget
from samplers.fab import FAB, FABConfig
from samplers.realnvp import helmert_basis

TINY = dict(n_layers=2, hidden=8, batch_size=16, buffer_min=48, buffer_size=64, n_leapfrog=2,
            n_updates_per_ais=3)


def _untrained(target, **kw):
    s = FAB(FABConfig(**{**TINY, "max_iters": 0, **kw}))
    info = s.fit(target, Budget(max_energy_evals=10 ** 6), torch.Generator().manual_seed(0))
    return s, info


@pytest.mark.parametrize("name, sigma", [("gmm40", 40.0), ("dw4", 2.0), ("lj13", 1.0)])
def test_the_untrained_flow_is_its_base_gaussian(name, sigma):
    t = targets.get(name)
    s, info = _untrained(t, sample_batch=3)
    assert info["steps"] == 0 and info["ais_rounds"] == 0 and info["sigma"] == sigma
    assert info["warnings"] == ["max_iters=0: no training step ran; the samples are from the "
                                "untrained flow"]
    particles = t.n_particles is not None
    basis = helmert_basis(t.n_particles, t.spatial_dim).double() if particles else None
    d = basis.shape[1] if particles else t.dim
    x = s.sample(7, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    eps = torch.cat([torch.randn(k, d, generator=g) for k in (3, 3, 1)]).double()
    want = sigma * eps if basis is None else sigma * eps @ basis.T
    assert x.dtype == torch.float32 and torch.allclose(x.double(), want, rtol=1e-5, atol=1e-5)
    y = (want if basis is None else want @ basis) + 0.3      # off the samples
    y_x = y if basis is None else y @ basis.T
    log_q = -0.5 * (y / sigma).pow(2).sum(1) - d * math.log(sigma) - 0.5 * d * math.log(2 * math.pi)
    assert torch.allclose(s.log_prob(y_x.float()).double(), log_q, rtol=1e-5, atol=1e-3)
    assert s.network_evals == 7 + 7


def test_conditioners_start_uniform_in_one_over_root_fan_in_with_a_zero_last_layer():
    s, _ = _untrained(targets.get("dw4"), hidden=64)
    zero, uniform = 0, 0
    for m in s.flow.modules():
        if not isinstance(m, nn.Linear):
            continue
        if getattr(m, "zero_init", False):
            zero += 1
            assert not m.weight.any() and not m.bias.any()
            continue
        uniform += 1
        b = 1 / math.sqrt(m.in_features)
        for p in (m.weight.detach(), m.bias.detach()):
            assert float(p.abs().max()) <= b and float(p.abs().max()) > 0.8 * b
            assert abs(float(p.mean())) < 0.2 * b                  # centred, not one-sided
    assert (zero, uniform) == (2, 4)
    s2, _ = _untrained(targets.get("dw4"), hidden=64)
    torch.manual_seed(123)   # the global RNG plays no part
    for p, q in zip(s.flow.parameters(), s2.flow.parameters()):
        assert torch.equal(p, q)


def test_an_energy_cap_below_the_first_step_says_what_it_would_need():
    # one round costs 16 (1 + 2·2) = 80; buffer_min 48 needs 3 rounds = 240; the cap allows 2
    s = FAB(FABConfig(**TINY))
    info = s.fit(targets.get("gmm40"), Budget(max_energy_evals=239),
                 torch.Generator().manual_seed(0))
    assert info["steps"] == 0 and info["ais_rounds"] == 2 and info["energy_evals"] == 160
    assert info["budget_binding"] == "energy_evals" and info["buffer"] == 32
    w, = info["warnings"]
    assert w.startswith(
        "budget below one training step: the samples are from the untrained flow (the first "
        "gradient step needs buffer_min=48 buffered points, ~3 AIS rounds of 80 evaluations; "
        "2 ran) (one training step costs ~240 energy evaluations; budget max_energy_evals=239, "
        "160 evaluations and "), w


def test_rounds_needed_rounds_up():
    s = FAB(FABConfig(**{**TINY, "buffer_min": 49, "buffer_size": 64}))
    info = s.fit(targets.get("gmm40"), Budget(max_energy_evals=100),
                 torch.Generator().manual_seed(0))
    assert "~4 AIS rounds of 80 evaluations; 1 ran" in info["warnings"][0]
    assert "one training step costs ~320 energy evaluations" in info["warnings"][0]


@pytest.mark.parametrize("max_steps, rounds", [(4, 4), (3, 3), (1, 3)])
def test_a_step_cap_stops_inside_a_round(max_steps, rounds):
    """Training from round 3 (48 points), 3 steps a round: max_steps 4 ends in round 4."""
    s = FAB(FABConfig(**TINY))
    info = s.fit(targets.get("gmm40"), Budget(max_steps=max_steps),
                 torch.Generator().manual_seed(0))
    assert info["steps"] == max_steps and info["ais_rounds"] == rounds
    assert info["budget_binding"] == "steps" and info["warnings"] == []
    assert info["energy_evals"] == rounds * 80


def test_max_iters_stops_without_binding_a_cap():
    s = FAB(FABConfig(**{**TINY, "max_iters": 5}))
    info = s.fit(targets.get("gmm40"), Budget(max_energy_evals=10 ** 6),
                 torch.Generator().manual_seed(0))
    assert info["steps"] == 5 and info["ais_rounds"] == 4 and info["budget_binding"] == "none"
    assert info["transition"] == "hmc" and info["flow"] == "realnvp" and info["seconds"] > 0
    assert len(info["hmc_step_sizes"]) == 2 and len(info["metropolis_steps"]) == 2


def test_a_time_cap_of_zero_runs_nothing():
    s = FAB(FABConfig(**TINY))
    info = s.fit(targets.get("gmm40"), Budget(max_seconds=1e-9), torch.Generator().manual_seed(0))
    assert info["steps"] == 0 and info["ais_rounds"] == 0 and info["budget_binding"] == "seconds"
    assert info["warnings"][0].startswith("budget below one training step:")
    assert "budget max_seconds=1e-09, 0 evaluations" in info["warnings"][0]


@pytest.mark.parametrize("target, sigma", [("gmm40", 40.0), ("dw4", 2.0), ("lj13", 1.0),
                                           ("lj55", 1.0), ("unknown", 1.0)])
def test_the_contract_config_keeps_the_per_target_scale(target, sigma):
    """The tiny configuration shrinks the network and buffer, not the base scale: sigma is the
    one the default config resolves to (samplers.pis.SIGMA_DEFAULTS, 1.0 for other targets),
    for a target object or its name."""
    cfg = FAB.tiny_config(target)
    assert cfg.sigma == sigma
    if target != "unknown":
        assert FAB.tiny_config(targets.get(target)).sigma == sigma
    cfg.validate()


def test_defaults_and_the_config_error_prefix():
    assert FAB().config == FABConfig()
    with pytest.raises(ValueError, match=r"^fab\.lr: "):
        FAB(FABConfig(lr=-1.0))


def test_an_unknown_target_gets_sigma_one():
    from test_fab_ais_exact import WallTarget
    s = FAB(FABConfig(**{**TINY, "max_iters": 0}))
    info = s.fit(WallTarget(), Budget(max_steps=1), torch.Generator().manual_seed(0))
    assert info["sigma"] == 1.0


def test_the_se3_flow_is_built_from_the_config():
    """Compared with the same flow built directly from the config's values (samplers/se3_flow.py):
    the parameter shapes (layers, widths, EGNN blocks and features, n_aug) and the scales."""
    from samplers.se3_flow import AugmentedCouplingFlow
    cfg = dict(flow="se3_aug", n_layers=2, hidden=12, egnn_blocks=2, egnn_features=6, n_aug=3,
               aug_scale=0.25, sigma=1.7, max_iters=0)
    s = FAB(FABConfig(**{**TINY, **cfg}))
    s.fit(targets.get("dw4"), Budget(max_steps=1), torch.Generator().manual_seed(0))
    ref = AugmentedCouplingFlow(4, 2, torch.Generator().manual_seed(0), n_aug=3, n_layers=2,
                                hidden=12, n_blocks=2, n_features=6, sigma=1.7, aug_scale=0.25)
    got = {k: v.shape for k, v in s.flow.flow.state_dict().items()}
    assert got == {k: v.shape for k, v in ref.state_dict().items()}
    assert (s.flow.flow.sigma, s.flow.flow.aug_scale, s.flow.flow.n_aug) == (1.7, 0.25, 3)
    assert s.flow.dim == 6 + 3 * 4 * 2


def test_the_se3_log_q_draws_come_from_the_fit_generator():
    tiny = dict(flow="se3_aug", n_layers=1, hidden=8, egnn_blocks=1, egnn_features=8,
                n_aug_samples=3, max_iters=0)
    x = torch.randn(5, 8)
    out = []
    for global_seed in (0, 1):
        torch.manual_seed(global_seed)
        s = FAB(FABConfig(**{**TINY, **tiny}))
        s.fit(targets.get("dw4"), Budget(max_steps=1), torch.Generator().manual_seed(0))
        out.append(s.log_prob(x))
    assert torch.equal(out[0], out[1])


def test_a_non_finite_training_loss_is_reported_as_diverged(monkeypatch):
    from samplers import fab as fab_module
    from samplers.base import Diverged
    monkeypatch.setattr(fab_module, "buffer_loss",
                        lambda log_q, *a, **k: log_q.sum() * float("nan"))
    s = FAB(FABConfig(**TINY))
    with pytest.raises(Diverged, match=r"^fab: training loss: 1 non-finite values$"):
        s.fit(targets.get("gmm40"), Budget(max_steps=2), torch.Generator().manual_seed(0))
