"""metrics/cnf.py against closed forms and transcriptions, in float64.

Independent of the code under test: the log-density of flows whose solution is known in closed
form (x' = A x: log q_1(y) = log q_0(e^{-A} y) - tr A; x' = a x + t c, solved by hand), the
Hutchinson estimate of a linear field (eps^T A eps, exactly, with the probes redrawn here from
the same generator in the documented order), the flow-matching loss and the training loop
transcribed from the module docstring (cosine rate and gradient clipping written out by hand),
torch.distributions for the Gaussian prior, and recorders of the times and calls the field sees.
"""
from __future__ import annotations

import math
import time

import pytest
import torch
from torch import nn

from metrics import MetricInputError, cnf

D64 = torch.float64
GEOM2 = cnf.Geometry(2)
PGEOM = cnf.Geometry(6, (3, 2))
A = torch.tensor([[0.3, -0.8], [0.5, -0.6]], dtype=D64)  # tr A = -0.3, not normal


class Linear(nn.Module):
    """v(t, x) = A x (+ t c), recording the time of every call."""

    def __init__(self, A: torch.Tensor, c: torch.Tensor | None = None):
        super().__init__()
        self.A = nn.Parameter(A.clone())
        self.c = c
        self.times: list[float] = []
        self.rows: list[int] = []

    def forward(self, t, x):
        self.times.append(float(t.reshape(-1)[0]))
        self.rows.append(x.shape[0])  # the batch (1 per point under the exact path's vmap)
        v = x @ self.A.T
        return v if self.c is None else v + t.reshape(-1, 1) * self.c


def _gauss(x, s):
    zero = torch.zeros((), dtype=D64)
    return torch.distributions.Normal(zero, zero + s).log_prob(x).sum(-1)


def _y(n, dim=2, seed=0, scale=1.5):
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=D64) * scale


def test_geometry_dof_and_remove_mean():
    assert GEOM2.dof == 2 and PGEOM.dof == 4 and cnf.Geometry(12, (4, 3)).dof == 9
    x = _y(3, 6)
    assert GEOM2.remove_mean(x) is x
    want = (x.reshape(3, 3, 2) - x.reshape(3, 3, 2).mean(1, keepdim=True)).reshape(3, 6)
    assert torch.allclose(PGEOM.remove_mean(x), want, atol=1e-15)


def test_prior_of_a_plain_target_is_the_isotropic_gaussian_and_its_draws_replay():
    x = _y(9)
    assert torch.allclose(cnf.prior_log_prob(x, 2.5, GEOM2), _gauss(x, 2.5), atol=1e-12)
    z = cnf.prior_sample(5, 2.5, GEOM2, torch.Generator().manual_seed(3), D64)
    want = torch.randn(5, 2, generator=torch.Generator().manual_seed(3), dtype=D64) * 2.5
    assert z.dtype == D64 and torch.equal(z, want)
    assert cnf.prior_sample(4, 1.0, GEOM2, torch.Generator()).dtype == torch.float32


def test_scaled_field_is_c_times_the_net_of_x_over_c():
    net = lambda t, x: x.pow(2) + t[:, None]  # noqa: E731 - nonlinear: x/c vs x*c differ
    f = cnf.Scaled(net, 4)
    x, t = _y(3), torch.tensor([0.25, 0.5, 1.0], dtype=D64)
    assert isinstance(f.scale, float) and f.net is net
    assert torch.allclose(f(t, x), 4 * ((x / 4).pow(2) + t[:, None]))


@pytest.mark.parametrize("batch_size", [3, 256])
def test_linear_field_log_density_is_the_change_of_variables_through_exp_minus_a(batch_size):
    y = _y(7).float()  # float32 in, the field's float64 used throughout
    field = Linear(A)
    got, nfe = cnf.log_likelihood(field, y, 1.7, GEOM2, batch_size=batch_size,
                                  atol=1e-9, rtol=1e-9)
    x0 = y.double() @ torch.linalg.matrix_exp(-A).T
    want = _gauss(x0, 1.7) - torch.trace(A)
    assert got.dtype == D64 and got.shape == (7,)
    assert torch.allclose(got, want, atol=1e-7, rtol=0)
    assert nfe == len(field.times)  # one count per field evaluation, summed over batches
    # the ODE runs from t = 1 (the data) to t = 0, never outside [0, 1]
    assert field.times[0] == 1.0 and min(field.times) >= 0.0 and max(field.times) <= 1.0


