"""The ``lmforge`` console script: one subcommand per stage.

    lmforge tokenizer train|eval    byte-level BPE tokenizers and their compression
    lmforge data tokenize           text -> token shards
    lmforge model info              shape, parameter count and HF architecture of a recipe's model
    lmforge pretrain                (continued) pretraining on token shards
    lmforge sft                     supervised fine-tuning on chat data
    lmforge lora [merge]            LoRA adapters through peft, and merging them
    lmforge dpo                     direct preference optimization on preference pairs
    lmforge distill                 whitebox / blackbox distillation from a teacher
    lmforge synth                   synthetic data: math, preference pairs, identity, templates
    lmforge generate / chat         text from a checkpoint
    lmforge serve                   OpenAI-compatible server + browser chat page
    lmforge export / import         HF directories and GGUF files out, HF models in
    lmforge eval                    bits per byte, multiple choice, math; lm-evaluation-harness
    lmforge run                     the whole pipeline as a cached stage graph
    lmforge report                  a run's report card: report.md + self-contained report.html

Bad recipes and bad data end with a one-line error naming the file and line, exit status 2.
"""

from __future__ import annotations

import typer
from typer.core import TyperGroup

from lmforge import __version__
from lmforge.cli_common import run_app
from lmforge.data.cli import app as data_app
from lmforge.eval.cli import eval_command
from lmforge.export.cli import export_command, import_command
from lmforge.infer.cli import chat, generate
from lmforge.model.cli import app as model_app
from lmforge.report.cli import report_command
from lmforge.run import run_command
from lmforge.serve.cli import serve
from lmforge.tokenizer.cli import app as tokenizer_app
from lmforge.synth.cli import app as synth_app
from lmforge.train.cli import distill, dpo, lora_merge, lora_train, pretrain, sft


class _LoraGroup(TyperGroup):
    """``lmforge lora RECIPE`` trains (the default subcommand); ``lmforge lora merge ...`` merges."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["train", *args]
        return super().parse_args(ctx, args)


lora_app = typer.Typer(cls=_LoraGroup, no_args_is_help=True, add_completion=False)
lora_app.command("train", help="Train LoRA adapters on chat data (the default: `lmforge lora RECIPE`).")(lora_train)
lora_app.command("merge", help="Fold LoRA adapters into their base: a plain checkpoint.")(lora_merge)

app = typer.Typer(
    help="lmforge: build small, data-efficient language models end to end.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(tokenizer_app, name="tokenizer", help="Train byte-level BPE tokenizers and measure their compression.")
app.add_typer(data_app, name="data", help="Prepare data: tokenize text into memory-mapped shards.")
app.add_typer(model_app, name="model", help="Inspect model shapes: parameters, HF architecture.")
app.command("pretrain", help="Pretrain (or continue pretraining) a model on token shards.")(pretrain)
app.command("sft", help="Fine-tune a pretrained checkpoint on chat data (loss on assistant replies, packed).")(sft)
app.add_typer(lora_app, name="lora", help="LoRA through peft: `lmforge lora RECIPE` trains adapters, `lmforge lora merge` folds them in.")
app.command("dpo", help="Align a checkpoint with preference pairs (DPO, sigmoid loss).")(dpo)
app.command("distill", help="Distil a teacher into a student: whitebox (logits) or blackbox (teacher-written data).")(distill)
app.add_typer(synth_app, name="synth", help="Synthesize data: verifiable math, preference pairs, identity chats, model-written problems.")
app.command("generate", help="Continue prompts with a checkpoint.")(generate)
app.command("chat", help="Chat with a checkpoint in the terminal, through its chat template.")(chat)
app.command("serve", help="Serve a checkpoint: OpenAI-compatible API (continuous batching) and a browser chat page.")(serve)
app.command("export", help="Export a checkpoint: a Hugging Face directory (transformers, vLLM) or a GGUF file (llama.cpp, Ollama).")(export_command)
app.command("import", help="Import a Hugging Face Llama/Qwen2/Qwen3/Qwen3-MoE model as an lmforge checkpoint (logits checked).")(import_command)
app.command("eval", help="Evaluate a checkpoint: bits per byte, multiple choice (C-Eval/CMMLU/MMLU), math; lm-eval tasks.")(eval_command)
app.command("run", help="Run a recipe's whole pipeline as a cached stage graph (the demo).")(run_command)
app.command("report", help="Write a run's report card: report.md and one self-contained report.html.")(report_command)


def _version(value: bool) -> None:
    if value:
        print(f"lmforge {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version.")) -> None:
    pass


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
