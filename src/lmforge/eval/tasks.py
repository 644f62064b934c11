"""Evaluation tasks by name: parse a task spec, run it on a model, collect and save the results.

A task spec is ``KIND[:PATH][?key=value&key=value]``, the same on the command line
(``lmforge eval CKPT --task ...``) and in recipes (``train.eval_tasks``, evaluated during training):

==============  ==============================================  =====================================
kind            PATH                                            options
==============  ==============================================  =====================================
``bpb``         text files / dirs (any reader format)           max_bytes, stride, txt_mode, text_key
``mc``          CSV file or dir (layout auto-detected)          k_shot, lang, scoring, limit, dev
``cmmlu``,      the same, layout fixed                          (as mc)
``ceval``,
``mmlu``
``gsm8k``       GSM8K-format jsonl                              prompt, k_shot, shots, limit,
                                                                max_new_tokens, temperature, seed,
                                                                strict
``math``        lmforge synthetic problems (jsonl), or none:    (as gsm8k) + n, levels, langs
                ``n`` fresh held-out problems are generated
==============  ==============================================  =====================================

Every task also takes ``name`` (default ``KIND:STEM``). Each returns a results entry::

    {"kind": "bpb" | "multiple_choice" | "math", "metric": "bpb" | "accuracy", "value": float,
     "chance": float | None, "n": int, "seconds": float, "details": {...}}

and ``save_results`` merges entries into ``eval_results.json`` (next to the checkpoint for
``lmforge eval``). Usage::

    model = EvalModel.from_checkpoint("runs/demo/sft-.../checkpoints/step_000150")
    results = run_tasks(model, ["bpb:../shared/data/pretrain/en_history.txt", "cmmlu:../shared/data/eval/cmmlu_dev?k_shot=0"])
    save_results(model.checkpoint_dir / RESULTS_FILE, results, checkpoint=model.checkpoint_dir)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from lmforge.config import ConfigError

RESULTS_FILE = "eval_results.json"

_GEN_OPTIONS = {"prompt": str, "k_shot": int, "shots": str, "limit": int, "max_new_tokens": int, "temperature": float, "seed": int, "strict": bool}
_MC_OPTIONS = {"k_shot": int, "lang": str, "scoring": str, "limit": int, "dev": str}
OPTIONS: dict[str, dict[str, type]] = {
    "bpb": {"max_bytes": int, "stride": int, "txt_mode": str, "text_key": str},
    "mc": _MC_OPTIONS, "cmmlu": _MC_OPTIONS, "ceval": _MC_OPTIONS, "mmlu": _MC_OPTIONS,
    "gsm8k": _GEN_OPTIONS,
    "math": {**_GEN_OPTIONS, "n": int, "levels": str, "langs": str},
}  # fmt: skip
KINDS = tuple(OPTIONS)
_NEEDS_PATH = {"bpb", "mc", "cmmlu", "ceval", "mmlu", "gsm8k"}


@dataclass
class TaskSpec:
    kind: str
    path: str | None
    options: dict[str, Any] = field(default_factory=dict)
    name: str = ""

    def __str__(self) -> str:
        return self.name


def _convert(spec: str, key: str, value: str, kind: type) -> Any:
    try:
        if kind is bool:
            if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError
            return value.lower() in ("1", "true", "yes")
        return kind(value)
    except ValueError:
        raise ConfigError(f"task {spec!r}: option {key}={value!r} is not a valid {kind.__name__}") from None


def parse_task(spec: str, defaults: dict[str, Any] | None = None) -> TaskSpec:
    """``KIND[:PATH][?key=value&...]`` → a ``TaskSpec``; ``defaults`` fill options the spec does
    not set, where the kind has them (e.g. ``limit`` from ``--limit``)."""
    head, _, query = spec.partition("?")
    kind, _, path = head.partition(":")
    kind = kind.strip().lower()
    if kind not in OPTIONS:
        raise ConfigError(f"task {spec!r}: unknown kind {kind!r}; choose from {', '.join(KINDS)} (KIND[:PATH][?key=value&...])")
    if kind in _NEEDS_PATH and not path:
        raise ConfigError(f"task {spec!r}: {kind} needs a path, e.g. {kind}:data/file")
    allowed = {**OPTIONS[kind], "name": str}
    options: dict[str, Any] = {k: v for k, v in (defaults or {}).items() if k in allowed and v is not None}
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
        if key not in allowed:
            raise ConfigError(f"task {spec!r}: unknown option {key!r} for {kind}; allowed: {', '.join(sorted(allowed))}")
        options[key] = _convert(spec, key, value, allowed[key])
        if key in ("dev", "shots") and not Path(options[key]).exists():
            raise ConfigError(f"task {spec!r}: {key}={options[key]} does not exist")
    if path and not Path(path).exists():  # found now, not after a model has loaded or trained
        raise ConfigError(f"task {spec!r}: {path} does not exist")
    name = options.pop("name", None) or (f"{kind}:{_stem(path)}" if path else kind)
    return TaskSpec(kind, path or None, options, name)


def _stem(path: str) -> str:
    p = Path(path.rstrip("/"))
    return p.name.split(".")[0] or p.name


class EvalModel:
    """One loaded model behind both evaluation paths: a ``LoglikScorer`` (log-likelihoods) and an
    ``Engine`` (generation), each built on first use."""

    def __init__(self, model, tokenizer, *, batch_size: int = 32, checkpoint_dir: Path | None = None) -> None:
        self.model, self.tokenizer, self.batch_size, self.checkpoint_dir = model, tokenizer, batch_size, checkpoint_dir
        self._scorer = self._engine = None

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto", dtype: str | None = None, batch_size: int = 32) -> EvalModel:
        from lmforge.eval.scorer import LoglikScorer

        scorer = LoglikScorer.from_checkpoint(path, device=device, dtype=dtype, batch_size=batch_size)
        model = cls(scorer.model, scorer.tokenizer, batch_size=batch_size, checkpoint_dir=scorer.checkpoint_dir)
        model._scorer = scorer
        return model

    @property
    def scorer(self):
        if self._scorer is None:
            from lmforge.eval.scorer import LoglikScorer

            self._scorer = LoglikScorer(self.model, self.tokenizer, batch_size=self.batch_size)
        return self._scorer

    @property
    def engine(self):
        if self._engine is None:
            from lmforge.eval.scorer import base_model
            from lmforge.infer.engine import Engine, default_stop_token_ids

            # A peft model (LoRA during training) generates through its base model: the adapters
            # are injected in place, so the base includes them.
            model = base_model(self.model)
            eos = default_stop_token_ids(self.tokenizer, self.checkpoint_dir, getattr(model.config, "eos_token_id", None))
            self._engine = Engine(model, self.tokenizer, eos_token_ids=eos)
        return self._engine


def run_task(model: EvalModel, spec: TaskSpec, *, skip_bad: bool = False) -> dict:
    """Run one task; its results entry."""
    o = dict(spec.options)
    if spec.kind == "bpb":
        from lmforge.eval.bpb import evaluate_bpb

        return evaluate_bpb(model.scorer, [spec.path], skip_bad=skip_bad, **o)
    if spec.kind in ("mc", "cmmlu", "ceval", "mmlu"):
        from lmforge.eval.multiple_choice import evaluate_multiple_choice

        if "dev" in o:
            o["dev_path"] = o.pop("dev")
        layout = None if spec.kind == "mc" else spec.kind  # None: read from each file
        return evaluate_multiple_choice(model.scorer, spec.path, layout=layout, skip_bad=skip_bad, **o)
    from lmforge.eval.math_tasks import evaluate_math

    if o.get("prompt", "chat" if spec.kind == "math" else "fewshot") == "chat":
        o.pop("k_shot", None)  # chat prompts ask the question alone (a --k-shot default is for mc/gsm8k)
    if "shots" in o:
        o["shots_path"] = o.pop("shots")
    if spec.kind == "gsm8k":
        o.setdefault("prompt", "fewshot")
        o.setdefault("k_shot", 4 if o["prompt"] == "fewshot" else 0)
        return evaluate_math(model.engine, spec.path, skip_bad=skip_bad, batch_size=model.batch_size, **o)
    # math: lmforge's synthetic problems, chat prompts, answers stated as such (the trained format)
    problems: str | list[dict] | None = spec.path
    n, levels, langs = o.pop("n", 200), o.pop("levels", "1"), o.pop("langs", "en,zh")
    if problems is None:
        from lmforge.synth.math import generate_problems

        try:
            level_list = [int(x) for x in str(levels).split(",") if x]
        except ValueError:
            raise ConfigError(f"task {spec.name!r}: levels must be comma-separated integers, got {levels!r}") from None
        problems = generate_problems(n, levels=level_list, langs=[x for x in langs.split(",") if x], seed=o.get("seed", 0) + 1, split="test")
    o.setdefault("strict", True)
    return evaluate_math(model.engine, problems, skip_bad=skip_bad, batch_size=model.batch_size, **o)


def run_tasks(model: EvalModel, specs: list[str | TaskSpec], *, defaults: dict[str, Any] | None = None,
              skip_bad: bool = False, on_result=None) -> dict[str, dict]:
    """Run every task in order; ``{name: entry}``. Specs are parsed (and checked) before any runs,
    so a typo in the last one does not waste the first ones' time."""
    parsed = [s if isinstance(s, TaskSpec) else parse_task(s, defaults) for s in specs]
    names = [s.name for s in parsed]
    if len(set(names)) != len(names):
        raise ConfigError(f"two tasks share a name ({', '.join(n for n in names if names.count(n) > 1)}); set ?name=... on one")
    results = {}
    for spec in parsed:
        start = time.perf_counter()
        entry = run_task(model, spec, skip_bad=skip_bad)
        entry["seconds"] = time.perf_counter() - start
        entry["spec"] = {"kind": spec.kind, "path": spec.path, **spec.options}
        results[spec.name] = entry
        if on_result is not None:
            on_result(spec.name, entry)
    return results


