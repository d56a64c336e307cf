"""samplers/dem/buffer.py against a model written here: a Python list of the rows ever added,
whose last ``capacity`` are the buffer (official SimpleBuffer: FIFO, uniform with replacement,
reference-idem.md §4.5). Sampling is replayed with the caller's generator on that list."""
from __future__ import annotations

import pytest
import torch

from samplers.dem.buffer import ReplayBuffer


class ListModel:
    """The buffer's contents as a list: everything ever added, oldest first."""

    def __init__(self, capacity):
        self.rows, self.capacity = [], capacity

    def add(self, x):
        self.rows.extend(x.tolist())

    def kept(self):
        return self.rows[-self.capacity:]


def _rows(start, n, dim=2):
    """n distinct rows [n, dim]: row k holds (start + k, -(start + k))."""
    v = torch.arange(start, start + n, dtype=torch.float64)
    return torch.stack([v, -v] + [v * 0 + j for j in range(dim - 2)], 1)


def test_defaults_are_the_official_sizes_and_storage():
    buf = ReplayBuffer(3)
    assert (buf.capacity, buf.min_size) == (10_000, 1_000)
    assert buf.x.shape == (10_000, 3) and buf.x.dtype == torch.float32
    assert buf.x.device.type == "cpu" and not buf.x.any()
    assert (len(buf), buf.ptr, buf.n_added, buf.can_sample) == (0, 0, 0, False)
    assert ReplayBuffer(2, 5, 0, dtype=torch.float64).x.dtype == torch.float64


@pytest.mark.parametrize("capacity,min_size", [(0, 0), (-1, 0), (5, 6), (5, -1)])
def test_constructor_refuses_bad_sizes_with_the_values(capacity, min_size):
    with pytest.raises(ValueError) as err:
        ReplayBuffer(2, capacity, min_size)
    assert str(err.value) == ("ReplayBuffer: need capacity >= 1 and 0 <= min_size <= capacity, "
                              f"got capacity={capacity}, min_size={min_size}")


@pytest.mark.parametrize("capacity,min_size", [(1, 0), (1, 1), (5, 5), (5, 0)])
def test_constructor_accepts_the_boundaries(capacity, min_size):
    buf = ReplayBuffer(2, capacity, min_size)
    assert (buf.capacity, buf.min_size) == (capacity, min_size)
    assert type(buf.capacity) is int and type(buf.min_size) is int


@pytest.mark.parametrize("chunks", [[3, 4, 2, 6], [7], [9], [10], [1] * 12, [2, 11, 0, 5]])
def test_contents_last_and_counters_follow_the_fifo_model(chunks):
    cap = 7
    buf, model, start = ReplayBuffer(2, cap, 1, dtype=torch.float64), ListModel(cap), 0
    counted = 0
    for n in chunks:
        x = _rows(start, n)
        buf.add(x)
        model.add(x)
        start += n
        counted += min(n, cap)  # an add beyond capacity counts what it kept (>= min_size anyway)
        kept = model.kept()
        assert len(buf) == len(kept) and buf.n_added == counted
        assert sorted(buf.x[:len(buf)].tolist()) == sorted(kept)
        for k in (0, 1, 3, cap, cap + 5):
            want = kept[len(kept) - min(k, len(kept)):]
            assert buf.last(k).tolist() == want, (chunks, k)


def test_an_add_larger_than_capacity_keeps_the_newest_in_order():
    buf = ReplayBuffer(2, 4, 0)
    buf.add(_rows(0, 2))
    buf.add(_rows(100, 9))
    assert buf.last(4)[:, 0].tolist() == [105.0, 106.0, 107.0, 108.0]
    assert (len(buf), buf.n_added) == (4, 6)
    buf.add(_rows(200, 1))           # the next write replaces the oldest, 105
    assert buf.last(4)[:, 0].tolist() == [106.0, 107.0, 108.0, 200.0]


