"""Preference pairs from math problems: the correct solution against the same solution with one
planted error, in MiniMind's DPO format (``lmforge synth pairs``).

``make_pair(record, seed)`` returns::

    {"chosen": [user, assistant(correct)], "rejected": [user, assistant(with the error)],
     "error_kind": "arithmetic_slip", "answer": "13", "rejected_answer": "14", "id": ..., "level": 2, "lang": "en"}

Error kinds (chosen at random per problem, seeded by ``seed`` and the problem's id):

* ``arithmetic_slip``: one step's result is off (by 1, 2 or 10, or a fraction's numerator by
  one); the later steps compute correctly from the wrong value, so the error propagates
  consistently to a wrong final answer — the rejected reply is locally plausible;
* ``wrong_operation``: one step uses another operation (+ for −, × for ÷ and back), computed
  correctly, and the rest follows from it;
* ``wrong_final_line``: every step is right but the final line states another number (an
  intermediate result or a near miss).

Problems need the ``steps`` of ``lmforge.synth.math`` for the first two kinds; other math records
(any chat record with an ``answer`` or a final-answer line, e.g. GSM8K-style solutions) get
``wrong_final_line``. Every pair is checked: the chosen reply's extracted answer equals the gold
answer and the rejected one's differs from it numerically::

    pairs = make_pairs(generate_problems(1000, seed=0), seed=0)
"""

from __future__ import annotations

import random
from fractions import Fraction
from typing import Sequence

from lmforge.synth.answers import answer_span, answers_match, extract_answer, format_number, normalize_text, parse_number
from lmforge.synth.math import evaluate_steps, render_solution

ERROR_KINDS = ("arithmetic_slip", "wrong_operation", "wrong_final_line")
_SWAPPED_OP = {"+": "-", "-": "+", "×": "÷", "÷": "×"}


def _presentable(wrong: Sequence[Fraction], right: Sequence[Fraction], style: str, strict: bool) -> bool:
    """Whether wrong step results still look like results of their problem: never 1/3 in a
    decimal problem, and (``strict``) whole wherever the correct result is whole."""
    if style == "decimal" and any("/" in format_number(v, style) for v in wrong):
        return False
    return not strict or all(w.denominator == 1 for w, r in zip(wrong, right) if r.denominator == 1)


def _slipped(rng: random.Random, value: Fraction) -> list[Fraction]:
    """Plausible wrong results for a step, in a seeded random order."""
    if value.denominator != 1 and abs(value) < 1:  # a fraction: slip its numerator
        candidates = [Fraction(value.numerator + d, value.denominator) for d in (1, -1, 2)]
    else:
        candidates = [value + d for d in (1, -1, 2, -2, 10, -10)]
    rng.shuffle(candidates)
    return [c for c in candidates if c != value and (c >= 0 or value < 0)]


def _plant_in_steps(rng: random.Random, kind: str, steps: Sequence[dict], style: str, gold: Fraction) -> tuple[list[Fraction], dict[int, str]] | None:
    """Results (and changed operations) of the steps with one planted error, or None when no
    placement of this kind gives a different, presentable final answer."""
    right = evaluate_steps(steps)
    positions = list(range(len(steps)))
    rng.shuffle(positions)
    candidates = []  # (values, ops) for every placement, in a seeded random order
    for i in positions:
        changes = [({i: w}, {}) for w in _slipped(rng, right[i])] if kind == "arithmetic_slip" else [({}, {i: _SWAPPED_OP[steps[i]["op"]]})]
        for values_override, ops in changes:
            try:
                values = evaluate_steps(steps, op_override=ops, value_override=values_override)
            except ZeroDivisionError:
                continue
            if values[-1] != gold:
                candidates.append((values, ops))
    for strict in (True, False):  # whole numbers stay whole if at all possible
        for values, ops in candidates:
            if _presentable(values, right, style, strict):
                return values, ops
    return None


def _wrong_final(rng: random.Random, gold: Fraction, others: Sequence[Fraction]) -> Fraction:
    choices = [v for v in others if v != gold] or [c for c in _slipped(rng, gold) if c != gold]
    return rng.choice(choices)


def _replace_answer(text: str, wrong: str) -> str:
    """The reply with the number ``extract_answer`` reads replaced (full-width forms normalized)."""
    text = normalize_text(text)
    start, end = answer_span(text)  # type: ignore[misc]  # make_pair checked there is an answer
    return text[:start] + wrong + text[end:]


def make_pair(record: dict, seed: int = 0) -> dict:
    """One preference pair from one math record (see the module docstring); ``ValueError`` for
    a record that is not a solved problem."""
    messages = record.get("messages") or record.get("conversations")
    if not isinstance(messages, list) or len(messages) < 2 or messages[-1].get("role") != "assistant":
        raise ValueError("a math record needs 'messages' ending with the assistant's solution")
    solution = messages[-1]["content"]
    gold_text = record.get("answer") if record.get("answer") is not None else extract_answer(solution)
    if gold_text is None:
        raise ValueError("no gold answer: the record has no 'answer' and its solution states none")
    gold = parse_number(str(gold_text))
    if not answers_match(extract_answer(solution), str(gold_text)):
        raise ValueError(f"the solution's final answer {extract_answer(solution)!r} is not the record's answer {gold_text!r}")
    rng = random.Random(f"lmforge-synth-pairs:{seed}:{record.get('id', solution)}")
    kind = rng.choices(ERROR_KINDS, weights=(0.5, 0.25, 0.25))[0]
    steps, lang, style = record.get("steps"), record.get("lang", "en"), record.get("style", "decimal")
    # The structured path only when re-rendering the stored steps reproduces the stored text:
    # otherwise the rejected reply would not be "the same solution" with one change.
    structured = bool(steps) and render_solution(steps, evaluate_steps(steps), lang, style) == solution
    rejected_text = None
    if structured and kind != "wrong_final_line":
        planted = _plant_in_steps(rng, kind, steps, style, gold)
        if planted is not None:
            values, ops = planted
            rejected_text = render_solution(steps, values, lang, style, ops=ops)
    if rejected_text is None:
        kind = "wrong_final_line"
        others = evaluate_steps(steps)[:-1] if structured else []
        wrong = _wrong_final(rng, gold, others)
        if structured:
            rejected_text = render_solution(steps, evaluate_steps(steps), lang, style, final=wrong)
        else:
            rejected_text = _replace_answer(solution, format_number(wrong, style))
    rejected_answer = extract_answer(rejected_text)
    if answers_match(rejected_answer, str(gold_text)) or rejected_answer is None:
        raise AssertionError(f"planted error left the answer right ({rejected_answer!r} vs {gold_text!r}): {rejected_text!r}")
    pair = {"chosen": list(messages), "rejected": [*messages[:-1], {"role": "assistant", "content": rejected_text}]}
    pair.update(error_kind=kind, answer=str(gold_text), rejected_answer=rejected_answer)
    pair.update({k: record[k] for k in ("id", "level", "lang", "kind") if k in record})
    return pair


def make_pairs(records: Sequence[dict], seed: int = 0) -> list[dict]:
    """A pair for each record, in order (``ValueError`` names the record that is not a solved problem)."""
    pairs = []
    for i, record in enumerate(records):
        try:
            pairs.append(make_pair(record, seed))
        except ValueError as exc:
            raise ValueError(f"record {i} ({record.get('id', 'no id')}): {exc}") from None
    return pairs
