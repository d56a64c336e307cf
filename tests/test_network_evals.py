"""The rows' network-evaluation columns against closed forms of each sampler's configuration:
one count per configuration per forward pass of the sampler's network (samplers/base.py
``count_network_passes``), split into fit and sampling, cumulative over continued rungs."""
from __future__ import annotations

import pytest

from runners import grid, rows

PIS = ["pis.n_steps=5", "pis.batch_size=16", "pis.hidden=8", "pis.max_iters=3"]
DDS = ["dds.n_steps=5", "dds.batch_size=16", "dds.hidden=8", "dds.max_iters=3"]
IDEM = ["idem.max_outer=2", "idem.n_inner=3", "idem.batch_size=16", "idem.n_mc=4",
        "idem.n_generate=32", "idem.n_integration_steps=10", "idem.hidden=8", "idem.n_layers=1",
        "idem.n_init=64", "idem.buffer_min=32"]
COMMON = ["targets=gmm40", "seeds=[0]", "launcher=debug", "profile=smoke", "n_eval=64",
          "collect=false", "mala.n_chains=16"]


def _rows(tmp_path, *args):
    assert grid.main([*COMMON, *args, f"out={tmp_path}"]) == 0
    return {r["sampler"]: r for r in rows.iter_rows(tmp_path)}


def test_network_evals_are_the_closed_forms_of_each_sampler(tmp_path):
    got = _rows(tmp_path, "samplers=pis,dds,idem,mala", *PIS, *DDS, *IDEM)
    assert all(r["status"] == "ok" for r in got.values())
    # PIS: 3 optimiser steps x batch 16 x 5 SDE steps; sampling 64 x 5
    assert (got["pis"]["fit_network_evals"], got["pis"]["sample_network_evals"]) == (240, 320)
    # DDS trains with stick-the-landing (its default): a second, frozen-parameter pass per step
    assert (got["dds"]["fit_network_evals"], got["dds"]["sample_network_evals"]) == (480, 320)
    # iDEM: 6 training steps x batch 16, plus 2 outer iterations x 32 generated x 10 SDE steps
    # (the smoke GMM-40 start is the prior: no network); sampling 64 x 10
    assert (got["idem"]["fit_network_evals"], got["idem"]["sample_network_evals"]) == (736, 640)
    assert got["idem"]["network_evals"] == 736 + 640
    assert (got["mala"]["fit_network_evals"], got["mala"]["network_evals"]) == (0, 0)


@pytest.mark.parametrize("sampler, args, per_step", [("pis", PIS, 16 * 5)])
def test_continued_rungs_count_network_evals_cumulatively(tmp_path, sampler, args, per_step):
    assert grid.main([*COMMON, f"samplers={sampler}", *args, "budgets_steps=[2,3]",
                      f"out={tmp_path}"]) == 0
    ladder = sorted(rows.iter_rows(tmp_path), key=lambda r: r["budget_steps"])
    assert [r["ran_fresh"] for r in ladder] == [True, False]
    assert [r["fit_network_evals"] for r in ladder] == [2 * per_step, 3 * per_step]


def test_fab_counts_one_flow_pass_per_configuration(tmp_path):
    """Per AIS round of B: the flow draw, log q at the start, log q at each of K x L leapfrog
    positions, log q of the points pushed to the buffer; per gradient step B buffer points."""
    got = _rows(tmp_path, "samplers=fab", "fab.n_layers=2", "fab.hidden=8", "fab.batch_size=16",
                "fab.buffer_min=64", "fab.buffer_size=128", "fab.max_iters=8",
                "fab.n_intermediate=2", "fab.n_leapfrog=3")["fab"]
    assert got["status"] == "ok", got["reason"]
    import json
    info = json.loads(got["fit_info"])
    rounds, steps = info["ais_rounds"], info["steps"]
    assert (rounds, steps) == (5, 8)  # round 4 fills the buffer to 64: rounds 4 and 5 train 4 each
    assert got["fit_network_evals"] == rounds * 16 * (1 + 1 + 2 * 3 + 1) + steps * 16
    assert got["sample_network_evals"] == 64  # one flow pass per scored sample
