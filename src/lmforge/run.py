"""``lmforge run RECIPE``: the whole pipeline as a graph of stages with cached outputs.

Stages (each reads only its own recipe section plus its inputs' outputs)::

    corpus ──► clean ──► tokenizer ──► shards ──► pretrain ──► sample
                 └──────────────────────┘             │
                                                      └──► sft ──► dpo ──► evaluate
                                               synth ──────┴───────┴─────────┘

The post-training stages (``lmforge.posttrain``) run when the recipe sets ``posttrain.enabled``.

``clean`` runs the recipe's data pipeline (``clean.pipeline``, e.g. recipes/data/default.yaml:
normalize, filter, deduplicate) over the corpus and writes its funnel report; without one it
passes the corpus through unchanged.

Every stage's output lives in ``{out_dir}/{stage}-{key}`` where ``key`` hashes the stage's
settings, its inputs' keys and the lmforge version. A stage is finished when its ``stage.json``
marker exists (written last); a second run skips it, and changing one setting changes that
stage's key and so every key downstream — only those rerun. An interrupted pretrain stage
resumes from its latest checkpoint instead of starting over.

The run ends by writing its report card (``lmforge report``) to ``{out_dir}/report/``.

Usage::

    lmforge run recipes/demo.yaml                      # full demo (~18 min on 2 CPU cores)
    lmforge run recipes/demo-tiny.yaml                 # CI-sized (≤ 2 min)
    lmforge run recipes/demo.yaml --set train.max_steps=50 --until pretrain
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer

from lmforge import __version__, posttrain
from lmforge.cli_common import RecipeArgument, SetOption, console, load_recipe_for_cli
from lmforge.config import to_dict
from lmforge.io import write_json_atomic
from lmforge.recipe import Recipe

MARKER = "stage.json"


@dataclass
class Stage:
    name: str
    inputs: tuple[str, ...]
    settings: Callable[[Recipe], dict]  # the part of the recipe this stage's output depends on
    run: Callable[["StageContext"], dict]  # does the work into ctx.dir; returns a JSON summary
    resumable: bool = False  # True: an unfinished output dir is continued, not wiped
    enabled: Callable[[Recipe], bool] = lambda recipe: True


@dataclass
class StageContext:
    recipe: Recipe
    dir: Path
    upstream: dict[str, dict]  # input stage name -> its summary


# --- the stages ---------------------------------------------------------------------------------


def _corpus_settings(r: Recipe) -> dict:
    from lmforge.data.corpus import fingerprint_inputs, man_files

    settings = to_dict(r.corpus)
    if r.corpus.inputs:
        settings["fingerprint"] = fingerprint_inputs(r.corpus.inputs)
    else:  # the built-in corpus depends on this machine's Python and manual pages
        settings["python"] = sys.version
        settings["man_pages"] = len(man_files(r.corpus.man_dirs)) if "man" in r.corpus.sources else 0
    return settings


def _run_corpus(ctx: StageContext) -> dict:
    from lmforge.data.corpus import build_corpus

    if ctx.recipe.corpus.inputs:
        return {"files": [str(Path(p).resolve()) for p in ctx.recipe.corpus.inputs], "builtin": False}
    stats = build_corpus(ctx.recipe.corpus, ctx.dir / "corpus.jsonl")
    console.print(f"  corpus: {stats['documents']:,} documents, {stats['bytes'] / 1e6:.1f} MB {stats['by_source']}")
    return {"files": [str(ctx.dir / "corpus.jsonl")], "builtin": True, **stats}


def _load_clean_pipeline(r: Recipe, out_dir: Path | None = None):
    from lmforge.data.pipeline.config import load_pipeline

    overrides = list(r.clean.overrides) + ([f"output.dir={out_dir}"] if out_dir is not None else [])
    return load_pipeline(r.clean.pipeline, overrides)


def _clean_settings(r: Recipe) -> dict:
    if not r.clean.pipeline:
        return {"pipeline": None, "read": [r.data.text_key, r.data.txt_mode, r.data.skip_bad]}
    from lmforge.data.pipeline.config import spec_to_dict, step_resources

    cfg, specs = _load_clean_pipeline(r)
    # What the clean shards depend on; not where they go, nor how many workers make them.
    return {
        "reader": to_dict(cfg.reader),
        "format": cfg.output.format,
        "docs_per_file": cfg.output.docs_per_file,
        "seed": cfg.seed,
        "steps": [spec_to_dict(s) for s in specs],
        "resources": step_resources(specs, Path.cwd()),  # word lists, eval sets, models the steps read
    }


def _run_clean(ctx: StageContext) -> dict:
    files = ctx.upstream["corpus"]["files"]
    if not ctx.recipe.clean.pipeline:
        return {"files": files, "text_key": ctx.recipe.data.text_key, "cleaned": False}
    from lmforge.data.pipeline.executor import run_pipeline as run_data_pipeline
    from lmforge.data.pipeline.report import funnel_table, write_report

    cfg, specs = _load_clean_pipeline(ctx.recipe, ctx.dir / "pipeline")
    cfg.inputs = list(files)
    stats = run_data_pipeline(cfg, specs, base_dir=Path.cwd())
    report = write_report(cfg.output.dir)
    console.print(funnel_table(stats))
    if not stats["checks"]["adds_up"]:
        raise RuntimeError(f"data pipeline counts do not add up: {stats['checks']['problems']}")
    return {
        "files": [f["path"] for f in stats["output"]["files"]],
        "text_key": "text",  # the clean shards hold their text under "text", whatever the corpus used
        "cleaned": True,
        "report": str(report),
        "funnel": str(Path(cfg.output.dir) / "funnel.png"),
        "totals": stats["totals"],
        "bytes": {"read": stats["read"]["bytes"], "kept": stats["output"]["bytes"]},
    }


def _read_settings(ctx: StageContext):
    """The recipe's data settings, reading the clean stage's output the way it was written."""
    return replace(ctx.recipe.data, text_key=ctx.upstream["clean"]["text_key"])


def _run_tokenizer(ctx: StageContext) -> dict:
    from lmforge.data.readers import read_documents
    from lmforge.tokenizer.evaluate import evaluate_compression, write_json
    from lmforge.tokenizer.train import train_tokenizer

    files, data = ctx.upstream["clean"]["files"], _read_settings(ctx)
    # Read the text exactly as the shards stage will, so the tokenizer sees the same documents.
    docs = read_documents(files, text_key=data.text_key, skip_bad=data.skip_bad, txt_mode=data.txt_mode, chunk_chars=data.chunk_chars)
    out = train_tokenizer((doc.text for doc in docs), ctx.dir / "tokenizer", ctx.recipe.tokenizer)
    rows = evaluate_compression([out], files, text_key=data.text_key, txt_mode=data.txt_mode, skip_bad=data.skip_bad)
    write_json(rows, ctx.dir / "compression.json")
    return {"dir": str(out), "compression": rows}


def _run_shards(ctx: StageContext) -> dict:
    from lmforge.data.tokenize import tokenize_to_shards

    manifest = tokenize_to_shards(
        ctx.upstream["clean"]["files"], ctx.upstream["tokenizer"]["dir"], ctx.dir / "shards", _read_settings(ctx)
    )
    splits = {name: split["tokens"] for name, split in manifest["splits"].items()}
    return {"dir": str(ctx.dir / "shards"), "tokens": splits, "unigram_entropy_nats": manifest.get("unigram_entropy_nats")}


# Settings that change how a stage runs or reports, never what it produces, stay out of the cache key.
_SHARDS_IGNORED = ("workers", "batch_chars")
_PRETRAIN_IGNORED = posttrain.TRAIN_KEYS_NOT_IN_CACHE_KEY


def _shards_settings(r: Recipe) -> dict:
    settings = to_dict(r.data)
    return {k: v for k, v in settings.items() if k not in _SHARDS_IGNORED}


def _pretrain_settings(r: Recipe) -> dict:
    # Paths are filled in by the runner from upstream stages; they are not settings either.
    train = {k: v for k, v in to_dict(r.train).items() if k not in _PRETRAIN_IGNORED}
    return {"model": to_dict(r.model), "train": train}


def _run_pretrain(ctx: StageContext) -> dict:
    from lmforge.train.trainer import train

    train_cfg = replace(
        ctx.recipe.train,
        shards=ctx.upstream["shards"]["dir"],
        tokenizer=ctx.upstream["tokenizer"]["dir"],
        out_dir=str(ctx.dir),
    )
    result = train(replace(ctx.recipe, train=train_cfg), resume=True)
    return {"run_dir": str(ctx.dir), **result.summary()}


def _run_sample(ctx: StageContext) -> dict:
    from lmforge.infer.engine import Engine

    checkpoint = ctx.upstream["pretrain"]["checkpoint"]
    engine = Engine.from_checkpoint(checkpoint)
    prompts = ctx.recipe.sample.prompts
    completions = engine.complete(prompts, ctx.recipe.sample.sampling)
    samples = [{"prompt": p, "completion": c} for p, c in zip(prompts, completions)]
    write_json_atomic(ctx.dir / "samples.json", {"checkpoint": checkpoint, "samples": samples})
    return {"samples": samples}


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _posttrain_on(recipe: Recipe) -> bool:
    return recipe.posttrain.enabled


STAGES: list[Stage] = [
    Stage("corpus", (), _corpus_settings, _run_corpus),
    Stage("clean", ("corpus",), _clean_settings, _run_clean, resumable=True),  # the data pipeline resumes itself
    Stage(
        "tokenizer",
        ("clean",),
        lambda r: {"tokenizer": to_dict(r.tokenizer), "read": [r.data.text_key, r.data.txt_mode, r.data.skip_bad]},
        _run_tokenizer,
    ),
    Stage("shards", ("clean", "tokenizer"), _shards_settings, _run_shards),
    Stage("pretrain", ("shards", "tokenizer"), _pretrain_settings, _run_pretrain, resumable=True),
    Stage("sample", ("pretrain",), lambda r: to_dict(r.sample), _run_sample),
    Stage("synth", (), posttrain.synth_settings, posttrain.run_synth, enabled=_posttrain_on),
    Stage("sft", ("pretrain", "synth"), posttrain.sft_settings, posttrain.run_sft, resumable=True, enabled=_posttrain_on),
    Stage("dpo", ("sft", "synth"), posttrain.dpo_settings, posttrain.run_dpo, resumable=True, enabled=_posttrain_on),
    Stage("evaluate", ("pretrain", "sft", "dpo", "synth"), posttrain.eval_settings, posttrain.run_evaluate, enabled=_posttrain_on),
]


# --- the runner -----------------------------------------------------------------------------------


def stage_key(stage: Stage, recipe: Recipe, upstream_keys: dict[str, str], settings: dict | None = None) -> str:
    """Hash of the stage's settings (computed here unless given), its inputs' keys and the version."""
    if settings is None:
        settings = stage.settings(recipe)
    payload = {"stage": stage.name, "lmforge": __version__, "settings": settings, "inputs": upstream_keys}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


def run_pipeline(recipe: Recipe, force: set[str] = frozenset(), until: str | None = None) -> dict:
    """Run (or skip, when cached) every stage in order; return the per-stage records."""
    stages = [s for s in STAGES if s.enabled(recipe)]
    names = [s.name for s in stages]
    unknown = (set(force) | ({until} if until else set())) - set(names)
    if unknown:
        raise typer.BadParameter(f"unknown stage(s) {sorted(unknown)}; stages: {', '.join(names)}")
    root = Path(recipe.out_dir).resolve()  # summaries hold absolute paths: valid from any directory
    root.mkdir(parents=True, exist_ok=True)
    keys: dict[str, str] = {}
    summaries: dict[str, dict] = {}
    records = []
    forced_downstream = False
    for stage in stages:
        settings = stage.settings(recipe)  # once: the corpus stage's walks every man page
        key = stage_key(stage, recipe, {name: keys[name] for name in stage.inputs}, settings)
        keys[stage.name] = key
        out = root / f"{stage.name}-{key}"
        marker = out / MARKER
        forced_downstream |= stage.name in force
        if marker.is_file() and not forced_downstream:
            summaries[stage.name] = json.loads(marker.read_text())["summary"]
            records.append({"stage": stage.name, "status": "cached", "dir": str(out), "seconds": 0.0})
            console.print(f"[green]✓[/] {stage.name:<10} cached   {out}")
        else:
            if out.exists() and (not stage.resumable or forced_downstream):
                shutil.rmtree(out)  # a partial output of a non-resumable stage is never trusted
            out.mkdir(parents=True, exist_ok=True)
            console.print(f"[cyan]▶[/] {stage.name:<10} running  {out}")
            start = time.time()
            summary = stage.run(StageContext(recipe, out, {name: summaries[name] for name in stage.inputs}))
            seconds = time.time() - start
            write_json_atomic(marker, {"stage": stage.name, "key": key, "seconds": seconds, "settings": settings, "summary": summary})
            summaries[stage.name] = summary
            records.append({"stage": stage.name, "status": "ran", "dir": str(out), "seconds": seconds})
            console.print(f"[green]✓[/] {stage.name:<10} done in {seconds:.1f}s")
        if stage.name == until:
            break
    write_json_atomic(root / "run.json", {"recipe": to_dict(recipe), "stages": records, "summaries": summaries})
    return {"stages": records, "summaries": summaries}


def _print_summary(recipe: Recipe, result: dict) -> None:
    from rich.console import Console

    # stdout, never wrapped: these lines are meant to be copied and pasted.
    out = Console(soft_wrap=True, highlight=False)
    s = result["summaries"]
    if "sample" in s:
        out.print("\n[bold]Samples[/]")
        for sample in s["sample"]["samples"]:
            out.print(f"[bold]{_escape(sample['prompt'])}[/]{_escape(sample['completion'])}\n[dim]{'─' * 60}[/]")
    out.print("\n[bold]Where everything is[/]")
    out.print(f"  run record     {Path(recipe.out_dir).resolve() / 'run.json'}")
    if "report" in result:
        out.print(f"  report card    {_escape(result['report']['html'])}")
    if "corpus" in s:
        out.print(f"  corpus         {', '.join(s['corpus']['files'])}")
    if s.get("clean", {}).get("cleaned"):
        c = s["clean"]
        out.print(
            f"  clean shards   {Path(c['files'][0]).parent if c['files'] else '(none kept)'}  "
            f"({c['totals']['kept']:,} of {c['totals']['read']:,} documents kept)"
        )
        out.print(f"  data report    {c['report']}")
    if "tokenizer" in s:
        out.print(f"  tokenizer      {s['tokenizer']['dir']}")
    if "shards" in s:
        out.print(f"  token shards   {s['shards']['dir']}  ({s['shards']['tokens']})")
    if "pretrain" in s:
        p = s["pretrain"]
        out.print(f"  checkpoint     {p['checkpoint']}")
        out.print(f"  metrics        {p['metrics']}")
        out.print(f"  loss curve     {p['loss_curve']}")
        if p.get("val_loss") is not None and p.get("unigram_baseline") is not None:
            out.print(
                f"  held-out loss  {p['val_loss']:.3f} nats/token vs unigram baseline {p['unigram_baseline']:.3f}"
            )
    if "evaluate" in s:
        e = s["evaluate"]
        out.print(f"\n[bold]Post-training[/] (exact-answer accuracy on {e['n']} held-out synthetic math problems, greedy)")
        out.print("  " + "  →  ".join(f"{name} {acc:.1%}" for name, acc in e["accuracy"].items()))
        if e.get("choice_accuracy"):
            out.print(f"  as multiple choice (chance {e['choice_chance']:.0%}): "
                      + "  →  ".join(f"{name} {acc:.1%}" for name, acc in e["choice_accuracy"].items()))
        for name in ("sft", "dpo"):
            out.print(f"  {name} checkpoint {s[name]['checkpoint']}")
        for chat in e["chats"]:
            out.print(f"  [bold]user:[/] {_escape(chat['prompt'])}\n  [bold]assistant:[/] {_escape(chat['reply'])}")
    if "pretrain" in s:
        p = s["pretrain"]
        final = s["dpo"]["checkpoint"] if "dpo" in s else p["checkpoint"]
        out.print(f"\n  lmforge generate {p['checkpoint']} --prompt 'def '")
        out.print(f"  lmforge chat {final}")
        out.print(f"  python -c \"from transformers import AutoModelForCausalLM; AutoModelForCausalLM.from_pretrained('{p['checkpoint']}')\"")
    if "report" in result:
        out.print(f"\n[bold]Report card[/] {_escape(result['report']['html'])}  (Markdown: {_escape(result['report']['markdown'])})")


def run_command(
    recipe_path: RecipeArgument,
    overrides: SetOption = None,
    force: Annotated[Optional[list[str]], typer.Option("--force", help="Rerun this stage and everything after it (repeatable).")] = None,
    until: Annotated[Optional[str], typer.Option("--until", help="Stop after this stage.")] = None,
) -> None:
    recipe = load_recipe_for_cli(recipe_path, overrides)
    console.print(f"[bold]lmforge run[/] {recipe_path} → {recipe.out_dir}")
    result = run_pipeline(recipe, set(force or []), until)
    from lmforge.data.document import DataError
    from lmforge.report import build_report

    # The demo ends with its report card; it reads only the files the stages wrote. A report
    # that cannot be built must not hide the run's own summary.
    try:
        result["report"] = build_report(recipe.out_dir)["files"]
    except (DataError, OSError, ValueError) as exc:
        console.print(f"[yellow]note:[/] no report card: {_escape(str(exc))} (lmforge report {recipe.out_dir} retries)")
    _print_summary(recipe, result)
