"""One unit of pipeline work: one shard through one segment of steps, in one process.

The executor (``executor.py``) cuts a pipeline into segments at its global steps (dedup) and
runs every (segment, shard) pair as a ``run_task(job)`` call — in this process, in a local
worker process, or as a Ray task; ``job`` is a plain dict so it travels anywhere.

A task writes everything under temporary names and its stats file last: the stats file is the
"done" marker. A task that died half way leaves no marker, and the executor wipes what it left
(``clear_task_outputs``) before running it again, so nothing is lost or written twice.
"""

from __future__ import annotations

import collections
import json
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np

from lmforge.data.document import DataError, Document
from lmforge.data.pipeline.base import Drop, GlobalStep, Step, StepContext
from lmforge.data.pipeline.config import specs_from_dicts
from lmforge.data.readers import ByteRange, ReadStats, read_documents
from lmforge.data.writers import DocumentWriter, read_nested_documents
from lmforge.io import write_json_atomic

Progress = Callable[[int, int], None]  # (documents, bytes) just read


def task_prefix(task: int) -> str:
    return f"part-{task:05d}"


def stats_path(out_dir: Path, segment: int, task: int) -> Path:
    return out_dir / "stats" / f"seg-{segment}" / f"{task_prefix(task)}.json"


def work_file(out_dir: Path, segment: int, task: int) -> Path:
    """The intermediate shard a task of ``segment`` writes for the next segment."""
    return out_dir / "work" / f"seg-{segment}" / f"{task_prefix(task)}-00000.jsonl.zst"


def step_work_dir(out_dir: Path, step_name: str) -> Path:
    return out_dir / "work" / "steps" / step_name


def collect_path(out_dir: Path, step_name: str, task: int) -> Path:
    return step_work_dir(out_dir, step_name) / f"collect-{task:05d}.npz"


def clear_task_outputs(job: dict) -> None:
    """Remove whatever an unfinished run of this task left behind (completed files included)."""
    out, task, prefix = Path(job["out_dir"]), job["task"], task_prefix(job["task"])
    dirs = [out / "dropped" / s["name"] for s in job["steps"]]
    dirs.append((out / "data") if job["final"] else work_file(out, job["segment"], task).parent)
    for d in dirs:
        if d.is_dir():
            for f in d.iterdir():  # "part-00012-..." only: not "part-000120-..." of task 120
                if f.name.startswith((f"{prefix}-", f".{prefix}-")):
                    f.unlink()
    if job["collect"] is not None:
        path = collect_path(out, job["collect"]["name"], task)
        if path.parent.is_dir():
            for f in path.parent.glob(f".{path.name}.tmp-*"):  # from a run killed while saving
                f.unlink()
        path.unlink(missing_ok=True)


