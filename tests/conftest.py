"""Shared test set-up: reference data from ../shared/data (never downloaded in tests)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

_SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
if "BOLTZBENCH_DATA" not in os.environ and _SHARED.is_dir():
    os.environ["BOLTZBENCH_DATA"] = str(_SHARED)
# Tests must never reach the network for data.
os.environ.setdefault("BOLTZBENCH_OFFLINE", "1")

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def gen():
    """A fresh, explicitly seeded generator (no global seeding in tests)."""
    return torch.Generator().manual_seed(1234)
