"""iDEM / pDEM samplers: paper constants, training on a Gaussian whose noised score is exact,
determinism, budgets, LJ-55 negative time, GMM-40 coordinates and start, checkpoints."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import samplers
import targets
from samplers import Budget, Diverged
from samplers.dem import DEMConfig, GeometricSchedule, Space, resolve
from samplers.idem import IDEM, PDEM
from targets.base import Target


@pytest.fixture(autouse=True)
def _one_thread():
    """Small tensors: one thread avoids OpenMP contention on the shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class Gauss2D(Target):
    """N(mean, std^2 I) in 2-D with an analytic gradient; ``nan=True`` returns NaN energies."""

    name = "t_gauss2d"
    pretty_name = "Gauss-2D"

    def __init__(self, mean=(2.0, -1.0), std=1.0, nan=False):
        super().__init__(2, {"mean": list(mean), "std": std, "nan": nan})
        self.mean, self.std, self.nan = torch.tensor(mean), std, nan

    def _energy(self, x):
        e = (x - self.mean.to(x)).pow(2).sum(-1) / (2 * self.std ** 2)
        return e * math.nan if self.nan else e

    def _energy_and_grad(self, x):
        return self._energy(x), (x - self.mean.to(x)) / self.std ** 2


def test_registered_with_paper_constants():
    assert samplers.get("idem") is IDEM and samplers.get("pdem") is PDEM
    assert IDEM.has_log_prob is False and IDEM.use_buffer and not PDEM.use_buffer
    r = {n: resolve(DEMConfig(), targets.get(n), "t") for n in ("gmm40", "dw4", "lj13", "lj55")}
    g, d, l13, l55 = r["gmm40"], r["dw4"], r["lj13"], r["lj55"]
    assert (g.sigma_min, g.sigma_max, g.n_mc, g.batch_size, g.lr, g.score_clip) == (1e-5, 1.0, 500, 512, 5e-4, 70.0)
    assert (g.coord_scale, g.lambda_weighting, g.network, g.gmm_init) == (50.0, "h", "mlp", "estimator")
    assert (d.sigma_min, d.sigma_max, d.n_mc, d.n_layers, d.diffusion_scale) == (1e-5, 3.0, 1000, 3, 1.0)
    assert (l13.sigma_min, l13.sigma_max, l13.n_mc, l13.n_layers, l13.diffusion_scale) == (0.01, 2.0, 1000, 5, 0.9)
    assert (l55.sigma_min, l55.sigma_max, l55.n_mc, l55.batch_size, l55.n_generate) == (0.5, 4.0, 100, 128, 128)
    assert (l55.diffusion_scale, l55.n_negative_steps) == (0.5, 10)
    for c in (d, l13, l55):
        assert (c.score_clip, c.lambda_weighting, c.network, c.hidden, c.lr) == (20.0, "none", "egnn", 128, 1e-3)
    for c in r.values():
        assert (c.n_inner, c.n_integration_steps, c.buffer_size, c.buffer_min, c.n_init, c.grad_clip) == \
            (100, 1000, 10_000, 1_000, 1024, 0.5)
    assert PDEM.supports(targets.get("lj55")) is not True and PDEM.supports(targets.get("dw4")) is True


def test_config_validation_and_grid_compatibility():
    with pytest.raises(ValueError, match="idem.n_mc: got 0"):
        IDEM(DEMConfig(n_mc=0))
    with pytest.raises(ValueError, match="idem.network: got .transformer."):
        IDEM(DEMConfig(network="transformer"))
    with pytest.raises(ValueError, match="needs a particle target"):
        resolve(DEMConfig(network="egnn"), targets.get("gmm40"), "idem")
    from runners.config import build_sampler_config, resolve_sampler_config
    cfg = build_sampler_config("idem", resolve_sampler_config("idem", {"n_mc": 7, "gmm_init": "prior"}))
    assert isinstance(cfg, DEMConfig) and cfg.n_mc == 7 and cfg.sigma_min is None


def test_gmm_space_is_the_official_normalisation():
    gmm = targets.get("gmm40")
    sp = Space(gmm, 50.0)
    y = torch.tensor([[0.1, -0.3], [0.5, 0.2]])
    e, g = sp.energy_and_grad(y)
    e0, g0 = gmm.energy_and_grad(50 * y)
    assert torch.allclose(e, e0) and torch.allclose(g, 50 * g0)
    # official unnormalize((y + 1) / 2 * 100 - 50) is exactly 50 y
    assert torch.allclose(sp.to_original(y), (y + 1) / 2 * 100 - 50, atol=1e-5)


