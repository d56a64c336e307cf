"""nll_cnf: the CNF likelihood against closed forms, its symmetries, determinism and errors.

Fast tests use tiny fields; the two fitted-flow checks (NLL within 0.05 nats of a known 2-D
density) train for a few thousand steps and are marked slow.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from metrics import MetricInputError, cnf
from metrics import nll_cnf as M
from samplers.dem.networks import build_network, init_parameters

GEOM2 = cnf.Geometry(2)


class Linear(nn.Module):
    """v(t, x) = A x: the flow of N(0, s^2 I) is N(0, s^2 e^A e^{A^T}) at t = 1."""

    def __init__(self, A: torch.Tensor):
        super().__init__()
        self.A = nn.Parameter(A)

    def forward(self, t, x):
        return x @ self.A.T


def test_linear_field_log_likelihood_matches_the_gaussian_flow():
    A = torch.tensor([[0.3, -0.8], [0.5, -0.2]], dtype=torch.float64)
    s = 1.7
    M_ = torch.linalg.matrix_exp(A)
    cov = s ** 2 * M_ @ M_.T
    y = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2
    exact = torch.distributions.MultivariateNormal(torch.zeros(2, dtype=torch.float64),
                                                   covariance_matrix=cov).log_prob(y)
    got, nfe = cnf.log_likelihood(Linear(A), y, s, GEOM2)
    assert nfe > 0
    assert torch.allclose(got, exact, atol=1e-4, rtol=0)
    # the divergence term matters: without it (tr A = 0.1) the answer is off by 0.1
    assert (got - exact).abs().max() < 1e-4 < abs(float(torch.trace(A)))


def test_mean_free_prior_counts_n_minus_one_times_d_dimensions():
    geom = cnf.Geometry(8, (4, 2))
    x = geom.remove_mean(torch.randn(5, 8, generator=torch.Generator().manual_seed(1),
                                     dtype=torch.float64))
    s = 2.0
    want = -0.5 * x.pow(2).sum(-1) / s ** 2 - 0.5 * 6 * math.log(2 * math.pi * s ** 2)
    assert torch.allclose(cnf.prior_log_prob(x, s, geom), want)
    z = cnf.prior_sample(4000, s, geom, torch.Generator().manual_seed(2), torch.float64)
    assert z.reshape(-1, 4, 2).mean(1).abs().max() < 1e-12
    # E|z|^2 = (N-1) D s^2 on the subspace
    assert abs(float(z.pow(2).sum(-1).mean()) / (6 * s ** 2) - 1) < 0.05


def _untrained_egnn(gain: float = 1.0) -> nn.Module:
    """A tiny EGNN whose last coordinate layer is not near zero, so the flow really moves."""
    net = build_network("egnn", 12, (4, 3), 8, 2, torch.Generator().manual_seed(3)).double()
    with torch.no_grad():
        for layer in net.layers:
            layer.coord2.weight.normal_(0, gain, generator=torch.Generator().manual_seed(4))
    return net


def test_particle_log_likelihood_is_invariant_under_rotation_permutation_translation():
    target = type("T", (), {"dim": 12, "n_particles": 4, "spatial_dim": 3, "name": "dw4"})()
    geom = M.geometry(target)
    net = _untrained_egnn()
    g = torch.Generator().manual_seed(5)
    x = geom.remove_mean(torch.randn(3, 12, generator=g, dtype=torch.float64) * 1.5)
    Q, _ = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    rot = (x.reshape(3, 4, 3) @ Q.T).reshape(3, 12)
    perm = x.reshape(3, 4, 3)[:, [2, 0, 3, 1]].reshape(3, 12)
    shifted = x + torch.tensor([0.7, -1.1, 2.0], dtype=torch.float64).repeat(4)
    lq = cnf.log_likelihood(net, geom.remove_mean(torch.cat([x, rot, perm, shifted])), 2.0,
                            geom)[0].reshape(4, 3)
    prior_only = cnf.prior_log_prob(x, 2.0, geom)
    assert (lq[0] - prior_only).abs().min() > 1e-2  # the field does something
    for k in (1, 2, 3):
        assert torch.allclose(lq[k], lq[0], atol=1e-4, rtol=0), k


def _tiny_opts(**kw) -> M.NLLCNFOptions:
    base = dict(steps=20, batch_size=32, hidden=8, n_layers=1, n_test=16, atol=1e-3, rtol=1e-3)
    return M.NLLCNFOptions(**{**base, **kw}).resolved("gmm40")


def test_fit_and_score_are_deterministic_under_the_seed():
    target = _gmm()
    x = target.sample_exact(200, torch.Generator().manual_seed(6))
    y = target.reference("test")
    out = []
    for seed in (0, 0, 1):
        field, info = M.fit(build_network, x, target, _tiny_opts(seed=seed))
        assert info["steps"] == 20 and info["n_train"] == 200
        out.append(M.score(field, y, target, _tiny_opts(seed=seed))["nll_cnf"])
    assert out[0] == out[1] and out[0] != out[2]


def _gmm():
    import targets
    return targets.get("gmm40")


@pytest.mark.parametrize("bad, field", [
    (torch.full((100, 2), math.nan), "samples has 100 row"),
    (torch.zeros(100, 3), "samples must have shape"),
    (torch.zeros(100), "samples must have shape"),
    (torch.zeros(10, 2), "samples has 10 row(s); nll_cnf needs at least 50"),
])
def test_bad_samples_are_refused_naming_the_field(bad, field):
    with pytest.raises(MetricInputError) as e:
        M.fit(build_network, bad, _gmm(), _tiny_opts())
    assert field in str(e.value)


def test_bad_reference_and_options_are_refused():
    y = torch.zeros(5, 2)
    y[2, 0] = math.inf
    with pytest.raises(MetricInputError, match="reference has 1 row"):
        M.score(Linear(torch.zeros(2, 2)), y, _gmm(), _tiny_opts())
    with pytest.raises(MetricInputError, match="nll_cnf.steps must be a positive int"):
        M.NLLCNFOptions(steps=-1)
    with pytest.raises(MetricInputError, match="nll_cnf.network must be one of"):
        M.NLLCNFOptions(network="transformer")
    with pytest.raises(MetricInputError, match=r"unknown option\(s\) \['n_samples'\]"):
        M.NLLCNFOptions.from_dict({"n_samples": 10})
    with pytest.raises(MetricInputError, match="nll_cnf.lr must be a positive number"):
        M.NLLCNFOptions.from_dict({"lr": 0})


class TimeMLP(nn.Module):
    """A plain MLP on [x, t] for the 2-D fitting tests (the machinery, not iDEM's network)."""

    def __init__(self, dim: int = 2, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim + 1, hidden), nn.SiLU(), nn.Linear(hidden, hidden),
                                 nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, dim))

    def forward(self, t, x):
        return self.net(torch.cat([x, t.reshape(-1, 1).expand(x.shape[0], 1)], -1))


