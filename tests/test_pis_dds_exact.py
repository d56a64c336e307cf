"""PIS and DDS (samplers/pis.py, samplers/dds.py) against transcriptions and closed forms.

test_pis_dds.py checks the samplers statistically (unbiased weights under the optimal control,
moments after training); mutmut showed what that cannot see (docs/testing.md): DDS's cosine step
weights and its network times, the PIS time grid, the terminal-gradient clip units in the loss,
PIS picking up DDS's stick-the-landing default, ESS and checkpoint details. Here each piece is
compared with a formula written out separately: the exponential-integrator coefficients from the
schedule, every step's log-ratio as a ratio of the two Gaussian kernels' densities, and a whole
rollout, its weights and its loss gradient under a constant control replayed in float64.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import samplers
from samplers import Budget
from samplers.dds import step_weights
from samplers.pis import SIGMA_DEFAULTS, logmeanexp, normalised_ess
from targets.base import Target

NAMES = ["pis", "dds"]


class Gauss(Target):
    """E = ½ |x - m|² / s² with its closed-form gradient."""

    name, pretty_name = "gauss_exact", "Gauss"

    def __init__(self, mean, std):
        super().__init__(dim=len(mean), params={})
        self.m, self.s = torch.tensor(mean, dtype=torch.float64), float(std)

    def _energy(self, x):
        return 0.5 * (x - self.m.to(x)).pow(2).sum(-1) / self.s ** 2

    def _energy_and_grad(self, x):
        return self._energy(x), (x - self.m.to(x)) / self.s ** 2


def _bound(name, target, **kw):
    """An untrained sampler bound to ``target`` (max_iters=0: no training step)."""
    cls = samplers.get(name)
    s = cls(cls.Config(max_iters=0, **kw))
    s.fit(target, Budget(max_steps=1), torch.Generator().manual_seed(0))
    return s


def _kernel(name, s, k):
    """(r, g, a, reference terminal variance) of step k: z' = r z + g u + sqrt(a) eps, from the
    module docstrings. PIS: Euler-Maruyama of dz = u dt + dW from a Dirac (r = 1, g = a = dt,
    terminal N(0, T)); DDS: the exact OU transition with a_k = 1 - exp(-lambda w_k) and the
    exponential integrator g = 2 (1 - sqrt(1 - a)), terminal (= prior) N(0, 1)."""
    if name == "pis":
        dt = s.config.t_final / s.config.n_steps
        return 1.0, dt, dt, s.config.t_final
    w = _cos4_weights(s.config.n_steps) if s.config.schedule == "cos_sq" else \
        np.full(s.config.n_steps, 1 / s.config.n_steps)
    a = 1 - math.exp(-s.config.lambda_total * w[k])
    return math.sqrt(1 - a), 2 * (1 - math.sqrt(1 - a)), a, 1.0


def _cos4_weights(n):
    """DDS's cosine steps: w_k ∝ cos^4(pi/2 (tau_k + s) / (1 + s)), midpoints tau_k, s = 0.008."""
    tau = (np.arange(n) + 0.5) / n
    w = np.cos(np.pi / 2 * (tau + 0.008) / 1.008) ** 4
    return w / w.sum()


# ----------------------------------------------------------------------------- schedules
@pytest.mark.parametrize("n", [1, 7, 100])
def test_dds_step_weights_are_the_cosine_and_uniform_shares(n):
    w = step_weights(n, "cos_sq")
    assert w.dtype == torch.float64 and np.allclose(w.numpy(), _cos4_weights(n), rtol=1e-13)
    u = step_weights(n, "uniform")
    assert u.dtype == torch.float64 and u.shape == (n,) and torch.all(u == 1.0 / n)


@pytest.mark.parametrize("schedule", ["cos_sq", "uniform"])
def test_dds_integrator_coefficients_and_network_times_follow_the_schedule(schedule):
    s = _bound("dds", Gauss([0.0, 0.0], 1.0), n_steps=12, lambda_total=4.0, schedule=schedule)
    w = _cos4_weights(12) if schedule == "cos_sq" else np.full(12, 1 / 12)
    for k, (r, g, sqrt_a, quad_c, stoch_c) in enumerate(s._coef):
        r_, g_, a_, _ = _kernel("dds", s, k)
        assert (r, g, sqrt_a) == pytest.approx((r_, g_, math.sqrt(a_)), rel=1e-12)
        want = (g_ ** 2 / (2 * a_), g_ / math.sqrt(a_))
        assert (quad_c, stoch_c) == pytest.approx(want, rel=1e-12)
    # network time: the share of lambda_total spent before step k, from 0 up to below 1
    before = np.concatenate([[0.0], np.cumsum(w)[:-1]])
    assert s._times == pytest.approx(before.tolist(), abs=1e-14)
    assert s.decorrelation == pytest.approx(math.exp(-4.0), rel=1e-12)


