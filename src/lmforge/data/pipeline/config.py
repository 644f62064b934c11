"""A data pipeline as YAML: inputs, how to read them, the steps, where the clean shards go.

::

    name: default
    inputs: [../shared/data/pretrain]      # files or directories, relative to the working directory
    reader: {txt_mode: chunk, chunk_chars: 2000}
    output: {dir: runs/data/default, format: jsonl.zst}
    steps:
      - type: normalize
      - type: langid
        allowed: [zh, en, code]
      - type: gopher_quality
        languages: [zh, en]                # only documents tagged zh or en; others pass untouched
      - type: minhash_dedup
        threshold: 0.8

Load with ``load_pipeline(path, overrides)``; overrides are dotted ``--set`` keys as for recipes
(``output.dir=...``, ``workers=4``, ``steps[2].min_words=20`` is not supported — override whole
``steps`` in a YAML that uses ``base:``). Each step entry is checked against its step's own
``Config`` dataclass, so a typo names the file and line it is on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lmforge.config import ConfigError, Marks, apply_overrides, build, load_yaml_with_marks, to_dict
from lmforge.data.pipeline.base import Step, step_types

# Keys every step entry accepts besides its own settings (see base.py).
COMMON_STEP_KEYS = ("type", "name", "languages", "keep_dropped")


@dataclass
class ReaderConfig:
    text_key: str = "text"  # jsonl/parquet/csv field holding the text
    txt_mode: Literal["paragraph", "line", "file", "chunk"] = "chunk"  # .txt files: documents of ~chunk_chars
    chunk_chars: int = 2000  # target document size for txt_mode=chunk (cut at paragraph ends)
    skip_bad: bool = False  # count and skip malformed records instead of stopping at the first

    def __post_init__(self) -> None:
        if self.chunk_chars < 1:
            raise ValueError(f"chunk_chars must be >= 1; got {self.chunk_chars}")


@dataclass
class OutputConfig:
    dir: str = "runs/data"  # clean shards, stats, report and side files go under this directory
    format: Literal["jsonl.zst", "parquet"] = "jsonl.zst"
    docs_per_file: int = 50_000  # documents per output shard file
    keep_dropped: bool = True  # write each step's dropped documents to dropped/<step>/ (inspect with zstdcat)
    examples_per_reason: int = 3  # dropped-text examples kept per step and reason for the report

    def __post_init__(self) -> None:
        if self.docs_per_file < 1:
            raise ValueError(f"docs_per_file must be >= 1; got {self.docs_per_file}")


@dataclass
class PipelineConfig:
    name: str = "pipeline"
    inputs: list[str] = field(default_factory=list)
    reader: ReaderConfig = field(default_factory=ReaderConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    steps: list[dict[str, Any]] = field(default_factory=list)
    executor: Literal["local", "ray"] = "local"  # ray: one task per shard on a Ray cluster
    ray_address: str | None = None  # None: start a local Ray instance; "auto" or ray://host:port: join one
    workers: int = 0  # local worker processes (0: one per CPU core this process may use)
    # Uncompressed jsonl files bigger than this are read as several shards (line-aligned byte
    # ranges), so one big file still keeps every worker busy; other files are one shard each.
    shard_bytes: int = 256_000_000
    batch_size: int = 256  # documents handed to each step at a time
    seed: int = 0

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0; got {self.workers}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {self.batch_size}")
        if self.shard_bytes < 1:
            raise ValueError(f"shard_bytes must be >= 1; got {self.shard_bytes}")


@dataclass
class CleanConfig:
    """A recipe's ``clean`` section: the data pipeline ``lmforge run`` puts between corpus and tokenizer."""

    pipeline: str | None = None  # pipeline YAML (relative to the working directory); None: no cleaning
    overrides: list[str] = field(default_factory=list)  # `--set`-style keys for it, e.g. ["workers=2"]


@dataclass
class StepSpec:
    """One built step entry: its type, unique name, scope and validated config."""

    type: str
    name: str
    config: Any
    languages: list[str] | None = None
    keep_dropped: bool | None = None

    def make(self) -> Step:
        return step_types()[self.type](self.config, self.name)

    @property
    def is_global(self) -> bool:
        from lmforge.data.pipeline.base import GlobalStep

        return issubclass(step_types()[self.type], GlobalStep)


