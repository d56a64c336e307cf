"""Fused energy + analytic gradient kernels (targets/fast.py): finite differences (gradcheck),
agreement with autograd of the readable ``_energy`` definitions, physics of the pair terms,
chunking and the compiled path."""
from __future__ import annotations

import math
import warnings

import pytest
import torch

import targets
from targets import fast
from targets.base import Target

DW = (0.9, -4.0, 0.0, 4.0)
LJ_OFFICIAL = (1.0, 1.0, 1e-6, 2.0, 1.0)
LJ_PAPER = (1.0, 1.0, 1e-6, 1.0, 0.5)


class _WithAnalyticGrad(torch.autograd.Function):
    """E(x) whose backward is the kernel's own gradient, so gradcheck compares that gradient
    (not autograd's) with finite differences."""

    @staticmethod
    def forward(ctx, x, kernel, params):
        e, g = kernel(x, *params)
        ctx.save_for_backward(g)
        return e

    @staticmethod
    def backward(ctx, grad_e):
        (g,) = ctx.saved_tensors
        shape = grad_e.shape + (1,) * (g.ndim - grad_e.ndim)
        return grad_e.reshape(shape) * g, None, None


def _autograd(target, x):
    """The base class's autograd gradient of the readable ``_energy``."""
    return Target._energy_and_grad(target, x.clone())


@pytest.mark.parametrize("kernel,params,shape,scale", [
    (fast.dw_energy_and_grad, DW, (3, 4, 2), 2.0),
    (fast.lj_energy_and_grad, LJ_OFFICIAL, (3, 6, 3), 1.0),
    (fast.lj_energy_and_grad, LJ_PAPER, (2, 5, 3), 1.0),
    (fast.lj_energy_and_grad, (0.7, 1.3, 1e-6, 2.0, 1.0), (2, 5, 3), 1.3),
])
def test_gradcheck_analytic_gradient(kernel, params, shape, scale, gen):
    # A perturbed cubic lattice keeps particles apart, where the pair terms are smooth.
    n, d = shape[-2], shape[-1]
    lattice = torch.cartesian_prod(*[torch.arange(2.0, dtype=torch.float64)] * d)[:n] * scale
    x = lattice + 0.1 * torch.randn(shape, generator=gen, dtype=torch.float64)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda y: _WithAnalyticGrad.apply(y, kernel, params), (x,),
                                    eps=1e-6, atol=1e-5, rtol=1e-4)


