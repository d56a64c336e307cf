"""Tests that catch bugs once planted in a copy and missed by the default run (issue 15).

Each test names the bug it catches; each was checked by planting that bug alone in the source,
watching the test fail, and removing it:

* ``runners/cell.py`` keeps only the fit's ``energy_evals`` (drops what ``sample()`` spent)
  -> ``test_row_spending_is_fit_plus_sampling_through_run_cell_and_the_grid``;
* ``samplers/idem.py`` noises the training input with h*eps instead of sqrt(h)*eps
  -> ``test_idem_training_input_is_noised_with_sqrt_h``;
* ``samplers/dem/space.py`` clips DEM scores over the whole vector instead of per particle
  -> ``test_dem_score_clipping_is_per_particle_on_particle_targets``;
* ``metrics/wasserstein.py`` lets ``x_w2_aligned`` allow reflections by default
  -> ``test_x_w2_aligned_default_tells_a_configuration_from_its_mirror_image``;
* ``samplers/dem/sde.py`` shifts the reverse-SDE time grid by one step
  -> ``test_reverse_sde_time_grid_and_moments_match_euler_maruyama``.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch

import metrics
import samplers
import targets
from helpers_grid import load_rows, run_grid
from runners import config as cfgmod
from runners.cell import CellSpec, run_cell
from samplers import Budget
from samplers.dem import GeometricSchedule, Space
from samplers.dem.estimator import mc_score
from samplers.dem.sde import reverse_sde
from samplers.idem import IDEM


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------ budget accounting end to end
@dataclass
class SpendConfig:
    batch: int = 16
    sample_rounds: int = 3  # energy-only evaluations of the whole batch while sampling


class TSpend:
    """Test sampler whose ``sample(n)`` spends ``sample_rounds * n`` energy evaluations plus
    ``n`` energy+gradient evaluations (as an MCMC refinement of its output would)."""

    name = "t_spend"
    pretty_name = "TestSpend"
    has_log_prob = False
    Config = SpendConfig

    def __init__(self, config: SpendConfig | None = None):
        self.config = config or SpendConfig()

    def fit(self, target, budget: Budget, generator: torch.Generator) -> dict:
        self.target, steps, c = target, 0, self.config
        clock = budget.start(target)
        while not clock.exhausted(steps) and clock.allows(c.batch):
            target.energy_and_grad(torch.randn(c.batch, target.dim, generator=generator))
            steps += 1
        return {"steps": steps}

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        x = torch.randn(n, self.target.dim, generator=generator)
        for _ in range(self.config.sample_rounds):
            self.target.energy(x)
        _, g = self.target.energy_and_grad(x)
        return x - 1e-3 * g


@pytest.fixture
def spend_sampler(monkeypatch):
    monkeypatch.delenv("BOLTZBENCH_PLUGINS", raising=False)
    monkeypatch.setitem(samplers._REGISTRY, TSpend.name, TSpend)


def expected_spending(steps: int, batch: int, rounds: int, n_eval: int) -> dict:
    fit = steps * batch
    return {"fit_energy_evals": fit, "fit_grad_evals": fit,
            "energy_evals": fit + rounds * n_eval + n_eval, "grad_evals": fit + n_eval}


def test_row_spending_is_fit_plus_sampling_through_run_cell_and_the_grid(tmp_path, spend_sampler,
                                                                        capsys):
    """Catches cell.py keeping only the fit's count: sampling here costs 4 * n_eval energies."""
    steps, batch, rounds, n_eval = 3, 16, 3, 64
    want = expected_spending(steps, batch, rounds, n_eval)
    gmm = targets.get("gmm40")
    spec = CellSpec(target="gmm40", target_fingerprint=gmm.fingerprint, sampler="t_spend", seed=0,
                    base_seed=0, sampler_config=cfgmod.resolve_sampler_config(
                        "t_spend", {"batch": batch, "sample_rounds": rounds}),
                    budget={"max_steps": steps}, n_eval=n_eval, metric_options={},
                    out=str(tmp_path / "cell"))
    row = run_cell(spec)
    assert row["status"] == "ok", row["reason"]
    assert {k: row[k] for k in want} == want

    prof = tmp_path / "p.yaml"
    prof.write_text(f"seeds: 2\nn_eval: {n_eval}\nbudget:\n  gmm40: {{max_steps: {steps}}}\n"
                    f"samplers:\n  t_spend:\n    all: {{batch: {batch}, sample_rounds: {rounds}}}\n")
    out = tmp_path / "grid"
    code, err = run_grid([f"out={out}", "launcher=debug", f"profile={prof}", "targets=gmm40",
                          "samplers=t_spend", "figures=false"], capsys)
    assert code == 0, err
    got = load_rows(out)
    assert len(got) == 2
    for r in got.values():
        assert r["status"] == "ok" and {k: r[k] for k in want} == want


