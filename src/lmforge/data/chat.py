"""Chat data for supervised fine-tuning: five record formats in, one conversation shape out, and
its tokens with labels on the assistant's tokens only.

Accepted records (one JSON object per jsonl line; ``.gz``/``.zst`` too):

* MiniMind ``{"conversations": [{"role": "system"|"user"|"assistant", "content": ...}]}``
* ShareGPT ``{"conversations": [{"from": "human"|"gpt"|"system", "value": ...}]}``
  (also ``user``/``assistant``/``chatgpt``/``bot``/``model`` as speakers)
* OpenAI ``{"messages": [{"role", "content"}]}``
* Alpaca ``{"instruction", "input", "output"}`` (optional ``system``)
* YAYI ``{"system", "conversations": [{"from": "human"|"yayi", "value"}]}``

A top-level ``system`` string becomes the first message wherever the messages carry none. Every
conversation is checked: an optional system message first, then user and assistant turns
alternating from the user, ending with the assistant (a trailing unanswered user turn is cut
off); contents are strings. A record that breaks this is a ``DataError`` naming ``file:line``,
or is counted and skipped with ``skip_bad``::

    from lmforge.data.chat import read_conversations, encode_conversation
    for conv in read_conversations(["sft.jsonl"]):
        ids, labels = encode_conversation(conv.messages, tokenizer)   # labels: -100 off the assistant

``encode_conversation`` renders exactly what the tokenizer's ChatML chat template renders (a test
checks the ids against ``apply_chat_template``) and trains on each assistant reply's content
and its closing ``<|im_end|>`` — not on the role headers, the user's words or the system prompt.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

from lmforge.data.document import DataError
from lmforge.data.readers import ReadStats, _lines, expand_paths, file_format

T = TypeVar("T")

IGNORE_INDEX = -100  # the label of a token that carries no loss (PyTorch's cross-entropy default)

SPEAKERS = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "yayi": "assistant",
}


@dataclass
class Conversation:
    messages: list[dict]  # [{"role": "system"|"user"|"assistant", "content": str}, ...]
    source: str = ""
    line: int = 0
    metadata: dict = field(default_factory=dict)  # the record's other fields


def parse_conversation(record: dict, prompts: bool = False) -> list[dict]:
    """The messages of one record in any accepted format; ``ValueError`` says what is wrong.

    ``prompts=True`` reads prompts for a teacher to answer: a conversation may then end with
    the user's turn (it is kept), or with an assistant reply (which the teacher will replace)."""
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    if "messages" in record:
        turns = record["messages"]
    elif "conversations" in record:
        turns = record["conversations"]
    elif "instruction" in record and ("output" in record or prompts):
        prompt = record["instruction"]
        if record.get("input"):
            prompt = f"{prompt}\n\n{record['input']}"
        turns = [{"role": "user", "content": prompt}]
        if "output" in record:
            turns.append({"role": "assistant", "content": record["output"]})
    else:
        raise ValueError(f"no 'conversations', 'messages' or 'instruction'/'output' fields (fields: {', '.join(list(record)[:8])})")
    if not isinstance(turns, list) or not turns:
        raise ValueError("the conversation must be a non-empty list of turns")
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise ValueError(f"turn {i} is {type(turn).__name__}, not an object")
        speaker = turn.get("role", turn.get("from"))
        content = turn.get("content", turn.get("value"))
        if speaker not in SPEAKERS:
            raise ValueError(f"turn {i}: unknown speaker {speaker!r} (expected one of {', '.join(sorted(SPEAKERS))})")
        if not isinstance(content, str):
            raise ValueError(f"turn {i}: content must be a string, got {type(content).__name__}")
        messages.append({"role": SPEAKERS[speaker], "content": content})
    system = record.get("system")
    if system is not None and not isinstance(system, str):
        raise ValueError(f"'system' must be a string, got {type(system).__name__}")
    if system and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system})
    if not prompts and len(messages) > 1 and messages[-1]["role"] == "user":
        messages.pop()  # a question left unanswered teaches nothing; the turns before it still do
    check_turns(messages, answered=not prompts)
    return messages


