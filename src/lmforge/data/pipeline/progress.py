"""The pipeline's progress line: MB and documents done, MB/s, docs/s, ETA, shards finished.

Workers report ``(documents, bytes)`` after every batch — directly when they run in this
process, through a queue when they are worker processes (``drain``) — and ``task_done`` after
each shard. The total is the input files' size, so the ETA is about right for plain text and
jsonl; for compressed inputs the text outgrows that total and the ETA comes out too short.
"""

from __future__ import annotations

import queue as queue_module

from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from lmforge.cli_common import console


class PipelineProgress:
    def __init__(self, label: str, total_bytes: int, tasks: int, enabled: bool = True) -> None:
        self.enabled = enabled and tasks > 0
        self.docs = 0
        self.done = 0
        self.tasks = tasks
        self._progress = None
        if self.enabled:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(bar_width=16),
                DownloadColumn(),
                TransferSpeedColumn(),
                TextColumn("{task.fields[docs]:,} docs {task.fields[rate]}"),
                TextColumn("shards {task.fields[done]}/{task.fields[tasks]}"),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=console,
                transient=False,
            )
            self._task = self._progress.add_task(label, total=max(total_bytes, 1), docs=0, rate="-", done=0, tasks=tasks)

    def __enter__(self) -> "PipelineProgress":
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()

    def advance(self, docs: int, n_bytes: int) -> None:
        self.docs += docs
        if self._progress is None:
            return
        task = self._progress.tasks[0]
        elapsed = task.elapsed or 0.0
        rate = f"{self.docs / elapsed:,.0f}/s" if elapsed > 0 else "-"
        self._progress.update(self._task, advance=n_bytes, docs=self.docs, rate=rate)

    def drain(self, queue) -> None:
        while True:
            try:
                docs, n_bytes = queue.get_nowait()
            except queue_module.Empty:
                return
            except (EOFError, OSError):  # the manager went away (an interrupted run)
                return
            self.advance(docs, n_bytes)

    def task_done(self) -> None:
        self.done += 1
        if self._progress is not None:
            self._progress.update(self._task, done=self.done)
