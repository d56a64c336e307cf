"""FAB as its authors ran it (issue 11): the prioritised buffer's draws without replacement and its
re-weighting order (fab-torch), the Metropolis AIS transition and float64 of fab-torch's GMM run,
and the warm-up + cosine lr schedule of the se3-augmented-coupling-flows configs.

References are independent of the code: exact inclusion probabilities of successive sampling by
enumeration, the MH rule min(1, pi(y)/pi(x)) transcribed in numpy, Gaussian moments of q^(1-2b)
p^(2b) in closed form, and the schedule's values at chosen steps worked out by hand."""
import copy
import itertools
import math

import numpy as np
import pytest
import torch

import samplers
import targets
from samplers import fab_ais, fab_buffer
from samplers.base import Budget
from samplers.fab import FABConfig, warmup_cosine_lr


# ------------------------------------------------------------------------------ buffer draws
def _inclusion_probabilities(w, k):
    """P(i among k draws without replacement, each ∝ w among those left), by enumeration."""
    w = np.asarray(w, float)
    out = np.zeros(len(w))
    for order in itertools.permutations(range(len(w)), k):
        p, left = 1.0, w.sum()
        for i in order:
            p *= w[i] / left
            left -= w[i]
        out[list(order)] += p
    return out


W = [1.0, 2.0, 3.0, 4.0, 10.0]


@pytest.mark.parametrize("n_batches, batch_size", [(2, 1), (1, 3)])
def test_no_replacement_round_is_distinct_and_follows_successive_sampling(n_batches, batch_size):
    rounds, k = 6000, n_batches * batch_size
    g = torch.Generator().manual_seed(0)
    log_w = torch.tensor(W).log()
    counts = np.zeros(len(W))
    for _ in range(rounds):
        batches = fab_buffer.draw_round(log_w, n_batches, batch_size, "no_replacement", g)
        assert [len(b) for b in batches] == [batch_size] * n_batches
        idx = torch.cat(batches)
        assert len(set(idx.tolist())) == k            # no point twice in a round
        counts[idx.numpy()] += 1
    exact = _inclusion_probabilities(W, k)
    sd = np.sqrt(exact * (1 - exact) / rounds)        # binomial s.d. of each frequency
    assert np.all(np.abs(counts / rounds - exact) < 4.5 * sd + 1e-12), (counts / rounds, exact)


def test_single_draws_and_with_replacement_follow_the_priorities():
    rounds = 6000
    g = torch.Generator().manual_seed(1)
    log_w = torch.tensor(W).log()
    p = np.asarray(W) / sum(W)
    first = np.bincount([int(fab_buffer.draw_round(log_w, 1, 1, "no_replacement", g)[0])
                         for _ in range(rounds)], minlength=len(W))
    sd = np.sqrt(p * (1 - p) / rounds)
    assert np.all(np.abs(first / rounds - p) < 4.5 * sd)
    many = torch.cat(fab_buffer.draw_round(log_w, 4, 1500, "with_replacement", g)).numpy()
    sd = np.sqrt(p * (1 - p) / many.size)
    assert np.all(np.abs(np.bincount(many, minlength=len(W)) / many.size - p) < 4.5 * sd)


def test_reweight_is_the_fab_torch_adjustment_and_kills_invalid_points():
    log_w = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    log_q_old = torch.tensor([-3.0, -2.0, -1.0], dtype=torch.float64)
    log_q_new = torch.tensor([-2.5, -4.0, float("nan")], dtype=torch.float64)
    w, q = fab_buffer.reweight(log_w, log_q_old, log_q_new, alpha=2.0)
    # old + (1 - 2)(new - old): 0.5 - 0.5 = 0, -1 + 2 = 1; the NaN point is never drawn again
    assert w.tolist() == [0.0, 1.0, -math.inf] and q.tolist()[:2] == [-2.5, -4.0]


class _Recorder:
    """Wraps fab_buffer.draw_round: keeps the buffer and a copy of the flow at the draw."""

    def __init__(self, sampler, monkeypatch):
        self.sampler, self.calls, self.orig = sampler, [], fab_buffer.draw_round
        monkeypatch.setattr(fab_buffer, "draw_round", self)

    def __call__(self, log_w, *args):
        batches = self.orig(log_w, *args)
        self.calls.append((log_w.clone(), copy.deepcopy(self.sampler.flow), batches))
        return batches


