"""Resumable model-driven synthesis: an append-only jsonl output and a sidecar state file.

Model calls are slow and runs get killed; a rerun must continue where the last one stopped and
end with the same file an uninterrupted run writes. ``ResumableJsonl`` keeps
``OUT.stats.json`` beside ``OUT``: the inputs the run was started with, how many input items are
done (written or rejected), the output's size after the last completed batch, and the stats.
Each batch's records are appended with flush + fsync *before* the state is replaced atomically,
so after a crash the output is at most one batch longer than the state says; the rerun cuts
that partial batch off and redoes it. A rerun with other inputs (another teacher, template,
temperature, seed files) is refused instead of silently mixing two runs' data::

    out = ResumableJsonl("problems.jsonl", inputs={"teacher": t, ...}, stats={"accepted": 0})
    for batch in batches_after(out.done):
        out.commit(records, consumed=len(batch), stats=stats)
    out.finish(stats)
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterator

from lmforge.config import ConfigError
from lmforge.data.document import DataError
from lmforge.io import write_json_atomic


def request_seed(seed: int, *parts: object) -> int:
    """A per-item sampling seed: the same for an item whichever batch it lands in."""
    digest = hashlib.sha256(":".join(map(str, (seed, *parts))).encode()).hexdigest()
    return int(digest[:8], 16)


def _differences(a: dict, b: dict) -> list[str]:
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


class ResumableJsonl:
    """See the module docstring. ``resume=False`` starts over (the output is truncated)."""

    def __init__(self, path: str | os.PathLike, inputs: dict, stats: dict, resume: bool = True) -> None:
        self.path = Path(path)
        self.state_path = self.path.with_name(self.path.name + ".stats.json")
        inputs = json.loads(json.dumps(inputs))  # tuples -> lists, as they come back from the file
        state = None
        if resume and self.state_path.is_file():
            try:
                state = json.loads(self.state_path.read_text(encoding="utf-8"))
                done, out_bytes = int(state["done"]), int(state["out_bytes"])
            except (ValueError, KeyError, TypeError) as exc:
                raise DataError(f"{self.state_path}: not a synthesis state file ({exc}); remove it to start over") from None
            if state.get("inputs") != inputs:
                changed = ", ".join(_differences(state.get("inputs") or {}, inputs))
                raise ConfigError(
                    f"{self.state_path}: {self.path} was started with other inputs (changed: {changed}); "
                    "use another output file, or --no-resume to overwrite it"
                )
            size = self.path.stat().st_size if self.path.exists() else 0
            if size < out_bytes:
                raise DataError(f"{self.path}: {size} bytes, but {self.state_path.name} says {out_bytes} were written; remove both to start over")
            if size > out_bytes:  # a batch appended after the last state save: it is redone
                os.truncate(self.path, out_bytes)
            state["done"], state["out_bytes"] = done, out_bytes
        elif resume and self.path.exists() and self.path.stat().st_size > 0:
            raise ConfigError(f"{self.path} exists but has no {self.state_path.name} to resume from; remove it, or pass --no-resume to overwrite it")
        if state is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_bytes(b"")
            state = {"inputs": inputs, "done": 0, "out_bytes": 0, "finished": False, "stats": stats}
            write_json_atomic(self.state_path, state)
        self.state = state

    @property
    def done(self) -> int:
        """Input items finished (written or rejected) by earlier runs and this one."""
        return self.state["done"]

    @property
    def stats(self) -> dict:
        return self.state["stats"]

    def records(self) -> Iterator[dict]:
        """The records written so far (e.g. to rebuild a duplicate filter on resume)."""
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)

    def commit(self, records: list[dict], consumed: int, stats: dict) -> None:
        """Append one batch's records durably, then record that ``consumed`` more items are done."""
        with open(self.path, "a", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
            size = f.tell()
        self.state.update(done=self.state["done"] + consumed, out_bytes=size, stats=stats)
        write_json_atomic(self.state_path, self.state)

    def finish(self, stats: dict) -> None:
        self.state.update(finished=True, stats=stats)
        write_json_atomic(self.state_path, self.state)


class Progress:
    """A live line on stderr (items done, written, rejected, rate) when enabled; silent otherwise."""

    def __init__(self, label: str, total: int | None, done: int, enabled: bool) -> None:
        self._bar = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn

            from lmforge.cli_common import console

            self._bar = RichProgress(
                TextColumn("[bold]{task.description}"), BarColumn(bar_width=20), MofNCompleteColumn(),
                TextColumn("written {task.fields[written]} rejected {task.fields[rejected]}"), TimeElapsedColumn(),
                console=console,
            )  # fmt: skip
            self._task = self._bar.add_task(label, total=total, completed=done, written=0, rejected=0)
            self._bar.start()

    def update(self, done: int, written: int, rejected: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=done, written=written, rejected=rejected)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
