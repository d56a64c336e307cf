"""Particle targets: DW-4 (4 particles in 2-D) and Lennard-Jones clusters LJ-13 / LJ-55 (3-D).

Built from small pure pieces (pair distances -> pair potential -> pair sum), as jax-md and bgflow
do. Flat coordinates ``[..., n_particles * spatial_dim]`` are particle-major.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from . import data, fast
from .base import Target, subsample_rows


def remove_mean(x: torch.Tensor, n_particles: int, spatial_dim: int) -> torch.Tensor:
    """Subtract each configuration's particle mean; flat ``[..., N*D]`` in and out."""
    xp = x.reshape(*x.shape[:-1], n_particles, spatial_dim)
    return (xp - xp.mean(-2, keepdim=True)).reshape(x.shape)


def pair_distances(xp: torch.Tensor, softening: float = 0.0) -> torch.Tensor:
    """Distances over unordered pairs i<j: ``[..., N, D]`` -> ``[..., N(N-1)/2]``.

    ``softening`` is added to the squared distance before the root (bgflow's eps=1e-6 for LJ)."""
    n = xp.shape[-2]
    i, j = torch.triu_indices(n, n, offset=1, device=xp.device)
    r = xp[..., i, :] - xp[..., j, :]
    return (r.pow(2).sum(-1) + softening).sqrt()


def double_well_pair(d, a=0.9, b=-4.0, c=0.0, offset=4.0):
    """bgflow MultiDoubleWell pair term a (d-o)^4 + b (d-o)^2 + c."""
    s = d - offset
    return a * s.pow(4) + b * s.pow(2) + c


def lennard_jones_pair(d, eps=1.0, rm=1.0):
    """ε[(r_m/d)^12 - 2 (r_m/d)^6]: minimum -ε at d = r_m."""
    p6 = (rm / d).pow(6)
    return eps * (p6.pow(2) - 2 * p6)


