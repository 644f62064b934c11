"""The pipeline executor: counts that add up, side files, scoping, resume after a crash, refusals."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from lmforge.config import ConfigError
from lmforge.data.document import DataError, Document
from lmforge.data.pipeline.base import GlobalStep, Step, drop, register_step
from lmforge.data.pipeline.config import build_pipeline, load_pipeline
from lmforge.data.pipeline.executor import run_pipeline
from lmforge.data.pipeline.report import write_report
from lmforge.data.readers import read_documents
from lmforge.data.writers import DocumentWriter


@dataclass
class _MinCharsConfig:
    min_chars: int = 10


@register_step("test_min_chars")
class _MinChars(Step):
    Config = _MinCharsConfig

    def process(self, doc):
        if os.environ.get("LMFORGE_TEST_CRASH_ON") == doc.id:
            raise RuntimeError("simulated crash")
        return doc if len(doc.text) >= self.config.min_chars else drop("too_short")


@register_step("test_upper")
class _Upper(Step):
    def process(self, doc):
        self.count("seen")
        return Document(doc.id, doc.text.upper(), doc.metadata)


@register_step("test_exact")
class _Exact(GlobalStep):
    def collect(self, docs):
        digest = [int(hashlib.sha1(d.text.encode()).hexdigest()[:15], 16) for d in docs]
        return {"id": np.array([d.id for d in docs]), "hash": np.array(digest, dtype=np.int64)}

    def decide(self, collected, work_dir):
        seen, dupes = set(), []
        for path in collected:
            data = np.load(path)
            if "id" not in data.files:  # a shard with nothing left to collect
                continue
            for doc_id, h in zip(data["id"], data["hash"]):
                (dupes.append(str(doc_id)) if h in seen else seen.add(h))
        work_dir.mkdir(parents=True, exist_ok=True)
        (work_dir / "dupes.json").write_text(json.dumps(dupes))
        return {"duplicates": len(dupes), "clusters": [{"id": d} for d in dupes]}

    def setup(self, ctx):
        self.dupes = set(json.loads((ctx.work_dir / "dupes.json").read_text()))

    def process(self, doc):
        return drop("duplicate") if doc.id in self.dupes else doc


def _corpus(tmp_path: Path) -> list[Path]:
    files = []
    for f in range(3):
        records = [{"text": f"shared text number {i % 4}" if i % 3 == 0 else f"file {f} doc {i} " * (i % 5), "lang": "zh" if i % 2 else "en"} for i in range(40)]
        path = tmp_path / "in" / f"part{f}.jsonl"
        path.parent.mkdir(exist_ok=True)
        path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
        files.append(path)
    return files


def _pipeline(tmp_path: Path, **over) -> dict:
    raw = {
        "name": "t",
        "inputs": [str(tmp_path / "in")],
        "workers": 1,
        "batch_size": 7,
        "output": {"dir": str(tmp_path / "out"), "docs_per_file": 9},
        "steps": [
            {"type": "test_min_chars", "min_chars": 12},
            {"type": "test_exact"},
            {"type": "test_upper", "languages": ["zh"]},
        ],
    }
    raw.update(over)
    return raw


def _run(raw: dict, **kw) -> dict:
    cfg, specs = build_pipeline(raw)
    return run_pipeline(cfg, specs, show_progress=False, **kw)


def _output(out: Path) -> list[tuple[str, str]]:
    return [(d.id, d.text) for d in read_documents(out / "data")]


def test_funnel_adds_up_and_every_drop_is_on_file(tmp_path):
    _corpus(tmp_path)
    stats = _run(_pipeline(tmp_path))
    assert stats["checks"] == {"adds_up": True, "problems": []}
    steps = {s["name"]: s for s in stats["steps"]}
    assert stats["totals"]["read"] == 120
    assert steps["test_min_chars"]["dropped"]["too_short"]["docs"] > 0
    # "shared text number k" appears in every file: one copy of each survives.
    assert steps["test_exact"]["dropped"]["duplicate"]["docs"] == steps["test_exact"]["decision"]["summary"]["duplicates"] > 0
    assert steps["test_upper"]["skipped"] == steps["test_upper"]["docs_in"] - steps["test_upper"]["changed"]
    assert steps["test_upper"]["counters"] == {"seen": steps["test_upper"]["changed"]}

    out = tmp_path / "out"
    kept = _output(out)
    assert len(kept) == stats["totals"]["kept"] == len(set(i for i, _ in kept))
    assert all(Path(f["path"]).is_file() for f in stats["output"]["files"])
    assert max(f["documents"] for f in stats["output"]["files"]) <= 9
    dropped = list(read_documents(out / "dropped"))
    assert len(dropped) == stats["totals"]["dropped"]
    assert {d.metadata["drop_reason"] for d in dropped} == {"too_short", "duplicate"}
    assert not set(i for i, _ in kept) & {d.id for d in dropped}
    assert not list((out / "work").glob("seg-*")), "intermediate shards are removed at the end"
    assert json.loads((out / "manifest.json").read_text())["documents"] == len(kept)

    report = write_report(out).read_text()
    assert "✓ documents read = kept + dropped: 120 =" in report
    assert "| test_exact | duplicate |" in report and (out / "funnel.png").stat().st_size > 10_000


def test_resume_after_a_crash_loses_and_duplicates_nothing(tmp_path, monkeypatch):
    _corpus(tmp_path)
    clean = _run(_pipeline(tmp_path, output={"dir": str(tmp_path / "clean"), "docs_per_file": 9}))
    expected = _output(tmp_path / "clean")

    # Crash in the third shard, after it has completed some output files of its own.
    monkeypatch.setenv("LMFORGE_TEST_CRASH_ON", "part2.jsonl:38")
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(_pipeline(tmp_path))
    done = sorted(p.name for p in (tmp_path / "out" / "stats" / "seg-0").glob("*.json"))
    assert done == ["part-00000.json", "part-00001.json"]
    monkeypatch.delenv("LMFORGE_TEST_CRASH_ON")
    resumed = _run(_pipeline(tmp_path))
    assert _output(tmp_path / "out") == expected
    assert resumed["totals"] == clean["totals"] and resumed["checks"]["adds_up"]


def test_other_pipeline_in_the_same_directory_is_refused(tmp_path):
    _corpus(tmp_path)
    _run(_pipeline(tmp_path))
    again = _run(_pipeline(tmp_path))  # same pipeline: everything is done, nothing reruns
    assert again["checks"]["adds_up"]
    changed = _pipeline(tmp_path)
    changed["steps"][0]["min_chars"] = 30
    with pytest.raises(DataError, match="different pipeline"):
        _run(changed)
    stats = _run(changed, force=True)
    assert stats["steps"][0]["config"]["min_chars"] == 30


def test_yaml_mistakes_name_the_line(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("inputs: [x]\nsteps:\n  - type: test_min_chars\n    min_chars: 5\n  - type: test_min_charz\n")
    with pytest.raises(ConfigError, match=r"p\.yaml:5: unknown step type 'test_min_charz'; did you mean 'test_min_chars'"):
        load_pipeline(path)
    path.write_text("inputs: [x]\nsteps:\n  - type: test_min_chars\n    min_char: 5\n")
    with pytest.raises(ConfigError, match=r"p\.yaml:4: unknown key 'steps\[0\]\.min_char'; did you mean 'min_chars'"):
        load_pipeline(path)
    path.write_text("inputs: [x]\nsteps:\n  - type: test_min_chars\n    languages: zh\n")
    with pytest.raises(ConfigError, match=r"p\.yaml:3: steps\[0\]\.languages must be a list"):
        load_pipeline(path)


def test_writer_formats_round_trip_and_abort_leaves_nothing(tmp_path):
    docs = [Document(f"d{i}", f"text {i}", {"n": i, **({"lang": "zh"} if i % 2 else {})}) for i in range(5)]
    for fmt in ("jsonl.zst", "parquet"):
        with DocumentWriter(tmp_path / fmt, "part-00000", fmt, docs_per_file=2) as w:
            for d in docs:
                w.write(d)
        assert [f["documents"] for f in w.files] == [2, 2, 1]
        back = list(read_documents(tmp_path / fmt))
        assert [(d.id, d.text, d.metadata["n"], d.metadata.get("lang")) for d in back] == [
            (d.id, d.text, d.metadata["n"], d.metadata.get("lang")) for d in docs
        ]
    w = DocumentWriter(tmp_path / "aborted", "part-00000", "jsonl.zst", docs_per_file=2)
    for d in docs[:3]:
        w.write(d)
    w.abort()
    assert [p.name for p in (tmp_path / "aborted").iterdir()] == ["part-00000-00000.jsonl.zst"]  # completed file only


def test_records_keep_their_own_ids_and_inputs_are_read_once(tmp_path):
    path = tmp_path / "in" / "a.jsonl"
    path.parent.mkdir()
    records = [{"id": "same", "text": "repeated text here"}, {"id": "same", "text": "repeated text here"}, {"id": 7, "text": "a different one"}]
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    raw = _pipeline(tmp_path, inputs=[str(path)])
    stats = _run(raw)
    # Duplicate record ids do not confuse deduplication (it works on positions); outputs get the ids back.
    assert stats["steps"][1]["dropped"]["duplicate"]["docs"] == 1
    # (test_upper is scoped to zh and these documents have no language tag: their text is unchanged)
    kept = [(d.id, d.text) for d in read_documents(tmp_path / "out" / "data")]
    assert kept == [("same", "repeated text here"), ("7", "a different one")]
    with pytest.raises(DataError, match=r"a\.jsonl: listed more than once"):
        _run(_pipeline(tmp_path, inputs=[str(path.parent), str(path)]), force=True)


def test_a_shard_emptied_before_a_global_step_is_fine(tmp_path):
    _corpus(tmp_path)
    (tmp_path / "in" / "part9.jsonl").write_text('{"text": "tiny"}\n{"text": "small"}\n')  # all too short
    stats = _run(_pipeline(tmp_path))
    assert stats["checks"]["adds_up"] and stats["totals"]["read"] == 122
    assert stats["steps"][0]["dropped"]["too_short"]["docs"] >= 2


def test_fingerprint_follows_resource_files_only(tmp_path):
    from lmforge.data.pipeline.config import build_steps, pipeline_fingerprint, PipelineConfig

    words = tmp_path / "words.txt"
    words.write_text("badword\n")
    (tmp_path / "code").mkdir()  # a directory that happens to share a name with a setting's value
    specs = build_steps([{"type": "langid", "allowed": ["zh", "en", "code"]}, {"type": "unsafe_filter", "extra_word_files": [str(words)]}])
    before = pipeline_fingerprint(PipelineConfig(), specs, [], tmp_path)
    (tmp_path / "code" / "unrelated.txt").write_text("x")
    assert pipeline_fingerprint(PipelineConfig(), specs, [], tmp_path) == before
    words.write_text("badword\nanother\n")
    assert pipeline_fingerprint(PipelineConfig(), specs, [], tmp_path) != before


def test_output_and_inputs_apart_and_force_deletes_only_pipeline_outputs(tmp_path):
    _corpus(tmp_path)
    with pytest.raises(DataError, match="contain one another"):
        _run(_pipeline(tmp_path, output={"dir": str(tmp_path / "in" / "clean")}))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "precious.txt").write_text("keep me")
    with pytest.raises(DataError, match="not a pipeline output directory"):
        _run(_pipeline(tmp_path, output={"dir": str(tmp_path / "mine")}), force=True)
    assert (tmp_path / "mine" / "precious.txt").is_file()


def test_ids_the_reader_would_not_use_are_not_given_back(tmp_path):
    path = tmp_path / "in" / "a.jsonl"
    path.parent.mkdir()
    path.write_text('{"id": null, "text": "first text here"}\n{"id": "", "text": "second text here"}\n')
    _run(_pipeline(tmp_path, inputs=[str(path)]))
    assert [d.id for d in read_documents(tmp_path / "out" / "data")] == ["a.jsonl:1", "a.jsonl:2"]
