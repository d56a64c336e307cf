"""Starting points and reference densities for the MCMC baselines and SMC (no sampler state).

* :class:`Prior` / :func:`prior_for`: a normalised analytic density per target (``PRIOR_DEFAULTS``):
  GMM-40 U([-45, 45]^2) (the blog's SMC prior), particles a mean-free Gaussian.
* :func:`lattice_start`: compact LJ clusters on a cubic lattice of spacing 1 (the pair minimum).
* :func:`quench`: a displacement-capped gradient descent that moves stretched or collapsed DW-4
  starts into a well before MCMC (charged to the budget by the caller's ``allows``).
* :func:`resolve_device`, :func:`device_generator`: the device a sampler runs on, and its generator.
"""
from __future__ import annotations

import math

import torch

# (init, init_scale): GMM uniform half-width; particles Gaussian std or lattice jitter.
INIT_DEFAULTS = {"gmm40": ("prior", 45.0), "dw4": ("prior", 2.0), "lj13": ("lattice", 0.05),
                 "lj55": ("lattice", 0.05)}
# The prior of "prior" starts and of SMC: (kind, scale). Particle stds ~ the references' spread
# (DW-4 1.8, LJ-13 0.68 per coordinate) or wider.
PRIOR_DEFAULTS = {"gmm40": ("uniform", 45.0), "dw4": ("gaussian", 2.0), "lj13": ("gaussian", 1.0),
                  "lj55": ("gaussian", 1.0)}
INITS = ("prior", "lattice")
# Quench after the start, before warm-up: (steps, learning rate, max move per coordinate) of a
# displacement-capped gradient descent. DW-4's quartic wells make MALA reject forever from
# Gaussian starts with stretched or collapsed pairs (gradients in the hundreds; MALA is not
# geometrically ergodic for such tails, Roberts & Tweedie 1996); a short capped descent moves
# every chain into a well first. Lattice LJ starts need none.
QUENCH_DEFAULTS = {"dw4": (50, 0.05, 0.1)}
QUENCH_FALLBACK = (0, 0.01, 0.1)


def is_particle(target) -> bool:
    return getattr(target, "n_particles", None) is not None


def resolve_device(name: str, who: str) -> torch.device:
    """``torch.device(name)``; an unavailable CUDA device is an error, never a silent CPU run."""
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"{who}: config.device must be a torch device string such as 'cpu' or "
                         f"'cuda', got {name!r}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{who}: config.device={name!r} but no CUDA device is available")
    return dev


def device_generator(generator: torch.Generator, device: torch.device) -> torch.Generator:
    """``generator`` itself for CPU; else a generator on ``device`` seeded once from it."""
    if device.type == "cpu":
        return generator
    seed = int(torch.randint(2 ** 62, (1,), generator=generator))
    return torch.Generator(device).manual_seed(seed)


class Prior:
    """A normalised, analytic start/reference density (no target evaluations).

    ``uniform``: U([-scale, scale]^dim); ``gaussian``: N(0, scale^2 I), on the mean-free subspace
    for particle targets (density w.r.t. Lebesgue measure on the (N-1)·D-dimensional subspace,
    the convention of ``metrics.density`` for log Z)."""

    def __init__(self, target, kind: str, scale: float):
        if kind not in ("uniform", "gaussian"):
            raise ValueError(f"prior kind must be 'uniform' or 'gaussian', got {kind!r}")
        if not scale > 0:
            raise ValueError(f"prior scale must be > 0, got {scale!r}")
        self.kind, self.scale, self.dim = kind, float(scale), int(target.dim)
        self.project = target.remove_mean if is_particle(target) else None
        self.d_eff = self.dim - (target.spatial_dim if is_particle(target) else 0)
        if kind == "uniform" and self.project is not None:
            raise ValueError(f"{target.name}: a uniform prior is not defined on the mean-free subspace")

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        if self.kind == "uniform":
            return (2 * torch.rand(n, self.dim, generator=generator) - 1) * self.scale
        z = torch.randn(n, self.dim, generator=generator)
        return self.scale * (z if self.project is None else self.project(z))

    def energy_and_grad(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(-log p0(x) ``[C]``, -∇log p0 ``[C, D]``); +inf outside the uniform box."""
        if self.kind == "uniform":
            inside = (x.abs() <= self.scale).all(-1)
            e = torch.full(x.shape[:-1], self.dim * math.log(2 * self.scale), dtype=x.dtype,
                           device=x.device)
            return torch.where(inside, e, torch.full_like(e, math.inf)), torch.zeros_like(x)
        s2 = self.scale ** 2
        e = x.pow(2).sum(-1) / (2 * s2) + 0.5 * self.d_eff * math.log(2 * math.pi * s2)
        return e, x / s2


def prior_for(target, scale: float | None = None) -> Prior:
    kind, default = PRIOR_DEFAULTS.get(target.name, ("gaussian", 1.0))
    return Prior(target, kind, default if scale is None else scale)


def _rotations(n: int, gen: torch.Generator) -> torch.Tensor:
    """``[n, 3, 3]`` Haar-random rotations (QR of a Gaussian matrix with the sign fix)."""
    q, r = torch.linalg.qr(torch.randn(n, 3, 3, generator=gen, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]
    return q * torch.det(q)[:, None, None]  # det -1 -> +1 (flips all columns; still Haar on SO(3))


def lattice_start(target, n: int, jitter: float, gen: torch.Generator) -> torch.Tensor:
    """``[n, dim]`` mean-free compact clusters: the N cubic-lattice sites (spacing 1) nearest a
    uniformly random centre, randomly rotated, plus N(0, jitter^2) noise."""
    npart, d = target.n_particles, target.spatial_dim
    k = math.ceil((3 * npart) ** (1 / d)) + 1
    grid = torch.stack(torch.meshgrid(*[torch.arange(-k, k + 1.0)] * d, indexing="ij"), -1).reshape(-1, d)
    centres = torch.rand(n, 1, d, generator=gen)
    near = (grid[None] - centres).norm(dim=-1).argsort(dim=1)[:, :npart]  # [n, N]
    x = grid[near].double()
    if d == 3:
        x = x @ _rotations(n, gen).transpose(-1, -2)
    x = x.float() + jitter * torch.randn(n, npart, d, generator=gen)
    return target.remove_mean(x.reshape(n, -1))


def quench(x: torch.Tensor, energy_and_grad, n_steps: int, lr: float, max_move: float,
           project=None, allows=lambda n: True) -> tuple[torch.Tensor, int]:
    """Up to ``n_steps`` of x <- x - clamp(lr ∇E(x), ±max_move) on ``[C, D]`` chains, each
    costing C evaluations; stops early when ``allows(C)`` is False. Returns (x, steps done)."""
    done = 0
    for _ in range(n_steps):
        if not allows(x.shape[0]):
            break
        _, g = energy_and_grad(x)
        move = torch.nan_to_num(lr * g, nan=0.0).clamp(-max_move, max_move)
        x = x - move if project is None else project(x - move)
        done += 1
    return x, done


def initial_positions(target, n: int, init: str, scale: float, gen: torch.Generator) -> torch.Tensor:
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if init == "lattice":
        if not is_particle(target):
            raise ValueError(f"{target.name}: init 'lattice' needs a particle target")
        return lattice_start(target, n, scale, gen)
    return prior_for(target, scale).sample(n, gen)
