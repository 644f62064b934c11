"""``lmforge synth``: placeholder app, filled in by the synth module's commands."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False)