def check_turns(messages: list[dict], answered: bool = True) -> None:
    """Optional system first, then user/assistant alternating from the user, ending with the
    assistant (or, with ``answered=False``, with either)."""
    body = messages[1:] if messages and messages[0]["role"] == "system" else messages
    if not body:
        raise ValueError("no user or assistant turns")
    for i, message in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise ValueError(f"turn {i + len(messages) - len(body)} is {message['role']!r}, expected {expected!r} (turns alternate user/assistant)")
    if answered and body[-1]["role"] != "assistant":
        raise ValueError("no assistant turn: nothing to learn from")


def read_jsonl_records(
    paths: Iterable[str | os.PathLike] | str | os.PathLike, parse: Callable[[dict], T], what: str,
    skip_bad: bool = False, stats: ReadStats | None = None,
) -> Iterator[tuple[str, int, dict, T]]:
    """``(path, line, record, parse(record))`` for every record of jsonl files (``.gz``/``.zst``
    too) or directories of them, in a deterministic order. A line that is not JSON, or that
    ``parse`` rejects with a ``ValueError``, is a ``DataError`` naming ``file:line`` — or, with
    ``skip_bad``, counted in ``stats`` and skipped. ``what`` names the data in errors."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    stats = stats if stats is not None else ReadStats()
    for path in expand_paths(paths):
        fmt, compression = file_format(path)  # type: ignore[misc]
        if fmt != "jsonl":
            raise DataError(f"{path}: {what} must be jsonl (.jsonl, .jsonl.gz, .jsonl.zst), not {fmt}")
        stats.files.append({"path": str(path), "bytes": path.stat().st_size})
        for line_no, raw in _lines(Path(path), compression):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
                parsed = parse(record)
            except ValueError as exc:  # JSON and UTF-8 errors are ValueErrors too
                message = f"{path}:{line_no}: {exc}"
                if not skip_bad:
                    raise DataError(message) from None
                stats.bad(message)
                continue
            stats.documents += 1
            yield str(path), line_no, record, parsed


_CHAT_FIELDS = ("messages", "conversations", "system", "instruction", "input", "output")


def read_conversations(
    paths: Iterable[str | os.PathLike] | str | os.PathLike, skip_bad: bool = False, stats: ReadStats | None = None, prompts: bool = False
) -> Iterator[Conversation]:
    """Every conversation in jsonl files or directories of them, in a deterministic order
    (``prompts``: see ``parse_conversation``)."""
    records = read_jsonl_records(paths, lambda record: parse_conversation(record, prompts), "chat data", skip_bad, stats)
    for path, line_no, record, messages in records:
        yield Conversation(messages, path, line_no, {k: v for k, v in record.items() if k not in _CHAT_FIELDS})


def encode_conversation(messages: list[dict], tokenizer) -> tuple[list[int], list[int]]:
    """ChatML token ids of a conversation and its labels (``IGNORE_INDEX`` off the assistant's replies).

    ``tokenizer`` is a ``tokenizers.Tokenizer`` or a ``transformers`` tokenizer. Each turn is
    encoded in pieces at ChatML's own boundaries (special tokens and the newline after the role),
    where byte-level BPE never merges across, so the pieces concatenate to exactly the ids of the
    whole rendered text.
    """
    encode = _encoder(tokenizer)
    ids: list[int] = []
    labels: list[int] = []
    for message in messages:
        header = encode(f"<|im_start|>{message['role']}\n")
        reply = encode(f"{message['content']}<|im_end|>")
        tail = encode("\n")
        ids += header + reply + tail
        trained = message["role"] == "assistant"
        labels += [IGNORE_INDEX] * len(header) + (reply if trained else [IGNORE_INDEX] * len(reply)) + [IGNORE_INDEX] * len(tail)
    return ids, labels


def _encoder(tokenizer):
    if hasattr(tokenizer, "encode_batch"):  # tokenizers.Tokenizer
        return lambda text: tokenizer.encode(text, add_special_tokens=False).ids
    return lambda text: tokenizer.encode(text, add_special_tokens=False)  # transformers
