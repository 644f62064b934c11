"""Bits per byte and perplexity of a model on text files.

Perplexity depends on the tokenizer (a tokenizer with longer tokens has fewer, harder tokens to
predict); bits per byte does not: it is the summed negative log-likelihood of a text, in bits,
over the text's UTF-8 bytes, so models with different tokenizers compare fairly. Both come from
one pass of ``LoglikScorer.rolling_loglik_many`` (windows of the model's context; every token is
scored once, the first after the BOS/EOS prefix token, so every byte is accounted for).

``token_byte_lengths`` gives each token id's byte length, for bits per byte during training
(held-out loss over the held-out bytes) without decoding text.

Usage::

    result = evaluate_bpb(scorer, ["../shared/data/pretrain/en_history.txt"], max_bytes=200_000)
    result["value"], result["details"]["perplexity"]          # bits per byte, token perplexity
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from typing import Any, Sequence

import torch

_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")
_DOCS_PER_CALL = 64  # documents scored together: windows of many short documents share batches


def _byte_level_decoder() -> dict[str, int]:
    """The byte-level BPE alphabet (GPT-2's): each of the 256 bytes as one printable character."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


def token_byte_lengths(tokenizer: Any) -> torch.Tensor:
    """[vocab] int64: how many bytes of text each token id stands for (0 for added and special
    tokens, which are markup, not text). ``tokenizer``: an HF fast tokenizer or a
    ``tokenizers.Tokenizer``."""
    raw = getattr(tokenizer, "backend_tokenizer", tokenizer)
    spec = json.loads(raw.to_str())
    # Byte-level BPE (GPT-2's alphabet) says so in its pre-tokenizer or decoder; only there is
    # a piece's length its byte count (elsewhere "é" is two bytes and "<0xF0>" one).
    byte_level = "ByteLevel" in json.dumps([spec.get("pre_tokenizer"), spec.get("decoder")])
    decoder = _byte_level_decoder()
    added = set(raw.get_added_tokens_decoder())
    size = raw.get_vocab_size(with_added_tokens=True)
    lengths = torch.zeros(size, dtype=torch.long)
    for i in range(size):
        piece = raw.id_to_token(i)
        if i in added or piece is None:
            continue
        if byte_level and all(ch in decoder for ch in piece):
            lengths[i] = len(piece)  # one alphabet character per byte
        elif _BYTE_PIECE.fullmatch(piece):
            lengths[i] = 1  # SentencePiece's byte fallback: one raw byte
        elif "\u2581" in piece:  # SentencePiece: ▁ stands for a space (decoding one piece would drop it)
            lengths[i] = len(piece.replace("\u2581", " ").encode("utf-8"))
        else:
            lengths[i] = len(raw.decode([i], skip_special_tokens=False).encode("utf-8"))
    return lengths


def token_bytes_for(tokenizer_dir: str | Path | None, vocab_size: int) -> torch.Tensor | None:
    """``token_byte_lengths`` of the ``tokenizer.json`` in a directory (a tokenizer or checkpoint
    dir), sized to the model's ``vocab_size`` (ids the tokenizer lacks count 0 bytes); None when
    there is none or it cannot be read (training then reports no bits per byte)."""
    path = Path(tokenizer_dir) / "tokenizer.json" if tokenizer_dir else None
    if path is None or not path.is_file():
        return None
    from tokenizers import Tokenizer

    try:
        lengths = token_byte_lengths(Tokenizer.from_file(str(path)))
    except Exception:  # noqa: BLE001 - a convenience metric must not stop a training run
        return None
    sized = torch.zeros(vocab_size, dtype=torch.long)
    sized[: min(vocab_size, len(lengths))] = lengths[:vocab_size]
    return sized


def _documents(paths: Sequence[str | Path], text_key: str, txt_mode: str, skip_bad: bool, stats):
    from lmforge.data.readers import read_documents

    for doc in read_documents(paths, text_key=text_key, txt_mode=txt_mode, skip_bad=skip_bad, stats=stats):  # type: ignore[arg-type]
        if doc.text:
            yield doc


def evaluate_bpb(
    scorer,
    paths: Sequence[str | Path] | str | Path,
    *,
    text_key: str = "text",
    txt_mode: str = "file",
    max_bytes: int = 0,
    stride: int | None = None,
    skip_bad: bool = False,
) -> dict:
    """Bits per byte (and nats/token perplexity) of ``scorer``'s model on every document of
    ``paths`` (any format ``lmforge.data.readers`` reads; ``.txt`` files are one document each
    unless ``txt_mode`` says otherwise). ``max_bytes`` (0 = all) stops after that many bytes per
    file, cutting the last document at a character boundary. Returns a results entry (see
    ``lmforge.eval.tasks``) with per-file bytes, tokens, bits per byte and perplexity."""
    from lmforge.data.readers import ReadStats

    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not paths:
        raise ValueError("bits per byte needs at least one text file")
    start = time.perf_counter()
    files: dict[str, dict] = {}
    stats = ReadStats()
    for path in paths:
        row = files.setdefault(str(path), {"documents": 0, "bytes": 0, "tokens": 0, "nll": 0.0})
        pending: list[list[int]] = []

        def flush() -> None:
            for nll, n in scorer.rolling_loglik_many(pending, stride):
                row["nll"] += nll
                row["tokens"] += n
            pending.clear()

        for doc in _documents([path], text_key, txt_mode, skip_bad, stats):
            text = doc.text
            if max_bytes:
                room = max_bytes - row["bytes"]
                if room <= 0:
                    break
                text = text.encode("utf-8")[:room].decode("utf-8", errors="ignore")
            ids = scorer.encode(text)
            if not ids:
                continue
            row["documents"] += 1
            row["bytes"] += len(text.encode("utf-8"))
            pending.append(ids)
            if len(pending) >= _DOCS_PER_CALL:
                flush()
        flush()
        if not row["tokens"]:
            raise ValueError(f"{path}: no text to score")
    for row in files.values():
        _add_rates(row)
    total = {k: sum(r[k] for r in files.values()) for k in ("documents", "bytes", "tokens", "nll")}
    _add_rates(total)
    return {
        "kind": "bpb", "metric": "bpb", "value": total["bpb"], "chance": None, "n": total["bytes"],
        "seconds": time.perf_counter() - start,
        "details": {**total, "files": files, "bad_lines": stats.bad_lines, "stride": stride or scorer.max_length},
    }  # fmt: skip


def _add_rates(row: dict) -> None:
    row["bpb"] = row["nll"] / math.log(2) / max(row["bytes"], 1)
    row["nats_per_token"] = row["nll"] / max(row["tokens"], 1)
    row["perplexity"] = math.exp(min(row["nats_per_token"], 700.0))
    row["bytes_per_token"] = row["bytes"] / max(row["tokens"], 1)
