"""Conformance check of a target against the Target protocol (``python -m runners.check target=...``).

Independent of the target's own code where it can be: the gradient is compared with autograd of
the private float64 energy, the counters with the number of configurations passed, batch shapes
``[2, 4, dim]`` with the flat ``[8, dim]`` call, and particle targets with a translated copy.
"""
from __future__ import annotations

import dataclasses

import torch

import targets

from .check import Line


def check_target(name: str) -> list[Line]:
    """Protocol of target ``name``: attributes, shapes, counting, gradient, invariances."""
    t = targets.get(name)
    out = []
    missing = [a for a in ("name", "pretty_name", "dim", "n_particles", "spatial_dim", "log_Z",
                           "has_exact_samples", "fingerprint", "counter") if not hasattr(t, a)]
    out.append(Line("attributes of the Target protocol", not missing,
                    f"missing {missing}" if missing else "all present"))
    if missing:
        return out
    g = torch.Generator().manual_seed(0)
    x = t.reference("test", n=8, generator=g) if t.has_exact_samples else \
        0.8 * torch.randn(8, t.dim, generator=g)
    x = x.float()
    if t.n_particles is not None:
        out.append(Line("n_particles * spatial_dim == dim", t.n_particles * t.spatial_dim == t.dim,
                        f"{t.n_particles} x {t.spatial_dim} vs {t.dim}"))
        x = t.remove_mean(x)
    before = t.counter.energy_evals
    e = t.energy(x)
    out.append(Line("energy([8, dim]) -> [8], finite, float32",
                    tuple(e.shape) == (8,) and bool(torch.isfinite(e).all()) and e.dtype == x.dtype,
                    f"{tuple(e.shape)} {e.dtype}, {int((~torch.isfinite(e)).sum())} non-finite"))
    out.append(Line("energy counts one evaluation per configuration",
                    t.counter.energy_evals - before == 8, f"{t.counter.energy_evals - before}"))
    e3 = t.energy(x.reshape(2, 4, t.dim))
    out.append(Line("energy([2, 4, dim]) -> [2, 4], same values", tuple(e3.shape) == (2, 4)
                    and torch.allclose(e3.reshape(8), e, rtol=1e-5, atol=1e-4),
                    f"{tuple(e3.shape)}"))
    before_e, before_g = t.counter.energy_evals, t.counter.grad_evals
    e2, grad = t.energy_and_grad(x)
    out.append(Line("energy_and_grad counts energy and gradient per configuration",
                    (t.counter.energy_evals - before_e, t.counter.grad_evals - before_g) == (8, 8),
                    f"+{t.counter.energy_evals - before_e} energy, "
                    f"+{t.counter.grad_evals - before_g} grad"))
    rel = float((e2 - e).abs().max() / e.abs().max().clamp_min(1.0))
    out.append(Line("energy_and_grad energy equals energy() (relative 1e-5)", rel < 1e-5,
                    f"max relative difference {rel:.2e}"))
    xd = x.double().requires_grad_(True)
    (auto,) = torch.autograd.grad(t._energy(xd).sum(), xd)
    err = float((grad.double() - auto).abs().max() / auto.abs().max().clamp_min(1.0))
    out.append(Line("gradient equals autograd of the energy (float64)", err < 1e-3,
                    f"max relative error {err:.2e}"))
    lp_err = float((t.log_prob(x) + e).abs().max())
    out.append(Line("log_prob == -energy", lp_err < 1e-4, f"max diff {lp_err:.2e}"))
    sc_err = float((t.score(x) + grad).abs().max())
    out.append(Line("score == -grad energy", sc_err < 1e-4, f"max diff {sc_err:.2e}"))
    if t.n_particles is not None:
        shift = torch.randn(t.spatial_dim, generator=g).repeat(t.n_particles)
        d = float((t.energy(x + shift) - e).abs().max() / e.abs().max().clamp_min(1.0))
        out.append(Line("energy invariant under a translation of all particles", d < 1e-4,
                        f"max relative change {d:.2e}"))
    try:
        t.energy(torch.zeros(3, t.dim + 1))
        out.append(Line("energy refuses x of the wrong last dimension", False, "accepted"))
    except ValueError as exc:
        out.append(Line("energy refuses x of the wrong last dimension", True, str(exc)[:80]))
    ok = isinstance(t.fingerprint, str) and t.fingerprint == targets.get(name).fingerprint
    out.append(Line("fingerprint a stable string", ok, repr(t.fingerprint)))
    return [dataclasses.replace(line, where=name) for line in out]
