"""A seed fixes a number: the same grid command twice, into fresh folders, gives identical metric
columns and spending (the smoke profile caps by energy evaluations, not seconds)."""
from __future__ import annotations

import math

import pytest

import metrics
from helpers_grid import load_rows, run_grid

COLUMNS = [*metrics.names(), *metrics.OPT_IN, "energy_evals", "grad_evals", "fit_energy_evals", "status"]


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def _twice(tmp_path, capsys, args):
    results = []
    for name in ("first", "second"):
        out = tmp_path / name
        code, err = run_grid([f"out={out}", "profile=smoke", "collect=false", *args], capsys)
        assert code == 0, err
        results.append(load_rows(out))
    return results


def _assert_identical(first, second):
    assert first.keys() == second.keys() and first
    for key in first:
        for col in COLUMNS:
            if col in first[key] or col in second[key]:
                assert _same(first[key].get(col), second[key].get(col)), (key, col)
        assert first[key].get("budget_binding") != "seconds", key


def test_smoke_cells_repeat_exactly(tmp_path, capsys):
    first, second = _twice(tmp_path, capsys, ["launcher=debug", "targets=gmm40,dw4",
                                              "samplers=mala,smc,idem"])
    _assert_identical(first, second)
    assert all(r["status"] == "ok" for r in first.values())


@pytest.mark.slow
def test_the_whole_smoke_grid_repeats_exactly(tmp_path, capsys):
    first, second = _twice(tmp_path, capsys, ["launcher=local", "targets=all", "samplers=all",
                                              "figures=false"])
    _assert_identical(first, second)