def test_pis_time_grid_and_step_are_t_over_n():
    s = _bound("pis", Gauss([0.0], 1.0), n_steps=8, t_final=2.0)
    assert s._dt == 0.25 and s._times == [k / 8 for k in range(8)]


# ----------------------------------------------------------------------------- one step
def _log_normal(x, mean, var):
    return -0.5 * ((x - mean) ** 2).sum(-1) / var - 0.5 * x.shape[-1] * math.log(2 * math.pi * var)


@pytest.mark.parametrize("name", NAMES)
def test_each_step_is_the_kernel_and_its_exact_log_ratio_to_the_reference(name):
    """z' ~ N(r z + g u, a) against the reference N(r z, a): log-ratio at z' is quad + stoch, with
    quad the eps-free part (its value at eps = 0) and stoch the rest (zero mean)."""
    s = _bound(name, Gauss([0.0, 0.0, 0.0], 1.0), n_steps=5, sigma=1.5)
    g = torch.Generator().manual_seed(0)
    z, u, eps = (torch.randn(6, 3, generator=g, dtype=torch.float64) for _ in range(3))
    for k in range(5):
        r, gk, a, _ = _kernel(name, s, k)
        z_next, quad, stoch = s._step(z, u, eps, k)
        assert torch.allclose(z_next, r * z + gk * u + math.sqrt(a) * eps, atol=1e-12)
        ratio = _log_normal(z_next, r * z + gk * u, a) - _log_normal(z_next, r * z, a)
        at_mean = r * z + gk * u
        eps_free = _log_normal(at_mean, at_mean, a) - _log_normal(at_mean, r * z, a)
        assert torch.allclose(quad, eps_free, atol=1e-10)
        assert torch.allclose(quad + stoch, ratio, atol=1e-10)


def test_dds_starts_from_the_prior_draws_and_pis_from_the_dirac():
    d = _bound("dds", Gauss([0.0, 0.0], 1.0), n_steps=3)
    z = d._init_state(5, torch.Generator().manual_seed(4))
    assert torch.equal(z, torch.randn(5, 2, generator=torch.Generator().manual_seed(4)))
    p = _bound("pis", Gauss([0.0, 0.0], 1.0), n_steps=3)
    assert torch.equal(p._init_state(5, torch.Generator()), torch.zeros(5, 2))


# ----------------------------------------------------------------------------- whole paths
@pytest.mark.parametrize("name, units", [("pis", "data"), ("pis", "z"), ("dds", "data")])
def test_rollout_weights_and_loss_gradient_under_a_constant_control(name, units):
    """With u_k = theta for every step, z_N = (Π r) z_0 + c theta + noise with
    c = Σ_k g_k Π_{j>k} r_j; replay the path in float64 from the same generator, then
    log w = -E(σ z_N) - log N(z_N; 0, v) + d log σ - Σ quad - Σ stoch, and the loss gradient
    dL/dθ = Σ_k (g_k²/a_k) θ + c · mean(-z_N / v + g_z) with g_z = -clip(σ ∇log p̃(σ z_N)) in
    the configured units (PIS-Grad's terminal clip; the loss value uses the exact energy)."""
    target, sigma, clip, n = Gauss([3.0, -2.0], 0.3), 2.0, 5.0, 64
    s = _bound(name, target, n_steps=6, sigma=sigma, score_clip=clip, score_clip_units=units)
    theta = torch.tensor([0.7, -0.4], requires_grad=True)
    loss, log_w = s._loss(n, torch.Generator().manual_seed(9),
                          control=lambda k, z, sc: theta.expand_as(z))

    g = torch.Generator().manual_seed(9)
    z = (torch.randn(n, 2, generator=g) if name == "dds" else torch.zeros(n, 2)).double()
    th = theta.detach().double()
    quad = stoch = 0.0
    c, quad_coef = 0.0, 0.0
    for k in range(6):
        r, gk, a, v = _kernel(name, s, k)
        eps = torch.randn(n, 2, generator=g).double()
        z = r * z + gk * th + math.sqrt(a) * eps
        quad = quad + gk ** 2 * th.pow(2).sum() / (2 * a)
        stoch = stoch + gk * (th * eps).sum(-1) / math.sqrt(a)
        c, quad_coef = r * c + gk, quad_coef + gk ** 2 / a
    x = sigma * z
    energy = 0.5 * (x - target.m).pow(2).sum(-1) / target.s ** 2
    log_ref = _log_normal(z, 0.0, v) - 2 * math.log(sigma)
    assert torch.allclose(log_w, -energy - log_ref - quad - stoch, atol=1e-3)
    assert float(loss.detach()) == pytest.approx(float((quad + log_ref + energy).mean()), abs=1e-3)

    score = -(x - target.m) / target.s ** 2                 # ∇ log p̃ in data units
    g_z = -(sigma * score.clamp(-clip, clip) if units == "data"
            else (sigma * score).clamp(-clip, clip))
    want = quad_coef * th + c * (-z / v + g_z).mean(0)
    got, = torch.autograd.grad(loss, theta)
    assert torch.allclose(got.double(), want, rtol=1e-4, atol=1e-4)


