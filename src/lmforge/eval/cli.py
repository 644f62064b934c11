"""``lmforge eval CKPT --task ...``: evaluate a checkpoint, print a table, save the results.

    lmforge eval runs/demo --task bpb:../shared/data/pretrain/en_history.txt
    lmforge eval CKPT --task cmmlu:../shared/data/eval/cmmlu_dev --k-shot 0 --details
    lmforge eval CKPT --task "gsm8k:../shared/data/eval/gsm8k_train.jsonl?k_shot=4&limit=100"
    lmforge eval CKPT --task math                       # 200 fresh held-out synthetic problems
    lmforge eval CKPT --harness my_task --harness-include tasks/   # through lm-evaluation-harness
    lmforge eval CKPT --harness cmmlu:../shared/data/eval/cmmlu_dev  # CSV data as a local lm-eval task

Task specs are ``KIND[:PATH][?key=value&...]`` (``lmforge.eval.tasks``). ``--harness`` takes lm-eval
task names, or multiple-choice specs that become local lm-eval tasks with lmforge's prompts
(``lmforge.eval.harness.write_mc_task``), so lm-eval's number can be set beside lmforge's. Results are merged into
``CKPT/eval_results.json`` (``--out`` elsewhere, ``--no-save`` not at all) and printed as a table
with the chance level of each task; ``--json`` prints them as JSON on stdout.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from lmforge.cli_common import console
from lmforge.infer.cli import CheckpointArgument, DeviceOption, DtypeOption, _fail

TaskOption = Annotated[Optional[list[str]], typer.Option("--task", "-t", help="KIND[:PATH][?key=value&...] (repeatable); kinds: bpb, mc, cmmlu, ceval, mmlu, gsm8k, math.", show_default=False)]


def eval_command(
    checkpoint: CheckpointArgument,
    task: TaskOption = None,
    harness: Annotated[Optional[list[str]], typer.Option("--harness", help="lm-evaluation-harness task names, or mc/cmmlu/ceval/mmlu:PATH specs run as local lm-eval tasks (repeatable or comma-separated).", show_default=False)] = None,
    harness_include: Annotated[Optional[Path], typer.Option("--harness-include", help="A directory of lm-eval task YAMLs (local tasks).", show_default=False)] = None,
    harness_backend: Annotated[str, typer.Option("--harness-backend", help="lmforge (lmforge's scorer and engine) or hf (transformers).")] = "lmforge",
    limit: Annotated[Optional[int], typer.Option("--limit", help="At most this many items per task (per subject for multiple choice; default: all).", show_default=False)] = None,
    k_shot: Annotated[Optional[int], typer.Option("--k-shot", help="Examples before each question (multiple choice, gsm8k), unless a task sets k_shot.", show_default=False)] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Sequences per forward pass.")] = 32,
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="Skip malformed rows/lines (counted) instead of stopping at the first.")] = False,
    details: Annotated[bool, typer.Option("--details", help="Also print per-subject / per-level tables.")] = False,
    out: Annotated[Optional[Path], typer.Option("--out", help="Results file (default: CKPT/eval_results.json).", show_default=False)] = None,
    save: Annotated[bool, typer.Option("--save/--no-save", help="Write the results file.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON on stdout.")] = False,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
) -> None:
    """Evaluate a checkpoint on tasks (bits per byte, multiple choice, math) or through lm-eval."""
    from lmforge.eval.tasks import RESULTS_FILE, EvalModel, format_value, parse_task, results_table, run_tasks, save_results

    if not task and not harness:
        _fail("nothing to evaluate: give --task KIND[:PATH] (bpb, mc, cmmlu, ceval, mmlu, gsm8k, math) or --harness TASKS")
    defaults = {"limit": limit, "k_shot": k_shot}
    specs = [parse_task(t, defaults) for t in task or []]  # a bad spec fails before the model loads
    results: dict[str, dict] = {}
    ckpt_dir: Path | None = None
    if specs:
        try:
            model = EvalModel.from_checkpoint(checkpoint, device=device, dtype=None if dtype == "auto" else dtype, batch_size=batch_size)
        except (FileNotFoundError, ValueError, OSError) as exc:
            _fail(str(exc))
        ckpt_dir = model.checkpoint_dir
        console.print(f"evaluating {ckpt_dir} on {len(specs)} task(s)", soft_wrap=True, markup=False)

        def show(name: str, entry: dict) -> None:
            console.print(f"  {name}: {entry['metric']} {format_value(entry)} ({entry['n']:,} {'bytes' if entry['kind'] == 'bpb' else 'items'}, "
                          f"{entry['seconds']:.1f}s)", markup=False, soft_wrap=True)
            if save:  # each task as it finishes: a later task that fails does not lose it
                save_results(out or ckpt_dir / RESULTS_FILE, {name: entry}, checkpoint=ckpt_dir)

        try:
            results.update(run_tasks(model, specs, skip_bad=skip_bad, on_result=show))
        except (FileNotFoundError, ValueError) as exc:
            if type(exc).__name__ in ("DataError", "ConfigError"):
                raise
            _fail(str(exc))
    if harness:
        results.update(_run_harness(checkpoint, harness, harness_include, harness_backend, limit, k_shot, batch_size, device, dtype))
        if ckpt_dir is None:
            from lmforge.train.checkpoint import resolve_checkpoint

            ckpt_dir = resolve_checkpoint(checkpoint)
    console.print(results_table(results, title=f"evaluation of {ckpt_dir}"))
    if details:
        _print_details(results)
    if save and ckpt_dir is not None:
        harness_results = {k: v for k, v in results.items() if v["kind"] == "harness"}
        path = out or ckpt_dir / RESULTS_FILE
        if harness_results:
            save_results(path, harness_results, checkpoint=ckpt_dir)
        console.print(f"results: {path}", soft_wrap=True, markup=False)
    if as_json:
        print(json.dumps(results, ensure_ascii=False, indent=2))


def _run_harness(checkpoint, names, include, backend, limit, k_shot, batch_size, device, dtype) -> dict[str, dict]:
    """lm-eval tasks by name, and multiple-choice CSV data given as task specs
    (``cmmlu:PATH``), written as local lm-eval tasks with lmforge's prompts first."""
    import re
    import tempfile
    import time

    from lmforge.eval.harness import run_harness, write_mc_task
    from lmforge.eval.tasks import parse_task

    entries = [n.strip() for item in names for n in item.split(",") if n.strip()]
    includes = [include] if include else []
    with tempfile.TemporaryDirectory(prefix="lmforge-harness-") as tmp:
        tasks = []
        for entry in entries:
            if ":" not in entry:
                tasks.append(entry)
                continue
            spec = parse_task(entry, {"k_shot": k_shot})
            if spec.kind not in ("mc", "cmmlu", "ceval", "mmlu"):
                _fail(f"--harness {entry}: only multiple-choice data (mc, cmmlu, ceval, mmlu) becomes a local lm-eval task")
            name = re.sub(r"[^A-Za-z0-9_]+", "_", spec.name).strip("_")
            o = spec.options
            includes.append(write_mc_task(spec.path, Path(tmp) / name, name=name, lang=o.get("lang", "auto"), k_shot=o.get("k_shot", 0),
                                          dev_path=o.get("dev"), scoring=o.get("scoring", "letter"),
                                          layout=None if spec.kind == "mc" else spec.kind))
            tasks.append(name)
        start = time.perf_counter()
        try:
            out = run_harness(checkpoint, tasks, backend=backend, include_path=includes or None, limit=limit,
                              num_fewshot=None if any(":" in e for e in entries) else k_shot,
                              batch_size=batch_size, **_harness_placement(device, dtype))
        except ImportError as exc:
            _fail(str(exc))
    seconds = time.perf_counter() - start
    summary = out["summary"]
    results = {}
    for name in tasks:
        metrics = summary.get(name, {})
        metric = next((m for m in ("acc", "exact_match", "bits_per_byte", "word_perplexity") if m in metrics), None)
        if metric is None:
            continue
        subjects = {t.removeprefix(f"{name}_"): {"n": int(m.get("n", 0)), "accuracy": m.get("acc")}
                    for t, m in summary.items() if t.startswith(f"{name}_") and "acc" in m}
        results[f"harness:{name}"] = {
            "kind": "harness", "metric": metric, "value": float(metrics[metric]), "chance": None,
            "n": int(metrics.get("n") or sum(s["n"] for s in subjects.values())), "seconds": seconds,
            "details": {"backend": backend, "metrics": metrics, "subjects": subjects},
        }  # fmt: skip
    return results


