"""FAB's training loop replayed step by step against a transcription of the paper's Algorithm 2
with fab-torch's prioritised buffer (Midgley et al. 2023; fab/train_with_prioritised_buffer.py).

Recorders wrap ``FAB._ais`` (its samples and log-weights; tests/test_fab_ais_exact.py checks
those against their own transcription) and the buffer draws (``fab_buffer.draw_round`` and
``categorical``; tests/test_fab_options.py checks their laws). Everything else is redone here on a
copy of the initial flow with its own ``torch.optim.Adam``: the FIFO buffer (finite weights only,
log q under the flow current at insertion, the last ``buffer_size`` rows), training only once
``buffer_min`` points are stored, the loss -mean(min(q_old/q, clip) log q) written out (or -mean
log q uncorrected), the gradient-norm clip by hand (scale max/(‖g‖ + 1e-6) when above), the lr
of every step from the warm-up + cosine formula, and the re-weighting log w += -(log q_new -
log q_old) with log q_new before or after the step. Flow parameters, the stored buffer and the
reported loss and lr must agree.
"""
import copy
import math

import pytest
import torch

import samplers
from samplers import fab_buffer
from samplers.base import Budget
from samplers.fab import FABConfig
from test_fab_ais_exact import WallTarget


class Spy:
    def __init__(self, monkeypatch, sampler):
        self.ais, self.rounds, self.single, self.flow0 = [], [], [], None
        orig_ais, orig_round, orig_cat = sampler._ais, fab_buffer.draw_round, fab_buffer.categorical

        def ais(n, generator):
            if self.flow0 is None:
                self.flow0 = copy.deepcopy(sampler.flow)
            out = orig_ais(n, generator)
            self.ais.append(out)
            return out

        def draw_round(log_w, *args):
            out = orig_round(log_w, *args)
            self.rounds.append((log_w.clone(), args, out))
            return out

        def categorical(log_w, k, generator):
            out = orig_cat(log_w, k, generator)
            self.single.append((log_w.clone(), k, out))
            return out

        monkeypatch.setattr(sampler, "_ais", ais)
        monkeypatch.setattr(fab_buffer, "draw_round", draw_round)
        self.orig_categorical = orig_cat
        monkeypatch.setattr(fab_buffer, "categorical", categorical)


def lr_formula(step, cfg):
    if cfg.lr_schedule == "constant":
        return cfg.lr
    total = cfg.max_iters if cfg.lr_decay_steps is None else cfg.lr_decay_steps
    if step < cfg.lr_warmup_steps:
        return cfg.lr_init + (cfg.lr - cfg.lr_init) * step / cfg.lr_warmup_steps
    frac = min(step - cfg.lr_warmup_steps, total - cfg.lr_warmup_steps) \
        / (total - cfg.lr_warmup_steps)
    return cfg.lr_end + (cfg.lr - cfg.lr_end) * (1 + math.cos(math.pi * frac)) / 2


def replay(cfg, spy):
    flow = copy.deepcopy(spy.flow0)
    opt = torch.optim.Adam(flow.parameters(), lr=123.0)   # every step sets its own lr
    u_buf = torch.empty(0, 2, dtype=torch.float64)
    lw_buf = torch.empty(0, dtype=torch.float64)
    lq_buf = torch.empty(0, dtype=torch.float64)
    rounds, singles = iter(spy.rounds), iter(spy.single)
    steps, loss_v, lr_v, clipped, clipped_w = 0, None, None, 0, 0
    for u, log_w in spy.ais:
        keep = torch.isfinite(log_w)
        with torch.no_grad():
            lq = flow.log_prob(u[keep])
        u_buf = torch.cat([u_buf, u[keep]])[-cfg.buffer_size:]
        lw_buf = torch.cat([lw_buf, log_w[keep]])[-cfg.buffer_size:]
        lq_buf = torch.cat([lq_buf, lq])[-cfg.buffer_size:]
        if len(lw_buf) < cfg.buffer_min:
            continue
        if cfg.buffer_sampling != "per_step":
            lw_seen, args, batches = next(rounds)
            assert torch.allclose(lw_seen, lw_buf, rtol=1e-9, atol=1e-12)
            assert args[:3] == (cfg.n_updates_per_ais, cfg.batch_size, cfg.buffer_sampling)
        for j in range(cfg.n_updates_per_ais):
            if steps >= cfg.max_iters:
                break
            if cfg.buffer_sampling == "per_step":
                lw_seen, k, idx = next(singles)
                assert k == cfg.batch_size
                assert torch.allclose(lw_seen, lw_buf, rtol=1e-9, atol=1e-12)
            else:
                idx = batches[j]
            lr_v = lr_formula(steps, cfg)
            for group in opt.param_groups:
                group["lr"] = lr_v
            log_q = flow.log_prob(u_buf[idx])
            if cfg.buffer_correction:
                w_adj = torch.exp(lq_buf[idx] - log_q.detach())
                if cfg.w_adjust_clip is not None:
                    clipped_w += int((w_adj > cfg.w_adjust_clip).sum())
                    w_adj = w_adj.clamp(max=cfg.w_adjust_clip)
                loss = -(w_adj * log_q).mean()
            else:
                loss = -log_q.mean()
            opt.zero_grad()
            loss.backward()
            if cfg.max_grad_norm is not None:
                norm = math.sqrt(sum(float((p.grad ** 2).sum()) for p in flow.parameters()))
                if norm > cfg.max_grad_norm:
                    clipped += 1
                    for p in flow.parameters():
                        p.grad.mul_(cfg.max_grad_norm / (norm + 1e-6))
            opt.step()
            steps += 1
            with torch.no_grad():
                lq_new = log_q.detach() if cfg.buffer_adjust == "before_step" \
                    else flow.log_prob(u_buf[idx])
                lw_buf[idx] = lw_buf[idx] - (lq_new - lq_buf[idx])
                lq_buf[idx] = lq_new
            loss_v = float(loss.detach())
    return flow, (u_buf, lw_buf, lq_buf), steps, loss_v, lr_v, (clipped, clipped_w)


