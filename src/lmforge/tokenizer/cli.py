"""``lmforge tokenizer train|eval``: train a byte-level BPE tokenizer, measure its compression.

    lmforge tokenizer train data/zh.txt data/en/ --out runs/tok --vocab-size 6400
    lmforge tokenizer train corpus/ --out runs/tok --recipe recipes/demo.yaml --set tokenizer.vocab_size=8000
    lmforge tokenizer eval data/zh.txt data/en.jsonl --tokenizer runs/tok --tokenizer other/tok --json cmp.json

Settings come from the recipe's ``tokenizer`` section (defaults when no recipe is given);
``--vocab-size`` and ``--set`` override it. Reading options (text key, .txt splitting, skipping
bad lines) default to the recipe's ``data`` section, so tokenizer and shards see the same text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from lmforge.cli_common import SetOption, console

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


def check_txt_mode(value: Optional[str]) -> Optional[str]:
    """Typer callback: reject an unknown --txt-mode before any reading starts."""
    from lmforge.data.readers import TXT_MODES  # the readers own the list; light to import

    if value is not None and value not in TXT_MODES:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(TXT_MODES)}")
    return value


InputsArgument = Annotated[
    list[Path],
    typer.Argument(help="Text files or directories (.jsonl[.gz|.zst], .txt[.gz|.zst], .parquet, .arrow).", show_default=False),
]
TextKeyOption = Annotated[
    Optional[str], typer.Option("--text-key", help="JSON field / parquet column holding the text (default: the recipe's data.text_key, else 'text').")
]
SkipBadOption = Annotated[
    Optional[bool],
    typer.Option(
        "--skip-bad/--no-skip-bad",
        help="Count and skip malformed lines instead of stopping at the first (default: the recipe's data.skip_bad, else no).",
        show_default=False,
    ),
]
TxtModeOption = Annotated[
    Optional[str],
    typer.Option(
        "--txt-mode",
        callback=check_txt_mode,
        help=(
            "How .txt files split into documents: paragraph (blank-line blocks), line, file, or chunk "
            "(~data.chunk_chars characters cut at paragraph ends) (default: the recipe's data.txt_mode, else paragraph)."
        ),
    ),
]


def _require_tokenizer(directory: Path) -> Path:
    if not (directory / "tokenizer.json").is_file():
        raise typer.BadParameter(f"{directory}: no tokenizer.json here (train one with `lmforge tokenizer train`)", param_hint="--tokenizer")
    return directory


@app.command("train", help="Train a byte-level BPE tokenizer (Qwen2 pre-tokenizer, ChatML template) on text files.")
def train(
    inputs: InputsArgument,
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to write the tokenizer to (replaced atomically).")],
    recipe: Annotated[Optional[Path], typer.Option("--recipe", help="YAML recipe; its 'tokenizer' section is used.")] = None,
    sets: SetOption = None,
    vocab_size: Annotated[Optional[int], typer.Option("--vocab-size", help="Vocabulary size incl. special tokens (shortcut for --set tokenizer.vocab_size=N).")] = None,
    text_key: TextKeyOption = None,
    txt_mode: TxtModeOption = None,
    skip_bad: SkipBadOption = None,
    max_chars: Annotated[Optional[int], typer.Option("--max-chars", help="Stop reading after this many characters (0 = all).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    from lmforge.cli_common import load_recipe_for_cli
    from lmforge.data.document import DataError
    from lmforge.data.readers import ReadStats, read_documents
    from lmforge.tokenizer.train import SIDECAR, train_tokenizer

    r = load_recipe_for_cli(recipe, sets)
    cfg = r.tokenizer
    if vocab_size is not None:
        cfg.vocab_size = vocab_size
    if max_chars is not None:
        cfg.max_train_chars = max_chars
    stats = ReadStats()
    docs = read_documents(
        inputs,
        text_key=text_key or r.data.text_key,
        skip_bad=r.data.skip_bad if skip_bad is None else skip_bad,
        stats=stats,
        txt_mode=txt_mode or r.data.txt_mode,  # type: ignore[arg-type]
        chunk_chars=r.data.chunk_chars,
    )
    console.print(f"training a {cfg.vocab_size:,}-token byte-level BPE on {len(inputs)} input(s)...")
    try:
        path = train_tokenizer((d.text for d in docs), out, cfg, show_progress=not quiet)
    except DataError:
        raise  # `lmforge` prints it as a one-line file:line error
    except ValueError as exc:  # a vocabulary too small for the special and byte tokens, no text
        raise typer.BadParameter(str(exc)) from None
    import json

    info = json.loads((path / SIDECAR).read_text(encoding="utf-8"))
    if info["vocab_size"] < cfg.vocab_size:
        console.print(
            f"[yellow]warning:[/] the text only supported {info['vocab_size']:,} of {cfg.vocab_size:,} tokens "
            "(too little text, or min_frequency too high); model.vocab_size may stay larger"
        )
    console.print(
        f"[green]wrote[/] {path}: vocab {info['vocab_size']:,}, trained on {info['train_documents']:,} documents, "
        f"{info['train_chars']:,} chars ({info['train_bytes']:,} bytes) from {len(stats.files)} file(s); "
        f"bad lines skipped: {stats.bad_lines}; tokenizer.json sha256 {info['tokenizer_sha256'][:12]}"
    )


@app.command("eval", help="Compare tokenizers' compression (bytes/token, chars/token) on text files.")
def eval_(
    files: InputsArgument,
    tokenizer: Annotated[list[Path], typer.Option("--tokenizer", "-t", help="Tokenizer directory (repeat to compare several).", show_default=False)],
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Also write the results as JSON here.")] = None,
    recipe: Annotated[Optional[Path], typer.Option("--recipe", help="YAML recipe; its 'data' section gives the reading defaults.")] = None,
    sets: SetOption = None,
    text_key: TextKeyOption = None,
    txt_mode: TxtModeOption = None,
    skip_bad: SkipBadOption = None,
    max_chars: Annotated[int, typer.Option("--max-chars", help="Read at most this many characters per file (0 = all).")] = 0,
) -> None:
    from lmforge.cli_common import load_recipe_for_cli
    from lmforge.tokenizer.evaluate import compression_table, evaluate_compression, write_json

    for t in tokenizer:
        _require_tokenizer(t)
    data = load_recipe_for_cli(recipe, sets).data
    rows = evaluate_compression(
        tokenizer,
        files,
        text_key=text_key or data.text_key,
        txt_mode=txt_mode or data.txt_mode,
        max_chars=max_chars,
        skip_bad=data.skip_bad if skip_bad is None else skip_bad,
    )
    from rich.console import Console

    Console().print(compression_table(rows))  # the table is the result: stdout, not the log stream
    first = rows[0]["tokenizer"]  # every tokenizer reads the same files, so count one's rows
    bad = sum(r["bad_lines"] for r in rows if r["tokenizer"] == first and r["file"] != "TOTAL")
    if bad:
        console.print(f"bad lines skipped: {bad:,}")
    if json_path is not None:
        console.print(f"wrote {write_json(rows, json_path)}")