@pytest.mark.parametrize("cls", [PDEM, IDEM])
def test_learns_the_exact_noised_score_of_a_gaussian(cls):
    """Target N((1, -0.5), I); trained in y = x / 2, where it is N((0.5, -0.25), 1/4).

    Bounds hold for every fit seed 0-9 (measured; the test runs seed 0), not just one:

        pDEM: loss ratio 0.38-0.55, score rel. error 0.042-0.115, |mean error| 0.055-0.577,
              |std error| 0.13-0.39
        iDEM: loss ratio 0.19-0.23, score rel. error 0.051-0.083, |mean error| 0.107-0.442,
              |std error| 0.09-0.24

    The sample moments after 400 steps vary with the fit seed far more than the 2000-sample
    noise (s.e. 0.02); the learned score at t = 0.9 is the sharp check."""
    tgt = Gauss2D(mean=(1.0, -0.5), std=1.0)
    cfg = DEMConfig(sigma_min=1e-3, sigma_max=1.0, n_mc=128, batch_size=256, n_inner=50,
                    n_generate=256, n_integration_steps=100, hidden=64, n_layers=2, lr=2e-3,
                    coord_scale=2.0, n_init=256, buffer_min=256, gmm_init="prior")
    s = cls(cfg)
    info = s.fit(tgt, Budget(max_steps=400), torch.Generator().manual_seed(0))
    assert info["steps"] == 400 and info["outer_iterations"] == 8
    assert info["final_loss"] < 0.65 * info["first_loss"]     # seeds 0-9: <= 0.553x
    m, v = torch.tensor([0.5, -0.25]), 0.25
    t = 0.9
    h = s.schedule.h(t)
    y = m + math.sqrt(v + h) * torch.randn(2000, 2, generator=torch.Generator().manual_seed(7))
    exact = -(y - m) / (v + h)                                  # score of p_t = N(m, (v + h) I)
    with torch.no_grad():
        pred = s.net(torch.full((2000,), t), y)
    rel = float((pred - exact).pow(2).sum(-1).mean() / exact.pow(2).sum(-1).mean())
    assert rel < 0.15, rel                                      # seeds 0-9: <= 0.115
    x = s.sample(2000, torch.Generator().manual_seed(3))       # original coordinates
    assert x.shape == (2000, 2) and x.dtype == torch.float32
    assert (x.mean(0) - tgt.mean).abs().max() < 0.75         # seeds 0-9: <= 0.577
    assert ((x.std(0) - 1.0).abs() < 0.5).all()              # seeds 0-9: <= 0.387


def test_idem_trains_from_its_buffer_and_respects_the_energy_budget():
    tgt = Gauss2D()
    cfg = IDEM.tiny_config(tgt)
    s = IDEM(cfg)
    B, K = cfg.batch_size, cfg.n_mc
    info = s.fit(tgt, Budget(max_energy_evals=7 * B * K + 5), torch.Generator().manual_seed(0))
    # prior start and buffer pushes cost nothing; each step costs exactly B*K
    assert info["steps"] == 7 and tgt.counter.energy_evals == 7 * B * K
    assert info["outer_iterations"] == 1                 # 5 inner steps + generation, then 2 more
    assert s.buffer.n_added == cfg.n_init + cfg.n_generate
    assert info["init"] == "prior" and len(info["loss_history"]) == 2


def test_determinism_under_a_fixed_generator():
    def run(seed):
        t = targets.get("dw4")
        s = IDEM(IDEM.tiny_config(t))
        s.fit(t, Budget(max_steps=8), torch.Generator().manual_seed(seed))
        return s.sample(50, torch.Generator().manual_seed(seed + 1)), t.counter.snapshot()

    (a, ca), (b, cb), (c, _) = run(0), run(0), run(1)
    assert torch.equal(a, b) and ca == cb
    assert not torch.equal(a, c)
    assert torch.allclose(a.view(50, 4, 2).mean(1), torch.zeros(50, 2), atol=1e-5)  # mean-free


