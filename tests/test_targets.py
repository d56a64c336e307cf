"""Targets: registry, official constants, physics (symmetries, pair minimum, equipartition),
reference data (checksums, centring), evaluation counting."""
from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch

import targets
from targets.data import ReferenceDataError
from targets.particles import lennard_jones_pair

PARTICLE_TARGETS = ["dw4", "lj13", "lj55"]


# ----------------------------------------------------------------------------- official formulas
# Independent transcriptions of what the official iDEM code computes (reference-idem.md §2),
# written the way that code does it (cdist upper triangle; ordered-pair distance vectors).
def official_dw4(x):
    xp = x.reshape(-1, 4, 2)
    d = torch.cdist(xp, xp)
    i, j = torch.triu_indices(4, 4, 1)
    d = d[:, i, j]
    return (0.9 * (d - 4) ** 4 - 4 * (d - 4) ** 2).sum(-1)


def official_lj(x, n, energy_factor=1.0, osc=1.0):
    xp = x.reshape(-1, n, 3)
    r = xp[:, :, None, :] - xp[:, None, :, :]
    mask = ~torch.eye(n, dtype=torch.bool)
    r = r[:, mask]  # all ordered pairs i != j
    d = (r.pow(2).sum(-1) + 1e-6).sqrt()
    lj = ((1 / d) ** 12 - 2 * (1 / d) ** 6).sum(-1) * energy_factor
    c = xp - xp.mean(1, keepdim=True)
    return lj + osc * 0.5 * c.pow(2).sum((-2, -1))


def random_rotation(d, gen, dtype=torch.float64):
    q, r = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=dtype))
    q = q * torch.sign(torch.diagonal(r))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


# ----------------------------------------------------------------------------- registry
def test_registry_names_and_unknown_name():
    assert targets.names() == ["gmm40", "dw4", "lj13", "lj55"]
    with pytest.raises(KeyError) as err:
        targets.get("lj-13")
    assert "'lj-13'" in str(err.value) and "gmm40, dw4, lj13, lj55" in str(err.value)


@pytest.mark.parametrize("name,dim,n,d", [("gmm40", 2, None, None), ("dw4", 8, 4, 2),
                                           ("lj13", 39, 13, 3), ("lj55", 165, 55, 3)])
def test_shapes_and_declared_attributes(name, dim, n, d, gen):
    t = targets.get(name)
    assert (t.dim, t.n_particles, t.spatial_dim) == (dim, n, d)
    x = torch.randn(3, 5, dim, generator=gen) * 2
    e = t.energy(x)
    assert e.shape == (3, 5)
    assert t.score(x).shape == x.shape


def independent_log_prob(name, x):
    """log p~ from formulas that share no code with targets/: torch.distributions for GMM-40
    (FAB's construction: 40 equal-weight isotropic components, std softplus(1)), the official
    transcriptions above for the particle targets."""
    if name == "gmm40":
        g = torch.Generator().manual_seed(0)
        means = ((torch.rand(40, 2, generator=g) - 0.5) * 80).double()
        std = math.log1p(math.e)  # softplus(1.0)
        mix = torch.distributions.MixtureSameFamily(
            torch.distributions.Categorical(torch.ones(40, dtype=torch.float64)),
            torch.distributions.Independent(torch.distributions.Normal(means, std), 1))
        return mix.log_prob(x)
    if name == "dw4":
        return -official_dw4(x)
    return -official_lj(x, 13 if name == "lj13" else 55)


@pytest.mark.parametrize("name", ["gmm40", "dw4", "lj13", "lj55"])
def test_log_prob_and_score_match_independent_formulas(name, gen):
    """log_prob against an independent density and score against autograd of that density
    (replaces a check of log_prob == -energy, which compared the definition with itself)."""
    t = targets.get(name)
    scale = 20.0 if name == "gmm40" else (t.n_particles ** (1 / 3) if name != "dw4" else 2.0)
    x = (torch.randn(64, t.dim, generator=gen) * scale).double()
    ref = independent_log_prob(name, x)
    tol = 1e-4 * max(1.0, float(ref.abs().max()))
    assert torch.allclose(t.log_prob(x), ref, rtol=1e-5, atol=tol)
    xr = x.clone().requires_grad_(True)
    want = torch.autograd.grad(independent_log_prob(name, xr).sum(), xr)[0]
    gtol = 1e-4 * max(1.0, float(want.abs().max()))
    assert torch.allclose(t.score(x), want, rtol=1e-4, atol=gtol)


def test_bad_input_is_named():
    t = targets.get("lj13")
    with pytest.raises(ValueError, match=r"\[\.\.\., 39\].*\(4, 38\)"):
        t.energy(torch.zeros(4, 38))
    with pytest.raises(ValueError, match="floating point"):
        t.energy(torch.zeros(4, 39, dtype=torch.long))


