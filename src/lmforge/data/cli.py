"""``lmforge data ...``: data preparation commands.

    lmforge data tokenize corpus/ --tokenizer runs/tok --out runs/shards --val-fraction 0.01
    lmforge data tokenize a.jsonl.zst b.parquet --tokenizer runs/tok --out runs/shards --recipe recipes/demo.yaml

Settings come from the recipe's ``data`` section (``TokenizeConfig``; defaults without a recipe);
each command-line option overrides its field, as does ``--set data.FIELD=VALUE``.
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
    """Prepare data: tokenize text into memory-mapped shards."""
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
