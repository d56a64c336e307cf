"""MCMC kernels and samplers (samplers/kernels.py, samplers/mcmc.py, samplers/smc.py): invariance of
the target under each kernel, moments with ESS-scaled tolerances, step-size adaptation frozen after
warm-up, exact energy budgets, determinism, SMC log Z against closed forms, physics of the starts.

The slow DW-4 quality check (``pytest -m slow tests/test_mcmc.py -k dw4``) compares HMC with the
reference test split by x_w2 (see ``test_dw4_hmc_reaches_the_w2_floor``)."""
from __future__ import annotations

import math

import pytest
import torch

import metrics
import samplers
import targets
from samplers import Budget, Diverged, kernels
from samplers.diagnostics import ess
from samplers.mcmc import Pool, run_chains
from samplers.starts import initial_positions, lattice_start
from targets.base import Target

ACCEPT = {"mala": 0.574, "hmc": 0.8}


@pytest.fixture(autouse=True)
def _one_thread():
    """Small per-step tensors: a second intra-op thread only adds synchronisation (40x slower on a
    loaded 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class CorrGauss(Target):
    """2-D correlated Gaussian N(m, S): E = ½ (x-m)ᵀ S⁻¹ (x-m), so log Z = ½ log det(2π S)."""

    name = "corr_gauss"
    pretty_name = "CorrGauss"
    has_exact_samples = True

    def __init__(self, mean=(1.0, -1.0), cov=((2.0, 0.8), (0.8, 1.0)), nan=False):
        super().__init__(dim=2, params={"mean": list(mean), "cov": [list(r) for r in cov]})
        self.m = torch.tensor(mean, dtype=torch.float64)
        self.S = torch.tensor(cov, dtype=torch.float64)
        self.P = torch.linalg.inv(self.S)
        self.log_Z = 0.5 * float(torch.logdet(2 * math.pi * self.S))
        self.nan = nan

    def _energy(self, x):
        d = x - self.m.to(x)
        e = 0.5 * ((d @ self.P.to(x)) * d).sum(-1)
        return e * float("nan") if self.nan else e

    def _energy_and_grad(self, x):  # closed form: keeps these tests fast
        g = (x - self.m.to(x)) @ self.P.to(x)
        return self._energy(x), g * float("nan") if self.nan else g

    def sample_exact(self, n, generator):
        z = torch.randn(n, 2, generator=generator, dtype=torch.float64)
        return self.m + z @ torch.linalg.cholesky(self.S).T


class ParticleGauss(Target):
    """N particles in D dims, E = ½ |x - x̄|² / s²: on the mean-free subspace exactly s·P ξ."""

    name = "particle_gauss"
    pretty_name = "ParticleGauss"

    def __init__(self, n_particles=4, spatial_dim=3, std=0.7):
        super().__init__(dim=n_particles * spatial_dim, params={"std": std})
        self.n_particles, self.spatial_dim, self.std = n_particles, spatial_dim, std

    def remove_mean(self, x):
        return targets.remove_mean(x, self.n_particles, self.spatial_dim)

    def _energy(self, x):
        return 0.5 * self.remove_mean(x).pow(2).sum(-1) / self.std ** 2

    def _energy_and_grad(self, x):
        return self._energy(x), self.remove_mean(x) / self.std ** 2


def _step(name, state, eg, h, gen, project=None):
    if name == "hmc":
        return kernels.hmc_step(state, eg, h, 5, gen, project)
    return getattr(kernels, f"{name}_step")(state, eg, h, gen, project)


def _ula_step(state, eg, h, gen, project=None):
    """Unadjusted Langevin: MALA's proposal always accepted (biased; the test's negative control)."""
    noise = torch.randn(state.x.shape, generator=gen, dtype=state.x.dtype)
    y = state.x - h * state.grad + math.sqrt(2 * h) * noise
    return kernels.State(y, *eg(y)), torch.ones(y.shape[0], dtype=torch.bool)


def _moments_kept(x, t, n):
    """Mean within 4.5 SE and covariance entries within 5 SE of iid draws from N(m, S)."""
    se_mean = (t.S.diagonal() / n).sqrt()
    S = t.S
    se_cov = ((S * S + S.diagonal()[:, None] * S.diagonal()[None, :]) / n).sqrt()
    return bool(((x.mean(0) - t.m).abs() < 4.5 * se_mean).all()
                and ((torch.cov(x.T) - S).abs() < 5 * se_cov).all())


# ----------------------------------------------------------------------------- kernels
@pytest.mark.parametrize("name,h", [("rwm", 1.5), ("mala", 0.6), ("hmc", 1.4)])
def test_kernel_leaves_target_invariant(name, h):
    t, gen = CorrGauss(), torch.Generator().manual_seed(0)
    n = 100_000
    state = kernels.init(t.sample_exact(n, gen), t.energy_and_grad)
    for _ in range(3):
        state, acc = _step(name, state, t.energy_and_grad, h, gen)
    assert 0.2 < float(acc.float().mean()) < 0.95  # the chains do move
    assert _moments_kept(state.x, t, n)
    assert t.counter.energy_evals == n * (1 + 3 * (5 if name == "hmc" else 1))


def test_invariance_check_catches_a_missing_mh_correction():
    t, gen = CorrGauss(), torch.Generator().manual_seed(0)
    state = kernels.init(t.sample_exact(100_000, gen), t.energy_and_grad)
    for _ in range(3):
        state, _ = _ula_step(state, t.energy_and_grad, 0.6, gen)
    assert not _moments_kept(state.x, t, 100_000)


@pytest.mark.parametrize("name,h", [("rwm", 0.5), ("mala", 0.2), ("hmc", 0.3)])
def test_projected_kernels_keep_the_mean_free_gaussian(name, h):
    t, gen = ParticleGauss(), torch.Generator().manual_seed(1)
    n = 50_000
    x0 = t.std * t.remove_mean(torch.randn(n, t.dim, generator=gen, dtype=torch.float64))
    state = kernels.init(x0, t.energy_and_grad)
    for _ in range(3):
        state, acc = _step(name, state, t.energy_and_grad, h, gen, t.remove_mean)
    xp = state.x.reshape(n, t.n_particles, t.spatial_dim)
    assert xp.mean(1).abs().max() < 1e-10
    var = state.x.var(0)  # exact: s² (N-1)/N per coordinate
    expected = t.std ** 2 * (t.n_particles - 1) / t.n_particles
    assert ((var - expected).abs() < 5 * expected * math.sqrt(2 / n)).all()
    # Without the projection the noise moves the centre of mass.
    state2, _ = _step(name, kernels.init(x0, t.energy_and_grad), t.energy_and_grad, h, gen)
    assert state2.x.reshape(n, t.n_particles, t.spatial_dim).mean(1).abs().max() > 0.01


def test_non_finite_proposals_are_rejected():
    t = CorrGauss()
    state = kernels.init(torch.zeros(4, 2), t.energy_and_grad)

    def eg(x):
        return torch.full((4,), math.inf), torch.zeros_like(x)
    new, acc = kernels.mala_step(state, eg, 0.1, torch.Generator().manual_seed(0))
    assert not acc.any() and torch.equal(new.x, state.x)


def test_resampling_and_ess():
    gen = torch.Generator().manual_seed(0)
    log_w = torch.tensor([0.0, math.log(3.0), -math.inf, 0.0])
    counts = torch.zeros(4)
    for _ in range(2000):
        counts += torch.bincount(kernels.systematic_resample(log_w, gen), minlength=4)
    assert torch.allclose(counts / counts.sum(), torch.tensor([0.2, 0.6, 0.0, 0.2]), atol=0.01)
    assert abs(float(kernels.log_ess(log_w).exp()) - 25 / 11) < 1e-5  # (1+3+1)² / (1+9+1)


# ----------------------------------------------------------------------------- samplers
@pytest.mark.parametrize("name", ["mala", "hmc"])
def test_moments_within_ess_scaled_tolerance(name):
    t, cls = CorrGauss(), samplers.get(name)
    c, steps, warm = 64, 700, 200
    s = cls(cls.Config(n_chains=c, thinning=1, warmup_fraction=warm / steps, n_leapfrog=5))
    info = s.fit(t, Budget(max_steps=steps), torch.Generator().manual_seed(3))
    assert info["warmup_steps"] == warm and info["post_warmup_steps"] == steps - warm
    draws = s.pool.double().reshape(-1, c, 2).transpose(0, 1)  # [chains, draws, 2]
    for k in range(2):
        xk = draws[..., k]
        z_mean = (xk.mean() - t.m[k]) / math.sqrt(t.S[k, k] / ess(xk.numpy(), rank=False))
        sq = (xk - t.m[k]) ** 2
        z_var = (sq.mean() - t.S[k, k]) / (sq.std() / math.sqrt(ess(sq.numpy(), rank=False)))
        assert abs(z_mean) < 4 and abs(z_var) < 4, (k, float(z_mean), float(z_var))


@pytest.mark.parametrize("name", ["mala", "hmc"])
def test_adaptation_reaches_target_acceptance(name):
    t, cls = CorrGauss(), samplers.get(name)
    s = cls(cls.Config(n_chains=256, warmup_fraction=0.5, n_leapfrog=5, step_size=0.01))
    info = s.fit(t, Budget(max_steps=400), torch.Generator().manual_seed(0))
    assert abs(info["acceptance"] - ACCEPT[name]) < 0.07, info
    assert info["step_size"] > 0.1  # moved far from the poor start 0.01
    assert s.step_size == info["step_size"]


def test_step_size_is_frozen_after_warmup():
    t = CorrGauss()
    gen = torch.Generator().manual_seed(0)
    state = kernels.init(torch.zeros(32, 2), t.energy_and_grad)
    used = []

    def step_fn(st, h):
        used.append(h)
        return kernels.mala_step(st, t.energy_and_grad, h, gen)
    adapter = kernels.Adapter(0.05, 0.574)
    out = run_chains(state, step_fn, 0.05, Budget(max_steps=60).start(t), 32, Pool(10_000), 1,
                     adapter, warm_steps=30)
    assert out["warmup_steps"] == 30 and out["post_warmup_steps"] == 30
    assert len(set(used[:30])) > 10  # adapting
    assert set(used[30:]) == {adapter.final()} == {out["step_size"]}  # frozen


def test_rwm_uses_the_blog_step_sizes_unadapted():
    for tname, h in [("gmm40", 1.25), ("dw4", 0.5)]:
        s = samplers.get("rwm")(samplers.get("rwm").Config(n_chains=16))
        info = s.fit(targets.get(tname), Budget(max_steps=20), torch.Generator().manual_seed(0))
        assert info["step_size"] == h and info["adapted"] is False


@pytest.mark.parametrize("name,per_step", [("mala", 16), ("rwm", 16), ("hmc", 48)])
def test_energy_budget_is_exact(name, per_step):
    cls = samplers.get(name)
    t = CorrGauss()
    s = cls(cls.Config(n_chains=16, n_leapfrog=3))
    cap = 16 + 10 * per_step + per_step - 1  # init + 10 steps + not quite an 11th
    info = s.fit(t, Budget(max_energy_evals=cap), torch.Generator().manual_seed(0))
    assert info["steps"] == 10
    assert t.counter.energy_evals == t.counter.grad_evals == 16 + 10 * per_step == info["energy_evals"]
    # DW-4 adds the quench (50 steps x 16 chains) inside the same cap.
    dw4 = targets.get("dw4")
    info = cls(cls.Config(n_chains=16, n_leapfrog=3)).fit(
        dw4, Budget(max_energy_evals=800 + cap), torch.Generator().manual_seed(0))
    assert info["quench_steps"] == 50 and info["steps"] == 10
    assert dw4.counter.energy_evals == 800 + 16 + 10 * per_step


def test_smc_budget_and_truncation():
    t = CorrGauss()
    s = samplers.get("smc")(samplers.get("smc").Config(n_chains=32, steps_per_temp=5, prior_scale=3.0))
    info = s.fit(t, Budget(max_energy_evals=32 * 8 + 7), torch.Generator().manual_seed(0))
    # prior draws + one temperature of 5 moves; the next would overshoot, so the population jumps
    # to beta = 1 and the remaining 71 evaluations buy 2 MCMC steps at the target.
    assert t.counter.energy_evals == 32 * 8
    assert info["schedule_truncated"] and info["smc_steps"] == 5 and info["mcmc_steps"] == 2
    assert math.isfinite(info["log_z"])


def test_budget_binding_and_below_one_step_warning():
    cls, t = samplers.get("mala"), CorrGauss()
    cfg = cls.Config(n_chains=16)
    info = cls(cfg).fit(t, Budget(max_energy_evals=16 + 15), torch.Generator().manual_seed(0))
    # The chains' starts were evaluated, no transition fits: the starts are the samples, and say so.
    assert info["steps"] == 0 and info["budget_binding"] == "energy_evals"
    assert info["warnings"][0].startswith("budget below one MCMC step: the samples are the "
                                          "chains' starting points (one MCMC step costs ~16")
    assert math.isnan(info["acceptance_mean"])
    info = cls(cfg).fit(t, Budget(max_steps=40, max_energy_evals=10**6),
                        torch.Generator().manual_seed(0))
    assert info["budget_binding"] == "steps" and info["warnings"] == []


def test_dw4_quench_stops_on_max_seconds():
    """The quench (50 steps x n_chains on DW-4) is not a step but must not outlive max_seconds."""
    dw4, cls = targets.get("dw4"), samplers.get("mala")
    e0 = dw4.counter.energy_evals
    info = cls(cls.Config(n_chains=16)).fit(dw4, Budget(max_seconds=1e-9),
                                            torch.Generator().manual_seed(0))
    assert info["quench_steps"] == 0 and info["steps"] == 0
    assert dw4.counter.energy_evals - e0 == 16  # the initial evaluation only
    assert info["budget_binding"] == "seconds"


def test_acceptance_health_is_per_chain_over_the_frozen_phase():
    t, cls = CorrGauss(), samplers.get("mala")
    info = cls(cls.Config(n_chains=64, thinning=1)).fit(t, Budget(max_steps=200),
                                                        torch.Generator().manual_seed(0))
    assert info["post_warmup_steps"] == 100
    assert info["acceptance_mean"] == pytest.approx(info["acceptance"])
    assert info["acceptance_min"] == pytest.approx(info["acceptance_min_chain"])
    assert 0 < info["acceptance_min"] < info["acceptance_mean"] < 1
    # The budget ends inside warm-up (no frozen phase): the whole run counts.
    gen = torch.Generator().manual_seed(0)
    state = kernels.init(torch.zeros(8, 2), t.energy_and_grad)
    accepted = []

    def step_fn(st, h):
        st, acc = kernels.mala_step(st, t.energy_and_grad, h, gen)
        accepted.append(acc.float())
        return st, acc
    out = run_chains(state, step_fn, 0.5, Budget(max_steps=30).start(t), 8, Pool(100), 1,
                     kernels.Adapter(0.5, 0.574), warm_steps=1000)
    rates = torch.stack(accepted).mean(0)
    assert out["post_warmup_steps"] == 0 and out["acceptance"] is None
    assert out["acceptance_mean"] == pytest.approx(float(rates.mean()))
    assert out["acceptance_min"] == pytest.approx(float(rates.min()))


def test_determinism_and_seed_dependence():
    t = CorrGauss()
    for name in ("hmc", "smc"):
        cls = samplers.get(name)
        out = []
        for seed in (5, 5, 6):
            s = cls(cls.tiny_config(t))
            info = s.fit(t, Budget(max_steps=30), torch.Generator().manual_seed(seed))
            out.append((s.sample(40, torch.Generator().manual_seed(1)), info.get("log_z")))
        assert torch.equal(out[0][0], out[1][0]) and out[0][1] == out[1][1]
        assert not torch.equal(out[0][0], out[2][0])


def test_smc_log_z_on_gaussian_and_gmm():
    t = CorrGauss()
    s = samplers.get("smc")(samplers.get("smc").Config(
        n_chains=2000, cess_fraction=0.9, prior_scale=3.0, steps_per_temp=5, continue_mcmc=False))
    info = s.fit(t, Budget(max_energy_evals=10**6), torch.Generator().manual_seed(0))
    assert info["n_temps"] >= 3 and not info["schedule_truncated"]
    assert abs(info["log_z"] - t.log_Z) < 0.1, (info["log_z"], t.log_Z)  # sd ≈ 0.02 here
    x = s.sample(2000, torch.Generator().manual_seed(0)).double()
    assert ((x.mean(0) - t.m).abs() < 0.15).all()
    gmm = targets.get("gmm40")  # normalised: log Z = 0; prior U([-45, 45]^2)
    s = samplers.get("smc")(samplers.get("smc").Config(n_chains=2000, steps_per_temp=10,
                                                      continue_mcmc=False))
    info = s.fit(gmm, Budget(max_energy_evals=10**7), torch.Generator().manual_seed(0))
    assert abs(info["log_z"]) < 0.15 and info["prior"] == "uniform(45)"


# ----------------------------------------------------------------------------- starts, errors
@pytest.mark.parametrize("tname", ["lj13", "lj55"])
def test_lattice_start_is_compact_without_overlaps(tname):
    t = targets.get(tname)
    x = lattice_start(t, 64, 0.05, torch.Generator().manual_seed(0))
    xp = t.particles(x)
    d = torch.cdist(xp, xp) + 10 * torch.eye(t.n_particles)
    assert xp.mean(1).abs().max() < 1e-5
    assert d.min() > 0.6 and d.min(-1).values.max() < 1.3  # nearest neighbours ≈ 1 (LJ minimum)
    e = t.energy(x)
    assert torch.isfinite(e).all() and e.max() < (-10 if tname == "lj13" else -100)


def test_prior_start_covers_the_gmm_box():
    x = initial_positions(targets.get("gmm40"), 5000, "prior", 45.0, torch.Generator().manual_seed(0))
    assert x.abs().max() <= 45 and x.abs().max() > 44 and x.std(0).min() > 24  # U[-45,45]: std 26


@pytest.mark.slow
def test_lj13_hmc_reaches_the_reference_energy_range():
    t = targets.get("lj13")
    s = samplers.get("hmc")(samplers.get("hmc").Config(n_chains=128))
    s.fit(t, Budget(max_energy_evals=2_000_000), torch.Generator().manual_seed(0))
    e = t.energy(s.sample(1000, torch.Generator().manual_seed(1)))
    assert -46 < float(e.mean()) < -40 and 5 < float(e.std()) < 9  # test split: -43.1 ± 7.0


def test_errors():
    mala = samplers.get("mala")
    with pytest.raises(ValueError, match="n_chains"):
        mala(mala.Config(n_chains=0))
    with pytest.raises(ValueError, match="init"):
        mala(mala.Config(init="grid"))
    with pytest.raises(ValueError, match="kernel"):
        samplers.get("smc")(samplers.get("smc").Config(kernel="hmc"))
    with pytest.raises(RuntimeError, match="fit"):
        mala().sample(3, torch.Generator())
    with pytest.raises(ValueError, match="device"):
        mala(mala.Config(device="gpu0"))
    if not torch.cuda.is_available():  # never a silent CPU fallback
        with pytest.raises(ValueError, match="device: got .cuda. but torch.cuda.is_available"):
            samplers.get("smc")(samplers.get("smc").Config(device="cuda"))
    with pytest.raises(ValueError, match="n_chains"):
        mala().fit(CorrGauss(), Budget(max_energy_evals=10), torch.Generator())
    for name in ("mala", "hmc", "rwm", "smc"):
        cls = samplers.get(name)
        with pytest.raises(Diverged):
            cls(cls.tiny_config(None)).fit(CorrGauss(nan=True), Budget(max_steps=5),
                                           torch.Generator().manual_seed(0))


# ----------------------------------------------------------------------------- quality (slow)
def _symmetrised(x, target, gen):
    """Same Boltzmann law, fresh orientation and labels: uniform rotation and permutation (2-D)."""
    n = x.shape[0]
    th = torch.rand(n, generator=gen, dtype=x.dtype) * 2 * math.pi
    rot = torch.stack([torch.stack([th.cos(), -th.sin()], -1), torch.stack([th.sin(), th.cos()], -1)], -2)
    p = target.particles(x) @ rot.transpose(-1, -2)
    perm = torch.argsort(torch.rand(n, target.n_particles, generator=gen), 1)
    return torch.gather(p, 1, perm[..., None].expand(-1, -1, 2)).reshape(n, -1)


@pytest.mark.slow
def test_dw4_hmc_reaches_the_w2_floor():
    """HMC, 1024 chains, 2e6 energy evaluations (~4 s on one core) vs the DW-4 test split, five
    batches of 1000. Floors with the same code: val vs test ≈ 1.79 (optimistic: val and test come
    from the same chains and share their orientation/labelling bias, reference-idem.md §6.12);
    val symmetrised by random rotations and relabellings (still exact for the target, like any
    correct sampler's output) vs test ≈ 2.08. The sampler must be within 10% of the latter and
    within 10% of the symmetrised-vs-symmetrised floor when compared with a symmetrised test split."""
    t = targets.get("dw4")
    w2 = metrics.get("x_w2")
    val, test = t.reference("val"), t.reference("test")

    def idx(seed):
        return torch.randperm(test.shape[0], generator=torch.Generator().manual_seed(seed))[:1000]
    s = samplers.get("hmc")(samplers.get("hmc").Config(n_chains=1024))
    s.fit(t, Budget(max_energy_evals=2_000_000), torch.Generator().manual_seed(0))
    ours, floor_raw, floor_sym, ours_sym, floor_sym_sym = [], [], [], [], []
    for i in range(5):
        g = torch.Generator().manual_seed(50 + i)
        ref, x = test[idx(100 + i)], s.sample(1000, torch.Generator().manual_seed(i))
        ref_sym = _symmetrised(ref, t, torch.Generator().manual_seed(70 + i))
        ours.append(w2(x, ref, t))
        ours_sym.append(w2(x, ref_sym, t))
        floor_raw.append(w2(val[idx(i)], ref, t))
        floor_sym.append(w2(_symmetrised(val[idx(i)], t, g), ref, t))
        floor_sym_sym.append(w2(_symmetrised(val[idx(i)], t, g), ref_sym, t))
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    print(f"DW-4 x_w2 (5 batches of 1000): hmc vs test {mean(ours):.3f}; floors val vs test "
          f"{mean(floor_raw):.3f}, sym(val) vs test {mean(floor_sym):.3f}; hmc vs sym(test) "
          f"{mean(ours_sym):.3f}, sym(val) vs sym(test) {mean(floor_sym_sym):.3f}")
    assert 1.7 < mean(floor_raw) < 1.9
    assert mean(ours) < 1.1 * mean(floor_sym), (mean(ours), mean(floor_sym), mean(floor_raw))
    assert mean(ours_sym) < 1.1 * mean(floor_sym_sym), (mean(ours_sym), mean(floor_sym_sym))


def test_smc_fixed_schedule_visits_the_equally_spaced_temperatures_and_estimates_log_z():
    """The blog protocol's fixed schedule: n_fixed_temps reweightings, β_k = k/K, and an
    unbiased-enough log Z on a Gaussian with a closed-form normaliser."""
    from samplers.smc import SMC, SMCConfig
    t = CorrGauss()
    cfg = SMCConfig(n_chains=2000, schedule="fixed", n_fixed_temps=5, kernel="rwm",
                    steps_per_temp=20, prior_scale=3.0, continue_mcmc=False)
    info = SMC(cfg).fit(t, Budget(max_energy_evals=10**7), torch.Generator().manual_seed(0))
    assert info["n_temps"] == 5 and not info["schedule_truncated"]
    assert abs(info["log_z"] - t.log_Z) < 0.1


def test_smc_schedule_names_are_validated():
    from samplers.smc import SMCConfig
    with pytest.raises(ValueError, match="schedule"):
        SMCConfig(schedule="geometric").validate()
    with pytest.raises(ValueError, match="n_fixed_temps"):
        SMCConfig(n_fixed_temps=0).validate()
