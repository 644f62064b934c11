"""The demo's post-training stages: synthetic data → SFT → DPO → math evaluation (``lmforge run``).

They extend the stage graph of ``lmforge.run`` after pretraining when a recipe turns them on
(``posttrain.enabled: true``)::

    pretrain ──► sft ──► dpo ──► evaluate
    synth ───────┴───────┴─────────┘

* ``synth`` writes verifiable math problems (train and a disjoint held-out test split),
  identity conversations naming ``posttrain.assistant_name``, and preference pairs (a correct
  solution against one with a planted error) — all with ``lmforge.synth``.
* ``sft`` fine-tunes the pretrained checkpoint on math + identity chats, ``dpo`` aligns the SFT
  checkpoint on the pairs; both are the ordinary ``lmforge sft`` / ``lmforge dpo`` stages, with the
  recipe's ``train`` section changed by the dotted overrides in ``posttrain.sft`` / ``posttrain.dpo``
  (post-training wants another learning rate, step count and row length than pretraining).
* ``evaluate`` asks base, SFT and DPO models the held-out problems through the chat template
  (greedy) and scores the exact final answers, and the English ones again as multiple choice
  (``lmforge.eval``); it also records a few chat replies of the final model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from lmforge.config import ConfigError, apply_overrides, build, to_dict
from lmforge.io import write_json_atomic, write_text_atomic


@dataclass
class PostTrainConfig:
    """A recipe's ``posttrain`` section: what the demo's stages after pretraining make and run."""

    enabled: bool = False
    math_train: int = 4000  # synthetic math problems to fine-tune on
    math_test: int = 200  # held-out problems (a disjoint split) for the accuracy table
    levels: list[int] = field(default_factory=lambda: [1])  # difficulty levels (1 = one small +/−)
    langs: list[str] = field(default_factory=lambda: ["en", "zh"])
    identity: int = 300  # identity conversations ("who are you?")
    assistant_name: str = "lmforge-demo"
    creator: str = "the lmforge team"
    pairs: int = 1500  # preference pairs for DPO, made from training problems
    seed: int = 0
    sft: list[str] = field(default_factory=list)  # dotted overrides for the sft stage, e.g. train.lr=1e-3
    dpo: list[str] = field(default_factory=list)  # dotted overrides for the dpo stage
    eval_max_new_tokens: int = 128
    chat_prompts: list[str] = field(default_factory=lambda: ["Who are you?", "你是谁？"])

    def __post_init__(self) -> None:
        for name in ("math_train", "math_test", "pairs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


# Settings that change how a training stage reports or how often it saves, never what it
# produces, and paths the runner fills in from upstream stages: none belongs in a cache key, so
# `--set train.progress=false` does not retrain from scratch. (Pretraining keeps init_from: there
# it is a user's choice, here it is the upstream stage's checkpoint.)
TRAIN_KEYS_NOT_IN_CACHE_KEY = ("shards", "tokenizer", "out_dir", "progress", "tensorboard", "wandb_project", "log_every", "ckpt_every", "keep_last",
                               "eval_tasks", "eval_tasks_every")
_TRAIN_IGNORED = (*TRAIN_KEYS_NOT_IN_CACHE_KEY, "init_from")


def stage_recipe(recipe, overrides: list[str], section: str):
    """``recipe`` with dotted ``overrides`` applied (e.g. ``posttrain.sft``), validated as a whole."""
    raw = to_dict(recipe)
    try:
        apply_overrides(raw, overrides)
        return build(type(recipe), raw)
    except ConfigError as exc:
        raise ConfigError(f"posttrain.{section}: {exc}") from None


def _training_settings(recipe, section: str, data_section: str) -> dict:
    r = stage_recipe(recipe, getattr(recipe.posttrain, section), section)
    train = {k: v for k, v in to_dict(r.train).items() if k not in _TRAIN_IGNORED}
    return {"train": train, data_section: to_dict(getattr(r, data_section))}


def sft_settings(recipe) -> dict:
    return _training_settings(recipe, "sft", "sft")


def dpo_settings(recipe) -> dict:
    return _training_settings(recipe, "dpo", "dpo")


def synth_settings(recipe) -> dict:
    p = recipe.posttrain
    keys = ("math_train", "math_test", "levels", "langs", "identity", "assistant_name", "creator", "pairs", "seed")
    return {k: getattr(p, k) for k in keys}


def eval_settings(recipe) -> dict:
    return {"max_new_tokens": recipe.posttrain.eval_max_new_tokens, "chat_prompts": recipe.posttrain.chat_prompts,
            "tasks": ["math", "math-choice"]}


def _write_jsonl(path: Path, records: list[dict]) -> str:
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return str(path)


def run_synth(ctx) -> dict:
    from lmforge.synth.identity import identity_conversations
    from lmforge.synth.math import generate_problems
    from lmforge.synth.pairs import make_pairs

    p = ctx.recipe.posttrain
    train = generate_problems(p.math_train, levels=p.levels, langs=p.langs, seed=p.seed, split="train")
    test = generate_problems(p.math_test, levels=p.levels, langs=p.langs, seed=p.seed + 1, split="test")
    identity = identity_conversations(p.identity, name=p.assistant_name, creator=p.creator, langs=p.langs, seed=p.seed)
    pairs = make_pairs(train[: p.pairs], seed=p.seed)
    files = {
        "math_train": _write_jsonl(ctx.dir / "math_train.jsonl", train),
        "math_test": _write_jsonl(ctx.dir / "math_test.jsonl", test),
        "identity": _write_jsonl(ctx.dir / "identity.jsonl", identity),
        "pairs": _write_jsonl(ctx.dir / "pairs.jsonl", pairs),
    }
    counts = {"math_train": len(train), "math_test": len(test), "identity": len(identity), "pairs": len(pairs)}
    from lmforge.cli_common import console

    console.print(f"  synth: {counts}")
    return {"files": files, "counts": counts}


def run_sft(ctx) -> dict:
    from lmforge.train.sft import train_sft

    files = ctx.upstream["synth"]["files"]
    r = stage_recipe(ctx.recipe, ctx.recipe.posttrain.sft, "sft")
    r = replace(
        r,
        train=replace(r.train, init_from=ctx.upstream["pretrain"]["checkpoint"], out_dir=str(ctx.dir)),
        sft=replace(r.sft, train=[files["math_train"], files["identity"]]),
    )
    result = train_sft(r, resume=True)
    return {"run_dir": str(ctx.dir), **result.summary()}


def run_dpo(ctx) -> dict:
    from lmforge.train.dpo import train_dpo

    r = stage_recipe(ctx.recipe, ctx.recipe.posttrain.dpo, "dpo")
    r = replace(
        r,
        train=replace(r.train, init_from=ctx.upstream["sft"]["checkpoint"], out_dir=str(ctx.dir)),
        dpo=replace(r.dpo, train=[ctx.upstream["synth"]["files"]["pairs"]]),
    )
    result = train_dpo(r, resume=True)
    metrics = {k: v for k, v in result.metrics.items() if k.startswith("eval_reward")}
    return {"run_dir": str(ctx.dir), **result.summary(), **metrics}


def run_evaluate(ctx) -> dict:
    """Base, SFT and DPO models on the same tasks: exact answers to the held-out problems (chat,
    greedy, strict) and the English ones as 4-option multiple choice (letter scoring, chance 25%).
    Each model's results go to ``{model}.eval_results.json`` (the layout ``lmforge eval``
    writes); ``math_eval.json`` compares them and holds a few chat replies of the final model."""
    from lmforge.cli_common import console
    from lmforge.eval.multiple_choice import write_mc_from_math
    from lmforge.eval.tasks import EvalModel, TaskSpec, run_tasks, save_results
    from lmforge.infer.sampling import SamplingConfig

    p = ctx.recipe.posttrain
    test_file = ctx.upstream["synth"]["files"]["math_test"]
    problems = [json.loads(line) for line in Path(test_file).read_text(encoding="utf-8").splitlines() if line.strip()]
    tasks = [TaskSpec("math", test_file, {"max_new_tokens": p.eval_max_new_tokens, "strict": True}, "math")]
    english = [r for r in problems if r.get("lang") == "en"]
    if english:  # the choice task's prompt is English (one template per file)
        choice_file = write_mc_from_math(english, ctx.dir / "mc" / "math_word_problems.csv", seed=p.seed)
        tasks.append(TaskSpec("mmlu", str(choice_file), {}, "math-choice"))
    models = {"base": ctx.upstream["pretrain"]["checkpoint"], "sft": ctx.upstream["sft"]["checkpoint"], "dpo": ctx.upstream["dpo"]["checkpoint"]}
    results, files = {}, {}
    for name, checkpoint in models.items():
        model = EvalModel.from_checkpoint(checkpoint)
        results[name] = run_tasks(model, tasks)
        files[name] = str(save_results(ctx.dir / f"{name}.eval_results.json", results[name], checkpoint=checkpoint))
        math, choice = results[name]["math"], results[name].get("math-choice")
        console.print(f"  {name:<5} exact answers {math['value']:.1%} of {math['n']} held-out problems"
                      + (f"; multiple choice {choice['value']:.1%} of {choice['n']} (chance {choice['chance']:.0%})" if choice else ""))
    final = model.engine  # the last model scored is the final (DPO) one
    greedy = SamplingConfig(max_new_tokens=p.eval_max_new_tokens, temperature=0.0)
    chats = [{"prompt": q, "reply": final.chat([{"role": "user", "content": q}], greedy)} for q in p.chat_prompts]
    if problems:
        question = problems[0]["messages"][0]["content"]
        chats.append({"prompt": question, "reply": final.chat([{"role": "user", "content": question}], greedy)})
    math_results = {name: {"checkpoint": models[name], "accuracy": r["math"]["value"], "n": r["math"]["n"], **r["math"]["details"]}
                    for name, r in results.items()}
    summary = {
        "accuracy": {name: r["math"]["value"] for name, r in results.items()},
        "choice_accuracy": {name: r["math-choice"]["value"] for name, r in results.items() if "math-choice" in r},
        "choice_chance": results["base"]["math-choice"]["chance"] if "math-choice" in results["base"] else None,
        "n": len(problems), "chats": chats, "results": math_results, "eval_results": files,
    }  # fmt: skip
    write_json_atomic(ctx.dir / "math_eval.json", summary)
    return summary
