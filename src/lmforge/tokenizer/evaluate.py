"""Tokenizer compression: bytes, characters and tokens per (tokenizer, file), side by side.

Compression decides how much text a fixed token budget covers and how long a context window
really is, so tokenizers are compared on the text they will see::

    from lmforge.tokenizer.evaluate import evaluate_compression, compression_table
    rows = evaluate_compression(["runs/tok", "other/tok"], ["zh.txt", "en.jsonl"])
    rows[0]["bytes_per_token"]          # higher = more text per token
    console.print(compression_table(rows))

Any directory with a ``tokenizer.json`` works (ours, or a reference such as Qwen2's), and
every file format the readers know is accepted. Text is encoded with special-token strings
treated as plain text, exactly as ``lmforge data tokenize`` does. Expect roughly 3 bytes per
character for Chinese (one CJK character is 3 UTF-8 bytes), so Chinese shows more bytes per
token than English at similar characters per token.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

_BATCH = 256


def evaluate_compression(
    tokenizer_dirs: Iterable[str | os.PathLike],
    files: Iterable[str | os.PathLike],
    *,
    text_key: str = "text",
    txt_mode: str = "paragraph",
    max_chars: int = 0,
    skip_bad: bool = False,
) -> list[dict]:
    """One row per (tokenizer, file), plus a ``TOTAL`` row per tokenizer when there are several files.

    Each row holds ``tokenizer``, ``file``, ``documents``, ``chars``, ``bytes``, ``tokens``,
    ``bad_lines``, ``bytes_per_token`` and ``chars_per_token``. ``max_chars`` (0 = all) caps the
    text read per file, for a quick estimate on a large corpus. A malformed record raises
    ``DataError`` unless ``skip_bad`` (as ``data.skip_bad`` when tokenizing), which skips and
    counts it in ``bad_lines``.
    """
    from lmforge.data.readers import ReadStats, read_documents
    from lmforge.tokenizer.train import load_tokenizer

    tokenizer_dirs, files = [Path(d) for d in tokenizer_dirs], [Path(f) for f in files]
    if not tokenizer_dirs or not files:
        raise ValueError("evaluate_compression needs at least one tokenizer directory and one file")
    rows: list[dict] = []
    for tdir in tokenizer_dirs:
        tok = load_tokenizer(tdir)
        tok.encode_special_tokens = True
        per_tok: list[dict] = []
        for path in files:
            row = {"tokenizer": str(tdir), "file": str(path), "documents": 0, "chars": 0, "bytes": 0, "tokens": 0}
            stats = ReadStats()
            batch: list[str] = []
            docs = read_documents([path], text_key=text_key, txt_mode=txt_mode, skip_bad=skip_bad, stats=stats)  # type: ignore[arg-type]
            for doc in docs:
                text = doc.text
                if max_chars and row["chars"] + len(text) > max_chars:
                    text = text[: max_chars - row["chars"]]
                if text:
                    batch.append(text)
                    row["documents"] += 1
                    row["chars"] += len(text)
                    row["bytes"] += len(text.encode("utf-8"))
                if len(batch) >= _BATCH:
                    row["tokens"] += _count_tokens(tok, batch)
                    batch = []
                if max_chars and row["chars"] >= max_chars:
                    break
            docs.close()  # stopped early at max_chars: close the file now, not at garbage collection
            row["tokens"] += _count_tokens(tok, batch)
            row["bad_lines"] = stats.bad_lines
            per_tok.append(_with_ratios(row))
        if len(per_tok) > 1:
            total = {"tokenizer": str(tdir), "file": "TOTAL"}
            for key in ("documents", "chars", "bytes", "tokens", "bad_lines"):
                total[key] = sum(r[key] for r in per_tok)
            per_tok.append(_with_ratios(total))
        rows.extend(per_tok)
    return rows


def _count_tokens(tok, texts: list[str]) -> int:
    if not texts:
        return 0
    return sum(len(e.ids) for e in tok.encode_batch_fast(texts, add_special_tokens=False))


def _with_ratios(row: dict) -> dict:
    tokens = row["tokens"]
    row["bytes_per_token"] = row["bytes"] / tokens if tokens else 0.0
    row["chars_per_token"] = row["chars"] / tokens if tokens else 0.0
    return row


def compression_table(rows: list[dict]):
    """A rich ``Table``: files down the side, one bytes/token and chars/token column pair per tokenizer."""
    from rich.table import Table

    from lmforge.tokenizer.train import load_tokenizer

    tokenizers = list(dict.fromkeys(r["tokenizer"] for r in rows))
    files = list(dict.fromkeys(r["file"] for r in rows))
    by_key = {(r["tokenizer"], r["file"]): r for r in rows}
    table = Table(title="tokenizer compression (higher bytes/token = more text per token)")
    table.add_column("file")
    table.add_column("bytes", justify="right")
    for t in tokenizers:
        vocab = load_tokenizer(t).get_vocab_size(with_added_tokens=True)
        name = f"{Path(t).name} ({vocab:,})"
        table.add_column(f"{name}\nbytes/tok", justify="right")
        table.add_column(f"{name}\nchars/tok", justify="right")
        table.add_column(f"{name}\ntokens", justify="right")
    for f in files:
        first = next(r for (t, ff), r in by_key.items() if ff == f)
        cells = [Path(f).name if f != "TOTAL" else "[bold]TOTAL[/]", f"{first['bytes']:,}"]
        for t in tokenizers:
            r = by_key.get((t, f))
            cells += [f"{r['bytes_per_token']:.2f}", f"{r['chars_per_token']:.2f}", f"{r['tokens']:,}"] if r else ["-"] * 3
        table.add_row(*cells, end_section=f == files[-2] if len(files) > 1 and files[-1] == "TOTAL" else False)
    return table


def write_json(rows: list[dict], path: str | os.PathLike) -> Path:
    """Write the rows as ``{"results": [...]}`` (UTF-8, indented) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"results": rows}, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return path
