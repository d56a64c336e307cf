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
    (hc.Uncounted, {"every fit energy evaluation counted (target counter == independent count)",
                    "every gradient evaluation counted (fit and sample())"}),
    (hc.Overrun, {"budget respected (fit <= max_energy_evals=3001 + slack 0)"}),
    (hc.GlobalRNG, {"no global RNG (torch.manual_seed changes nothing)"}),
    (hc.WrongShape, {"sample(64) shape [64, 8]"}),
    (hc.NotMeanFree, {"particle samples mean-free (|mean| < 1e-4)"}),
    (hc.Zeros, {"samples not degenerate (spread > 0, not all equal)"}),
    (hc.OffByConstant, {"log_prob normalised and consistent with sample() (log E_q[r/q] = 0, 4096 draws)"}),
    (hc.FullSpaceDensity, {"log_prob normalised and consistent with sample() (log E_q[r/q] = 0, 4096 draws)"}),
    (hc.ForgetfulState, {"state_dict round trip: a fresh instance samples as the original"}),
], ids=lambda v: v.__name__ if isinstance(v, type) else "")
def test_broken_sampler_fails_on_its_line(cls, expected):
    assert _failed(cls) == expected


@pytest.mark.parametrize("target", ["gmm40", "dw4", "lj13"])
def test_exact_density_and_state_pass(target):
    """The right density passes the importance check on every kind of space (2-D, mean-free
    6-D and 36-D), and a state that round-trips passes; so the failures above are the bugs."""
    assert _failed(hc.WithDensity, target) == set()
    assert _failed(hc.Stateful, target) == set()
    seen = [x.seen for x in check.check_sampler(hc.WithDensity, target) if x.requirement == "log_prob normalised and consistent with sample() (log E_q[r/q] = 0, 4096 draws)"]
    assert abs(float(seen[0].split("=")[-1].split("+-")[0])) < 0.05


def test_autograd_gradient_through_energy_is_charged():
    """A gradient autograd takes through target.energy() is charged as a gradient evaluation,
    once per backward pass, and agrees with the independent count."""
    import targets
    t = targets.get("dw4")
    x = torch.randn(5, 8).requires_grad_(True)
    e = t.energy(x)
    assert (t.counter.energy_evals, t.counter.grad_evals) == (5, 0)
    e.sum().backward(retain_graph=True)
    e.sum().backward()
    assert t.counter.grad_evals == 10
    t.energy(torch.randn(3, 8))                 # no graph, no gradient charged
    assert t.counter.grad_evals == 10
    assert _failed(hc.AutogradGradient) == set()


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
