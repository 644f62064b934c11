"""Streaming readers for pretraining text: files and directories in, ``Document`` objects out.

Supported formats (chosen by file name):

* ``.jsonl`` / ``.ndjson`` (also ``.gz`` / ``.zst`` compressed): one JSON object per line; the
  text is under ``text_key`` and every other field is kept in ``metadata``.
* ``.txt`` (also ``.gz`` / ``.zst``): ``txt_mode="paragraph"`` makes one document per
  blank-line-separated block, ``"line"`` one per non-empty line (Chinese books often put one
  paragraph per line with no blank lines between), ``"file"`` one per file, and ``"chunk"``
  documents of about ``chunk_chars`` characters cut at paragraph ends (at line ends when a
  text has no blank lines for twice that long) — the mode for books and other long texts.
* ``.csv`` (also ``.gz`` / ``.zst``): a header row naming the columns; the text is the
  ``text_key`` column and the other columns become metadata.
* ``.parquet``: a ``text_key`` column, read in record batches; other columns become metadata.
* ``.arrow``: Arrow IPC files as written by Hugging Face ``datasets.save_to_disk``; a directory
  written by ``save_to_disk`` (a ``Dataset`` or a ``DatasetDict``) reads its data files in the
  order its ``state.json`` lists them.

A directory expands to its supported files, recursively, in sorted order (hidden files skipped),
so the same inputs always give the same document order. Everything streams: memory stays flat
however large the input (except ``txt_mode="file"``, which holds one file's text).

A malformed record raises ``DataError("path:line: why")``; with ``skip_bad=True`` it is counted
in ``ReadStats`` and skipped::

    from lmforge.data.readers import ReadStats, read_documents
    stats = ReadStats()
    for doc in read_documents(["corpus/", "extra.jsonl.zst"], skip_bad=True, stats=stats):
        print(doc.id, len(doc.text), doc.metadata["source"])
    print(stats.documents, stats.bad_lines)
"""

from __future__ import annotations

import gzip
import io
import json
import os
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterable, Iterator, Literal

from lmforge.data.document import DataError, Document

TxtMode = Literal["paragraph", "line", "file", "chunk"]
TXT_MODES = ("paragraph", "line", "file", "chunk")

_COMPRESSIONS = (".gz", ".zst")
_LINE_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".txt": "txt", ".csv": "csv"}
_TABLE_FORMATS = {".parquet": "parquet", ".arrow": "arrow"}
SUPPORTED_SUFFIXES = tuple(
    sorted([*_TABLE_FORMATS, *_LINE_FORMATS, *(f + c for f in _LINE_FORMATS for c in _COMPRESSIONS)])
)
_MAX_BAD_EXAMPLES = 10


@dataclass
class ReadStats:
    """What a read saw; pass one in and read it afterwards (also while iterating)."""

    files: list[dict] = field(default_factory=list)  # {"path": str, "bytes": int} in read order
    documents: int = 0
    bad_lines: int = 0
    bad_examples: list[str] = field(default_factory=list)  # the first few skipped lines' messages

    def bad(self, message: str) -> None:
        self.bad_lines += 1
        if len(self.bad_examples) < _MAX_BAD_EXAMPLES:
            self.bad_examples.append(message)


@dataclass(frozen=True)
class ByteRange:
    """A line-aligned piece of an uncompressed jsonl file: bytes [start, end), first line number."""

    start: int
    end: int
    first_line: int


def jsonl_ranges(path: str | os.PathLike, target_bytes: int) -> list[ByteRange] | None:
    """Cut an uncompressed jsonl file into line-aligned pieces of about ``target_bytes``, so that
    one big file can be read by several workers; None when it is not one or is small enough."""
    path = Path(path)
    size = path.stat().st_size
    if file_format(path) != ("jsonl", "") or size <= target_bytes:
        return None
    cuts = [0]
    with open(path, "rb") as f:
        while cuts[-1] + target_bytes < size:
            f.seek(cuts[-1] + target_bytes - 1)
            f.readline()  # to the start of the next line (a cut right after a newline stays there)
            if f.tell() >= size:
                break
            cuts.append(f.tell())
        bounds = cuts + [size]
        ranges, line = [], 1
        f.seek(0)
        for start, end in zip(bounds, bounds[1:]):
            ranges.append(ByteRange(start, end, line))
            remaining = end - start
            while remaining:  # line numbers: count the newlines in this piece
                chunk = f.read(min(remaining, 1 << 24))
                remaining -= len(chunk)
                line += chunk.count(b"\n")
    return ranges


