"""The long-MCMC engine of the reference builder (``python -m runners.make_reference``).

Starting points (:func:`initial_states`: random rotations and permutations of a Mackay
icosahedron for LJ, quenched out of the repulsive wall) and :class:`ChainRun`, many parallel
chains of one kernel from :mod:`samplers.kernels` (the same steps the MCMC baselines use;
energies only through ``target.energy_and_grad``): the step size adapted during burn-in only and
then frozen, extendable round by round, every post-burn-in state's energy, Rg² and virial
recorded and every ``thin``-th state kept. No files and no verdict here: those are
runners/reference_files.py and runners/reference_diagnostics.py.
"""
from __future__ import annotations

import itertools
import time

import torch

from samplers import kernels

KERNELS = ("hmc", "mala", "rwm")
# Step sizes that start adaptation in the right decade (HMC/MALA: leapfrog / Langevin step,
# RWM: proposal std, as the blog's tuned values: DW-4 0.5, LJ-13 0.025, LJ-55 0.0075).
DEFAULT_STEP = {"dw4": {"hmc": 0.1, "mala": 0.05, "rwm": 0.5},
                "lj13": {"hmc": 0.02, "mala": 0.005, "rwm": 0.025},
                "lj55": {"hmc": 0.015, "mala": 0.003, "rwm": 0.0075}}
TARGET_ACCEPT = {"hmc": 0.75, "mala": 0.574, "rwm": 0.234}  # usual optima (Roberts & Rosenthal)


# ----------------------------------------------------------------------------- starting points
def icosahedral_cluster(shells: int) -> torch.Tensor:
    """Mackay icosahedron with ``shells`` shells, unit radial spacing: ``[N, 3]`` float64,
    N = 1, 13, 55, 147 for shells 0..3. Shell k holds the icosahedron scaled by k with k-1
    points along each edge and the interior points of each triangular face."""
    phi = (1 + 5 ** 0.5) / 2
    v = torch.tensor([p for a, b in itertools.product((-1, 1), (-1, 1))
                      for p in ((0, a, b * phi), (a, b * phi, 0), (b * phi, 0, a))],
                     dtype=torch.float64)
    v = v / v.norm(dim=1, keepdim=True)
    d = torch.cdist(v, v)
    adj = (d - d[0][d[0] > 1e-9].min()).abs() < 1e-6
    edges = [(i, j) for i in range(12) for j in range(i + 1, 12) if adj[i, j]]
    faces = [(i, j, k) for i, j in edges for k in range(j + 1, 12) if adj[i, k] and adj[j, k]]
    pts = [torch.zeros(1, 3, dtype=torch.float64)]
    for k in range(1, shells + 1):
        pts.append(k * v)
        pts += [((k - s) * v[i] + s * v[j])[None] for i, j in edges for s in range(1, k)]
        pts += [((k - a - b) * v[i] + a * v[j] + b * v[l])[None] for i, j, l in faces
                for a in range(1, k) for b in range(1, k - a)]
    return torch.cat(pts)


