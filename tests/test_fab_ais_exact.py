"""FAB's AIS rounds inside ``fit`` replayed draw for draw by a float64 numpy transcription.

The transcription is written from the module docstring of samplers/fab.py and the paper
(Midgley et al. 2023, Alg. 1): x_0 ~ q, intermediates pi_b ∝ q^(1-2b) p̃^(2b), b = k/(K+1),
log w = Σ_k (b_k - b_(k-1)) 2 [log p̃ - log q](x_(k-1)), one HMC move per intermediate (unit mass,
``n_leapfrog`` leapfrog steps, MH with min(1, e^(H0-H1)), non-finite proposals rejected) or
fab-torch's random-walk Metropolis (steps in data units). It does not call fab.py: the flow is the
zero-initialised RealNVP, whose density is its standard normal base, so log q(u) = -|u|²/2 -
d/2 log 2π and ∇ log q = -u in closed form; the targets' energies and gradients are written out
in numpy (a test target with an energy wall, and DW-4 on the Helmert basis, x = sigma u Bᵀ,
log p̃(u) = -E(x) + d log sigma). Step sizes follow Hoffman & Gelman's dual averaging, transcribed
here too. The only thing shared with the code is the generator stream (the same draws in the
same order: flow noise in float32, then per move the momentum / proposal noise and one uniform
per chain), recorded by a wrapper around ``FAB._ais`` at the start of each round. The code's b
come from a float32 ``torch.linspace`` (1e-8 from k/(K+1)), hence the tolerances 1e-5 (relative)
and 1e-4 (absolute).
"""
import math

import numpy as np
import pytest
import torch

import samplers
import targets
from samplers.base import Budget
from samplers.fab import FABConfig
from samplers.realnvp import helmert_basis
from targets.base import Target

WALL = 2.5   # the test target's energy is +inf for x_0 > WALL


class WallTarget(Target):
    """E(x) = ½ Σ ((x - c)/s)² + 0.1 Σ x⁴, +inf where x_0 > ``wall`` (some AIS weights are 0)."""

    name = "t_fab_wall"
    pretty_name = "Wall-2D"
    C, S = np.array([0.7, -0.4]), np.array([0.9, 1.3])

    def __init__(self, wall=WALL):
        super().__init__(2, {"wall": wall})
        self.wall = wall

    def _energy_and_grad(self, x):
        c, s = torch.tensor(self.C).to(x), torch.tensor(self.S).to(x)
        e = (0.5 * ((x - c) / s) ** 2 + 0.1 * x ** 4).sum(-1)
        e = torch.where(x[..., 0] > self.wall, torch.full_like(e, math.inf), e)
        return e, (x - c) / s ** 2 + 0.4 * x ** 3

    def _energy(self, x):
        return self._energy_and_grad(x)[0]


def wall_energy_and_grad(x):
    e = (0.5 * ((x - WallTarget.C) / WallTarget.S) ** 2 + 0.1 * x ** 4).sum(-1)
    e = np.where(x[:, 0] > WALL, np.inf, e)
    return e, (x - WallTarget.C) / WallTarget.S ** 2 + 0.4 * x ** 3


def dw4_energy_and_grad(x):
    """DW-4 (a = 0.9, b = -4, offset 4) with its gradient, by hand."""
    p = x.reshape(len(x), 4, 2)
    diff = p[:, :, None, :] - p[:, None, :, :]
    d = np.sqrt((diff ** 2).sum(-1) + np.eye(4))          # eye: no 0/0 on the diagonal
    r = d - 4.0
    iu = np.triu_indices(4, 1)
    e = (0.9 * r ** 4 - 4.0 * r ** 2)[:, iu[0], iu[1]].sum(-1)
    de_dd = (3.6 * r ** 3 - 8.0 * r) * (1 - np.eye(4))
    g = (de_dd[..., None] * diff / d[..., None]).sum(2)
    return e, g.reshape(len(x), 8)


class Maps:
    """u <-> x and log p̃(u), ∇_u log p̃ for flow coordinates u (basis B or identity)."""

    def __init__(self, energy_and_grad, sigma, basis=None):
        self.eg, self.sigma, self.basis = energy_and_grad, sigma, basis

    def log_p(self, u):
        y = self.sigma * u
        x = y if self.basis is None else y @ self.basis.T
        e, g = self.eg(x)
        g = g if self.basis is None else g @ self.basis
        return -e + u.shape[1] * math.log(self.sigma), -self.sigma * g