def test_pis_loss_has_no_stick_the_landing_term(monkeypatch):
    """PISConfig has no ``stl`` field: PIS must not take DDS's default. With a non-zero control the
    STL term would change the loss value; recompute it from the same path without it."""
    s = _bound("pis", Gauss([1.0, -1.0], 0.8), n_steps=5, sigma=1.0)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in s.net.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
    loss, _ = s._loss(32, torch.Generator().manual_seed(1))
    z, quad, _ = s._rollout(32, torch.Generator().manual_seed(1), s._net_control)
    e = s.target.energy(z.detach())
    want = (quad + s._log_ref_x(z) + e).mean()
    assert float(loss.detach()) == pytest.approx(float(want.detach()), rel=1e-6)


# ----------------------------------------------------------------------------- small helpers
def test_normalised_ess_and_logmeanexp_against_numpy():
    lw = np.array([0.3, -1.2, 2.0, -np.inf, 0.0])
    w = np.exp(lw - 2.0)
    want = w.sum() ** 2 / (w ** 2).sum() / 5
    assert normalised_ess(torch.tensor(lw)) == pytest.approx(want, rel=1e-12)
    assert normalised_ess(torch.zeros(7)) == pytest.approx(1.0)
    assert normalised_ess(torch.full((3,), -math.inf)) == 0.0
    assert logmeanexp(torch.tensor(lw, dtype=torch.float32)) == pytest.approx(
        math.log(np.exp(lw).mean()), rel=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_tiny_config_takes_sigma_from_the_target_name(name):
    cls = samplers.get(name)
    assert cls.tiny_config("dw4").sigma == SIGMA_DEFAULTS["dw4"] == 2.0
    assert cls.tiny_config(samplers.get("mala")).sigma == 1.0     # an object named "mala"
    assert cls.tiny_config(object()).sigma == 1.0                 # no name at all
    assert cls.tiny_config(Gauss([0.0], 1.0)).sigma == 1.0


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_carries_the_fit_generator_and_refuses_another_sigma(name):
    cls = samplers.get(name)
    s = cls(cls.tiny_config(None))
    with pytest.raises(RuntimeError, match=rf"^{name}\.state_dict: call fit first$"):
        s.state_dict()
    gen = torch.Generator().manual_seed(2)
    s.fit(Gauss([0.0, 0.0], 1.0), Budget(max_steps=2), gen)
    state = s.state_dict()
    assert torch.equal(state["generator"], gen.get_state()) and state["steps"] == 2
    other = cls(cls.tiny_config(None))
    other.fit(Gauss([0.0, 0.0], 1.0), Budget(max_steps=1), torch.Generator().manual_seed(7))
    other.load_state_dict(state)            # after fit: applied at once
    mine, theirs = s.net.state_dict().values(), other.net.state_dict().values()
    assert other.steps == 2 and all(torch.equal(a, b) for a, b in zip(mine, theirs))
    bad = dict(state, sigma=state["sigma"] * (1 + 1e-6))
    with pytest.raises(ValueError, match=rf"^{name}.load_state_dict: checkpoint sigma "
                                         rf"{bad['sigma']} differs from the configured 1.0$"):
        other.load_state_dict(bad)


# ----------------------------------------------------------------------------- configuration
# samplers/base.py's contract "<field>: got <value>; expected/allowed ...", prefixed with the
# sampler's name: the message names the field to fix and what it may be.
POS, POS_INT, DEF = "expected a finite number > 0", "expected a positive integer", \
    " (or None for the default)"
SHARED_BAD = [
    ("sigma", 0.0, POS + DEF), ("n_steps", 0, POS_INT), ("batch_size", 2.5, POS_INT),
    ("hidden", 0, POS_INT), ("n_layers", False, POS_INT), ("sample_batch", 0, POS_INT),
    ("lr", 0.0, POS), ("weight_decay", -1e-3, "expected a finite number >= 0"),
    ("score_clip", math.inf, POS), ("network", "gnn", "allowed: mlp, egnn"),
    ("score_clip_units", "x", "allowed: z, data"), ("max_grad_norm", 0.0, POS + DEF),
    ("max_iters", -1, "expected an integer >= 0" + DEF),
    ("device", "gpu0", "expected a torch device string: cpu, or cuda (cuda:N) on a machine "
                       "with a GPU"),
]
BAD = ([("pis", *b) for b in SHARED_BAD + [("t_final", 0.0, POS)]]
       + [("dds", *b) for b in SHARED_BAD + [("lambda_total", -1.0, POS),
                                             ("schedule", "linear", "allowed: cos_sq, uniform"),
                                             ("stl", 1, "expected true or false")]])


@pytest.mark.parametrize("name, field, value, expected", BAD)
def test_config_errors_name_the_field_the_value_and_what_is_allowed(name, field, value, expected):
    cls = samplers.get(name)
    with pytest.raises(ValueError) as err:
        cls(cls.Config(**{field: value}))
    assert str(err.value) == f"{name}.{field}: got {value!r}; {expected}"


@pytest.mark.parametrize("name", NAMES)
def test_config_accepts_the_smallest_allowed_values(name):
    cls = samplers.get(name)
    cls(cls.Config(sigma=1e-9, n_steps=1, batch_size=1, hidden=1, n_layers=1, sample_batch=1,
                   lr=1e-9, weight_decay=0.0, score_clip=1e-9, network="egnn",
                   score_clip_units="data", max_grad_norm=1e-9, max_iters=0))


# ----------------------------------------------------------------------------- round-2 survivors
def test_gaussian_log_density_is_the_normal_on_d_eff_dimensions():
    from samplers.pis import gaussian_log_density
    z = torch.tensor([[0.3, -1.2, 0.9]], dtype=torch.float64)
    for var, d in ((2.5, 3), (0.4, 2)):
        want = -0.5 * float(z.pow(2).sum()) / var - 0.5 * d * math.log(2 * math.pi * var)
        assert float(gaussian_log_density(z, var, d)) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("units", ["z", "data"])
def test_non_finite_score_components_become_zero(units):
    from samplers.pis import clipped_score
    g = torch.tensor([[math.nan, math.inf, -math.inf, 0.5]])
    assert clipped_score(g, 2.0, 10.0, units).tolist() == [[0.0, 0.0, 0.0, -1.0]]


def test_score_feature_clips_in_the_configured_units():
    target = Gauss([3.0, -2.0], 0.3)
    z = torch.tensor([[0.1, 0.2], [-0.5, 0.4]])
    for units in ("z", "data"):
        s = _bound("pis", target, n_steps=2, sigma=2.0, score_clip=5.0, score_clip_units=units)
        score = -(2.0 * z.double() - target.m) / target.s ** 2
        want = 2.0 * score.clamp(-5, 5) if units == "data" else (2.0 * score).clamp(-5, 5)
        assert torch.allclose(s._score_feature(z).double(), want, atol=1e-5)


def test_sigma_defaults_by_target_and_the_mean_free_dimension():
    import targets
    assert _bound("pis", targets.get("gmm40")).sigma == SIGMA_DEFAULTS["gmm40"] == 40.0
    assert _bound("dds", Gauss([0.0], 1.0)).sigma == 1.0
    d = _bound("dds", targets.get("dw4"), network="mlp")
    assert d.d_eff == (4 - 1) * 2        # (N - 1) · D degrees of freedom


def test_energy_budget_buys_whole_optimiser_steps_of_batch_times_n_plus_one():
    cls = samplers.get("pis")
    b, n = 8, 4
    for cap in (2 * b * (n + 1), 2 * b * (n + 1) + b * (n - 1)):   # exactly 2, and 2 + not enough
        t = Gauss([0.0, 0.0], 1.0)
        info = cls(cls.Config(n_steps=n, batch_size=b, hidden=8, n_layers=1)).fit(
            t, Budget(max_energy_evals=cap), torch.Generator().manual_seed(0))
        assert info["steps"] == 2 and t.counter.energy_evals == 2 * b * (n + 1)


@pytest.mark.parametrize("name", NAMES)
def test_a_resumed_fit_is_one_longer_fit(name):
    """state_dict after 2 steps, loaded into a new sampler fitted to 4 with another seed: the
    generator stream goes on where it stopped, so the networks equal one 4-step fit's."""
    cls = samplers.get(name)
    cfg = cls.tiny_config(None)
    t = Gauss([0.5, -0.5], 1.0)
    short = cls(dataclasses_replace(cfg, max_iters=2))
    short.fit(t, Budget(max_steps=10), torch.Generator().manual_seed(0))
    resumed = cls(dataclasses_replace(cfg, max_iters=4))
    resumed.load_state_dict(short.state_dict())
    resumed.fit(t, Budget(max_steps=10), torch.Generator().manual_seed(99))
    one = cls(dataclasses_replace(cfg, max_iters=4))
    one.fit(t, Budget(max_steps=10), torch.Generator().manual_seed(0))
    for a, b in zip(resumed.net.state_dict().values(), one.net.state_dict().values()):
        assert torch.equal(a, b)


def dataclasses_replace(cfg, **kw):
    import dataclasses
    return dataclasses.replace(cfg, **kw)


def test_first_adam_step_moves_each_parameter_by_about_lr():
    """Adam's first update is lr · g / (|g| + eps): each parameter with a gradient moves by ~lr."""
    cls = samplers.get("pis")
    s = cls(cls.Config(n_steps=3, batch_size=16, hidden=8, n_layers=1, lr=0.05, weight_decay=0.0,
                       max_iters=1))
    t = Gauss([1.0, -1.0], 0.5)

    def keep(sampler):
        return [p.detach().clone() for p in sampler.net.parameters()]
    s0 = cls(cls.Config(n_steps=3, batch_size=16, hidden=8, n_layers=1, max_iters=0))
    s0.fit(t, Budget(max_steps=1), torch.Generator().manual_seed(0))
    before = keep(s0)                        # the same initial network (same generator)
    s.fit(t, Budget(max_steps=1), torch.Generator().manual_seed(0))
    steps = torch.cat([(a - b).abs().flatten() for a, b in zip(keep(s), before)])
    moved = steps[steps > 0]
    assert moved.numel() > 0 and torch.allclose(moved, torch.full_like(moved, 0.05), rtol=0.05)


@pytest.mark.parametrize("name", NAMES)
def test_draw_chunks_add_up_to_n_and_sample_refuses_a_bad_n(name):
    cls = samplers.get(name)
    s = cls(cls.Config(n_steps=2, hidden=4, n_layers=1, sample_batch=3, max_iters=0))
    s.fit(Gauss([0.0, 0.0], 1.0), Budget(max_steps=1), torch.Generator().manual_seed(0))
    assert s.sample(5, torch.Generator()).shape == (5, 2)
    for n in (0, 2.0):
        with pytest.raises(ValueError, match=rf"^{name}: n must be a positive int, got {n!r}$"):
            s.sample(n, torch.Generator())


def test_dds_stick_the_landing_adds_the_frozen_stochastic_integral_to_the_loss():
    """The frozen copy has the live network's values, so the STL term's value is the path's
    stochastic integral Σ stoch: loss(stl) - loss(no stl) = mean Σ stoch, on the same path."""
    cls = samplers.get("dds")
    t = Gauss([1.0, -1.0], 0.8)
    losses = {}
    for stl in (True, False):
        s = _bound("dds", t, n_steps=5, sigma=1.0, stl=stl)
        with torch.no_grad():
            for p in s.net.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(3)))
        losses[stl] = float(s._loss(32, torch.Generator().manual_seed(1))[0].detach())
    _, _, stoch = s._rollout(32, torch.Generator().manual_seed(1), s._net_control)
    assert cls.Config().stl is True
    # float32 losses: allow their round-off, far below the size of the term itself
    tol = 1e-5 * max(abs(v) for v in losses.values())
    assert abs(float(stoch.mean())) > 100 * tol
    assert losses[True] - losses[False] == pytest.approx(float(stoch.mean()), abs=tol)


