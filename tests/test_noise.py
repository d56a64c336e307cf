"""The estimator's counter-based normal generator (samplers/dem/noise.py): the bits against an
independent SplitMix64 transcription, the law (moments, CDF), independence, determinism, and the
compiled path against the eager one."""
from __future__ import annotations

import math

import pytest
import torch

from samplers.dem import noise
from targets import fast

MASK64 = (1 << 64) - 1


def splitmix64_reference(state: int, n: int) -> list[int]:
    """SplitMix64 as published (Steele, Lea & Flood 2014; Vigna's splitmix64.c), in Python's
    unbounded integers reduced mod 2^64."""
    out = []
    for _ in range(n):
        state = (state + 0x9E3779B97F4A7C15) & MASK64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        out.append(z ^ (z >> 31))
    return out


@pytest.mark.parametrize("key", [0, 1, 1234567, 2**63 - 1, -2**63, -5])
def test_splitmix64_matches_the_published_generator(key):
    got = noise.splitmix64(torch.tensor(key, dtype=torch.int64), 64).tolist()
    want = splitmix64_reference(key & MASK64, 64)
    assert [g & MASK64 for g in got] == want


def test_known_splitmix64_value():
    # Vigna's reference generator seeded with 0 starts with 0xE220A8397B1DCDAF.
    first = noise.splitmix64(torch.tensor(0, dtype=torch.int64), 1).item() & MASK64
    assert first == 0xE220A8397B1DCDAF


def _normal_cdf(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1 + torch.erf(z / math.sqrt(2)))


def test_draw_is_standard_normal():
    n = 1_000_000
    z = noise.standard_normal((n,), torch.Generator().manual_seed(3), dtype=torch.float64)
    se = 1 / math.sqrt(n)
    assert abs(z.mean().item()) < 5 * se
    assert abs(z.var().item() - 1) < 5 * math.sqrt(2) * se
    assert abs((z ** 3).mean().item()) < 5 * math.sqrt(15) * se
    assert abs((z ** 4).mean().item() - 3) < 5 * math.sqrt(96) * se
    # Kolmogorov-Smirnov distance against the normal CDF: ~0.87 / sqrt(n) typical, 1.63 at 1%
    zs, _ = z.sort()
    cdf = _normal_cdf(zs)
    i = torch.arange(1, n + 1, dtype=torch.float64)
    ks = torch.maximum(i / n - cdf, cdf - (i - 1) / n).max().item()
    assert ks < 1.63 / math.sqrt(n)
    # tails: P(|z| > 3) = 0.0027
    assert abs((z.abs() > 3).double().mean().item() - 0.0026998) < 5 * math.sqrt(0.0027 / n)


def test_draw_is_uncorrelated_within_and_between_calls():
    g = torch.Generator().manual_seed(4)
    a = noise.standard_normal((400, 1000), g).double().flatten()
    b = noise.standard_normal((400, 1000), g).double().flatten()
    n = a.numel()
    bound = 5 / math.sqrt(n)
    half = n // 2
    assert abs((a[:half] * a[half:]).mean().item()) < bound * math.sqrt(2)  # cos and sin rows
    assert abs((a[1:] * a[:-1]).mean().item()) < bound    # neighbours
    assert abs((a * b).mean().item()) < bound              # two calls, two keys
    assert abs((a ** 2 * b ** 2).mean().item() - 1) < 5 * bound * math.sqrt(8)


def test_generator_fixes_the_draw_and_advances_by_one():
    shape = (7, 11, 3)  # odd size
    z1 = noise.standard_normal(shape, torch.Generator().manual_seed(9))
    z2 = noise.standard_normal(shape, torch.Generator().manual_seed(9))
    z3 = noise.standard_normal(shape, torch.Generator().manual_seed(10))
    assert z1.shape == shape and z1.dtype == torch.float32
    assert torch.equal(z1, z2) and not torch.equal(z1, z3)
    g, h = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    noise.standard_normal((1000,), g)
    torch.empty((), dtype=torch.int64).random_(generator=h)
    assert torch.equal(g.get_state(), h.get_state())
    # a prefix of a larger draw with the same key is not promised; the size is part of the draw
    assert noise.standard_normal((0,), torch.Generator().manual_seed(1)).shape == (0,)


def test_rejects_integer_dtype():
    with pytest.raises(ValueError, match="dtype must be floating point"):
        noise.standard_normal((4,), torch.Generator(), dtype=torch.int64)


def test_compiled_draw_equals_eager(monkeypatch):
    if fast._toolchain_missing(torch.device("cpu")) is not None:
        pytest.skip("no C++ compiler: only the eager path exists here")
    monkeypatch.setenv(fast.COMPILE_ENV, "1")
    shape = (32, 100, 8)
    compiled = noise.standard_normal(shape, torch.Generator().manual_seed(5))
    assert noise._compiled and not noise._disabled
    monkeypatch.setenv(fast.COMPILE_ENV, "0")
    eager = noise.standard_normal(shape, torch.Generator().manual_seed(5))
    torch.testing.assert_close(compiled, eager, rtol=0, atol=1e-5)
