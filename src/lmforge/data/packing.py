"""Packing tokenized conversations into fixed-length rows, attention kept inside each one.

SFT examples are short and uneven; padding each to the longest wastes most of a batch. Instead
several conversations share a row of ``seq_len`` tokens, each with its own positions (0, 1, ...)
and a block-diagonal causal mask, so none attends to another — the same loss as training them
one by one, at a fraction of the padding. Rows are filled best-fit over a window of upcoming
conversations, which keeps padding to a few percent::

    packer = Packer(seq_len=512, policy="truncate")
    rows = list(packer.pack_messages((c.messages for c in read_conversations(files)), tokenizer))
    batch = collate(rows[:8], pad_id=0)      # input_ids, labels, position_ids, attention_mask [B,1,T,T], padding_tokens
    print(packer.stats)                      # rows, tokens, padding, padding_fraction, dropped/truncated

A conversation longer than ``seq_len`` follows ``policy``: ``drop`` it, or ``truncate`` its
oldest user/assistant exchanges (the system prompt stays) until it fits, dropping it only when
even its last exchange does not fit. Both are counted in ``stats``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Literal

import torch

from lmforge.data.chat import IGNORE_INDEX, encode_conversation

OverlongPolicy = Literal["drop", "truncate"]


@dataclass
class PackStats:
    conversations: int = 0
    rows: int = 0
    tokens: int = 0  # real tokens placed in rows
    padding: int = 0
    trained_tokens: int = 0  # tokens with a label (assistant replies)
    dropped_overlong: int = 0
    truncated_overlong: int = 0
    exchanges_removed: int = 0

    @property
    def padding_fraction(self) -> float:
        return self.padding / max(self.tokens + self.padding, 1)

    def as_dict(self) -> dict:
        return {**self.__dict__, "padding_fraction": round(self.padding_fraction, 4)}


@dataclass
class PackedRow:
    input_ids: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    position_ids: list[int] = field(default_factory=list)
    segment_ids: list[int] = field(default_factory=list)  # 1, 2, ... per conversation; 0 = padding


def fit_conversation(messages: list[dict], encode: Callable[[list[dict]], tuple[list[int], list[int]]], seq_len: int, policy: OverlongPolicy):
    """(ids, labels, exchanges removed) of the conversation within ``seq_len``, or None to drop it."""
    ids, labels = encode(messages)
    if len(ids) <= seq_len:
        return ids, labels, 0
    if policy == "drop":
        return None
    system = messages[:1] if messages[0]["role"] == "system" else []
    turns = messages[len(system):]
    removed = 0
    while len(turns) > 2:  # drop the oldest user/assistant exchange, keep the newest ones
        turns = turns[2:]
        removed += 1
        ids, labels = encode(system + turns)
        if len(ids) <= seq_len:
            return ids, labels, removed
    return None


class Packer:
    """Best-fit packing of tokenized conversations into rows of ``seq_len`` tokens."""

    def __init__(self, seq_len: int, policy: OverlongPolicy = "truncate", window: int = 256) -> None:
        if seq_len < 2:
            raise ValueError(f"seq_len must be >= 2; got {seq_len}")
        if policy not in ("drop", "truncate"):
            raise ValueError(f"the over-long policy must be 'drop' or 'truncate'; got {policy!r}")
        self.seq_len, self.policy, self.window = seq_len, policy, window
        self.stats = PackStats()

    def pack_messages(self, conversations: Iterable[list[dict]], tokenizer) -> Iterator[PackedRow]:
        """Rows from conversations (lists of messages) rendered with ``tokenizer``'s ChatML."""

        def encoded():
            for messages in conversations:
                self.stats.conversations += 1
                fitted = fit_conversation(messages, lambda m: encode_conversation(m, tokenizer), self.seq_len, self.policy)
                if fitted is None:
                    self.stats.dropped_overlong += 1
                    continue
                ids, labels, removed = fitted
                if removed:
                    self.stats.truncated_overlong += 1
                    self.stats.exchanges_removed += removed
                yield ids, labels

        yield from self.pack(encoded())

    def pack(self, examples: Iterable[tuple[list[int], list[int]]]) -> Iterator[PackedRow]:
        """Rows from (ids, labels) pairs, each at most ``seq_len`` long. Order within the window is
        decided best-fit: every example goes into the open row it fills most tightly."""
        open_rows: list[PackedRow] = []
        for ids, labels in examples:
            if len(ids) > self.seq_len:
                raise ValueError(f"an example of {len(ids)} tokens does not fit seq_len={self.seq_len}; fit it first")
            room = [(self.seq_len - len(r.input_ids) - len(ids), i) for i, r in enumerate(open_rows)]
            fits = [(gap, i) for gap, i in room if gap >= 0]
            if fits:
                row = open_rows[min(fits)[1]]
            else:
                row = PackedRow()
                open_rows.append(row)
            segment = (row.segment_ids[-1] if row.segment_ids else 0) + 1
            row.input_ids += ids
            row.labels += labels
            row.position_ids += list(range(len(ids)))
            row.segment_ids += [segment] * len(ids)
            self.stats.tokens += len(ids)
            self.stats.trained_tokens += sum(1 for x in labels if x != IGNORE_INDEX)
            # Close rows that are full, and the fullest when too many are open.
            for r in [r for r in open_rows if len(r.input_ids) == self.seq_len]:
                open_rows.remove(r)
                yield self._finish(r)
            if len(open_rows) > self.window:
                fullest = max(open_rows, key=lambda r: len(r.input_ids))
                open_rows.remove(fullest)
                yield self._finish(fullest)
        for row in sorted(open_rows, key=lambda r: -len(r.input_ids)):
            yield self._finish(row)

    def _finish(self, row: PackedRow) -> PackedRow:
        pad = self.seq_len - len(row.input_ids)
        self.stats.rows += 1
        self.stats.padding += pad
        return row


def collate(rows: list[PackedRow], pad_id: int = 0, seq_len: int | None = None) -> dict[str, torch.Tensor]:
    """A batch: ids, next-token labels (``labels[t]`` is the target after ``input_ids[t]``) and
    positions padded to ``seq_len``, and a [B, 1, T, T] bool mask that lets each token see only
    earlier tokens of its own conversation (padding sees only itself)."""
    T = seq_len or max(len(r.input_ids) for r in rows)
    B = len(rows)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((B, T), dtype=torch.long)
    segments = torch.zeros((B, T), dtype=torch.long)
    for b, r in enumerate(rows):
        n = len(r.input_ids)
        input_ids[b, :n] = torch.tensor(r.input_ids)
        # Next-token targets: position t predicts token t + 1. Shifting across a conversation
        # boundary is harmless: every conversation starts with an unlabelled <|im_start|>.
        labels[b, : n - 1] = torch.tensor(r.labels[1:], dtype=torch.long)
        position_ids[b, :n] = torch.tensor(r.position_ids)
        segments[b, :n] = torch.tensor(r.segment_ids)
    same = segments[:, :, None] == segments[:, None, :]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    # A padding position (segment 0) attends to itself only, so no attention row is empty.
    mask = (same & causal & (segments[:, :, None] > 0)) | torch.eye(T, dtype=torch.bool)
    return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids, "attention_mask": mask[:, None],
            "padding_tokens": int((segments == 0).sum())}
