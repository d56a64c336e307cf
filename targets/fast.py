"""Fused energies with analytic gradients: DW-4, Lennard-Jones clusters and GMM-40 in one pass.

Samplers such as iDEM spend nearly all their time in ``energy_and_grad`` on huge batches (512 x
1000 configurations per DEM training step). Autograd through the readable ``_energy`` definitions
builds a graph, runs a backward pass and keeps every intermediate; these kernels compute E and
dE/dx together from the same pair quantities, without autograd:

* pair potentials phi(d): dE/dx_i = sum_j phi'(d_ij) / d_ij * (x_i - x_j) (times the pair factor),
  so each kernel forms the weight w_ij = phi'(d_ij) / d_ij beside phi(d_ij);
* Lennard-Jones needs no square root: with q = r_m^2 / (|r|^2 + softening) (bgflow's softened
  distance d^2 = |r|^2 + 1e-6), phi = eps (q^6 - 2 q^3) and w = -12 eps (q^6 - q^3) q / r_m^2;
* the harmonic term 0.5 s sum_i |x_i - mean|^2 has gradient s (x_i - mean) (the mean's own
  derivative sums to zero);
* GMM-40: dE/dx = sum_k resp_k(x) (x - mu_k) / sigma^2, with resp the softmax of the component
  log-densities.

Layout, chosen by measurement (1 thread, torch 2.13 CPU): once compiled, the full N x N pair matrix
with its diagonal masked beats the N(N-1)/2 upper-triangle pairs (LJ-13 at 64k configurations
45 ms vs 65 ms, LJ-55 at 3.2k 31 ms vs 79 ms), because gathering and scattering the triangle
defeats vectorisation; eagerly the triangle is ~1.7x faster, but eager is only the fallback. The
kernels work on coordinate columns ``[..., N]`` so that every reduction runs over the last axis:
with reductions over a middle axis (``[..., N, D]`` summed over N) inductor parallelised the short
reduction inside the batch loop, and on 2 threads that made LJ-13 15x slower than on one.

:func:`fused` is the driver the targets call: it flattens the batch, processes it in chunks of
bounded memory (about ``CHUNK_ENTRIES`` pair entries each) and, for batches of at least
``COMPILE_MIN_BATCH`` float32 configurations, runs the kernel through ``torch.compile`` with a
dynamic batch axis, so one compilation serves every chunk size. ``BOLTZBENCH_COMPILE=0`` stays
eager, ``=1`` compiles every batch size and dtype. Where compilation is unavailable (no C++
compiler on CPU, no triton on GPU) or fails, it warns once and falls back to the eager kernel,
which gives the same numbers to float rounding. A compiled kernel keeps the torch thread count
current at its first call.
"""
from __future__ import annotations

import math
import os
import shutil
import warnings
from typing import Callable

import torch

COMPILE_MIN_BATCH = 4096  # configurations; below this the compiled call's overhead does not pay
CHUNK_ENTRIES = 1 << 22   # pair (or mixture-component) entries per chunk: ~16 MB per float32 buffer
COMPILE_ENV = "BOLTZBENCH_COMPILE"

Kernel = Callable[..., "tuple[torch.Tensor, torch.Tensor]"]


