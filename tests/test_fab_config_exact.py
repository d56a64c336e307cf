"""FABConfig (samplers/fab_config.py) field by field, and FAB's buffer loss against its closed form.

mutmut showed that most of ``FABConfig.validate`` could name the wrong field, accept a bad value
or move a bound without a test noticing (docs/testing.md). Here every field gets a value just
outside what is allowed and the whole message is written out in the test (field, what arrived,
what is allowed), values on the boundaries are accepted, and the warm-up/cosine length is checked
to come from ``lr_decay_steps`` before ``max_iters``. The loss is compared with
-mean(min(q_old/q, 10) log q) computed in float64 by hand, its gradient with -w/n.
"""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from samplers.fab_config import FABConfig, buffer_loss, warmup_cosine_lr

POS = "a finite number > 0"
OPT = " (or None for the default)"
INT = "a positive integer"

# (field, bad value, the message after "<field>: got <value!r>; ")
BAD = [
    ("n_aug_samples", 0, f"expected {INT}"),
    ("egnn_blocks", 0, f"expected {INT}"),
    ("egnn_features", 1.5, f"expected {INT}"),
    ("aug_scale", 0.0, f"expected {POS}"),
    ("sigma", -1.0, f"expected {POS}{OPT}"),
    ("w_adjust_clip", 0.0, f"expected {POS}{OPT}"),
    ("n_layers", 0, f"expected {INT}"),
    ("hidden", True, f"expected {INT}"),
    ("batch_size", 0, f"expected {INT}"),
    ("n_updates_per_ais", 0, f"expected {INT}"),
    ("n_intermediate", 0, f"expected {INT}"),
    ("n_leapfrog", 0, f"expected {INT}"),
    ("sample_batch", 0, f"expected {INT}"),
    ("lr", 0.0, f"expected {POS}"),
    ("max_grad_norm", -1.0, f"expected {POS}{OPT}"),
    ("step_size", float("inf"), f"expected {POS}"),
    ("target_accept", 1.0, "expected a number in (0, 1)"),
    ("target_accept", 0.0, "expected a number in (0, 1)"),
    ("max_iters", -1, f"expected an integer >= 0{OPT}"),
    ("device", "meta", "allowed: cpu, or cuda on a machine with a GPU"),
    ("buffer_sampling", "fifo", "allowed: no_replacement, with_replacement, per_step"),
    ("buffer_adjust", "never", "allowed: before_step, after_step"),
    ("transition", "mala", "allowed: hmc, metropolis"),
    ("n_metropolis", 0, f"expected {INT}"),
    ("metropolis_step", 0.0, f"expected {POS}"),
    ("metropolis_adapt", 1, "expected true or false"),
    ("dtype", "float16", "allowed: float32, float64"),
    ("lr_schedule", "cosine", "allowed: constant, warmup_cosine"),
    ("lr_init", 0.0, f"expected {POS}"),
    ("lr_end", -1e-5, f"expected {POS}"),
    ("lr_warmup_steps", -1, "expected an integer >= 0"),
    ("lr_decay_steps", 0, f"expected {INT}{OPT}"),
]


@pytest.mark.parametrize("field, value, allowed", BAD, ids=[f"{f}={v!r}" for f, v, _ in BAD])
def test_each_field_is_refused_with_its_name_the_value_and_what_is_allowed(field, value, allowed):
    cfg = dataclasses.replace(FABConfig(), **{field: value})
    with pytest.raises(ValueError) as err:
        cfg.validate()
    assert str(err.value) == f"{field}: got {value!r}; {allowed}"


def test_values_on_the_boundaries_and_the_optional_nones_are_accepted():
    FABConfig(sigma=None, w_adjust_clip=None, max_grad_norm=None, max_iters=None,
              lr_decay_steps=None).validate()
    FABConfig(max_iters=0, lr_warmup_steps=0, target_accept=0.999, buffer_min=12800,
              buffer_size=12800).validate()


def test_buffer_min_above_buffer_size_names_both():
    with pytest.raises(ValueError) as err:
        FABConfig(buffer_min=12801, buffer_size=12800).validate()
    assert str(err.value) == "buffer_min: got 12801; expected <= buffer_size=12800"


def test_warmup_cosine_without_a_length_says_so():
    with pytest.raises(ValueError) as err:
        FABConfig(lr_schedule="warmup_cosine", max_iters=None, lr_decay_steps=None).validate()
    assert str(err.value) == ("lr_decay_steps: got None with max_iters None; "
                              "lr_schedule=warmup_cosine needs the schedule's length")


def test_the_schedule_length_is_lr_decay_steps_before_max_iters():
    # decay over 100 steps although max_iters is 50 < warm-up 60: valid, and step 100 is lr_end
    cfg = FABConfig(lr_schedule="warmup_cosine", lr=2e-4, lr_init=2e-5, lr_end=1e-6,
                    lr_warmup_steps=60, lr_decay_steps=100, max_iters=50)
    cfg.validate()
    half = 1e-6 + (2e-4 - 1e-6) * 0.5 * (1 + math.cos(math.pi * 0.5))  # midway through the decay
    assert cfg.lr_at(80) == pytest.approx(half, rel=1e-12)
    assert cfg.lr_at(100) == pytest.approx(1e-6, rel=1e-12)
    assert cfg.lr_at(30) == pytest.approx(2e-5 + (2e-4 - 2e-5) * 30 / 60, rel=1e-12)
    # without lr_decay_steps the length is max_iters
    by_iters = dataclasses.replace(cfg, lr_decay_steps=None, max_iters=140)
    assert by_iters.lr_at(100) == pytest.approx(1e-6 + (2e-4 - 1e-6) * 0.5, rel=1e-12)
    assert FABConfig(lr=3e-4).lr_at(10 ** 6) == 3e-4  # constant


def test_warmup_reaches_the_peak_at_the_end_of_the_warm_up():
    assert warmup_cosine_lr(60, 2e-5, 2e-4, 1e-6, 60, 100) == pytest.approx(2e-4, rel=1e-15)
    assert warmup_cosine_lr(0, 2e-5, 2e-4, 1e-6, 60, 100) == 2e-5
    assert warmup_cosine_lr(500, 2e-5, 2e-4, 1e-6, 60, 100) == pytest.approx(1e-6, rel=1e-12)


def test_buffer_loss_defaults_are_alpha_2_and_fab_torch_clip_10():
    log_q = torch.tensor([-1.0, -2.0, -0.5, -3.0], dtype=torch.float64, requires_grad=True)
    # q_old / q = 0.5, 2, 10.5 (above the clip), 30 (above the clip of 11 as well)
    ratio = torch.tensor([0.5, 2.0, 10.5, 30.0], dtype=torch.float64)
    log_q_old = log_q.detach() + ratio.log()
    loss = buffer_loss(log_q, log_q_old)
    w = [0.5, 2.0, 10.0, 10.0]
    q = [-1.0, -2.0, -0.5, -3.0]
    assert float(loss.detach()) == pytest.approx(-sum(a * b for a, b in zip(w, q)) / 4, rel=1e-12)
    loss.backward()
    assert log_q.grad.tolist() == pytest.approx([-a / 4 for a in w], rel=1e-12)
    # alpha = 3 squares the ratio; clip None keeps it
    free = buffer_loss(log_q.detach(), log_q_old, alpha=3.0, clip=None)
    assert float(free) == pytest.approx(-sum(r * r * b for r, b in zip(ratio.tolist(), q)) / 4,
                                        rel=1e-12)
