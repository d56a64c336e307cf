"""``runners.check`` fails, on the right line, for samplers that break one requirement each, and
its command line exits 0 / 1 / 2 (all pass / a failure / bad input). Broken samplers:
tests/helpers_check.py."""
from __future__ import annotations

import pytest
import torch

from runners import check

import helpers_check as hc

HELPERS = "tests/helpers_check.py"


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _failed(cls, target="dw4"):
    return {line.requirement for line in check.check_sampler(cls, target) if not line.ok}


def test_good_sampler_passes_every_line():
    lines = check.check_sampler(hc.Good, "dw4")
    assert [str(x) for x in lines if not x.ok] == []
    assert len(lines) >= 15


@pytest.mark.parametrize("cls,expected", [
    (hc.Uncounted, {"every fit energy evaluation counted (target counter == independent count)"}),
    (hc.Overrun, {"budget respected (fit <= max_energy_evals=3001 + slack 0)"}),
    (hc.GlobalRNG, {"no global RNG (torch.manual_seed changes nothing)"}),
    (hc.WrongShape, {"sample(64) shape [64, 8]"}),
    (hc.NotMeanFree, {"particle samples mean-free (|mean| < 1e-4)"}),
    (hc.Zeros, {"samples not degenerate (spread > 0, not all equal)"}),
], ids=lambda v: v.__name__ if isinstance(v, type) else "")
def test_broken_sampler_fails_on_its_line(cls, expected):
    assert _failed(cls) == expected


def test_independent_count_counts_configurations_once():
    import targets
    t = targets.get("dw4")
    count = check.IndependentCount(t)
    t.energy_and_grad(torch.zeros(5, 8))   # autograd calls _energy inside: still 5, not 10
    t.energy(torch.zeros(2, 3, 8))
    t._energy(torch.zeros(4, 8))           # a private call the target's counter misses
    assert count.n == 5 + 6 + 4
    assert t.counter.energy_evals == 11


def test_cli_exit_codes(capsys):
    assert check.main([f"sampler={HELPERS}:Good", "targets=gmm40"]) == 0
    assert "0 failed" in capsys.readouterr().out
    assert check.main([f"sampler={HELPERS}:Uncounted", "targets=gmm40"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  [gmm40] every fit energy evaluation counted" in out
    assert check.main(["sampler=no_such_sampler"]) == 2
    assert "unknown sampler 'no_such_sampler'" in capsys.readouterr().err
    assert check.main(["sampler=mala", "targets=nope"]) == 2
    assert "unknown target 'nope'" in capsys.readouterr().err
    assert check.main(["bogus=1"]) == 2
    assert check.main(["target=gmm40"]) == 0
    assert "energy_and_grad counts energy and gradient per configuration" in capsys.readouterr().out
