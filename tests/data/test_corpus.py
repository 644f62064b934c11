"""The built-in demo corpus: roff conversion, source shares, and user-input fingerprints."""

from __future__ import annotations

import gzip
import json

import pytest

from lmforge.data.corpus import CorpusConfig, build_corpus, fingerprint_inputs, roff_to_text

MAN_PAGE = r""".\" generated page
.TH LS "1" "September 2022" "GNU coreutils 9.1" "User Commands"
.SH NAME
ls \- list directory contents
.SH DESCRIPTION
.PP
Sort entries alphabetically if none of \fB\-cftuvSUX\fR nor \fB\-\-sort\fR is specified.
.TP
\fB\-a\fR, \fB\-\-all\fR
do not ignore entries starting with .
.B bold words
.if n .ne 4
"""


def test_roff_to_text_keeps_prose_and_drops_markup():
    text = roff_to_text(MAN_PAGE)
    assert "ls - list directory contents" in text
    assert "none of -cftuvSUX nor --sort is specified" in text
    assert "-a, --all" in text and "bold words" in text
    assert "\\f" not in text and ".TP" not in text and "generated page" not in text and ".if" not in text


def test_build_corpus_respects_source_shares(tmp_path):
    man = tmp_path / "man" / "man1"
    man.mkdir(parents=True)
    for i in range(30):
        page = MAN_PAGE.replace("ls", f"tool{i}") * 3
        (man / f"tool{i}.1.gz").write_bytes(gzip.compress(page.encode()))
    cfg = CorpusConfig(max_bytes=60_000, sources={"stdlib": 0.5, "man": 0.2}, man_dirs=[str(tmp_path / "man")])
    stats = build_corpus(cfg, tmp_path / "out" / "corpus.jsonl")
    docs = [json.loads(line) for line in (tmp_path / "out" / "corpus.jsonl").open()]
    assert len(docs) == stats["documents"] > 0
    assert sum(len(d["text"].encode()) for d in docs) == stats["bytes"] <= cfg.max_bytes
    by = stats["by_source"]
    assert 0 < by["man"]["bytes"] <= 0.2 * cfg.max_bytes
    assert 0 < by["stdlib"]["bytes"] <= 0.5 * cfg.max_bytes
    assert {d["source"] for d in docs} == {"stdlib", "man"}
    assert json.loads((tmp_path / "out" / "corpus.stats.json").read_text()) == stats
    # Deterministic: the same settings give the same file.
    build_corpus(cfg, tmp_path / "again.jsonl")
    assert (tmp_path / "again.jsonl").read_bytes() == (tmp_path / "out" / "corpus.jsonl").read_bytes()


def test_bad_settings_and_missing_inputs_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown corpus sources"):
        CorpusConfig(sources={"web": 1.0})
    with pytest.raises(ValueError, match="sum to at most 1"):
        CorpusConfig(sources={"stdlib": 0.8, "man": 0.8})
    with pytest.raises(FileNotFoundError, match="corpus.inputs: .*nope"):
        fingerprint_inputs([str(tmp_path / "nope")])
    (tmp_path / "a.jsonl").write_text('{"text": "x"}\n')
    (fp,) = fingerprint_inputs([str(tmp_path)])
    assert fp["bytes"] == 14 and fp["path"].endswith("a.jsonl")