def _fitted_nll(x: torch.Tensor, y: torch.Tensor, std: float, steps: int) -> float:
    field = init_parameters(TimeMLP(), torch.Generator().manual_seed(0))
    cnf.train_cfm(field, x, std, GEOM2, steps=steps, batch_size=256, lr=2e-3,
                  generator=torch.Generator().manual_seed(7), lr_final=1e-5)
    return -float(cnf.log_likelihood(field, y, std, GEOM2)[0].mean())


@pytest.mark.slow
def test_cnf_fitted_to_a_gaussian_recovers_its_nll():
    g = torch.Generator().manual_seed(8)
    L = torch.tensor([[1.5, 0.0], [0.9, 0.5]])
    x = torch.randn(20000, 2, generator=g) @ L.T + torch.tensor([1.0, -2.0])
    y = torch.randn(2000, 2, generator=g) @ L.T + torch.tensor([1.0, -2.0])
    true = torch.distributions.MultivariateNormal(torch.tensor([1.0, -2.0]), scale_tril=L)
    exact = -float(true.log_prob(y).mean())
    assert abs(_fitted_nll(x, y, 2.0, 3000) - exact) < 0.05


@pytest.mark.slow
def test_cnf_fitted_to_a_two_component_mixture_recovers_its_nll():
    g = torch.Generator().manual_seed(9)
    mu = torch.tensor([[-2.0, 0.0], [2.0, 1.0]])

    def draw(n):
        return mu[torch.randint(2, (n,), generator=g)] + 0.6 * torch.randn(n, 2, generator=g)

    x, y = draw(20000), draw(2000)
    comp = (-0.5 * ((y[:, None] - mu) / 0.6).pow(2).sum(-1) - 2 * math.log(0.6)
            - math.log(2 * math.pi))
    exact = -float((torch.logsumexp(comp, 1) - math.log(2)).mean())
    assert abs(_fitted_nll(x, y, 2.0, 4000) - exact) < 0.05


def test_runner_caches_the_fitted_cnf_and_reuses_it(tmp_path):
    from runners import cnf as runner
    target = _gmm()
    x = target.sample_exact(300, torch.Generator().manual_seed(10))
    y = target.reference("test")
    opts = {"nll_cnf": dict(steps=10, batch_size=32, hidden=8, n_layers=1, n_test=8, atol=1e-3,
                            rtol=1e-3)}
    first = runner.columns(target, x, y, opts, tmp_path)
    assert (tmp_path / runner.CNF_FILE).is_file() and not first["cnf_reused"]
    assert first["cnf_train_steps"] == 10 and first["cnf_n_train"] == 300
    # another n_test is a new scoring of the same fit: reused, same training record
    again = runner.columns(target, x, y, {"nll_cnf": {**opts["nll_cnf"], "n_test": 8}}, tmp_path)
    assert again["cnf_reused"] and again["nll_cnf"] == first["nll_cnf"]
    assert again["cnf_train_seconds"] == first["cnf_train_seconds"]
    # other samples: a different fit, trained again
    other = runner.columns(target, x.flip(0), y, opts, tmp_path)
    assert not other["cnf_reused"]


