"""Packed-sequence loader: deterministic order, exact resume from its state, disjoint DDP rank slices, held-out windows."""

import numpy as np
import pytest
import torch

from lmforge.data.loader import HeldOutWindows, PackedLoader, TokenStream
from lmforge.data.shards import ShardSet, ShardWriter


@pytest.fixture
def ramp_shards(tmp_path):
    # token value = position % 60000, so every window can be checked against its index
    writer = ShardWriter(tmp_path / "s", dtype="uint16", shard_tokens=1000)  # windows straddle files
    writer.add("train", (np.arange(10_001) % 60_000).astype(np.uint16))
    writer.add("val", np.arange(500, dtype=np.uint16))
    writer.close({"eos_id": 0})
    return ShardSet(tmp_path / "s")


def _starts(batch, seq_len):
    ids = batch["input_ids"]
    return [int(row[0]) // seq_len for row in ids]


def test_windows_are_contiguous_and_shifted_across_shard_boundaries(ramp_shards):
    loader = PackedLoader(ramp_shards, seq_len=100, batch_size=4, seed=0)
    assert loader.num_windows == 100  # (10001 - 1) // 100
    batch = next(loader)
    x, y = batch["input_ids"], batch["labels"]
    assert x.dtype == torch.long and x.shape == (4, 100)
    assert torch.equal(y[:, :-1], x[:, 1:])
    assert torch.equal(x[:, 1:] - x[:, :-1], torch.ones(4, 99, dtype=torch.long))  # contiguous, even over file edges
    assert all(int(row[0]) % 100 == 0 for row in x)
    stream = TokenStream(ramp_shards, "train")
    out = np.empty(50, dtype=np.int64)
    stream.read(975, 50, out)
    assert out.tolist() == list(range(975, 1025))


def test_epoch_visits_every_window_once_and_order_is_seeded(ramp_shards):
    a = PackedLoader(ramp_shards, seq_len=100, batch_size=5, seed=3)
    seen = [w for _ in range(a.batches_per_epoch) for w in _starts(next(a), 100)]
    assert sorted(seen) == list(range(100))
    b = PackedLoader(ramp_shards, seq_len=100, batch_size=5, seed=3)
    assert seen == [w for _ in range(20) for w in _starts(next(b), 100)]
    c = PackedLoader(ramp_shards, seq_len=100, batch_size=5, seed=4)
    assert seen != [w for _ in range(20) for w in _starts(next(c), 100)]
    # the next epoch is a different permutation of the same windows
    epoch2 = [w for _ in range(20) for w in _starts(next(a), 100)]
    assert a.epoch == 1 and sorted(epoch2) == list(range(100)) and epoch2 != seen


def test_state_dict_resumes_exactly_even_across_epochs(ramp_shards):
    ref = PackedLoader(ramp_shards, seq_len=64, batch_size=6, seed=1)
    expected = [next(ref)["input_ids"] for _ in range(60)]  # 60 > batches_per_epoch (26)
    first = PackedLoader(ramp_shards, seq_len=64, batch_size=6, seed=1)
    for _ in range(37):
        next(first)
    state = first.state_dict()
    resumed = PackedLoader(ramp_shards, seq_len=64, batch_size=6, seed=1)
    resumed.load_state_dict(state)
    for i in range(37, 60):
        assert torch.equal(next(resumed)["input_ids"], expected[i])


def test_state_from_other_data_is_refused(ramp_shards):
    state = PackedLoader(ramp_shards, seq_len=64, batch_size=2, seed=1).state_dict()
    with pytest.raises(ValueError, match="seq_len"):
        PackedLoader(ramp_shards, seq_len=32, batch_size=2, seed=1).load_state_dict(state)


def test_ranks_take_disjoint_slices_of_the_single_process_batch(ramp_shards):
    single = PackedLoader(ramp_shards, seq_len=100, batch_size=4, seed=7)
    ranks = [PackedLoader(ramp_shards, seq_len=100, batch_size=2, seed=7, rank=r, world_size=2) for r in range(2)]
    for _ in range(30):  # beyond one epoch (25 global batches)
        whole = _starts(next(single), 100)
        parts = [_starts(next(loader), 100) for loader in ranks]
        assert not set(parts[0]) & set(parts[1])
        assert parts[0] + parts[1] == whole
    # and the position is world-size independent: a 2-rank state resumes a 1-rank loader
    one = PackedLoader(ramp_shards, seq_len=100, batch_size=4, seed=7)
    one.load_state_dict(ranks[0].state_dict())
    assert _starts(next(one), 100) == _starts(next(single), 100)


def test_too_little_data_is_a_clear_error(ramp_shards):
    with pytest.raises(ValueError, match="fewer than one global micro-batch"):
        PackedLoader(ramp_shards, seq_len=5000, batch_size=4)


def test_held_out_windows_are_the_first_n_in_order_and_split_over_ranks(ramp_shards):
    held = HeldOutWindows(ramp_shards, seq_len=50, batch_size=3, max_windows=7)
    starts = [int(row[0]) for b in held for row in b["input_ids"]]
    assert starts == [0, 50, 100, 150, 200, 250, 300]
    assert held.num_tokens == 350 and len(held) == 3
    assert [int(r[0]) for b in held for r in b["input_ids"]] == starts  # re-iterable, same every time
    r0 = [int(row[0]) for b in HeldOutWindows(ramp_shards, 50, 3, 7, rank=0, world_size=2) for row in b["input_ids"]]
    r1 = [int(row[0]) for b in HeldOutWindows(ramp_shards, 50, 3, 7, rank=1, world_size=2) for row in b["input_ids"]]
    assert sorted(r0 + r1) == starts and not set(r0) & set(r1)
    # capped by what the split holds: 499 // 50 = 9 windows
    assert HeldOutWindows(ramp_shards, 50, 3, 1000).num_windows == 9
