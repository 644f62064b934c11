"""The lm-evaluation-harness bridge: lm-eval tasks on lmforge checkpoints, with equal numbers.

Three pieces:

* ``LmforgeLM``, registered with lm-eval as the model ``lmforge`` when this module is imported:
  log-likelihoods come from lmforge's own ``LoglikScorer`` (batched, shared contexts computed
  once), generation from lmforge's ``Engine``. lm-eval's own command line does not import
  lmforge: use ``run_harness`` (``lmforge eval --harness``), or import this module before
  calling ``lm_eval.simple_evaluate(model="lmforge", model_args={"pretrained": CKPT})``.
* ``write_mc_task`` turns a C-Eval / CMMLU / MMLU CSV directory into a local lm-eval task (one
  task per subject plus a group) whose prompts are exactly lmforge's multiple-choice prompts, so
  lm-eval's ``acc`` equals ``lmforge eval``'s accuracy.
* ``run_harness`` runs ``lm_eval.simple_evaluate`` on a checkpoint with either backend:
  ``"lmforge"`` (``LmforgeLM``) or ``"hf"`` (lm-eval's own Hugging Face backend reading the same
  HF-format checkpoint directory) and returns lm-eval's results plus a compact summary.

lm-eval is an optional dependency: without it this module still imports, and each entry point
says ``pip install lm_eval``. Nothing here downloads: local tasks read local files
(``include_path``); lm-eval's built-in tasks fetch their data from the hub and work only online.

Usage::

    from lmforge.eval.harness import format_summary, run_harness, write_mc_task
    tasks_dir = write_mc_task("data/cmmlu/test", "runs/harness-tasks", name="cmmlu_local", lang="zh",
                              k_shot=5, dev_path="data/cmmlu/dev")
    out = run_harness("runs/demo", ["cmmlu_local"], include_path=tasks_dir)              # lmforge backend
    out_hf = run_harness("runs/demo", ["cmmlu_local"], include_path=tasks_dir, backend="hf")
    out["summary"]["cmmlu_local"]["acc"] == out_hf["summary"]["cmmlu_local"]["acc"]
    print("\\n".join(format_summary(out["summary"])))
"""

from __future__ import annotations

import copy
import importlib
import json
import logging
from pathlib import Path
from typing import Any, Sequence

logger = logging.getLogger(__name__)

try:  # registration needs lm-eval's base class at import; everything else works without it
    # lm-eval fills its model registry with its built-in backends (lazily) only while the
    # registry is empty; importing lm_eval.models first keeps "hf" & co. there beside "lmforge".
    importlib.import_module("lm_eval.models")
    from lm_eval.api.model import LM as _LMBase
    from lm_eval.api.registry import register_model as _register_model

    _LM_EVAL_MISSING: ImportError | None = None
except ImportError as error:  # pragma: no cover - exercised only where lm_eval is absent
    _LMBase, _register_model, _LM_EVAL_MISSING = object, None, error

BACKENDS = ("lmforge", "hf")
DEFAULT_BATCH_SIZE = 32
DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's HF backend default


def require_lm_eval() -> None:
    """Raise a clear ImportError when lm-evaluation-harness is not installed."""
    if _LM_EVAL_MISSING is not None:
        raise ImportError("the lm-evaluation-harness bridge needs lm_eval: pip install lm_eval") from _LM_EVAL_MISSING


def _batch_size(value: Any) -> int:
    """lm-eval passes batch sizes as ints or strings ("8", "auto", "auto:4"); lmforge sorts by
    length and scores only the needed positions, so "auto" simply means the default."""
    if value is None or (isinstance(value, str) and value.startswith("auto")):
        return DEFAULT_BATCH_SIZE
    size = int(value)
    if size < 1:
        raise ValueError(f"batch_size must be >= 1, got {value!r}")
    return size


