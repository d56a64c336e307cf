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
from runners import make_reference
from runners.make_reference import icosahedral_cluster, initial_states, main


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
# One round of 12 steps: far from converged, so a build exits 3 and writes converged: false.
TINY = ["--chains", "4", "--steps", "12", "--burn-in", "4", "--thin", "2", "--leapfrog", "3",
        "--rounds", "1"]
FIELDS = {"target", "target_fingerprint", "kernel", "chains", "steps", "burn_in", "thin",
          "step_size", "step_size_initial", "seed", "code_version", "wall_seconds", "sha256",
          "split", "n", "diagnostics", "command"}
DIAG = {"acceptance", "energy", "energy_split_rhat", "energy_ess_bulk_draws", "converged",
        "not_converged_because", "virial_mean", "coord_ess_bulk_min"}


@pytest.fixture(scope="module")
def tiny_reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    assert main(["lj55", *TINY, "--n", "10", "--seed", "3", "--out", str(out)]) == 3
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


def test_lj55_loads_our_reference_and_refuses_a_tampered_one(tiny_reference, tmp_path,
                                                              monkeypatch):
    monkeypatch.setenv("BOLTZBENCH_ALLOW_UNCONVERGED", "1")  # the tiny reference is unconverged
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
    monkeypatch.setenv("BOLTZBENCH_ALLOW_UNCONVERGED", "1")
    assert main(["lj55", *TINY, "--split", "val"]) == 3
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
    (["lj55", "--steps", "1000", "--max-steps", "900"], "--max-steps"),
    (["lj55", "--rounds", "0"], "--rounds"),
    (["lj55", "--round-steps", "0"], "--round-steps"),
    (["crosscheck", "lj13"], "lj55"),
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


# ----------------------------------------------------------------------------- rounds and the cap
def _fake_summarise(converge_on_call):
    """A stand-in for summarise that reports converged from its ``converge_on_call``-th call on."""
    calls = []

    def fake(target, run, criteria=make_reference.Criteria()):
        calls.append(run["energy_trace"].shape[1])
        ok = len(calls) >= converge_on_call
        return {"acceptance": {"mean": 0.8, "min_chain": 0.7, "max_chain": 0.9},
                "energy": {"mean": -325.0, "std": 13.0, "min": -360.0, "max": -290.0,
                           "mcse_mean": 0.1},
                "energy_split_rhat_rank": 1.005 if ok else 1.02, "rg2_split_rhat_rank": 1.004,
                "energy_ess_bulk_draws": 900.0 if ok else 300.0, "rg2_ess_bulk": 800.0,
                "virial_mean": 162.1, "virial_mcse": 0.5, "virial_z": 0.2, "converged": ok,
                "not_converged_because": [] if ok else ["energy_split_rhat_rank 1.0200 >= 1.01"],
                "criteria": criteria.describe()}
    return fake, calls


ROUNDS = ["--chains", "4", "--steps", "12", "--burn-in", "4", "--thin", "2", "--leapfrog", "3",
          "--round-steps", "4"]


def test_rounds_stop_as_soon_as_the_criteria_hold_and_not_before(tmp_path, monkeypatch):
    fake, calls = _fake_summarise(converge_on_call=3)
    monkeypatch.setattr(make_reference, "summarise", fake)
    assert main(["lj55", *ROUNDS, "--max-steps", "100", "--out", str(tmp_path)]) == 0
    # round 1 brings the chains to --steps 12 (8 kept), rounds 2 and 3 add 4 each; no round 4
    assert calls == [8, 12, 16]
    meta = json.loads((tmp_path / "mcmc_lj55_test.json").read_text())
    assert meta["steps"] == 20 and meta["draws_per_chain"] == 8 and meta["n"] == 4 * 8
    assert [r["round"] for r in meta["rounds"]] == [1, 2, 3]
    assert [r["steps"] for r in meta["rounds"]] == [12, 16, 20]
    assert [r["converged"] for r in meta["rounds"]] == [False, False, True]
    assert meta["diagnostics"]["converged"] is True
    assert np.load(tmp_path / "mcmc_lj55_test.npy").shape == (32, 165)
    # a converged reference loads without any opt-in and says so
    assert targets.LJ55(data_dir=tmp_path).reference_info("test")["reference_converged"] is True


def test_a_run_converged_after_its_first_round_does_no_second(tmp_path, monkeypatch):
    fake, calls = _fake_summarise(converge_on_call=1)
    monkeypatch.setattr(make_reference, "summarise", fake)
    assert main(["lj55", *ROUNDS, "--out", str(tmp_path)]) == 0
    assert calls == [8]