@pytest.mark.parametrize("name", NAMES)
def test_fit_argument_and_divergence_messages(name):
    cls = samplers.get(name)
    s = cls(cls.tiny_config(None))
    with pytest.raises(TypeError, match=rf"^{name}.fit: budget must be a Budget, got int$"):
        s.fit(Gauss([0.0], 1.0), 3, torch.Generator())
    with pytest.raises(TypeError, match=rf"^{name}.fit: generator must be a torch.Generator, "
                                        r"got int$"):
        s.fit(Gauss([0.0], 1.0), Budget(max_steps=1), 3)


def test_max_grad_norm_clips_the_gradient_before_adam():
    """Clipped to a norm of 1e-12, every gradient component is far below Adam's eps = 1e-8, so
    the first step moves each parameter by at most lr · 1e-12 / 1e-8 = lr · 1e-4."""
    cls = samplers.get("pis")
    kw = dict(n_steps=3, batch_size=16, hidden=8, n_layers=1, lr=0.05, weight_decay=0.0)
    t = Gauss([1.0, -1.0], 0.5)
    s0 = cls(cls.Config(max_iters=0, **kw))
    s0.fit(t, Budget(max_steps=1), torch.Generator().manual_seed(0))
    s = cls(cls.Config(max_iters=1, max_grad_norm=1e-12, **kw))
    s.fit(t, Budget(max_steps=1), torch.Generator().manual_seed(0))
    steps = torch.cat([(a.detach() - b.detach()).abs().flatten()
                       for a, b in zip(s.net.parameters(), s0.net.parameters())])
    assert 0 < float(steps.max()) <= 0.05 * 1e-4 * 1.01