class ParticleTarget(Target):
    """Shared reference handling for particle systems (references are mean-free)."""

    reference_files: dict[str, str] = {}

    def __init__(self, n_particles, spatial_dim, params, data_dir=None):
        super().__init__(dim=n_particles * spatial_dim, params=params)
        self.n_particles = n_particles
        self.spatial_dim = spatial_dim
        self.data_dir = data_dir
        self._cache: dict[str, tuple[torch.Tensor, dict]] = {}

    def particles(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(*x.shape[:-1], self.n_particles, self.spatial_dim)

    def remove_mean(self, x: torch.Tensor) -> torch.Tensor:
        return remove_mean(x, self.n_particles, self.spatial_dim)

    def _load_split(self, split: str) -> tuple[torch.Tensor, dict]:
        if split not in self.reference_files:
            raise ValueError(f"{self.name}: split must be one of {sorted(self.reference_files)}, "
                             f"got {split!r}")
        arr, info = data.load_official(self.reference_files[split], self.data_dir, dim=self.dim)
        return torch.as_tensor(np.asarray(arr, dtype=np.float32)), info

    def reference(self, split="test", n=None, generator=None):
        if split not in self._cache:
            x, info = self._load_split(split)
            # The official loader subtracts each configuration's mean (DW-4 files are not centred).
            self._cache[split] = (self.remove_mean(x), info)
        return subsample_rows(self._cache[split][0], n, generator, f"{self.name}.reference")

    def reference_info(self, split="test"):
        if split not in self._cache:
            self.reference(split)
        return dict(self._cache[split][1])


class DoubleWell4(ParticleTarget):
    """DW-4: E = Σ_{i<j} [0.9 (d_ij - 4)^4 - 4 (d_ij - 4)^2] (bgflow a=0.9, b=-4, c=0, offset 4)."""

    name = "dw4"
    pretty_name = "DW-4"
    reference_files = {"test": "test_split_DW4.npy", "val": "val_split_DW4.npy"}

    def __init__(self, a=0.9, b=-4.0, c=0.0, offset=4.0, data_dir=None):
        super().__init__(4, 2, {"a": a, "b": b, "c": c, "offset": offset}, data_dir)

    def _energy(self, x):
        p = self.params
        d = pair_distances(self.particles(x))
        return double_well_pair(d, p["a"], p["b"], p["c"], p["offset"]).sum(-1)

    def _energy_and_grad(self, x):
        # One-pass kernel with the analytic gradient (targets/fast.py); `_energy` above stays the
        # readable definition that tests/test_fast_energy.py checks it against.
        p = self.params
        e, g = fast.fused(fast.dw_energy_and_grad, self.particles(x), p["a"], p["b"], p["c"],
                          p["offset"])
        return e, g.reshape(x.shape)


# The two LJ conventions (reference-idem.md §2.3, DEM#2).
LJ_CONVENTIONS = {
    # What the official code computes and the reference data follow: ordered-pair sum (2x the
    # usual Σ_{i<j}) and a harmonic term 0.5 Σ||x_i - x̄||^2 with scale 1.
    "official": {"pair_factor": 2.0, "oscillator_scale": 1.0},
    # The constants printed in the iDEM paper (a typo per its authors): Σ_{i<j}, scale 0.5.
    "paper": {"pair_factor": 1.0, "oscillator_scale": 0.5},
}


class LennardJones(ParticleTarget):
    """LJ cluster: pair_factor Σ_{i<j} ε[(r_m/d)^12 - 2(r_m/d)^6] + osc 0.5 Σ_i ||x_i - x̄||^2,
    with d = sqrt(|r|^2 + 1e-6) as bgflow softens it. Default constants: the official code's."""

    def __init__(self, n_particles, convention="official", eps=1.0, rm=1.0, softening=1e-6,
                 data_dir=None):
        if convention not in LJ_CONVENTIONS:
            raise ValueError(f"LennardJones: convention must be one of {sorted(LJ_CONVENTIONS)}, "
                             f"got {convention!r}")
        params = {"n_particles": n_particles, "convention": convention, "eps": eps, "rm": rm,
                  "softening": softening, **LJ_CONVENTIONS[convention]}
        super().__init__(n_particles, 3, params, data_dir)

    def _energy(self, x):
        p = self.params
        xp = self.particles(x)
        d = pair_distances(xp, p["softening"])
        lj = p["pair_factor"] * lennard_jones_pair(d, p["eps"], p["rm"]).sum(-1)
        centred = xp - xp.mean(-2, keepdim=True)
        return lj + p["oscillator_scale"] * 0.5 * centred.pow(2).sum((-2, -1))

    def _energy_and_grad(self, x):
        # One-pass kernel with the analytic gradient (targets/fast.py), same constants as `_energy`.
        p = self.params
        e, g = fast.fused(fast.lj_energy_and_grad, self.particles(x), p["eps"], p["rm"],
                          p["softening"], p["pair_factor"], p["oscillator_scale"])
        return e, g.reshape(x.shape)


class LJ13(LennardJones):
    name = "lj13"
    pretty_name = "LJ-13"
    reference_files = {"test": "test_split_LJ13-1000.npy", "val": "val_split_LJ13-1000.npy"}

    def __init__(self, convention="official", data_dir=None, **kw):
        super().__init__(13, convention, data_dir=data_dir, **kw)


ALLOW_UNCONVERGED_ENV = "BOLTZBENCH_ALLOW_UNCONVERGED"


def allow_unconverged() -> bool:
    """Whether ``$BOLTZBENCH_ALLOW_UNCONVERGED`` opts in to scoring against an unconverged MCMC
    reference ("1/true/yes/on"; unset, "", "0/false/no/off": refuse). Any other value is an error
    rather than a guess."""
    raw = os.environ.get(ALLOW_UNCONVERGED_ENV, "").strip().lower()
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("", "0", "false", "no", "off"):
        return False
    raise ValueError(f"{ALLOW_UNCONVERGED_ENV}: got {os.environ[ALLOW_UNCONVERGED_ENV]!r}; allowed: "
                     f"1/true/yes/on (score against an unconverged reference) or 0/false/no/off/unset")


class LJ55(LennardJones):
    """LJ-55. The official split files are not redistributed offline: when a user has
    ``{test,val}_split_LJ55-1000-part1.npy`` it is used (sha256 recorded, no published hash to
    check); otherwise our own long-MCMC reference written by ``python -m runners.make_reference``,
    refused unless its provenance says it converged (or ``BOLTZBENCH_ALLOW_UNCONVERGED=1``);
    ``reference_info`` then carries ``reference_converged``. docs/metrics.md compares the two."""

    name = "lj55"
    pretty_name = "LJ-55"
    reference_files = {"test": "test_split_LJ55-1000-part1.npy",
                       "val": "val_split_LJ55-1000-part1.npy"}

    def __init__(self, convention="official", data_dir=None, **kw):
        super().__init__(55, convention, data_dir=data_dir, **kw)

    @staticmethod
    def mcmc_file(split: str) -> str:
        return f"mcmc_lj55_{split}.npy"

    def _load_split(self, split):
        if split not in self.reference_files:
            raise ValueError(f"lj55: split must be one of {sorted(self.reference_files)}, got {split!r}")
        official = data.find_file(self.reference_files[split], self.data_dir)
        if official is not None:  # no published checksum: format checks only
            arr = data.load_array(official, self.dim)
            return torch.as_tensor(arr, dtype=torch.float32), {
                "reference_source": "official", "reference_file": official.name,
                "reference_sha256": data.sha256_of(official), "reference_path": str(official)}
        ours = data.find_file(self.mcmc_file(split), self.data_dir)
        if ours is None:
            raise data.ReferenceMissing(
                f"lj55: no reference for split {split!r}: neither the official "
                f"{self.reference_files[split]} nor our {self.mcmc_file(split)} is in "
                f"{[str(d) for d in data.candidate_dirs(self.data_dir)]}. Build one with "
                f"`python -m runners.make_reference lj55` (writes to the cache) or set BOLTZBENCH_DATA.")
        meta = self._provenance(ours)
        digest = data.sha256_of(ours)
        if meta.get("sha256") != digest:
            raise data.ReferenceCorrupt(
                f"lj55: {ours} has sha256 {digest} but its provenance {ours.with_suffix('.json')} "
                f"records {meta.get('sha256')}: the file changed after it was made; rebuild it with "
                f"`python -m runners.make_reference lj55`.")
        converged = self._check_verdict(ours, meta)
        return torch.as_tensor(data.load_array(ours, self.dim), dtype=torch.float32), {
            "reference_source": "mcmc", "reference_file": ours.name, "reference_sha256": digest,
            "reference_path": str(ours), "reference_converged": converged}

    @staticmethod
    def _check_verdict(path, meta: dict) -> bool:
        """Our reference's convergence verdict (``diagnostics.converged`` in its provenance). An
        unconverged one (or one without a verdict) is refused unless ``$BOLTZBENCH_ALLOW_UNCONVERGED``
        is 1/true/yes/on; returns the verdict, which rows then carry as ``reference_converged``."""
        diag = meta.get("diagnostics")
        converged = isinstance(diag, dict) and diag.get("converged") is True
        if converged or allow_unconverged():
            return converged
        why = "; ".join(diag.get("not_converged_because") or []) if isinstance(diag, dict) else ""
        raise data.ReferenceCorrupt(
            f"lj55: our reference {path} did not pass its convergence check "
            f"({why or 'no verdict recorded in ' + str(path.with_suffix('.json'))}), so metrics "
            f"against it would measure the reference's error too. Rebuild it with "
            f"`python -m runners.make_reference lj55` (raise --max-steps if the build says so), or "
            f"set {ALLOW_UNCONVERGED_ENV}=1 to score against it anyway (rows then carry "
            f"reference_converged=false).")

    @staticmethod
    def _provenance(path) -> dict:
        """Our reference's provenance record (written beside it by make_reference)."""
        meta_path = path.with_suffix(".json")
        fix = "rebuild it with `python -m runners.make_reference lj55`"
        if not meta_path.is_file():
            raise data.ReferenceCorrupt(f"lj55: {path} has no provenance record {meta_path}, so "
                                        f"nothing says how it was made or that it is intact; {fix}")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as exc:
            raise data.ReferenceCorrupt(f"lj55: provenance {meta_path} is unreadable ({exc}); "
                                        f"{fix}") from None
        if not isinstance(meta, dict):
            raise data.ReferenceCorrupt(f"lj55: provenance {meta_path} is not a JSON object; {fix}")
        return meta
