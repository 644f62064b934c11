"""``lmforge.synth.math``: every answer verified independently, both languages, levels that grow,
a train/test split that is disjoint by construction, answer extraction and matching, and
``math_accuracy`` on a fake and a tiny real engine."""

from __future__ import annotations

import re
from fractions import Fraction
from statistics import mean

import pytest

from lmforge.synth.answers import answers_match, extract_answer, format_number, parse_number
from lmforge.synth.math import generate_problems, math_accuracy, signature

_NUM = r"(-?[\d.]+(?:/\d+)?%?)"
_EQUATION = re.compile(rf"{_NUM} ([-+×÷]) {_NUM} = {_NUM}$")
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "×": lambda a, b: a * b, "÷": lambda a, b: a / b}


def _check_solution_text(record: dict) -> None:
    """Re-check the written solution line by line: each equation holds, each step uses the earlier
    results it shows, and the final line states the last result, which is the record's answer."""
    lines = record["messages"][1]["content"].split("\n")
    final = lines.pop()
    results = []
    for line in lines:
        m = _EQUATION.search(line)
        assert m, line
        left, op, right, result = m.groups()
        assert _OPS[op](parse_number(left), parse_number(right)) == parse_number(result), line
        results.append(parse_number(result))
    stated = final.removeprefix("Answer: ") if record["lang"] == "en" else final.removeprefix("答案：")
    assert stated == record["answer"] and parse_number(stated) == results[-1], final
    assert extract_answer(record["messages"][1]["content"]) == record["answer"]


def _recompute(steps: list[dict]) -> Fraction:
    """The answer from the stored structure, with this test's own evaluator."""
    values: list[Fraction] = []
    for step in steps:
        args = [values[int(a[1:])] if a.startswith("#") else parse_number(a) for a in (step["left"], step["right"])]
        values.append(_OPS[step["op"]](*args))
    return values[-1]


@pytest.fixture(scope="module")
def problems() -> list[dict]:
    return generate_problems(800, levels=[1, 2, 3, 4], langs=["en", "zh"], seed=0)


def test_every_answer_is_right_and_canonical(problems):
    for record in problems:
        _check_solution_text(record)
        value = _recompute(record["steps"])
        assert parse_number(record["answer"]) == value
        assert record["answer"] == format_number(value, record["style"])
        if record["style"] == "decimal":
            assert "/" not in record["answer"], record  # decimal kinds never need a fraction
        assert value >= 0, record  # word problems: no negative counts or prices
        assert [m["role"] for m in record["messages"]] == ["user", "assistant"]


def test_languages_levels_and_kinds(problems):
    assert {r["lang"] for r in problems} == {"en", "zh"}
    zh = [r for r in problems if r["lang"] == "zh"]
    assert all(re.search(r"[\u4e00-\u9fff]", r["messages"][0]["content"]) and r["messages"][1]["content"].endswith(r["answer"]) for r in zh)
    assert all("答案：" in r["messages"][1]["content"] for r in zh)
    assert {r["kind"] for r in problems} == {"arithmetic", "fraction", "percent", "unit", "multistep"}
    by_level = {lv: [r for r in problems if r["level"] == lv] for lv in (1, 2, 3, 4)}
    assert all(len(v) == 200 for v in by_level.values())
    steps = [mean(len(r["steps"]) for r in by_level[lv]) for lv in (1, 2, 3, 4)]
    length = [mean(len(r["messages"][1]["content"]) for r in by_level[lv]) for lv in (1, 2, 3, 4)]
    assert steps[0] == steps[1] == 1 and 1 < steps[2] < steps[3], steps
    assert length == sorted(length), length
    # Level 1: one +/- on numbers up to 20, a bare equation and the answer line: short and regular.
    for r in by_level[1]:
        (step,) = r["steps"]
        assert step["op"] in "+-" and int(step["left"]) <= 20 and int(step["right"]) <= 20 and not step["label"]
        assert r["messages"][1]["content"].count("\n") == 1
    wordings = {re.sub(r"\d+", "N", r["messages"][0]["content"]) for r in problems}
    assert len(wordings) > 300  # many templates, names and items: the text varies


def test_same_arguments_same_problems_and_options_validated():
    assert generate_problems(30, seed=4) == generate_problems(30, seed=4)
    assert generate_problems(30, seed=4) != generate_problems(30, seed=5)
    assert {r["kind"] for r in generate_problems(40, levels=[2, 3], kinds=["percent"])} == {"percent"}
    with pytest.raises(ValueError, match="levels: 7"):
        generate_problems(3, levels=[7])
    with pytest.raises(ValueError, match="langs: fr"):
        generate_problems(3, langs=["fr"])
    with pytest.raises(ValueError, match="no scenario of kinds percent at level 1"):
        generate_problems(3, levels=[1], kinds=["percent"])