def log_q(u):
    return -0.5 * (u ** 2).sum(1) - 0.5 * u.shape[1] * math.log(2 * math.pi), -u


class DualAveraging:
    """Hoffman & Gelman 2014, Alg. 5 (gamma 0.05, t0 10, kappa 0.75, mu = log 10 h0)."""

    def __init__(self, h0, target):
        self.t, self.h_bar, self.mu, self.target, self.h = 0, 0.0, math.log(10 * h0), target, h0

    def update(self, accept):
        self.t += 1
        w = 1 / (self.t + 10)
        self.h_bar = (1 - w) * self.h_bar + w * (self.target - accept)
        self.h = math.exp(self.mu - math.sqrt(self.t) / 0.05 * self.h_bar)
        return self.h


def replay_hmc_round(g, n, d, maps, betas, steps, n_leapfrog):
    """One AIS round with HMC; ``steps`` per intermediate; returns u, log w, accept rates."""
    u = torch.randn(n, d, generator=g).double().numpy()
    lp, gp = maps.log_p(u)
    lq, gq = log_q(u)
    log_w, b_prev, accepts = np.zeros(n), 0.0, []
    for k, b in enumerate(betas):
        log_w = log_w + (b - b_prev) * 2 * (lp - lq)
        b_prev = b
        if k == len(betas) - 1:
            break

        def energy(v):
            lpv, gpv = maps.log_p(v)
            lqv, gqv = log_q(v)
            return -(1 - 2 * b) * lqv - 2 * b * lpv, -(1 - 2 * b) * gqv - 2 * b * gpv

        e0, grad0 = energy(u)
        eps = steps[k]
        p0 = torch.randn(n, d, generator=g, dtype=torch.float64).numpy()
        x, p = u.copy(), p0 - 0.5 * eps * grad0
        for i in range(n_leapfrog):
            x = x + eps * p
            e, grad = energy(x)
            p = p - (eps if i < n_leapfrog - 1 else 0.5 * eps) * grad
        uniform = torch.rand(n, generator=g, dtype=torch.float64).numpy()
        with np.errstate(invalid="ignore", divide="ignore"):   # inf - inf in the wall
            log_ratio = (e0 + 0.5 * (p0 ** 2).sum(1)) - (e + 0.5 * (p ** 2).sum(1))
            ok = np.isfinite(e) & np.isfinite(grad).all(1) & np.isfinite(log_ratio)
            acc = ok & (np.log(uniform) < np.where(ok, log_ratio, 0.0))
        u = np.where(acc[:, None], x, u)
        lp, gp = maps.log_p(u)
        lq, gq = log_q(u)
        accepts.append(acc.mean())
    return u, log_w, accepts


class Recorder:
    """Wraps ``FAB._ais`` on one instance: the generator state and the step sizes at each call,
    and what it returned."""

    def __init__(self, sampler, monkeypatch, attr="step_sizes"):
        self.calls, orig = [], sampler._ais

        def wrapped(n, generator):
            state = generator.get_state()
            steps = [list(s) if isinstance(s, list) else s for s in getattr(sampler, attr)]
            out = orig(n, generator)
            self.calls.append((n, state, steps, out))
            return out

        monkeypatch.setattr(sampler, "_ais", wrapped)


def _fit_rounds(cfg, target, rounds, monkeypatch, attr="step_sizes", moves=None):
    s = samplers.get("fab")(cfg)
    rec = Recorder(s, monkeypatch, attr)
    moves = cfg.n_leapfrog if moves is None else moves
    cost = cfg.batch_size * (1 + cfg.n_intermediate * moves)
    info = s.fit(target, Budget(max_energy_evals=rounds * cost + cost - 1),
                 torch.Generator().manual_seed(3))
    assert info["ais_rounds"] == rounds and info["energy_evals"] == rounds * cost
    assert info["steps"] == 0 and info["budget_binding"] == "energy_evals"
    return s, info, rec.calls


