"""Evaluation-set files read as items, for the ``decontaminate`` step (``decontam.py``).

Layouts (the decontam module docstring has the details): ``.jsonl`` / ``.ndjson`` (also
``.gz`` / ``.zst``) and ``.parquet``, one record per line/row; ``.csv`` (also compressed) with a
header naming a question column (CMMLU, C-Eval) or MMLU's header-less rows. Each item is indexed
as a few text variants (options lettered and bare, GSM8K calculator notes kept and stripped).
Malformed input raises ``DataError("file:line: why")``. Usage::

    for path, display, set_name in eval_files([Path("eval/gsm8k_test.jsonl"), Path("eval/cmmlu")]):
        for item in read_eval_items(path, path.read_bytes(), display, set_name, DecontaminateConfig(...)):
            item.id, item.set, item.texts   # "gsm8k_test.jsonl:17", "gsm8k_test", ("question\nanswer", ...)
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol

from lmforge.data.document import DataError

_LETTERS = "ABCDEFGHIJ"
_QUESTION_COLUMNS = ("question", "input", "prompt", "problem")  # a CSV header names one of these
_CALCULATOR_NOTE_RE = re.compile(r"<<[^<>]*>>")  # GSM8K's "<<48/2=24>>"
_RECORD_SUFFIXES = (".jsonl", ".ndjson", ".parquet")
_EVAL_SUFFIXES = (*_RECORD_SUFFIXES, ".csv")


class ItemFields(Protocol):
    """What an item is made of (``DecontaminateConfig`` has these fields; see it for meanings)."""

    jsonl_fields: list[str]
    jsonl_option_fields: list[str]
    jsonl_answer_fields: list[str]
    include_options: bool
    include_answers: bool


@dataclass(frozen=True)
class EvalItem:
    """One evaluation item: ``id`` is ``file:line``, ``texts`` its indexed variants."""

    id: str
    set: str
    texts: tuple[str, ...]


def eval_files(entries: list[Path]) -> list[tuple[Path, str, str]]:
    """``(path, display name, set name)`` for every eval file, in a deterministic order.

    A file entry is its own set (named by its stem); a directory entry is one set (named by
    the directory) and its files show as ``dir/relative/path``.
    """
    out: list[tuple[Path, str, str]] = []
    names = [_strip_suffixes(e.name) for e in entries]
    for entry, name in zip(entries, names):
        set_name = name if names.count(name) == 1 else str(entry)  # two "test/" dirs: full paths
        if entry.is_dir():
            found = sorted(
                f for f in entry.rglob("*")
                if f.is_file() and _eval_format(f) and not any(p.startswith(".") for p in f.relative_to(entry).parts)
            )
            if not found:
                raise DataError(f"{entry}: no evaluation files here (looked for {', '.join(_EVAL_SUFFIXES)})")
            out.extend((f, f"{entry.name}/{f.relative_to(entry).as_posix()}", set_name) for f in found)
        elif entry.is_file():
            if not _eval_format(entry):
                supported = ", ".join(_EVAL_SUFFIXES)
                raise DataError(f"{entry}: unsupported evaluation file (supported: {supported}, also .gz/.zst)")
            out.append((entry, entry.name, set_name))
        else:
            raise DataError(f"{entry}: no such evaluation file or directory")
    return out


def read_eval_items(
    path: Path, raw: bytes, display: str, set_name: str, config: ItemFields
) -> Iterator[EvalItem]:
    """The items of one eval file whose (possibly compressed) bytes are ``raw``."""
    fmt = _eval_format(path)
    if fmt == ".parquet":
        records = _parquet_records(path, raw)
    else:
        data = _decompress(path, raw)
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            raise DataError(f"{path}:{line}: invalid UTF-8") from None
        if fmt == ".csv":
            for line, question, options, answers in _csv_rows(path, text):
                yield EvalItem(f"{display}:{line}", set_name, _variants(question, options, answers, config))
            return
        records = _jsonl_records(path, text)
    for line, record in records:
        question, options, answers = _record_parts(path, line, record, config)
        yield EvalItem(f"{display}:{line}", set_name, _variants(question, options, answers, config))


def _strip_suffixes(name: str) -> str:
    for suffix in (".gz", ".zst", *_EVAL_SUFFIXES):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return name


def _eval_format(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith((".gz", ".zst")):
        name = name.rsplit(".", 1)[0]
        return next((s for s in (".jsonl", ".ndjson", ".csv") if name.endswith(s)), None)
    return next((s for s in _EVAL_SUFFIXES if name.endswith(s)), None)


def _decompress(path: Path, raw: bytes) -> bytes:
    try:
        if path.name.lower().endswith(".gz"):
            return gzip.decompress(raw)
        if path.name.lower().endswith(".zst"):
            import zstandard

            return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw)).read()
    except Exception as exc:  # gzip.BadGzipFile, EOFError, zstandard.ZstdError
        raise DataError(f"{path}: cannot decompress: {exc}") from None
    return raw


def _jsonl_records(path: Path, text: str) -> Iterator[tuple[int, dict]]:
    for line_no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{line_no}: not JSON ({exc.msg}, column {exc.colno})") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}:{line_no}: expected a JSON object, got {type(record).__name__}")
        yield line_no, record


def _parquet_records(path: Path, raw: bytes) -> Iterator[tuple[int, dict]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(pa.BufferReader(raw))
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: cannot read parquet: {exc}") from None
    yield from enumerate(table.to_pylist(), 1)


def _record_parts(path: Path, line: int, record: dict, config: ItemFields) -> tuple[str, list[str], list[str]]:
    """(question, options, answers) of a jsonl/parquet record."""
    question = "\n".join(v for f in config.jsonl_fields if isinstance(v := record.get(f), str) and v.strip())
    if not question:
        fields = ", ".join(list(record)[:8])
        raise DataError(
            f"{path}:{line}: no question text in any of {', '.join(config.jsonl_fields)} (fields: {fields}); "
            "set jsonl_fields"
        )
    options: list[str] = []
    for f in config.jsonl_option_fields:
        value = record.get(f)
        if isinstance(value, dict):
            options.extend(str(v) for v in value.values() if isinstance(v, (str, int, float)))
        elif isinstance(value, list):
            options.extend(str(v) for v in value if isinstance(v, (str, int, float)))
    # Only strings: MMLU's "answer" is the option index, which carries no text.
    answers = [v for f in config.jsonl_answer_fields if isinstance(v := record.get(f), str)]
    return question, options, answers


def _csv_rows(path: Path, text: str) -> Iterator[tuple[int, str, list[str], list[str]]]:
    """(line, question, options, answers) of every CSV row; the header row decides the layout."""
    reader = csv.reader(io.StringIO(text, newline=""))
    line = 0
    header: list[str] | None = None
    for row in reader:
        start, line = line + 1, reader.line_num  # a quoted cell may span lines: report the first
        if not row or not any(cell.strip() for cell in row):
            continue
        if header is None:
            header = [cell.strip().lower() for cell in row]
            q_col = next((header.index(c) for c in _QUESTION_COLUMNS if c in header), -1)
            if q_col >= 0:
                opt_cols = [i for i, h in enumerate(header) if len(h) == 1 and h.upper() in _LETTERS]
                ans_cols = [i for i, h in enumerate(header) if h == "explanation"]
                width = len(header)
                continue
            # No header: MMLU's question,A,B,...,answer.
            if len(row) < 3:
                raise DataError(f"{path}:{start}: expected a header with a 'question' column or MMLU "
                                f"rows (question, options..., answer); got {len(row)} columns")
            q_col, opt_cols, ans_cols, width = 0, list(range(1, len(row) - 1)), [], len(row)
        if len(row) != width:
            raise DataError(f"{path}:{start}: {len(row)} columns where the first row has {width} "
                            "(a missing or extra option, or an unquoted comma)")
        if not row[q_col].strip():
            raise DataError(f"{path}:{start}: empty question")
        yield start, row[q_col], [row[i] for i in opt_cols], [row[i] for i in ans_cols if row[i].strip()]


def _variants(question: str, options: list[str], answers: list[str], config: ItemFields) -> tuple[str, ...]:
    """The texts an item is indexed as: options lettered and bare; calculator notes kept and not."""
    option_forms = [""]
    if config.include_options and options:
        option_forms = ["\n".join(f"{_LETTERS[i] if i < len(_LETTERS) else i + 1}. {o}" for i, o in enumerate(options)),
                        "\n".join(options)]
    answer_forms = [""]
    if config.include_answers and answers:
        answer = "\n".join(answers)
        answer_forms = list(dict.fromkeys([answer, _CALCULATOR_NOTE_RE.sub("", answer)]))
    return tuple(dict.fromkeys("\n".join(filter(None, (question, o, a))) for o in option_forms for a in answer_forms))
