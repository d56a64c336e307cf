"""Reference builder: convergence diagnostics against known cases, the icosahedral start, the
written reference and its provenance, tamper refusal, and CLI validation."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import targets
from samplers.diagnostics import ess, mcse_mean, split_rhat
from targets import data
from targets.make_reference import icosahedral_cluster, initial_states, main


# ----------------------------------------------------------------------------- diagnostics
def _ar1(rho, chains, n, rng):
    e = rng.normal(size=(chains, n))
    z = np.empty_like(e)
    z[:, 0] = e[:, 0] / np.sqrt(1 - rho ** 2)  # stationary start
    for t in range(1, n):
        z[:, t] = rho * z[:, t - 1] + e[:, t]
    return z


def test_iid_chains_have_rhat_one_and_ess_near_n():
    x = np.random.default_rng(0).normal(size=(8, 2000))
    assert abs(split_rhat(x) - 1) < 0.01
    assert abs(split_rhat(x, rank=True) - 1) < 0.01
    # ESS of iid draws is n up to estimation noise (a few percent at this size).
    assert 0.9 * x.size < ess(x) < 1.1 * x.size
    assert 0.9 * x.size < ess(x, rank=False) < 1.1 * x.size


def test_chains_with_different_means_have_large_rhat():
    x = np.random.default_rng(1).normal(size=(8, 1000)) + np.arange(8)[:, None]
    # between-chain variance of the means (var 6) dominates the within variance 1: R̂ ≈ sqrt(7)
    assert split_rhat(x) > 2.0
    assert split_rhat(x, rank=True) > 1.5
    assert ess(x) < 0.05 * x.size


def test_drifting_single_chain_is_caught_by_the_split():
    # One chain whose first half sits at 0 and second half at 3: only splitting can see it.
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.normal(size=500), 3 + rng.normal(size=500)])[None, :]
    assert split_rhat(x) > 1.5


@pytest.mark.parametrize("rho", [0.5, 0.9])
def test_ar1_ess_matches_closed_form(rho):
    z = _ar1(rho, 4, 20000, np.random.default_rng(3))
    expected = z.size * (1 - rho) / (1 + rho)
    assert abs(ess(z, rank=False) / expected - 1) < 0.15
    assert abs(ess(z) / expected - 1) < 0.15  # rank-normalised: same for a Gaussian process
    # the MCSE of the mean uses that ESS: stationary variance 1/(1-ρ²)
    assert abs(mcse_mean(z) / np.sqrt(1 / (1 - rho ** 2) / expected) - 1) < 0.15


def test_diagnostics_refuse_bad_shapes():
    with pytest.raises(ValueError, match=r"\[chains, draws\]"):
        split_rhat(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="at least 4 draws"):
        ess(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="non-finite"):
        ess(np.array([[0.0, 1.0, np.nan, 2.0, 3.0]]))


# ----------------------------------------------------------------------------- starting structures
def test_icosahedral_clusters_have_magic_sizes_and_shell_spacing():
    for shells, n in [(0, 1), (1, 13), (2, 55), (3, 147)]:
        assert icosahedral_cluster(shells).shape == (n, 3)
    x = icosahedral_cluster(2)
    r = x.norm(dim=1)
    # centre, 12 atoms at radius 1, 12 vertices at 2 and 30 edge midpoints at 2 cos(31.7°)
    assert torch.allclose(r.sort().values[:13], torch.tensor([0.0] + [1.0] * 12, dtype=r.dtype))
    assert int((r - 2).abs().lt(1e-9).sum()) == 12
    d = torch.cdist(x, x) + 10 * torch.eye(55, dtype=x.dtype)
    nearest = d.min(dim=1).values
    # Mackay: radial spacing 1, tangential spacing = icosahedron edge / circumradius = 1.0515
    assert nearest.min() > 1 - 1e-9 and nearest.max() < 1.0515 + 1e-4


def test_starts_are_mean_free_low_energy_and_differently_oriented(gen):
    t = targets.get("lj55")
    x = initial_states(t, 6, gen)
    assert x.shape == (6, 165) and x.dtype == torch.float32
    assert t.particles(x).mean(1).abs().max() < 1e-5
    e = t.energy(x)
    # the quenched icosahedron: far below the liquid at T=1 (about -325), far from the wall
    assert (e < -450).all() and torch.isfinite(t.energy_and_grad(x)[1]).all()
    assert not torch.allclose(x[0], x[1], atol=0.1)  # independent rotations/labellings


# ----------------------------------------------------------------------------- build and load
TINY = ["--chains", "4", "--steps", "12", "--burn-in", "4", "--thin", "2", "--leapfrog", "3"]
FIELDS = {"target", "target_fingerprint", "kernel", "chains", "steps", "burn_in", "thin",
          "step_size", "step_size_initial", "seed", "code_version", "wall_seconds", "sha256",
          "split", "n", "diagnostics", "command"}
DIAG = {"acceptance", "energy", "energy_split_rhat", "energy_ess_bulk_draws", "converged",
        "not_converged_because", "virial_mean", "coord_ess_bulk_min"}


@pytest.fixture(scope="module")
def tiny_reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    assert main(["lj55", *TINY, "--n", "10", "--seed", "3", "--out", str(out)]) == 0
    return out


def test_build_writes_float32_mean_free_samples_and_provenance(tiny_reference):
    npy = tiny_reference / "mcmc_lj55_test.npy"
    meta = json.loads(npy.with_suffix(".json").read_text())
    assert FIELDS <= set(meta) and DIAG <= set(meta["diagnostics"])
    assert meta["sha256"] == data.sha256_of(npy)
    assert (meta["chains"], meta["steps"], meta["burn_in"], meta["thin"], meta["n"]) == \
        (4, 12, 4, 2, 10)
    assert meta["target_fingerprint"] == targets.get("lj55").fingerprint
    assert meta["kernel"] == "hmc" and meta["diagnostics"]["converged"] is False  # 16 draws
    arr = np.load(npy)
    assert arr.shape == (10, 165) and arr.dtype == np.float32
    assert np.abs(arr.reshape(10, 55, 3).mean(1)).max() < 1e-5
    # energies of what was written are in the range the run reported
    e = targets.get("lj55").energy(torch.from_numpy(arr))
    d = meta["diagnostics"]["energy"]
    assert d["min"] - 1e-3 <= float(e.min()) and float(e.max()) <= d["max"] + 1e-3


def test_lj55_loads_our_reference_and_refuses_a_tampered_one(tiny_reference, tmp_path):
    t = targets.LJ55(data_dir=tiny_reference)
    ref = t.reference("test")
    assert torch.allclose(ref, torch.from_numpy(np.load(tiny_reference / "mcmc_lj55_test.npy")),
                          atol=1e-6)
    info = t.reference_info("test")
    assert info["reference_source"] == "mcmc" and info["reference_file"] == "mcmc_lj55_test.npy"
    # change one coordinate, keep the old provenance: the loader must refuse it
    for f in ("mcmc_lj55_test.npy", "mcmc_lj55_test.json"):
        (tmp_path / f).write_bytes((tiny_reference / f).read_bytes())
    arr = np.load(tmp_path / "mcmc_lj55_test.npy")
    arr[0, 0] += 0.5
    np.save(tmp_path / "mcmc_lj55_test.npy", arr)
    with pytest.raises(data.ReferenceDataError, match="sha256"):
        targets.LJ55(data_dir=tmp_path).reference("test")


def test_default_output_is_the_user_cache_and_splits_use_distinct_streams(tmp_path, monkeypatch):
    monkeypatch.setenv("BOLTZBENCH_CACHE", str(tmp_path))
    assert main(["lj55", *TINY, "--split", "val"]) == 0
    meta = json.loads((tmp_path / "mcmc_lj55_val.json").read_text())
    assert meta["split"] == "val" and meta["n"] == 4 * 4 and meta["generator_seed"] == 1
    assert targets.LJ55().reference_info("val")["reference_source"] == "mcmc"


# ----------------------------------------------------------------------------- command line
@pytest.mark.parametrize("argv,field", [
    (["lj55", "--chains", "1"], "--chains"),
    (["lj55", "--chains", "many"], "--chains"),
    (["lj55", "--kernel", "nuts"], "--kernel"),
    (["lj55", "--steps", "10", "--burn-in", "10"], "--burn-in"),
    (["lj55", "--steps", "10", "--burn-in", "2", "--thin", "4"], "draws per chain"),
    (["lj55", "--step-size", "-0.1"], "--step-size"),
    (["lj55", "--split", "train"], "--split"),
    (["lj55", "--chains", "2", "--n", "100000"], "--n"),
    (["lj56"], "lj56"),
    (["check", "lj55"], "lj55"),
])
def test_bad_cli_input_exits_2_naming_the_field(argv, field, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert field in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing written


# ----------------------------------------------------------------------------- check command
@pytest.mark.reference_data
def test_check_dw4_writes_a_report_and_agrees_with_the_shipped_energies(tmp_path):
    # A short but honest run: 64 chains x 300 HMC transitions from N(0, 1.5^2) starts.
    main(["check", "dw4", "--chains", "64", "--steps", "300", "--burn-in", "100", "--thin", "5",
          "--out", str(tmp_path)])
    rep = json.loads((tmp_path / "check_dw4.json").read_text())
    cmp = rep["comparison"]
    assert cmp["n_compared"] == 64 * 40 and isinstance(rep["verdict"], str)
    for k in ("energy_tvd", "energy_w1"):
        assert 0 < cmp[k]["val_vs_test"] and 0 < cmp[k]["fresh_vs_test"] < 3 * cmp[k]["val_vs_test"]
    # physics: the fresh chains hold the shipped mean energy (-22.45) and equipartition (6)
    assert abs(rep["mean_energy_z"]) < 4
    d = rep["diagnostics"]
    assert abs(d["virial_mean"] - 6) < 4 * d["virial_mcse"] + 0.1
    assert d["acceptance"]["min_chain"] > 0.3
