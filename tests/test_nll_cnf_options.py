"""metrics/nll_cnf.py: options validated field by field, the official per-target settings, and
what ``fit`` / ``score`` / ``nll_cnf`` hand to the CNF code.

Independent of the code under test: the per-target table is transcribed from docs/metrics.md
(its "nll_cnf" section: prior, network, width x depth, Adam lr; GMM-40 80,000 steps with
coordinates scaled by 50, particle targets 2,000), the messages are read for field, value and
what is allowed, and ``fit`` / ``score`` are watched through spies on ``cnf.train_cfm`` /
``cnf.log_likelihood`` and a recording network builder, with the expected inputs computed here.
"""
from __future__ import annotations

import math
import time

import pytest
import torch
from torch import nn

from metrics import MetricInputError, cnf
from metrics import nll_cnf as M

DOCS_TABLE = {  # docs/metrics.md, nll_cnf: prior std, network, hidden, n_layers, lr, steps
    "gmm40": (50.0, "mlp", 128, 3, 5e-4, 80000),
    "dw4": (2.0, "egnn", 128, 3, 1e-3, 2000),
    "lj13": (2.0, "egnn", 128, 5, 1e-3, 2000),
    "lj55": (1.0, "egnn", 128, 5, 1e-3, 2000),
}
INTS = ("n_train", "n_test", "steps", "batch_size", "nll_batch_size", "hidden", "n_layers")
FLOATS = ("lr", "lr_final", "grad_clip", "prior_std", "coord_scale", "atol", "rtol")


def test_defaults_are_the_documented_ones():
    o = M.NLLCNFOptions()
    assert (o.n_train, o.n_test, o.batch_size, o.lr_final, o.grad_clip, o.atol, o.rtol,
            o.nll_batch_size, o.divergence, o.seed) == (100_000, 1000, 512, 1e-6, 0.5, 1e-5,
                                                        1e-5, 256, "exact", 0)
    assert all(getattr(o, k) is None for k in ("steps", "lr", "prior_std", "network", "hidden",
                                                "n_layers", "coord_scale"))


@pytest.mark.parametrize("name", sorted(DOCS_TABLE))
def test_each_target_resolves_to_the_official_settings(name):
    r = M.NLLCNFOptions().resolved(name)
    assert (r.prior_std, r.network, r.hidden, r.n_layers, r.lr, r.steps) == DOCS_TABLE[name]
    assert r.coord_scale == (50.0 if name == "gmm40" else None)
    assert set(M.TARGET_DEFAULTS) == set(DOCS_TABLE) and M.NETWORKS == ("mlp", "egnn")


def test_resolved_fills_only_the_unset_fields_and_refuses_an_unknown_target():
    r = M.NLLCNFOptions(steps=0, lr=0.1, hidden=4, coord_scale=2.0).resolved("dw4")
    assert (r.steps, r.lr, r.hidden, r.coord_scale, r.n_layers, r.prior_std) == (0, 0.1, 4, 2.0,
                                                                                  3, 2.0)
    with pytest.raises(MetricInputError) as e:
        M.NLLCNFOptions().resolved("gmm")
    assert str(e.value) == "nll_cnf: no defaults for target 'gmm'; known: gmm40, dw4, lj13, lj55"


@pytest.mark.parametrize("name", INTS)
def test_int_fields_refuse_bools_floats_and_values_below_their_bound(name):
    low = 0 if name == "steps" else 1
    assert getattr(M.NLLCNFOptions(**{name: low}), name) == low
    bad = [True, 2.0, "3", low - 1] + ([] if name in ("steps", "hidden", "n_layers") else [None])
    for v in bad:
        with pytest.raises(MetricInputError) as e:
            M.NLLCNFOptions(**{name: v})
        assert str(e.value) == f"nll_cnf.{name} must be a positive int, got {v!r}"
    if name in ("steps", "hidden", "n_layers"):
        assert getattr(M.NLLCNFOptions(**{name: None}), name) is None


@pytest.mark.parametrize("name", FLOATS)
def test_float_fields_refuse_non_positive_non_finite_and_non_numbers(name):
    nullable = name not in ("atol", "rtol")
    assert getattr(M.NLLCNFOptions(**{name: 1e-300}), name) == 1e-300
    assert getattr(M.NLLCNFOptions(**{name: 3}), name) == 3
    bad = [0.0, -1.0, math.inf, math.nan, True, "1"] + ([] if nullable else [None])
    for v in bad:
        with pytest.raises(MetricInputError) as e:
            M.NLLCNFOptions(**{name: v})
        assert str(e.value) == (f"nll_cnf.{name} must be a positive number"
                                f"{' or null' if nullable else ''}, got {v!r}")
    if nullable:
        assert getattr(M.NLLCNFOptions(**{name: None}), name) is None