class _StepRunner:
    """Applies one step to batches and keeps its counts (the step itself only decides)."""

    def __init__(self, step: Step, languages: list[str] | None, dropped: DocumentWriter | None, examples: int) -> None:
        self.step, self.languages, self.dropped, self.max_examples = step, languages, dropped, examples
        self.stats = {
            "docs_in": 0, "bytes_in": 0, "docs_out": 0, "bytes_out": 0,
            "changed": 0, "skipped": 0, "dropped": {}, "examples": {}, "seconds": 0.0,
        }  # fmt: skip

    def __call__(self, batch: list[Document]) -> list[Document]:
        st = self.stats
        st["docs_in"] += len(batch)
        st["bytes_in"] += sum(len(d.text.encode("utf-8")) for d in batch)
        if self.languages is None:
            chosen = batch
        else:  # out-of-scope documents pass untouched (and are counted as skipped)
            chosen = [d for d in batch if d.metadata.get("lang") in self.languages]
            st["skipped"] += len(batch) - len(chosen)
        # The texts as they came in: a step may change a document in place and return it.
        before = {id(doc): doc.text for doc in batch}
        t0 = time.perf_counter()
        answers = self.step.process_batch(chosen) if chosen else []
        st["seconds"] += time.perf_counter() - t0
        if len(answers) != len(chosen):
            raise RuntimeError(f"step '{self.step.name}' answered {len(answers)} times for {len(chosen)} documents")
        verdict = {id(doc): answer for doc, answer in zip(chosen, answers)}
        kept: list[Document] = []
        for doc in batch:
            answer = verdict.get(id(doc), doc)
            if isinstance(answer, Drop):
                self._drop(doc, answer.reason, before[id(doc)])
                continue
            if not isinstance(answer, Document):
                raise RuntimeError(f"step '{self.step.name}' returned {type(answer).__name__}, not a Document or drop()")
            if answer.text is not before[id(doc)] and answer.text != before[id(doc)]:
                st["changed"] += 1
            kept.append(answer)
        st["docs_out"] += len(kept)
        st["bytes_out"] += sum(len(d.text.encode("utf-8")) for d in kept)
        return kept

    def _drop(self, doc: Document, reason: str, text_in: str) -> None:
        n_bytes = len(text_in.encode("utf-8"))  # as bytes_in counted it, before the step
        entry = self.stats["dropped"].setdefault(reason, {"docs": 0, "bytes": 0})
        entry["docs"] += 1
        entry["bytes"] += n_bytes
        examples = self.stats["examples"].setdefault(reason, [])
        if len(examples) < self.max_examples:
            examples.append({"id": doc.id, "text": doc.text[:400]})
        if self.dropped is not None:  # the text as the step received it
            self.dropped.write(Document(doc.id, text_in, {**doc.metadata, "drop_reason": reason, "drop_step": self.step.name}))

    def finish(self) -> dict:
        self.stats["counters"] = dict(self.step.counters)
        self.stats["seconds"] = round(self.stats["seconds"], 4)
        return self.stats


# Steps set up in this process, reused by every shard it runs in the same pipeline run: models,
# word lists and decisions load once per worker, not once per shard.
_STEP_CACHE: dict[str, Step] = {}
_CACHE_RUN: str | None = None


def _cached_step(spec, spec_dict: dict, job: dict, out: Path) -> Step:
    global _CACHE_RUN
    if job["run_id"] != _CACHE_RUN:  # another run (or rerun) in this process: nothing carries over
        release_steps()
        _CACHE_RUN = job["run_id"]
    key = json.dumps([spec_dict, job["base_dir"], job["seed"]], sort_keys=True, default=str)
    step = _STEP_CACHE.get(key)
    if step is None:
        step = spec.make()
        step.setup(StepContext(Path(job["base_dir"]), step_work_dir(out, spec.name), job["seed"]))
        _STEP_CACHE[key] = step
    step.counters = collections.Counter()  # counts are per shard
    return step


def release_steps() -> None:
    """Close and forget the steps this process has set up."""
    global _CACHE_RUN
    for step in _STEP_CACHE.values():
        step.close()
    _STEP_CACHE.clear()
    _CACHE_RUN = None


def _documents(job: dict, read_stats: ReadStats) -> "iter[Document]":
    source = job["input"]
    if source["kind"] == "work":
        if Path(source["path"]).is_file():
            yield from read_nested_documents(source["path"])
        elif source["documents"]:  # no file is fine only when the previous segment kept nothing
            raise DataError(f"{source['path']}: missing, but its shard is marked done with {source['documents']} documents; rerun with --force")
        return
    reader = job["reader"]
    label = source["label"]
    byte_range = ByteRange(*source["range"]) if source.get("range") else None
    for doc in read_documents(
        [source["path"]], text_key=reader["text_key"], skip_bad=reader["skip_bad"], stats=read_stats,
        txt_mode=reader["txt_mode"], chunk_chars=reader["chunk_chars"], byte_range=byte_range,
    ):  # fmt: skip
        # Inside the pipeline ids are positions (file:line), unique across the run, which dedup
        # decisions rely on; a record's own `id` field waits in its metadata and is given back
        # when the document is written out (`_output_document`).
        doc.id = f"{label}:{doc.metadata.get('line', 0)}"
        yield doc


