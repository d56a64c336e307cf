"""External samples scored with the grid's metrics and row format."""
from __future__ import annotations

import numpy as np
import pytest

import metrics
import targets
from runners import evaluate, rows


@pytest.mark.reference_data
def test_external_samples_get_the_grid_row(tmp_path, capsys):
    t = targets.get("dw4")
    x = t.reference("val")[:200]
    f = tmp_path / "mine.npy"
    np.save(f, x.numpy().reshape(200, 4, 2))  # [n, particles, dims] is accepted
    out = tmp_path / "out"
    assert evaluate.main(["target=dw4", f"samples={f}", f"out={out}", "n_eval=200"]) == 0
    (row,) = rows.iter_rows(out)
    assert row["sampler"] == "mine" and row["status"] == "ok" and row["n_reference"] == 200
    ref = t.reference("test")[:200]
    assert row["x_w2"] == pytest.approx(metrics.get("x_w2")(x, ref, t), rel=1e-9)
    # val vs test: near the DW-4 floors (x_w2 1.78, aligned 0.32 at n=1000; larger at n=200)
    assert 1.5 < row["x_w2"] < 3.0 and row["x_w2_aligned"] < 0.7
    assert row["reference_source"] == "official" and row["energy_evals"] is None
    assert "nll" not in row  # no density for external samples
    assert "x_w2" in capsys.readouterr().out


@pytest.mark.parametrize("args,needle", [
    (["target=dw5"], "target: got 'dw5'"),
    (["target=dw4", "label=a/b"], "label"),
    (["target=lj13"], "[n, 39] or [n, 13, 3]"),
    (["target=dw4", "colour=red"], "colour=red"),
])
def test_bad_input_exits_2_without_files(tmp_path, capsys, args, needle):
    f = tmp_path / "s.npy"
    np.save(f, np.zeros((10, 8), dtype=np.float32))
    out = tmp_path / "out"
    assert evaluate.main(args + [f"samples={f}", f"out={out}"]) == 2
    assert needle in capsys.readouterr().err
    assert not out.exists()


def test_non_finite_samples_are_diverged(tmp_path):
    f = tmp_path / "s.npy"
    x = np.zeros((10, 2), dtype=np.float32)
    x[3, 1] = np.nan
    np.save(f, x)
    row = evaluate.evaluate("gmm40", str(f), str(tmp_path / "o"), "nan")
    assert row["status"] == "diverged" and "1 non-finite" in row["reason"]


def _gmm_samples(n=50):
    return targets.get("gmm40").reference("test", n=n, generator=__import__("torch").Generator()
                                          .manual_seed(0)).numpy()


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".pt"])
def test_npy_npz_and_pt_give_the_same_row(tmp_path, suffix):
    import torch
    x = _gmm_samples()
    f = tmp_path / f"s{suffix}"
    if suffix == ".npy":
        np.save(f, x)
    elif suffix == ".npz":
        np.savez(f, samples=x, other=np.zeros(3))  # the array named `samples` is taken
    else:
        torch.save(torch.from_numpy(x), f)
    out = tmp_path / "out"
    assert evaluate.main(["target=gmm40", f"samples={f}", f"out={out}", "n_eval=50"]) == 0
    (row,) = rows.iter_rows(out)
    ref = targets.get("gmm40").reference("test")[:50]
    assert row["x_w2"] == pytest.approx(metrics.get("x_w2")(torch.from_numpy(x), ref,
                                                            targets.get("gmm40")), rel=1e-9)


@pytest.mark.parametrize("kind,needle", [
    ("complex", "dtype complex"), ("strings", "dtype <U"), ("ints", "dtype int64"),
    ("txt", "allowed: .npy, .npz, .pt"), ("npz2", "holds arrays"), ("ptdict", "holds a dict"),
    ("garbage", "cannot read"),
])
def test_unusable_sample_files_exit_2_without_files(tmp_path, capsys, kind, needle):
    import torch
    f = tmp_path / {"txt": "s.txt", "npz2": "s.npz", "ptdict": "s.pt"}.get(kind, "s.npy")
    x = _gmm_samples(10)
    if kind == "complex":
        np.save(f, x.astype(np.complex64) + 1j)  # would silently lose the imaginary part
    elif kind == "strings":
        np.save(f, x.astype(str))
    elif kind == "ints":
        np.save(f, x.astype(np.int64))
    elif kind == "txt":
        f.write_text("1 2\n3 4\n")
    elif kind == "npz2":
        np.savez(f, a=x, b=x)
    elif kind == "ptdict":
        torch.save({"x": torch.from_numpy(x)}, f)
    else:
        f.write_bytes(b"\x93NUMPY garbage")
    out = tmp_path / "out"
    assert evaluate.main(["target=gmm40", f"samples={f}", f"out={out}"]) == 2
    assert needle in capsys.readouterr().err
    assert not out.exists()


def test_no_reference_exits_1_with_the_fix_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("BOLTZBENCH_DATA", str(tmp_path / "empty"))
    monkeypatch.setenv("BOLTZBENCH_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("BOLTZBENCH_OFFLINE", "1")
    f = tmp_path / "s.npy"
    np.save(f, np.zeros((10, 165), dtype=np.float32))
    out = tmp_path / "out"
    assert evaluate.main(["target=lj55", f"samples={f}", f"out={out}"]) == 1
    err = capsys.readouterr().err
    assert "cannot score" in err and "make_reference lj55" in err
    assert not out.exists()
