"""Pieces every subcommand shares: the ``--set`` option, recipe loading, and error reporting.

Subcommand modules keep their heavy imports (torch, transformers) inside the command functions
so that ``lmforge --help`` answers at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

console = Console(stderr=True, highlight=False)

SetOption = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", help="Override a recipe value, e.g. --set train.lr=3e-4 (repeatable)."),
]
RecipeArgument = Annotated[Path, typer.Argument(help="YAML recipe, e.g. recipes/demo.yaml.")]


def load_recipe_for_cli(path: Path | None, overrides: list[str] | None):
    """Load a recipe; configuration mistakes surface as clean errors through ``main``."""
    from lmforge.recipe import load_recipe

    return load_recipe(path, overrides or [])


def run_app(app: typer.Typer) -> None:
    """Run a Typer app; bad recipes and bad data end in one line naming the place, exit status 2."""
    import sys

    from rich.markup import escape

    from lmforge.config import ConfigError
    from lmforge.data.document import DataError

    try:
        app()
    except (ConfigError, DataError) as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)