def _output_document(doc: Document) -> Document:
    """The document as written to the clean shards: with its record's own id where it had one
    (by the readers' rule: a string or an integer; an empty string is none)."""
    own = doc.metadata.get("id")
    if not isinstance(own, (str, int)) or own == "":
        return doc
    metadata = dict(doc.metadata)
    return Document(str(metadata.pop("id")), doc.text, metadata)


def run_task(job: dict, progress: Progress | None = None) -> dict:
    """Run one shard through one segment; returns (and writes) the task's stats."""
    out = Path(job["out_dir"])
    clear_task_outputs(job)
    specs = specs_from_dicts(job["steps"])
    output = job["output"]
    runners: list[_StepRunner] = []
    writers: list[DocumentWriter] = []
    for spec, spec_dict in zip(specs, job["steps"]):
        step = _cached_step(spec, spec_dict, job, out)
        keep = output["keep_dropped"] if spec.keep_dropped is None else spec.keep_dropped
        dropped = DocumentWriter(out / "dropped" / spec.name, task_prefix(job["task"]), "jsonl.zst", 1 << 40) if keep else None
        if dropped is not None:
            writers.append(dropped)
        runners.append(_StepRunner(step, spec.languages, dropped, output["examples_per_reason"]))
    collector: GlobalStep | None = None
    collect_languages = None
    if job["collect"] is not None:
        (cspec,) = specs_from_dicts([job["collect"]])
        collector = cspec.make()
        collector.shard = job["task"]
        collect_languages = cspec.languages
    if job["final"]:
        sink = DocumentWriter(out / "data", task_prefix(job["task"]), output["format"], output["docs_per_file"])
    else:
        sink = DocumentWriter(work_file(out, job["segment"], job["task"]).parent, task_prefix(job["task"]), "jsonl.zst", 1 << 40, nested_metadata=True)
    writers.append(sink)
    read_stats = ReadStats()
    collected: dict[str, list[np.ndarray]] = {}
    docs_read = 0
    collect_seconds = 0.0
    t0 = time.perf_counter()
    try:
        batch: list[Document] = []
        stream = _documents(job, read_stats)
        while True:
            batch = [doc for _, doc in zip(range(job["batch_size"]), stream)]
            if not batch:
                break
            docs_read += len(batch)
            if progress is not None:
                progress(len(batch), sum(len(d.text.encode("utf-8")) for d in batch))
            for runner in runners:
                batch = runner(batch)
                if not batch:
                    break
            if collector is not None and batch:
                scoped = batch if collect_languages is None else [d for d in batch if d.metadata.get("lang") in collect_languages]
                if scoped:
                    t1 = time.perf_counter()
                    for key, rows in collector.collect(scoped).items():
                        collected.setdefault(key, []).append(np.asarray(rows))
                    collect_seconds += time.perf_counter() - t1
            for doc in batch:
                sink.write(_output_document(doc) if job["final"] else doc)
        for w in writers:
            w.close()
        files = sink.files
    except BaseException:
        for w in writers:
            w.abort()
        release_steps()  # a step that failed half way is not reused
        raise
    if collector is not None:
        path = collect_path(out, collector.name, job["task"])
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.npz")
        np.savez(tmp, **{k: np.concatenate(v) for k, v in collected.items()})
        os.replace(tmp, path)
    stats = {
        "segment": job["segment"],
        "task": job["task"],
        "input": job["input"]["path"],
        "read": {"documents": docs_read, "bad_lines": read_stats.bad_lines, "bad_examples": read_stats.bad_examples}
        if job["input"]["kind"] == "raw" else None,
        "steps": {r.step.name: r.finish() for r in runners},
        "collect": {"step": collector.name, "seconds": round(collect_seconds, 4)} if collector is not None else None,
        "output": {"files": files, "documents": sum(f["documents"] for f in files), "bytes": sum(f["bytes"] for f in files)},
        "seconds": round(time.perf_counter() - t0, 3),
    }  # fmt: skip
    write_json_atomic(stats_path(out, job["segment"], job["task"]), stats)
    return stats