def test_default_tolerances_and_batches_are_the_official_ones():
    y = _y(300)
    field = Linear(A)
    got, nfe = cnf.log_likelihood(field, y, 1.7, GEOM2)
    want = _gauss(y @ torch.linalg.matrix_exp(-A).T, 1.7) - torch.trace(A)
    assert torch.allclose(got, want, atol=3e-5, rtol=0)
    # batches of 256 sharing their steps: two solves, as many evaluations as two separate calls
    first = Linear(A)
    cnf.log_likelihood(first, y[:256], 1.7, GEOM2, atol=1e-5, rtol=1e-5, method="dopri5")
    second = Linear(A)
    cnf.log_likelihood(second, y[256:], 1.7, GEOM2, atol=1e-5, rtol=1e-5, method="dopri5")
    assert nfe == len(first.times) + len(second.times)
    probed = Linear(A)
    cnf.log_likelihood(probed, y, 1.7, GEOM2, divergence="hutchinson",
                       generator=torch.Generator().manual_seed(0))
    assert set(probed.rows) == {256, 44}
    loose = Linear(A)
    cnf.log_likelihood(loose, y, 1.7, GEOM2, atol=1e-3, rtol=1e-3)
    assert len(loose.times) < nfe  # the tolerances reach the solver


@pytest.mark.filterwarnings("ignore:RK4. Unexpected arguments")
def test_another_solver_is_passed_through():
    field = Linear(A)
    got, nfe = cnf.log_likelihood(field, _y(4), 1.7, GEOM2, method="rk4")
    # fixed-step rk4 with step_t at 0 only: one step of four evaluations from 1 to 0
    assert nfe == 4 == len(field.times)
    want = _gauss(_y(4) @ torch.linalg.matrix_exp(-A).T, 1.7) - torch.trace(A)
    assert (got - want).abs().max() < 0.05


def test_time_dependent_field_fixes_the_direction_of_time():
    """x' = a x + t c: x(1) = e^a x(0) + c (e^a - 1 - a) / a^2, div = a d (a t <-> 1 - t swap or a
    run from 0 to 1 gives another answer)."""
    a, c = 0.7, torch.tensor([1.2, -0.4], dtype=D64)
    y = _y(5)
    field = Linear(a * torch.eye(2, dtype=D64), c)
    got, _ = cnf.log_likelihood(field, y, 1.3, GEOM2, atol=1e-10, rtol=1e-10)
    x0 = math.exp(-a) * (y - c * (math.exp(a) - 1 - a) / a ** 2)
    assert torch.allclose(got, _gauss(x0, 1.3) - 2 * a, atol=1e-8, rtol=0)


def test_particle_log_density_projects_the_end_point_and_counts_n_minus_one_times_d():
    B = torch.randn(6, 6, generator=torch.Generator().manual_seed(1), dtype=D64) * 0.3
    y = PGEOM.remove_mean(_y(4, 6))
    got, _ = cnf.log_likelihood(Linear(B), y, 2.0, PGEOM, atol=1e-10, rtol=1e-10)
    x0 = PGEOM.remove_mean(y @ torch.linalg.matrix_exp(-B).T)
    want = -0.5 * x0.pow(2).sum(-1) / 4.0 - 0.5 * 4 * math.log(2 * math.pi * 4.0) - torch.trace(B)
    assert torch.allclose(got, want, atol=1e-8, rtol=0)


