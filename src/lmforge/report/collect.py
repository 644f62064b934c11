"""Read what a run left on disk into one JSON-friendly dict: the report card's data.

Two kinds of directory are understood:

* a pipeline run of ``lmforge run`` (``run.json`` and ``{stage}-{key}/`` directories, each with
  the ``stage.json`` marker holding the stage's seconds, settings and summary);
* a single training run (``metrics.jsonl`` and ``checkpoints/``), e.g. from ``lmforge sft``.

Anything missing is skipped with a line in ``notes``; malformed files are a ``DataError`` naming
``file:line``.

Usage::

    from lmforge.report.collect import collect_run
    notes = []
    data = collect_run("runs/demo", notes)
    data["training"][0]["final"]["eval_loss"]
"""

from __future__ import annotations

import json
import math
import os
import statistics
from pathlib import Path

from lmforge.data.document import DataError

# The order of ``lmforge run``'s stage graph; other stage names follow, oldest first.
STAGE_ORDER = ("corpus", "clean", "tokenizer", "shards", "pretrain", "sample", "synth", "sft", "lora", "dpo", "distill", "evaluate")
METRICS_FILE = "metrics.jsonl"
# Directories that hold bulk data, never evaluation results: not walked when looking for them.
_NOT_WALKED = {"tensorboard", "dropped", "work", "stats", "data", "tokenizer", "shards"}


def read_json(path: str | Path):
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None


