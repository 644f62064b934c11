"""Verifiable bilingual math word problems with step-by-step solutions, and scoring models on them.

``generate_problems`` draws problems from the scenarios in ``math_templates`` (arithmetic,
fractions, percentages, unit conversions, multi-step mixes; levels 1-4), in English and Chinese,
computes every step exactly with ``fractions.Fraction`` and writes chat records::

    {"messages": [{"role": "user", "content": "Tom has 5 apples. Tom gets 3 more. ..."},
                  {"role": "assistant", "content": "5 + 3 = 8\\nAnswer: 8"}],
     "answer": "8", "level": 1, "lang": "en", "kind": "arithmetic", "scenario": "add_small",
     "split": "train", "style": "decimal", "steps": [{"op": "+", "left": "5", "right": "3", "label": ""}],
     "id": "train-3f2a..."}

The solution has one line per step (``Step 2: Apples left: 17 - 4 = 13``; ``第2步：剩下的苹果：17 - 4 = 13``;
a one-step solution is the bare equation) and ends with the fixed line ``Answer: X`` / ``答案：X``.
``answer`` is canonical (``answers.format_number``): an integer, else an exact decimal for
decimal-style kinds and a reduced fraction (``7/12``) for fraction problems. ``steps`` keeps the
computation (arguments as shown, ``#i`` = step i's result) so the answer can be recomputed and
errors planted consistently (``lmforge.synth.pairs``).

**Train/test split by construction**: a problem belongs to the test split when a hash of its
computation (operations and numbers, commutative operands sorted; not its wording, names or
language) falls in the lowest 10% of buckets. Generation for a split draws until a problem of
that split comes up, so a held-out problem never appears in training data, whatever the seeds.

``math_accuracy`` asks an inference ``Engine`` each problem through its chat template (greedy,
batched) and scores the extracted final answers::

    train = generate_problems(4000, levels=[1, 2], langs=["en", "zh"], seed=0, split="train")
    test = generate_problems(200, levels=[1, 2], seed=1, split="test")
    math_accuracy(Engine.from_checkpoint("runs/sft"), test)["accuracy"]
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import replace
from fractions import Fraction
from typing import Any, Iterable, Sequence

from lmforge.synth.answers import answers_match, extract_answer, format_number, parse_number
from lmforge.synth.math_templates import CURRENCY, ITEMS, KINDS, LEVELS, NAMES, SCENARIOS, UNIT_PAIRS, Scenario

__all__ = ["generate_problems", "math_accuracy", "extract_answer", "answers_match", "evaluate_steps", "render_solution", "split_of"]

LANGS = ("en", "zh")
SPLITS = ("train", "test")
TEST_BUCKETS = 100  # of 1000: the test split's share of all problem structures (10%)
_ANSWER_LINE = {"en": "Answer: {}", "zh": "答案：{}"}
_MAX_DRAWS = 500  # per problem; a test problem comes up once in ~10 draws


# ---- exact computation and rendering ------------------------------------------------------------


def apply_op(op: str, left: Fraction, right: Fraction) -> Fraction:
    if op == "+":
        return left + right
    if op == "-":
        return left - right
    if op == "×":
        return left * right
    if op == "÷":
        return left / right
    raise ValueError(f"unknown operation {op!r}")


def _argument(arg: str, values: Sequence[Fraction]) -> Fraction:
    if arg.startswith("#"):
        index = int(arg[1:])
        if not 0 <= index < len(values):
            raise ValueError(f"step argument {arg} refers to a step not computed yet")
        return values[index]
    return parse_number(arg)


def evaluate_steps(steps: Sequence[dict], *, op_override: dict[int, str] | None = None, value_override: dict[int, Fraction] | None = None) -> list[Fraction]:
    """Every step's exact result. Overrides plant errors: step i computed with another operation,
    or its result replaced; later steps use whatever earlier steps produced."""
    values: list[Fraction] = []
    for i, step in enumerate(steps):
        op = (op_override or {}).get(i, step["op"])
        value = apply_op(op, _argument(step["left"], values), _argument(step["right"], values))
        values.append((value_override or {}).get(i, value))
    return values


def render_solution(steps: Sequence[dict], values: Sequence[Fraction], lang: str, style: str, *, ops: dict[int, str] | None = None, final: Fraction | None = None) -> str:
    """The assistant's text for steps with the given results (which may carry planted errors)."""
    colon = "：" if lang == "zh" else ": "
    lines = []
    for i, (step, value) in enumerate(zip(steps, values)):
        shown = [format_number(values[int(a[1:])], style) if a.startswith("#") else a for a in (step["left"], step["right"])]
        line = f"{shown[0]} {(ops or {}).get(i, step['op'])} {shown[1]} = {format_number(value, style)}"
        if step.get("label"):
            line = f"{step['label']}{colon}{line}"
        if len(steps) > 1:
            line = (f"第{i + 1}步：" if lang == "zh" else f"Step {i + 1}: ") + line
        lines.append(line)
    lines.append(_ANSWER_LINE[lang].format(format_number(values[-1] if final is None else final, style)))
    return "\n".join(lines)


