"""Preference pairs (the rejected answer is wrong, the chosen right, the error planted as its kind
says) and identity conversations (the configured name and creator, both languages)."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from lmforge.synth.answers import answers_match, extract_answer, parse_number
from lmforge.synth.identity import CATEGORIES, identity_conversations
from lmforge.synth.math import generate_problems
from lmforge.synth.pairs import make_pair, make_pairs

_NUM = r"(-?[\d.]+(?:/\d+)?%?)"
_EQUATION = re.compile(rf"{_NUM} ([-+×÷]) {_NUM} = {_NUM}$")
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "×": lambda a, b: a * b, "÷": lambda a, b: a / b}


def _equations(text: str) -> list[tuple[str, bool]]:
    """(operator, whether the equation holds) for each step line."""
    out = []
    for line in text.split("\n")[:-1]:
        left, op, right, result = _EQUATION.search(line).groups()
        out.append((op, _OPS[op](parse_number(left), parse_number(right)) == parse_number(result)))
    return out


@pytest.fixture(scope="module")
def pairs():
    return make_pairs(generate_problems(600, seed=2), seed=0)


def test_rejected_is_wrong_and_chosen_right(pairs):
    for pair in pairs:
        chosen, rejected = pair["chosen"][-1]["content"], pair["rejected"][-1]["content"]
        assert pair["chosen"][:-1] == pair["rejected"][:-1] and pair["rejected"][-1]["role"] == "assistant"
        assert answers_match(extract_answer(chosen), pair["answer"])
        assert not answers_match(extract_answer(rejected), pair["answer"]) and pair["rejected_answer"] == extract_answer(rejected)
    kinds = Counter(p["error_kind"] for p in pairs)
    assert set(kinds) == {"arithmetic_slip", "wrong_operation", "wrong_final_line"} and min(kinds.values()) > 60, kinds


def test_each_error_is_what_its_kind_says(pairs):
    for pair in pairs:
        chosen, rejected = pair["chosen"][-1]["content"], pair["rejected"][-1]["content"]
        good, bad = _equations(chosen), _equations(rejected)
        assert all(ok for _, ok in good)
        final_value = parse_number(rejected.split("\n")[-1].split("：" if pair["lang"] == "zh" else ": ")[-1])
        last_result = parse_number(_EQUATION.search(rejected.split("\n")[-2]).group(4))
        if pair["error_kind"] == "arithmetic_slip":
            # One equation is off; every later one computes correctly from it: a consistent slip.
            assert [ok for _, ok in bad].count(False) == 1, rejected
            assert final_value == last_result
        elif pair["error_kind"] == "wrong_operation":
            assert all(ok for _, ok in bad), rejected
            assert sum(g != b for (g, _), (b, _) in zip(good, bad)) == 1, rejected
            assert final_value == last_result
        else:
            assert rejected.split("\n")[:-1] == chosen.split("\n")[:-1] and final_value != last_result


def test_pairs_are_deterministic_per_problem():
    problems = generate_problems(40, seed=8)
    forward = make_pairs(problems, seed=1)
    assert make_pairs(problems[::-1], seed=1)[::-1] == forward  # a pair depends on its problem only
    assert make_pairs(problems, seed=2) != forward


def test_pairs_from_other_math_records_and_bad_ones():
    gsm8k_like = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "48 / 2 = 24\n48 + 24 = 72\n#### ７２"}]}
    pair = make_pair(gsm8k_like)
    assert pair["error_kind"] == "wrong_final_line" and pair["answer"] == "72"
    assert extract_answer(pair["rejected"][-1]["content"]) != "72" and pair["rejected"][-1]["content"].startswith("48 / 2 = 24")
    with pytest.raises(ValueError, match="not the record's answer"):
        make_pair({**gsm8k_like, "answer": "71"})
    with pytest.raises(ValueError, match=r"record 1 \(no id\): .*ending with the assistant"):
        make_pairs([gsm8k_like, {"messages": [{"role": "user", "content": "q"}]}])


def test_identity_names_the_model_and_its_creator():
    records = identity_conversations(400, name="Forgey-7", creator="Acme Lab", langs=["zh", "en"], seed=0)
    assert len(records) == 400 and Counter(r["lang"] for r in records) == {"zh": 200, "en": 200}
    assert {r["category"] for r in records} == set(CATEGORIES)
    replies = [m["content"] for r in records for m in r["messages"] if m["role"] == "assistant"]
    assert all("Forgey-7" in t or "Acme Lab" in t for t in replies)
    assert sum("Forgey-7" in t and "Acme Lab" in t for t in replies) > len(replies) // 3
    assert not any("{" in m["content"] for r in records for m in r["messages"])
    assert all([m["role"] for m in r["messages"]] in (["user", "assistant"], ["user", "assistant"] * 2) for r in records)
    assert any(len(r["messages"]) == 4 for r in records)
    zh = [r for r in records if r["lang"] == "zh"]
    assert all(re.search(r"[\u4e00-\u9fff]", r["messages"][0]["content"]) for r in zh)
    assert any(r["messages"][0]["content"] in ("你是谁？", "你是谁") for r in zh)
    assert len({str(r["messages"]) for r in records}) == len(records)  # no repeats while templates allow
    assert identity_conversations(20, name="A", creator="B", seed=3) == identity_conversations(20, name="A", creator="B", seed=3)
    with pytest.raises(ValueError, match="non-empty"):
        identity_conversations(3, name=" ", creator="B")