def _random_rotations(n: int, gen: torch.Generator) -> torch.Tensor:
    """``[n, 3, 3]`` Haar-uniform rotations (QR of a Gaussian with the sign fix, det +1)."""
    q, r = torch.linalg.qr(torch.randn(n, 3, 3, generator=gen, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]
    q[:, :, 0] *= torch.det(q)[:, None]
    return q


def initial_states(target, chains: int, gen: torch.Generator) -> torch.Tensor:
    """``[chains, dim]`` float32 mean-free starts, each an independent random rotation and atom
    permutation of one structure (so orientation and labelling are already at equilibrium), then
    quenched briefly so no pair sits in the stiff repulsive wall (a chain started there rejects
    every move). LJ: the icosahedron at the spacing that minimises the energy; DW-4: N(0, 1.5²)."""
    n, d = target.n_particles, target.spatial_dim
    if target.name.startswith("lj"):
        shells = {13: 1, 55: 2, 147: 3}.get(n)
        if shells is None:
            raise ValueError(f"{target.name}: no icosahedral start for {n} particles")
        base = icosahedral_cluster(shells).float()
        scales = torch.linspace(0.85, 1.1, 51)
        e = target.energy((scales[:, None, None] * base).reshape(len(scales), -1))
        base = scales[int(e.argmin())] * base
        x = (base[None].double() @ _random_rotations(chains, gen).transpose(-1, -2)).float()
        x = x + 0.01 * torch.randn(x.shape, generator=gen)
    else:
        x = 1.5 * torch.randn(chains, n, d, generator=gen)
    perm = torch.argsort(torch.rand(chains, n, generator=gen), dim=1)
    x = torch.gather(x, 1, perm[..., None].expand(-1, -1, d)).reshape(chains, -1)
    x = target.remove_mean(x)
    for _ in range(100):  # displacement-capped gradient descent: leaves the wall, keeps the shape
        _, g = target.energy_and_grad(x)
        x = target.remove_mean(x - (1e-3 * g).clamp(-0.01, 0.01))
    return x


# ----------------------------------------------------------------------------- the long run
class ChainRun:
    """Parallel chains of one kernel, extendable in rounds: ``burn_in`` adapts the step size and
    then freezes it; every ``advance`` appends to the post-burn-in record (energy, Rg² and the
    virial x·∇E of every state, every ``thin``-th state kept). The kernels stay pure functions;
    this object only holds their state and the record."""

    def __init__(self, target, x0: torch.Tensor, kernel: str, step_size: float,
                 gen: torch.Generator, n_leapfrog: int = 10):
        eg, project = target.energy_and_grad, target.remove_mean  # on the mean-free subspace
        if kernel == "hmc":
            def step(st, h):
                return kernels.hmc_step(st, eg, h, n_leapfrog, gen, project)
        else:
            def step(st, h, _k=getattr(kernels, f"{kernel}_step")):
                return _k(st, eg, h, gen, project)
        self.target, self.kernel, self._step, self.gen = target, kernel, step, gen
        self.state = kernels.init(x0, eg)
        self.h, self.h0 = step_size, step_size
        self.steps, self.burn_in_steps, self.seconds = 0, 0, 0.0
        self._since_draw = 0
        self.draws, self.draw_e, self.trace_e, self.trace_rg2, self.trace_vir = [], [], [], [], []
        self.accepted = torch.zeros(x0.shape[0])

    def _transition(self):
        # Per-chain jitter of the step size, drawn independently of the state (a valid mixture of
        # kernels), breaks the periodic HMC trajectories a fixed length can lock into (Neal 2011).
        jitter = 0.9 + 0.2 * torch.rand(self.state.x.shape[0], generator=self.gen)
        self.state, acc = self._step(self.state, self.h * jitter)
        self.steps += 1
        return acc

    def _log(self, log, s, n, t0):
        if log is not None and (s + 1) % max(1, n // 10) == 0:
            log(f"step {self.steps}: E mean {float(self.state.energy.mean()):.2f} "
                f"std {float(self.state.energy.std()):.2f}, step {self.h:.4g}, "
                f"{time.perf_counter() - t0:.0f} s")

    def burn_in(self, n: int, log=None) -> None:
        """``n`` transitions adapting the step size (dual averaging), then freeze it: from here on
        the chain is time-homogeneous. Nothing of the burn-in is kept."""
        t0 = time.perf_counter()
        adapt = kernels.Adapter(self.h, TARGET_ACCEPT[self.kernel])
        for s in range(n):
            acc = self._transition()
            self.h = adapt.update(float(acc.float().mean()))
            self._log(log, s, n, t0)
        if n:
            self.h = adapt.final()
        self.burn_in_steps = n
        self.seconds += time.perf_counter() - t0

    def advance(self, n: int, thin: int, log=None) -> None:
        """``n`` more transitions at the frozen step size, appended to the record."""
        t0, d = time.perf_counter(), self.target.spatial_dim
        for s in range(n):
            self.accepted += self._transition().float()
            x, e, g = self.state
            self.trace_e.append(e.clone())
            self.trace_rg2.append(x.reshape(x.shape[0], -1, d).pow(2).sum(-1).mean(-1))
            self.trace_vir.append((x * g).sum(-1))  # x mean-free, so x·∇E = x·P∇E
            self._since_draw += 1
            if self._since_draw == thin:
                self._since_draw = 0
                self.draws.append(x.clone())
                self.draw_e.append(e.clone())
            self._log(log, s, n, t0)
        self.seconds += time.perf_counter() - t0

    def result(self) -> dict:
        """``draws [chains, kept, dim]``, ``draw_energies [chains, kept]``, per-state traces
        ``energy_trace``, ``rg2_trace``, ``virial_trace`` ``[chains, steps - burn_in]``,
        ``accept [chains]`` (post-burn-in acceptance per chain), the step size, the seconds."""
        kept = self.steps - self.burn_in_steps
        return {"draws": torch.stack(self.draws, 1), "draw_energies": torch.stack(self.draw_e, 1),
                "energy_trace": torch.stack(self.trace_e, 1),
                "rg2_trace": torch.stack(self.trace_rg2, 1),
                "virial_trace": torch.stack(self.trace_vir, 1),
                "accept": self.accepted / max(kept, 1), "step_size": self.h,
                "seconds": self.seconds}


def run_chains(target, x0: torch.Tensor, kernel: str, steps: int, burn_in: int, thin: int,
               step_size: float, gen: torch.Generator, n_leapfrog: int = 10,
               log=None) -> dict:
    """Run ``x0.shape[0]`` chains for ``steps`` transitions in one go (burn-in included); see
    :class:`ChainRun` for what the returned dict holds."""
    run = ChainRun(target, x0, kernel, step_size, gen, n_leapfrog)
    run.burn_in(burn_in, log)
    run.advance(steps - burn_in, thin, log)
    return run.result()