def read_metrics_strict(path: str | Path, notes: list[str] | None = None) -> list[dict]:
    """Every record of a ``metrics.jsonl``; a malformed line is a ``DataError`` naming file:line.

    A torn last line (no final newline: the writer was killed mid-line) is skipped with a note,
    as ``lmforge.train.metrics.read_metrics`` does; anywhere else a bad line means a damaged
    file, and a report drawn from it would be silently wrong.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    records = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if lineno == len(lines):  # the last piece, with no newline after it
                if notes is not None:
                    notes.append(f"{path}:{lineno}: torn last line skipped (the run was stopped mid-write)")
                continue
            raise DataError(f"{path}:{lineno}: malformed metrics line ({exc.msg}): {line[:80]!r}") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}:{lineno}: a metrics line must be a JSON object, got {type(record).__name__}")
        if not isinstance(record.get("step"), int):
            raise DataError(f"{path}:{lineno}: metrics record without an integer 'step'")
        records.append(record)
    return records


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _series(records: list[dict], prefix_filter) -> dict[str, list[list[float]]]:
    """key -> [[step, value], ...], the last value kept where a step repeats (a final eval
    logged twice, a resumed run)."""
    by_key: dict[str, dict[int, float]] = {}
    for record in records:
        for key, value in record.items():
            if key not in ("kind", "step") and prefix_filter(key) and _number(value):
                by_key.setdefault(key, {})[record["step"]] = float(value)
    return {key: [[step, value] for step, value in sorted(points.items())] for key, points in by_key.items()}


def collect_training(name: str, directory: Path, notes: list[str]) -> dict:
    """One training stage's metrics, final numbers and latest checkpoint."""
    from lmforge.train.checkpoint import latest_checkpoint, read_meta

    records = read_metrics_strict(directory / METRICS_FILE, notes)
    train = [r for r in records if r.get("kind", "train") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    tasks = [r for r in records if r.get("kind") == "task"]
    series = {
        "train": _series(train, lambda k: True),
        "eval": _series(evals, lambda k: True),
        "task": _series(tasks + evals, lambda k: k.startswith("task/")),
    }
    final: dict = {}
    if train:
        last = train[-1]
        final.update(step=last["step"], train_loss=last.get("loss"), tokens_seen=last.get("tokens_seen"))
        # Step 1 pays for warm-up and compilation: leave it out of the typical speed.
        steady = [r for r in train if r["step"] > 1] or train
        for key in ("tokens_per_s", "mfu"):
            values = [r[key] for r in steady if _number(r.get(key))]
            if values:
                final[f"median_{key}"] = statistics.median(values)
    for key, points in series["eval"].items():
        final[key] = points[-1][1]
    if series["eval"].get("eval_loss"):
        final["best_eval_loss"] = min(v for _, v in series["eval"]["eval_loss"])
    for key, points in series["task"].items():
        final[key] = points[-1][1]
    diverged = [r for r in records if r.get("kind") == "diverged"]
    checkpoint = latest_checkpoint(directory) if (directory / "checkpoints").is_dir() else None
    meta = read_meta(checkpoint) if checkpoint else {}
    if checkpoint is None:
        notes.append(f"{name}: no checkpoint in {directory}")
    if meta.get("tokens_seen") is not None and final.get("tokens_seen") is None:
        final["tokens_seen"] = meta["tokens_seen"]
    data_files = {p.name: read_json(p) for p in sorted(directory.glob("*_data.json"))}
    return {
        "stage": name,
        "dir": str(directory),
        "records": len(records),
        "series": series,
        "final": final,
        "diverged_at": diverged[0]["step"] if diverged else None,
        "checkpoint": str(checkpoint) if checkpoint else None,
        "meta": {k: meta[k] for k in ("stage", "objective", "lmforge_version", "world_size", "saved_at", "parent_checkpoint") if k in meta},
        "device": (meta.get("recipe") or {}).get("train", {}).get("device"),
        "dtype": (meta.get("recipe") or {}).get("train", {}).get("dtype"),
        "data": data_files,
    }


def _stage_entry(name: str, directory: Path, status: str) -> dict:
    marker = directory / "stage.json"
    record = read_json(marker) if marker.is_file() else {}
    return {"name": name, "dir": directory, "status": status, "seconds": record.get("seconds"),
            "settings": record.get("settings") or {}, "summary": record.get("summary") or {}}


def find_stages(run_dir: Path, notes: list[str]) -> tuple[list[dict], dict]:
    """The stage directories of a pipeline run (from ``run.json`` when present) and its recipe."""
    run_json = run_dir / "run.json"
    if run_json.is_file():
        record = read_json(run_json)
        stages = []
        for rec in record.get("stages", []):
            # Beside run.json first: a copied or moved run directory reports on its own stages.
            directory = run_dir / Path(rec["dir"]).name
            if not directory.is_dir():
                directory = Path(rec["dir"])
            if not directory.is_dir():
                notes.append(f"stage {rec['stage']}: directory {rec['dir']} not found; skipped")
                continue
            stages.append(_stage_entry(rec["stage"], directory, rec.get("status", "ran")))
        return stages, record.get("recipe") or {}
    # No run.json (a run stopped early): every finished stage directory, the newest per stage.
    newest: dict[str, Path] = {}
    for directory in run_dir.iterdir():
        if directory.is_dir() and "-" in directory.name and (directory / "stage.json").is_file():
            name = directory.name.rsplit("-", 1)[0]
            if name not in newest or _mtime(directory) > _mtime(newest[name]):
                newest[name] = directory

    def order(name: str) -> tuple:
        return (STAGE_ORDER.index(name) if name in STAGE_ORDER else len(STAGE_ORDER), _mtime(newest[name]))

    return [_stage_entry(name, newest[name], "found") for name in sorted(newest, key=order)], {}


def _mtime(directory: Path) -> float:
    return (directory / "stage.json").stat().st_mtime


def find_eval_results(root: Path, skip: Path | None = None) -> list[Path]:
    """Every ``*eval_results.json`` under ``root`` (``lmforge eval`` writes them beside checkpoints)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _NOT_WALKED and (skip is None or Path(dirpath, d) != skip))
        found += [Path(dirpath, f) for f in sorted(filenames) if f.endswith("eval_results.json")]
    return found


def collect_eval_results(paths: list[Path], notes: list[str]) -> list[dict]:
    results = []
    for path in paths:
        record = read_json(path)
        if not isinstance(record, dict) or not isinstance(record.get("tasks"), dict):
            notes.append(f"{path}: no 'tasks' object; not an lmforge eval results file, skipped")
            continue
        tasks = {}
        for task, result in record["tasks"].items():
            if not isinstance(result, dict) or not _number(result.get("value")):
                raise DataError(f"{path}: task {task!r} has no numeric 'value'")
            tasks[task] = result
        # "sft.eval_results.json" -> "sft": the demo's evaluate stage writes one file per model.
        label = path.name[: -len("eval_results.json")].rstrip("._-")
        results.append({"file": str(path), "label": label, "checkpoint": record.get("checkpoint"), "created": record.get("created"),
                        "lmforge_version": record.get("lmforge_version"), "tasks": tasks})
    return results


def collect_pipeline_stages(stages: list[dict], notes: list[str]) -> dict:
    """The data, tokenizer, sample and evaluation pieces of a pipeline run's stage directories."""
    data: dict = {}
    by_name = {s["name"]: s for s in stages}
    if "corpus" in by_name:
        stage = by_name["corpus"]
        stats_file = stage["dir"] / "corpus.stats.json"
        data["corpus"] = read_json(stats_file) if stats_file.is_file() else stage["summary"]
    if "clean" in by_name:
        stats_file = by_name["clean"]["dir"] / "pipeline" / "stats.json"
        if stats_file.is_file():
            stats = read_json(stats_file)
            funnel = stats_file.parent / "funnel.png"
            data["funnel"] = {
                "name": stats.get("name"),
                "read": stats["read"],
                "output": {k: v for k, v in stats["output"].items() if k != "files"},
                "totals": stats["totals"],
                "seconds": stats.get("seconds"),
                "adds_up": (stats.get("checks") or {}).get("adds_up"),
                "steps": [
                    {"name": s["name"], "docs_in": s["docs_in"], "docs_out": s["docs_out"], "bytes_in": s["bytes_in"],
                     "bytes_out": s["bytes_out"], "changed": s.get("changed", 0), "dropped": {r: d["docs"] for r, d in s["dropped"].items()}}
                    for s in stats["steps"]
                ],
                "png": str(funnel) if funnel.is_file() else None,
            }
        else:
            notes.append("data funnel: the clean stage ran no pipeline (the corpus was used as it is)")
    if "tokenizer" in by_name:
        path = by_name["tokenizer"]["dir"] / "compression.json"
        if path.is_file():
            rows = read_json(path)
            data["compression"] = rows["results"] if isinstance(rows, dict) else rows
        else:
            notes.append(f"tokenizer compression: {path} not found")
    if "shards" in by_name:
        path = by_name["shards"]["dir"] / "shards" / "manifest.json"
        if path.is_file():
            m = read_json(path)
            data["shards"] = {"tokens": {k: v["tokens"] for k, v in m.get("splits", {}).items()}, "documents": m.get("documents"),
                              "vocab_size": m.get("vocab_size"), "dtype": m.get("dtype"), "unigram_entropy_nats": m.get("unigram_entropy_nats")}
    if "sample" in by_name:
        path = by_name["sample"]["dir"] / "samples.json"
        if path.is_file():
            record = read_json(path)
            data["samples"] = {"checkpoint": record.get("checkpoint"), "samples": record.get("samples", []),
                               "sampling": (by_name["sample"].get("settings") or {}).get("sampling")}
    if "synth" in by_name:
        data["synth"] = by_name["synth"]["summary"].get("counts")
    if "evaluate" in by_name:
        path = by_name["evaluate"]["dir"] / "math_eval.json"
        if path.is_file():
            data["math_eval"] = read_json(path)
        else:
            notes.append(f"evaluate stage: {path} not found")
    return data
