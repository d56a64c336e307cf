"""Files of the reference builder: the reference set and its provenance, written atomically.

``mcmc_{target}_{split}.npy`` (float32 ``[n, dim]``) and the provenance ``.json`` beside it with
the file's sha256, which the loader (``LJ55.reference``) checks; the code version recorded in
the provenance; whether an existing provenance marks a converged reference.
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch

from targets import data

LJ55_MCMC_FILE = "mcmc_lj55_test.npy"
SPLITS = ("test", "val")
# The builder's own files: a change to any of them is listed in the provenance's code_version.
BUILDER_FILES = ("runners/make_reference.py", "runners/reference_chains.py",
                 "runners/reference_diagnostics.py", "runners/reference_files.py",
                 "runners/reference_compare.py")


def code_version() -> dict:
    """Git commit of this checkout and the files under targets/, samplers/ or this builder
    (``BUILDER_FILES``) that differ from it."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=10).stdout.strip() or "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "targets", "samplers",
                                *BUILDER_FILES],
                               cwd=root, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        head, dirty = "unknown", ""
    return {"git_commit": head, "changed_files": [ln[3:] for ln in dirty.splitlines()]}


def atomic_write(path: Path, write) -> None:
    """Write via a temporary file in the same folder and rename: never a half-written file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_reference(samples: torch.Tensor, provenance: dict, out: Path, name: str,
                    split: str) -> tuple[Path, Path]:
    """Save ``samples`` ``[n, dim]`` as float32 ``mcmc_{name}_{split}.npy`` and the provenance,
    with the file's sha256 added, as the ``.json`` beside it. Returns both paths."""
    out.mkdir(parents=True, exist_ok=True)
    npy = out / f"mcmc_{name}_{split}.npy"
    arr = np.ascontiguousarray(samples.detach().cpu().numpy().astype(np.float32))
    atomic_write(npy, lambda f: np.save(f, arr))
    meta = {**provenance, "file": npy.name, "shape": list(arr.shape), "dtype": "float32",
            "sha256": data.sha256_of(npy)}
    meta_path = npy.with_suffix(".json")
    atomic_write(meta_path, lambda f: f.write(json.dumps(meta, indent=2).encode()))
    return npy, meta_path


def is_converged_reference(meta_path: Path) -> bool:
    """Whether the provenance at ``meta_path`` records a converged reference (False when it is
    missing or unreadable)."""
    try:
        return json.loads(meta_path.read_text())["diagnostics"]["converged"] is True
    except (OSError, ValueError, KeyError, TypeError):
        return False

