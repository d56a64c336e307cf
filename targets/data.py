"""Reference data files: found locally or downloaded from their public source, always checksummed.

Search order for a file: the ``data_dir`` argument, ``$BOLTZBENCH_DATA``, the user cache
(``$BOLTZBENCH_CACHE`` or ``~/.cache/boltzbench``); if none has it and downloads are allowed
(``BOLTZBENCH_OFFLINE`` unset, empty or 0), the official public file is downloaded into the cache.

Two kinds of failure, because a user fixes them differently:

* :class:`ReferenceMissing` — no copy anywhere and none could be fetched (offline, network down).
  The grid still runs; the cells are ``ok`` but unscored until the file appears.
* :class:`ReferenceCorrupt` — a file exists but is wrong: sha256 mismatch, not a readable ``.npy``,
  wrong shape or dtype, non-finite values, or (our own LJ-55 reference) a provenance record that
  does not match. The grid refuses to start; the message names the file and the fix.
"""
from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

OFFICIAL_URL = "https://raw.githubusercontent.com/jarridrb/DEM/main/data/{file}"
OFFLINE_ENV = "BOLTZBENCH_OFFLINE"
TIMEOUT_ENV = "BOLTZBENCH_DOWNLOAD_TIMEOUT"
DOWNLOAD_TIMEOUT_S = 30.0   # per socket operation (connect, each read): a silent server fails fast
DOWNLOAD_ATTEMPTS = 3       # bounded retry
RETRY_PAUSE_S = 1.0         # pause before attempt k+1: k * RETRY_PAUSE_S

# sha256 of the official iDEM data files (jarridrb/DEM @ 8e95319, folder data/).
SHA256 = {
    "test_split_DW4.npy": "ef4466793b3502b2fe405aad22d3ae43b34827971594c5bab28684771d828244",
    "val_split_DW4.npy": "05683af2442aea8c358d35482a1c6877fc53796e46c9f5335fa92aa4f3670de6",
    "test_split_LJ13-1000.npy": "c5064a56282e96441f1ff2f1babb13c241a99cd1077aee3667951d06055a785b",
    "val_split_LJ13-1000.npy": "77a051cd50b16bec41e8fa056f6f77e21804d530a7461369f3a3ee985a576eb7",
}


class ReferenceDataError(RuntimeError):
    """A reference file is missing, cannot be downloaded, or is not the file it should be."""


class ReferenceMissing(ReferenceDataError):
    """No copy of the file was found and none could be downloaded."""


class ReferenceCorrupt(ReferenceDataError):
    """A file was found but fails its checks (checksum, format, shape, provenance)."""


def cache_dir() -> Path:
    return Path(os.environ.get("BOLTZBENCH_CACHE", Path.home() / ".cache" / "boltzbench"))


def offline() -> bool:
    """Whether ``$BOLTZBENCH_OFFLINE`` forbids downloads ("1/true/yes/on"; "", "0/false/no/off"
    allow them). Any other value is an error rather than a guess."""
    raw = os.environ.get(OFFLINE_ENV, "").strip().lower()
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("", "0", "false", "no", "off"):
        return False
    raise ValueError(f"{OFFLINE_ENV}: got {os.environ[OFFLINE_ENV]!r}; allowed: 1/true/yes/on "
                     f"(no downloads) or 0/false/no/off/unset (downloads allowed)")


def download_timeout() -> float:
    raw = os.environ.get(TIMEOUT_ENV)
    if raw is None:
        return DOWNLOAD_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise ValueError(f"{TIMEOUT_ENV}: got {raw!r}; expected seconds > 0")
    return value


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def candidate_dirs(data_dir: str | os.PathLike | None = None) -> list[Path]:
    dirs = []
    if data_dir is not None:
        dirs.append(Path(data_dir))
    if os.environ.get("BOLTZBENCH_DATA"):
        dirs.append(Path(os.environ["BOLTZBENCH_DATA"]))
    dirs.append(cache_dir())
    return dirs


def find_file(file: str, data_dir: str | os.PathLike | None = None) -> Path | None:
    for d in candidate_dirs(data_dir):
        if (d / file).is_file():
            return d / file
    return None


