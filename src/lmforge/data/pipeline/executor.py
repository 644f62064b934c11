"""Run a pipeline over many shards: in parallel, resumable, with counts that add up.

::

    from lmforge.data.pipeline.config import load_pipeline
    from lmforge.data.pipeline.executor import run_pipeline
    cfg, specs = load_pipeline("recipes/data/default.yaml", ["output.dir=runs/clean"])
    summary = run_pipeline(cfg, specs, base_dir=Path("recipes/data"))

How the work is cut: every input file is one shard (a task), except that an uncompressed jsonl
file bigger than ``shard_bytes`` is cut into line-aligned byte ranges, one shard each. Global steps (deduplication) need
the whole corpus, so they cut the step list into segments: segment 0 runs the steps before the
first global step on every shard and lets that step ``collect`` from what survives; then the
step ``decide``s once; segment 1 starts with that step applying its decision, and so on. Only
the last segment writes the clean shards to ``output.dir/data``.

What makes it resumable: a task's stats file (``stats/seg-S/part-NNNNN.json``) is written after
all its outputs, so it marks the task done; a decision's ``decide.json`` marks the decision
done. A rerun of the same pipeline on the same inputs skips whatever is marked and redoes the
rest from a clean slate (``task.clear_task_outputs``), so a crash loses and duplicates nothing.
A different pipeline in the same output directory is refused (``force=True`` starts over).

Executors: ``local`` (worker processes, spawned, one task each at a time; one worker runs in
this process) or ``ray`` (one Ray task per shard; a local Ray instance unless ``ray_address``).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

from lmforge.config import to_dict
from lmforge.data.document import DataError
from lmforge.data.pipeline.config import PipelineConfig, StepSpec, pipeline_fingerprint, spec_to_dict
from lmforge.data.pipeline.stats import aggregate_stats
from lmforge.data.pipeline.task import collect_path, release_steps, run_task, stats_path, step_work_dir, work_file
from lmforge.data.readers import expand_paths, jsonl_ranges
from lmforge.io import write_json_atomic


def plan_segments(specs: list[StepSpec]) -> list[tuple[list[StepSpec], StepSpec | None]]:
    """[(steps run in the segment, global step collecting at its end or None), ...]."""
    segments: list[tuple[list[StepSpec], StepSpec | None]] = []
    current: list[StepSpec] = []
    for spec in specs:
        if spec.is_global:
            segments.append((current, spec))
            current = [spec]  # the next segment starts by applying this step's decision
        else:
            current.append(spec)
    segments.append((current, None))
    return segments


def _file_labels(files: list[Path]) -> list[str]:
    """Short unique names for the input files (document ids are ``label:line``)."""
    names = [f.name for f in files]
    if len(set(names)) == len(names):
        return names
    root = Path(os.path.commonpath([str(f.resolve()) for f in files]))
    return [str(f.resolve().relative_to(root)) for f in files]


def _plan_shards(files: list[Path], shard_bytes: int) -> list[dict]:
    """One shard per file, except big uncompressed jsonl files: one per line-aligned byte range."""
    shards = []
    for f, label in zip(files, _file_labels(files)):
        ranges = jsonl_ranges(f, shard_bytes)
        if ranges is None:
            shards.append({"path": str(f), "label": label, "bytes": f.stat().st_size, "range": None})
        else:
            shards += [
                {"path": str(f), "label": label, "bytes": r.end - r.start, "range": [r.start, r.end, r.first_line]}
                for r in ranges
            ]
    return shards


def _workers(cfg: PipelineConfig) -> int:
    if cfg.workers:
        return cfg.workers
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _check_apart(out: Path, inputs: list[Path]) -> None:
    """The output directory and the inputs must not contain one another: outputs would be read
    as inputs on the next run, and --force would delete inputs."""
    out = out.resolve()
    for p in inputs:
        p = p.resolve()
        if out == p or out.is_relative_to(p) or p.is_relative_to(out):
            raise DataError(f"{out}: the output directory and the input {p} contain one another; choose another output.dir")


def _check_or_start(out: Path, fingerprint: str, meta: dict, force: bool) -> None:
    marker = out / "pipeline.json"
    if force and out.exists():
        if any(out.iterdir()) and not marker.is_file():
            raise DataError(f"{out}: not a pipeline output directory (no pipeline.json); --force deletes only those")
        shutil.rmtree(out)
    if marker.is_file():
        previous = json.loads(marker.read_text(encoding="utf-8")).get("fingerprint")
        if previous != fingerprint:
            raise DataError(
                f"{out}: holds the output of a different pipeline, or of inputs or step resources that have "
                f"changed since (fingerprint {previous}, now {fingerprint}); choose another output.dir, "
                "or pass --force to start over"
            )
        return
    if out.exists() and any(out.iterdir()):
        raise DataError(f"{out}: not empty and not a pipeline output directory; choose another output.dir or pass --force")
    write_json_atomic(marker, meta)


def run_pipeline(
    cfg: PipelineConfig,
    specs: list[StepSpec],
    base_dir: str | Path = ".",
    force: bool = False,
    show_progress: bool = True,
) -> dict:
    """Run (or resume) the pipeline; returns the aggregated stats (also in ``output.dir/stats.json``)."""
    if not cfg.inputs:
        raise DataError("the pipeline has no inputs; set `inputs:` in its YAML or pass input paths")
    if not specs:
        raise DataError("the pipeline has no steps")
    files = expand_paths(cfg.inputs)
    seen: dict[Path, Path] = {}
    for f in files:  # a file read twice would be "deduplicated" against itself, both copies lost
        if f.resolve() in seen:
            raise DataError(f"{f}: listed more than once among the inputs (directly, through a directory or a link)")
        seen[f.resolve()] = f
    out = Path(cfg.output.dir)
    _check_apart(out, [Path(p) for p in cfg.inputs])
    file_info = [{"path": str(f.resolve()), "bytes": f.stat().st_size, "mtime": int(f.stat().st_mtime)} for f in files]
    fingerprint = pipeline_fingerprint(cfg, specs, file_info, Path(base_dir))
    meta = {"fingerprint": fingerprint, "name": cfg.name, "config": to_dict(cfg), "files": file_info}
    _check_or_start(out, fingerprint, meta, force)

    shards = _plan_shards(files, cfg.shard_bytes)
    segments = plan_segments(specs)
    if any(s.languages for s in specs) and "langid" not in [s.type for s in specs]:
        from lmforge.cli_common import console

        console.print(
            "[yellow]warning:[/] steps scoped with `languages:` act only on documents whose metadata has a "
            "`lang`; this pipeline has no langid step to set it"
        )
    base = {
        "run_id": uuid.uuid4().hex,  # lets workers tell this run from an earlier one in the same process
        "out_dir": str(out.resolve()), "base_dir": str(Path(base_dir).resolve()), "seed": cfg.seed,
        "reader": to_dict(cfg.reader), "output": to_dict(cfg.output), "batch_size": cfg.batch_size,
    }  # fmt: skip
    started = time.perf_counter()
    decisions: dict[str, dict] = {}
    with _Workers(cfg, len(shards)) as workers:
        for s, (steps, collect) in enumerate(segments):
            if steps and steps[0].is_global and s > 0:
                decisions[steps[0].name] = _decide(out, steps[0], len(shards), base)
            jobs = []
            for t, shard in enumerate(shards):
                if s == 0:
                    source = {"kind": "raw", **shard}
                else:  # the text bytes the previous segment wrote for this shard
                    previous = json.loads(stats_path(out, s - 1, t).read_text(encoding="utf-8"))
                    source = {
                        "kind": "work", "path": str(work_file(out, s - 1, t)),
                        "bytes": previous["output"]["bytes"], "documents": previous["output"]["documents"],
                    }  # fmt: skip
                jobs.append({
                    **base, "segment": s, "task": t, "input": source, "final": s == len(segments) - 1,
                    "steps": [spec_to_dict(x) for x in steps], "collect": spec_to_dict(collect) if collect else None,
                })  # fmt: skip
            todo = [j for j in jobs if not stats_path(out, s, j["task"]).is_file()]
            label = f"segment {s + 1}/{len(segments)}" if len(segments) > 1 else cfg.name
            workers.run(todo, label, show_progress)
    summary = aggregate_stats(out, cfg, specs, segments, decisions, len(shards), len(files), seconds=time.perf_counter() - started)
    write_json_atomic(out / "stats.json", summary)
    write_json_atomic(out / "manifest.json", {
        "name": cfg.name, "fingerprint": fingerprint, "format": cfg.output.format,
        "files": summary["output"]["files"], "documents": summary["output"]["documents"], "bytes": summary["output"]["bytes"],
    })  # fmt: skip
    for seg_dir in (out / "work").glob("seg-*"):  # intermediate shards are not needed once all is done
        shutil.rmtree(seg_dir, ignore_errors=True)
    return summary


def _decide(out: Path, spec: StepSpec, n_tasks: int, base: dict) -> dict:
    work_dir = step_work_dir(out, spec.name)
    marker = work_dir / "decide.json"
    if marker.is_file():
        return json.loads(marker.read_text(encoding="utf-8"))
    step = spec.make()  # no setup(): that loads the decision this call is about to make
    paths = [collect_path(out, spec.name, t) for t in range(n_tasks)]
    missing = [p for p in paths if not p.is_file()]
    if missing:  # every finished shard writes one, even when empty: this output was tampered with
        raise DataError(f"{missing[0]}: missing although its shard is marked done; rerun with --force")
    t0 = time.perf_counter()
    summary = step.decide(paths, work_dir)
    result = {"summary": summary, "seconds": round(time.perf_counter() - t0, 3)}
    write_json_atomic(marker, result)
    return result


class _Workers:
    """Where tasks run: this process, a pool of spawned worker processes, or Ray.

    One pool (or Ray session) serves every segment, so worker start-up — imports, compiled
    tables — is paid once per run, not once per segment.
    """

    def __init__(self, cfg: PipelineConfig, n_shards: int) -> None:
        self.cfg = cfg
        self.size = min(_workers(cfg), max(1, n_shards))  # more workers than shards would idle
        self._pool: ProcessPoolExecutor | None = None
        self._queue = None

    def __enter__(self) -> "_Workers":
        return self

    def __exit__(self, *exc) -> None:
        release_steps()  # the steps this process set up (the one-worker case)
        if self._pool is not None:
            # On an error, do not start the shards still queued; finished ones stay done.
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def run(self, jobs: list[dict], label: str, show_progress: bool) -> None:
        from lmforge.data.pipeline.progress import PipelineProgress

        total = sum(j["input"]["bytes"] for j in jobs)
        with PipelineProgress(label, total, len(jobs), enabled=show_progress) as bar:
            if not jobs:
                return
            if self.cfg.executor == "ray":
                from lmforge.data.pipeline.ray_executor import run_on_ray

                run_on_ray(jobs, self.cfg.ray_address, self.size, on_done=bar.task_done)
            elif min(self.size, len(jobs)) == 1 and self._pool is None:
                for job in jobs:
                    run_task(job, progress=bar.advance)
                    bar.task_done()
            else:
                self._run_in_pool(jobs, bar)

    def _run_in_pool(self, jobs: list[dict], bar) -> None:
        if self._pool is None:
            import multiprocessing as mp

            # spawn, not fork: steps may hold torch models and threads, which fork does not survive.
            ctx = mp.get_context("spawn")
            self._queue = ctx.Queue()
            self._pool = ProcessPoolExecutor(
                max_workers=self.size, mp_context=ctx, initializer=_init_worker, initargs=(self._queue,)
            )
        pending = {self._pool.submit(_run_in_worker, job) for job in jobs}
        while pending:
            done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            bar.drain(self._queue)
            for future in done:
                future.result()  # a worker's exception surfaces here, with its traceback
                bar.task_done()
        bar.drain(self._queue)


_progress_queue = None  # set in each worker process by _init_worker


def _init_worker(queue) -> None:
    global _progress_queue
    _progress_queue = queue


def _run_in_worker(job: dict) -> dict:
    queue = _progress_queue
    return run_task(job, progress=(lambda docs, n_bytes: queue.put((docs, n_bytes))) if queue is not None else None)