def save_results(path: str | Path, results: dict[str, dict], *, checkpoint: str | Path | None = None) -> Path:
    """Merge ``results`` into the results file at ``path`` (a task evaluated again replaces its
    old entry; others are kept), atomically."""
    import json

    from lmforge import __version__
    from lmforge.data.document import DataError
    from lmforge.io import write_json_atomic

    path = Path(path)
    existing: dict = {}
    if path.is_file():
        # A DataError (one line, exit status 2 from the CLI): the file is bad input, not a bug.
        try:
            existing = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: not a results file ({exc}); move it away to start a new one") from None
        if not isinstance(existing, dict) or not isinstance(existing.get("tasks", {}), dict):
            raise DataError(f'{path}: not a results file (expected an object with a "tasks" object); move it away to start a new one')
    data = {
        "checkpoint": str(checkpoint) if checkpoint is not None else existing.get("checkpoint"),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "lmforge_version": __version__,
        "tasks": {**existing.get("tasks", {}), **results},
    }
    return write_json_atomic(path, data)


PERCENT_METRICS = ("accuracy", "acc", "acc_norm", "exact_match")


def format_value(entry: dict) -> str:
    value = entry["value"]
    return f"{value:.1%}" if entry["metric"] in PERCENT_METRICS else f"{value:.4f}"


def results_table(results: dict[str, dict], title: str = "evaluation"):
    """A rich Table: task, metric, value, chance level, items, seconds."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for column, justify in (("task", "left"), ("metric", "left"), ("value", "right"), ("chance", "right"), ("n", "right"), ("seconds", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for name, entry in results.items():
        chance = entry.get("chance")
        unit = "bytes" if entry["kind"] == "bpb" else "items"
        table.add_row(name, entry["metric"], format_value(entry), "—" if chance is None else f"{chance:.1%}",
                      f"{entry['n']:,} {unit}", f"{entry.get('seconds', 0):.1f}")
    return table
