"""Shared test set-up, and the official reference files for the tests that need them.

Tests marked ``reference_data`` need the official DW-4/LJ-13 splits. They are looked up as the
suite looks them up (``$BOLTZBENCH_DATA``, then the user cache); ``../shared/data`` beside the
checkout counts as ``$BOLTZBENCH_DATA`` when that is unset (how CI runs). Where no copy exists the
loader downloads it, unless ``BOLTZBENCH_OFFLINE=1``; if that is impossible, the marked tests skip
with one reason that says how to get the files. The environment is never forced offline here.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest
import torch

from targets import ReferenceDataError, data

_SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
if "BOLTZBENCH_DATA" not in os.environ and _SHARED.is_dir():
    os.environ["BOLTZBENCH_DATA"] = str(_SHARED)
# A test run should not wait long on a network that does not answer.
os.environ.setdefault(data.TIMEOUT_ENV, "10")

torch.set_num_threads(min(2, torch.get_num_threads()))


@functools.lru_cache(maxsize=1)
def official_data_problem() -> str | None:
    """None when every official file is available (found, or downloaded now), else why not."""
    for file in data.SHA256:
        try:
            data.load_official(file)
        except (ReferenceDataError, ValueError) as exc:
            return (f"official reference file {file} unavailable ({exc}). To run these tests: "
                    f"export BOLTZBENCH_DATA=/path/to/folder with {', '.join(data.SHA256)}, or "
                    f"allow the download (unset BOLTZBENCH_OFFLINE; see README, Reference data)")
    return None


def pytest_collection_modifyitems(config, items):
    marked = [item for item in items if item.get_closest_marker("reference_data")]
    if not marked:
        return
    problem = official_data_problem()
    if problem is not None:
        skip = pytest.mark.skip(reason=problem)
        for item in marked:
            item.add_marker(skip)


def pytest_report_header(config):
    return f"boltzbench reference data: {os.environ.get('BOLTZBENCH_DATA') or data.cache_dir()}"


@pytest.fixture
def gen():
    """A fresh, explicitly seeded generator (no global seeding in tests)."""
    return torch.Generator().manual_seed(1234)
