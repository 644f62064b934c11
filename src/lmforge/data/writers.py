"""Document shard writers: ``jsonl.zst`` or parquet files, each written atomically.

A writer fills ``{prefix}-00000.jsonl.zst``, ``{prefix}-00001.jsonl.zst``, ... with at most
``docs_per_file`` documents each (a parquet file is assembled in memory, so keep its
``docs_per_file`` moderate; jsonl.zst streams). Every file is written under a temporary name and renamed into
place when it is complete, so a reader (or a resumed run) never sees half a file; ``abort()``
(or leaving the ``with`` block on an exception) removes what was not finished.

Records are flat: ``{"id": ..., "text": ..., **metadata}``, which lmforge's readers turn back
into the same ``Document`` (``id`` → id, ``text`` → text, the rest → metadata)::

    with DocumentWriter("out/data", prefix="part-00003", fmt="jsonl.zst") as w:
        for doc in docs:
            w.write(doc)
    print(w.files)   # [{"path": ".../part-00003-00000.jsonl.zst", "documents": 812, "bytes": 3145728}]
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

from lmforge.data.document import Document

OutputFormat = Literal["jsonl.zst", "parquet"]
OUTPUT_FORMATS = ("jsonl.zst", "parquet")
_PARQUET_ROW_GROUP = 1024


def document_record(doc: Document) -> dict:
    """The flat record a document is stored as (metadata keys named id/text are renamed)."""
    record = {"id": doc.id, "text": doc.text}
    for key, value in doc.metadata.items():
        if key == "id" and value == doc.id:
            continue  # readers keep a record's own id field in metadata too
        record[f"meta_{key}" if key in ("id", "text") else key] = value
    return record


class DocumentWriter:
    """Writes documents into numbered shard files; ``files`` lists what was completed."""

    def __init__(
        self,
        out_dir: str | Path,
        prefix: str = "part",
        fmt: OutputFormat = "jsonl.zst",
        docs_per_file: int = 100_000,
        compression_level: int = 3,
        nested_metadata: bool = False,
    ) -> None:
        if nested_metadata and fmt != "jsonl.zst":
            raise ValueError("nested_metadata needs the jsonl.zst format")
        if fmt not in OUTPUT_FORMATS:
            raise ValueError(f"output format must be one of {', '.join(OUTPUT_FORMATS)}; got {fmt!r}")
        if docs_per_file < 1:
            raise ValueError(f"docs_per_file must be >= 1; got {docs_per_file}")
        self.out_dir = Path(out_dir)
        self.prefix, self.fmt, self.docs_per_file = prefix, fmt, docs_per_file
        self.compression_level = compression_level
        # nested: {"id", "text", "metadata": {...}}, an exact round trip (read_nested_documents);
        # for a pipeline's own intermediate files, where nothing may be renamed on the way.
        self.nested_metadata = nested_metadata
        self.files: list[dict] = []
        self._index = 0
        self._count = 0
        self._bytes = 0
        self._tmp: Path | None = None
        self._final: Path | None = None
        self._sink = None  # zstd stream over self._raw (jsonl.zst)
        self._raw = None
        self._rows: list[dict] = []

    # --- public ---------------------------------------------------------------------------------

    def write(self, doc: Document) -> None:
        if self._tmp is None:
            self._open()
        record = {"id": doc.id, "text": doc.text, "metadata": doc.metadata} if self.nested_metadata else document_record(doc)
        if self.fmt == "jsonl.zst":
            self._sink.write(json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n")
        else:
            self._rows.append(record)
        self._count += 1
        self._bytes += len(doc.text.encode("utf-8"))
        if self._count >= self.docs_per_file:
            self._finish()

    def close(self) -> list[dict]:
        """Complete the open file (if any) and return every file written."""
        if self._tmp is not None:
            self._finish()
        return self.files

    def abort(self) -> None:
        """Remove the unfinished file; completed files stay (a caller may remove them too)."""
        try:
            if self._sink is not None:
                self._sink.close()
            if self._raw is not None:
                self._raw.close()
        finally:
            if self._tmp is not None and self._tmp.exists():
                self._tmp.unlink()
            self._sink = self._raw = self._tmp = None
            self._rows = []

    def __enter__(self) -> "DocumentWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # --- internals ------------------------------------------------------------------------------

    def _open(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        name = f"{self.prefix}-{self._index:05d}.{self.fmt}"
        self._final = self.out_dir / name
        self._tmp = self.out_dir / f".{name}.tmp-{os.getpid()}"
        self._count = self._bytes = 0
        if self.fmt == "jsonl.zst":
            import zstandard

            self._raw = open(self._tmp, "wb")
            self._sink = zstandard.ZstdCompressor(level=self.compression_level).stream_writer(self._raw, closefd=False)
        else:
            self._rows = []  # parquet: the file is written whole when it is complete (see _write_parquet)

    def _write_parquet(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        # One table per file: documents may carry different metadata keys, and a parquet file
        # has one schema, so the schema is the union of every row's keys (absent -> null).
        columns: dict[str, list] = {}
        for row in self._rows:
            for key in row:
                columns.setdefault(key, [])
        for key, values in columns.items():
            values.extend(row.get(key) for row in self._rows)
        try:
            table = pa.Table.from_pydict(columns)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
            raise ValueError(
                f"{self._final}: a metadata field changes type between documents ({exc}); "
                "use the jsonl.zst output format for such metadata"
            ) from None
        pq.write_table(table, self._tmp, compression="zstd", row_group_size=_PARQUET_ROW_GROUP)
        self._rows = []

    def _finish(self) -> None:
        if self.fmt == "jsonl.zst":
            self._sink.close()
            self._raw.flush()
            os.fsync(self._raw.fileno())
            self._raw.close()
        else:
            self._write_parquet()
        os.replace(self._tmp, self._final)
        self.files.append({"path": str(self._final), "documents": self._count, "bytes": self._bytes})
        self._sink = self._raw = self._tmp = None
        self._index += 1


def read_nested_documents(path: str | Path):
    """Documents back from a ``nested_metadata`` jsonl.zst file, exactly as they were written."""
    import io

    import zstandard

    with open(path, "rb") as raw, io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(raw), encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            yield Document(record["id"], record["text"], record["metadata"])