def test_train_and_test_splits_are_disjoint_whatever_the_seeds():
    train = generate_problems(3000, levels=[1, 2, 3, 4], seed=11, split="train")
    test = generate_problems(400, levels=[1, 2, 3, 4], seed=99, split="test")
    key = lambda r: str(signature(r["steps"]))  # noqa: E731
    assert {key(r) for r in train}.isdisjoint({key(r) for r in test})
    assert {r["messages"][0]["content"] for r in train}.isdisjoint({r["messages"][0]["content"] for r in test})
    assert all(r["split"] == "test" and r["id"].startswith("test-") for r in test)
    # 3 + 5 and 5 + 3 are the same problem: commutative operands do not leak across the split.
    flipped = [{**s, "left": s["right"], "right": s["left"]} for s in test[0]["steps"]]
    if test[0]["steps"][0]["op"] in "+×" and len(flipped) == 1:
        assert key({"steps": flipped}) == key(test[0])
    assert len({r["messages"][0]["content"] for r in test}) == len(test)  # no repeated question


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Step 1: 3 + 4 = 7\nAnswer: 7", "7"),
        ("第1步：12 × 3 = 36\n答案：36", "36"),
        ("答案：１２３", "123"),  # full-width digits
        ("答案: 3/4", "3/4"),
        ("Answer: 1,234 apples", "1234"),
        ("**Answer:** $2.50", "2.50"),
        ("Answer: 5\nAnswer: 6", "5"),  # the first final line counts; later babble does not
        ("Natalia sold 48 clips... \n#### 72", "72"),
        ("so the result is \\boxed{\\frac{3}{4}}", "3/4"),
        ("I think the answer is 17.", "17"),
        ("We get 10 then 12 then −4", "-4"),
        ("no numbers here", None),
        ("", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_strict_extraction_wants_a_stated_answer():
    assert extract_answer("We get 10 then 12", strict=True) is None
    assert extract_answer("17 - 4 = 13\nAnswer: 13", strict=True) == "13"
    assert extract_answer("所以剩下3个。\n答案：3", strict=True) == "3"


@pytest.mark.parametrize(
    "pred, gold, same",
    [
        ("3/4", "0.75", True), ("0.750", "3/4", True), ("1,234", "1234", True), ("１２", "12", True),
        ("2.50", "2.5", True), ("6/8", "3/4", True), ("-3", "-3", True), ("0.33", "1/3", True),
        ("0.3", "1/3", False), ("2.12", "2.125", False), ("0.12", "1/8", False), ("0.125", "1/8", True), ("7", "8", False), (None, "8", False), ("abc", "8", False), ("8", "8.01", False),
    ],
)  # fmt: skip
def test_answers_match(pred, gold, same):
    assert answers_match(pred, gold) is same


def test_format_number_rule():
    assert format_number(Fraction(5, 2), "decimal") == "2.5"
    assert format_number(Fraction(5, 2), "fraction") == "5/2"
    assert format_number(Fraction(1, 3), "decimal") == "1/3"  # no exact decimal
    assert format_number(Fraction(-1, 20), "decimal") == "-0.05"
    assert format_number(Fraction(84, 7), "fraction") == "12"


class _ScriptedEngine:
    """Answers each problem with its gold solution, except every third one, answered wrong."""

    max_context = 256

    def __init__(self, records):
        self.by_prompt = {r["messages"][0]["content"]: (i, r) for i, r in enumerate(records)}
        self.batches = []

    def encode_chat(self, messages):
        return messages[-1]["content"]

    def generate(self, prompts, sampling):
        from types import SimpleNamespace

        assert sampling.temperature == 0 and sampling.max_new_tokens == 16
        self.batches.append(len(prompts))
        out = []
        for p in prompts:
            i, r = self.by_prompt[p]
            text = r["messages"][1]["content"] if i % 3 else "I am not sure.\nAnswer: 99999"
            out.append(SimpleNamespace(text=text))
        return out


def test_math_accuracy_counts_and_batches():
    records = generate_problems(12, levels=[1, 2], seed=3, split="test")
    engine = _ScriptedEngine(records)
    result = math_accuracy(engine, records, max_new_tokens=16, batch_size=5, n_examples=3)
    assert engine.batches == [5, 5, 2]
    assert result["n"] == 12 and result["correct"] == 8 and result["accuracy"] == pytest.approx(8 / 12)
    assert sum(c["n"] for c in result["by_level"].values()) == 12 and set(result["by_lang"]) == {"en", "zh"}
    assert [e["correct"] for e in result["examples"]] == [False, True, True]
    assert result["examples"][1]["gold"] == records[1]["answer"] == result["examples"][1]["pred"]


def test_math_accuracy_on_a_tiny_checkpoint(tiny_checkpoint):
    from lmforge.infer.engine import Engine

    engine = Engine.from_checkpoint(tiny_checkpoint, device="cpu", dtype="float32")
    records = generate_problems(6, levels=[1, 2], seed=0, split="test")
    result = math_accuracy(engine, records, max_new_tokens=12, batch_size=4)
    assert 0.0 <= result["accuracy"] <= 1.0 and result["n"] == 6
    assert result["correct"] == round(result["accuracy"] * 6)
    assert len(result["examples"]) == 5 and all(isinstance(e["reply"], str) for e in result["examples"])
    gsm8k_style = [{"question": "What is 2 + 3?", "answer": "2 + 3 = 5\n#### 5"}]
    assert math_accuracy(engine, gsm8k_style, max_new_tokens=4)["n"] == 1