def test_the_cap_exits_3_says_what_to_change_and_records_every_round(tmp_path, capsys):
    # real diagnostics: 4 chains x a few steps never converge; the cap is 20 steps per chain
    assert main(["lj55", *ROUNDS, "--max-steps", "20", "--out", str(tmp_path)]) == 3
    out = capsys.readouterr().out
    assert "round 1: 12/20 steps/chain" in out and "round 3: 20/20" in out and "round 4" not in out
    assert "not converged after 20 steps per chain (3 round(s))" in out
    assert "--max-steps" in out and "--chains" in out
    meta = json.loads((tmp_path / "mcmc_lj55_test.json").read_text())
    assert meta["diagnostics"]["converged"] is False and meta["max_steps"] == 20
    assert [r["steps"] for r in meta["rounds"]] == [12, 16, 20]
    for r in meta["rounds"]:
        assert {"energy_split_rhat_rank", "rg2_split_rhat_rank", "energy_ess_bulk_draws",
                "rg2_ess_bulk", "virial_z", "virial_mcse", "energy_mean", "energy_mcse",
                "seconds", "not_converged_because"} <= set(r)
    # the criteria, as the issue states them
    assert meta["criteria"] == {"energy_and_rg2_split_rhat_rank_below": 1.01,
                                "energy_draws_and_rg2_ess_bulk_above": 400.0,
                                "virial_within_mcse": 3.0, "min_chain_acceptance": 0.05}
    assert meta["diagnostics"]["criteria"] == meta["criteria"]


def test_a_round_cap_stops_after_that_many_rounds(tmp_path):
    assert main(["lj55", *ROUNDS, "--rounds", "2", "--out", str(tmp_path)]) == 3
    meta = json.loads((tmp_path / "mcmc_lj55_test.json").read_text())
    assert len(meta["rounds"]) == 2 and meta["steps"] == 16


def test_an_unconverged_build_does_not_replace_a_converged_reference(tmp_path, monkeypatch, capsys):
    fake, _ = _fake_summarise(converge_on_call=1)
    monkeypatch.setattr(make_reference, "summarise", fake)
    assert main(["lj55", *ROUNDS, "--out", str(tmp_path)]) == 0
    before = (tmp_path / "mcmc_lj55_test.npy").read_bytes()
    monkeypatch.undo()
    assert main(["lj55", *TINY, "--out", str(tmp_path)]) == 3
    assert "does not replace it" in capsys.readouterr().out
    assert (tmp_path / "mcmc_lj55_test.npy").read_bytes() == before


def test_verdict_counts_the_virial_within_3_mcse(gen):
    t = targets.get("lj55")
    run = {"energy_trace": torch.randn(8, 400, generator=gen, dtype=torch.float64),
           "draw_energies": torch.randn(8, 40, generator=gen, dtype=torch.float64),
           "rg2_trace": torch.randn(8, 400, generator=gen, dtype=torch.float64),
           "draws": torch.randn(8, 40, 165, generator=gen),
           "accept": torch.full((8,), 0.8)}
    noise = torch.randn(8, 400, generator=gen, dtype=torch.float64)
    for shift, ok in [(2.5, True), (3.5, False)]:
        # iid noise of std 1 over 3200 states: MCSE ≈ 1/sqrt(3200); shift in MCSE units
        v = noise - noise.mean() + 162 + shift * noise.std() / 3200 ** 0.5
        d = make_reference.summarise(t, {**run, "virial_trace": v})
        assert (abs(d["virial_z"]) <= 3) is ok
        assert any("equipartition" in r for r in d["not_converged_because"]) is (not ok)


def test_forecast_scales_rhat_ess_and_virial_with_length():
    crit = make_reference.Criteria()
    diag = {"acceptance": {"min_chain": 0.7}, "energy_split_rhat_rank": 1.02,
            "rg2_split_rhat_rank": 1.005, "energy_ess_bulk_draws": 800.0, "rg2_ess_bulk": 200.0,
            "virial_z": 1.0}
    # R̂ - 1 = 0.02 must halve to 0.01: twice the length; rg² ESS 200 -> 400: twice as well
    assert make_reference.steps_needed(diag, 1000, crit) == pytest.approx(2000)
    assert make_reference.steps_needed({**diag, "virial_z": 6.0}, 1000, crit) == pytest.approx(4000)
    assert make_reference.steps_needed({**diag, "acceptance": {"min_chain": 0.0}}, 1000, crit) \
        == float("inf")


# ----------------------------------------------------------------------------- loader verdict
def test_loader_refuses_an_unconverged_reference_unless_opted_in(tiny_reference, monkeypatch):
    monkeypatch.delenv("BOLTZBENCH_ALLOW_UNCONVERGED", raising=False)
    with pytest.raises(data.ReferenceCorrupt, match="convergence check") as exc:
        targets.LJ55(data_dir=tiny_reference).reference("test")
    msg = str(exc.value)
    assert "make_reference lj55" in msg and "BOLTZBENCH_ALLOW_UNCONVERGED=1" in msg
    assert "energy_split_rhat_rank" in msg  # says why
    monkeypatch.setenv("BOLTZBENCH_ALLOW_UNCONVERGED", "0")
    with pytest.raises(data.ReferenceCorrupt):
        targets.LJ55(data_dir=tiny_reference).reference("test")
    monkeypatch.setenv("BOLTZBENCH_ALLOW_UNCONVERGED", "maybe")
    with pytest.raises(ValueError, match="BOLTZBENCH_ALLOW_UNCONVERGED"):
        targets.LJ55(data_dir=tiny_reference).reference("test")
    monkeypatch.setenv("BOLTZBENCH_ALLOW_UNCONVERGED", "1")
    t = targets.LJ55(data_dir=tiny_reference)
    assert t.reference("test").shape == (10, 165)
    assert t.reference_info("test")["reference_converged"] is False