def test_seed_divergence_and_network_messages():
    assert M.NLLCNFOptions(seed=-3).seed == -3
    for v in (True, 1.0, None):
        with pytest.raises(MetricInputError) as e:
            M.NLLCNFOptions(seed=v)
        assert str(e.value) == f"nll_cnf.seed must be an int, got {v!r}"
    assert M.NLLCNFOptions(divergence="hutchinson").divergence == "hutchinson"
    with pytest.raises(MetricInputError) as e:
        M.NLLCNFOptions(divergence="trace")
    assert str(e.value) == "nll_cnf.divergence must be one of ('exact', 'hutchinson'), got 'trace'"
    assert M.NLLCNFOptions(network="egnn").network == "egnn"
    with pytest.raises(MetricInputError) as e:
        M.NLLCNFOptions(network="MLP")
    assert str(e.value) == "nll_cnf.network must be one of ('mlp', 'egnn') or null, got 'MLP'"


def test_from_dict_turns_yaml_ints_into_floats_and_lists_the_allowed_keys():
    assert M.NLLCNFOptions.from_dict(None) == M.NLLCNFOptions()
    o = M.NLLCNFOptions.from_dict({k: 2 for k in FLOATS} | {"steps": 5})
    for k in FLOATS:
        assert type(getattr(o, k)) is float and getattr(o, k) == 2.0
    assert type(o.steps) is int
    with pytest.raises(MetricInputError, match="nll_cnf.lr must be a positive number or null, "
                                               "got True"):
        M.NLLCNFOptions.from_dict({"lr": True})  # a YAML bool is not turned into 1.0
    src = {"zz": 1, "aa": 2, "n_test": 3}
    with pytest.raises(MetricInputError) as e:
        M.NLLCNFOptions.from_dict(src)
    assert str(e.value) == ("nll_cnf: unknown option(s) ['aa', 'zz']; allowed: n_train, n_test, "
                            "steps, batch_size, lr, lr_final, grad_clip, prior_std, network, "
                            "hidden, n_layers, coord_scale, atol, rtol, nll_batch_size, "
                            "divergence, seed")
    assert src == {"zz": 1, "aa": 2, "n_test": 3}  # the caller's mapping is not changed


class _Particles:
    name, dim, n_particles, spatial_dim = "dw4", 8, 4, 2


class _Plain:
    name, dim = "gmm40", 2


class Recorder:
    """A network builder that records its arguments and returns v(t, x) = W x."""

    def __init__(self):
        self.args = None

    def __call__(self, kind, dim, particles, hidden, n_layers, generator):
        self.args = (kind, dim, particles, hidden, n_layers, generator.get_state())
        f = nn.Linear(dim, dim, bias=False)
        with torch.no_grad():
            f.weight.copy_(0.1 * torch.eye(dim))
        return _TimeFree(f)


class _TimeFree(nn.Module):
    def __init__(self, f):
        super().__init__()
        self.f = f

    def forward(self, t, x):
        return self.f(x)


def test_geometry_and_build_field():
    assert M.geometry(_Particles()) == cnf.Geometry(8, (4, 2))
    assert M.geometry(_Plain()) == cnf.Geometry(2, None)
    rec, gen = Recorder(), torch.Generator().manual_seed(4)
    opts = M.NLLCNFOptions(hidden=7, n_layers=2, network="mlp")
    f = M.build_field(rec, opts, cnf.Geometry(2), gen)
    assert rec.args[:5] == ("mlp", 2, None, 7, 2) and isinstance(f, _TimeFree)
    f = M.build_field(rec, M.NLLCNFOptions(network="egnn", coord_scale=3.0), cnf.Geometry(8, (4, 2)),
                      gen)
    assert rec.args[:3] == ("egnn", 8, (4, 2)) and isinstance(f, cnf.Scaled) and f.scale == 3.0
    with pytest.raises(MetricInputError) as e:
        M.build_field(rec, M.NLLCNFOptions(network="egnn"), cnf.Geometry(2), gen)
    assert str(e.value) == "nll_cnf.network 'egnn' needs a particle target; use 'mlp'"


def _options(**kw):
    return M.NLLCNFOptions(**{"steps": 3, "batch_size": 4, "hidden": 5, "n_layers": 1,
                              "n_train": 60, "n_test": 5, "seed": 11, **kw}).resolved("dw4")