def _harness_placement(device: str, dtype: str) -> dict:
    """lm-eval's device and dtype for ours: ``auto`` picks CUDA when present, and bf16 there."""
    from lmforge.infer.engine import inference_dtype
    from lmforge.train.distributed import pick_device

    dev = pick_device(device)
    chosen = inference_dtype(None if dtype == "auto" else dtype, dev)
    return {"device": str(dev), "dtype": str(chosen).removeprefix("torch.")}


def _print_details(results: dict[str, dict]) -> None:
    from rich.table import Table

    for name, entry in results.items():
        groups = {k: v for k, v in entry.get("details", {}).items() if k in ("subjects", "by_level", "by_lang", "by_kind") and v}
        for group, cells in groups.items():
            table = Table(title=f"{name}: {group.removeprefix('by_')}", title_justify="left")
            for column in ("", "n", "correct", "accuracy", "chance"):
                table.add_column(column, justify="left" if not column else "right")
            for key, cell in sorted(cells.items()):
                accuracy, chance = cell.get("accuracy"), cell.get("chance")
                table.add_row(key, str(cell.get("n", "—")), str(cell.get("correct", "—")), "—" if accuracy is None else f"{accuracy:.1%}",
                              "—" if chance is None else f"{chance:.1%}")
            console.print(table)
