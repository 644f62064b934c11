"""``lmforge data ...``: data preparation commands.

    lmforge data run recipes/data/default.yaml ../shared/data/pretrain --out runs/clean
    lmforge data report runs/clean
    lmforge data tokenize corpus/ --tokenizer runs/tok --out runs/shards --val-fraction 0.01
    lmforge data tokenize a.jsonl.zst b.parquet --tokenizer runs/tok --out runs/shards --recipe recipes/demo.yaml

``data run`` takes a pipeline YAML (see ``lmforge.data.pipeline.config``); ``--set`` overrides its
keys. ``data tokenize`` takes its settings from a recipe's ``data`` section (``TokenizeConfig``;
defaults without a recipe); each command-line option overrides its field, as does
``--set data.FIELD=VALUE``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from lmforge.cli_common import SetOption, console
from lmforge.tokenizer.cli import InputsArgument, SkipBadOption, TextKeyOption, TxtModeOption

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


@app.callback()
def _data() -> None:
    """Prepare data: clean and deduplicate raw text (pipelines), tokenize it into memory-mapped shards."""
    # A callback keeps `tokenize` a named subcommand even while it is the only one.


@app.command("tokenize", help="Tokenize pretraining text into memory-mapped token shards (train/val) with a manifest.")
def tokenize(
    inputs: InputsArgument,
    tokenizer: Annotated[Path, typer.Option("--tokenizer", "-t", help="Tokenizer directory (from `lmforge tokenizer train`).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for the shards and manifest.json.")],
    recipe: Annotated[Optional[Path], typer.Option("--recipe", help="YAML recipe; its 'data' section is used.")] = None,
    sets: SetOption = None,
    workers: Annotated[Optional[int], typer.Option("--workers", "-j", help="Tokenizer worker processes (0 = one per CPU core this process may use).")] = None,
    shard_tokens: Annotated[Optional[int], typer.Option("--shard-tokens", help="Tokens per shard file.")] = None,
    val_fraction: Annotated[Optional[float], typer.Option("--val-fraction", help="Fraction of documents (by a stable hash of their text) held out as 'val'.")] = None,
    text_key: TextKeyOption = None,
    txt_mode: TxtModeOption = None,
    skip_bad: SkipBadOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
) -> None:
    import dataclasses

    from lmforge.cli_common import load_recipe_for_cli
    from lmforge.data.tokenize import tokenize_to_shards

    if not (tokenizer / "tokenizer.json").is_file():
        raise typer.BadParameter(f"{tokenizer}: no tokenizer.json here (train one with `lmforge tokenizer train`)", param_hint="--tokenizer")
    cfg = load_recipe_for_cli(recipe, sets).data
    overrides = {
        "workers": workers,
        "shard_tokens": shard_tokens,
        "val_fraction": val_fraction,
        "text_key": text_key,
        "txt_mode": txt_mode,
        "skip_bad": skip_bad,
    }
    try:  # `replace` re-runs the config's own checks (val_fraction range, positive sizes)
        cfg = dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    m = tokenize_to_shards(inputs, tokenizer, out, cfg, show_progress=not quiet)
    splits = m["splits"]
    parts = [
        f"{name}: {m['documents'].get(name, 0):,} docs, {s['tokens']:,} tokens in {len(s['shards'])} shard(s)"
        for name, s in splits.items()
    ]
    console.print(
        f"[green]wrote[/] {out}: {'; '.join(parts)} ({m['dtype']}, vocab {m['vocab_size']:,}); "
        f"{len(m['sources'])} source file(s), bad lines skipped: {m['bad_lines']}, empty documents: {m['empty_documents']}; "
        f"unigram entropy {m['unigram_entropy_nats']:.3f} nats"
    )


@app.command("run", help="Run a data pipeline (normalize, filter, deduplicate, label ...) from YAML; resumes an interrupted run.")
def run(
    pipeline: Annotated[Path, typer.Argument(help="Pipeline YAML, e.g. recipes/data/default.yaml.", exists=True, dir_okay=False)],
    inputs: Annotated[Optional[list[Path]], typer.Argument(help="Input files/directories (default: the YAML's `inputs`).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output directory (default: the YAML's output.dir).")] = None,
    sets: SetOption = None,
    workers: Annotated[Optional[int], typer.Option("--workers", "-j", help="Worker processes (0 = one per CPU core).")] = None,
    executor: Annotated[Optional[str], typer.Option("--executor", help="local (worker processes) or ray.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Delete the output directory's previous contents and start over.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
) -> None:
    from lmforge.data.pipeline.config import load_pipeline
    from lmforge.data.pipeline.executor import run_pipeline
    from lmforge.data.pipeline.report import funnel_table, write_report

    overrides = list(sets or [])
    if out is not None:
        overrides.append(f"output.dir={out}")
    if workers is not None:
        overrides.append(f"workers={workers}")
    if executor is not None:
        overrides.append(f"executor={executor}")
    cfg, specs = load_pipeline(pipeline, overrides)
    if inputs:
        cfg.inputs = [str(p) for p in inputs]
    stats = run_pipeline(cfg, specs, base_dir=Path.cwd(), force=force, show_progress=not quiet)
    report = write_report(cfg.output.dir)
    console.print(funnel_table(stats))
    totals = stats["totals"]
    if stats["checks"]["adds_up"]:
        console.print(f"[green]✓[/] read {totals['read']:,} = kept {totals['kept']:,} + dropped {totals['dropped']:,}")
    else:
        console.print(f"[red]✗ counts do not add up:[/] {'; '.join(stats['checks']['problems'])}")
    console.print(f"clean shards: {Path(cfg.output.dir) / 'data'}  report: {report}")
    if not stats["checks"]["adds_up"]:
        raise typer.Exit(1)


@app.command("report", help="Write the funnel report (report.md + funnel.png) of a finished `data run` output directory.")
def report(out_dir: Annotated[Path, typer.Argument(help="The pipeline's output directory.", exists=True, file_okay=False)]) -> None:
    from lmforge.data.pipeline.report import funnel_table, load_stats, write_report

    try:
        stats = load_stats(out_dir)
    except FileNotFoundError as exc:
        raise typer.BadParameter(str(exc)) from None
    path = write_report(out_dir)
    console.print(funnel_table(stats))
    console.print(f"report: {path}  chart: {out_dir / 'funnel.png'}")


def _register_classifier_commands() -> None:
    from lmforge.data.classify_cli import register

    register(app)  # `data train-classifier`, `data train-topics`


_register_classifier_commands()


@app.command("steps", help="List the pipeline step types, or one type's settings with their defaults.")
def steps(step_type: Annotated[Optional[str], typer.Argument(help="A step type, e.g. gopher_quality.")] = None) -> None:
    import dataclasses

    from rich.markup import escape
    from rich.table import Table

    from lmforge.data.pipeline.base import GlobalStep, step_types

    types = step_types()
    if step_type is None:
        table = Table(title="pipeline step types (`lmforge data steps TYPE` for settings)")
        table.add_column("type")
        table.add_column("kind")
        table.add_column("what it does")
        for name, cls in sorted(types.items()):
            doc = (cls.__doc__ or "").strip().split("\n")[0]
            table.add_row(name, "global" if issubclass(cls, GlobalStep) else "", doc)
        console.print(table)
        return
    if step_type not in types:
        raise typer.BadParameter(f"unknown step type {step_type!r}; known: {', '.join(sorted(types))}")
    cls = types[step_type]
    console.print(f"[bold]{step_type}[/]: {(cls.__doc__ or '').strip()}\n")
    table = Table(title=f"settings ({cls.Config.__name__})")
    table.add_column("key")
    table.add_column("default")
    table.add_column("meaning")
    comments = _field_comments(cls.Config)
    for f in dataclasses.fields(cls.Config):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = "(required)"
        text = repr(default)
        table.add_row(f.name, escape(text if len(text) < 60 else text[:57] + "..."), escape(comments.get(f.name, "")))
    console.print(table)
    console.print(escape("Every step also takes: name, languages (e.g. [zh, en]), keep_dropped (true/false)."))


def _field_comments(config_cls: type) -> dict[str, str]:
    """The `# ...` comment on each field's line of a Config dataclass (its documentation)."""
    import inspect
    import re

    found: dict[str, str] = {}
    for cls in config_cls.__mro__:  # shared fields may live on a base config
        try:
            source = inspect.getsource(cls)
        except (OSError, TypeError):
            continue
        for m in re.finditer(r"^\s+(\w+)\s*:[^#\n]*#\s*(.+)$", source, re.MULTILINE):
            found.setdefault(m.group(1), m.group(2).strip())
    return found