@pytest.mark.parametrize("name", NAMES)
def test_a_budget_below_one_step_warns_with_the_cost_and_the_cap(name):
    """A cap one evaluation short of batch x (N + 1): no step runs, the one warning names that
    cost and the cap, no train_* key appears and the network is the untrained initial one."""
    cls = samplers.get(name)
    b, n = 8, 4
    cost = b * (n + 1)
    cfg = cls.Config(n_steps=n, batch_size=b, hidden=8, n_layers=1)
    s = cls(cfg)
    info = s.fit(Gauss([0.0, 0.0], 1.0), Budget(max_energy_evals=cost - 1),
                 torch.Generator().manual_seed(0))
    assert info["steps"] == 0 and len(info["warnings"]) == 1
    w = info["warnings"][0]
    assert w.startswith("budget below one training step: the samples are from the untrained model (")
    assert f"~{cost} energy" in w and str(cost - 1) in w
    assert not any(k.startswith("train_") for k in info)
    fresh = _bound(name, Gauss([0.0, 0.0], 1.0), n_steps=n, batch_size=b, hidden=8, n_layers=1)
    for a, c in zip(s.net.state_dict().values(), fresh.net.state_dict().values()):
        assert torch.equal(a, c)


@pytest.mark.parametrize("name", NAMES)
def test_max_iters_zero_warns_and_one_step_fills_the_train_keys(name):
    cls = samplers.get(name)
    cfg = cls.tiny_config(None)
    info = cls(dataclasses_replace(cfg, max_iters=0)).fit(
        Gauss([0.0, 0.0], 1.0), Budget(max_steps=10), torch.Generator().manual_seed(0))
    assert info["warnings"] == ["max_iters=0: no training step ran; the samples are from the untrained model"]
    info = cls(dataclasses_replace(cfg, max_iters=1)).fit(
        Gauss([0.0, 0.0], 1.0), Budget(max_steps=10), torch.Generator().manual_seed(0))
    assert info["steps"] == 1 and info["warnings"] == []
    assert {k for k in info if k.startswith("train_")} == {"train_loss", "train_elbo", "train_log_z", "train_ess"}
    # the first step's rollout runs under the zero-initialised control, whose weights are
    # exactly Z = 2 pi for this unnormalised unit Gaussian on R^2: all equal, ESS 1, loss -log Z
    log_z = math.log(2 * math.pi)
    assert info["train_log_z"] == pytest.approx(log_z, abs=1e-5)
    assert info["train_elbo"] == pytest.approx(log_z, abs=1e-5)
    assert info["train_loss"] == pytest.approx(-log_z, abs=1e-5)
    assert info["train_ess"] == pytest.approx(1.0, abs=1e-9)