def test_lj55_negative_time_steps_are_applied_and_charged():
    t = targets.get("lj55")
    s = IDEM(IDEM.tiny_config(t))
    s.fit(t, Budget(max_steps=2), torch.Generator().manual_seed(0))
    assert s.rc.n_negative_steps == 10
    n = 8
    before = t.counter.snapshot()
    plain = s.generate(n, torch.Generator().manual_seed(5))          # no negative time
    mid = t.counter.snapshot()
    x = s.sample(n, torch.Generator().manual_seed(5))                  # same SDE path + 10 steps
    after = t.counter.snapshot()
    assert mid == before                                               # the SDE itself is free
    assert after["grad_evals"] - mid["grad_evals"] == 10 * n
    step = (x - plain).norm(dim=-1)
    assert (step > 0).all() and (step <= 10 * 20 * 1e-4 + 1e-5).all()  # clip 20, dt 1e-4
    with torch.no_grad():
        e_plain, e_neg = t.energy(plain), t.energy(x)
    assert (e_neg < e_plain).all()


def test_gmm_estimator_start_and_its_budget_fallback():
    gmm = targets.get("gmm40")
    cfg = dataclasses.replace(IDEM.tiny_config(gmm), gmm_init="estimator", n_integration_steps=200,
                              n_mc=32)
    s = IDEM(cfg)
    info = s.fit(gmm, Budget(max_steps=1), torch.Generator().manual_seed(0))
    assert info["init"] == "estimator"
    assert info["init_energy_evals"] == cfg.n_init * cfg.n_integration_steps * cfg.n_mc
    buf = s.buffer.x[: cfg.n_init] * 50                  # the estimator-driven SDE finds modes
    near = torch.cdist(buf, gmm.means).min(1).values
    assert (near < 6.0).float().mean() > 0.8
    gmm2 = targets.get("gmm40")
    info2 = IDEM(cfg).fit(gmm2, Budget(max_energy_evals=5000), torch.Generator().manual_seed(0))
    assert info2["init"].startswith("prior") and gmm2.counter.energy_evals <= 5000


def test_nan_energy_raises_diverged():
    with pytest.raises(Diverged, match="loss"):
        PDEM(PDEM.tiny_config(None)).fit(Gauss2D(nan=True), Budget(max_steps=3),
                                         torch.Generator().manual_seed(0))


def test_checkpoint_round_trip():
    t = targets.get("dw4")
    s = IDEM(IDEM.tiny_config(t))
    s.fit(t, Budget(max_steps=6), torch.Generator().manual_seed(0))
    state = s.state_dict()
    s2 = IDEM(IDEM.tiny_config(t))
    s2.load_state_dict(state)
    s2.setup(targets.get("dw4"), torch.Generator().manual_seed(1))
    assert s2.steps == 6 and s2.buffer.n_added == s.buffer.n_added
    assert torch.equal(s2.buffer.x, s.buffer.x)
    assert all(torch.equal(p, q) for p, q in zip(s.net.parameters(), s2.net.parameters()))
    a = s.sample(10, torch.Generator().manual_seed(2))
    b = s2.sample(10, torch.Generator().manual_seed(2))
    assert torch.equal(a, b)


def test_schedule_prior_matches_sigma_max_in_original_units():
    gmm = targets.get("gmm40")
    s = IDEM(IDEM.tiny_config(gmm))
    s.setup(gmm, torch.Generator().manual_seed(0))
    assert isinstance(s.schedule, GeometricSchedule)
    x = s.space.to_original(s.space.prior(4000, s.schedule.prior_std, torch.Generator(), "cpu"))
    assert x.std().item() == pytest.approx(50.0, rel=0.05)   # sigma_max 1 in units of 50


def test_paper_profile_states_the_paper_defaults():
    from omegaconf import OmegaConf
    from pathlib import Path
    prof = OmegaConf.to_container(OmegaConf.load(
        Path(__file__).resolve().parents[1] / "runners" / "profiles" / "paper.yaml"))
    from samplers.dem import PAPER_DEFAULTS
    for sampler in ("idem", "pdem"):
        for tname, values in prof["samplers"][sampler].items():
            for key, v in values.items():
                assert PAPER_DEFAULTS[tname][key] == v, (sampler, tname, key)


def test_adam_is_torch_adam_without_weight_decay():
    """The (fused, where available) optimiser takes the same steps as torch's reference Adam."""
    from samplers.idem import adam
    g = torch.Generator().manual_seed(0)
    w0 = torch.randn(5, 3, generator=g)
    grads = [torch.randn(5, 3, generator=g) for _ in range(4)]
    results = []
    for make in (lambda p: adam([p], 1e-2), lambda p: torch.optim.Adam([p], lr=1e-2)):
        p = torch.nn.Parameter(w0.clone())
        opt = make(p)
        for g in grads:
            p.grad = g.clone()
            opt.step()
        results.append(p.detach())
    torch.testing.assert_close(results[0], results[1], rtol=1e-6, atol=1e-7)
    assert not torch.equal(results[0], w0)
