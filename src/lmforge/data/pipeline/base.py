"""The contract every data-pipeline step follows, and the registry YAML pipelines look steps up in.

A step maps documents to documents. It sees them in batches (``process_batch``; by default one
``process`` call per document) and answers, for each document, either the document (changed or
not) or ``drop("reason")``. The executor does all the counting — documents and bytes in and out,
drops by reason, changed documents — so a step only says what it decided, and the funnel always
adds up. A step may add its own counters with ``self.count("email", 3)`` (redactions, languages
seen, ...); they land in the step's stats next to the drop reasons.

Writing a step::

    from dataclasses import dataclass
    from lmforge.data.pipeline.base import Step, drop, register_step

    @dataclass
    class MinLengthConfig:
        min_chars: int = 200  # shorter documents are dropped

    @register_step("min_length")
    class MinLength(Step):
        Config = MinLengthConfig

        def process(self, doc):
            return doc if len(doc.text) >= self.config.min_chars else drop("too_short")

and in a pipeline YAML::

    steps:
      - type: min_length
        min_chars: 500

Steps that must see the whole corpus before deciding about any document (deduplication)
subclass ``GlobalStep``: the executor runs ``collect`` on every shard, calls ``decide`` once
over everything collected, then runs ``process`` (with ``setup`` having loaded the decision) on
every shard again. See ``GlobalStep`` for the exact protocol.

Every step also accepts these keys in YAML, handled by the executor, not by the step:
``name`` (a label for reports; default the type, made unique), ``languages`` (apply only to
documents whose ``metadata["lang"]`` is one of these; others pass untouched) and
``keep_dropped`` (write this step's dropped documents to a side file; default from the
pipeline's ``output.keep_dropped``).
"""

from __future__ import annotations

import abc
import collections
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from lmforge.data.document import Document


@dataclass(frozen=True)
class Drop:
    """A step's verdict that a document leaves the pipeline, and why (a short snake_case reason)."""

    reason: str


def drop(reason: str) -> Drop:
    return Drop(reason)


@dataclass
class NoConfig:
    """For steps without settings."""


@dataclass
class StepContext:
    """What a step may need from its surroundings; given to ``setup`` once per worker process.

    ``base_dir``: the directory relative resource paths in the step's config are resolved
    against (the working directory of ``lmforge data run``, as for every path in a recipe). ``work_dir``: this step's own scratch directory,
    shared by all workers (where a ``GlobalStep``'s decision lives). ``seed``: the pipeline seed.
    """

    base_dir: Path
    work_dir: Path
    seed: int = 0
    extra: dict = field(default_factory=dict)

    def resolve(self, path: str | Path) -> Path:
        """A config path: absolute as given, or relative to ``base_dir``; ``~`` expanded."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else self.base_dir / p


class Step:
    """One transformation of the document stream. Subclass, set ``Config``, register."""

    type_name: ClassVar[str] = ""  # set by @register_step
    Config: ClassVar[type] = NoConfig
    # Config fields that name files or directories the step reads (word lists, eval sets,
    # models): their sizes and mtimes join the pipeline's fingerprint, so changing one is
    # changing the pipeline.
    resource_fields: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: Any = None, name: str | None = None) -> None:
        self.config = config if config is not None else self.Config()
        self.name = name or self.type_name
        self.counters: collections.Counter[str] = collections.Counter()

    def setup(self, ctx: StepContext) -> None:
        """Load what the step needs (word lists, models, decisions) once per worker process.

        One instance then serves every shard that worker runs, so keep no per-document state
        on it; ``counters`` is reset for each shard.
        """

    def process(self, doc: Document) -> Document | Drop:
        """One document in, the document (possibly changed) or ``drop(reason)`` out."""
        return doc

    def process_batch(self, docs: list[Document]) -> list[Document | Drop]:
        """A batch in, one answer per document in the same order. Override to vectorize."""
        return [self.process(doc) for doc in docs]

    def count(self, key: str, n: int = 1) -> None:
        """Add to one of this step's own counters (reported next to its drop reasons)."""
        self.counters[key] += n

    def close(self) -> None:
        """Release resources (called once per worker after its last document)."""


class GlobalStep(Step, abc.ABC):
    """A step whose decision needs the whole corpus (exact/near/line deduplication).

    The executor runs it in three phases, each resumable:

    1. ``collect(docs) -> dict[str, np.ndarray]`` on every batch of every shard, with
       ``self.shard`` set to that shard's index (no ``setup`` before it). Each key's arrays are
       concatenated along the first axis per shard (keys may differ in row count) and saved to
       ``work_dir/collect-XXXXX.npz`` — also for a shard with no documents left, then with no keys. Rows usually carry the document id (as a fixed-width
       string or an integer key) plus its hash or signature.
    2. ``decide(collected, work_dir) -> dict`` once, in one process, with the list of all
       shards' npz files in shard order; it writes whatever ``setup`` will need into
       ``work_dir`` (atomically) and returns a JSON-able summary for the report (for example the
       clusters found, with a few example members).
    3. ``setup(ctx)`` then ``process``/``process_batch`` on every shard again, exactly as for a
       plain step; the documents come back in the same order and with the same ids as in
       phase 1.

    Document ids are unique within a pipeline run (the executor makes them so), so a decision
    may be a set of ids.
    """

    shard: int = 0

    @abc.abstractmethod
    def collect(self, docs: list[Document]) -> dict[str, np.ndarray]:
        """Rows describing these documents (ids, hashes, signatures) for ``decide``."""

    @abc.abstractmethod
    def decide(self, collected: list[Path], work_dir: Path) -> dict:
        """Read every shard's collected rows, write the decision into ``work_dir``, summarize it."""


STEP_TYPES: dict[str, type[Step]] = {}


def register_step(type_name: str):
    """Class decorator: make a step available to YAML pipelines as ``type: <type_name>``."""

    def wrap(cls: type[Step]) -> type[Step]:
        if type_name in STEP_TYPES and STEP_TYPES[type_name] is not cls:
            raise ValueError(f"step type {type_name!r} is registered twice")
        cls.type_name = type_name
        STEP_TYPES[type_name] = cls
        return cls

    return wrap


def step_types() -> dict[str, type[Step]]:
    """Every registered step type (importing lmforge's own steps first)."""
    import lmforge.data.steps  # noqa: F401  (registers the built-in steps)

    return dict(STEP_TYPES)