BASE = dict(sigma=1.7, n_layers=2, hidden=8, batch_size=32, n_updates_per_ais=3, buffer_min=96,
            buffer_size=128, n_intermediate=1, n_leapfrog=1, step_size=0.3, max_iters=7,
            dtype="float64", lr=3e-2)
CASES = {
    # fab-torch's defaults, the lr warm-up + cosine, both clips active
    "authors": dict(lr_schedule="warmup_cosine", lr_init=1e-3, lr_end=1e-4, lr_warmup_steps=2,
                    max_grad_norm=0.75, w_adjust_clip=1.1),
    # no energy wall: every AIS point is kept, the buffer holds exactly buffer_min after 2 rounds
    "with_replacement_after_step": dict(buffer_sampling="with_replacement",
                                        buffer_adjust="after_step", w_adjust_clip=None,
                                        max_grad_norm=None, buffer_min=64),
    "per_step_uncorrected": dict(buffer_sampling="per_step", buffer_correction=False,
                                 buffer_min=64, max_grad_norm=1.2),
}


@pytest.mark.parametrize("case", list(CASES))
def test_fit_matches_the_replayed_training_loop(case, monkeypatch):
    cfg = FABConfig(**{**BASE, **CASES[case]})
    s = samplers.get("fab")(cfg)
    spy = Spy(monkeypatch, s)
    target = WallTarget(math.inf if case == "with_replacement_after_step" else 2.5)
    info = s.fit(target, Budget(max_energy_evals=10 ** 6), torch.Generator().manual_seed(4))
    flow, buf, steps, loss_v, lr_v, clipped = replay(cfg, spy)
    assert info["steps"] == steps == cfg.max_iters and info["ais_rounds"] == len(spy.ais)
    if case == "with_replacement_after_step":   # training from the round that reached buffer_min
        assert len(spy.rounds) == 3 and len(spy.ais) == 4
    assert info["budget_binding"] == "none" and info["warnings"] == []
    for (name, p), q in zip(s.flow.named_parameters(), flow.parameters()):
        assert torch.allclose(p, q, rtol=1e-9, atol=1e-12), name
    assert any(not torch.equal(p, q) for p, q in zip(s.flow.parameters(),
                                                     spy.flow0.parameters()))
    for got, want in zip(s.state_dict()["buffer"], buf):
        assert torch.allclose(got, want, rtol=1e-9, atol=1e-12)
    assert info["buffer"] == len(buf[0]) and info["train_loss"] == pytest.approx(loss_v, rel=1e-9)
    assert info["train_lr"] == pytest.approx(lr_v, rel=1e-12)
    if cfg.max_grad_norm is not None:   # the clips acted on some steps (and were replayed)
        assert 0 < clipped[0] < steps
    if cfg.buffer_correction and cfg.w_adjust_clip is not None:
        assert clipped[1] > 0
    assert s.state_dict()["opt"]["param_groups"][0]["lr"] == pytest.approx(lr_v, rel=1e-12)
