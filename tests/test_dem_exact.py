"""DEM's score estimator (samplers/dem/estimator.py) against hand computations, for mutmut's
survivors there (docs/testing.md, "Latest scores"): per-group clipping on batches of any rank,
the official epsilon, ±inf components, the K = 1 estimator, the dtype and chunking of the
perturbed points handed to the energy, and the argument checks."""
from __future__ import annotations

import math

import pytest
import torch

from samplers.dem.estimator import clip_norm, mc_score
from samplers.dem.noise import standard_normal


def test_clip_norm_per_group_on_a_rank_three_batch():
    s = torch.randn(2, 3, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    got = clip_norm(s, 2.0, group=3)
    want = torch.empty_like(s)
    for a in range(2):
        for b in range(3):
            for g in range(2):
                v = s[a, b, 3 * g:3 * g + 3]
                want[a, b, 3 * g:3 * g + 3] = v * min(1.0, 2.0 / (float(v.norm()) + 1e-6))
    torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-13)
    whole = clip_norm(s, 2.0)
    torch.testing.assert_close(whole, s * (2.0 / (s.norm(dim=-1, keepdim=True) + 1e-6)).clamp(max=1))
    assert clip_norm(s, None) is s
    with pytest.raises(ValueError, match="clip_norm: last axis 6 is not a multiple of group=4"):
        clip_norm(s, 1.0, group=4)


def test_clip_norm_keeps_the_direction_of_infinite_components():
    s = torch.tensor([[math.inf, 0.0, 0.0], [-math.inf, 0.0, 0.0], [math.nan, 0.0, 0.0]])
    got = clip_norm(s, 1.0, group=3)
    torch.testing.assert_close(got[:2], torch.tensor([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]]))
    assert torch.isnan(got[2, 0])


def _gauss(calls):
    def energy_and_grad(y):
        calls.append((y.shape[0], y.dtype))
        return 0.5 * y.pow(2).sum(-1), y.clone()
    return energy_and_grad


def test_k_equal_one_is_minus_the_gradient_at_the_perturbed_point():
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    h = torch.tensor([0.0, 0.5, 1.0, 4.0], dtype=torch.float64)
    calls = []
    got = mc_score(x, h, _gauss(calls), 1, torch.Generator().manual_seed(2))
    eps = standard_normal((4, 1, 3), torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.testing.assert_close(got, -(x + h.sqrt()[:, None] * eps[:, 0]))
    assert calls == [(4, torch.float64)]


def test_chunks_call_the_energy_once_per_slice_with_the_same_result():
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    h = torch.full((3,), 0.7, dtype=torch.float64)
    calls = []
    one = mc_score(x, h, _gauss(calls), 4, torch.Generator().manual_seed(4))
    sliced = mc_score(x, h, _gauss(calls), 4, torch.Generator().manual_seed(4), chunk=5)
    torch.testing.assert_close(sliced, one)
    assert [c[0] for c in calls] == [12, 5, 5, 2]


@pytest.mark.parametrize("args,match", [
    ((torch.zeros(2, 3, 1), torch.zeros(2), 2), r"x_t must be \[B, dim\], got \(2, 3, 1\)"),
    ((torch.zeros(2, 3), torch.zeros(3), 2), r"h_t must be \[B\]=2, got \(3,\)"),
    ((torch.zeros(2, 3), torch.zeros(2), 0), "K must be a positive int, got 0"),
    ((torch.zeros(2, 3), torch.zeros(2), 2.0), "K must be a positive int, got 2.0"),
])
def test_mc_score_argument_checks(args, match):
    with pytest.raises(ValueError, match=match):
        x, h, k = args
        mc_score(x, h, _gauss([]), k, torch.Generator().manual_seed(0))