def signature(steps: Sequence[dict]) -> list:
    """The computation without wording: what decides the split and what counts as 'the same problem'."""
    out = []
    for step in steps:
        args = [step["left"], step["right"]]
        if step["op"] in ("+", "×"):
            args.sort()
        out.append([step["op"], *args])
    return out


def split_of(steps: Sequence[dict]) -> str:
    digest = hashlib.sha256(json.dumps(signature(steps), ensure_ascii=False).encode()).hexdigest()
    return "test" if int(digest[:8], 16) % 1000 < TEST_BUCKETS else "train"


# ---- generation ---------------------------------------------------------------------------------


def _draw(rng: random.Random, scenario: Scenario, lang: str) -> tuple[str, list[dict]]:
    """One problem of a scenario: the question text and its steps (arguments as shown)."""
    ctx: dict[str, Any] = {}
    factor = 1
    if scenario.units:
        factor, en_big, en_small, zh_big, zh_small = UNIT_PAIRS[rng.choice(scenario.units)]
        ctx["big"], ctx["small"] = (en_big, en_small) if lang == "en" else (zh_big, zh_small)
    numbers = scenario.sample(rng, factor)
    name, name2 = rng.sample(NAMES[lang], 2)
    items, item, cl = rng.choice(ITEMS)
    ctx.update(name=name, name2=name2, items=items, item=item, cl=cl, cur=CURRENCY[lang])
    ctx.update({key: format_number(Fraction(value), scenario.style) for key, value in numbers.items()})
    question = rng.choice(scenario.questions[lang]).format(**ctx)

    def shown(arg: str) -> str:
        if arg.startswith("#"):
            return arg
        if arg.endswith("%") and arg[:-1] in numbers:
            return f"{ctx[arg[:-1]]}%"
        return ctx[arg] if arg in numbers else arg

    steps = []
    for step in scenario.steps:
        label = step.label.get(lang, "").format(**ctx)
        if lang == "en" and label:
            label = label[0].upper() + label[1:]
        steps.append({"op": step.op, "left": shown(step.left), "right": shown(step.right), "label": label})
    return question, steps


def _check_choice(name: str, given: Iterable, allowed: Iterable) -> list:
    given, allowed = list(given), list(allowed)
    bad = [g for g in given if g not in allowed]
    if not given or bad:
        raise ValueError(f"{name}: {', '.join(map(str, bad)) or 'nothing given'}; choose from {', '.join(map(str, allowed))}")
    return given


def generate_problems(
    n: int,
    levels: Iterable[int] = LEVELS,
    langs: Iterable[str] = LANGS,
    seed: int = 0,
    split: str = "train",
    kinds: Iterable[str] | None = None,
) -> list[dict]:
    """``n`` problems of ``split``, levels and languages in equal shares (cycled), kinds drawn
    uniformly among those a level has, then a scenario of that kind; same arguments, same list."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    levels = _check_choice("levels", levels, LEVELS)
    langs = _check_choice("langs", langs, LANGS)
    kinds = _check_choice("kinds", kinds if kinds is not None else KINDS, KINDS)
    _check_choice("split", [split], SPLITS)
    by_level: dict[int, dict[str, list[Scenario]]] = {}
    for level in levels:
        for s in SCENARIOS:
            if s.level == level and s.kind in kinds:
                by_level.setdefault(level, {}).setdefault(s.kind, []).append(s)
        if level not in by_level:
            raise ValueError(f"no scenario of kinds {', '.join(kinds)} at level {level}")
    rng = random.Random(f"lmforge-synth-math:{seed}:{split}")
    seen: set[tuple[str, str]] = set()
    records = []
    for i in range(n):
        level, lang = levels[i % len(levels)], langs[(i // len(levels)) % len(langs)]
        for draw in range(_MAX_DRAWS):
            kind = rng.choice(sorted(by_level[level]))
            scenario = rng.choice(by_level[level][kind])
            question, steps = _draw(rng, scenario, lang)
            # Prefer unseen questions; the small level-1 space may run out of them in big runs.
            if split_of(steps) == split and ((lang, question) not in seen or draw >= _MAX_DRAWS // 2):
                break
        else:
            raise RuntimeError(f"no {split} problem at level {level} after {_MAX_DRAWS} draws")
        seen.add((lang, question))
        values = evaluate_steps(steps)
        answer = format_number(values[-1], scenario.style)
        records.append({
            "id": f"{split}-{hashlib.sha256(f'{lang}|{question}|{i}'.encode()).hexdigest()[:16]}",
            "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": render_solution(steps, values, lang, scenario.style)}],
            "answer": answer, "level": level, "lang": lang, "kind": scenario.kind, "scenario": scenario.name,
            "split": split, "style": scenario.style, "steps": steps,
        })  # fmt: skip
    return records


# ---- scoring a model ----------------------------------------------------------------------------


def problem_prompt(record: dict) -> tuple[list[dict], str]:
    """The messages to ask (up to the last user turn) and the gold answer of a problem record:
    ours (``messages`` + ``answer``) or GSM8K's (``question``, ``answer`` ending in ``#### N``)."""
    if "messages" in record:
        messages = list(record["messages"])
        last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=None)
        if last_user is None:
            raise ValueError("the record has no user turn to ask")
        gold = record.get("answer")
        if gold is None and last_user + 1 < len(messages):
            gold = extract_answer(messages[last_user + 1]["content"])
        prompt = messages[: last_user + 1]
    elif "question" in record:
        prompt, gold = [{"role": "user", "content": record["question"]}], extract_answer(str(record.get("answer", "")))
    else:
        raise ValueError(f"a math record needs 'messages' or 'question' (fields: {', '.join(list(record)[:8])})")
    if gold is None:
        raise ValueError("the record has no gold answer ('answer', or a final answer in the reply)")
    return prompt, str(gold)


