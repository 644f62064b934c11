"""``lmforge report RUN_DIR [--out DIR]``: write a run's report card and print where it is.

    lmforge report runs/demo
    lmforge report runs/demo/sft-2c6624f1103f --out /tmp/sft-card
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def report_command(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR", help="A run directory: of `lmforge run` (run.json + stage dirs) or of one training run (metrics.jsonl).")],
    out: Annotated[Optional[Path], typer.Option("--out", help="Where to write the report (default: RUN_DIR/report).")] = None,
) -> None:
    from lmforge.report import build_report

    try:
        result = build_report(run_dir, out)
    except FileNotFoundError as exc:
        raise typer.BadParameter(str(exc), param_hint="RUN_DIR") from None
    files = result["files"]
    # stdout, one path a line: easy to open or copy.
    print(f"report   {files['html']}")
    print(f"markdown {files['markdown']}")
    print(f"data     {files['json']}")
    for note in result["notes"]:
        print(f"note     {note}")
