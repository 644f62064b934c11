"""``lmforge generate`` and ``lmforge chat``: text from a checkpoint, through the inference engine.

    lmforge generate runs/demo --prompt "Once upon a time" --max-new-tokens 50 --seed 0
    lmforge generate ckpt/ -p "def add(" -p "你好" --temperature 0 --json      # one batch, JSON lines
    echo "The sky is" | lmforge generate ckpt/                                # prompt from stdin
    lmforge chat runs/demo --system "You are a helpful assistant." --temperature 0.7

CKPT is a checkpoint directory (``config.json``, weights, tokenizer files) or a training run
directory, whose latest ``checkpoints/step_*`` is used. ``generate`` streams a single prompt
(``--no-stream`` waits for the whole text); several prompts run as one batch and are printed in
order when done. Generated text goes to stdout; notes go to stderr. A prompt longer than the
context minus ``--max-new-tokens`` keeps its tail (a warning says how much was dropped).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from lmforge.cli_common import console

CheckpointArgument = Annotated[
    Path, typer.Argument(help="Checkpoint directory, or a run directory (its latest checkpoints/step_* is used).", show_default=False)
]
TemperatureOption = Annotated[float, typer.Option("--temperature", "-t", help="0 = greedy.")]
TopKOption = Annotated[int, typer.Option("--top-k", help="Sample from the k most likely tokens (0 = off).")]
TopPOption = Annotated[float, typer.Option("--top-p", help="Nucleus sampling: smallest set with this probability (1 = off).")]
PenaltyOption = Annotated[float, typer.Option("--repetition-penalty", help="> 1 discourages tokens already in the context (1 = off).")]
SeedOption = Annotated[Optional[int], typer.Option("--seed", help="Seed for reproducible sampling; default: random.", show_default=False)]
StopOption = Annotated[Optional[list[str]], typer.Option("--stop", help="Stop string (repeatable); not included in the output.", show_default=False)]
DeviceOption = Annotated[str, typer.Option("--device", help="auto (CUDA if available), cpu, cuda, cuda:1, ...")]
DtypeOption = Annotated[str, typer.Option("--dtype", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16.")]


def _sampling(**kwargs):
    from lmforge.infer.sampling import SamplingConfig

    kwargs["stop"] = list(kwargs.get("stop") or [])
    try:
        return SamplingConfig(**kwargs)
    except ValueError as exc:
        _fail(str(exc))


def _fail(message: str):
    from rich.markup import escape

    # escape: a path like runs/[exp1] is text, not markup; soft_wrap: paths must not be wrapped.
    console.print(f"[bold red]error:[/] {escape(message)}", markup=True, soft_wrap=True)
    raise typer.Exit(2)


def _load_engine(checkpoint: Path, device: str, dtype: str):
    from lmforge.infer.engine import Engine

    try:
        engine = Engine.from_checkpoint(checkpoint, device=device, dtype=None if dtype == "auto" else dtype)
    except (FileNotFoundError, ValueError, OSError) as exc:
        _fail(str(exc))
    weight = engine.model.model.embed_tokens.weight
    console.print(f"loaded {engine.checkpoint_dir} ({weight.device}, {str(weight.dtype).removeprefix('torch.')})", markup=False, soft_wrap=True)
    return engine


def _fit_budget(engine, sampling):
    """A reply budget as large as the whole context would leave no room for the prompt: halve it."""
    from dataclasses import replace

    if sampling.max_new_tokens < engine.max_context:
        return sampling
    console.print(f"note: --max-new-tokens {sampling.max_new_tokens} >= the {engine.max_context}-token context; using {engine.max_context // 2}")
    return replace(sampling, max_new_tokens=engine.max_context // 2)


def generate(
    checkpoint: CheckpointArgument,
    prompt: Annotated[
        Optional[list[str]],
        typer.Option("--prompt", "-p", help="Prompt text (repeatable: several run as one batch); default: read stdin.", show_default=False),
    ] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", "-n", help="Tokens to generate at most per prompt.")] = 64,
    temperature: TemperatureOption = 0.8,
    top_k: TopKOption = 0,
    top_p: TopPOption = 1.0,
    repetition_penalty: PenaltyOption = 1.0,
    seed: SeedOption = None,
    stop: StopOption = None,
    stream: Annotated[bool, typer.Option("--stream/--no-stream", help="Print tokens as they come (single prompt).")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per prompt (prompt, completion, finish_reason, token counts).")] = False,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
) -> None:
    prompts = list(prompt or [])
    if not prompts:
        if sys.stdin.isatty():
            _fail("give a prompt with --prompt TEXT (repeatable), or pipe one on stdin")
        prompts = [sys.stdin.read().rstrip("\n")]
    sampling = _sampling(
        max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
        repetition_penalty=repetition_penalty, seed=seed, stop=stop,
    )
    engine = _load_engine(checkpoint, device, dtype)
    sampling = _fit_budget(engine, sampling)
    out = sys.stdout

    if stream and len(prompts) == 1 and not as_json:
        out.write(prompts[0])
        out.flush()
        for piece in engine.stream_text(engine.encode(prompts[0]), sampling):
            out.write(piece)
            out.flush()
        out.write("\n")
        return

    results = engine.complete_batch(prompts, sampling)
    for i, (text, result) in enumerate(zip(prompts, results)):
        if as_json:
            record = {
                "prompt": text,
                "completion": result.text,
                "finish_reason": result.finish_reason,
                "prompt_tokens": len(result.prompt_ids),
                "completion_tokens": len(result.token_ids),
            }
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
        else:
            if len(prompts) > 1:
                out.write(("" if i == 0 else "\n") + f"--- [{i + 1}/{len(prompts)}] ---\n")
            out.write(text + result.text + "\n")
    out.flush()


def chat(
    checkpoint: CheckpointArgument,
    system: Annotated[Optional[str], typer.Option("--system", help="System message that starts the conversation.", show_default=False)] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", "-n", help="Tokens per reply at most.")] = 256,
    temperature: TemperatureOption = 0.8,
    top_k: TopKOption = 0,
    top_p: TopPOption = 1.0,
    repetition_penalty: PenaltyOption = 1.0,
    seed: SeedOption = None,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
) -> None:
    from lmforge.infer.chat import run_chat

    sampling = _sampling(
        max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
        repetition_penalty=repetition_penalty, seed=seed,
    )
    engine = _load_engine(checkpoint, device, dtype)
    sampling = _fit_budget(engine, sampling)
    if not getattr(engine.tokenizer, "chat_template", None):
        _fail(f"{engine.checkpoint_dir}: the tokenizer has no chat template; use `lmforge generate` for plain completion")
    run_chat(engine, sampling, system=system)