# ----------------------------------------------------------------------------- pure kernels
def _pair_columns(xp: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Per-coordinate differences r^a_ij = x^a_i - x^a_j ``[..., N, N]`` (one per spatial axis),
    squared distances ``[..., N, N]`` and the diagonal mask ``[N, N]``."""
    n = xp.shape[-2]
    cols = xp.unbind(-1)
    diffs = [c.unsqueeze(-1) - c.unsqueeze(-2) for c in cols]
    d2 = diffs[0] * diffs[0]
    for r in diffs[1:]:
        d2 = d2 + r * r
    return diffs, d2, torch.eye(n, dtype=torch.bool, device=xp.device)


def _pair_forces(w: torch.Tensor, diffs: list[torch.Tensor]) -> torch.Tensor:
    """sum_j w_ij (x_i - x_j): weights ``[..., N, N]`` -> ``[..., N, D]``."""
    return torch.stack([(w * r).sum(-1) for r in diffs], dim=-1)


def dw_energy_and_grad(xp: torch.Tensor, a: float, b: float, c: float,
                       offset: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Double well E = sum_{i<j} a s^4 + b s^2 + c, s = d_ij - offset (bgflow MultiDoubleWell).

    ``xp [..., N, D]`` -> (E ``[...]``, dE/dx ``[..., N, D]``). Coincident particles (d = 0) get a
    zero pair force, as torch.cdist's gradient in the official code does."""
    diffs, d2, eye = _pair_columns(xp)
    d = d2.clamp_min(torch.finfo(xp.dtype).tiny).sqrt()
    s = d - offset
    s2 = s * s
    pair = ((a * s2 + b) * s2 + c).masked_fill(eye, 0.0)
    w = (((4.0 * a) * s2 + 2.0 * b) * s / d).masked_fill(eye, 0.0)  # phi'(d) / d
    return 0.5 * pair.sum((-2, -1)), _pair_forces(w, diffs)


def lj_energy_and_grad(xp: torch.Tensor, eps: float, rm: float, softening: float,
                       pair_factor: float, oscillator_scale: float
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Lennard-Jones cluster as ``targets.particles.LennardJones`` defines it:
    pair_factor sum_{i<j} eps[(r_m/d)^12 - 2 (r_m/d)^6] + oscillator_scale 0.5 sum_i |x_i - mean|^2,
    d = sqrt(|r|^2 + softening). ``xp [..., N, D]`` -> (E ``[...]``, dE/dx ``[..., N, D]``)."""
    diffs, d2, eye = _pair_columns(xp)
    q = ((rm * rm) / (d2 + softening)).masked_fill(eye, 0.0)  # (r_m / d)^2, 0 on the diagonal
    p6 = q * q * q
    p12 = p6 * p6
    # Every unordered pair appears twice in the N x N matrix, hence the halves.
    energy = (0.5 * pair_factor * eps) * (p12 - 2.0 * p6).sum((-2, -1))
    w = (-12.0 * pair_factor * eps / (rm * rm)) * (p12 - p6) * q  # pair_factor phi'(d) / d
    grads = []
    for col, r in zip(xp.unbind(-1), diffs):
        centred = col - col.mean(-1, keepdim=True)
        energy = energy + (0.5 * oscillator_scale) * (centred * centred).sum(-1)
        grads.append((w * r).sum(-1) + oscillator_scale * centred)
    return energy, torch.stack(grads, dim=-1)


def gmm_energy_and_grad(x: torch.Tensor, means: torch.Tensor,
                        std: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Equally weighted isotropic Gaussian mixture, E = -log p (normalised).

    ``x [..., D]``, ``means [K, D]`` -> (E ``[...]``, dE/dx ``[..., D]``)."""
    k, dim = means.shape
    inv_var = 1.0 / (std * std)
    diffs = [x[..., a, None] - means[:, a] for a in range(dim)]  # [..., K] each
    sq = diffs[0] * diffs[0]
    for r in diffs[1:]:
        sq = sq + r * r
    comp = (-0.5 * inv_var) * sq
    top = comp.amax(-1, keepdim=True)
    p = torch.exp(comp - top)  # unnormalised responsibilities
    total = p.sum(-1)
    log_norm = -dim * math.log(std) - 0.5 * dim * math.log(2 * math.pi) - math.log(k)
    energy = -(top.squeeze(-1) + torch.log(total) + log_norm)
    scale = (inv_var / total).unsqueeze(-1)
    return energy, torch.stack([(p * r).sum(-1) for r in diffs], dim=-1) * scale


# ----------------------------------------------------------------------------- driver
_compiled: dict[Kernel, Kernel] = {}
_disabled: dict[Kernel, str] = {}


def compile_setting() -> str:
    """``BOLTZBENCH_COMPILE``: "auto" (default: compile batches >= COMPILE_MIN_BATCH), "1", "0"."""
    value = os.environ.get(COMPILE_ENV, "auto").strip().lower()
    if value not in ("auto", "0", "1"):
        raise ValueError(f"{COMPILE_ENV} must be one of auto, 0, 1; got {value!r}")
    return value


def _toolchain_missing(device: torch.device) -> str | None:
    if device.type == "cpu":
        if not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
            return "no C++ compiler on PATH"
        return None
    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return "triton is not installed"
        return None
    return f"device type {device.type!r} is not supported"


def _pick(kernel: Kernel, x: torch.Tensor) -> Callable | None:
    """The compiled writer for ``kernel`` on ``x``, or None to run eagerly."""
    setting = compile_setting()
    if setting == "0" or kernel in _disabled or x.shape[0] < 2:
        return None
    # "auto" compiles the sampling workload only: large float32 batches. Float64 is for checks,
    # where a compilation (seconds) would cost more than it saves.
    if setting == "auto" and (x.shape[0] < COMPILE_MIN_BATCH or x.dtype != torch.float32):
        return None
    reason = _toolchain_missing(x.device)
    if reason is not None:
        _disable(kernel, reason)
        return None
    if kernel not in _compiled:
        _compiled[kernel] = torch.compile(_writer(kernel), dynamic=False)
    return _compiled[kernel]


def _writer(kernel: Kernel) -> Callable:
    """``kernel`` writing into preallocated outputs. Compiled, the results go straight into the
    caller's buffers: 20% faster than concatenating chunk results for LJ-13 at 512k configurations."""
    def write(x, e_out, g_out, *params):
        e, g = kernel(x, *params)
        e_out.copy_(e)
        g_out.copy_(g)
    return write


def _disable(kernel: Kernel, reason: str) -> None:
    _disabled[kernel] = reason
    _compiled.pop(kernel, None)
    warnings.warn(f"targets.fast: running {kernel.__name__} eagerly ({reason}); energies are "
                  f"unchanged but slower. Set {COMPILE_ENV}=0 to silence this.", RuntimeWarning,
                  stacklevel=3)


def fused(kernel: Kernel, x: torch.Tensor, *params, event_dims: int = 2,
          entries_per_config: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``kernel(chunk, *params)`` over ``x [..., *event]`` in memory-bounded chunks.

    ``event_dims`` trailing axes form one configuration (2 for ``[N, D]`` particles, 1 for flat
    vectors). ``entries_per_config`` sizes the chunks (default N*N for particles). Returns
    (E ``[...]``, dE/dx shaped like ``x``), detached. Chunks split the batch evenly, so a chunk's
    result never depends on how large the whole batch was (eager mode: bitwise)."""
    batch_shape, event = x.shape[:x.ndim - event_dims], x.shape[x.ndim - event_dims:]
    flat = x.detach().reshape(-1, *event)
    n = flat.shape[0]
    per = entries_per_config or (event[0] * event[0] if event_dims == 2 else event[0])
    n_chunks = math.ceil(n / max(1, CHUNK_ENTRIES // max(1, per)))
    write = _pick(kernel, flat)
    with torch.no_grad():
        if write is None and n_chunks <= 1:
            e, g = kernel(flat, *params)
        else:
            e, g = flat.new_empty(n), torch.empty_like(flat)
            try:
                _run_chunks(kernel, write, flat, e, g, params, n_chunks)
            # Compilation depends on a toolchain outside torch; its failure must not cost the energy.
            except Exception as err:
                if write is None:
                    raise
                _disable(kernel, f"torch.compile failed: {type(err).__name__}: {err}"[:300])
                _run_chunks(kernel, None, flat, e, g, params, n_chunks)
    return e.reshape(batch_shape), g.reshape(x.shape)


def _run_chunks(kernel, write, flat, e, g, params, n_chunks) -> None:
    for xs, es, gs in zip(*(torch.tensor_split(t, n_chunks) for t in (flat, e, g))):
        if write is not None and xs.shape[0] >= 2:  # a dynamic axis cannot have size 0 or 1
            for t in (xs, es, gs):
                torch._dynamo.mark_dynamic(t, 0)  # one compilation serves every chunk size
            write(xs, es, gs, *params)
        else:
            ek, gk = kernel(xs, *params)
            es.copy_(ek)
            gs.copy_(gk)