def test_gradcheck_gmm(gen):
    t = targets.get("gmm40")
    x = (t.means[:4].double() + 1.5 * torch.randn(4, 2, generator=gen, dtype=torch.float64))
    x.requires_grad_(True)
    params = (t.means.double(), t.std)
    assert torch.autograd.gradcheck(
        lambda y: _WithAnalyticGrad.apply(y, fast.gmm_energy_and_grad, params), (x,),
        eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", ["gmm40", "dw4", "lj13", "lj55"])
def test_agrees_with_autograd_of_energy(name, gen, monkeypatch):
    monkeypatch.setenv(fast.COMPILE_ENV, "0")
    t = targets.get(name)
    if name == "gmm40":
        x = t.sample_exact(300, gen).double() + 5 * torch.randn(300, 2, generator=gen)
    else:  # random clusters at typical density, plus a few compact ones (large forces)
        spread = {"dw4": 2.0, "lj13": 1.0, "lj55": 1.5}[name]
        x = spread * torch.randn(200, t.dim, generator=gen, dtype=torch.float64)
    e, g = t.energy_and_grad(x)
    e_ref, g_ref = _autograd(t, x)
    assert e.dtype == g.dtype == torch.float64 and g.shape == x.shape
    torch.testing.assert_close(e, e_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-9 * float(g_ref.abs().max()))


@pytest.mark.reference_data
@pytest.mark.parametrize("name", ["dw4", "lj13"])
def test_agrees_on_reference_configurations_in_float32(name, gen, monkeypatch):
    monkeypatch.setenv(fast.COMPILE_ENV, "0")
    t = targets.get(name)
    x = t.reference("test", n=500, generator=gen)
    x = x + 0.05 * torch.randn(x.shape, generator=gen)
    e, g = t.energy_and_grad(x)
    e64, g64 = _autograd(t, x.double())
    e32, g32 = _autograd(t, x)
    # No worse than the float32 autograd path, and within float32 precision of float64.
    assert (e.double() - e64).abs().max() <= 2 * (e32.double() - e64).abs().max() + 1e-5
    assert (g.double() - g64).abs().max() <= 2 * (g32.double() - g64).abs().max() + 1e-5
    torch.testing.assert_close(e.double(), e64, rtol=1e-5, atol=1e-4)
    # Official test-set energies (reference-idem.md §1.2) for the unperturbed sets.
    if name == "lj13":
        mean = t.energy(t.reference("test")).mean()
        assert abs(float(mean) - (-43.1270)) < 1e-2


def test_pair_physics():
    # LJ: two particles at the minimum r_m: energy -eps per unordered pair, zero force
    # (softening 1e-6 moves the minimum by ~1e-6); the paper convention halves the pair sum.
    x = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]], dtype=torch.float64)
    e, g = fast.lj_energy_and_grad(x, 1.0, 1.0, 0.0, 2.0, 0.0)
    assert float(e) == pytest.approx(-2.0) and float(g.abs().max()) < 1e-12
    e, g = fast.lj_energy_and_grad(x, 1.0, 1.0, 1e-6, 1.0, 0.0)
    assert float(e) == pytest.approx(-1.0, abs=1e-9) and float(g.abs().max()) < 1e-4
    # Harmonic term only: 0.5 s sum |x - mean|^2 and gradient s (x - mean).
    e, g = fast.lj_energy_and_grad(x, 0.0, 1.0, 1e-6, 2.0, 0.5)
    assert float(e) == pytest.approx(0.5 * 0.5 * 0.5)
    torch.testing.assert_close(g[0, :, 0], torch.tensor([-0.25, 0.25], dtype=torch.float64))
    # DW: a pair at d = offset has energy c and zero force; wells at s^2 = -b / (2a).
    for d, e_exp in [(4.0, 0.0), (4.0 + math.sqrt(4 / 1.8), -4.0**2 / (4 * 0.9))]:
        x = torch.tensor([[[0.0, 0.0], [d, 0.0], [100.0, 0.0], [200.0, 0.0]]], dtype=torch.float64)
        e2, g2 = fast.dw_energy_and_grad(x[:, :2], *DW)
        assert float(e2) == pytest.approx(e_exp) and float(g2.abs().max()) < 1e-9
    # Coincident particles: finite, zero pair force (as the official cdist gradient).
    x = torch.zeros(1, 4, 2)
    e, g = fast.dw_energy_and_grad(x, *DW)
    assert torch.isfinite(g).all() and float(g.abs().max()) == 0.0
    assert float(e) == pytest.approx(6 * (0.9 * 256 - 4 * 16))


def test_gmm_energy_matches_log_prob_and_vanishes_at_isolated_mode():
    t = targets.get("gmm40")
    # The mode whose nearest neighbour is farthest away: its score at the mean is ~0.
    dist = torch.cdist(t.means, t.means) + torch.eye(40) * 1e9
    k = int(dist.min(1).values.argmax())
    e, g = t.energy_and_grad(t.means[k:k + 1].double())
    assert float(g.abs().max()) < 1e-6
    assert float(e) == pytest.approx(float(t.energy(t.means[k:k + 1].double())), rel=1e-12)


def test_chunking_gives_identical_results(gen, monkeypatch):
    monkeypatch.setenv(fast.COMPILE_ENV, "0")
    for name in ["dw4", "lj13", "gmm40"]:
        t = targets.get(name)
        x = torch.randn(3, 333, t.dim, generator=gen)
        e_one, g_one = t.energy_and_grad(x)
        monkeypatch.setattr(fast, "CHUNK_ENTRIES", 1000)  # dozens of uneven chunks
        e_many, g_many = t.energy_and_grad(x)
        monkeypatch.undo()
        monkeypatch.setenv(fast.COMPILE_ENV, "0")
        assert e_many.shape == (3, 333) and g_many.shape == x.shape
        assert torch.equal(e_one, e_many) and torch.equal(g_one, g_many)
        # Each configuration's result is independent of its batch neighbours.
        e_row, g_row = t.energy_and_grad(x[1, 7])
        assert torch.equal(e_row, e_one[1, 7]) and torch.equal(g_row, g_one[1, 7])


