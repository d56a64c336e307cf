"""FAB's small pieces against hand-made expectations: the buffer's FIFO append, its draws' argument
checks and generator use (the same seed gives the same draws whatever the global RNG does), the
re-weighting for any alpha recounted by hand, the Metropolis step's rejection of non-finite ratios,
the intermediate density's end points, and the sampler's argument errors and state round trips
(a continued fit equals one longer fit; a state loaded after fit restores the flow).

Independent of the code: expected rows and values are written out here (FIFO order, (1 - α)(new -
old) sums), the laws of the draws are checked in tests/test_fab_options.py."""
import math

import pytest
import torch

import targets
from samplers import fab_ais, fab_buffer
from samplers.base import Budget
from samplers.fab import FAB, FABConfig


# ------------------------------------------------------------------------------ buffer
def test_append_keeps_the_last_size_rows_in_order():
    old = (torch.arange(5.0)[:, None], torch.arange(5.0), 10 + torch.arange(5.0))
    new = (torch.arange(5.0, 8.0)[:, None], torch.arange(5.0, 8.0), 10 + torch.arange(5.0, 8.0))
    u, w, q = fab_buffer.append(old, new, 6)
    assert u[:, 0].tolist() == [2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    assert w.tolist() == [2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    assert q.tolist() == [12.0, 13.0, 14.0, 15.0, 16.0, 17.0]
    assert [t.shape[0] for t in fab_buffer.append(old, new, 100)] == [8, 8, 8]


def test_gumbel_top_k_refuses_more_draws_than_points_and_takes_all_when_equal():
    with pytest.raises(ValueError, match=r"^gumbel_top_k: k=4 distinct draws from 3 points$"):
        fab_buffer.gumbel_top_k(torch.zeros(3), 4, torch.Generator().manual_seed(0))
    idx = fab_buffer.gumbel_top_k(torch.tensor([0.0, -1.0, 2.0]), 3,
                                  torch.Generator().manual_seed(0))
    assert sorted(idx.tolist()) == [0, 1, 2] and idx.dtype == torch.long


def test_gumbel_top_k_never_takes_a_zero_weight_point_and_shuffles_its_picks():
    log_w = torch.tensor([0.0, -math.inf, 0.0, 0.0, -math.inf, 0.0])
    g = torch.Generator().manual_seed(1)
    firsts = set()
    for _ in range(200):
        idx = fab_buffer.gumbel_top_k(log_w, 4, g)
        assert sorted(idx.tolist()) == [0, 2, 3, 5]
        firsts.add(int(idx[0]))
    assert firsts == {0, 2, 3, 5}     # every pick leads some round: the order is random


def test_a_rounds_batches_are_exchangeable():
    """All 4 points drawn in 4 batches of 1: the heavy point is in each batch with chance 1/4
    (torch.topk alone leaves it mostly second: the picks must be shuffled)."""
    log_w, g, rounds = torch.tensor([0.0, 0.0, 0.0, 3.0]), torch.Generator().manual_seed(0), 1200
    where = [int(torch.cat(fab_buffer.draw_round(log_w, 4, 1, "no_replacement", g)).tolist()
                 .index(3)) for _ in range(rounds)]
    counts = torch.bincount(torch.tensor(where), minlength=4).double()
    assert ((counts - rounds / 4).abs() < 4.5 * math.sqrt(rounds * 0.25 * 0.75)).all(), counts


@pytest.mark.parametrize("mode", ["no_replacement", "with_replacement"])
def test_draws_depend_on_the_generator_only(mode):
    log_w = torch.linspace(-2.0, 1.0, 50)
    out = []
    for global_seed in (0, 1):
        torch.manual_seed(global_seed)
        out.append(torch.cat(fab_buffer.draw_round(log_w, 3, 5, mode,
                                                   torch.Generator().manual_seed(7))))
    assert torch.equal(out[0], out[1]) and out[0].shape == (15,)
    torch.manual_seed(0)
    a = fab_buffer.categorical(log_w, 20, torch.Generator().manual_seed(2))
    torch.manual_seed(1)
    assert torch.equal(a, fab_buffer.categorical(log_w, 20, torch.Generator().manual_seed(2)))


def test_categorical_follows_float64_softmax_of_extreme_log_weights():
    # float32 softmax of these would still work; the point is weights far below exp(-100)
    log_w = torch.tensor([-1000.0, -1000.0 + math.log(3.0), -math.inf])
    idx = fab_buffer.categorical(log_w, 8000, torch.Generator().manual_seed(0))
    frac = (idx == 1).double().mean().item()
    assert abs(frac - 0.75) < 4 * math.sqrt(0.75 * 0.25 / 8000) and not (idx == 2).any()


def test_draw_round_names_the_allowed_modes():
    with pytest.raises(ValueError, match=r"^draw_round: mode 'per_step'; allowed: "
                                         r"no_replacement, with_replacement$"):
        fab_buffer.draw_round(torch.zeros(10), 1, 2, "per_step", torch.Generator())
    batches = fab_buffer.draw_round(torch.zeros(10), 3, 2, "with_replacement", torch.Generator())
    assert [b.tolist() != [] and b.shape == (2,) for b in batches] == [True] * 3


def test_reweight_for_other_alphas_and_non_finite_old_values():
    log_w = torch.tensor([0.5, 1.0, 2.0, -1.0], dtype=torch.float64)
    old = torch.tensor([-3.0, -math.inf, -1.0, 0.0], dtype=torch.float64)
    new = torch.tensor([-2.0, -1.0, -math.inf, 1.5], dtype=torch.float64)
    w, q = fab_buffer.reweight(log_w, old, new, alpha=3.0)
    # (1 - 3)(new - old): 0.5 - 2 = -1.5; old -inf: adjust -inf; new -inf: invalid; -1 - 3 = -4
    assert w.tolist() == [-1.5, -math.inf, -math.inf, -4.0]
    assert q.tolist() == [-2.0, -math.inf, -1.0, 1.5]     # invalid points keep their old log q
    w1, _ = fab_buffer.reweight(log_w, old[[0, 2, 3, 3]], new[[0, 0, 0, 3]], alpha=1.5)
    assert w1.tolist() == [0.0, 1.5, 3.0, -1.75]
    w2, _ = fab_buffer.reweight(log_w[:1], old[:1], new[:1])      # alpha = 2 by default
    assert w2.tolist() == [-0.5]


# ------------------------------------------------------------------------------ Metropolis
def test_log_intermediate_end_points_and_middle():
    lp, lq = torch.tensor([-1.0, 2.0]), torch.tensor([0.5, -4.0])
    assert torch.equal(fab_ais.log_intermediate(lp, lq, 0.0), lq)
    assert torch.equal(fab_ais.log_intermediate(lp, lq, 0.5), lp)        # p^1 q^0
    assert fab_ais.log_intermediate(lp, lq, 1.0).tolist() == [-2.5, 8.0]  # p^2 / q


@pytest.mark.parametrize("bad", [-math.inf, math.nan, math.inf])
def test_metropolis_rejects_proposals_whose_ratio_is_not_finite(bad):
    """log p̃ = bad at every proposal (-inf: zero density; NaN; +inf: an overflow) is rejected;
    the step's mean acceptance probability counts those as 0."""
    u = torch.zeros(50, 2, dtype=torch.float64)
    lp, lq = torch.zeros(50, dtype=torch.float64), torch.zeros(50, dtype=torch.float64)

    def log_p_and_q(y):
        return torch.full((len(y),), bad, dtype=y.dtype), torch.zeros(len(y), dtype=y.dtype)

    out = fab_ais.metropolis_transition(u, lp, lq, 0.4, log_p_and_q, [1.0, 1.0],
                                        torch.Generator().manual_seed(0))
    assert torch.equal(out[0], u) and torch.equal(out[1], lp) and torch.equal(out[2], lq)
    assert out[3] == [0.0, 0.0] and out[4] == [0.0, 0.0]


def test_metropolis_with_a_flat_ratio_accepts_every_proposal():
    u = torch.zeros(20, 3, dtype=torch.float64)
    zero = torch.zeros(20, dtype=torch.float64)
    out = fab_ais.metropolis_transition(u, zero, zero, 0.3, lambda y: (zero, zero), [0.5],
                                        torch.Generator().manual_seed(0))
    xi = torch.randn(20, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.equal(out[0], 0.5 * xi) and out[3] == [1.0] and out[4] == [1.0]


# ------------------------------------------------------------------------------ sampler API
TINY = dict(n_layers=2, hidden=8, batch_size=16, buffer_min=48, buffer_size=64, n_leapfrog=2,
            n_updates_per_ais=3)


def test_argument_errors_say_what_arrived():
    with pytest.raises(TypeError, match=r"^fab: config must be a FABConfig, got dict$"):
        FAB({"lr": 1.0})
    s = FAB(FABConfig(**TINY))
    with pytest.raises(TypeError, match=r"^fab.fit: budget must be a Budget, got int$"):
        s.fit(targets.get("gmm40"), 5, torch.Generator())
    with pytest.raises(TypeError, match=r"^fab.fit: generator must be a torch.Generator, got int$"):
        s.fit(targets.get("gmm40"), Budget(max_steps=1), 0)
    with pytest.raises(RuntimeError, match=r"^fab: call fit\(target, budget, generator\) before "
                                           r"sampling$"):
        s.sample(4, torch.Generator())
    with pytest.raises(RuntimeError, match=r"^fab: call fit\(target, budget, generator\) before "
                                           r"log_prob$"):
        s.log_prob(torch.zeros(3, 2))
    with pytest.raises(RuntimeError, match=r"^fab.state_dict: call fit first$"):
        s.state_dict()
    s.fit(targets.get("gmm40"), Budget(max_steps=1), torch.Generator().manual_seed(0))
    for n in (0, 2.0):
        with pytest.raises(ValueError, match=rf"^fab: n must be a positive int, got {n!r}$"):
            s.sample(n, torch.Generator())
    with pytest.raises(ValueError,
                       match=r"^fab.log_prob: x must have shape \[n, 2\], got \(3, 4\)$"):
        s.log_prob(torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"^fab.log_prob: x must have shape \[n, 2\], got \(2,\)$"):
        s.log_prob(torch.zeros(2))
    with pytest.raises(ValueError, match=r"^fab.load_state_dict: the state is of flow 'realnvp', "
                                         r"not 'se3_aug'$"):
        FAB(FABConfig(flow="se3_aug")).load_state_dict(s.state_dict())


def test_a_state_of_another_target_or_sigma_is_refused_at_fit():
    s = FAB(FABConfig(**TINY))
    s.fit(targets.get("dw4"), Budget(max_steps=1), torch.Generator().manual_seed(0))
    state = s.state_dict()
    for target, sigma, words in [("gmm40", None, "'gmm40', 40.0"), ("dw4", 2.5, "'dw4', 2.5")]:
        t = FAB(FABConfig(**TINY, sigma=sigma))
        t.load_state_dict(state)
        with pytest.raises(ValueError, match=rf"^fab.fit: the loaded state is of target 'dw4', "
                                             rf"sigma 2.0; this fit is {words}$"):
            t.fit(targets.get(target), Budget(max_steps=1), torch.Generator().manual_seed(0))


def _fit(cfg, target, max_iters, state=None, seed=0):
    s = FAB(FABConfig(**{**cfg, "max_iters": max_iters}))
    if state is not None:
        s.load_state_dict(state)
    info = s.fit(target, Budget(max_energy_evals=10 ** 6), torch.Generator().manual_seed(seed))
    return s, info


@pytest.mark.parametrize("transition", ["hmc", "metropolis"])
def test_a_continued_fit_is_one_longer_fit(transition):
    cfg = {**TINY, "transition": transition, "metropolis_adapt": True, "metropolis_step": 3.0,
           "lr": 1e-2}
    t = targets.get("dw4")
    whole, info_whole = _fit(cfg, t, 9)
    first, _ = _fit(cfg, t, 3)
    rest, info_rest = _fit(cfg, t, 9, first.state_dict(), seed=5)   # the seed is overwritten
    for p, q in zip(whole.flow.parameters(), rest.flow.parameters()):
        assert torch.equal(p, q)
    for a, b in zip(whole.state_dict()["buffer"], rest.state_dict()["buffer"]):
        assert torch.equal(a, b)
    for key in ("steps", "ais_rounds", "hmc_step_sizes", "metropolis_steps", "ais_accept",
                "train_loss", "buffer"):
        assert info_rest[key] == info_whole[key], key
    assert rest.state_dict()["opt"]["state"][0]["step"] == 9
    # the loaded state is used once: fitting the same instance again starts afresh
    rest.fit(t, Budget(max_energy_evals=10 ** 6), torch.Generator().manual_seed(0))
    for p, q in zip(whole.flow.parameters(), rest.flow.parameters()):
        assert torch.equal(p, q)


def test_a_state_loaded_after_fit_restores_the_flow_and_its_log_q_draws():
    tiny_se3 = dict(flow="se3_aug", n_layers=1, hidden=8, egnn_blocks=1, egnn_features=8,
                    batch_size=16, buffer_min=32, buffer_size=64, n_leapfrog=1,
                    n_updates_per_ais=2, n_aug_samples=3)
    t = targets.get("dw4")
    a, _ = _fit(tiny_se3, t, 2, seed=0)
    b, _ = _fit(tiny_se3, t, 2, seed=1)
    x = a.sample(8, torch.Generator().manual_seed(3))
    assert not torch.equal(a.log_prob(x), b.log_prob(x))
    b.load_state_dict(a.state_dict())
    assert torch.equal(b.sample(8, torch.Generator().manual_seed(3)), x)
    assert torch.equal(b.log_prob(x), a.log_prob(x))    # the same flow and the same draws of a


def test_an_se3_continued_fit_keeps_the_log_q_draws_of_one_longer_fit():
    tiny_se3 = dict(flow="se3_aug", n_layers=1, hidden=8, egnn_blocks=1, egnn_features=8,
                    batch_size=16, buffer_min=32, buffer_size=64, n_leapfrog=1,
                    n_updates_per_ais=2, n_aug_samples=3)
    t = targets.get("dw4")
    whole, _ = _fit(tiny_se3, t, 4)
    first, _ = _fit(tiny_se3, t, 2)
    rest, _ = _fit(tiny_se3, t, 4, first.state_dict(), seed=9)
    x = whole.sample(6, torch.Generator().manual_seed(2))
    assert torch.equal(rest.sample(6, torch.Generator().manual_seed(2)), x)
    assert torch.equal(rest.log_prob(x), whole.log_prob(x))


def test_a_state_without_metropolis_steps_continues_from_the_initial_ones():
    """States saved before the Metropolis option lack ``rw_steps``: the fit keeps its own."""
    cfg = {**TINY, "transition": "metropolis", "metropolis_step": 2.5, "n_metropolis": 2}
    t = targets.get("dw4")
    first, _ = _fit(cfg, t, 3)
    state = first.state_dict()
    del state["rw_steps"]
    _, info = _fit(cfg, t, 6, state)
    assert info["steps"] == 6 and info["metropolis_steps"] == [[2.5, 2.5], [2.5, 2.5]]


def test_a_float64_state_continues_in_a_float32_fit():
    t = targets.get("dw4")
    first, _ = _fit({**TINY, "dtype": "float64"}, t, 3)
    rest, info = _fit(TINY, t, 6, first.state_dict())
    assert info["steps"] == 6
    assert all(b.dtype == torch.float32 for b in rest.state_dict()["buffer"])
