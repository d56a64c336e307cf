"""What the grid checks before it dispatches anything: reference data (corrupt stops it, missing
is a warning block and an 'ok, unscored' count), sampler values (their own validation), profiles
and the output folder. Every refusal exits 2 and leaves no file behind."""
from __future__ import annotations

import numpy as np
import pytest

from helpers_grid import load_rows, run_grid
from helpers_samplers import test_samplers, tiny_profile  # noqa: F401 - fixtures


@pytest.fixture
def no_data(tmp_path, monkeypatch):
    monkeypatch.setenv("BOLTZBENCH_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("BOLTZBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("BOLTZBENCH_OFFLINE", "1")
    (tmp_path / "data").mkdir()
    return tmp_path / "data"


def _base(out, profile):
    return [f"out={out}", "launcher=debug", f"profile={profile}", "samplers=t_gauss",
            "collect=false"]


def test_corrupt_reference_stops_the_grid_before_anything_runs(tmp_path, capsys, no_data,
                                                               test_samplers, tiny_profile):
    bad = no_data / "test_split_DW4.npy"
    np.save(bad, np.zeros((10, 8), dtype=np.float32))  # right shape, wrong file
    out = tmp_path / "out"
    code, err = run_grid(_base(out, tiny_profile) + ["targets=gmm40,dw4"], capsys)
    assert code == 2
    assert "reference data cannot be used" in err and str(bad) in err and "sha256" in err
    assert not out.exists()


def test_missing_reference_warns_first_and_counts_unscored_cells(tmp_path, capsys, no_data,
                                                                 test_samplers, tiny_profile):
    out = tmp_path / "out"
    code, err = run_grid(_base(out, tiny_profile) + ["targets=gmm40,lj55", "seeds=2"], capsys)
    assert code == 0
    block = err[:err.index("[grid] 2 target(s)")]  # the warning comes before the run starts
    assert "WARNING: no reference for lj55: 2 cell(s)" in block
    assert "make_reference lj55" in block
    assert "summary: ok 2, ok, unscored 2" in err
    row = load_rows(out)[("lj55", "t_gauss", 0)]
    assert row["status"] == "ok" and "reference missing" in row["warnings"]
    assert load_rows(out)[("gmm40", "t_gauss", 0)]["warnings"] == ""


@pytest.mark.parametrize("yaml_extra,needles", [
    ("  nosuch:\n    all: {x: 1}\n", ["samplers.nosuch: unknown sampler", "t_gauss"]),
])
def test_profile_naming_an_unregistered_sampler_exits_2(tmp_path, capsys, test_samplers,
                                                        tiny_profile, yaml_extra, needles):
    prof = tmp_path / "p.yaml"
    prof.write_text(tiny_profile.read_text().rstrip() + "\n" + yaml_extra
                    if "samplers:" in tiny_profile.read_text() else
                    tiny_profile.read_text() + "samplers:\n" + yaml_extra)
    out = tmp_path / "out"
    code, err = run_grid(_base(out, prof) + ["targets=gmm40"], capsys)
    assert code == 2 and all(n in err for n in needles), err
    assert not out.exists()


def test_budget_typo_is_named_and_yaml_errors_keep_their_position(tmp_path, capsys,
                                                                  test_samplers):
    prof = tmp_path / "p.yaml"
    prof.write_text("seeds: 1\nbudget:\n  gmm40: {max_secs: 5}\n")
    code, err = run_grid(_base(tmp_path / "o", prof) + ["targets=gmm40"], capsys)
    assert code == 2 and "budget.gmm40: unknown key(s) 'max_secs'" in err
    prof.write_text("seeds: 1\nbudget:\n  gmm40: {max_steps: 5\n  dw4: 3\n")
    code, err = run_grid(_base(tmp_path / "o", prof) + ["targets=gmm40"], capsys)
    assert code == 2 and "line 4, column" in err
    assert not (tmp_path / "o").exists()


def test_out_that_is_a_file_or_under_a_file_exits_2(tmp_path, capsys, test_samplers,
                                                    tiny_profile):
    f = tmp_path / "results.txt"
    f.write_text("keep me")
    for out in (f, f / "sub"):
        code, err = run_grid(_base(out, tiny_profile) + ["targets=gmm40"], capsys)
        assert code == 2 and "error: out:" in err, err
    assert f.read_text() == "keep me"


@pytest.mark.parametrize("override,needles", [
    ("mala.step_size=-1", ["mala.step_size", "-1"]),
    ("mala.step_size=nan", ["mala.step_size", "nan"]),
    ("mala.n_chains=0", ["mala.n_chains", "0"]),
    ("mala.device=cuda", ["mala.device", "cuda"]),
])
def test_sampler_values_are_validated_by_the_sampler_before_any_file(tmp_path, capsys,
                                                                     override, needles):
    import torch
    if override.endswith("cuda") and torch.cuda.is_available():
        pytest.skip("this machine has a GPU, so device=cuda is valid here")
    out = tmp_path / "out"
    code, err = run_grid([f"out={out}", "launcher=debug", "profile=smoke", "targets=gmm40",
                          "samplers=mala", override], capsys)
    assert code == 2, err
    assert all(n in err for n in needles), err
    assert not out.exists()


def test_unprofiled_non_interactive_run_refuses_without_yes(tmp_path, capsys, monkeypatch,
                                                            test_samplers):
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    out = tmp_path / "o"
    code, err = run_grid([f"out={out}", "launcher=debug", "targets=gmm40", "samplers=t_gauss"],
                         capsys)
    assert code == 2 and "cost estimate" in err and "yes=true" in err
    assert not out.exists()


def test_a_failed_download_is_tried_once_per_grid_not_once_per_cell(tmp_path, capsys, monkeypatch,
                                                                    test_samplers, tiny_profile):
    from targets import data
    monkeypatch.setenv("BOLTZBENCH_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("BOLTZBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("BOLTZBENCH_OFFLINE", raising=False)
    monkeypatch.setattr(data, "OFFICIAL_URL", "http://127.0.0.1:9/{file}")  # refused at once
    monkeypatch.setattr(data, "DOWNLOAD_ATTEMPTS", 1)
    code, err = run_grid([f"out={tmp_path / 'o'}", "launcher=debug", f"profile={tiny_profile}",
                          "samplers=t_gauss", "targets=dw4", "seeds=3", "figures=false"], capsys)
    assert code == 0 and "ok, unscored 3" in err
    assert err.count("[data] downloading test_split_DW4.npy") == 1  # pre-flight only
    assert "BOLTZBENCH_OFFLINE" not in __import__("os").environ  # restored after the run
