"""Row files: atomic writes, reading, statuses, and the provenance every row records.

A cell writes ``OUT/cells/<cell_key>/row.json`` (plus ``samples.npy`` and ``config.yaml``). Every
file is written to a unique temporary name in the same folder and moved into place with
``os.replace``, which is atomic on POSIX: a grid killed with SIGKILL leaves either the old file, the
new file, or a stray ``*.tmp`` that readers ignore, never a half-written row.
"""
from __future__ import annotations

import io
import json
import math
import os
import resource
import secrets
import subprocess
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

STATUSES = ("ok", "skipped", "diverged", "error", "timeout")
# Finished cells are not rerun when a grid is resumed. `diverged` is a genuine result of the
# sampler under its budget (rerunning with the same seed reproduces it), so it is kept; `error`
# and `timeout` are failures of the run itself and are retried.
FINISHED = frozenset({"ok", "skipped", "diverged"})
ROW_FILE = "row.json"
SAMPLES_FILE = "samples.npy"
CONFIG_FILE = "config.yaml"
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def cell_dir(out: str | os.PathLike, key: str) -> Path:
    return Path(out) / "cells" / key


def _atomic_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _create_temp(path: Path) -> tuple[int, str]:
    """A new, uniquely named ``.<name>.*.tmp`` beside ``path``, open for writing. Created with
    mode 0666 less the umask (0644 under umask 022) like any ordinary file, so collaborators can
    read the results; ``tempfile.mkstemp`` would make every results file 0600."""
    for _ in range(100):
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path}")


def jsonable(v: Any) -> Any:
    """Plain JSON values; non-finite floats become None only inside nested info (rows keep NaN
    via ``allow_nan``), tensors/arrays become lists or scalars."""
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if hasattr(v, "tolist"):  # numpy / torch scalars and arrays
        return jsonable(v.tolist())
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return str(v)


def write_json(path: Path, obj: dict) -> None:
    # allow_nan: metric columns hold NaN where a metric is undefined; json.loads reads it back.
    _atomic_bytes(Path(path), json.dumps(jsonable(obj), indent=1, allow_nan=True).encode())


def write_bytes(path: Path, data: bytes) -> None:
    _atomic_bytes(Path(path), data)


def write_text(path: Path, text: str) -> None:
    _atomic_bytes(Path(path), text.encode())


def write_npy(path: Path, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, np.asarray(array))
    _atomic_bytes(Path(path), buf.getvalue())


def read_row(path: str | os.PathLike) -> dict | None:
    """The row at ``path`` (a row.json or its cell folder), or None if absent or unreadable."""
    path = Path(path)
    if path.is_dir():
        path = path / ROW_FILE
    try:
        row = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return row if isinstance(row, dict) and row.get("status") in STATUSES else None


def iter_rows(out: str | os.PathLike) -> list[dict]:
    """Every readable row under ``OUT/cells`` (temporary files and partial cells are ignored)."""
    root = Path(out) / "cells"
    if not root.is_dir():
        return []
    rows = []
    for d in sorted(root.iterdir()):
        row = read_row(d / ROW_FILE)
        if row is not None:
            rows.append(row)
    return rows


# ---------------------------------------------------------------------------- provenance
@lru_cache(maxsize=1)
def code_version() -> str:
    """``git describe --always --dirty --tags`` of the project checkout, else "unknown"."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--tags"],
                             cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown" if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@lru_cache(maxsize=1)
def library_versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for mod, col in (("torch", "torch"), ("numpy", "numpy"), ("ot", "pot")):
        try:
            out[col] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - a missing library is recorded, not fatal
            out[col] = "missing"
    return {f"version_{k}": v for k, v in out.items()}


def peak_memory_mb() -> float:
    """Peak resident memory of this process (ru_maxrss, KiB on Linux), plus the peak CUDA
    allocation when CUDA was used. In-process launchers (debug) report the whole process."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    mb = kib / 1024 if sys.platform != "darwin" else kib / 2**20
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        mb += torch.cuda.max_memory_allocated() / 2**20
    return float(mb)


def is_nan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)