def test_add_refuses_the_wrong_shape_and_casts_to_the_storage_dtype():
    buf = ReplayBuffer(3, 4, 0)
    for bad in (torch.zeros(2, 2), torch.zeros(3), torch.zeros(1, 2, 3)):
        with pytest.raises(ValueError) as err:
            buf.add(bad)
        assert str(err.value) == f"ReplayBuffer.add: x must be [n, 3], got {tuple(bad.shape)}"
    buf.add(torch.full((1, 3), 1 / 3, dtype=torch.float64))
    assert buf.x.dtype == torch.float32 and buf.last(1).dtype == torch.float32
    assert buf.last(1)[0, 0].item() == torch.tensor(1 / 3, dtype=torch.float32).item()


def test_can_sample_needs_min_size_ever_added_and_one_entry():
    buf = ReplayBuffer(1, 3, 2)
    buf.add(torch.zeros(1, 1))
    assert not buf.can_sample
    with pytest.raises(RuntimeError) as err:
        buf.sample(1, torch.Generator())
    assert str(err.value) == ("ReplayBuffer.sample: 1 entries added, need at least min_size=2 "
                              "before sampling")
    buf.add(torch.zeros(1, 1))
    assert buf.can_sample                 # exactly min_size added
    empty = ReplayBuffer(1, 3, 0)
    assert not empty.can_sample           # min_size 0 but nothing to draw
    empty.add(torch.zeros(1, 1))
    assert empty.can_sample


def test_sample_replays_the_callers_generator_on_the_kept_rows():
    cap = 6
    buf, model = ReplayBuffer(2, cap, 3, dtype=torch.float64), ListModel(cap)
    for start, n in ((0, 4), (4, 5)):           # wrapped: storage order differs from age order
        buf.add(_rows(start, n))
        model.add(_rows(start, n))
    g = torch.Generator().manual_seed(3)
    got = buf.sample(500, g)
    assert got.shape == (500, 2) and got.dtype == torch.float64
    # the same draw from a replayed generator, taken on the buffer's storage slots
    idx = torch.randint(cap, (500,), generator=torch.Generator().manual_seed(3))
    assert got.tolist() == buf.x[idx].tolist()
    assert set(map(tuple, got.tolist())) == set(map(tuple, model.kept()))  # all 6, no evicted ones
    after = torch.randint(10**6, (4,), generator=g)  # the caller's generator advanced by that draw
    ref = torch.Generator().manual_seed(3)
    torch.randint(cap, (500,), generator=ref)
    assert torch.equal(after, torch.randint(10**6, (4,), generator=ref))


def test_sample_draws_only_filled_slots_while_not_full():
    buf = ReplayBuffer(1, 100, 1)
    buf.add(torch.arange(1.0, 4.0)[:, None])
    got = buf.sample(2000, torch.Generator().manual_seed(0))[:, 0]
    counts = torch.bincount(got.long(), minlength=4)
    assert counts[0] == 0 and (counts[1:] > 550).all()   # 3 slots, ~667 each; empty zeros never


def test_state_dict_round_trip_before_and_after_wrapping():
    for n in (3, 11):
        buf = ReplayBuffer(2, 5, 2)
        buf.add(_rows(0, n))
        state = buf.state_dict()
        assert set(state) == {"x", "ptr", "size", "n_added"}
        assert (state["ptr"], state["size"], state["n_added"]) == (buf.ptr, min(n, 5), min(n, 5))
        assert state["x"].shape == (min(n, 5), 2) and state["x"].device.type == "cpu"
        fresh = ReplayBuffer(2, 5, 2)
        fresh.load_state_dict(state)
        assert (fresh.ptr, len(fresh), fresh.n_added) == (buf.ptr, len(buf), buf.n_added)
        assert torch.equal(fresh.last(5), buf.last(5))
        assert torch.equal(fresh.sample(50, torch.Generator().manual_seed(1)),
                           buf.sample(50, torch.Generator().manual_seed(1)))
        fresh.add(_rows(50, 1))
        buf.add(_rows(50, 1))
        assert torch.equal(fresh.last(5), buf.last(5))
