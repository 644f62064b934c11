"""Preference pairs for DPO: a prompt, the reply people preferred and the one they rejected.

Accepted records (one JSON object per jsonl line; ``.gz``/``.zst`` too):

* MiniMind ``{"chosen": [msgs], "rejected": [msgs]}``: two whole conversations (role/content or
  from/value turns) that share every turn but the final assistant reply.
* ShareGPT-style ``{"conversations": [prompt turns], "chosen": reply, "rejected": reply}``
  (MedicalGPT's ``dpo_zh_500.jsonl``), where a reply is a string or one message such as
  ``{"from": "gpt", "value": ...}``. TRL's ``{"prompt": str | [msgs], "chosen", "rejected"}``
  is read the same way.

A top-level ``system`` string becomes the first message, as in ``lmforge.data.chat``, whose
checks every pair passes: optional system, then user/assistant alternating from the user. The
prompt ends with a user turn; chosen and rejected must share it and must differ. A record that
breaks this is a ``DataError`` naming ``file:line``, or is counted and skipped with ``skip_bad``::

    from lmforge.data.preference import PreferenceStats, collate_pairs, fit_pair, read_preference_pairs
    stats = PreferenceStats()
    pairs = [fit_pair(p, tokenizer, 1024, "truncate", stats) for p in read_preference_pairs(["dpo.jsonl"])]
    batch = collate_pairs([p for p in pairs if p is not None][:4], pad_id=0)   # 8 rows: chosen, then rejected

Both replies are rendered with the checkpoint's ChatML template by ``encode_conversation``; only
the final reply (its content and ``<|im_end|>``) carries labels, not the prompt's earlier
assistant turns, because DPO's log-probability is that of the response alone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Literal

import torch

from lmforge.data.chat import IGNORE_INDEX, SPEAKERS, encode_conversation, parse_conversation, read_jsonl_records
from lmforge.data.readers import ReadStats

OverlongPolicy = Literal["drop", "truncate"]
_LAYOUT_FIELDS = ("chosen", "rejected", "conversations", "prompt", "system")


@dataclass
class PreferencePair:
    prompt: list[dict]  # optional system, then user/assistant turns, ending with a user turn
    chosen: str
    rejected: str
    source: str = ""
    line: int = 0
    metadata: dict = field(default_factory=dict)  # the record's other fields


def _reply_turns(reply, key: str) -> list:
    if isinstance(reply, str):
        return [{"role": "assistant", "content": reply}]
    if isinstance(reply, dict):
        return [reply]
    if isinstance(reply, list) and reply:
        return reply
    raise ValueError(f"'{key}' must be a string, a message or a non-empty list of messages, got {type(reply).__name__}")


def _speaker(turn) -> str | None:
    return SPEAKERS.get(turn.get("role", turn.get("from"))) if isinstance(turn, dict) else None


def _conversation(record: dict, key: str) -> list[dict]:
    """The whole conversation ending in ``record[key]``'s reply, checked as chat data is."""
    reply = _reply_turns(record[key], key)
    if _speaker(reply[-1]) != "assistant":
        raise ValueError(f"'{key}' must end with an assistant reply")
    if _speaker(reply[0]) in ("user", "system"):
        turns = reply  # a whole conversation (MiniMind, or TRL's with a redundant prompt)
    else:
        prompt = record.get("conversations", record.get("prompt"))
        if prompt is None:
            raise ValueError(f"'{key}' holds only a reply and there is no 'conversations' or 'prompt' field with the question")
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        if not isinstance(prompt, list) or not prompt:
            raise ValueError("the prompt ('conversations' or 'prompt') must be a string or a non-empty list of turns")
        turns = prompt + reply
    conversation = {"conversations": turns}
    if "system" in record:
        conversation["system"] = record["system"]
    return parse_conversation(conversation)


def parse_preference(record: dict) -> tuple[list[dict], str, str]:
    """``(prompt, chosen, rejected)`` of one record in any accepted format; ``ValueError`` says what is wrong."""
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    missing = [k for k in ("chosen", "rejected") if k not in record]
    if missing:
        raise ValueError(f"no {' or '.join(repr(k) for k in missing)} field (fields: {', '.join(list(record)[:8])})")
    chosen, rejected = _conversation(record, "chosen"), _conversation(record, "rejected")
    prompt = chosen[:-1]
    if prompt != rejected[:-1]:
        where = next((i for i, (a, b) in enumerate(zip(prompt, rejected)) if a != b), min(len(prompt), len(rejected) - 1))
        raise ValueError(f"'chosen' and 'rejected' must share their prompt; they differ at turn {where}")
    if chosen[-1]["content"] == rejected[-1]["content"]:
        raise ValueError("'chosen' and 'rejected' replies are identical: nothing to prefer")
    return prompt, chosen[-1]["content"], rejected[-1]["content"]


def read_preference_pairs(
    paths: Iterable[str | os.PathLike] | str | os.PathLike, skip_bad: bool = False, stats: ReadStats | None = None
) -> Iterator[PreferencePair]:
    """Every preference pair in jsonl files or directories of them, in a deterministic order."""
    for path, line_no, record, (prompt, chosen, rejected) in read_jsonl_records(paths, parse_preference, "preference data", skip_bad, stats):
        yield PreferencePair(prompt, chosen, rejected, path, line_no, {k: v for k, v in record.items() if k not in _LAYOUT_FIELDS})