class LmforgeLM(_LMBase):
    """An lmforge checkpoint as an lm-eval model (``--model lmforge``).

    Model args: ``pretrained`` (checkpoint or run directory), ``device`` ("auto", "cpu",
    "cuda", ...), ``dtype`` ("float32", "bfloat16", "auto"; default: lmforge's inference choice),
    ``batch_size``, ``max_length`` (context limit; default the model's ``max_seq_len``) and
    ``seed`` (for sampled generation).
    """

    def __init__(
        self,
        pretrained: str | Path,
        device: str | None = "auto",
        dtype: str | None = None,
        batch_size: int | str | None = None,
        max_batch_size: int | None = None,  # lm-eval always passes it; lmforge needs no probing
        max_length: int | str | None = None,
        seed: int | str = 0,
    ) -> None:
        require_lm_eval()
        super().__init__()
        from lmforge.eval.scorer import LoglikScorer
        from lmforge.infer.engine import Engine, default_stop_token_ids

        self.scorer = LoglikScorer.from_checkpoint(pretrained, device=device or "auto", dtype=dtype, batch_size=_batch_size(batch_size))
        if max_length is not None:
            self.scorer.max_length = int(max_length)
        model, self.tokenizer = self.scorer.model, self.scorer.tokenizer
        self.checkpoint_dir = self.scorer.checkpoint_dir
        # One model in memory: the engine decodes with the scorer's weights.
        stops = default_stop_token_ids(self.tokenizer, self.checkpoint_dir, model.config.eos_token_id)
        self.engine = Engine(model, self.tokenizer, eos_token_ids=stops, max_context=self.scorer.max_length)
        self.seed = int(seed)
        self._device = self.scorer.device

    # ---- what lm-eval reads about a model ------------------------------------------------------

    @property
    def batch_size(self) -> int:
        return self.scorer.batch_size

    @property
    def max_length(self) -> int:
        return self.scorer.max_length

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        return self.scorer.prefix_token_id

    @property
    def tokenizer_name(self) -> str:
        return str(self.checkpoint_dir).replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return getattr(self.tokenizer, "chat_template", None) if chat_template else None

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(chat_history, tokenize=False, add_generation_prompt=add_generation_prompt)

    def get_model_info(self) -> dict:
        model = self.scorer.model
        return {"model_num_parameters": sum(p.numel() for p in model.parameters()),
                "model_dtype": str(next(model.parameters()).dtype), "checkpoint": str(self.checkpoint_dir)}

    # ---- the three request types ---------------------------------------------------------------

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [self._token_pair(context, continuation) for context, continuation in (r.args for r in requests)]
        results = self.scorer.loglikelihood(pairs)
        for request, result in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", request.args, result)
        return results

    def _token_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        if context:
            return self.scorer.split_pair(context, continuation)
        # lm-eval's rule for an empty context: condition on the prefix token, unless the
        # continuation already starts with it (then that token is the context).
        tokens = self.scorer.encode(continuation)
        if tokens and tokens[0] == self.prefix_token_id:
            return tokens[:1], tokens[1:]
        return [self.prefix_token_id], tokens

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        # Disjoint max_length windows, the first conditioned on the prefix token: lm-eval's scheme.
        texts = [r.args[0] for r in requests]
        results = [-nll for nll, _ in self.scorer.rolling_loglik_many([self.scorer.encode(t) for t in texts])]
        for text, result in zip(texts, results):
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), result)
        return results

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Decode each context until one of its ``until`` strings, an eos token or ``max_gen_toks``.

        Requests with equal generation settings run together, longest first, ``batch_size`` at a
        time (the engine batches prompts of different lengths and drops finished rows)."""
        groups: dict[str, list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault(json.dumps(request.args[1], sort_keys=True, default=str), []).append(i)
        outputs: list[str] = [""] * len(requests)
        for indices in groups.values():
            sampling = self._sampling_config(requests[indices[0]].args[1])
            prompts = {i: self.engine.encode(requests[i].args[0]) for i in indices}
            order = sorted(indices, key=lambda i: -len(prompts[i]))
            for start in range(0, len(order), self.batch_size):
                chunk = order[start : start + self.batch_size]
                for i, result in zip(chunk, self.engine.generate([prompts[i] for i in chunk], sampling)):
                    outputs[i] = result.text
                    self.cache_hook.add_partial("generate_until", requests[i].args, result.text)
        return outputs

    def _sampling_config(self, gen_kwargs: dict):
        """lm-eval generation kwargs → lmforge ``SamplingConfig``, by lm-eval's rules
        (``normalize_gen_kwargs``): greedy unless ``do_sample`` is true or, with ``do_sample``
        unset, a positive ``temperature`` is given; ``do_sample`` alone samples at temperature 1."""
        from lmforge.infer.sampling import SamplingConfig

        kwargs = copy.deepcopy(gen_kwargs or {})
        until = kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        aliases = [kwargs.pop(k, None) for k in ("max_gen_toks", "max_new_tokens", "max_tokens")]  # lm-eval's priority
        max_new = next((v for v in aliases if v is not None), DEFAULT_MAX_GEN_TOKS)
        do_sample = kwargs.pop("do_sample", None)
        temperature = float(kwargs.pop("temperature", 0.0) or 0.0)
        if do_sample and temperature == 0.0:
            temperature = 1.0  # HF samples at temperature 1 when only do_sample is given
        if do_sample is False:
            temperature = 0.0
        if int(kwargs.pop("num_beams", 1) or 1) > 1:
            raise ValueError("lmforge's engine decodes greedily or by sampling; beam search (num_beams > 1) is not supported")
        config = SamplingConfig(
            max_new_tokens=int(max_new), temperature=temperature,
            top_k=int(kwargs.pop("top_k", 0) or 0), top_p=float(kwargs.pop("top_p", 1.0) or 1.0),
            repetition_penalty=float(kwargs.pop("repetition_penalty", 1.0) or 1.0),
            stop=[s for s in until if s], seed=int(kwargs.pop("seed", self.seed)),
        )
        if kwargs:
            logger.warning("lmforge backend: ignoring generation kwargs it does not use: %s", ", ".join(sorted(kwargs)))
        return config


if _register_model is not None:
    _register_model("lmforge")(LmforgeLM)


# --------------------------------------------------------------------------------------------
# Local multiple-choice tasks with lmforge's prompts


def write_mc_task(
    data_path: str | Path,
    out_dir: str | Path,
    *,
    name: str,
    lang: str = "auto",
    k_shot: int = 0,
    dev_path: str | Path | None = None,
    scoring: str = "letter",
    layout: str | None = None,
    skip_bad: bool = False,
) -> Path:
    """Write an lm-eval task for a C-Eval / CMMLU / MMLU CSV file or directory; return the
    directory to pass as ``include_path``.

    Files are found, read and validated by lmforge's own reader (``multiple_choice``: same
    layouts, same split discovery, same ``DataError`` on a bad row, or skipped with
    ``skip_bad``), and written as JSON lines that lm-eval loads with ``dataset_path: json``:
    pandas, behind lm-eval's ``csv`` loader, would turn options such as ``01`` or ``1.50`` into
    numbers and ``None`` / ``NA`` into NaN, and the prompt would then differ from lmforge's.

    One task per subject, ``{name}_{subject}`` (just ``name`` for a single subject), plus a group
    ``name`` whose ``acc`` is weighted by subject size (lmforge's overall accuracy). Each task's
    prompt is lmforge's ``mc_prompt`` written as lm-eval config: the subject's description line,
    ``doc_to_text`` = the question and lettered options ending in ``答案：`` / ``Answer:``,
    ``target_delimiter`` " " and ``fewshot_delimiter`` "\\n\\n"; choices are the letters
    (``scoring="letter"``) or the option texts (``"text"``, examples still answered with their
    letter). k-shot examples use lm-eval's ``first_n`` sampler on the dev split, or on the
    evaluated split itself when there is no dev split; every row carries its ``file:row``, so
    lm-eval's "leave the item itself out" (by equality) drops exactly that row, as lmforge does.
    """
    from lmforge.config import ConfigError
    from lmforge.data.document import DataError
    from lmforge.eval import multiple_choice as mc
    from lmforge.io import write_text_atomic

    if not name or not all(c.isalnum() or c in "_-" for c in name):
        raise ConfigError(f"name must be a non-empty task name of letters, digits, _ and -; got {name!r}")
    if lang not in mc.LANGS:
        raise ConfigError(f"lang must be one of {', '.join(mc.LANGS)}, got {lang!r}")
    if scoring not in mc.SCORINGS:
        raise ConfigError(f"scoring must be one of {', '.join(mc.SCORINGS)}, got {scoring!r}")
    if not isinstance(k_shot, int) or k_shot < 0:
        raise ConfigError(f"k_shot must be an integer >= 0, got {k_shot!r}")
    evaluated, dev_files, _split = mc.locate_splits(data_path, dev_path)
    task_dir = Path(out_dir) / name
    _remove_earlier_task(task_dir, name)
    stats: dict[str, int] = {}
    task_names = []
    for subject, path in sorted(evaluated.items()):
        file = mc.read_mc_csv(path, layout=layout, skip_bad=skip_bad, stats=stats)
        if not file.items:  # every row bad and skipped: lmforge leaves the subject out too
            logger.warning("%s: no valid rows; subject %s left out", path, subject)
            continue
        splits = {"test": _write_items(task_dir / "data" / f"{subject}_test.jsonl", file.items)}
        # Examples are set up even for k_shot=0, so that run_harness(num_fewshot=k) draws the
        # same ones lmforge would rather than falling back to lm-eval's random sampling.
        dev_file = (dev_files or {}).get(subject, file.path if dev_files is None else None)
        fewshot_split, available = None, 0
        if dev_file is not None and Path(dev_file).resolve() == file.path.resolve():
            fewshot_split, available = "test", len(file.items) - 1  # the item itself never counts
        elif dev_file is not None:
            dev_items = mc.read_mc_csv(dev_file, layout=layout, skip_bad=skip_bad, stats=stats).items
            splits["dev"] = _write_items(task_dir / "data" / f"{subject}_dev.jsonl", dev_items)
            fewshot_split, available = "dev", len(dev_items)
        if k_shot and dev_file is None:
            raise ConfigError(f"k_shot={k_shot}: no dev file for subject {subject!r} among {', '.join(sorted(dev_files))}")
        if available < k_shot:
            raise ConfigError(f"k_shot={k_shot}, but subject {subject!r} has only {available} examples in {dev_file}")
        subject_lang = lang if lang != "auto" else mc.subject_lang(file.layout, [i.question for i in file.items])
        description = mc.mc_description(mc.subject_display_name(subject, file.layout, subject_lang), subject_lang, file.layout)
        task = name if len(evaluated) == 1 else f"{name}_{subject}"
        # datasets' arrow cache beside the data, not in ~/.cache: the task directory is self-contained.
        cache_dir = str((task_dir / "hf_cache").resolve())
        config = _task_config(task, splits, cache_dir, fewshot_split, k_shot, description, len(file.items[0].options),
                              subject_lang, scoring)
        write_text_atomic(task_dir / f"{task}.yaml", _dump_yaml(config))
        task_names.append(task)
    if not task_names:
        raise DataError(f"{data_path}: no multiple-choice items ({sum(stats.values())} bad rows skipped)")
    if len(task_names) > 1:
        metrics = ["acc", "acc_norm"] if scoring == "text" else ["acc"]
        group = {"group": name, "task": task_names,
                 "aggregate_metric_list": [{"metric": m, "aggregation": "mean", "weight_by_size": True} for m in metrics],
                 "metadata": {"version": 1.0}}
        write_text_atomic(task_dir / f"{name}.yaml", _dump_yaml(group))
    if stats:
        logger.warning("%s: skipped bad rows: %s", data_path, ", ".join(f"{r} {n}" for r, n in sorted(stats.items())))
    return task_dir


def _remove_earlier_task(task_dir: Path, name: str) -> None:
    """A task written before with other subjects must not leave stale configs for lm-eval to
    index; only files this function writes are removed."""
    if task_dir.is_dir():
        for old in [*task_dir.glob(f"{name}.yaml"), *task_dir.glob(f"{name}_*.yaml"), *(task_dir / "data").glob("*.jsonl")]:
            old.unlink()


def _write_items(path: Path, items) -> str:
    from lmforge.io import write_text_atomic

    lines = []
    for item in items:
        letters = list(item.letters)
        row = {"question": item.question, **dict(zip(letters, item.options)), "options": list(item.options),
               "letters": letters, "answer": item.answer, "target": letters.index(item.answer), "source": item.source}
        lines.append(json.dumps(row, ensure_ascii=False))
    write_text_atomic(path, "\n".join(lines) + "\n")
    return str(path.resolve())


def _task_config(task: str, splits: dict[str, str], cache_dir: str, fewshot_split: str | None, k_shot: int, description: str,
                 n_options: int, lang: str, scoring: str) -> dict:
    from lmforge.eval.multiple_choice import LETTERS

    letters = list(LETTERS[:n_options])
    # lmforge's mc_question_text, as lm-eval's cmmlu / mmlu templates write it.
    text = "{{question}}\n" + "\n".join(f"{x}. {{{{{x}}}}}" for x in letters) + ("\n答案：" if lang == "zh" else "\nAnswer:")
    if any(mark in description for mark in ("{{", "{%", "{#")):
        description = "{% raw %}" + description + "{% endraw %}"  # lm-eval renders descriptions as Jinja
    config: dict[str, Any] = {
        "task": task, "dataset_path": "json", "dataset_kwargs": {"data_files": splits, "cache_dir": cache_dir}, "test_split": "test",
        "output_type": "multiple_choice", "description": description, "doc_to_text": text,
        "doc_to_choice": letters if scoring == "letter" else "options", "doc_to_target": "target",
        "target_delimiter": " ", "fewshot_delimiter": "\n\n",
        "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True}
                        for m in (["acc"] if scoring == "letter" else ["acc", "acc_norm"])],
        "metadata": {"version": 1.0},
    }
    if k_shot:  # lm-eval never overrides a task's explicit num_fewshot: 0, so 0 stays implicit
        config["num_fewshot"] = k_shot
    if fewshot_split is not None:
        config["fewshot_split"] = fewshot_split
        # Examples show their answer letter, also when the options' texts are scored.
        config["fewshot_config"] = {"sampler": "first_n", "doc_to_choice": letters}
    return config


def _dump_yaml(data: dict) -> str:
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper, value: str):  # "a\\nb" stays on one readable line instead of YAML's folded blocks
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style='"' if "\n" in value else None)

    Dumper.add_representer(str, text)
    Dumper.ignore_aliases = lambda self, data: True  # the letters list appears twice: write it twice, no &id001
    return yaml.dump(data, Dumper=Dumper, allow_unicode=True, sort_keys=False, width=1000)


# --------------------------------------------------------------------------------------------
# Running lm-eval


def run_harness(
    checkpoint: str | Path,
    tasks: Sequence[str],
    *,
    backend: str = "lmforge",
    include_path: str | Path | Sequence[str | Path] | None = None,
    include_defaults: bool | None = None,
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str = "cpu",
    dtype: str = "float32",
    bootstrap_iters: int = 1000,
    seed: int = 0,
    model_args: dict[str, Any] | None = None,
) -> dict:
    """Run lm-eval ``tasks`` on a checkpoint (or a run directory's latest checkpoint).

    ``backend``: ``"lmforge"`` (``LmforgeLM``: lmforge's scorer and engine) or ``"hf"``
    (lm-eval's ``HFLM`` on the same HF-format directory). ``include_path``: directories of local
    task YAMLs (e.g. from ``write_mc_task``); lm-eval's ~15k built-in task configs are indexed
    only when ``include_defaults`` is true, which by default it is only when no
    ``include_path`` is given (indexing them takes ~15 s). ``dtype`` applies to both backends, so
    they compute the same thing; ``bootstrap_iters`` is for metrics without a closed-form
    standard error (lm-eval's own default, 100000, takes minutes for perplexities).
    ``model_args``: more constructor arguments for the backend (e.g. ``{"max_length": 1024}``).

    Returns ``{"results": <lm-eval's results dict, JSON-safe>, "summary": {task: {metric: value}}}``.
    """
    require_lm_eval()
    import lm_eval
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import handle_non_serializable

    from lmforge.train.checkpoint import resolve_checkpoint

    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    if not tasks:
        raise ValueError("no tasks given")
    ckpt = resolve_checkpoint(checkpoint)
    args: dict[str, Any] = {"pretrained": str(ckpt), "dtype": dtype}
    if backend == "lmforge":
        args["seed"] = seed
    args.update(model_args or {})
    paths = [include_path] if isinstance(include_path, (str, Path)) else list(include_path or [])
    for path in paths:
        if not Path(path).is_dir():
            raise FileNotFoundError(f"{path}: include_path is not a directory of task YAMLs")
    if include_defaults is None:
        include_defaults = not paths
    manager = TaskManager(include_path=[str(p) for p in paths] or None, include_defaults=include_defaults)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        where = ", ".join(str(p) for p in paths) or "lm-eval's built-in tasks"
        hint = "" if include_defaults else " (lm-eval's built-in tasks were not indexed: pass include_defaults=True)"
        raise ValueError(f"unknown lm-eval task(s) {', '.join(unknown)}: not found in {where}{hint}")
    results = lm_eval.simple_evaluate(
        model=backend, model_args=args, tasks=list(tasks), num_fewshot=num_fewshot, batch_size=batch_size,
        device=device, limit=limit, task_manager=manager, log_samples=False, bootstrap_iters=bootstrap_iters,
        random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
    )
    results = json.loads(json.dumps(results, default=handle_non_serializable))
    return {"results": results, "summary": summarize(results)}


def summarize(results: dict) -> dict[str, dict[str, float]]:
    """``{task or group: {metric: value}}`` from lm-eval's results, filter suffixes dropped
    (``"acc,none"`` → ``"acc"``), ``sample_len`` as ``n``, non-numbers (aliases, "N/A") left out."""
    summary: dict[str, dict[str, float]] = {}
    for section in ("results", "groups"):
        for name, metrics in (results.get(section) or {}).items():
            entry = summary.setdefault(name, {})
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    entry["n" if key == "sample_len" else key.split(",")[0]] = float(value)
    return summary


def format_summary(summary: dict[str, dict[str, float]]) -> list[str]:
    """Plain-text lines, one per task and metric, with its standard error and sample count."""
    rows = [(task, metric, value, metrics.get(f"{metric}_stderr"), metrics.get("n")) for task, metrics in summary.items()
            for metric, value in metrics.items() if not metric.endswith("_stderr") and metric != "n"]
    if not rows:
        return ["(no metrics)"]
    width = max(len("task"), *(len(r[0]) for r in rows))
    lines = [f"{'task':<{width}}  {'metric':<10}  {'value':>8}  {'± stderr':>8}  {'n':>6}"]
    for task, metric, value, stderr, n in rows:
        stderr_text = f"{stderr:>8.4f}" if stderr is not None else " " * 8
        lines.append(f"{task:<{width}}  {metric:<10}  {value:>8.4f}  {stderr_text}  {int(n) if n is not None else '':>6}")
    return lines
