"""Standard normal noise for the MC score estimator: a counter-based generator, run in parallel.

A DEM training step draws B x K x dim normals (DW-4: 512 x 1000 x 8 = 4.1 M). On CPU,
``torch.randn(generator=g)`` fills them from one Mersenne Twister, which is sequential by
construction: 26-31 ms for DW-4's draw on this project's 2-core machine, a quarter of the whole
step (docs/performance.md). A counter-based generator has no sequential state: value k is a hash
of (key, k), so any thread can compute any value, and compiled the whole draw is one parallel loop
(5.5 ms for the same 4.1 M normals, 2 threads).

The generator, :func:`standard_normal`:

* key: one 63-bit integer drawn from the caller's ``torch.Generator`` per call, so the caller's
  generator still fixes every number and advances by one draw, whatever the size;
* bits: SplitMix64 (Steele, Lea & Flood 2014, the generator behind Java's ``SplittableRandom``),
  whose k-th output is mix(key + (k + 1) * 0x9E3779B97F4A7C15), with the published mixing
  constants; it passes BigCrush. Arithmetic is int64 with wrap-around; right shifts are masked
  so they act as logical (unsigned) shifts;
* normals: Box-Muller on two 24-bit uniforms per 64-bit output, u1 = (bits 40-63 + 1) / 2^24 in
  (0, 1] (so log u1 is finite) and u2 = bits 0-23 / 2^24 in [0, 1), both exact in float32, so the
  compiled and eager paths start from the same values. That is the resolution of torch's own CPU
  normals (24-bit uniforms, Box-Muller; |z| <= 5.8); the first half of the output holds the
  r cos(theta), the second half the r sin(theta) of the same pairs.

Large float32 draws on CPU run compiled (``torch.compile``, as ``targets.fast`` does for the
energies, and under the same ``BOLTZBENCH_COMPILE`` setting); small ones, other dtypes, and
machines without a C++ compiler run the same function eagerly: the same numbers to float rounding
(the integer part is exact; log, sqrt, sin and cos may differ in the last bit). Other devices
(CUDA) use ``torch.randn``, whose generator is already parallel there.

This is a deliberate difference from the official code, which draws ``torch.randn``: the noise
is a different (equally exact) sample of N(0, I), so runs are reproducible from our seeds but
do not replay the official code's random numbers, which no reimplementation does anyway.
"""
from __future__ import annotations

import math
import warnings

import torch

from targets import fast

COMPILE_MIN_NUMEL = 1 << 18  # normals; below this a compiled call does not pay for itself
_GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15 as a signed int64
_MIX1 = -4658895280553007687    # 0xBF58476D1CE4E5B9
_MIX2 = -7723592293110705685    # 0x94D049BB133111EB
_LOW24 = (1 << 24) - 1
_compiled: list = []  # the compiled normal_pairs, once built
_disabled: list[str] = []  # why compilation was given up, once it failed


def splitmix64(key: torch.Tensor, pairs: int) -> torch.Tensor:
    """The first ``pairs`` SplitMix64 outputs for state ``key`` (0-d int64): ``[pairs]`` int64
    holding the unsigned 64-bit values in two's complement."""
    z = torch.arange(1, pairs + 1, dtype=torch.int64, device=key.device) * _GOLDEN + key
    z = (z ^ ((z >> 30) & ((1 << 34) - 1))) * _MIX1
    z = (z ^ ((z >> 27) & ((1 << 37) - 1))) * _MIX2
    return z ^ ((z >> 31) & ((1 << 33) - 1))


def normal_pairs(key: torch.Tensor, pairs: int, dtype: torch.dtype) -> torch.Tensor:
    """``[2, pairs]`` normals: Box-Muller on the 24-bit uniforms of :func:`splitmix64` (row 0 the
    r cos(theta), row 1 the r sin(theta) of the same pairs)."""
    bits = splitmix64(key, pairs)
    u1 = (((bits >> 40) & _LOW24) + 1).to(dtype) * 2.0 ** -24    # (0, 1], exact in float32
    u2 = (bits & _LOW24).to(dtype) * 2.0 ** -24                   # [0, 1)
    radius = torch.sqrt(-2.0 * torch.log(u1))
    angle = u2 * (2.0 * torch.pi)
    return torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)])


def _pick(numel: int, dtype: torch.dtype):
    """The compiled :func:`normal_pairs`, or None to run it eagerly."""
    if _disabled or dtype != torch.float32:
        return None
    setting = fast.compile_setting()
    if setting == "0" or (setting == "auto" and numel < COMPILE_MIN_NUMEL):
        return None
    if fast._toolchain_missing(torch.device("cpu")) is not None:
        return None
    if not _compiled:
        # static shapes: a training run draws one shape; dynamic ones miscompiled the int64 hash
        _compiled.append(torch.compile(normal_pairs, dynamic=False))
    return _compiled[0]


def standard_normal(shape: tuple[int, ...], generator: torch.Generator,
                    dtype: torch.dtype = torch.float32,
                    device: torch.device | str = "cpu") -> torch.Tensor:
    """A ``shape`` tensor of independent N(0, 1) values, fixed by ``generator`` (module doc).

    ``generator`` must live on ``device``. CPU: the counter-based generator; elsewhere
    ``torch.randn``."""
    device = torch.device(device)
    if device.type != "cpu":
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)
    if not dtype.is_floating_point:
        raise ValueError(f"standard_normal: dtype must be floating point, got {dtype}")
    numel = math.prod(int(s) for s in shape)
    key = torch.empty((), dtype=torch.int64).random_(generator=generator)
    pairs = (numel + 1) // 2
    compiled = _pick(numel, dtype)
    if compiled is None:
        out = normal_pairs(key, pairs, dtype)
    else:
        try:
            out = compiled(key, pairs, dtype)
        # Compilation depends on a toolchain outside torch; its failure must not cost the draw.
        except Exception as err:  # noqa: BLE001
            _disabled.append(f"{type(err).__name__}: {err}"[:300])
            _compiled.clear()
            warnings.warn(f"samplers.dem.noise: drawing eagerly ({_disabled[0]}); the numbers "
                          "are the same, only slower", RuntimeWarning, stacklevel=2)
            out = normal_pairs(key, pairs, dtype)
    return out.reshape(-1)[:numel].view(shape)
