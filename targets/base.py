"""The `Target` protocol and the counting base class every energy derives from.

A target exposes a Boltzmann density p(x) ∝ exp(-E(x)) over flat coordinates ``x`` of shape
``[..., dim]`` (particle targets: ``[..., n_particles * spatial_dim]``, particle-major).
The public methods validate their input, charge the target's own counters and call the private
``_energy`` / ``_energy_and_grad``; samplers only ever see the public methods, so the runner can
report energy and gradient evaluations without trusting the sampler.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch


class TargetInputError(ValueError):
    """An input to a target has the wrong shape or dtype."""


@dataclass
class EvalCounter:
    """Energy and gradient evaluations, one per configuration (not per call)."""

    energy_evals: int = 0
    grad_evals: int = 0

    def snapshot(self) -> dict[str, int]:
        return {"energy_evals": self.energy_evals, "grad_evals": self.grad_evals}


@runtime_checkable
class TargetProtocol(Protocol):
    name: str
    pretty_name: str
    dim: int
    n_particles: int | None
    spatial_dim: int | None
    log_Z: float | None
    has_exact_samples: bool
    fingerprint: str
    counter: EvalCounter

    def energy(self, x: torch.Tensor) -> torch.Tensor: ...
    def log_prob(self, x: torch.Tensor) -> torch.Tensor: ...
    def score(self, x: torch.Tensor) -> torch.Tensor: ...
    def reference(self, split: str = "test", n: int | None = None,
                  generator: torch.Generator | None = None) -> torch.Tensor: ...


class Target:
    """Base class: validation, counting, autograd score, fingerprint.

    Subclasses set the class attributes, store their defining parameters in ``self.params``
    (a JSON-serialisable dict, hashed into ``fingerprint``) and implement ``_energy``.
    """

    name: ClassVar[str]
    pretty_name: ClassVar[str]
    n_particles: int | None = None
    spatial_dim: int | None = None
    log_Z: float | None = None
    has_exact_samples: ClassVar[bool] = False

    def __init__(self, dim: int, params: dict[str, Any]):
        self.dim = int(dim)
        self.params = dict(params)
        self.counter = EvalCounter()

    # ------------------------------------------------------------------ identity
    @property
    def fingerprint(self) -> str:
        """sha256 (first 16 hex) of the target's name and defining parameters."""
        blob = json.dumps({"name": self.name, "dim": self.dim, **self.params},
                          sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def describe(self) -> dict[str, Any]:
        return {"target": self.name, "target_fingerprint": self.fingerprint,
                "target_params": dict(self.params)}

    def reset_counter(self) -> None:
        self.counter = EvalCounter()

    # ------------------------------------------------------------------ public API
    def energy(self, x: torch.Tensor) -> torch.Tensor:
        """E(x) for ``x`` of shape ``[..., dim]``; returns ``[...]``. Charged per configuration."""
        self._check(x)
        n = _n_configs(x)
        self.counter.energy_evals += n
        e = self._energy(x)
        if e.requires_grad:
            # A gradient that autograd takes through this energy (a sampler differentiating its
            # loss through E) is a gradient evaluation of the same configurations: charged when
            # the backward pass reaches it, once per pass, as energy_and_grad charges its own.
            e.register_hook(lambda grad: self._charge_grad(n))
        return e

    def _charge_grad(self, n: int) -> None:
        self.counter.grad_evals += n

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Unnormalised log p̃(x) = -E(x) (normalised where ``log_Z == 0``)."""
        return -self.energy(x)

    def energy_and_grad(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(E(x) ``[...]``, ∇E(x) ``[..., dim]``), detached; charges one energy and one gradient
        evaluation per configuration. This is the batched call the samplers use."""
        self._check(x)
        n = _n_configs(x)
        self.counter.energy_evals += n
        self.counter.grad_evals += n
        e, g = self._energy_and_grad(x.detach())
        return e.detach(), g.detach()

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """∇ log p(x) = -∇E(x), shape ``[..., dim]``."""
        return -self.energy_and_grad(x)[1]

    # ------------------------------------------------------------------ to implement
    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _energy_and_grad(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Autograd default; targets may override with a fused analytic gradient.
        with torch.enable_grad():
            x = x.requires_grad_(True)
            e = self._energy(x)
            (g,) = torch.autograd.grad(e.sum(), x)
        return e, g

    # ------------------------------------------------------------------ references
    def reference(self, split: str = "test", n: int | None = None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def reference_info(self, split: str = "test") -> dict[str, Any]:
        """Provenance of the reference set ``split`` (source, file, sha256); recorded in rows."""
        return {"reference_source": "none"}

    # ------------------------------------------------------------------ helpers
    def _check(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise TargetInputError(
                f"{self.name}: x must be a torch.Tensor of shape [..., {self.dim}], "
                f"got {type(x).__name__}")
        if x.ndim == 0 or x.shape[-1] != self.dim:
            raise TargetInputError(
                f"{self.name}: x must have shape [..., {self.dim}] (flat coordinates), "
                f"got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TargetInputError(
                f"{self.name}: x must be floating point (float32 or float64), got {x.dtype}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, fingerprint={self.fingerprint})"


def _n_configs(x: torch.Tensor) -> int:
    return int(x[..., 0].numel())


def subsample_rows(data: torch.Tensor, n: int | None, generator: torch.Generator | None,
                   what: str) -> torch.Tensor:
    """First ``n`` rows, or ``n`` rows drawn without replacement by ``generator``."""
    if n is None:
        return data
    if n <= 0 or n > data.shape[0]:
        raise ValueError(f"{what}: n must be in [1, {data.shape[0]}], got {n}")
    if generator is None:
        return data[:n]
    idx = torch.randperm(data.shape[0], generator=generator)[:n]
    return data[idx]
