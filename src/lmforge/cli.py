"""The ``lmforge`` console script: one subcommand per stage.

    lmforge tokenizer train|eval    byte-level BPE tokenizers and their compression
    lmforge data tokenize           text -> token shards
    lmforge model info              shape, parameter count and HF architecture of a recipe's model
    lmforge pretrain                (continued) pretraining on token shards
    lmforge sft                     supervised fine-tuning on chat data
    lmforge generate / chat         text from a checkpoint
    lmforge run                     the whole pipeline as a cached stage graph

Bad recipes and bad data end with a one-line error naming the file and line, exit status 2.
"""

from __future__ import annotations

import typer

from lmforge import __version__
from lmforge.cli_common import run_app
from lmforge.data.cli import app as data_app
from lmforge.infer.cli import chat, generate
from lmforge.model.cli import app as model_app
from lmforge.run import run_command
from lmforge.tokenizer.cli import app as tokenizer_app
from lmforge.train.cli import pretrain, sft

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
app.command("generate", help="Continue prompts with a checkpoint.")(generate)
app.command("chat", help="Chat with a checkpoint in the terminal, through its chat template.")(chat)
app.command("run", help="Run a recipe's whole pipeline as a cached stage graph (the demo).")(run_command)


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