def test_nll_cnf_gets_its_own_table_with_floors(tmp_path):
    import pandas as pd

    from runners import tables
    df = pd.DataFrame([dict(target="gmm40", sampler="mala", seed=s, status="ok", profile="paper",
                            reference_source="exact", warnings="", nll_cnf=v)
                       for s, v in enumerate([7.0, 7.2])])
    md = tables.to_markdown(df)
    assert "## nll_cnf: NLL of the reference under a CNF fitted to the samples" in md
    assert "7.1 ± 0.1" in md
    path = tmp_path / "floors.csv"
    path.write_text("target,quantity,value,settings\ngmm40,exact NLL,6.88,exact density\n"
                    "dw4,reference nll_cnf,9.1,val split\n")
    lines = tables.floor_lines("nll_cnf", ["gmm40"], path)
    assert any("GMM-40: exact NLL = 6.880 nats (exact density)" in s for s in lines)
    assert not any("9.1" in s for s in lines) and tables.floor_lines("x_w2", ["gmm40"], path) == []


@pytest.mark.slow
def test_grid_cell_draws_extra_cnf_samples_without_charging_the_sampler(tmp_path, capsys):
    import yaml
    from helpers_grid import load_rows, run_grid

    from runners import config as cfgmod
    prof = yaml.safe_load((cfgmod.PROFILE_DIR / "smoke.yaml").read_text())
    runs = {}
    for name, extra in (("off", None), ("on", 1500)):
        p = dict(prof, metric_options={k: v for k, v in prof["metric_options"].items()
                                       if extra is not None or k != "nll_cnf"})
        if extra is not None:
            p["metric_options"]["nll_cnf"] = {**prof["metric_options"]["nll_cnf"],
                                              "n_train": extra}
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(p))
        code, err = run_grid([f"out={tmp_path / name}", f"profile={path}", "launcher=debug",
                              "targets=gmm40", "samplers=mala", "collect=false"], capsys)
        assert code == 0, err
        runs[name] = load_rows(tmp_path / name)[("gmm40", "mala", 0)]
    on, off = runs["on"], runs["off"]
    assert on["cnf_n_train"] == 1500 and math.isfinite(on["nll_cnf"]) and "nll_cnf" not in off
    assert on["energy_evals"] == off["energy_evals"] and on["x_w2"] == off["x_w2"]
    assert (tmp_path / "on" / "cells" / on["cell_key"] / "cnf_samples.npy").is_file()


def test_evaluate_scores_a_sample_file_with_nll_cnf_only(tmp_path, capsys):
    import numpy as np

    from runners import evaluate
    path = tmp_path / "s.npy"
    np.save(path, _gmm().sample_exact(300, torch.Generator().manual_seed(11)).numpy())
    args = [f"samples={path}", "target=gmm40", f"out={tmp_path / 'out'}", "metrics=nll_cnf",
            "nll_cnf.steps=10", "nll_cnf.batch_size=32", "nll_cnf.hidden=8",
            "nll_cnf.n_layers=1", "nll_cnf.n_test=8", "nll_cnf.atol=1e-3", "nll_cnf.rtol=1e-3"]
    assert evaluate.main(args) == 0
    out = capsys.readouterr().out
    assert "nll_cnf" in out and "cnf_train_steps      10" in out and "x_w2" not in out
    assert evaluate.main(args[:-1] + ["nll_cnf.rtol=-1"]) == 2
    assert "nll_cnf.rtol must be a positive number" in capsys.readouterr().err


def test_hutchinson_divergence_is_unbiased_for_a_linear_field():
    A = torch.tensor([[0.3, -0.8], [0.5, -0.2]], dtype=torch.float64)
    y = torch.randn(2000, 2, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    exact, _ = cnf.log_likelihood(Linear(A), y, 1.7, GEOM2, batch_size=2000)
    est, _ = cnf.log_likelihood(Linear(A), y, 1.7, GEOM2, batch_size=2000,
                                divergence="hutchinson", generator=torch.Generator().manual_seed(0))
    diff = est - exact
    assert diff.abs().max() > 1e-3  # it is an estimate, not the exact value
    assert abs(float(diff.mean())) < 3 * float(diff.std()) / math.sqrt(len(diff))
    with pytest.raises(MetricInputError, match="divergence must be one of"):
        cnf.log_likelihood(Linear(A), y, 1.7, GEOM2, divergence="trace")


def test_hutchinson_with_mean_free_probes_is_unbiased_for_the_egnn_field():
    geom = cnf.Geometry(12, (4, 3))
    x = geom.remove_mean(torch.randn(1, 12, generator=torch.Generator().manual_seed(13),
                                     dtype=torch.float64)).expand(200, 12)
    net = _untrained_egnn()
    exact = cnf.log_likelihood(net, x[:1], 2.0, geom)[0]
    est = cnf.log_likelihood(net, x, 2.0, geom, batch_size=200,
                             divergence="hutchinson", generator=torch.Generator().manual_seed(1))[0]
    sem = float(est.std()) / math.sqrt(len(est))
    assert float(est.std()) > 1e-3 and abs(float(est.mean() - exact)) < 3 * sem
