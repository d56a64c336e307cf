"""Tests for bugs that once slipped through the default run (issue 15): each was planted alone in
a copy of the code, made this file fail, and was removed.

* runners/cell.py keeping only the fit's energy count in ``energy_evals`` (sampling dropped)
  -> test_row_charges_fit_and_sampling_spending
* samplers/idem.py noising the training input with h*eps instead of sqrt(h)*eps
  -> test_idem_training_input_has_the_noise_variance_of_the_schedule
* samplers/dem/space.py clipping the estimated score over the whole vector, not per particle
  -> test_dem_clips_the_regression_target_per_particle
* metrics/wasserstein.py allowing reflections in x_w2_aligned by default
  -> test_aligned_w2_default_forbids_reflections
* samplers/dem/sde.py with the reverse-SDE time grid shifted by one step
  -> test_reverse_sde_visits_the_official_time_grid
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch

import metrics
import samplers
import targets
from runners import config as cfgmod
from runners.cell import CellSpec, run_cell
from samplers.dem.schedule import GeometricSchedule
from samplers.dem.sde import reverse_sde


# ----------------------------------------------------------------------------- budget accounting
@dataclass
class SpendConfig:
    fit_evals: int = 96
    sample_evals_per_point: int = 3


class SpendingSampler:
    """Spends a known number of energy evaluations in fit AND in sample (as LJ-55 iDEM's
    negative-time steps or an MCMC sampler drawing fresh chains do)."""

    name = "t_spend"
    pretty_name = "TestSpend"
    has_log_prob = False
    Config = SpendConfig

    def __init__(self, config: SpendConfig | None = None):
        self.config = config or SpendConfig()

    def fit(self, target, budget, generator):
        self.target = target
        target.energy(torch.randn(self.config.fit_evals, target.dim, generator=generator))
        return {"budget_binding": "none"}

    def sample(self, n, generator):
        x = torch.randn(n, self.target.dim, generator=generator)
        for _ in range(self.config.sample_evals_per_point):
            self.target.energy(x)
        return x


@pytest.fixture
def spending_sampler():
    samplers.register(SpendingSampler)
    yield SpendingSampler
    samplers._REGISTRY.pop("t_spend", None)


def test_row_charges_fit_and_sampling_spending(tmp_path, spending_sampler):
    t = targets.get("gmm40")
    spec = CellSpec(target="gmm40", target_fingerprint=t.fingerprint, sampler="t_spend", seed=0,
                    base_seed=0, sampler_config=cfgmod.resolve_sampler_config("t_spend", {}),
                    budget={"max_energy_evals": 1000}, n_eval=50, metric_options={},
                    out=str(tmp_path))
    row = run_cell(spec)
    assert row["status"] == "ok", row["reason"]
    assert row["fit_energy_evals"] == 96
    assert row["energy_evals"] == 96 + 3 * 50  # fit plus sampling, metrics excluded


# ----------------------------------------------------------------------------- iDEM internals
def _idem(target_name: str, batch_size: int = 4096, **overrides):
    cfg = samplers.get("idem").Config(n_mc=4, batch_size=batch_size, n_inner=1, n_generate=16,
                                      n_integration_steps=2, hidden=8, n_layers=1,
                                      buffer_min=16, **overrides)
    sampler = samplers.get("idem")(cfg)
    sampler.setup(targets.get(target_name), torch.Generator().manual_seed(0))
    return sampler


def test_idem_training_input_has_the_noise_variance_of_the_schedule(monkeypatch):
    """x_t = x_0 + sqrt(h(t)) eps: (x_t - x_0)^2 / h(t) has mean 1 (a chi-square of one degree per
    coordinate). With h*eps the mean would be E[h] over t ~ U(0, 1), far from 1 on GMM-40."""
    sampler = _idem("gmm40")
    x0 = torch.zeros(4096, 2)
    monkeypatch.setattr(sampler.buffer, "sample", lambda n, g: x0[:n])
    seen = {}

    def fake_score(xt, h, *args, **kwargs):
        seen["xt"], seen["h"] = xt.clone(), h.clone()
        return torch.zeros_like(xt)

    monkeypatch.setattr("samplers.idem.mc_score", fake_score)
    sampler.train_step(torch.Generator().manual_seed(1))
    ratio = ((seen["xt"] - x0) ** 2 / seen["h"][:, None]).mean()
    n = seen["xt"].numel()
    assert abs(float(ratio) - 1.0) < 5 * math.sqrt(2.0 / n)  # 5 sigma of a chi-square mean


def test_dem_clips_the_regression_target_per_particle(monkeypatch):
    """On particle targets the official clipper bounds each particle's score norm by score_clip;
    clipping the whole vector instead would make the total norm <= score_clip."""
    sampler = _idem("lj13", batch_size=128, score_clip=5.0)
    seen = {}

    def capture(pred, target, weight):
        seen["target"] = target.detach().clone()
        return (pred - target).pow(2).sum(-1).mean()

    monkeypatch.setattr("samplers.idem.dem_loss", capture)
    sampler.train_step(torch.Generator().manual_seed(2))
    s = seen["target"]
    per_particle = s.view(s.shape[0], 13, 3).norm(dim=-1)
    assert float(per_particle.max()) <= 5.0 * (1 + 1e-5)
    assert float(s.norm(dim=-1).max()) > 5.0 * 1.5  # many particles at the cap: not whole-vector


# ----------------------------------------------------------------------------- metrics
@pytest.mark.reference_data
def test_aligned_w2_default_forbids_reflections():
    """On DW-4 (2-D) a mirror image is not a rotation: the default must not undo it."""
    t = targets.get("dw4")
    x = t.reference("val", n=64, generator=torch.Generator().manual_seed(3))
    mirrored = x.view(64, 4, 2) * torch.tensor([1.0, -1.0])
    mirrored = mirrored.reshape(64, 8)
    f = metrics.get("x_w2_aligned")
    default = f(mirrored, x, t, max_n=64)
    proper = f(mirrored, x, t, max_n=64, reflections=False)
    improper = f(mirrored, x, t, max_n=64, reflections=True)
    assert default == pytest.approx(proper, rel=1e-9)
    assert improper == pytest.approx(0.0, abs=1e-4)  # the mirror is undone only with reflections
    assert default > 0.1


@pytest.mark.reference_data
def test_energy_w2_matches_sorted_energies():
    """Independent of the implementation: 1-D W2 between equal-size sets is the RMS difference of
    their sorted values; energy_w2_sq is its square (not W2 itself, the confusion between repos)."""
    t = targets.get("lj13")
    x = t.reference("val", n=300, generator=torch.Generator().manual_seed(4))
    y = t.reference("test", n=300, generator=torch.Generator().manual_seed(5))
    ex = np.sort(t.energy(x).double().numpy())
    ey = np.sort(t.energy(y).double().numpy())
    expected_sq = float(np.mean((ex - ey) ** 2))
    assert metrics.get("energy_w2_sq")(x, y, t) == pytest.approx(expected_sq, rel=1e-6)
    assert metrics.get("energy_w2")(x, y, t) == pytest.approx(math.sqrt(expected_sq), rel=1e-6)


def test_log_prob_is_minus_a_hand_computed_energy():
    """GMM-40 log-density at a mixture mean, computed here from the closed form of the mixture
    (40 equal-weight isotropic Gaussians of std softplus(1)), not from the target's own code."""
    t = targets.get("gmm40")
    means = t.means.double()
    x = means[:3].clone() + 0.5
    var = t.std ** 2  # softplus(log_var_scaling = 1) as the official component scale
    d2 = ((x[:, None, :] - means[None]) ** 2).sum(-1)
    logp = torch.logsumexp(-0.5 * d2 / var - math.log(2 * math.pi * var), dim=1) - math.log(40)
    assert torch.allclose(t.log_prob(x.float()).double(), logp, atol=1e-4)


# ----------------------------------------------------------------------------- reverse SDE
def test_reverse_sde_visits_the_official_time_grid():
    """Euler-Maruyama from t = 1 down to dt: t_i = 1 - i/n, i = 0..n-1 (official
    sde_integration.py); a grid shifted by one step would start at 1 - 1/n or end at 0."""
    times = []

    def score(t, x):
        times.append(float(t))
        return torch.zeros_like(x)

    n = 8
    reverse_sde(score, torch.zeros(4, 2), GeometricSchedule(0.01, 1.0), n, 1.0,
                torch.Generator().manual_seed(0))
    assert times == pytest.approx([1.0 - i / n for i in range(n)], abs=1e-7)
