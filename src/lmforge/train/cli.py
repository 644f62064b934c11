"""``lmforge pretrain RECIPE [--set k=v ...] [--resume]``: the pretraining stage from the command line.

Runs on one process, or on several under ``torchrun`` (DDP; only rank 0 writes)::

    lmforge pretrain recipes/demo.yaml --set train.max_steps=200
    lmforge pretrain recipes/demo.yaml --resume                 # continue after a crash or kill
    torchrun --nproc_per_node 2 -m lmforge.train.cli recipes/demo.yaml

``python -m lmforge.train.cli`` is the same command, for ``torchrun -m`` and for environments
without the console script. Heavy imports (torch) happen inside the command so ``lmforge --help``
stays instant.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from lmforge.cli_common import RecipeArgument, SetOption, console, load_recipe_for_cli

ResumeOption = Annotated[
    bool,
    typer.Option(
        "--resume",
        help="Continue from the latest checkpoint in train.out_dir, exactly as if never stopped "
        "(starts from step 0 when there is none).",
    ),
]


def _run_stage(train_fn, recipe, resume: bool):
    """Run a training stage; a diverged run ends with one explanation (rank 0's) and status 1.
    Returns the result on rank 0, None elsewhere."""
    from rich.markup import escape

    from lmforge.train.trainer import TrainingDiverged

    try:
        result = train_fn(recipe, resume=resume)
    except TrainingDiverged as exc:
        if os.environ.get("RANK", "0") == "0":  # every rank stops; one explains
            console.print(f"[bold red]training diverged:[/] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(1)
    return result if result.is_main else None


def pretrain(recipe_path: RecipeArgument, overrides: SetOption = None, resume: ResumeOption = False) -> None:
    """Pretrain (or continue pretraining, with train.init_from) a model on token shards.

    Writes checkpoints, metrics.jsonl, TensorBoard events and loss_curve.png under train.out_dir.

    A NaN/inf loss stops the run with exit status 1 and keeps the last good checkpoint.
    """
    recipe = load_recipe_for_cli(recipe_path, overrides)
    from lmforge.train.metrics import say
    from lmforge.train.pretrain import train

    result = _run_stage(train, recipe, resume)
    if result is None:
        return
    s = result.summary()
    loss = f", train loss {s['train_loss']:.4f}" if s["train_loss"] is not None else ""
    console.print(f"\n[bold]done:[/] step {s['step']:,}, {s['tokens_seen']:,} tokens{loss}")
    if s["val_loss"] is not None:
        baseline = f" (unigram baseline {s['unigram_baseline']:.4f})" if s["unigram_baseline"] is not None else ""
        say(f"  held-out loss  {s['val_loss']:.4f} nats/token, {s['val_bpt']:.3f} bits/token{baseline}")
    say(f"  checkpoint     {s['checkpoint']}")
    say(f"  metrics        {s['metrics']}")
    if s["loss_curve"]:
        say(f"  loss curve     {s['loss_curve']}")
    if s["tensorboard"]:
        say(f"  tensorboard    tensorboard --logdir {s['tensorboard']}")


SkipBadOption = Annotated[
    bool,
    typer.Option("--skip-bad", help="Count and skip malformed records (reported in the run's data file) instead of stopping at the first."),
]


def _finetune_summary(result, what: str) -> None:
    from lmforge.train.metrics import say

    s = result.summary()
    loss = f", train loss {s['train_loss']:.4f}" if s["train_loss"] is not None else ""
    console.print(f"\n[bold]done:[/] step {s['step']:,}{loss}")
    if s["val_loss"] is not None:
        say(f"  held-out loss  {s['val_loss']:.4f} {what}")
    for key in ("eval_reward_accuracy", "eval_reward_margin", "eval_kl_t1", "eval_teacher_ce"):
        if key in result.metrics:
            say(f"  {key.removeprefix('eval_').replace('_', ' '):<14} {result.metrics[key]:.4f} (held out)")
    say(f"  checkpoint     {s['checkpoint']}")
    say(f"  chat           lmforge chat {s['checkpoint']}")


def _load(recipe_path, overrides, skip_bad: bool, section: str):
    return load_recipe_for_cli(recipe_path, [*(overrides or []), *([f"{section}.skip_bad=true"] if skip_bad else [])])


def sft(recipe_path: RecipeArgument, overrides: SetOption = None, resume: ResumeOption = False, skip_bad: SkipBadOption = False) -> None:
    """Fine-tune a pretrained checkpoint (train.init_from) on chat data (sft.train): loss on the
    assistant's replies only, conversations packed without attending to each other."""
    recipe = _load(recipe_path, overrides, skip_bad, "sft")
    from lmforge.train.sft import train_sft

    result = _run_stage(train_sft, recipe, resume)
    if result is not None:
        _finetune_summary(result, "nats/token on assistant replies")


def lora_train(recipe_path: RecipeArgument, overrides: SetOption = None, resume: ResumeOption = False, skip_bad: SkipBadOption = False) -> None:
    """Train LoRA adapters (section lora) on chat data (sft.train) over a frozen checkpoint
    (train.init_from); checkpoints are peft adapters, `lmforge lora merge` folds them in."""
    recipe = _load(recipe_path, overrides, skip_bad, "sft")
    from lmforge.train.lora import train_lora

    result = _run_stage(train_lora, recipe, resume)
    if result is not None:
        _finetune_summary(result, "nats/token on assistant replies")
        console.print(f"  merge          lmforge lora merge {result.checkpoint} --out {result.run_dir / 'merged'}")


def lora_merge(
    adapter: Annotated[Path, typer.Argument(help="A peft adapter directory (an `lmforge lora` checkpoint or run directory).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the merged checkpoint.")],
    base: Annotated[Optional[Path], typer.Option("--base", help="Base checkpoint (default: the adapter's base_model_name_or_path).")] = None,
) -> None:
    """Fold LoRA adapters into their base weights: a plain checkpoint for chat, serving and export."""
    from lmforge.train.lora import merge_lora

    path = merge_lora(adapter, out, base=base)
    console.print(f"[bold]merged:[/] {path}")


def dpo(recipe_path: RecipeArgument, overrides: SetOption = None, resume: ResumeOption = False, skip_bad: SkipBadOption = False) -> None:
    """Align a fine-tuned checkpoint (train.init_from) with preference pairs (dpo.train): DPO's
    sigmoid loss against a frozen or precomputed reference."""
    recipe = _load(recipe_path, overrides, skip_bad, "dpo")
    from lmforge.train.dpo import train_dpo

    result = _run_stage(train_dpo, recipe, resume)
    if result is not None:
        _finetune_summary(result, "DPO loss per pair")


def distill(recipe_path: RecipeArgument, overrides: SetOption = None, resume: ResumeOption = False, skip_bad: SkipBadOption = False) -> None:
    """Distil a teacher (distill.teacher) into a student (train.init_from): whitebox on the
    teacher's token distributions, or blackbox through teacher-written SFT data."""
    recipe = _load(recipe_path, overrides, skip_bad, "sft")
    from lmforge.train.distill import train_distill

    result = _run_stage(train_distill, recipe, resume)
    if result is not None:
        _finetune_summary(result, "nats/token on assistant replies")


def main() -> None:
    """Entry point for ``python -m lmforge.train.cli`` (and torchrun), with the same error handling as ``lmforge``."""
    from lmforge.cli_common import run_app

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(pretrain)
    run_app(app)


if __name__ == "__main__":
    main()