@pytest.mark.parametrize("adjust", ["before_step", "after_step"])
def test_stored_log_w_after_an_update_is_old_plus_the_change_of_log_q(monkeypatch, adjust):
    """One gradient step (n_updates 1, the buffer full after two rounds): the drawn points' log w
    become old + (1 - alpha)(log q_new - log q_old) with log q_new from the flow before the step
    (fab-torch) or after it; the other points keep theirs."""
    s = samplers.get("fab")(FABConfig(n_layers=2, hidden=8, batch_size=16, buffer_min=32,
                                      buffer_size=64, n_leapfrog=2, n_updates_per_ais=1,
                                      max_iters=1, buffer_adjust=adjust, lr=1e-2))
    rec = _Recorder(s, monkeypatch)
    s.fit(targets.get("gmm40"), Budget(max_energy_evals=10 ** 5), torch.Generator().manual_seed(0))
    (log_w_old, flow_before, (idx,)), = rec.calls
    u, log_w, log_q = s.state_dict()["buffer"]
    with torch.no_grad():
        lq_before, lq_after = flow_before.log_prob(u[idx]), s.flow.log_prob(u[idx])
    assert not torch.allclose(lq_before, lq_after)    # the step changed q: the order matters
    lq_new = lq_before if adjust == "before_step" else lq_after
    lq_old = s.state_dict()["buffer"][2].clone()
    # log q_old at the draw: the value AIS stored, i.e. the flow before the step's log q
    with torch.no_grad():
        lq_at_draw = flow_before.log_prob(u)
    expected = log_w_old[idx] + (1 - 2.0) * (lq_new - lq_at_draw[idx])
    assert torch.allclose(log_w[idx], expected, atol=1e-5)
    assert torch.allclose(lq_old[idx], lq_new, atol=1e-5)
    rest = torch.ones(len(log_w), dtype=torch.bool)
    rest[idx] = False
    assert torch.equal(log_w[rest], log_w_old[rest])


# ------------------------------------------------------------------------------ Metropolis
def _gauss(y, mean, std):
    return (-0.5 * ((y - mean) / std) ** 2 - math.log(std) - 0.5 * math.log(2 * math.pi)).sum(-1)


def test_metropolis_acceptance_is_the_mh_ratio_transcribed():
    n, b, steps = 200, 0.3, [0.8, 1.7]
    g = torch.Generator().manual_seed(3)
    u0 = 2 * torch.randn(n, 2, generator=g, dtype=torch.float64)

    def log_p_and_q(y):
        return _gauss(y, 1.0, 0.7), _gauss(y, -0.5, 2.0)

    lp, lq = log_p_and_q(u0)
    u, lp1, lq1, acc, prob = fab_ais.metropolis_transition(
        u0, lp, lq, b, log_p_and_q, steps, torch.Generator().manual_seed(9))
    # numpy replay with the same draws: proposal noise, then one uniform per chain, per step
    g = torch.Generator().manual_seed(9)
    x = u0.numpy().copy()

    def log_pi(y):
        return ((1 - 2 * b) * _gauss(torch.from_numpy(y), -0.5, 2.0)
                + 2 * b * _gauss(torch.from_numpy(y), 1.0, 0.7)).numpy()

    for k, s in enumerate(steps):
        y = x + s * torch.randn(n, 2, generator=g, dtype=torch.float64).numpy()
        uniform = torch.rand(n, generator=g, dtype=torch.float64).numpy()
        a = np.minimum(1.0, np.exp(log_pi(y) - log_pi(x)))    # the Metropolis probability
        take = uniform < a
        assert acc[k] == pytest.approx(take.mean()) and prob[k] == pytest.approx(a.mean())
        x = np.where(take[:, None], y, x)
    assert np.allclose(u.numpy(), x) and 0.1 < acc[0] < 0.9
    assert torch.allclose(lp1, _gauss(u, 1.0, 0.7)) and torch.allclose(lq1, _gauss(u, -0.5, 2.0))


@pytest.mark.parametrize("dim", [1, 2])
def test_metropolis_leaves_the_intermediate_gaussian_invariant(dim):
    """p = N(0, 1), q = N(3, 2^2) per coordinate, b = 0.25: pi ∝ q^0.5 p^0.5 = N(m, v) with
    1/v = 0.5/4 + 0.5 = 0.625 and m = v · 0.5 · 3/4 = 0.6. Chains started at exact draws stay
    exact after 30 steps: mean and variance within 5 s.e. of n chains."""
    n, b = 20000, 0.25
    v = 1 / 0.625
    m = v * 0.5 * 3 / 4
    g = torch.Generator().manual_seed(4)
    u = m + math.sqrt(v) * torch.randn(n, dim, generator=g, dtype=torch.float64)

    def log_p_and_q(y):
        return _gauss(y, 0.0, 1.0), _gauss(y, 3.0, 2.0)

    lp, lq = log_p_and_q(u)
    u, *_ = fab_ais.metropolis_transition(u, lp, lq, b, log_p_and_q, [1.5] * 30, g)
    se_mean, se_var = math.sqrt(v / n), v * math.sqrt(2 / n)
    assert torch.all((u.mean(0) - m).abs() < 5 * se_mean), (u.mean(0), m)
    assert torch.all((u.var(0) - v).abs() < 5 * se_var), (u.var(0), v)
    # and the chains moved (a kernel that never accepts would pass the moments trivially)
    u_far = torch.full((4000, dim), 8.0, dtype=torch.float64)
    lp, lq = log_p_and_q(u_far)
    u_far, *_ = fab_ais.metropolis_transition(u_far, lp, lq, b, log_p_and_q, [1.5] * 200, g)
    assert torch.all((u_far.mean(0) - m).abs() < 5 * math.sqrt(v / 4000) + 0.05)


