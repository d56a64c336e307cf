"""The compiled path of samplers/dem/noise.py without compiling: ``torch.compile`` replaced by a
recorder (as tests/test_targets_exact.py does for targets/fast.py), so the test selection checks
what ``_pick`` chooses and when, the options it compiles with, and the fallback when compiling
fails; the draws are checked against a numpy transcription of the formula in the module doc."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from samplers.dem import noise
from targets import fast

M64 = (1 << 64) - 1


def _numpy_normals(key: int, numel: int) -> np.ndarray:
    """SplitMix64 + Box-Muller as the noise.py doc states it, in Python integers and float64."""
    pairs = (numel + 1) // 2
    u1, u2 = [], []
    for k in range(pairs):
        z = (key + (k + 1) * 0x9E3779B97F4A7C15) & M64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        z = z ^ (z >> 31)
        u1.append((((z >> 40) & 0xFFFFFF) + 1) / 2.0 ** 24)
        u2.append((z & 0xFFFFFF) / 2.0 ** 24)
    r = np.sqrt(-2.0 * np.log(np.array(u1)))
    t = 2.0 * np.pi * np.array(u2)
    return np.concatenate([r * np.cos(t), r * np.sin(t)])[:numel]


@pytest.fixture
def fake_compile(monkeypatch):
    """torch.compile replaced by a recorder that returns the function, caches emptied, a toolchain."""
    calls = []

    def compile_(fn, **kw):
        calls.append((fn, kw))
        return fn

    monkeypatch.setattr(torch, "compile", compile_)
    monkeypatch.setattr(noise, "_compiled", [])
    monkeypatch.setattr(noise, "_disabled", [])
    monkeypatch.setattr(fast, "_toolchain_missing", lambda device: None)
    return calls


@pytest.mark.parametrize("setting,numel,dtype,compiled", [
    ("0", noise.COMPILE_MIN_NUMEL, torch.float32, False),
    ("1", 3, torch.float32, True),
    ("1", 3, torch.float64, False),
    ("auto", noise.COMPILE_MIN_NUMEL, torch.float32, True),
    ("auto", noise.COMPILE_MIN_NUMEL - 1, torch.float32, False),
])
def test_pick_compiles_what_the_setting_says(setting, numel, dtype, compiled, fake_compile,
                                             monkeypatch):
    monkeypatch.setenv(fast.COMPILE_ENV, setting)
    picked = noise._pick(numel, dtype)
    assert (picked is not None) == compiled
    if compiled:
        assert fake_compile == [(noise.normal_pairs, {"dynamic": False})]
        assert noise._pick(numel, dtype) is picked and len(fake_compile) == 1  # built once


def test_pick_stays_eager_without_toolchain_or_after_failure(fake_compile, monkeypatch):
    monkeypatch.setenv(fast.COMPILE_ENV, "1")
    monkeypatch.setattr(fast, "_toolchain_missing", lambda device: "no C++ compiler")
    assert noise._pick(10, torch.float32) is None
    monkeypatch.setattr(fast, "_toolchain_missing", lambda device: None)
    noise._disabled.append("earlier failure")
    assert noise._pick(10, torch.float32) is None and fake_compile == []


@pytest.mark.parametrize("setting", ["0", "1"])
def test_draws_match_numpy_transcription(setting, fake_compile, monkeypatch):
    monkeypatch.setenv(fast.COMPILE_ENV, setting)
    g = torch.Generator().manual_seed(7)
    out = noise.standard_normal((3, 5), g)
    key = int(torch.empty((), dtype=torch.int64).random_(generator=torch.Generator().manual_seed(7)))
    assert out.shape == (3, 5) and out.dtype == torch.float32
    np.testing.assert_allclose(out.reshape(-1).double().numpy(), _numpy_normals(key & M64, 15),
                               rtol=1e-5, atol=1e-5)


def test_fallback_when_compiling_fails(fake_compile, monkeypatch):
    monkeypatch.setenv(fast.COMPILE_ENV, "1")

    def broken(*args):
        raise RuntimeError("inductor failed")

    monkeypatch.setattr(torch, "compile", lambda fn, **kw: broken)
    eager = noise.normal_pairs  # the reference: same key, eager
    g = torch.Generator().manual_seed(3)
    with pytest.warns(RuntimeWarning, match="drawing eagerly"):
        out = noise.standard_normal((4,), g)
    assert noise._disabled and "RuntimeError: inductor failed" in noise._disabled[0]
    assert noise._compiled == []
    key = torch.empty((), dtype=torch.int64).random_(generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(out, eager(key, 2, torch.float32).reshape(-1))


def test_float64_draws_match_transcription_to_rounding(fake_compile, monkeypatch):
    """float64 (eager) resolves the 2^-24 offsets of the uniforms, which float32 tolerances hide."""
    monkeypatch.setenv(fast.COMPILE_ENV, "1")
    out = noise.standard_normal((257,), torch.Generator().manual_seed(11), dtype=torch.float64)
    key = int(torch.empty((), dtype=torch.int64).random_(generator=torch.Generator().manual_seed(11)))
    np.testing.assert_allclose(out.numpy(), _numpy_normals(key & M64, 257), rtol=1e-12, atol=1e-12)
    assert fake_compile == []  # float64 never compiles


def test_fallback_warning_points_at_the_caller_and_keeps_300_characters(fake_compile, monkeypatch):
    monkeypatch.setenv(fast.COMPILE_ENV, "1")

    def broken(*args):
        raise RuntimeError("y" * 1000)

    monkeypatch.setattr(torch, "compile", lambda fn, **kw: broken)
    with pytest.warns(RuntimeWarning) as record:
        noise.standard_normal((6,), torch.Generator().manual_seed(1))
    assert noise._disabled[0] == ("RuntimeError: " + "y" * 1000)[:300]
    assert str(record[0].message) == (f"samplers.dem.noise: drawing eagerly ({noise._disabled[0]}); "
                                      "the numbers are the same, only slower")
    # stacklevel 2: the caller's line, not noise.py nor the frame above the caller (pytest); the
    # caller is this file, or mutmut's trampoline between this file and standard_normal
    assert record[0].filename != noise.__file__ and "_pytest" not in record[0].filename


def test_other_devices_get_torch_randn_with_the_callers_generator(monkeypatch):
    """The non-CPU branch without a GPU: torch.randn replaced by a recorder."""
    calls = []
    monkeypatch.setattr(torch, "randn", lambda *a, **kw: calls.append((a, kw)) or "drawn")
    g = torch.Generator()
    assert noise.standard_normal((3, 4), g, dtype=torch.float64, device="cuda:1") == "drawn"
    assert calls == [(((3, 4),), {"generator": g, "device": torch.device("cuda:1"),
                                  "dtype": torch.float64})]


@pytest.mark.parametrize("fails", [False, True])
def test_compiled_and_fallback_draws_keep_float32_under_a_float64_default(fails, fake_compile,
                                                                           monkeypatch):
    monkeypatch.setenv(fast.COMPILE_ENV, "1")
    if fails:
        monkeypatch.setattr(torch, "compile", lambda fn, **kw: lambda *a: 1 / 0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out = noise.standard_normal((5,), torch.Generator().manual_seed(2))
    finally:
        torch.set_default_dtype(old)
    assert out.dtype == torch.float32 and bool(noise._disabled) == fails