def test_counters_charge_per_configuration(gen):
    t = targets.get("dw4")
    t.energy(torch.randn(7, 3, 8, generator=gen))
    assert t.counter.energy_evals == 21 and t.counter.grad_evals == 0
    t.energy_and_grad(torch.randn(5, 8, generator=gen))
    t.score(torch.randn(2, 8, generator=gen))
    assert t.counter.snapshot() == {"energy_evals": 28, "grad_evals": 7}


def test_fingerprint_stable_and_sensitive():
    assert targets.get("lj13").fingerprint == targets.get("lj13").fingerprint
    assert targets.get("lj13").fingerprint != targets.get("lj13", convention="paper").fingerprint
    assert len({targets.get(n).fingerprint for n in targets.names()}) == 4


# ----------------------------------------------------------------------------- GMM-40
def test_gmm_means_match_torch_manual_seed_0_and_documented_values():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        expected = (torch.rand(40, 2) - 0.5) * 80
    t = targets.get("gmm40")
    assert torch.equal(t.means, expected)
    assert torch.allclose(t.means[0], torch.tensor([-0.2995, 21.4577]), atol=1e-4)
    assert torch.allclose(t.means[39], torch.tensor([3.6797, -25.0242]), atol=1e-4)
    assert t.std == pytest.approx(math.log1p(math.e), abs=1e-12)  # softplus(1.0) = 1.31326


def test_gmm_density_integrates_to_one():
    t = targets.get("gmm40")
    h = 0.05
    g = torch.arange(-50, 50, h, dtype=torch.float64) + h / 2
    xx = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    mass = sum(torch.exp(t.log_prob(c)).sum().item() for c in xx.split(400_000)) * h * h
    assert mass == pytest.approx(1.0, abs=1e-6)


def test_gmm_closed_form_gradient_matches_autograd(gen):
    t = targets.get("gmm40")
    x = (torch.rand(64, 2, generator=gen, dtype=torch.float64) - 0.5) * 100
    e, g = t.energy_and_grad(x)
    xr = x.clone().requires_grad_(True)
    (ga,) = torch.autograd.grad(t._energy(xr).sum(), xr)
    assert torch.allclose(e, t.energy(x)) and torch.allclose(g, ga, atol=1e-10)


def test_gmm_exact_samples_moments_and_entropy(gen):
    t = targets.get("gmm40")
    x = t.sample_exact(100_000, gen).double()
    mu = t.means.double().mean(0)
    cov = t.means.double().T.cov(correction=0) + t.std**2 * torch.eye(2, dtype=torch.float64)
    se = (torch.diagonal(cov) / x.shape[0]).sqrt()
    assert ((x.mean(0) - mu).abs() < 4 * se).all()
    assert torch.allclose(x.T.cov(), cov, rtol=0.03)
    # E_p[-log p] = entropy, 6.8605 nats (reference-idem.md §1.2).
    assert t.energy(x).mean().item() == pytest.approx(6.8605, abs=0.02)


def test_gmm_reference_fixed_and_fresh(gen):
    t = targets.get("gmm40")
    assert torch.equal(t.reference("test"), t.reference("test"))
    assert t.reference("test").shape == (1000, 2) and t.reference("val").shape == (2000, 2)
    assert t.reference("test", n=50, generator=gen).shape == (50, 2)