def file_format(path: str | os.PathLike) -> tuple[str, str] | None:
    """``(format, compression)`` for a supported file name, e.g. ``("jsonl", ".zst")``; else None."""
    name = Path(path).name.lower()
    compression = ""
    for c in _COMPRESSIONS:
        if name.endswith(c):
            compression, name = c, name[: -len(c)]
            break
    suffix = os.path.splitext(name)[1]
    if compression:
        fmt = _LINE_FORMATS.get(suffix)
    else:
        fmt = _LINE_FORMATS.get(suffix) or _TABLE_FORMATS.get(suffix)
    return (fmt, compression) if fmt else None


def expand_paths(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Files as given; directories replaced by their supported files, recursively and sorted."""
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir() and (saved := _saved_dataset_files(p)) is not None:
            out.extend(saved)
        elif p.is_dir():
            found = sorted(
                f
                for f in p.rglob("*")
                if f.is_file()
                and file_format(f)
                and not any(part.startswith(".") for part in f.relative_to(p).parts)
            )
            if not found:
                raise DataError(f"{p}: no supported files in this directory (looked for {', '.join(SUPPORTED_SUFFIXES)})")
            out.extend(found)
        elif p.is_file():
            if not file_format(p):
                raise DataError(f"{p}: unsupported file type (supported: {', '.join(SUPPORTED_SUFFIXES)})")
            out.append(p)
        else:
            raise DataError(f"{p}: no such file or directory")
    return out


def _saved_dataset_files(directory: Path) -> list[Path] | None:
    """The data files of a ``datasets.save_to_disk`` directory in their order; None if it is not one."""
    if (directory / "dataset_dict.json").is_file():  # a DatasetDict: one saved Dataset per split
        try:
            splits = json.loads((directory / "dataset_dict.json").read_text(encoding="utf-8"))["splits"]
        except (ValueError, KeyError) as exc:
            raise DataError(f"{directory / 'dataset_dict.json'}: not a datasets DatasetDict index: {exc}") from None
        files: list[Path] = []
        for split in splits:
            files.extend(_saved_dataset_files(directory / split) or [])
        return files
    state = directory / "state.json"
    if not (state.is_file() and (directory / "dataset_info.json").is_file()):
        return None
    try:
        names = [entry["filename"] for entry in json.loads(state.read_text(encoding="utf-8"))["_data_files"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{state}: not a datasets save_to_disk state file: {exc}") from None
    missing = [n for n in names if not (directory / n).is_file()]
    if missing:
        raise DataError(f"{state}: lists data files that are missing: {', '.join(missing)}")
    return [directory / n for n in names]


def read_documents(
    paths: Iterable[str | os.PathLike] | str | os.PathLike,
    text_key: str = "text",
    skip_bad: bool = False,
    stats: ReadStats | None = None,
    txt_mode: TxtMode = "paragraph",
    chunk_chars: int = 4000,
    byte_range: ByteRange | None = None,
) -> Iterator[Document]:
    """Yield every document in ``paths`` (files or directories), in a deterministic order.

    ``byte_range`` (from ``jsonl_ranges``) reads only that piece of a single jsonl file.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if txt_mode not in TXT_MODES:
        raise ValueError(f"txt_mode must be one of {', '.join(TXT_MODES)}; got {txt_mode!r}")
    if chunk_chars < 1:
        raise ValueError(f"chunk_chars must be >= 1; got {chunk_chars}")
    stats = stats if stats is not None else ReadStats()
    files = expand_paths(paths)
    if byte_range is not None and (len(files) != 1 or file_format(files[0]) != ("jsonl", "")):
        raise ValueError("byte_range applies to one uncompressed jsonl file")
    for path in files:
        stats.files.append({"path": str(path), "bytes": path.stat().st_size})
        fmt, compression = file_format(path)  # type: ignore[misc]  # expand_paths checked it
        if fmt == "jsonl":
            docs = _read_jsonl(path, compression, text_key, skip_bad, stats, byte_range)
        elif fmt == "txt" and txt_mode == "chunk":
            docs = _read_txt_chunks(path, compression, chunk_chars, skip_bad, stats)
        elif fmt == "txt":
            docs = _read_txt(path, compression, txt_mode, skip_bad, stats)
        elif fmt == "csv":
            docs = _read_csv(path, compression, text_key, skip_bad, stats)
        else:
            docs = _read_table(path, fmt, text_key, skip_bad, stats)
        for doc in docs:
            stats.documents += 1
            yield doc


def _open_binary(path: Path, compression: str) -> IO[bytes]:
    if compression == ".gz":
        return gzip.open(path, "rb")
    if compression == ".zst":
        import zstandard

        # A stream reader, not a one-shot decompress: the frame may be far larger than RAM.
        raw = open(path, "rb")
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, closefd=True))
    return open(path, "rb")