def test_counting_is_unchanged():
    t = targets.get("lj13")
    t.energy_and_grad(torch.randn(2, 5, 39))
    assert t.counter.snapshot() == {"energy_evals": 10, "grad_evals": 10}


def test_compile_setting_validation_and_fallback(monkeypatch):
    monkeypatch.setenv(fast.COMPILE_ENV, "yes")
    with pytest.raises(ValueError, match="BOLTZBENCH_COMPILE must be one of auto, 0, 1; got 'yes'"):
        fast.compile_setting()

    def broken_compile(fn, **kw):
        def run(*a, **k):
            raise RuntimeError("no toolchain here")
        return run

    def kernel(xp, a, b, c, o):  # a distinct function object: its failure state is its own
        return fast.dw_energy_and_grad(xp, a, b, c, o)

    monkeypatch.setenv(fast.COMPILE_ENV, "1")
    monkeypatch.setattr(torch, "compile", broken_compile)
    monkeypatch.setattr(fast, "_toolchain_missing", lambda device: None)
    x = torch.randn(8, 4, 2, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="torch.compile failed: RuntimeError: no toolchain"):
        e, g = fast.fused(kernel, x, *DW)
    e0, g0 = fast.dw_energy_and_grad(x, *DW)
    assert torch.equal(e, e0) and torch.equal(g, g0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once; later calls stay eager silently
        fast.fused(kernel, x, *DW)
    assert kernel in fast._disabled and kernel not in fast._compiled


@pytest.mark.skipif(fast._toolchain_missing(torch.device("cpu")) is not None,
                    reason="torch.compile on CPU needs a C++ compiler")
@pytest.mark.reference_data
def test_compiled_kernel_matches_eager(gen, monkeypatch):
    """The path large batches take (about 5 s of compilation on a cold cache)."""
    monkeypatch.setenv(fast.COMPILE_ENV, "auto")
    t = targets.get("lj13")
    x = t.reference("test", n=1000, generator=gen).repeat(5, 1)[: fast.COMPILE_MIN_BATCH + 3]
    x = x + 0.05 * torch.randn(x.shape, generator=gen)
    e, g = t.energy_and_grad(x)
    kernel = fast.lj_energy_and_grad
    assert kernel in fast._compiled and kernel not in fast._disabled
    monkeypatch.setenv(fast.COMPILE_ENV, "0")
    e0, g0 = t.energy_and_grad(x)
    torch.testing.assert_close(e, e0, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(g, g0, rtol=1e-5, atol=1e-4 * float(g0.abs().max()))


# ----------------------------------------------------------------------------- runners.bench
def test_bench_reports_step_floor_and_generation(capsys):
    """The benchmark runs end to end on a tiny problem and ends with its JSON line."""
    import json

    from runners import bench

    argv = ["sampler=idem", "target=dw4", "threads=1", "repeats=1", "batch=8", "k=4",
            "sample_n=6", "sample_steps=3"]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out.strip().splitlines()
    r = json.loads(out[-1])
    assert (r["batch"], r["k"], r["evals_per_step"], r["sample_n"]) == (8, 4, 32, 6)
    assert r["sample_extrapolated"] is True and r["sample_steps_timed"] == 3
    for key in ("step_s", "floor_s", "sample_s", "energy_evals_per_s"):
        assert r[key] > 0
    assert r["ratio"] == pytest.approx(r["step_s"] / r["floor_s"], rel=1e-3)
    assert r["official"] is None  # overridden B and K: the official figures do not apply
    assert r["threads"] == 1 and r["device"] == "cpu" and r["torch"] == torch.__version__


def test_bench_rejects_bad_input(capsys):
    from runners import bench

    assert bench.main(["target=lj-13"]) == 2
    assert "target: got 'lj-13'; allowed: gmm40, dw4, lj13, lj55" in capsys.readouterr().err
    assert bench.main(["target=dw4", "repeats=0"]) == 2
    assert "repeats: got '0'; expected an integer >= 1" in capsys.readouterr().err
    assert bench.main(["target=dw4", "speed=fast"]) == 2
    assert "argument 'speed=fast'" in capsys.readouterr().err