def test_fab_torch_step_rule():
    assert fab_ais.adapt_step(5.0, 0.9, 0.65) == pytest.approx(5.25)
    assert fab_ais.adapt_step(5.0, 0.65, 0.65) == pytest.approx(5.0 / 1.05)


def test_metropolis_float64_fit_costs_one_evaluation_per_move():
    t = targets.get("gmm40")
    cfg = FABConfig(n_layers=2, hidden=8, batch_size=16, buffer_min=64, buffer_size=128,
                    transition="metropolis", n_intermediate=1, n_metropolis=3,
                    metropolis_step=5.0, metropolis_adapt=True, dtype="float64", max_iters=8)
    s = samplers.get("fab")(cfg)
    info = s.fit(t, Budget(max_energy_evals=10 ** 5), torch.Generator().manual_seed(0))
    assert info["steps"] == 8 and info["transition"] == "metropolis"
    assert info["energy_evals"] == info["ais_rounds"] * 16 * (1 + 1 * 3)
    assert all(p.dtype == torch.float64 for p in s.flow.parameters())
    assert s.state_dict()["buffer"][0].dtype == torch.float64
    # adapted by x / ÷ 1.05 per round and step: every size is 5 * 1.05^k for an integer k
    ks = [math.log(h / 5.0) / math.log(1.05) for h in info["metropolis_steps"][0]]
    assert all(abs(k - round(k)) < 1e-9 for k in ks) and any(round(k) != 0 for k in ks)
    x = s.sample(32, torch.Generator().manual_seed(1))
    assert x.dtype == torch.float32 and torch.isfinite(s.log_prob(x)).all()


# ------------------------------------------------------------------------------ lr schedule
def test_warmup_cosine_values_at_chosen_steps():
    # init 2e-5, peak 2e-4, end 2e-5, warm-up 240, total 1240 (1000 decay steps)
    f = lambda k: warmup_cosine_lr(k, 2e-5, 2e-4, 2e-5, 240, 1240)   # noqa: E731
    assert f(0) == pytest.approx(2e-5)
    assert f(120) == pytest.approx(1.1e-4)                 # half-way up
    assert f(240) == pytest.approx(2e-4)                   # the peak
    assert f(490) == pytest.approx(2e-5 + 1.8e-4 * (1 + math.sqrt(0.5)) / 2)   # a quarter down
    assert f(740) == pytest.approx(1.1e-4)                 # half-way down
    assert f(1240) == pytest.approx(2e-5) and f(5000) == pytest.approx(2e-5)


def test_the_fit_trains_with_the_scheduled_lr():
    cfg = FABConfig(n_layers=2, hidden=8, batch_size=16, buffer_min=64, buffer_size=128,
                    n_leapfrog=2, max_iters=12, lr=1e-3, lr_schedule="warmup_cosine",
                    lr_init=1e-4, lr_end=1e-5, lr_warmup_steps=4)
    s = samplers.get("fab")(cfg)
    info = s.fit(targets.get("gmm40"), Budget(max_energy_evals=10 ** 5),
                 torch.Generator().manual_seed(0))
    # step 11 of 12: 3 of 8 decay steps from the end -> 1e-5 + 9.9e-4 (1 + cos(7 pi / 8)) / 2
    expected = 1e-5 + 9.9e-4 * (1 + math.cos(7 * math.pi / 8)) / 2
    assert info["train_lr"] == pytest.approx(expected)
    assert s.state_dict()["opt"]["param_groups"][0]["lr"] == pytest.approx(expected)
    assert FABConfig(lr=3e-4).lr_at(10 ** 6) == 3e-4      # constant by default


# ------------------------------------------------------------------------------ config errors
@pytest.mark.parametrize("field, value, words", [
    ("buffer_sampling", "bogus", "allowed: no_replacement, with_replacement, per_step"),
    ("buffer_adjust", "later", "allowed: before_step, after_step"),
    ("transition", "mala", "allowed: hmc, metropolis"),
    ("dtype", "float16", "allowed: float32, float64"),
    ("lr_schedule", "cosine", "allowed: constant, warmup_cosine"),
    ("metropolis_step", 0.0, "metropolis_step"),
    ("n_metropolis", 0, "n_metropolis"),
    ("metropolis_adapt", "yes", "metropolis_adapt"),
])
def test_bad_option_names_the_field_and_the_allowed_values(field, value, words):
    with pytest.raises(ValueError, match=field) as err:
        FABConfig(**{field: value}).validate()
    assert words in str(err.value)


def test_no_replacement_needs_a_round_of_distinct_points_and_the_schedule_a_length():
    with pytest.raises(ValueError, match=r"^buffer_min: got 256; .* must be >= 512"):
        FABConfig(buffer_min=256).validate()
    FABConfig(buffer_min=256, buffer_sampling="with_replacement").validate()
    with pytest.raises(ValueError, match="^lr_decay_steps: got None with max_iters None"):
        FABConfig(lr_schedule="warmup_cosine").validate()
    with pytest.raises(ValueError, match="^lr_decay_steps: got 240"):
        FABConfig(lr_schedule="warmup_cosine", max_iters=240).validate()
