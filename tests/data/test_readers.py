"""Readers: every format, directory expansion, bad-line errors and skipping."""

from __future__ import annotations

import gzip
import json
import os
import re

import pytest

from lmforge.data.document import DataError
from lmforge.data.readers import ReadStats, expand_paths, file_format, read_documents

RECORDS = [
    {"text": "first document", "id": "a1", "lang": "en"},
    {"text": "第二篇文档\n两行", "score": 0.5},
    {"text": "", "note": "empty text is still a record"},
]


def _jsonl_bytes(records, extra_lines=()) -> bytes:
    lines = [json.dumps(r, ensure_ascii=False) for r in records] + list(extra_lines)
    return ("\n".join(lines) + "\n").encode("utf-8")


def test_jsonl_text_and_metadata(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(_jsonl_bytes(RECORDS[:1]) + b"\n   \n" + _jsonl_bytes(RECORDS[1:]))  # blank lines skipped
    docs = list(read_documents(path))
    assert [d.text for d in docs] == [r["text"] for r in RECORDS]
    assert docs[0].id == "a1" and docs[0].metadata["lang"] == "en"
    assert docs[1].id == "a.jsonl:4" and docs[1].metadata == {"score": 0.5, "source": str(path), "line": 4}
    assert "text" not in docs[0].metadata


def test_custom_text_key(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(_jsonl_bytes([{"content": "x", "text": "meta now"}]))
    (doc,) = read_documents([path], text_key="content")
    assert doc.text == "x" and doc.metadata["text"] == "meta now"


def test_compressed_jsonl_matches_plain(tmp_path):
    import zstandard

    data = _jsonl_bytes(RECORDS)
    (tmp_path / "a.jsonl").write_bytes(data)
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(data))
    (tmp_path / "a.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(data))
    texts = {name: [d.text for d in read_documents(tmp_path / name)] for name in ("a.jsonl", "a.jsonl.gz", "a.jsonl.zst")}
    assert texts["a.jsonl.gz"] == texts["a.jsonl.zst"] == texts["a.jsonl"]
    assert file_format("x.JSONL.ZST") == ("jsonl", ".zst") and file_format("x.parquet") == ("parquet", "")
    assert file_format("x.csv.gz") == ("csv", ".gz") and file_format("x.tsv") is None and file_format("x.parquet.gz") is None


def test_txt_modes(tmp_path):
    path = tmp_path / "book.txt"
    path.write_bytes("para one\r\nstill one\r\n\r\n\n  \npara two\n\nlast\n".encode("utf-8"))
    para = list(read_documents(path))
    assert [d.text for d in para] == ["para one\nstill one", "para two", "last"]
    assert [d.metadata["line"] for d in para] == [1, 6, 8]
    lines = list(read_documents(path, txt_mode="line"))
    assert [d.text for d in lines] == ["para one", "still one", "para two", "last"]  # blank lines dropped
    (whole,) = read_documents(path, txt_mode="file")
    assert whole.text.startswith("para one\nstill one\n\n") and whole.text.endswith("last")
    gz = tmp_path / "book.txt.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    assert [d.text for d in read_documents(gz)] == [d.text for d in para]
    with pytest.raises(ValueError, match="txt_mode"):
        list(read_documents(path, txt_mode="sentences"))  # type: ignore[arg-type]


def test_parquet_streams_batches_with_metadata(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 2500  # more than one record batch (1024 rows)
    table = pa.table({"text": [f"doc {i}" for i in range(n)], "url": [f"u{i}" for i in range(n)]})
    pq.write_table(table, tmp_path / "a.parquet", row_group_size=700)
    docs = list(read_documents(tmp_path / "a.parquet"))
    assert [d.text for d in docs] == [f"doc {i}" for i in range(n)]
    assert docs[1500].metadata == {"url": "u1500", "source": str(tmp_path / "a.parquet"), "line": 1501}
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "b.parquet")
    with pytest.raises(DataError, match=r"b\.parquet: no column 'text' \(columns: body\)"):
        list(read_documents(tmp_path / "b.parquet"))
    pq.write_table(pa.table({"text": ["ok", None, "fine"]}), tmp_path / "c.parquet")
    with pytest.raises(DataError, match=r"c\.parquet:2: 'text' is null"):
        list(read_documents(tmp_path / "c.parquet"))
    stats = ReadStats()
    assert [d.text for d in read_documents(tmp_path / "c.parquet", skip_bad=True, stats=stats)] == ["ok", "fine"]
    assert stats.bad_lines == 1


def _open_fds_to(path) -> int:
    fd_dir = "/proc/self/fd"
    count = 0
    for fd in os.listdir(fd_dir):
        try:
            count += os.readlink(os.path.join(fd_dir, fd)) == str(path)
        except OSError:
            pass  # the fd of listdir itself, gone by now
    return count


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc (Linux)")
def test_files_are_closed_when_reading_stops_early_or_fails(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = (tmp_path / "a.parquet").resolve()
    pq.write_table(pa.table({"text": [f"doc {i}" for i in range(3000)]}), path, row_group_size=700)
    docs = read_documents(path)
    assert next(docs).text == "doc 0"
    assert _open_fds_to(path) >= 1  # (guards the check below: the reader does hold the file open)
    docs.close()  # what a consumer's break / error does to the generator
    assert _open_fds_to(path) == 0
    assert len(list(read_documents(path))) == 3000 and _open_fds_to(path) == 0
    bad = (tmp_path / "bad.parquet").resolve()
    pq.write_table(pa.table({"text": ["ok"] * 2000 + [None]}), bad)
    with pytest.raises(DataError, match="is null") as err:
        list(read_documents(bad))
    assert err.value is not None and _open_fds_to(bad) == 0  # closed while the traceback lives on
    bad_jsonl = (tmp_path / "bad.jsonl").resolve()
    bad_jsonl.write_text('{"text": "ok"}\nnot json\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl:2") as err:
        list(read_documents(bad_jsonl))
    assert err.value is not None and _open_fds_to(bad_jsonl) == 0


def test_arrow_stream_as_written_by_datasets(tmp_path):
    import pyarrow as pa

    table = pa.table({"text": ["alpha", "beta"], "n": [1, 2]})
    with pa.OSFile(str(tmp_path / "data-00000-of-00001.arrow"), "wb") as sink:
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
    docs = list(read_documents(tmp_path))
    assert [(d.text, d.metadata["n"]) for d in docs] == [("alpha", 1), ("beta", 2)]


def test_directory_expansion_is_sorted_recursive_and_filtered(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / ".hidden").mkdir()
    for rel in ("b/2.jsonl", "a.txt", "b/1.txt", ".hidden/x.jsonl", "notes.md", ".skip.jsonl"):
        (tmp_path / rel).write_text('{"text": "t"}\n' if rel.endswith("jsonl") else "t\n")
    assert [p.relative_to(tmp_path).as_posix() for p in expand_paths([tmp_path])] == ["a.txt", "b/1.txt", "b/2.jsonl"]
    with pytest.raises(DataError, match="notes.md: unsupported file type"):
        expand_paths([tmp_path / "notes.md"])
    with pytest.raises(DataError, match="missing.jsonl: no such file"):
        list(read_documents(tmp_path / "missing.jsonl"))
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.md").write_text("x")
    with pytest.raises(DataError, match="docs: no supported files"):
        expand_paths([tmp_path / "docs"])

@pytest.mark.parametrize(
    "bad_line, why",
    [
        ("{not json", "Expecting property name"),
        ('["a list"]', "expected a JSON object, got list"),
        ('{"body": "no text"}', "no 'text' field"),
        ('{"text": 42}', "'text' must be a string, got int"),
    ],
)
def test_bad_line_names_file_and_line(tmp_path, bad_line, why):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(_jsonl_bytes(RECORDS[:2], [bad_line, '{"text": "after"}']))
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:3: .*{why}"):
        list(read_documents(path))
    stats = ReadStats()
    docs = list(read_documents(path, skip_bad=True, stats=stats))
    assert [d.text for d in docs] == [RECORDS[0]["text"], RECORDS[1]["text"], "after"]
    assert stats.bad_lines == 1 and stats.documents == 3
    assert stats.bad_examples[0].startswith(f"{path}:3: ")
    assert stats.files == [{"path": str(path), "bytes": path.stat().st_size}]


def test_invalid_utf8_is_a_bad_line(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"good\n\xff\xfe broken\nalso good\n")
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:2: invalid UTF-8"):
        list(read_documents(path, txt_mode="line"))
    stats = ReadStats()
    assert [d.text for d in read_documents(path, txt_mode="line", skip_bad=True, stats=stats)] == ["good", "also good"]
    assert stats.bad_lines == 1


def test_reading_is_lazy(tmp_path):
    # A bad line far down is not touched until the reader gets there: nothing is read ahead.
    path = tmp_path / "big.jsonl"
    path.write_bytes(_jsonl_bytes([{"text": f"d{i}"} for i in range(1000)], ["{bad"]))
    docs = read_documents(path)
    assert next(docs).text == "d0"
    with pytest.raises(DataError, match=":1001:"):
        list(docs)


def test_corrupt_gzip_is_a_data_error(tmp_path):
    path = tmp_path / "a.jsonl.gz"
    path.write_bytes(gzip.compress(_jsonl_bytes(RECORDS))[:-12])  # truncated
    with pytest.raises(DataError, match="a.jsonl.gz: cannot read"):
        list(read_documents(path))


def test_real_samples(shared_data):
    stats = ReadStats()
    docs = list(read_documents(shared_data / "pretrain", txt_mode="line", stats=stats))
    assert [f["path"].rsplit("/", 1)[1] for f in stats.files] == [
        "en_history.txt", "en_shakespeare.txt", "zh_medical.txt", "zh_novel.txt"
    ]
    assert stats.documents == len(docs) > 1000 and all(d.text.strip() for d in docs)
    novel = [d for d in docs if d.metadata["source"].endswith("zh_novel.txt")]
    assert novel[0].text == "天龙八部"
    paragraphs = list(read_documents(shared_data / "pretrain" / "en_history.txt"))
    assert 10 < len(paragraphs) < 100


def test_txt_chunk_mode_cuts_at_paragraph_ends(tmp_path):
    paragraphs = [f"paragraph {i} " + "word " * 30 for i in range(20)]  # ~160 chars each
    path = tmp_path / "book.txt"
    path.write_text("\n\n\n".join(paragraphs) + "\n", encoding="utf-8")
    docs = list(read_documents(path, txt_mode="chunk", chunk_chars=500))
    assert "\n\n".join(d.text for d in docs) == "\n\n".join(paragraphs)  # nothing lost, nothing added
    assert all(d.text.split("\n\n")[0].startswith("paragraph") for d in docs)  # cuts fall between paragraphs
    assert all(500 <= len(d.text) < 500 + 200 for d in docs[:-1])
    assert docs[1].metadata["line"] == 1 + 3 * sum(len(d.text.split("\n\n")) for d in docs[:1])  # first line of the chunk


def test_txt_chunk_mode_without_blank_lines_cuts_at_line_ends(tmp_path):
    lines = [f"第{i}段" + "字" * 95 for i in range(50)]  # one paragraph per line, no blank lines
    path = tmp_path / "novel.txt"
    path.write_text("\n".join(lines), encoding="utf-8")
    docs = list(read_documents(path, txt_mode="chunk", chunk_chars=1000))
    assert "\n".join(d.text for d in docs) == "\n".join(lines)
    assert all(2 * 1000 - 1 <= len(d.text) < 2 * 1000 + 100 for d in docs[:-1])


def test_csv_columns_and_bad_rows(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text('id,text,label\n7,"two\nlines",x\n8,plain,y\n', encoding="utf-8")
    docs = list(read_documents(path))
    assert [(d.id, d.text, d.metadata["label"], d.metadata["line"]) for d in docs] == [("7", "two\nlines", "x", 2), ("8", "plain", "y", 4)]
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nok,x\nnot ok,x,extra\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.csv:3: 3 fields, the header has 2"):
        list(read_documents(bad))
    stats = ReadStats()
    assert [d.text for d in read_documents(bad, skip_bad=True, stats=stats)] == ["ok"]
    assert stats.bad_lines == 1
    with pytest.raises(DataError, match=r"a\.csv:1: no column 'body'"):
        list(read_documents(path, text_key="body"))


def test_datasets_save_to_disk_directories(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.disable_progress_bars()
    datasets.Dataset.from_dict({"text": ["a", "b"], "n": [1, 2]}).save_to_disk(str(tmp_path / "ds"))
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict({"text": ["t1", "t2"]}), "test": datasets.Dataset.from_dict({"text": ["e1"]})}
    ).save_to_disk(str(tmp_path / "dd"))
    docs = list(read_documents(tmp_path / "ds"))
    assert [(d.text, d.metadata["n"]) for d in docs] == [("a", 1), ("b", 2)]
    # A DatasetDict reads its splits in the order dataset_dict.json lists them.
    order = json.loads((tmp_path / "dd" / "dataset_dict.json").read_text())["splits"]
    expected = {"train": ["t1", "t2"], "test": ["e1"]}
    assert [d.text for d in read_documents(tmp_path / "dd")] == [t for split in order for t in expected[split]]


def test_jsonl_byte_ranges_read_every_record_once_with_its_line_number(tmp_path):
    from lmforge.data.readers import jsonl_ranges

    path = tmp_path / "big.jsonl"
    lines = [json.dumps({"text": "x" * (i % 37) + str(i)}) for i in range(500)]
    lines[10] = ""  # a blank line, still counted in line numbers
    lines[20] = "{not json"
    path.write_text("\n".join(lines) + "\n")
    whole = [(d.id, d.text, d.metadata["line"]) for d in read_documents(path, skip_bad=True)]
    for target in (1, 100, 997, 4000):
        ranges = jsonl_ranges(path, target)
        assert ranges[0].start == 0 and ranges[-1].end == path.stat().st_size
        assert all(a.end == b.start for a, b in zip(ranges, ranges[1:]))
        pieces = [(d.id, d.text, d.metadata["line"]) for r in ranges for d in read_documents(path, skip_bad=True, byte_range=r)]
        assert pieces == whole
    ranges = jsonl_ranges(path, 100)
    piece = next(r for r, after in zip(ranges, ranges[1:]) if r.first_line <= 21 < after.first_line)  # holds line 21
    with pytest.raises(DataError, match=r"big\.jsonl:21: "):
        list(read_documents(path, byte_range=piece))
    assert jsonl_ranges(path, 10**9) is None  # small enough: one shard