@pytest.mark.parametrize("geom,batch_size", [(GEOM2, 3), (GEOM2, 256), (PGEOM, 2)])
def test_hutchinson_on_a_linear_field_is_eps_a_eps_with_probes_drawn_per_batch(geom, batch_size):
    dim = geom.dim
    Mx = torch.randn(dim, dim, generator=torch.Generator().manual_seed(2), dtype=D64) * 0.4
    y = geom.remove_mean(_y(7, dim))
    field = Linear(Mx)
    got, nfe = cnf.log_likelihood(field, y, 1.7, geom, batch_size=batch_size, atol=1e-10,
                                  rtol=1e-10, divergence="hutchinson",
                                  generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    eps = torch.cat([geom.remove_mean(torch.randn(y[i:i + batch_size].shape, generator=g,
                                                  dtype=D64)) for i in range(0, 7, batch_size)])
    x0 = geom.remove_mean(y @ torch.linalg.matrix_exp(-Mx).T)
    want = (-0.5 * x0.pow(2).sum(-1) / 1.7 ** 2 - 0.5 * geom.dof * math.log(2 * math.pi * 1.7 ** 2)
            - torch.einsum("bi,ij,bj->b", eps, Mx, eps))
    assert torch.allclose(got, want, atol=1e-8, rtol=0)
    assert nfe == len(field.times) and field.times[0] == 1.0 and min(field.times) >= 0.0


def test_hutchinson_needs_a_generator_and_unknown_divergences_are_refused():
    with pytest.raises(MetricInputError) as e:
        cnf.log_likelihood(Linear(A), _y(2), 1.0, GEOM2, divergence="hutchinson")
    assert str(e.value) == "divergence 'hutchinson' needs a torch.Generator"
    with pytest.raises(MetricInputError) as e:
        cnf.log_likelihood(Linear(A), _y(2), 1.0, GEOM2, divergence="Exact")
    assert str(e.value) == "divergence must be one of ('exact', 'hutchinson'), got 'Exact'"


def test_cfm_loss_is_the_documented_regression_with_its_draws_replayed():
    field = Linear(A[:1, :1].expand(6, 6).clone() * torch.eye(6, dtype=D64) + 0.1)
    x1 = PGEOM.remove_mean(_y(5, 6, seed=4))
    got = cnf.cfm_loss(field, x1, 2.0, PGEOM, torch.Generator().manual_seed(9))
    g = torch.Generator().manual_seed(9)
    x0 = PGEOM.remove_mean(torch.randn(5, 6, generator=g, dtype=D64) * 2.0)
    t = torch.rand(5, generator=g, dtype=D64)
    xt = t[:, None] * x1 + (1 - t[:, None]) * x0
    want = ((xt @ field.A.T - (x1 - x0)) ** 2).sum() / 30
    assert torch.allclose(got, want, atol=1e-12)


def _train_by_hand(field, samples, std, geom, *, steps, batch_size, lr, gen, grad_clip, lr_final):
    """The documented loop: Adam, batches with replacement, cosine rate to lr_final (closed form),
    clipping of the global gradient norm to grad_clip; returns every step's loss."""
    opt = torch.optim.Adam(field.parameters(), lr=lr)
    params = list(field.parameters())
    losses = []
    for k in range(steps):
        if lr_final is not None:
            cos = (1 + math.cos(math.pi * k / steps)) / 2
            opt.param_groups[0]["lr"] = lr_final + (lr - lr_final) * cos
        x1 = samples[torch.randint(samples.shape[0], (batch_size,), generator=gen)]
        x0 = geom.remove_mean(torch.randn(batch_size, geom.dim, generator=gen, dtype=D64) * std)
        t = torch.rand(batch_size, generator=gen, dtype=D64)[:, None]
        loss = ((field(t[:, 0], t * x1 + (1 - t) * x0) - (x1 - x0)) ** 2).mean()
        grads = torch.autograd.grad(loss, params)
        if grad_clip is not None:
            norm = math.sqrt(sum(float((g ** 2).sum()) for g in grads))
            grads = [g * min(1.0, grad_clip / (norm + 1e-6)) for g in grads]
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
        losses.append(float(loss.detach()))
    return losses


@pytest.mark.parametrize("grad_clip,lr_final", [(0.05, 1e-3), (None, None)])
def test_train_cfm_is_the_documented_loop(grad_clip, lr_final):
    samples = _y(40, seed=6) + torch.tensor([3.0, -1.0], dtype=D64)
    mine, ref = Linear(A), Linear(A)
    t0 = time.perf_counter()
    info = cnf.train_cfm(mine, samples, 2.0, GEOM2, steps=30, batch_size=8, lr=0.05,
                         generator=torch.Generator().manual_seed(1), grad_clip=grad_clip,
                         lr_final=lr_final)
    wall = time.perf_counter() - t0
    losses = _train_by_hand(ref, samples, 2.0, GEOM2, steps=30, batch_size=8, lr=0.05,
                            gen=torch.Generator().manual_seed(1), grad_clip=grad_clip,
                            lr_final=lr_final)
    assert torch.allclose(mine.A, ref.A, atol=1e-10, rtol=0)
    assert not torch.allclose(mine.A, A, atol=1e-3)
    assert info["steps"] == 30 and 0 <= info["seconds"] <= wall
    assert info["loss"] == pytest.approx(sum(losses[-3:]) / 3, abs=1e-10)  # the last 10 %
    assert not mine.training  # left in eval mode


def test_train_cfm_short_and_empty_runs_and_a_diverging_loss():
    samples = _y(40)
    f = Linear(A)
    f.eval()
    seen = []
    f.register_forward_pre_hook(lambda m, a: seen.append(m.training))
    info = cnf.train_cfm(f, samples, 1.0, GEOM2, steps=3, batch_size=4, lr=0.01,
                         generator=torch.Generator().manual_seed(0))
    assert seen == [True] * 3 and not f.training
    one = _train_by_hand(Linear(A), samples, 1.0, GEOM2, steps=3, batch_size=4, lr=0.01,
                         gen=torch.Generator().manual_seed(0), grad_clip=None, lr_final=None)
    assert info["loss"] == pytest.approx(one[-1], abs=1e-12)  # steps < 10: the last step only
    none = cnf.train_cfm(Linear(A), samples, 1.0, GEOM2, steps=0, batch_size=4, lr=0.01,
                         generator=torch.Generator().manual_seed(0), lr_final=1e-6)
    assert none["steps"] == 0 and math.isnan(none["loss"])
    bad = Linear(torch.full((2, 2), math.inf, dtype=D64))
    with pytest.raises(MetricInputError) as e:
        cnf.train_cfm(bad, samples, 1.0, GEOM2, steps=2, batch_size=4, lr=0.125,
                      generator=torch.Generator().manual_seed(0))
    assert str(e.value) in ("nll_cnf: flow-matching loss became nan; lower lr (got 0.125)",
                            "nll_cnf: flow-matching loss became inf; lower lr (got 0.125)")


def test_check_points_converts_and_names_each_problem():
    geom = cnf.Geometry(3)
    got = cnf.check_points([[1, 2, 3.5]] * 4, geom, "samples", 2)
    assert got.dtype == D64 and got.shape == (4, 3) and float(got[0, 2]) == 3.5
    x = torch.ones(2, 3, requires_grad=True)
    assert not cnf.check_points(x, geom, "s", 2).requires_grad
    cases = [("abc", "what must be an array of shape [n, 3], got str"),
             (torch.zeros(4, 2), "what must have shape [n, 3], got (4, 2)"),
             (torch.zeros(3), "what must have shape [n, 3], got (3,)"),
             (torch.zeros(4, 3, dtype=torch.int32), "what must hold floats, got dtype torch.int32"),
             (torch.tensor([[0, math.nan, 0], [0, 0, 0], [math.inf, -math.inf, 0]] * 2),
              "what has 4 row(s) with NaN or inf coordinates"),
             (torch.zeros(2, 3), "what has 2 row(s); nll_cnf needs at least 3")]
    for bad, msg in cases:
        with pytest.raises(MetricInputError) as e:
            cnf.check_points(bad, geom, "what", 3)
        assert str(e.value) == msg
    assert cnf.check_points(torch.zeros(3, 3), geom, "what", 3).shape == (3, 3)
    assert (cnf.MIN_TRAIN, cnf.MIN_TEST) == (50, 1)


def test_both_right_hand_sides_against_the_jacobian_of_a_nonlinear_field():
    class Tanh(nn.Module):
        def __init__(self):
            super().__init__()
            self.W = nn.Parameter(torch.randn(3, 3, generator=torch.Generator().manual_seed(8),
                                              dtype=D64))

        def forward(self, t, x):
            return torch.tanh(x @ self.W.T) * (1 + t.reshape(-1, 1))

    field, x, t = Tanh(), _y(4, 3), torch.tensor(0.3, dtype=D64)
    state = torch.cat([x, torch.full((4, 1), 9.0, dtype=D64)], -1)
    jac = [torch.autograd.functional.jacobian(lambda z: field(t, z[None])[0], xi) for xi in x]
    v = field(t, x).detach()
    count = [0]
    out = cnf._augmented_rhs(field, count)(t, state)
    assert count == [1] and not out.requires_grad
    assert torch.allclose(out[:, :3], v, atol=1e-12)
    assert torch.allclose(out[:, 3], torch.stack([torch.trace(J) for J in jac]), atol=1e-12)
    eps = torch.randn(4, 3, generator=torch.Generator().manual_seed(9), dtype=D64)
    out = cnf._hutchinson_rhs(field, count, [eps])(t, state)
    assert count == [2] and not out.requires_grad
    assert torch.allclose(out[:, :3], v, atol=1e-12)
    assert torch.allclose(out[:, 3], torch.stack([e @ J @ e for e, J in zip(eps, jac)]), atol=1e-12)