def test_a_reference_without_a_verdict_counts_as_unconverged(tiny_reference, tmp_path, monkeypatch):
    monkeypatch.delenv("BOLTZBENCH_ALLOW_UNCONVERGED", raising=False)
    (tmp_path / "mcmc_lj55_test.npy").write_bytes((tiny_reference / "mcmc_lj55_test.npy").read_bytes())
    meta = json.loads((tiny_reference / "mcmc_lj55_test.json").read_text())
    del meta["diagnostics"]
    (tmp_path / "mcmc_lj55_test.json").write_text(json.dumps(meta))
    with pytest.raises(data.ReferenceCorrupt, match="no verdict"):
        targets.LJ55(data_dir=tmp_path).reference("test")


def test_official_lj55_files_carry_no_converged_key(tmp_path, monkeypatch):
    monkeypatch.setenv("BOLTZBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("BOLTZBENCH_DATA", raising=False)
    np.save(tmp_path / "test_split_LJ55-1000-part1.npy", np.zeros((5, 165), np.float32))
    info = targets.LJ55(data_dir=tmp_path).reference_info("test")
    assert info["reference_source"] == "official" and "reference_converged" not in info


# ----------------------------------------------------------------------------- cross-check
def _synthetic_lj55(n, gen, scale=1.0):
    """A Mackay icosahedron jittered with Gaussian noise: a stand-in 'LJ-55 set' of ``n`` rows."""
    x = (1.1 * icosahedral_cluster(2).float()).reshape(1, 165).expand(n, -1)
    return targets.get("lj55").remove_mean(x + scale * 0.05 * torch.randn(x.shape, generator=gen))


def test_crosscheck_against_a_synthetic_official_split(tmp_path, monkeypatch, capsys, gen):
    monkeypatch.setenv("BOLTZBENCH_CACHE", str(tmp_path / "cache"))
    official, ours = tmp_path / "official", tmp_path / "ours"
    official.mkdir()
    monkeypatch.setenv("BOLTZBENCH_DATA", str(official))
    # without the official split: skipped, exit 1, nothing written
    fake, _ = _fake_summarise(converge_on_call=1)
    monkeypatch.setattr(make_reference, "summarise", fake)
    assert main(["lj55", *ROUNDS, "--out", str(ours)]) == 0
    assert "cross-check skipped" in capsys.readouterr().out
    assert main(["crosscheck", "lj55", "--out", str(ours)]) == 1
    assert not (ours / "crosscheck_lj55.json").exists()
    # official test and val: two sets of one law; ours first the same law, then a wrong one
    for split in ("test", "val"):
        np.save(official / f"{split}_split_LJ55-1000-part1.npy",
                _synthetic_lj55(300, gen).numpy())
    for scale, verdict in [(1.0, "consistent"), (3.0, "inconsistent")]:
        np.save(ours / "mcmc_lj55_test.npy", _synthetic_lj55(300, gen, scale).numpy())
        meta = json.loads((ours / "mcmc_lj55_test.json").read_text())
        meta["sha256"] = data.sha256_of(ours / "mcmc_lj55_test.npy")
        (ours / "mcmc_lj55_test.json").write_text(json.dumps(meta))
        assert main(["crosscheck", "lj55", "--out", str(ours)]) == 0
        rep = json.loads((ours / "crosscheck_lj55.json").read_text())
        cmp = rep["comparison"]
        assert cmp["n_compared"] == 300
        assert cmp["verdict"].startswith(verdict), cmp["verdict"]
        for k in ("energy_w1", "energy_tvd", "dist_tvd"):
            assert cmp[k]["val_vs_test"] > 0 and cmp[k]["ratio"] == pytest.approx(
                cmp[k]["ours_vs_test"] / cmp[k]["val_vs_test"])
        assert rep["official"]["test"]["sha256"] == data.sha256_of(
            official / "test_split_LJ55-1000-part1.npy")


def test_crosscheck_refuses_our_file_if_it_changed(tmp_path, monkeypatch, gen):
    monkeypatch.setenv("BOLTZBENCH_DATA", str(tmp_path))
    monkeypatch.setenv("BOLTZBENCH_CACHE", str(tmp_path / "cache"))
    for split in ("test", "val"):
        np.save(tmp_path / f"{split}_split_LJ55-1000-part1.npy", _synthetic_lj55(20, gen).numpy())
    np.save(tmp_path / "mcmc_lj55_test.npy", _synthetic_lj55(20, gen).numpy())
    (tmp_path / "mcmc_lj55_test.json").write_text(json.dumps({"sha256": "abc"}))
    with pytest.raises(data.ReferenceCorrupt, match="sha256"):
        make_reference.crosscheck(tmp_path)
