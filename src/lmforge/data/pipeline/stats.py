"""The funnel: per-task stats summed into one account of what every step did, checked to add up.

``aggregate_stats`` reads every task's stats file and returns (``run_pipeline`` writes it as
``stats.json``)::

    {"read": {"documents", "bytes", "bad_lines", ...},
     "steps": [{"name", "type", "docs_in", "docs_out", "bytes_in", "bytes_out", "changed",
                "skipped", "dropped": {reason: {"docs", "bytes"}}, "examples": {reason: [...]},
                "counters": {...}, "seconds" (a global step's: collect + decide + apply),
                "decision": {...} (global steps)}, ...],
     "output": {"documents", "bytes", "files": [...]},
     "totals": {"read", "kept", "dropped"},
     "checks": {"adds_up": true, "problems": []}}

"Adds up" means: every step's documents in = out + dropped; each step starts with what the
previous one ended with; the first starts with what was read, the last ends with what was
written; so documents read = kept + dropped, overall and per step.
"""

from __future__ import annotations

import json
from pathlib import Path

from lmforge.config import to_dict
from lmforge.data.pipeline.task import stats_path

_COUNTS = ("docs_in", "bytes_in", "docs_out", "bytes_out", "changed", "skipped")


def _merge_step(total: dict, part: dict, max_examples: int) -> None:
    for key in _COUNTS:
        total[key] += part[key]
    total["seconds"] += part["seconds"]
    for reason, d in part["dropped"].items():
        entry = total["dropped"].setdefault(reason, {"docs": 0, "bytes": 0})
        entry["docs"] += d["docs"]
        entry["bytes"] += d["bytes"]
    for reason, examples in part["examples"].items():
        kept = total["examples"].setdefault(reason, [])
        kept.extend(examples[: max(0, max_examples - len(kept))])
    for key, n in part.get("counters", {}).items():
        total["counters"][key] = total["counters"].get(key, 0) + n


def aggregate_stats(out: Path, cfg, specs, segments, decisions: dict, n_tasks: int, n_files: int, seconds: float) -> dict:
    steps: list[dict] = []
    # A global step's time is its collect (in the segment before), decide and apply phases.
    extra_seconds: dict[str, float] = {name: d.get("seconds", 0.0) for name, d in decisions.items()}
    for s in range(len(segments)):
        for t in range(n_tasks):
            task = json.loads(stats_path(out, s, t).read_text(encoding="utf-8"))
            if task.get("collect"):
                name = task["collect"]["step"]
                extra_seconds[name] = extra_seconds.get(name, 0.0) + task["collect"]["seconds"]
    read = {"documents": 0, "bytes": 0, "bad_lines": 0, "bad_examples": [], "files": n_files, "shards": n_tasks}
    output = {"documents": 0, "bytes": 0, "files": []}
    for s, (seg_steps, _) in enumerate(segments):
        entries = [
            {"name": x.name, "type": x.type, "languages": x.languages, "config": to_dict(x.config),
             **{k: 0 for k in _COUNTS}, "seconds": 0.0, "dropped": {}, "examples": {}, "counters": {}}
            for x in seg_steps
        ]  # fmt: skip
        for t in range(n_tasks):
            task = json.loads(stats_path(out, s, t).read_text(encoding="utf-8"))
            if task["read"] is not None:
                read["documents"] += task["read"]["documents"]
                read["bad_lines"] += task["read"]["bad_lines"]
                read["bad_examples"].extend(task["read"]["bad_examples"][: max(0, 10 - len(read["bad_examples"]))])
            for entry in entries:
                if entry["name"] in task["steps"]:
                    _merge_step(entry, task["steps"][entry["name"]], cfg.output.examples_per_reason)
            if s == len(segments) - 1:
                output["documents"] += task["output"]["documents"]
                output["bytes"] += task["output"]["bytes"]
                output["files"].extend(task["output"]["files"])
        for entry in entries:
            entry["seconds"] = round(entry["seconds"] + extra_seconds.get(entry["name"], 0.0), 3)
            if entry["name"] in decisions:
                entry["decision"] = decisions[entry["name"]]
        steps.extend(entries)
    if steps:
        read["bytes"] = steps[0]["bytes_in"] if steps[0]["docs_in"] == read["documents"] else None
    dropped = sum(d["docs"] for st in steps for d in st["dropped"].values())
    summary = {
        "name": cfg.name,
        "read": read,
        "steps": steps,
        "output": output,
        "totals": {"read": read["documents"], "kept": output["documents"], "dropped": dropped},
        "seconds": round(seconds, 2),
    }
    summary["checks"] = check_funnel(summary)
    return summary


def check_funnel(summary: dict) -> dict:
    """Every way the counts must agree; ``problems`` says which did not."""
    problems = []
    steps, read, output = summary["steps"], summary["read"], summary["output"]
    previous_out, previous_name = read["documents"], "read"
    for st in steps:
        dropped = sum(d["docs"] for d in st["dropped"].values())
        if st["docs_in"] != st["docs_out"] + dropped:
            problems.append(f"{st['name']}: {st['docs_in']} in != {st['docs_out']} out + {dropped} dropped")
        if st["docs_in"] != previous_out:
            problems.append(f"{st['name']}: {st['docs_in']} in != {previous_out} out of {previous_name}")
        previous_out, previous_name = st["docs_out"], st["name"]
    if output["documents"] != previous_out:
        problems.append(f"written: {output['documents']} != {previous_out} out of {previous_name}")
    totals = summary["totals"]
    if totals["read"] != totals["kept"] + totals["dropped"]:
        problems.append(f"read {totals['read']} != kept {totals['kept']} + dropped {totals['dropped']}")
    return {"adds_up": not problems, "problems": problems}
