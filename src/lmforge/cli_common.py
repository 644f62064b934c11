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
