"""``lmforge synth``: synthetic data for post-training.

    lmforge synth math --n 4000 --levels 1,2 --langs zh,en --seed 0 --split train --out math_train.jsonl
    lmforge synth math --n 200 --levels 1,2 --seed 1 --split test --out math_test.jsonl    # disjoint
    lmforge synth pairs --from math_train.jsonl --out pairs.jsonl                           # DPO pairs
    lmforge synth identity --name Forge --creator "the lmforge team" --n 300 --out identity.jsonl
    lmforge synth template --seeds web.jsonl --teacher http://127.0.0.1:8000/v1 --model qwen --out qa.jsonl --limit 1000

Summaries go to stderr; bad inputs end with one line naming the file and line (exit status 2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from lmforge.cli_common import console

app = typer.Typer(no_args_is_help=True, add_completion=False)

OutOption = Annotated[Path, typer.Option("--out", "-o", help="Output jsonl file.", show_default=False)]
SeedOption = Annotated[int, typer.Option("--seed", help="Random seed: same arguments, same file.")]
LangsOption = Annotated[str, typer.Option("--langs", help="Comma-separated languages: en, zh.")]


def _csv(value: str, name: str, cast=str) -> list:
    try:
        items = [cast(v.strip()) for v in value.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a comma-separated list of {cast.__name__}s", param_hint=name) from None
    if not items:
        raise typer.BadParameter("give at least one value", param_hint=name)
    return items


def _write_jsonl(path: Path, records: list[dict]) -> None:
    import json

    from lmforge.io import write_text_atomic

    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def _counts(records: list[dict], key: str) -> str:
    from collections import Counter

    counts = Counter(str(r.get(key)) for r in records)
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))


@app.command("math")
def math_command(
    out: OutOption,
    n: Annotated[int, typer.Option("--n", help="Number of problems.")] = 1000,
    levels: Annotated[str, typer.Option("--levels", help="Comma-separated difficulty levels, 1 (one small +/-) to 4 (multi-step).")] = "1,2,3,4",
    langs: LangsOption = "en,zh",
    kinds: Annotated[Optional[str], typer.Option("--kinds", help="Comma-separated kinds: arithmetic, fraction, percent, unit, multistep (default: all).", show_default=False)] = None,
    split: Annotated[str, typer.Option("--split", help="train or test: disjoint by construction (a hash of each problem's computation).")] = "train",
    seed: SeedOption = 0,
) -> None:
    """Verifiable bilingual math word problems with step-by-step solutions (chat records)."""
    from lmforge.synth.math import generate_problems

    try:
        records = generate_problems(
            n, levels=_csv(levels, "--levels", int), langs=_csv(langs, "--langs"), seed=seed, split=split,
            kinds=_csv(kinds, "--kinds") if kinds is not None else None,
        )  # fmt: skip
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    _write_jsonl(out, records)
    console.print(f"wrote {len(records)} {split} problems to {out}", soft_wrap=True, markup=False)
    for key in ("level", "lang", "kind"):
        console.print(f"  by {key}: {_counts(records, key)}", markup=False)


@app.command("pairs")
def pairs_command(
    source: Annotated[Path, typer.Option("--from", help="Math problems (jsonl from `lmforge synth math`, or chat records with an answer).", show_default=False)],
    out: OutOption,
    seed: SeedOption = 0,
) -> None:
    """DPO preference pairs: each correct solution against the same one with a planted error."""
    import json

    from lmforge.data.document import DataError
    from lmforge.data.readers import _lines, file_format
    from lmforge.synth.pairs import make_pair

    if not source.is_file() or (file_format(source) or ("",))[0] != "jsonl":
        raise DataError(f"{source}: not a jsonl file")
    pairs = []
    for line_no, raw in _lines(source, file_format(source)[1]):  # type: ignore[index]
        if not raw.strip():
            continue
        try:
            pairs.append(make_pair(json.loads(raw), seed))
        except ValueError as exc:  # bad JSON too
            raise DataError(f"{source}:{line_no}: {exc}") from None
    _write_jsonl(out, pairs)
    console.print(f"wrote {len(pairs)} preference pairs to {out}", soft_wrap=True, markup=False)
    console.print(f"  by error kind: {_counts(pairs, 'error_kind')}", markup=False)


@app.command("identity")
def identity_command(
    out: OutOption,
    name: Annotated[str, typer.Option("--name", help="The model's name.", show_default=False)],
    creator: Annotated[str, typer.Option("--creator", help="Who made the model.", show_default=False)],
    n: Annotated[int, typer.Option("--n", help="Number of conversations.")] = 300,
    langs: LangsOption = "en,zh",
    seed: SeedOption = 0,
) -> None:
    """Identity conversations ("who are you?", "你是谁？") naming the model and its creator."""
    from lmforge.synth.identity import identity_conversations

    try:
        records = identity_conversations(n, name=name, creator=creator, langs=_csv(langs, "--langs"), seed=seed)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    _write_jsonl(out, records)
    console.print(f"wrote {len(records)} identity conversations to {out}", soft_wrap=True, markup=False)
    console.print(f"  by category: {_counts(records, 'category')}", markup=False)


@app.command("template")
def template_command(
    seeds: Annotated[list[Path], typer.Option("--seeds", help="Seed snippets: jsonl/txt/csv/parquet files or directories (repeatable).", show_default=False)],
    teacher: Annotated[str, typer.Option("--teacher", help="A checkpoint (or run) directory, or an OpenAI-compatible http(s)://host/v1.", show_default=False)],
    out: OutOption,
    template: Annotated[str, typer.Option("--template", help="Builtin (problem, problem-en, problem-zh) or a text file with {text}.")] = "problem",
    model: Annotated[str, typer.Option("--model", help="Endpoint model name (default: the endpoint's first model).")] = "",
    api_key_env: Annotated[str, typer.Option("--api-key-env", help="Environment variable holding the endpoint's API key.")] = "OPENAI_API_KEY",
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Longest generation.")] = 512,
    temperature: Annotated[float, typer.Option("--temperature", help="0 = greedy; sampling is seeded per seed snippet.")] = 0.0,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Read at most this many seeds in all (a later run with a larger limit continues).", show_default=False)] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Seeds per batch (one durable write each).")] = 8,
    concurrency: Annotated[int, typer.Option("--concurrency", help="Endpoint requests in flight at once.")] = 8,
    text_key: Annotated[str, typer.Option("--text-key", help="Field holding the text in jsonl/csv/parquet seeds.")] = "text",
    txt_mode: Annotated[str, typer.Option("--txt-mode", help="How .txt seeds split: paragraph, line, file, chunk.")] = "paragraph",
    seed: SeedOption = 0,
    resume: Annotated[bool, typer.Option("--resume/--no-resume", help="Continue an earlier run of the same command, or start over.")] = True,
    device: Annotated[str, typer.Option("--device", help="For a checkpoint teacher: auto, cpu, cuda, ...")] = "auto",
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress line.")] = True,
) -> None:
    """Model-written problems and solutions from seed snippets through a prompt template (resumable)."""
    import openai

    from lmforge.synth.template import synthesize_from_template

    try:
        stats = synthesize_from_template(
            seeds, out, teacher=teacher, template=template, model=model, api_key_env=api_key_env,
            max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, limit=limit, batch_size=batch_size,
            concurrency=concurrency, text_key=text_key, txt_mode=txt_mode, resume=resume, progress=progress, device=device,
        )  # fmt: skip
    except openai.OpenAIError as exc:
        from rich.markup import escape

        console.print(f"[bold red]error:[/] the teacher endpoint failed: {escape(str(exc))}; rerun the same command to continue", soft_wrap=True)
        raise typer.Exit(1)
    rejected = {k: v for k, v in stats["rejected"].items() if v}
    console.print(
        f"{stats['seeds_read']} seeds read ({stats['seeds_skipped']['too_short']} too short), {stats['generated']} generated: "
        f"{stats['accepted']} accepted, {sum(rejected.values())} rejected {rejected or ''}",
        soft_wrap=True, markup=False,
    )  # fmt: skip
    console.print(f"  records in {out}, stats in {out}.stats.json", soft_wrap=True, markup=False)
