"""Reference data files: found locally or downloaded from their public source, always checksummed.

Search order for a file: the ``data_dir`` argument, ``$BOLTZBENCH_DATA``, the user cache
(``$BOLTZBENCH_CACHE`` or ``~/.cache/boltzbench``); if none has it and downloads are allowed
(``BOLTZBENCH_OFFLINE`` unset), the official public file is downloaded into the cache.
A file whose sha256 differs from the one listed here is refused, never used.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from pathlib import Path

import numpy as np

OFFICIAL_URL = "https://raw.githubusercontent.com/jarridrb/DEM/main/data/{file}"

# sha256 of the official iDEM data files (jarridrb/DEM @ 8e95319, folder data/).
SHA256 = {
    "test_split_DW4.npy": "ef4466793b3502b2fe405aad22d3ae43b34827971594c5bab28684771d828244",
    "val_split_DW4.npy": "05683af2442aea8c358d35482a1c6877fc53796e46c9f5335fa92aa4f3670de6",
    "test_split_LJ13-1000.npy": "c5064a56282e96441f1ff2f1babb13c241a99cd1077aee3667951d06055a785b",
    "val_split_LJ13-1000.npy": "77a051cd50b16bec41e8fa056f6f77e21804d530a7461369f3a3ee985a576eb7",
}


class ReferenceDataError(RuntimeError):
    """A reference file is missing, cannot be downloaded, or fails its checksum."""


def cache_dir() -> Path:
    return Path(os.environ.get("BOLTZBENCH_CACHE", Path.home() / ".cache" / "boltzbench"))


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
    """Return the file's sha256; raise if ``expected`` is given and differs."""
    got = sha256_of(path)
    if expected is not None and got != expected:
        raise ReferenceDataError(
            f"reference file {path} has sha256 {got}, expected {expected}. "
            f"The file is corrupt or not the official one: delete it and point BOLTZBENCH_DATA "
            f"at a verified copy, or let boltzbench download it again.")
    return got


def _download(file: str, dest: Path) -> None:
    if os.environ.get("BOLTZBENCH_OFFLINE"):
        raise ReferenceDataError(
            f"reference file {file!r} not found in {[str(d) for d in candidate_dirs()]} and "
            f"BOLTZBENCH_OFFLINE is set. Set BOLTZBENCH_DATA to a folder holding it.")
    url = OFFICIAL_URL.format(file=file)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, suffix=".part")
    os.close(fd)
    try:
        urllib.request.urlretrieve(url, tmp)  # noqa: S310 - fixed https URL
        verify(Path(tmp), SHA256.get(file))
        os.replace(tmp, dest)  # atomic: a half-downloaded file is never visible
    except Exception as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, ReferenceDataError):
            raise
        raise ReferenceDataError(
            f"could not download reference file {file!r} from {url}: {exc}. "
            f"Set BOLTZBENCH_DATA (or pass data_dir) to a folder holding it.") from exc


def load_official(file: str, data_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, dict]:
    """Load an official reference array, checksummed; returns (array, provenance)."""
    path = find_file(file, data_dir)
    if path is None:
        path = cache_dir() / file
        _download(file, path)
    digest = verify(path, SHA256.get(file))
    return np.load(path), {"reference_source": "official", "reference_file": file,
                           "reference_sha256": digest}
