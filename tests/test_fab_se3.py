"""FAB with the E(3)-equivariant augmented coupling flow (``flow="se3_aug"``): the joint AIS target
and its gradient, a short fit on DW-4 (mean-free samples, marginal log q, cost accounting), config
errors, and (slow) log Z on DW-4 against the independent value."""
import math
import time

import pytest
import torch

import samplers
import targets
from metrics import density
from runners import check
from samplers.base import Budget
from samplers.fab import FAB, FABConfig
from samplers.se3_flow import joint_log_p_and_grad

TINY = dict(flow="se3_aug", n_layers=1, hidden=8, egnn_blocks=1, egnn_features=8, batch_size=32,
            buffer_min=64, buffer_size=256, n_leapfrog=2, n_updates_per_ais=2, sample_batch=64)

# log Z of DW-4 on the mean-free subspace (Z = ∫ exp(-E) over the 6-D subspace): importance
# sampling with N(0, 2^2) on Helmert coordinates, 4e6 draws, ESS 2244 -> 29.675 (our check;
# N(0, 1.5^2): 29.733 with ESS 393); the independent value is 29.66.
DW4_LOG_Z = 29.66


def _fab(**kw):
    return samplers.get("fab")(FABConfig(**{**TINY, **kw}))


def test_joint_target_gradient_matches_autograd():
    t = targets.get("dw4")
    s = _fab()
    s._bind(t, torch.Generator().manual_seed(0))
    u, _ = s.flow.sample(5, torch.Generator().manual_seed(1))
    u = u.detach()
    lp, grad = joint_log_p_and_grad(s.flow, t, u)
    v = u.double().requires_grad_(True)
    flat = s.flow.double()
    x, a = flat.split(v)
    ref = -t._energy(x.reshape(5, -1)) + flat.flow.aux_log_prob(a, x)
    (g_ref,) = torch.autograd.grad(ref.sum(), v)
    assert torch.allclose(lp.double(), ref.detach(), rtol=1e-5, atol=1e-3)
    assert torch.allclose(grad.double(), g_ref, rtol=1e-4, atol=1e-3)
    assert float(g_ref.abs().max()) > 1.0


def test_short_fit_on_dw4_gives_mean_free_samples_and_a_marginal_log_q():
    t = targets.get("dw4")
    s = _fab(max_iters=4)
    info = s.fit(t, Budget(max_energy_evals=10 ** 6), torch.Generator().manual_seed(0))
    assert info["flow"] == "se3_aug" and info["steps"] == 4
    assert info["energy_evals"] == info["ais_rounds"] * 32 * (1 + 2 * 2)
    x = s.sample(50, torch.Generator().manual_seed(1))
    assert x.shape == (50, 8) and float(t.remove_mean(x).sub(x).abs().max()) < 1e-5
    lq = s.log_prob(x)
    assert lq.shape == (50,) and torch.isfinite(lq).all()
    assert torch.equal(lq, s.log_prob(x))                      # same draws of a at every call
    # translation of the input does not change the estimate (it is computed on the mean-free x)
    shifted = x + torch.tensor([0.5, -1.0]).repeat(4)
    assert torch.allclose(s.log_prob(shifted), lq, atol=1e-4)


def test_se3_aug_needs_a_particle_target_and_valid_settings():
    s = _fab(max_iters=1)
    with pytest.raises(ValueError, match="^flow: 'se3_aug' needs a particle target"):
        s.fit(targets.get("gmm40"), Budget(max_steps=1), torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"flow: got 'bogus'; allowed: realnvp, se3_aug"):
        samplers.get("fab")(FABConfig(flow="bogus"))
    with pytest.raises(ValueError, match="n_aug: got 2"):
        samplers.get("fab")(FABConfig(flow="se3_aug", n_aug=2))
    assert FABConfig().flow == "realnvp"


class _FabSE3(FAB):
    """FAB whose contract configuration is the tiny se3_aug one (runners.check reads it)."""

    @classmethod
    def tiny_config(cls, target):
        return FABConfig(**{**TINY, "max_iters": 4})


@pytest.mark.parametrize("target_name", ["dw4", pytest.param("lj13", marks=pytest.mark.slow)])
def test_se3_aug_passes_the_sampler_contract(target_name):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        lines = check.check_sampler(_FabSE3, target_name)
    finally:
        torch.set_num_threads(before)
    failed = [str(line) for line in lines if not line.ok]
    assert not failed, "\n".join(failed)
    assert len(lines) >= 15


@pytest.mark.slow
def test_fab_se3_aug_log_z_on_dw4():
    """A small equivariant flow (4 coupling pairs, EGNN 2 blocks x 32) trained for 1200 gradient
    steps (159 AIS rounds of 128, 223872 energy evaluations). Measured on the shared 2-core CPU
    (load ~6): 537 s wall (239 s CPU) for fit + evaluation; log_z 29.563 (marginal, 4000 samples,
    ESS 0.0036), NLL 12.30, so |log_z - 29.66| = 0.10. The same run with RealNVP (flow=realnvp,
    10 x 128) in 51 s: log_z 29.38, ESS 0.0020, NLL 13.66. The flow is far from converged (their
    run is 160000 steps): at ESS ~0.004 the standard error of log Z from 4000 samples is ~0.25,
    hence the tolerance of 0.75 (3 standard errors); what the test pins is a consistent estimate
    at this budget, not a good flow."""
    t = targets.get("dw4")
    s = samplers.get("fab")(FABConfig(
        flow="se3_aug", n_layers=4, hidden=32, egnn_blocks=2, egnn_features=32, batch_size=128,
        buffer_size=12800, buffer_min=1280, n_updates_per_ais=8, n_intermediate=2, n_leapfrog=5,
        lr=3e-4, step_size=0.1, max_iters=1200))
    t0 = time.time()
    info = s.fit(t, Budget(max_energy_evals=10 ** 7), torch.Generator().manual_seed(0))
    assert info["steps"] == 1200
    x = s.sample(4000, torch.Generator().manual_seed(1))
    ref = t.reference("test", n=1000, generator=torch.Generator().manual_seed(0))
    out = density.evaluate(t, s.log_prob, x, ref)
    print(info["steps"], out, time.time() - t0)
    assert abs(out["log_z"] - DW4_LOG_Z) < 0.75, out
    assert out["ess"] > 0.001, out
