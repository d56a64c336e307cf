"""Per-sampler sample quality on a problem with a known answer (helpers_quality.Bimodal2D).

Metric: exact W2 between 500 sampler outputs and 500 exact samples. Its floor (two independent
exact sets of 500) over seeds 0-9: mean 0.260, sd 0.070, max 0.435. What broken samplers score
against the same references (10 seeds): one mode only 1.84 (min 1.74); mode weights 0.3/0.7
instead of 1/2: 0.85 (min 0.66); both modes 1.5x too wide: 0.48 (min 0.43).

Thresholds, per sampler: every checked seed below ``PER_SEED`` and their mean below ``MEAN``.
Both are set from the seed distributions measured with ``helpers_quality.measure`` (fit seeds
0-9, one torch thread, on the shared 2-core machine):

    sampler  mean   sd     min    max     (s per seed)
    mala     0.267  0.065  0.200  0.372   0.3
    hmc      0.285  0.085  0.199  0.419   0.5
    rwm      0.250  0.077  0.174  0.418   0.4
    smc      0.237  0.034  0.199  0.308   0.4
    pis      0.284  0.057  0.220  0.398   12   (slow)
    dds      0.283  0.092  0.197  0.505   11   (slow)
    fab      0.412  0.156  0.257  0.770   10   (slow; fab-torch's buffer defaults, below)

``PER_SEED`` = 0.60 (above every measured sampler and floor value; below one-mode and
weight-0.3/0.7 samplers), ``MEAN`` = 0.40 over the checked seeds (the worst 3-seed mean among
the measured values is 0.381, HMC; the 1.5x-too-wide sampler averages 0.48). iDEM/pDEM at the
first settings tried (sigma_max 3, K = 128, 400 steps) stayed far from the floor (seed 0: 0.95 and
1.79); with sigma_max 2, K = 256, 800 steps (``helpers_quality.DEM``), fit seeds 0-9 (20-190 s
per fit under contention; seeds 0-4 and 5-9 measured in two sessions):

    idem     mean 0.519  (0.407 0.510 0.582 0.464 0.572 0.390 0.693 0.464 0.474 0.632)  max 0.693
    pdem     mean 0.499  (0.372 0.439 0.385 0.373 0.657 0.575 0.473 0.553 0.633 0.531)  max 0.657

so their slow test uses ``DEM_PER_SEED`` 0.80 (above both maxima) and ``DEM_MEAN`` 0.70 over
seeds 0-1 (above the worst mean of any two measured seeds, 0.66 for iDEM), which still fail
one-mode (1.84) and wrong-weight (0.85) samplers but not the 1.5x-too-wide one (0.48).
FAB is further from the floor at its budget (800 steps): ``FAB_PER_SEED`` 0.80 (above its max
0.770), ``FAB_MEAN`` 0.60 (its worst 3-seed mean among the measured values is 0.596); that still
fails one-mode and wrong-weight samplers (mean 0.85), not the 1.5x-too-wide one. Measured
(2026-12-03, buffer_min 512 so a round's 4 x 128 draws are distinct) with the buffer defaults of
fab-torch, drawn without replacement and re-weighted with the loss's log q before the step:
(0.555 0.343 0.423 0.257 0.328 0.414 0.770 0.464 0.302 0.268); re-weighting after the step
instead: mean 0.370, max 0.473; the earlier per-step draws with replacement, re-weighted after
the step: mean 0.392, max 0.530 (before: 0.392, 0.597 with buffer_min 256). So on this toy
fab-torch's order costs one poor seed (6); the default follows the authors.
"""
from __future__ import annotations

import pytest
import torch

from helpers_quality import SETUPS, SLOW_SETUPS, quality

PER_SEED, MEAN = 0.60, 0.40
FAB_PER_SEED, FAB_MEAN = 0.80, 0.60
DEM_PER_SEED, DEM_MEAN = 0.80, 0.70


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _check(name, seeds, setups, per_seed=PER_SEED, mean=MEAN):
    vals = [quality(name, s, setups)[0] for s in seeds]
    assert max(vals) < per_seed, (name, vals)
    assert sum(vals) / len(vals) < mean, (name, vals)


@pytest.mark.parametrize("name", ["mala", "hmc", "rwm", "smc"])
def test_mcmc_and_smc_reach_the_w2_floor_on_a_bimodal_mixture(name):
    _check(name, range(3), SETUPS)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["pis", "dds"])
def test_diffusion_samplers_reach_the_w2_floor_on_a_bimodal_mixture(name):
    _check(name, range(3), SLOW_SETUPS)


@pytest.mark.slow
def test_fab_reaches_near_the_w2_floor_on_a_bimodal_mixture():
    _check("fab", range(3), SLOW_SETUPS, FAB_PER_SEED, FAB_MEAN)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["idem", "pdem"])
def test_dem_samplers_reach_near_the_w2_floor_on_a_bimodal_mixture(name):
    _check(name, range(2), SLOW_SETUPS, DEM_PER_SEED, DEM_MEAN)