def verify(path: Path, expected: str | None) -> str:
    """Return the file's sha256; raise :class:`ReferenceCorrupt` if ``expected`` differs."""
    got = sha256_of(path)
    if expected is not None and got != expected:
        raise ReferenceCorrupt(
            f"reference file {path} has sha256 {got}, expected {expected}: the file is corrupt or "
            f"not the official one. Delete it and point BOLTZBENCH_DATA at a verified copy "
            f"(see the README's Troubleshooting), or delete it and let boltzbench download it again.")
    return got


def load_array(path: Path, dim: int | None = None) -> np.ndarray:
    """``np.load`` of a reference file with its checks: never unpickles, a 2-D float array of
    ``dim`` columns with finite values. Raises :class:`ReferenceCorrupt` naming the file."""
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same problem for a user
        raise ReferenceCorrupt(f"reference file {path} is not a readable .npy array "
                               f"({type(exc).__name__}: {exc}); delete or replace it") from None
    if not isinstance(arr, np.ndarray) or arr.ndim != 2 or not np.issubdtype(arr.dtype, np.floating):
        raise ReferenceCorrupt(f"reference file {path}: expected a 2-D float array, got "
                               f"shape {getattr(arr, 'shape', '?')} dtype {getattr(arr, 'dtype', '?')}; "
                               f"delete or replace it")
    if dim is not None and arr.shape[1] != dim:
        raise ReferenceCorrupt(f"reference file {path}: expected {dim} columns, got shape "
                               f"{arr.shape}; it belongs to another target; delete or replace it")
    if not np.isfinite(arr).all():
        raise ReferenceCorrupt(f"reference file {path}: {int((~np.isfinite(arr)).sum())} non-finite "
                               f"values; delete or replace it")
    return arr


def _download(file: str, dest: Path) -> None:
    """Fetch ``file`` from its public source into ``dest`` (atomically, checksummed), with socket
    timeouts and a bounded retry; a partial download never stays on disk."""
    url = OFFICIAL_URL.format(file=file)
    if offline():
        raise ReferenceMissing(
            f"reference file {file!r} not found in {[str(d) for d in candidate_dirs()]} and "
            f"{OFFLINE_ENV} forbids downloading it from {url}. Set BOLTZBENCH_DATA to a folder "
            f"holding it, or unset {OFFLINE_ENV}.")
    timeout = download_timeout()
    dest.parent.mkdir(parents=True, exist_ok=True)
    last: Exception | None = None
    for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
        print(f"[data] downloading {file} from {url} into {dest.parent} "
              f"(attempt {attempt}/{DOWNLOAD_ATTEMPTS}, timeout {timeout:g} s)", file=sys.stderr)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{file}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310
                for chunk in iter(lambda: resp.read(1 << 20), b""):
                    f.write(chunk)
            verify(Path(tmp), SHA256.get(file))
            os.chmod(tmp, 0o644 & ~_umask())
            os.replace(tmp, dest)  # atomic: a half-downloaded file is never visible
            return
        except ReferenceCorrupt:
            raise  # a wrong file from the official source: retrying will not help
        except Exception as exc:  # noqa: BLE001 - network errors of any kind are retried
            last = exc
            if attempt < DOWNLOAD_ATTEMPTS:
                time.sleep(attempt * RETRY_PAUSE_S)
        finally:
            Path(tmp).unlink(missing_ok=True)  # also on Ctrl-C
    raise ReferenceMissing(
        f"could not download reference file {file!r} from {url} after {DOWNLOAD_ATTEMPTS} "
        f"attempts ({type(last).__name__}: {last}). Set BOLTZBENCH_DATA (or pass data_dir) to a "
        f"folder holding it, or retry when the network works.")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def load_official(file: str, data_dir: str | os.PathLike | None = None,
                  dim: int | None = None) -> tuple[np.ndarray, dict]:
    """Load an official reference array, checksummed; returns (array, provenance)."""
    path = find_file(file, data_dir)
    if path is None:
        path = cache_dir() / file
        _download(file, path)
    digest = verify(path, SHA256.get(file))
    return load_array(path, dim), {"reference_source": "official", "reference_file": file,
                                   "reference_sha256": digest, "reference_path": str(path)}
