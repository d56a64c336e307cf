"""Helpers shared by the grid runner tests (test_grid.py, test_grid_launch.py)."""
from __future__ import annotations

from pathlib import Path

from runners import grid, rows

ROOT = Path(__file__).resolve().parents[1]


def run_grid(args, capsys=None):
    """``grid.main`` on ``args`` -> (exit status, captured stderr or "")."""
    code = grid.main([str(a) for a in args])
    err = capsys.readouterr().err if capsys is not None else ""
    return code, err


def load_rows(out: Path) -> dict[tuple, dict]:
    """The rows under ``out`` keyed by (target, sampler, seed)."""
    return {(r["target"], r["sampler"], r["seed"]): r for r in rows.iter_rows(out)}