def test_fit_hands_the_first_n_train_mean_free_float32_samples_to_training(monkeypatch):
    seen = {}

    def spy(field, x, std, geom, **kw):
        seen.update(field=field, x=x, std=std, geom=geom, kw=kw,
                    gen_state=kw["generator"].get_state())
        return {"steps": kw["steps"], "seconds": 0.0, "loss": 1.5}

    monkeypatch.setattr(cnf, "train_cfm", spy)
    samples = torch.randn(80, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 3
    rec = Recorder()
    field, info = M.fit(rec, samples, _Particles(), _options())
    want = samples[:60].reshape(60, 4, 2)
    want = (want - want.mean(1, keepdim=True)).reshape(60, 8).float()
    assert seen["x"].dtype == torch.float32 and torch.allclose(seen["x"], want, atol=1e-6)
    assert seen["std"] == 2.0 and seen["geom"] == cnf.Geometry(8, (4, 2)) and seen["field"] is field
    kw = seen["kw"]
    assert (kw["steps"], kw["batch_size"], kw["lr"], kw["grad_clip"], kw["lr_final"]) == \
        (3, 4, 1e-3, 0.5, 1e-6)
    fresh = torch.Generator().manual_seed(11).get_state()
    assert torch.equal(rec.args[5], fresh)  # the network is built first from the seeded generator
    assert rec.args[:5] == ("egnn", 8, (4, 2), 5, 1)
    assert info == {"steps": 3, "seconds": 0.0, "loss": 1.5, "n_train": 60}
    _, info = M.fit(rec, samples[:55], _Particles(), _options())
    assert info["n_train"] == 55


def test_score_hands_the_first_n_test_mean_free_points_and_averages_in_float64(monkeypatch):
    seen = {}

    def spy(field, y, std, geom, **kw):
        seen.update(y=y, std=std, geom=geom, kw=kw, probe_state=kw["generator"].get_state())
        return torch.tensor([1.0, 2.0, 4.0, 8.0, 16.0], dtype=torch.float32) * 1e-8 - 3.0, 42

    monkeypatch.setattr(cnf, "log_likelihood", spy)
    test = torch.randn(9, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64) + 1
    t0 = time.perf_counter()
    out = M.score(nn.Linear(1, 1), test, _Particles(), _options(divergence="hutchinson",
                                                                 atol=1e-4, rtol=1e-3,
                                                                 nll_batch_size=2))
    wall = time.perf_counter() - t0
    want = test[:5].reshape(5, 4, 2)
    want = (want - want.mean(1, keepdim=True)).reshape(5, 8)
    assert seen["y"].dtype == torch.float64 and torch.allclose(seen["y"], want, atol=1e-12)
    assert seen["std"] == 2.0 and seen["geom"] == cnf.Geometry(8, (4, 2))
    kw = seen["kw"]
    assert (kw["atol"], kw["rtol"], kw["batch_size"], kw["divergence"]) == (1e-4, 1e-3, 2,
                                                                            "hutchinson")
    assert torch.equal(seen["probe_state"], torch.Generator().manual_seed(12).get_state())
    lq = torch.tensor([1.0, 2.0, 4.0, 8.0, 16.0], dtype=torch.float32) * 1e-8 - 3.0
    assert out["nll_cnf"] == -float(lq.double().mean()) and out["cnf_nfe"] == 42
    assert out["n_test"] == 5 and 0 <= out["cnf_likelihood_seconds"] <= wall
    assert set(out) == {"nll_cnf", "cnf_nfe", "cnf_likelihood_seconds", "n_test"}


def test_score_refuses_non_finite_log_likelihoods_with_their_count(monkeypatch):
    lq = torch.tensor([math.inf, math.nan, -math.inf, 1.0])
    monkeypatch.setattr(cnf, "log_likelihood", lambda *a, **k: (lq, 1))
    with pytest.raises(MetricInputError) as e:
        M.score(nn.Linear(1, 1), torch.zeros(4, 8), _Particles(), _options())
    assert str(e.value) == "nll_cnf: 3 test point(s) got a non-finite log-likelihood"


def test_nll_cnf_resolves_the_options_for_the_target_then_fits_and_scores(monkeypatch):
    calls = []
    monkeypatch.setattr(M, "fit", lambda b, s, t, o: calls.append(("fit", b, s, t, o))
                        or ("F", {}))
    monkeypatch.setattr(M, "score", lambda f, r, t, o: calls.append(("score", f, r, t, o))
                        or {"nll_cnf": 7.25})
    target = _Particles()
    assert M.nll_cnf("B", "S", "R", target, steps=9, lr=1) == 7.25
    want = M.NLLCNFOptions(steps=9, lr=1.0).resolved("dw4")
    assert calls == [("fit", "B", "S", target, want), ("score", "F", "R", target, want)]