def build_steps(raw_steps: list[dict], marks: Marks | None = None, path: str = "steps") -> list[StepSpec]:
    """Validate each step entry against its type's Config; names are made unique (``x``, ``x_2``)."""
    marks = marks or {}
    types = step_types()
    specs: list[StepSpec] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(raw_steps):
        where = marks.get(f"{path}[{i}]", marks.get(path, "pipeline"))
        if not isinstance(entry, dict) or "type" not in entry:
            raise ConfigError(f"{where}: {path}[{i}] must be a mapping with a 'type' key; got {entry!r}")
        entry = dict(entry)
        type_name = entry.pop("type")
        if type_name not in types:
            import difflib

            close = difflib.get_close_matches(str(type_name), list(types), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"{where}: unknown step type '{type_name}'{hint}\n    step types: {', '.join(sorted(types))}")
        name = entry.pop("name", None) or type_name
        languages = entry.pop("languages", None)
        if languages is not None and (not isinstance(languages, list) or not all(isinstance(x, str) for x in languages)):
            raise ConfigError(f"{where}: {path}[{i}].languages must be a list of language tags, e.g. [zh, en]; got {languages!r}")
        keep_dropped = entry.pop("keep_dropped", None)
        if keep_dropped is not None and not isinstance(keep_dropped, bool):
            raise ConfigError(f"{where}: {path}[{i}].keep_dropped must be true or false; got {keep_dropped!r}")
        config = build(types[type_name].Config, entry, marks, f"{path}[{i}]")
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            name = f"{name}_{seen[name]}"
        specs.append(StepSpec(type_name, name, config, languages, keep_dropped))
    return specs


def load_pipeline(path: str | Path, overrides: list[str] | None = None) -> tuple[PipelineConfig, list[StepSpec]]:
    """Read a pipeline YAML (``base:`` inheritance and ``--set`` overrides as for recipes)."""
    raw, marks = load_yaml_with_marks(path)
    apply_overrides(raw, overrides, marks)
    return build_pipeline(raw, marks)


def build_pipeline(raw: dict, marks: Marks | None = None) -> tuple[PipelineConfig, list[StepSpec]]:
    cfg = build(PipelineConfig, raw, marks)
    return cfg, build_steps(cfg.steps, marks)


def step_resources(specs: list[StepSpec], base_dir: Path) -> dict[str, list]:
    """Size and mtime of every file the steps' ``resource_fields`` name (word lists, eval sets,
    models; a directory counts by its files), so a changed resource — not only a changed
    setting — makes the pipeline a different one."""
    found: dict[str, list] = {}
    for spec in specs:
        for name in step_types()[spec.type].resource_fields:
            value = getattr(spec.config, name, None)
            for item in value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(item, (str, Path)) and str(item):
                    found[f"{spec.name}.{name}:{item}"] = _file_stats(base_dir, Path(item).expanduser())
    return found


def _file_stats(base_dir: Path, path: Path, limit: int = 10_000) -> list:
    path = path if path.is_absolute() else base_dir / path
    if path.is_file():
        return [path.stat().st_size, int(path.stat().st_mtime)]
    if not path.is_dir():
        return []  # the step itself reports a missing resource, with its own message
    stats = []
    for p in path.rglob("*"):
        if p.is_file():
            stats.append([str(p.relative_to(path)), p.stat().st_size, int(p.stat().st_mtime)])
            if len(stats) >= limit:
                break
    return sorted(stats)


def pipeline_fingerprint(cfg: PipelineConfig, specs: list[StepSpec], files: list[dict], base_dir: Path = Path(".")) -> str:
    """What the output depends on: inputs (paths, sizes, mtimes), reading, steps and the files
    their settings name, output format.

    Worker count, executor and side-file settings are left out: they change how the work is
    done, not what it produces, so a resumed run may use other ones.
    """
    payload = {
        "files": files,
        "resources": step_resources(specs, base_dir),
        "reader": to_dict(cfg.reader),
        "format": cfg.output.format,
        "docs_per_file": cfg.output.docs_per_file,
        "seed": cfg.seed,
        "shard_bytes": cfg.shard_bytes,  # how files are cut into shards: part of the output's layout
        "steps": [
            {"type": s.type, "name": s.name, "languages": s.languages, "config": to_dict(s.config)} for s in specs
        ],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def spec_to_dict(spec: StepSpec) -> dict:
    return {"type": spec.type, "name": spec.name, "languages": spec.languages, "keep_dropped": spec.keep_dropped, **to_dict(spec.config)}


def specs_from_dicts(entries: list[dict]) -> list[StepSpec]:
    """Rebuild specs in a worker process from ``spec_to_dict`` output (names kept as given)."""
    specs = build_steps(entries)
    return [dataclasses.replace(s, name=e["name"]) for s, e in zip(specs, entries)]