def math_accuracy(
    engine, records: Sequence[dict], max_new_tokens: int = 128, batch_size: int = 32, n_examples: int = 5, strict: bool = False,
    *, sampling=None, prompt_ids: Sequence[list[int]] | None = None,
) -> dict:
    """Exact-answer accuracy of greedy replies, overall and by level / language / kind.

    ``strict``: a reply must state its answer (``Answer: N``, ``#### N``, ...); otherwise the
    last number it mentions counts, as GSM8K scoring usually does. ``sampling`` (a
    ``SamplingConfig``) replaces greedy decoding; ``prompt_ids`` replaces the chat-template
    prompts (e.g. few-shot text prompts, ``lmforge.eval.math_tasks``).

    Prompts are sorted by length before batching (less padding), replies put back in order.
    Returns ``{"accuracy", "n", "correct", "by_level", "by_lang", "by_kind", "examples"}``; the
    examples are the first ``n_examples`` problems with prompt, reply, extracted and gold answers.
    """
    from lmforge.infer.sampling import SamplingConfig

    if not records:
        raise ValueError("no problems to score")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    # The reply budget must leave room for the prompt in the model's context.
    if sampling is None:
        sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0)
    sampling = replace(sampling, max_new_tokens=min(sampling.max_new_tokens, max(1, engine.max_context // 2)))
    asked = [problem_prompt(r) for r in records]
    if prompt_ids is None:
        prompt_ids = [engine.encode_chat(messages) for messages, _ in asked]
    elif len(prompt_ids) != len(records):
        raise ValueError(f"{len(prompt_ids)} prompts for {len(records)} problems")
    order = sorted(range(len(records)), key=lambda i: len(prompt_ids[i]))
    replies: list[str] = [""] * len(records)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        for i, result in zip(chunk, engine.generate([prompt_ids[i] for i in chunk], sampling)):
            replies[i] = result.text or ""
    groups: dict[str, dict[str, dict]] = {"by_level": {}, "by_lang": {}, "by_kind": {}}
    correct, examples = 0, []
    for i, (record, (messages, gold)) in enumerate(zip(records, asked)):
        pred = extract_answer(replies[i], strict=strict)
        ok = answers_match(pred, gold)
        correct += ok
        for group, key in (("by_level", "level"), ("by_lang", "lang"), ("by_kind", "kind")):
            if key in record:
                cell = groups[group].setdefault(str(record[key]), {"n": 0, "correct": 0})
                cell["n"] += 1
                cell["correct"] += ok
        if i < n_examples:
            examples.append({"prompt": messages[-1]["content"], "reply": replies[i], "pred": pred, "gold": gold, "correct": ok})
    for cells in groups.values():
        for cell in cells.values():
            cell["accuracy"] = cell["correct"] / cell["n"]
    return {"accuracy": correct / len(records), "n": len(records), "correct": correct, "strict": strict, **groups, "examples": examples,
            "sampling": {"temperature": sampling.temperature, "max_new_tokens": sampling.max_new_tokens}}