def _lines(path: Path, compression: str, byte_range: ByteRange | None = None) -> Iterator[tuple[int, bytes]]:
    try:
        with _open_binary(path, compression) as f:
            if byte_range is None:
                yield from enumerate(f, 1)
                return
            f.seek(byte_range.start)
            position = byte_range.start
            for line_no, raw in enumerate(f, byte_range.first_line):
                if position >= byte_range.end:
                    return
                position += len(raw)
                yield line_no, raw
    except (OSError, EOFError) as exc:  # truncated .gz, corrupt .zst frame, ...
        raise DataError(f"{path}: cannot read ({compression or 'file'}): {exc}") from None
    except Exception as exc:
        if type(exc).__name__ == "ZstdError":
            raise DataError(f"{path}: corrupt zstd data: {exc}") from None
        raise


def _read_jsonl(
    path: Path, compression: str, text_key: str, skip_bad: bool, stats: ReadStats, byte_range: ByteRange | None = None
) -> Iterator[Document]:
    with closing(_lines(path, compression, byte_range)) as lines:  # closed also on an error (see _read_table)
        for line_no, raw in lines:
            if not raw.strip():
                continue  # blank lines (a trailing newline, a hand-edited file) are not records
            try:
                record = json.loads(raw)
                if not isinstance(record, dict):
                    raise ValueError(f"expected a JSON object, got {type(record).__name__}")
                if text_key not in record:
                    keys = ", ".join(list(record)[:8])
                    raise ValueError(f"no '{text_key}' field (fields: {keys}); choose one with --text-key")
                text = record.pop(text_key)
                if not isinstance(text, str):
                    raise ValueError(f"'{text_key}' must be a string, got {type(text).__name__}")
            except ValueError as exc:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
                message = f"{path}:{line_no}: {exc}"
                if not skip_bad:
                    raise DataError(message) from None
                stats.bad(message)
                continue
            doc_id = record.get("id")
            doc_id = str(doc_id) if isinstance(doc_id, (str, int)) else f"{path.name}:{line_no}"
            record["source"], record["line"] = str(path), line_no
            yield Document(doc_id, text, record)


def _read_txt(path: Path, compression: str, mode: str, skip_bad: bool, stats: ReadStats) -> Iterator[Document]:
    block: list[str] = []
    start = 0

    def flush() -> Document | None:
        text = "\n".join(block)
        if mode != "file":
            text = text.strip("\n")
        if not text.strip():
            return None
        return Document(f"{path.name}:{start}", text, {"source": str(path), "line": start})

    for line_no, line in _decoded_lines(path, compression, skip_bad, stats):
        if mode == "file":
            block.append(line)
            start = start or 1
            continue
        if mode == "line" or not line.strip():
            if mode == "line":
                block, start = [line], line_no
            doc = flush()
            block = []
            if doc is not None:
                yield doc
            continue
        if not block:
            start = line_no
        block.append(line)
    if block:
        doc = flush()
        if doc is not None:
            yield doc


def _decoded_lines(path: Path, compression: str, skip_bad: bool, stats: ReadStats) -> Iterator[tuple[int, str]]:
    """(line number, text without the newline) for a UTF-8 text file; bad lines per ``skip_bad``."""
    with closing(_lines(path, compression)) as lines:  # closed also on an error (see _read_table)
        for line_no, raw in lines:
            try:
                yield line_no, raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as exc:
                message = f"{path}:{line_no}: invalid UTF-8 ({exc.reason} at byte {exc.start})"
                if not skip_bad:
                    raise DataError(message) from None
                stats.bad(message)


