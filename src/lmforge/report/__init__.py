"""``lmforge report RUN_DIR``: a report card of a run, as Markdown and one self-contained HTML file.

It reads only what the run left on disk — ``run.json`` and the stage directories of ``lmforge
run`` (corpus stats, the cleaning funnel, tokenizer compression, token shards, each training
stage's ``metrics.jsonl`` and checkpoints, samples, the post-training math evaluation, any
``eval_results.json`` from ``lmforge eval``), or a single training run directory — and writes,
into ``RUN_DIR/report/`` unless told otherwise:

* ``report.md``: summary, environment, data funnel, tokenizer compression, training curves,
  evaluation table with chance levels, sample generations, timings; PNGs beside it;
* ``report.html``: the same, with the PNGs embedded and the CSS inline (mail it as it is);
* ``report.json``: the collected numbers (what the tables show), and the files written.

Missing pieces are skipped with a note; a malformed metrics line is an error naming file:line.

Usage::

    lmforge report runs/demo                      # -> runs/demo/report/report.html
    lmforge report runs/my-sft --out /tmp/card

    from lmforge.report import build_report
    result = build_report("runs/demo")
    print(result["files"]["html"])

Layout: ``collect`` (files -> data), ``environment`` (machine, model shape), ``plots`` (PNGs),
``sections`` (data -> blocks), ``render`` (blocks -> Markdown / HTML).
"""

from __future__ import annotations

import math
from pathlib import Path

from lmforge.io import write_json_atomic, write_text_atomic
from lmforge.report.collect import collect_eval_results, collect_pipeline_stages, collect_training, find_eval_results, find_stages, read_json
from lmforge.report.environment import describe_checkpoint, machine_environment
from lmforge.report.plots import training_figures, write_bytes_atomic
from lmforge.report.render import to_html, to_markdown
from lmforge.report.sections import build_sections

__all__ = ["build_report"]

REPORT_DIR = "report"


def _json_safe(value):
    """Paths to strings, tuples to lists, NaN and infinities to None: strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, (str, int)):
        return value
    return str(value)


def _collect(run_dir: Path, out_dir: Path, notes: list[str]) -> dict:
    stages, recipe = find_stages(run_dir, notes)
    data: dict = {"run_dir": str(run_dir), "name": recipe.get("name") or run_dir.name, "stages": [], "training": []}
    if stages:
        data["kind"] = "pipeline"
        data.update(collect_pipeline_stages(stages, notes))
        for stage in stages:
            if (stage["dir"] / "metrics.jsonl").is_file():
                data["training"].append(collect_training(stage["name"], stage["dir"], notes))
        data["stages"] = [{"name": s["name"], "dir": str(s["dir"]), "status": s["status"], "seconds": s["seconds"]} for s in stages]
    elif (run_dir / "metrics.jsonl").is_file():
        data["kind"] = "training"
        training = collect_training(run_dir.name, run_dir, notes)
        training["stage"] = training["meta"].get("stage") or run_dir.name
        data["training"].append(training)
        if (run_dir / "stage.json").is_file():  # a stage directory of `lmforge run`: its time is known
            seconds = read_json(run_dir / "stage.json").get("seconds")
            data["stages"] = [{"name": training["stage"], "dir": str(run_dir), "status": "ran", "seconds": seconds}]
    else:
        raise FileNotFoundError(f"{run_dir}: not a run directory (no run.json, no stage directories with stage.json, no metrics.jsonl)")
    data["eval_results"] = collect_eval_results(find_eval_results(run_dir, skip=out_dir), notes)
    final = next((t["checkpoint"] for t in data["training"] if t["stage"] == "pretrain" and t["checkpoint"]), None)
    final = final or next((t["checkpoint"] for t in data["training"] if t["checkpoint"]), None)
    data["model"] = describe_checkpoint(final) if final else None
    if final and data["model"] is None:
        notes.append(f"{final}: model shape unknown (no readable config.json)")
    return data


def _note_missing(data: dict, notes: list[str]) -> None:
    if data["kind"] != "pipeline":
        return
    names = {s["name"] for s in data["stages"]}
    expected = [("clean", "data funnel"), ("tokenizer", "tokenizer compression"), ("pretrain", "pretraining curves"), ("sample", "sample generations")]
    if "sft" in names:  # post-training ran: its evaluation is expected too
        expected.append(("evaluate", "post-training evaluation"))
    for stage, what in expected:
        if stage not in names:
            notes.append(f"{what}: no {stage} stage in this run")
    if not data["eval_results"] and not data.get("math_eval"):
        notes.append("evaluation: no eval_results.json in the run (write one with `lmforge eval CHECKPOINT --task ...`)")


def build_report(run_dir: str | Path, out_dir: str | Path | None = None) -> dict:
    """Write report.md, report.html, report.json and the PNGs; return what report.json holds."""
    run_dir = Path(run_dir).resolve()
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run directory")
    out_dir = Path(out_dir).resolve() if out_dir else run_dir / REPORT_DIR
    notes: list[str] = []
    data = _collect(run_dir, out_dir, notes)
    data["built_on"] = machine_environment()
    _note_missing(data, notes)
    figures = {}
    for training in data["training"]:
        baseline = (data.get("shards") or {}).get("unigram_entropy_nats") if training["stage"] == "pretrain" else None
        figures[training["stage"]] = training_figures(training, out_dir, baseline, notes)
        training["figures"] = [f["path"] for f in figures[training["stage"]]]
    funnel_png = None
    if (data.get("funnel") or {}).get("png"):
        funnel_png = Path(data["funnel"]["png"]).read_bytes()
        write_bytes_atomic(out_dir / "funnel.png", funnel_png)  # beside report.md, which links it
    data["notes"] = notes

    sections = build_sections(data, figures, funnel_png)
    title = f"lmforge report: {data['name']}"
    subtitle = f"{run_dir} — report built {data['built_on']['date']} with lmforge {data['built_on']['lmforge']}"
    images = [f["path"] for figs in figures.values() for f in figs] + ([str(out_dir / "funnel.png")] if funnel_png else [])
    files = {"markdown": str(out_dir / "report.md"), "html": str(out_dir / "report.html"), "json": str(out_dir / "report.json"), "images": images}
    write_text_atomic(files["markdown"], to_markdown(title, subtitle, sections))
    write_text_atomic(files["html"], to_html(title, subtitle, sections, footer=f"Built by: lmforge report {run_dir}"))
    result = _json_safe({"files": files, **data})
    write_json_atomic(files["json"], result)
    return result