# ------------------------------------------------------------------ iDEM training noise
def test_idem_training_input_is_noised_with_sqrt_h(monkeypatch):
    """x_t = x_0 + sqrt(h(t)) eps: with x_0 = 0 forced, x_t / sqrt(h) must be N(0, I). Catches
    h * eps (then x_t / sqrt(h) = sqrt(h) eps, whose second moment is E[h] ~ 0.07 on GMM-40)."""
    gmm = targets.get("gmm40")
    cfg = dataclasses.replace(IDEM.tiny_config(gmm), batch_size=4096, n_mc=1)
    s = IDEM(cfg)
    g = torch.Generator().manual_seed(0)
    s.setup(gmm, g)
    seen = {}

    def spy(xt, h, *args, **kwargs):
        seen["xt"], seen["h"] = xt.clone(), h.clone()
        return torch.zeros_like(xt)

    import samplers.idem as idem_module
    monkeypatch.setattr(idem_module, "mc_score", spy)
    monkeypatch.setattr(s.buffer, "sample", lambda n, gen: torch.zeros(n, gmm.dim))
    s.train_step(g)
    z = seen["xt"] / seen["h"].sqrt()[:, None]
    # second moment of 8192 N(0, 1) draws: s.e. sqrt(2 / 8192) = 0.016
    assert float(z.pow(2).mean()) == pytest.approx(1.0, abs=0.08)
    assert float(z.mean()) == pytest.approx(0.0, abs=0.05)
    assert float(seen["h"].mean()) < 0.5  # the two noise laws are far apart at these h


# ------------------------------------------------------------------ DEM clipping groups
def test_dem_score_clipping_is_per_particle_on_particle_targets():
    """The official clipper works per particle on particle targets: a particle whose score is
    huge is clipped alone, the others keep theirs. Catches clipping the whole vector."""
    dw4 = targets.get("dw4")
    sp = Space(dw4)
    assert sp.clip_group == dw4.spatial_dim
    assert Space(targets.get("gmm40"), 50.0).clip_group is None
    # the regression target of iDEM on DW-4 through the group the sampler uses
    x = torch.tensor([[0.0, 0.0, 3.0, 0.0, 0.0, 3.0, 3.0, 3.0]]).repeat(2, 1)

    def energy_and_grad(y):  # particle 0 feels a huge force, the others small ones
        grad = torch.full_like(y, 0.5)
        grad[:, :2] = 1e3
        return torch.zeros(y.shape[0]), grad

    s = mc_score(x, torch.zeros(2), energy_and_grad, 4, torch.Generator().manual_seed(0),
                 clip=20.0, group=sp.clip_group).view(2, 4, 2)
    per_particle = s.norm(dim=-1)
    assert torch.allclose(per_particle[:, 0], torch.full((2,), 20.0), rtol=1e-4)
    assert torch.allclose(s[:, 1:], torch.full_like(s[:, 1:], -0.5))  # untouched


# ------------------------------------------------------------------ aligned W2 reflections
def test_x_w2_aligned_default_tells_a_configuration_from_its_mirror_image():
    """Without reflections (the default, our documented choice) a chiral DW-4 configuration and
    its mirror image are at a positive distance; with reflections they coincide. Catches the
    default flipped to reflections=True (it lowered DW-4's value from 0.4585 to 0.4235)."""
    dw4 = targets.get("dw4")
    # an irregular quadrilateral: no rotation and relabelling maps it onto its mirror image
    x = torch.tensor([[0.0, 0.0, 2.0, 0.0, 2.7, 1.1, 0.4, 1.9]], dtype=torch.float64)
    x = dw4.remove_mean(x)
    mirror = (x.view(1, 4, 2) * torch.tensor([-1.0, 1.0], dtype=torch.float64)).view(1, 8)
    f = metrics.get("x_w2_aligned")
    assert f(x, mirror, dw4) > 0.3
    assert f(x, mirror, dw4, reflections=True) == pytest.approx(0.0, abs=1e-6)
    # a rotated, relabelled copy is at distance 0 either way
    c, s = math.cos(0.7), math.sin(0.7)
    rot = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    copy = (x.view(4, 2) @ rot.T)[[2, 0, 3, 1]].reshape(1, 8)
    assert f(x, copy, dw4) == pytest.approx(0.0, abs=1e-6)


# ------------------------------------------------------------------ reverse-SDE time grid
def test_reverse_sde_time_grid_and_moments_match_euler_maruyama():
    """The documented grid t_i = 1 - i/n (i = 0..n-1), and, for a Gaussian with its exact noised
    score, the final variance of Euler-Maruyama on that grid computed by the variance recursion
    (independently, in float64). With n = 4 steps, a grid shifted by one step (t_i = 1 -
    (i+1)/n) changes that variance from 1.121 to 0.576 (the coarse grid is far from the target's
    0.5 either way; the test pins the scheme, not the limit); the sample variance of 40,000
    draws has s.e. 1.12 * sqrt(2 / 40000) = 0.008."""
    sched, n_steps, var, scale = GeometricSchedule(0.01, 1.0), 4, 0.5, 1.0
    times = []

    def score(t, y):
        times.append(float(t))
        return -y / (var + sched.h(t))

    g = torch.Generator().manual_seed(0)
    x = torch.randn(40_000, 1, generator=g, dtype=torch.float64) * sched.prior_std
    y = reverse_sde(score, x, sched, n_steps, scale, g)
    assert times == pytest.approx([1.0 - i / n_steps for i in range(n_steps)], abs=1e-12)

    dt, v = 1.0 / n_steps, sched.prior_std ** 2
    for i in range(n_steps):
        t = 1.0 - i * dt
        gt = float(sched.g(t))
        a = 1.0 - gt * gt * dt / (var + float(sched.h(t)))
        v = a * a * v + (scale * gt) ** 2 * dt
    assert v == pytest.approx(1.121, abs=1e-3)
    assert float(y.var()) == pytest.approx(v, abs=0.04)
    assert abs(float(y.mean())) < 0.03