def _read_txt_chunks(path: Path, compression: str, chunk_chars: int, skip_bad: bool, stats: ReadStats) -> Iterator[Document]:
    # Cut at the first paragraph end (blank line) once a chunk holds chunk_chars; a text with no
    # blank lines (one paragraph per line, as Chinese books often are) is cut at a line end once
    # it reaches twice that, so no chunk grows without bound.
    block: list[str] = []
    size, start = 0, 0

    def flush() -> Document | None:
        text = "\n".join(block).strip("\n")
        if not text.strip():
            return None
        return Document(f"{path.name}:{start}", text, {"source": str(path), "line": start})

    for line_no, line in _decoded_lines(path, compression, skip_bad, stats):
        blank = not line.strip()
        if blank and not block:
            continue
        if (blank and size >= chunk_chars) or (not blank and size >= 2 * chunk_chars):
            doc = flush()
            block, size = [], 0
            if doc is not None:
                yield doc
            if blank:
                continue
        if not block:
            start = line_no
        if blank and block and not block[-1].strip():
            continue  # runs of blank lines collapse to one paragraph break
        block.append(line)
        size += len(line) + 1
    if block:
        doc = flush()
        if doc is not None:
            yield doc


def _read_csv(path: Path, compression: str, text_key: str, skip_bad: bool, stats: ReadStats) -> Iterator[Document]:
    import csv

    # csv needs whole records, and a quoted field may span lines: feed it decoded lines and ask
    # the reader which physical line each record started on.
    lines = ((text + "\n") for _, text in _decoded_lines(path, compression, skip_bad, stats))
    reader = csv.reader(lines)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        raise DataError(f"{path}:1: bad CSV header: {exc}") from None
    if text_key not in header:
        raise DataError(f"{path}:1: no column '{text_key}' (columns: {', '.join(header)}); choose one with --text-key")
    text_col = header.index(text_key)
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            message = f"{path}:{start}: bad CSV record: {exc}"
            if not skip_bad:
                raise DataError(message) from None
            stats.bad(message)
            continue
        if not row:
            continue
        if len(row) != len(header):
            message = f"{path}:{start}: {len(row)} fields, the header has {len(header)}"
            if not skip_bad:
                raise DataError(message)
            stats.bad(message)
            continue
        meta = {k: v for i, (k, v) in enumerate(zip(header, row)) if i != text_col}
        doc_id = meta.get("id") or f"{path.name}:{start}"
        meta["source"], meta["line"] = str(path), start
        yield Document(str(doc_id), row[text_col], meta)


def _read_table(path: Path, fmt: str, text_key: str, skip_bad: bool, stats: ReadStats) -> Iterator[Document]:
    import pyarrow as pa

    row = 0
    batches = _record_batches(path, fmt)
    try:
        for batch in batches:
            if text_key not in batch.schema.names:
                raise DataError(
                    f"{path}: no column '{text_key}' (columns: {', '.join(batch.schema.names)}); choose one with --text-key"
                )
            texts = batch.column(text_key)
            if not (pa.types.is_string(texts.type) or pa.types.is_large_string(texts.type)):
                raise DataError(f"{path}: column '{text_key}' holds {texts.type}, not strings")
            others = batch.drop_columns([text_key]).to_pylist() if batch.num_columns > 1 else None
            for i, text in enumerate(texts.to_pylist()):
                row += 1
                if text is None:
                    message = f"{path}:{row}: '{text_key}' is null"
                    if not skip_bad:
                        raise DataError(message)
                    stats.bad(message)
                    continue
                meta = others[i] if others is not None else {}
                doc_id = meta.get("id")
                doc_id = str(doc_id) if isinstance(doc_id, (str, int)) else f"{path.name}:{row}"
                meta["source"], meta["line"] = str(path), row
                yield Document(doc_id, text, meta)
    finally:
        # Close the file now, also on an error: the traceback a caller keeps would otherwise
        # keep this frame, the suspended reader and its open file alive.
        batches.close()


def _record_batches(path: Path, fmt: str, batch_size: int = 1024):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if fmt == "parquet":
            # Closed on exhaustion and on generator.close() (an early stop, an error above),
            # not only whenever garbage collection gets to it.
            with pq.ParquetFile(path) as pf:
                yield from pf.iter_batches(batch_size=batch_size)
            return
        # `datasets.save_to_disk` writes the Arrow IPC *stream* format; plain .arrow files use
        # the random-access file format. Try the stream first, then the file.
        with pa.memory_map(str(path)) as source:
            try:
                reader = pa.ipc.open_stream(source)
                batches = iter(reader)
            except pa.ArrowInvalid:
                reader = pa.ipc.open_file(source)
                batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
            for batch in batches:
                yield from (batch.slice(o, batch_size) for o in range(0, batch.num_rows, batch_size))
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: cannot read {fmt}: {exc}") from None