@dataclass
class EncodedPair:
    """Token ids of prompt+chosen and prompt+rejected; labels (aligned with the ids, not shifted)
    only on the final reply. The reference model's summed log-probabilities, once known."""

    chosen_ids: list[int]
    chosen_labels: list[int]
    rejected_ids: list[int]
    rejected_labels: list[int]
    reference_chosen: float | None = None
    reference_rejected: float | None = None

    @property
    def length(self) -> int:
        return max(len(self.chosen_ids), len(self.rejected_ids))


def _encode_reply(prompt: list[dict], prompt_ids: list[int], reply: str, tokenizer) -> tuple[list[int], list[int]]:
    ids, labels = encode_conversation(prompt + [{"role": "assistant", "content": reply}], tokenizer)
    # ChatML pieces never merge across turns, so the prompt's ids are a prefix of the whole;
    # everything before the final reply, earlier assistant turns included, is then unlabelled.
    if ids[: len(prompt_ids)] != prompt_ids:
        raise RuntimeError("the prompt's tokens are not a prefix of the conversation's: is the tokenizer's template ChatML?")
    return ids, [IGNORE_INDEX] * len(prompt_ids) + labels[len(prompt_ids) :]


def encode_pair(prompt: list[dict], chosen: str, rejected: str, tokenizer) -> EncodedPair:
    """ChatML ids of both conversations, labels on the final reply and its ``<|im_end|>`` only."""
    prompt_ids, _ = encode_conversation(prompt, tokenizer)
    return EncodedPair(*_encode_reply(prompt, prompt_ids, chosen, tokenizer), *_encode_reply(prompt, prompt_ids, rejected, tokenizer))


@dataclass
class PreferenceStats:
    pairs: int = 0  # pairs offered to fit_pair
    kept: int = 0
    dropped_overlong: int = 0
    truncated_overlong: int = 0  # kept after removing the prompt's oldest exchanges
    exchanges_removed: int = 0
    tokens: int = 0  # chosen + rejected tokens of the kept pairs
    response_tokens: int = 0  # of which labelled (the final replies)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def fit_pair(pair: PreferencePair, tokenizer, seq_len: int, policy: OverlongPolicy, stats: PreferenceStats) -> EncodedPair | None:
    """The pair encoded within ``seq_len`` tokens per conversation, or None when it is dropped.

    ``truncate`` removes the prompt's oldest user/assistant exchanges (the system prompt stays)
    until both conversations fit; a pair whose last question and replies alone are too long is
    dropped, as every over-long pair is with ``drop``.
    """
    if policy not in ("drop", "truncate"):
        raise ValueError(f"the over-long policy must be 'drop' or 'truncate'; got {policy!r}")
    stats.pairs += 1
    system = pair.prompt[:1] if pair.prompt[0]["role"] == "system" else []
    turns = pair.prompt[len(system) :]
    removed = 0
    while (encoded := encode_pair(system + turns, pair.chosen, pair.rejected, tokenizer)).length > seq_len:
        if policy == "drop" or len(turns) <= 1:
            stats.dropped_overlong += 1
            return None
        turns, removed = turns[2:], removed + 1
    if removed:
        stats.truncated_overlong += 1
        stats.exchanges_removed += removed
    stats.kept += 1
    stats.tokens += len(encoded.chosen_ids) + len(encoded.rejected_ids)
    stats.response_tokens += sum(x != IGNORE_INDEX for x in encoded.chosen_labels + encoded.rejected_labels)
    return encoded


def collate_pairs(pairs: list[EncodedPair], pad_id: int = 0) -> dict:
    """One batch of 2B right-padded rows: the B chosen conversations, then the B rejected ones.

    ``labels[t]`` is the next token ``input_ids[t + 1]`` where that token belongs to the final
    reply (as the pretraining loader's labels are), else ``IGNORE_INDEX``. Right padding needs no
    attention mask: a causal model's real tokens never look at the padding after them. With
    precomputed reference log-probabilities the batch carries them as ``reference_*_logps`` [B].
    """
    rows = [(p.chosen_ids, p.chosen_labels) for p in pairs] + [(p.rejected_ids, p.rejected_labels) for p in pairs]
    T = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), T), IGNORE_INDEX, dtype=torch.long)
    for r, (ids, aligned) in enumerate(rows):
        input_ids[r, : len(ids)] = torch.tensor(ids)
        labels[r, : len(ids) - 1] = torch.tensor(aligned[1:])
    batch = {"input_ids": input_ids, "labels": labels, "padding_tokens": len(rows) * T - sum(len(ids) for ids, _ in rows)}
    if all(p.reference_chosen is not None for p in pairs):
        batch["reference_chosen_logps"] = torch.tensor([p.reference_chosen for p in pairs], dtype=torch.float32)
        batch["reference_rejected_logps"] = torch.tensor([p.reference_rejected for p in pairs], dtype=torch.float32)
    return batch