# ----------------------------------------------------------------------------- particles: official constants
def test_dw4_energy_matches_official_on_arbitrary_inputs(gen):
    x = torch.randn(4096, 8, generator=gen) * 3
    assert torch.allclose(targets.get("dw4").energy(x), official_dw4(x), rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("name,n", [("lj13", 13), ("lj55", 55)])
def test_lj_energy_matches_official_on_arbitrary_inputs(name, n, gen):
    # Spread-out random configurations (no near-overlaps, where float32 loses everything).
    x = torch.randn(256, 3 * n, generator=gen) * (n ** (1 / 3))
    ours, ref = targets.get(name).energy(x), official_lj(x, n)
    assert torch.allclose(ours, ref, rtol=1e-5, atol=1e-4 * ref.abs().max().item())
    paper = targets.get(name, convention="paper").energy(x)
    assert torch.allclose(paper, official_lj(x, n, energy_factor=0.5, osc=0.5), rtol=1e-4, atol=1e-3)


@pytest.mark.reference_data
def test_reference_energies_match_published_statistics():
    e = targets.get("dw4").energy(targets.get("dw4").reference("test"))
    assert e.mean().item() == pytest.approx(-22.4504, abs=1e-3)
    assert e.std().item() == pytest.approx(1.9014, abs=1e-3)
    e = targets.get("lj13").energy(targets.get("lj13").reference("test"))
    assert e.mean().item() == pytest.approx(-43.1270, abs=1e-3)
    assert e.min().item() == pytest.approx(-66.1763, abs=1e-3)


# ----------------------------------------------------------------------------- particles: physics
def test_lj_pair_minimum_is_minus_eps_with_zero_force():
    r = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
    e = lennard_jones_pair(r)
    (f,) = torch.autograd.grad(e.sum(), r)
    assert e.item() == pytest.approx(-1.0) and abs(f.item()) < 1e-12
    assert (lennard_jones_pair(torch.tensor([0.95, 1.05], dtype=torch.float64)) > -1).all()


def test_hand_built_dimer_energy():
    # Two particles r_m apart: pair term -eps counted twice (ordered pairs), harmonic 0.5*2*0.5^2.
    t = targets.LennardJones(2, softening=0.0)
    x = torch.tensor([[0.0, 0, 0, 1.0, 0, 0]], dtype=torch.float64)
    assert t.energy(x).item() == pytest.approx(-2.0 + 0.25)
    tp = targets.LennardJones(2, convention="paper", softening=0.0)
    assert tp.energy(x).item() == pytest.approx(-1.0 + 0.125)


@pytest.mark.parametrize("name", PARTICLE_TARGETS)
def test_energy_invariant_to_rotation_translation_permutation(name, gen):
    t = targets.get(name)
    n, d = t.n_particles, t.spatial_dim
    x = torch.randn(16, n, d, generator=gen, dtype=torch.float64) * (n ** (1 / d))
    e0 = t.energy(x.reshape(16, -1))
    rot = x @ random_rotation(d, gen).T
    shift = x + torch.randn(16, 1, d, generator=gen, dtype=torch.float64) * 5
    perm = x[:, torch.randperm(n, generator=gen)]
    for y in (rot, shift, perm):
        assert torch.allclose(t.energy(y.reshape(16, -1)), e0, rtol=1e-9, atol=1e-8)


@pytest.mark.reference_data
def test_lj13_equipartition_on_reference():
    # <x . grad E> = (N-1) D = 36 for samples of exp(-E) on the mean-free subspace; the data follow
    # the official constants (36.00) and not the paper's printed ones (18.0).
    x = targets.get("lj13").reference("test").double()
    _, g = targets.get("lj13").energy_and_grad(x)
    virial = (x * g).sum(-1)
    se = virial.std().item() / math.sqrt(len(virial))
    assert virial.mean().item() == pytest.approx(36.0, abs=max(0.5, 4 * se))
    _, gp = targets.get("lj13", convention="paper").energy_and_grad(x)
    assert (x * gp).sum(-1).mean().item() == pytest.approx(18.0, abs=0.5)


# ----------------------------------------------------------------------------- reference data
@pytest.mark.reference_data
def test_particle_references_are_mean_free_and_subsample(gen):
    for name, dim in [("dw4", 8), ("lj13", 39)]:
        t = targets.get(name)
        x = t.reference("val")
        assert x.shape == (10000, dim)
        assert x.reshape(10000, -1, t.spatial_dim).mean(1).abs().max() < 1e-5
        sub = t.reference("test", n=100, generator=gen)
        assert sub.shape == (100, dim)
        assert t.reference_info("test")["reference_source"] == "official"


@pytest.mark.reference_data
def test_corrupt_reference_file_is_refused(tmp_path, monkeypatch):
    src = targets.data.find_file("test_split_DW4.npy")
    arr = np.load(src)
    arr[0, 0] += 1.0
    np.save(tmp_path / "test_split_DW4.npy", arr)
    monkeypatch.delenv("BOLTZBENCH_DATA", raising=False)
    with pytest.raises(ReferenceDataError, match="sha256"):
        targets.get("dw4", data_dir=tmp_path).reference("test")


@pytest.mark.reference_data
def test_verified_copy_in_data_dir_is_used(tmp_path, monkeypatch):
    shutil.copy(targets.data.find_file("val_split_DW4.npy"), tmp_path)
    monkeypatch.delenv("BOLTZBENCH_DATA", raising=False)
    monkeypatch.setenv("BOLTZBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("BOLTZBENCH_OFFLINE", "1")
    assert targets.get("dw4", data_dir=tmp_path).reference("val").shape == (10000, 8)
    with pytest.raises(ReferenceDataError, match="BOLTZBENCH_OFFLINE"):
        targets.get("dw4", data_dir=tmp_path).reference("test")


def test_lj55_without_reference_says_how_to_build_one(tmp_path, monkeypatch):
    monkeypatch.setenv("BOLTZBENCH_CACHE", str(tmp_path))
    monkeypatch.setenv("BOLTZBENCH_DATA", str(tmp_path))
    with pytest.raises(ReferenceDataError, match="make_reference"):
        targets.get("lj55").reference("test")
    with pytest.raises(ValueError, match="split must be one of"):
        targets.get("lj55").reference("train")
