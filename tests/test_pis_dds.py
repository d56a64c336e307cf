"""PIS and DDS: exact importance weights, closed-form optimal controls, training on a Gaussian,
evaluation accounting, determinism, particle projection and divergence."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import samplers
import targets
from samplers import Budget, Diverged
from samplers.dds import step_weights
from samplers.pis import logmeanexp
from targets.base import Target

NAMES = ["pis", "dds"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tests run many tiny ops, for which OpenMP threads only add overhead (and spin on a
    loaded 2-core machine); restore the setting for other modules."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class Gauss(Target):
    """E = 0.5 ||x - m||^2 / s^2, so Z = (2 pi s^2)^(d/2)."""

    name = "gauss_test"
    pretty_name = "Gauss"

    def __init__(self, mean, std):
        mean = torch.as_tensor(mean, dtype=torch.float32)
        super().__init__(dim=mean.shape[0], params={"mean": mean.tolist(), "std": std})
        self.mean, self.std = mean, float(std)
        self.log_Z = 0.5 * self.dim * math.log(2 * math.pi * self.std**2)

    def _energy(self, x):
        return 0.5 * (x - self.mean.to(x)).pow(2).sum(-1) / self.std**2


class NaNTarget(Gauss):
    def _energy(self, x):
        return super()._energy(x) * float("nan")


def _untrained(name, target, **kw):
    """Sampler bound to ``target`` with the initial (zero) control: the reference process."""
    cls = samplers.get(name)
    s = cls(cls.Config(max_iters=0, **kw))
    info = s.fit(target, Budget(max_steps=1), torch.Generator().manual_seed(0))
    assert info["steps"] == 0
    return s


def _optimal_control(sampler, target):
    """Closed-form optimal control for a Gaussian target, in the sampler's z = x / sigma units.

    PIS (Brownian reference from 0, horizon T): u* = ∇ log h, h(t, z) = E[ρ(Z_T) / N(Z_T; 0, T)],
    a Gaussian integral. DDS: f* = ∇ log q_k(z) + z with q_k the target noised by the remaining
    OU steps, N(m sqrt(A_k), s^2 A_k + 1 - A_k), A_k = prod_{i >= k} (1 - a_i)."""
    sig = sampler.sigma
    m, s2 = target.mean / sig, (target.std / sig) ** 2
    n_steps = sampler.config.n_steps
    if sampler.name == "pis":
        big_t = sampler.config.t_final
        a, b = 1 / s2 - 1 / big_t, m / s2

        def control(k, z, score):
            tau = big_t * (1 - k / n_steps)
            return (z / tau + b) / (tau * (1 / tau + a)) - z / tau
        return control
    keep = torch.tensor([c[0] ** 2 for c in sampler._coef], dtype=torch.float64)
    big_a = [float(keep[k:].prod()) for k in range(n_steps)]

    def control(k, z, score):
        var = s2 * big_a[k] + 1 - big_a[k]
        return -(z - m * math.sqrt(big_a[k])) / var + z
    return control


@pytest.mark.parametrize("name", NAMES)
def test_optimal_control_gives_unbiased_and_vanishing_variance_weights(name):
    # With the exact optimal control, log w -> log Z with variance O(dt): the std must halve when
    # N goes 25 -> 100. A sign or scale error in the Girsanov terms breaks both checks.
    target = Gauss([1.5, -1.0], 0.7)
    stds = {}
    for n_steps in (25, 100):
        s = _untrained(name, target, sigma=2.0, n_steps=n_steps)
        g = torch.Generator().manual_seed(1)
        x, log_w = s._draw(4000, g, True, control=_optimal_control(s, target))
        stds[n_steps] = float(log_w.std())
        assert abs(logmeanexp(log_w) - target.log_Z) < 0.05
    # Unweighted samples carry the O(dt) bias of discretising the continuous optimal control.
    assert torch.allclose(x.mean(0), target.mean, atol=0.05)
    assert torch.allclose(x.var(0), torch.full((2,), 0.49), rtol=0.1)
    assert stds[100] < 0.65 * stds[25], stds
    assert stds[100] < 0.4


@pytest.mark.parametrize("name", NAMES)
def test_untrained_sampler_elbo_equals_minus_kl_to_reference(name):
    # Zero control: log w = log p~(x) - log N(x; 0, sigma^2 v) with x ~ N(0, sigma^2 v), so
    # E[log w] = log Z - KL(N(0, v) || N(m, s^2)) < log Z (the ELBO bound) in closed form.
    target = Gauss([1.0, 0.5], 0.8)
    s = _untrained(name, target, sigma=1.0, n_steps=10)
    _, log_w = s.log_weights(8000, torch.Generator().manual_seed(2))
    v, s2, m2 = 1.0, target.std**2, float(target.mean.pow(2).sum())
    kl = 0.5 * (2 * (v / s2 - 1 - math.log(v / s2)) + m2 / s2)
    se = float(log_w.std()) / math.sqrt(len(log_w))
    assert abs(float(log_w.mean()) - (target.log_Z - kl)) < 4 * se
    assert float(log_w.mean()) < target.log_Z - 0.5


@pytest.mark.parametrize("name", NAMES)
def test_short_training_matches_gaussian_moments_and_log_z(name):
    target = Gauss([1.5, -1.0], 0.5)
    cls = samplers.get(name)
    s = cls(cls.Config(sigma=1.0, n_steps=20, batch_size=128, hidden=32, max_iters=150))
    g = torch.Generator().manual_seed(0)
    info = s.fit(target, Budget(max_steps=10**6), g)
    assert info["steps"] == 150 and info["train_loss"] > -target.log_Z - 0.5
    x, log_w = s.log_weights(4000, g)
    assert torch.allclose(x.mean(0), target.mean, atol=0.1)
    ratio = x.var(0) / target.std**2
    assert ((ratio > 0.75) & (ratio < 1.3)).all(), ratio
    assert abs(logmeanexp(log_w) - target.log_Z) < 0.05
    assert float(log_w.mean()) <= target.log_Z + 0.01  # ELBO below log Z


@pytest.mark.parametrize("name", NAMES)
def test_evaluation_counting_and_budget(name):
    target = Gauss([0.0, 0.0], 1.0)
    cls = samplers.get(name)
    cfg = cls.tiny_config(target)
    per_iter = cfg.batch_size * (cfg.n_steps + 1)
    info = cls(cfg).fit(target, Budget(max_steps=100), torch.Generator().manual_seed(0))
    assert info["steps"] == cfg.max_iters
    assert target.counter.energy_evals == cfg.max_iters * per_iter == info["energy_evals"]
    assert target.counter.grad_evals == cfg.max_iters * per_iter
    # The energy cap stops before an iteration that would overshoot it.
    target.reset_counter()
    cfg.max_iters = None
    s = cls(cfg)
    info = s.fit(target, Budget(max_energy_evals=int(2.5 * per_iter)), torch.Generator().manual_seed(0))
    assert info["steps"] == 2 and target.counter.energy_evals == 2 * per_iter
    # Sampling charges the control's gradient calls; weights add one terminal energy per sample.
    target.reset_counter()
    s.sample(50, torch.Generator().manual_seed(1))
    assert target.counter.grad_evals == 50 * cfg.n_steps
    assert target.counter.energy_evals == 50 * cfg.n_steps
    target.reset_counter()
    s.log_weights(50, torch.Generator().manual_seed(1))
    assert target.counter.energy_evals == 50 * (cfg.n_steps + 1)


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_under_generator(name):
    target = Gauss([0.5, 0.0], 1.0)
    cls = samplers.get(name)
    out = []
    for _ in range(2):
        s = cls(cls.tiny_config(target))
        s.fit(target, Budget(max_steps=10), torch.Generator().manual_seed(7))
        out.append(s.log_weights(64, torch.Generator().manual_seed(8)))
    assert torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][1], out[1][1])
    s.fit(target, Budget(max_steps=10), torch.Generator().manual_seed(9))
    assert not torch.equal(s.sample(64, torch.Generator().manual_seed(8)), out[0][0])


@pytest.mark.parametrize("name", NAMES)
def test_particle_target_samples_are_mean_free(name):
    target = targets.get("dw4")
    cls = samplers.get(name)
    s = cls(cls.tiny_config(target))
    info = s.fit(target, Budget(max_steps=10), torch.Generator().manual_seed(0))
    assert info["sigma"] == 2.0
    x, log_w = s.log_weights(100, torch.Generator().manual_seed(1))
    assert x.shape == (100, 8) and x.dtype == torch.float32
    assert target.particles(x).mean(-2).abs().max() < 1e-5
    assert torch.isfinite(log_w).all() and log_w.dtype == torch.float64


@pytest.mark.parametrize("name", NAMES)
def test_errors(name):
    cls = samplers.get(name)
    assert cls.has_log_prob is False and cls.has_importance_weights is True
    with pytest.raises(ValueError, match="n_steps"):
        cls(cls.Config(n_steps=0))
    with pytest.raises(ValueError, match="sigma"):
        cls(cls.Config(sigma=-1.0))
    with pytest.raises(RuntimeError, match="fit"):
        cls().sample(3, torch.Generator())
    target = NaNTarget([0.0], 1.0)
    with pytest.raises(Diverged):
        cls(cls.tiny_config(target)).fit(target, Budget(max_steps=5), torch.Generator().manual_seed(0))


def test_dds_schedule():
    w = step_weights(100, "cos_sq")
    assert abs(float(w.sum()) - 1) < 1e-12 and (w > 0).all() and (w[1:] < w[:-1]).all()
    with pytest.raises(ValueError, match="schedule"):
        samplers.get("dds")(samplers.get("dds").Config(schedule="linear"))
    s = _untrained("dds", Gauss([0.0], 1.0), n_steps=50, lambda_total=6.0)
    keep = torch.tensor([c[0] ** 2 for c in s._coef], dtype=torch.float64)
    a = torch.tensor([c[2] ** 2 for c in s._coef], dtype=torch.float64)
    assert torch.allclose(keep + a, torch.ones(50, dtype=torch.float64))  # variance preserving
    assert abs(float(keep.prod()) - math.exp(-6.0)) < 1e-9


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_resume(name):
    target = Gauss([0.5, -0.5], 1.0)
    cls = samplers.get(name)
    cfg = cls.tiny_config(target)
    a = cls(cfg)
    a.fit(target, Budget(max_steps=100), torch.Generator().manual_seed(0))
    state = a.state_dict()
    # Restored before fit, with nothing left to train: the same network, so the same samples.
    b = cls(cfg)
    b.load_state_dict(state)
    target.reset_counter()
    info = b.fit(target, Budget(max_steps=100), torch.Generator().manual_seed(5))
    assert info["steps"] == cfg.max_iters and target.counter.energy_evals == 0
    assert torch.equal(a.sample(32, torch.Generator().manual_seed(3)),
                       b.sample(32, torch.Generator().manual_seed(3)))
    # Training continues from the saved step count.
    c = cls(dataclasses.replace(cfg, max_iters=cfg.max_iters + 2))
    c.load_state_dict(state)
    target.reset_counter()
    assert c.fit(target, Budget(max_steps=100), torch.Generator().manual_seed(5))["steps"] == 5
    assert target.counter.energy_evals == 2 * cfg.batch_size * (cfg.n_steps + 1)


# ---------------------------------------------------------------------------- FAB
from samplers.fab import RealNVP, helmert_basis  # noqa: E402


def _fab(target, **kw):
    cls = samplers.get("fab")
    s = cls(cls.Config(**kw))
    s.fit(target, Budget(max_steps=1 if kw.get("max_iters") == 0 else 10**6),
          torch.Generator().manual_seed(0))
    return s


def test_fab_flow_is_a_normalised_invertible_density():
    g = torch.Generator().manual_seed(0)
    flow = RealNVP(2, 4, 16, g)
    with torch.no_grad():
        for p in flow.parameters():  # a non-trivial flow (the zero-initialised one is the base)
            p.copy_(0.2 * torch.randn(p.shape, generator=g))
        u, log_q = flow.sample(500, g)
        assert torch.allclose(flow.log_prob(u), log_q, atol=1e-4)
        grid = torch.linspace(-12, 12, 601)
        xy = torch.cartesian_prod(grid, grid)
        mass = flow.log_prob(xy).exp().sum() * (grid[1] - grid[0]) ** 2
    assert abs(float(mass) - 1) < 0.02


def test_fab_helmert_basis():
    b = helmert_basis(4, 2)
    assert b.shape == (8, 6)
    assert torch.allclose(b.T @ b, torch.eye(6), atol=1e-6)
    assert b.reshape(4, 2, 6).sum(0).abs().max() < 1e-6  # every column is mean-free


def test_fab_ais_estimates_the_p2_over_q_normaliser():
    # Untrained flow = N(0, sigma^2 I): AIS towards p~^2/q is unbiased for ∫ p~^2 / q, a Gaussian
    # integral per axis: sqrt(2 pi sigma^2) sqrt(pi / a) exp(b^2 / (4a) + c).
    target, sig = Gauss([1.5, -1.0], 0.7), 2.0
    s = _fab(target, sigma=sig, max_iters=0, hidden=8, n_layers=2)
    a = 1 / target.std**2 - 1 / (2 * sig**2)
    exact = sum(0.5 * math.log(2 * math.pi * sig**2) + 0.5 * math.log(math.pi / a)
                + (2 * m / target.std**2) ** 2 / (4 * a) - m * m / target.std**2
                for m in target.mean.tolist())
    target.reset_counter()
    _, log_w = s._ais(4000, torch.Generator().manual_seed(1))
    assert abs(logmeanexp(log_w) - exact) < 0.1
    cfg = s.config
    assert target.counter.energy_evals == 4000 * (1 + cfg.n_intermediate * cfg.n_leapfrog)


def test_fab_short_training_on_gaussian():
    target = Gauss([1.5, -1.0], 0.7)
    s = _fab(target, sigma=2.0, max_iters=150, batch_size=128, buffer_min=512, hidden=16,
             n_layers=2, lr=3e-3)
    x = s.sample(4000, torch.Generator().manual_seed(1))
    assert target.counter.energy_evals % (128 * 11) == 0  # whole AIS rounds only
    log_w = -target.energy(x) - s.log_prob(x)
    assert abs(logmeanexp(log_w) - target.log_Z) < 0.05
    assert torch.allclose(x.mean(0), target.mean, atol=0.1)
    assert torch.allclose(x.var(0), torch.full((2,), 0.49), rtol=0.15)


@pytest.mark.reference_data
def test_fab_particles_counting_determinism_errors():
    target = targets.get("dw4")
    cls = samplers.get("fab")
    cfg = cls.tiny_config(target)
    outs = []
    for _ in range(2):
        target.reset_counter()
        s = cls(cfg)
        info = s.fit(target, Budget(max_steps=100), torch.Generator().manual_seed(0))
        per_round = cfg.batch_size * (1 + cfg.n_intermediate * cfg.n_leapfrog)
        assert target.counter.energy_evals == info["ais_rounds"] * per_round
        assert info["steps"] == cfg.max_iters
        before = target.counter.energy_evals
        outs.append(s.sample(64, torch.Generator().manual_seed(3)))
        assert target.counter.energy_evals == before  # flow samples are free
    assert torch.equal(outs[0], outs[1])
    x = outs[0]
    assert target.particles(x).mean(-2).abs().max() < 1e-5
    # Untrained flow: the mean-free Gaussian N(0, sigma^2) on the 6-D subspace.
    s0 = _fab(target, max_iters=0, hidden=8, n_layers=2)
    d_eff, sig2 = 6, 4.0
    ref = target.reference("test", n=10)
    want = -0.5 * ref.pow(2).sum(-1) / sig2 - 0.5 * d_eff * math.log(2 * math.pi * sig2)
    assert torch.allclose(s0.log_prob(ref), want, atol=1e-4)
    with pytest.raises(ValueError, match="buffer_min"):
        cls(cls.Config(buffer_min=10, buffer_size=5))
    with pytest.raises(RuntimeError, match="fit"):
        cls().sample(2, torch.Generator())


def test_score_clip_units_data_clips_before_the_sigma_scaling():
    """Official DDS clips ∇log p̃ in data units (lgv_clip); the "z" variant clips σ·∇log p̃."""
    from samplers.pis import clipped_score
    grad_e = torch.tensor([[-150.0, 30.0, float("nan")]])        # ∇E; ∇log p̃ = -∇E
    data = clipped_score(grad_e, sigma=2.0, clip=100.0, units="data")
    z = clipped_score(grad_e, sigma=2.0, clip=100.0, units="z")
    assert data.tolist() == [[200.0, -60.0, 0.0]]                # 2 · clip(150) , 2 · (-30)
    assert z.tolist() == [[100.0, -60.0, 0.0]]                   # clip(2 · 150)
    assert samplers.get("dds").Config().score_clip_units == "data"
    with pytest.raises(ValueError, match="score_clip_units"):
        samplers.get("dds").Config(score_clip_units="x").validate()


def test_dds_stick_the_landing_term_has_zero_mean_and_changes_only_the_gradient():
    """STL adds Σ m_k·ε_k/√a_k with frozen parameters: zero mean (the loss value agrees with the
    plain loss within sampling error on the same paths) and the parameter gradient changes."""
    t = Gauss([0.5, -0.5], 0.7)
    losses, grads = {}, {}
    for stl in (False, True):
        cls = samplers.get("dds")
        s = cls(cls.Config(max_iters=1, stl=stl, sigma=1.0, batch_size=8, n_steps=10))
        s.fit(t, Budget(max_steps=1), torch.Generator().manual_seed(0))   # one step: non-zero net
        g = torch.Generator().manual_seed(3)
        loss, _ = s._loss(4000, g)
        s.net.zero_grad()
        loss.backward()
        losses[stl] = loss.item()
        grads[stl] = torch.cat([p.grad.flatten() for p in s.net.parameters() if p.grad is not None])
    assert abs(losses[True] - losses[False]) < 0.05 * max(1.0, abs(losses[False]))
    assert not torch.allclose(grads[True], grads[False])