@pytest.mark.parametrize("case", ["wall", "dw4"])
def test_hmc_ais_rounds_match_the_float64_transcription(case, monkeypatch):
    """Two AIS rounds (no training: buffer_min is not reached): samples, log-weights, the buffer
    (finite-weight points only, with log q), acceptance and dual-averaged step sizes."""
    if case == "wall":
        target, sigma, h0 = WallTarget(), 1.7, 0.08
        maps, d = Maps(wall_energy_and_grad, sigma), 2
    else:
        target, sigma, h0 = targets.get("dw4"), 1.3, 0.12
        basis = helmert_basis(4, 2).double().numpy()
        maps, d = Maps(dw4_energy_and_grad, sigma, basis), 6
    n, K, L = 64, 2, 3
    cfg = FABConfig(sigma=sigma, n_layers=2, hidden=8, batch_size=n, buffer_min=512,
                    buffer_size=512, n_updates_per_ais=1, n_intermediate=K, n_leapfrog=L,
                    step_size=h0, target_accept=0.9, dtype="float64")
    # three rounds: dual averaging's first update jumps towards 10 h0, its second comes back
    s, info, calls = _fit_rounds(cfg, target, 3, monkeypatch)
    betas = [1 / 3, 2 / 3, 1.0]
    adapters = [DualAveraging(h0, 0.9) for _ in range(K)]
    steps = [h0] * K
    g = torch.Generator()
    kept_u, kept_w, mixed = [], [], np.zeros(K, bool)
    for n_call, state, used_steps, (u_out, lw_out) in calls:
        assert n_call == n and used_steps == pytest.approx(steps, rel=1e-12)
        g.set_state(state)
        u, log_w, accepts = replay_hmc_round(g, n, d, maps, betas, steps, L)
        steps = [a.update(r) for a, r in zip(adapters, accepts)]
        np.testing.assert_allclose(u_out.numpy(), u, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(lw_out.numpy(), log_w, rtol=1e-5, atol=1e-4)
        keep = np.isfinite(log_w)
        kept_u.append(u[keep]), kept_w.append(log_w[keep])
        mixed |= (0.05 < np.array(accepts)) & (np.array(accepts) < 0.95)
    assert mixed.all()       # every move accepted some chains and rejected others in some round
    if case == "wall":
        assert (~np.isfinite(calls[0][3][1].numpy())).sum() >= 2   # chains started in the wall
    assert info["ais_accept"] == pytest.approx(accepts, abs=1e-12)
    assert info["hmc_step_sizes"] == pytest.approx(steps, rel=1e-12)
    assert info["buffer"] == sum(len(w) for w in kept_w)
    assert info["train_ais_log_z2"] == pytest.approx(
        np.logaddexp.reduce(log_w) - math.log(n), rel=1e-6)
    buf_u, buf_lw, buf_lq = s.state_dict()["buffer"]
    u_all = np.concatenate(kept_u)
    np.testing.assert_allclose(buf_u.numpy(), u_all, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(buf_lw.numpy(), np.concatenate(kept_w), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(buf_lq.numpy(), log_q(u_all)[0], rtol=1e-5, atol=1e-4)


def replay_metropolis_round(u, maps, lq_fn, betas, steps, scale, target_accept, adapt, g):
    """One AIS round with random-walk Metropolis from ``u`` (the flow's draws); ``steps[k]`` in
    data units, ``scale`` data units per unit of u (sigma for the RealNVP, 1 for se3_aug)."""

    def log_pi(v, b):
        return (1 - 2 * b) * lq_fn(v) + 2 * b * maps.log_p(v)[0]

    log_w, b_prev, accepts, new_steps = np.zeros(len(u)), 0.0, [], []
    for k, b in enumerate(betas):
        log_w = log_w + (b - b_prev) * 2 * (maps.log_p(u)[0] - lq_fn(u))
        b_prev = b
        if k == len(betas) - 1:
            break
        acc_k, new_k = [], []
        for s in steps[k]:
            y = u + s / scale * torch.randn(u.shape, generator=g, dtype=torch.float64).numpy()
            with np.errstate(invalid="ignore"):
                ratio = log_pi(y, b) - log_pi(u, b)
            ratio = np.where(np.isfinite(ratio), ratio, -np.inf)
            uniform = torch.rand(len(u), generator=g, dtype=torch.float64).numpy()
            take = np.log(uniform) < ratio
            u = np.where(take[:, None], y, u)
            acc_k.append(take.mean())
            prob = np.exp(np.minimum(ratio, 0.0)).mean()
            new_k.append(s * 1.05 if prob > target_accept else s / 1.05)
        accepts.append(np.mean(acc_k))
        new_steps.append(new_k if adapt else list(steps[k]))
    return u, log_w, accepts, new_steps


@pytest.mark.parametrize("adapt", [True, False])
def test_metropolis_ais_rounds_match_the_float64_transcription(adapt, monkeypatch):
    """The Metropolis branch of ``_ais``: proposals of std metropolis_step in data units (so
    metropolis_step / sigma in u), the accepted fraction per intermediate, fab-torch's x / ÷ 1.05
    rule per intermediate and step when ``metropolis_adapt``, one energy evaluation per move."""
    sigma, n, K, M = 1.7, 64, 2, 2
    maps = Maps(wall_energy_and_grad, sigma)
    cfg = FABConfig(sigma=sigma, n_layers=2, hidden=8, batch_size=n, buffer_min=512,
                    buffer_size=512, n_updates_per_ais=1, n_intermediate=K, dtype="float64",
                    transition="metropolis", n_metropolis=M, metropolis_step=1.2,
                    metropolis_adapt=adapt, target_accept=0.5)
    s, info, calls = _fit_rounds(cfg, WallTarget(), 2, monkeypatch, attr="rw_steps", moves=M)
    steps = [[1.2] * M for _ in range(K)]
    g = torch.Generator()
    for _, state, used_steps, (u_out, lw_out) in calls:
        assert used_steps == steps
        g.set_state(state)
        u0 = torch.randn(n, 2, generator=g).double().numpy()
        u, log_w, accepts, steps = replay_metropolis_round(
            u0, maps, lambda v: log_q(v)[0], [1 / 3, 2 / 3, 1.0], steps, sigma, 0.5, adapt, g)
        np.testing.assert_allclose(u_out.numpy(), u, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(lw_out.numpy(), log_w, rtol=1e-5, atol=1e-4)
        assert 0.1 < min(accepts) and max(accepts) < 0.95
    assert info["ais_accept"] == pytest.approx(accepts, abs=1e-12)
    assert info["metropolis_steps"] == [pytest.approx(k, rel=1e-12) for k in steps]
    if adapt:   # the rule moved at least one size, and not all the same way
        assert any(abs(h - 1.2) > 1e-9 for k in steps for h in k)


class AugMaps:
    """se3_aug's joint target in u = [x in the Helmert basis, a]: -E_DW4(x) + log N(a; x, s² I)."""

    def __init__(self, aug_scale):
        self.basis, self.s = helmert_basis(4, 2).double().numpy(), aug_scale

    def log_p(self, u):
        x = u[:, :6] @ self.basis.T
        a = u[:, 6:]
        aux = -0.5 * ((a - x) / self.s) ** 2 - math.log(self.s) - 0.5 * math.log(2 * math.pi)
        return -dw4_energy_and_grad(x)[0] + aux.sum(1), None


def test_se3_aug_metropolis_ais_works_in_data_units(monkeypatch):
    """With the augmented flow, u is in data units (no sigma), the target is the joint
    p̃(x) N(a; x, aug_scale²) and log q the flow's exact joint density."""
    cfg = FABConfig(flow="se3_aug", n_layers=1, hidden=8, egnn_blocks=1, egnn_features=8,
                    batch_size=32, buffer_min=256, buffer_size=256, n_intermediate=2,
                    transition="metropolis", n_metropolis=2, metropolis_step=0.15,
                    aug_scale=0.3, dtype="float64", sigma=1.5, n_updates_per_ais=1)
    s, info, calls = _fit_rounds(cfg, targets.get("dw4"), 1, monkeypatch, attr="rw_steps", moves=2)
    (n, state, used, (u_out, lw_out)), = calls
    assert used == [[0.15, 0.15], [0.15, 0.15]]
    g = torch.Generator()
    g.set_state(state)
    with torch.no_grad():
        u0 = s.flow.sample(n, g)[0].numpy()      # the flow's own draws (samplers/se3_flow.py)

    def lq_fn(v):
        with torch.no_grad():
            return s.flow.log_prob(torch.from_numpy(v)).numpy()

    u, log_w, accepts, _ = replay_metropolis_round(u0, AugMaps(0.3), lq_fn, [1 / 3, 2 / 3, 1.0],
                                                   used, 1.0, 0.65, False, g)
    np.testing.assert_allclose(u_out.numpy(), u, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(lw_out.numpy(), log_w, rtol=1e-5, atol=1e-4)
    assert 0.05 < min(accepts) and max(accepts) < 0.95
    assert info["ais_accept"] == pytest.approx(accepts, abs=1e-12)
