"""Packed fixed-length training sequences drawn from token shards, in a resumable order.

The train split's shards are viewed as one long token stream (documents are already separated
by eos). Window ``i`` is tokens ``[i·seq_len, i·seq_len + seq_len + 1)``: ``seq_len`` inputs plus
the one extra token that gives the last input its label, so consecutive windows share exactly
one token and every token is predicted once per epoch. Windows may straddle shard files.

Order: each epoch visits every window once, in a permutation drawn from
``numpy.random.default_rng([seed, epoch])``; the incomplete global batch at an epoch's end is
dropped (it is at most ``batch_size · world_size - 1`` windows). A *global* micro-batch is the
next ``batch_size · world_size`` windows of the permutation; rank ``r`` takes the ``r``-th slice
of ``batch_size``. So a run on 2 ranks × batch 2 sees exactly the windows that 1 rank × batch 4
sees, and the position is one integer that survives a change of world size.

``state_dict()`` / ``load_state_dict()`` give exact resumption: the state is (epoch, position)
plus what must not change under it (seq_len, the number of windows, seed).

``HeldOutWindows`` is the evaluation counterpart: the first ``max_windows`` windows of the
``val`` split, in order (no shuffle), spread over ranks by ``index % world_size`` so that the
summed held-out loss does not depend on the number of ranks.

Usage::

    loader = PackedLoader(ShardSet("shards/"), seq_len=256, batch_size=8, seed=1)
    batch = next(loader)          # {"input_ids": LongTensor[8, 256], "labels": LongTensor[8, 256]}
    state = loader.state_dict()   # store it; later: loader.load_state_dict(state)
    held_out = HeldOutWindows(ShardSet("shards/"), seq_len=256, batch_size=8, max_windows=64)
    for batch in held_out: ...
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from lmforge.data.shards import ShardSet


class TokenStream:
    """The shards of one split as a single indexable token sequence (no copy; memory-mapped)."""

    def __init__(self, shards: ShardSet, split: str) -> None:
        self.arrays = shards.arrays(split)
        self.offsets = np.cumsum([0] + [len(a) for a in self.arrays])  # start of each array
        self.num_tokens = int(self.offsets[-1])

    def read(self, start: int, length: int, out: np.ndarray) -> None:
        """Copy tokens ``[start, start+length)`` into ``out`` (int64), across shard boundaries."""
        if start < 0 or start + length > self.num_tokens:
            raise IndexError(f"tokens [{start}, {start + length}) outside the stream of {self.num_tokens}")
        filled = 0
        shard = int(np.searchsorted(self.offsets, start, side="right")) - 1
        while filled < length:
            local = start + filled - int(self.offsets[shard])
            take = min(length - filled, len(self.arrays[shard]) - local)
            out[filled : filled + take] = self.arrays[shard][local : local + take]
            filled += take
            shard += 1

    def num_windows(self, seq_len: int) -> int:
        return max(self.num_tokens - 1, 0) // seq_len


def _windows_to_batch(stream: TokenStream, window_ids, seq_len: int) -> dict[str, torch.Tensor]:
    buf = np.empty((len(window_ids), seq_len + 1), dtype=np.int64)
    for row, w in enumerate(window_ids):
        stream.read(int(w) * seq_len, seq_len + 1, buf[row])
    tokens = torch.from_numpy(buf)
    return {"input_ids": tokens[:, :-1].contiguous(), "labels": tokens[:, 1:].contiguous()}


# What a changed loader-state field usually means, for the resume error.
_RESUME_HINTS = {
    "seed": "the seed changed",
    "seq_len": "the sequence length changed",
    "num_windows": "different shards, or a changed sequence length",
    "shuffle": "the shuffle setting changed",
}


class PackedLoader:
    """An endless, seeded, resumable iterator of packed ``{"input_ids", "labels"}`` batches."""

    def __init__(
        self,
        shards: ShardSet,
        seq_len: int,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        split: str = "train",
        shuffle: bool = True,
    ) -> None:
        if seq_len < 1 or batch_size < 1:
            raise ValueError(f"seq_len and batch_size must be >= 1 (got {seq_len}, {batch_size})")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.stream = TokenStream(shards, split)
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        self.rank, self.world_size, self.shuffle = rank, world_size, shuffle
        self.num_windows = self.stream.num_windows(seq_len)
        self.global_batch = batch_size * world_size
        if self.num_windows < self.global_batch:
            raise ValueError(
                f"split {split!r} of {shards.dir} has {self.stream.num_tokens:,} tokens = {self.num_windows} windows of "
                f"seq_len {seq_len}, fewer than one global micro-batch ({batch_size} sequences × {world_size} ranks); "
                "use more data or a smaller seq_len / batch_size"
            )
        self.epoch = 0
        self.position = 0  # index into this epoch's permutation of the next global micro-batch
        self._order: np.ndarray | None = None
        self._order_epoch = -1

    @property
    def batches_per_epoch(self) -> int:
        return self.num_windows // self.global_batch

    def _epoch_order(self) -> np.ndarray:
        if self._order_epoch != self.epoch:
            if self.shuffle:
                self._order = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_windows)
            else:
                self._order = np.arange(self.num_windows)
            self._order_epoch = self.epoch
        return self._order

    def window_ids(self) -> np.ndarray:
        """This rank's window indices for the next micro-batch (advances the position)."""
        if self.position + self.global_batch > self.num_windows:
            self.epoch += 1
            self.position = 0
        order = self._epoch_order()
        start = self.position + self.rank * self.batch_size
        ids = order[start : start + self.batch_size]
        self.position += self.global_batch
        return ids

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        return _windows_to_batch(self.stream, self.window_ids(), self.seq_len)

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "seq_len": self.seq_len,
            "num_windows": self.num_windows,
            "shuffle": self.shuffle,
        }

    def load_state_dict(self, state: dict) -> None:
        for key in ("seed", "seq_len", "num_windows", "shuffle"):
            if state.get(key) != getattr(self, key):
                raise ValueError(
                    f"cannot resume the data order: {key} was {state.get(key)!r} when the checkpoint was saved, "
                    f"now {getattr(self, key)!r} ({_RESUME_HINTS[key]})"
                )
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


class HeldOutWindows:
    """The first ``max_windows`` windows of a split, in order, as this rank's batches (re-iterable)."""

    def __init__(
        self,
        shards: ShardSet,
        seq_len: int,
        batch_size: int,
        max_windows: int,
        rank: int = 0,
        world_size: int = 1,
        split: str = "val",
    ) -> None:
        self.stream = TokenStream(shards, split)
        self.seq_len, self.batch_size = seq_len, batch_size
        self.num_windows = min(self.stream.num_windows(seq_len), max_windows)
        self.window_ids = np.arange(rank, self.num_windows, world_size)

    @property
    def num_tokens(self) -> int:
        """Predicted tokens over all ranks."""
        return self.num_windows * self.seq_len

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for start in range(0, len(self.window_ids), self.batch_size):
            yield _windows_to_batch(self.stream, self.window_ids[start : start + self.batch_size], self.seq_len)

    def __len__(self) -> int:
        return -(-len(self.window_ids) // self.batch_size)
