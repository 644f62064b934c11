"""Multiple-choice evaluation: the three CSV layouts and the directory layouts, bad rows, exact
prompt strings, scoring checked against an independent full forward through ``transformers``,
per-subject aggregation, and the real CMMLU dev split end to end."""

from __future__ import annotations

import csv
import math
import shutil
from pathlib import Path

import pytest
import torch
from eval_helpers import MC_ROWS, write_mc_csv

from lmforge.config import ConfigError
from lmforge.data.document import DataError
from lmforge.eval import multiple_choice as mc
from lmforge.eval.multiple_choice import (
    evaluate_multiple_choice,
    format_mc_table,
    locate_splits,
    mc_prompt,
    read_mc_csv,
    score_choices,
)
from lmforge.eval.scorer import LoglikScorer

EN_ROWS = [r for r in MC_ROWS if not mc._CJK.search(r[0])]
ZH_ROWS = [r for r in MC_ROWS if mc._CJK.search(r[0])]


@pytest.fixture(scope="module")
def scorer(eval_checkpoint):
    return LoglikScorer.from_checkpoint(eval_checkpoint, device="cpu", dtype="float32", batch_size=8)


@pytest.fixture(scope="module")
def hf_model(eval_checkpoint):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(eval_checkpoint, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(eval_checkpoint)


def brute_force_logliks(hf_model, prompt: str, continuations: list[str]) -> list[float]:
    """Sum of log p over the continuation's tokens from one full forward over prompt + continuation
    (the continuation's tokens: those of the whole string after the prompt's own, lm-eval's split)."""
    model, tok = hf_model
    context = tok(prompt, add_special_tokens=False).input_ids
    out = []
    for continuation in continuations:
        whole = tok(prompt + continuation, add_special_tokens=False).input_ids
        assert whole[: len(context)] == context
        with torch.no_grad():
            logprobs = model(torch.tensor([whole])).logits[0].float().log_softmax(-1)
        out.append(sum(float(logprobs[t - 1, whole[t]]) for t in range(len(context), len(whole))))
    return out


def write_rows(path, lines: list[list[str]]):
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(lines)
    return path


# ---- reading ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["cmmlu", "ceval", "mmlu"])
def test_each_layout_is_detected_and_parsed(tmp_path, layout):
    path = write_mc_csv(tmp_path / "elementary_math.csv", MC_ROWS, layout)
    file = read_mc_csv(path)
    assert file.layout == layout and file.subject == "elementary_math"
    assert [(i.question, *i.options, i.answer) for i in file.items] == [tuple(r) for r in MC_ROWS]
    first_data_line = 1 if layout == "mmlu" else 2
    assert [i.source for i in file.items] == [f"{path}:{first_data_line + n}" for n in range(len(MC_ROWS))]
    assert read_mc_csv(path, layout=layout).items == file.items


def test_layout_given_must_match_the_file(tmp_path):
    with_header = write_mc_csv(tmp_path / "a.csv", MC_ROWS, "cmmlu")
    without = write_mc_csv(tmp_path / "b.csv", MC_ROWS, "mmlu")
    with pytest.raises(DataError, match=r"a\.csv:1: a header row .* the mmlu layout has none"):
        read_mc_csv(with_header, layout="mmlu")
    with pytest.raises(DataError, match=r"b\.csv:1: no header row, but the ceval layout"):
        read_mc_csv(without, layout="ceval")


def test_more_options_from_extra_columns(tmp_path):
    path = write_rows(tmp_path / "five.csv", [["id", "question", "A", "B", "C", "D", "E", "answer"],
                                              ["0", "Pick the vowel", "b", "c", "d", "f", "e", "E"]])
    (item,) = read_mc_csv(path).items
    assert item.options == ("b", "c", "d", "f", "e") and item.letters == "ABCDE" and item.answer == "E"
    (item,) = read_mc_csv(write_rows(tmp_path / "three.csv", [["Pick one", "x", "y", "z", "b"]])).items
    assert item.letters == "ABC" and item.answer == "B"


BAD_FILE = [
    ["", "Question", "A", "B", "C", "D", "Answer"],
    ["0", "good one", "1", "2", "3", "4", "A"],
    ["1", "missing option", "1", "", "3", "4", "A"],
    ["2", "  ", "1", "2", "3", "4", "A"],
    ["3", "answer outside", "1", "2", "3", "4", "E"],
    ["4", "too few columns", "1", "2", "3", "A"],
    ["5", "lower-case answer is fine", "1", "2", "3", "4", " b "],
    ["6", "empty answer", "1", "2", "3", "4", ""],
]


@pytest.mark.parametrize("line, message", [
    (3, "option B is empty"), (4, "empty question"), (5, "answer 'E' is not one of A, B, C, D"),
    (6, "6 columns, expected 7"), (8, "answer '' is not one of A, B, C, D"),
])
def test_bad_rows_name_file_and_row(tmp_path, line, message):
    rows = [BAD_FILE[0], BAD_FILE[1]] + [BAD_FILE[line - 1]]
    path = write_rows(tmp_path / "bad.csv", rows + [["9", "after", "1", "2", "3", "4", "D"]])
    with pytest.raises(DataError) as e:
        read_mc_csv(path)
    assert str(e.value).startswith(f"{path}:3: {message}")


def test_skip_bad_counts_by_reason(tmp_path):
    path = write_rows(tmp_path / "bad.csv", BAD_FILE)
    stats: dict[str, int] = {}
    file = read_mc_csv(path, skip_bad=True, stats=stats)
    assert [(i.question, i.answer, i.source) for i in file.items] == [
        ("good one", "A", f"{path}:2"), ("lower-case answer is fine", "B", f"{path}:7")]
    assert stats == {"missing_option": 1, "empty_question": 1, "bad_answer": 2, "wrong_column_count": 1}


def test_quoted_multiline_fields_keep_line_numbers(tmp_path):
    path = write_rows(tmp_path / "multi.csv", [
        ["", "Question", "A", "B", "C", "D", "Answer"],
        ["0", "first line\nsecond line\nthird line", "1", "2\nstill B", "3", "4", "B"],
        ["1", "next question", "1", "2", "3", "4", "C"],
        ["2", "a bad\nmulti-line row", "1", "2", "3", "4", "Z"],
    ])
    with pytest.raises(DataError, match=rf"^{path}:7: answer 'Z'"):
        read_mc_csv(path)
    items = read_mc_csv(path, skip_bad=True).items
    assert items[0].question == "first line\nsecond line\nthird line" and items[0].options[1] == "2\nstill B"
    assert [i.source for i in items] == [f"{path}:2", f"{path}:6"]


def test_ceval_test_split_without_answers_is_explained(tmp_path):
    path = write_rows(tmp_path / "law_test.csv", [["id", "question", "A", "B", "C", "D"], ["0", "q", "1", "2", "3", "4"]])
    with pytest.raises(DataError, match="no answer column.*evaluate its val split"):
        read_mc_csv(path)


def test_directory_layouts(tmp_path):
    # CMMLU: dev/ + test/, one file per subject.
    root = tmp_path / "cmmlu"
    for split in ("dev", "test"):
        for subject in ("agronomy", "arts"):
            write_mc_csv(root / split / f"{subject}.csv", MC_ROWS)
    evaluated, dev, split = locate_splits(root)
    assert split == "test" and evaluated == {s: root / "test" / f"{s}.csv" for s in ("agronomy", "arts")}
    cmmlu_dev = {s: root / "dev" / f"{s}.csv" for s in ("agronomy", "arts")}
    assert dev == cmmlu_dev
    assert locate_splits(root / "test")[1] == dev  # a split dir finds its sibling dev/
    assert locate_splits(root / "test" / "arts.csv")[1] == {"arts": root / "dev" / "arts.csv"}
    # C-Eval: dev/ val/ test/ with the split in the file names; test has no answers, so val is named.
    ceval = tmp_path / "ceval"
    for split in ("dev", "val"):
        write_mc_csv(ceval / split / f"law_{split}.csv", MC_ROWS, "ceval")
    evaluated, dev, split = locate_splits(ceval)
    assert (evaluated, dev, split) == ({"law": ceval / "val" / "law_val.csv"}, {"law": ceval / "dev" / "law_dev.csv"}, "val")
    # MMLU names in one flat directory.
    flat = tmp_path / "mmlu"
    for name in ("anatomy_dev", "anatomy_test", "virology_dev", "virology_test"):
        write_mc_csv(flat / f"{name}.csv", MC_ROWS, "mmlu")
    evaluated, dev, split = locate_splits(flat)
    assert split == "test" and evaluated == {"anatomy": flat / "anatomy_test.csv", "virology": flat / "virology_test.csv"}
    assert dev == {"anatomy": flat / "anatomy_dev.csv", "virology": flat / "virology_dev.csv"}
    assert locate_splits(flat / "anatomy_test.csv")[1] == {"anatomy": flat / "anatomy_dev.csv"}
    # A dev directory alone is its own dev split; a plain directory has none; an explicit dev_path wins.
    assert locate_splits(root / "dev") == (cmmlu_dev, cmmlu_dev, "dev")
    shutil.copytree(root / "dev", tmp_path / "plain")
    assert locate_splits(tmp_path / "plain") == ({s: tmp_path / "plain" / f"{s}.csv" for s in ("agronomy", "arts")}, None, "unnamed")
    assert locate_splits(root / "dev", dev_path=root / "test")[1] == {s: root / "test" / f"{s}.csv" for s in ("agronomy", "arts")}
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .csv files"):
        locate_splits(tmp_path / "empty")
    with pytest.raises(DataError, match="no such file"):
        locate_splits(tmp_path / "missing")


# ---- prompts ---------------------------------------------------------------------------------------


def test_prompts_are_the_brief_s_strings(tmp_path):
    en = read_mc_csv(write_mc_csv(tmp_path / "elementary_math.csv", EN_ROWS, "mmlu")).items
    zh = read_mc_csv(write_mc_csv(tmp_path / "agronomy.csv", ZH_ROWS, "cmmlu")).items
    assert mc_prompt(en[0], [], "en", "elementary math") == (
        "The following are multiple choice questions (with answers) about elementary math.\n\n"
        "1 + 1 = ?\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer:")
    assert mc_prompt(en[0], mc.few_shot_examples(en[0], en, 2), "en", "elementary math") == (
        "The following are multiple choice questions (with answers) about elementary math.\n\n"
        "Which is a colour?\nA. red\nB. dog\nC. run\nD. seven\nAnswer: A\n\n"
        "2 × 3 = ?\nA. 5\nB. 9\nC. 6\nD. 8\nAnswer: C\n\n"
        "1 + 1 = ?\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer:")
    assert mc_prompt(zh[1], mc.few_shot_examples(zh[1], zh, 1), "zh", "农学") == (
        "以下是关于农学的单项选择题，请直接给出正确答案的选项。\n\n"
        "肉牛屠宰后，胴体的哪个部位肉质较好\nA. 胸\nB. 腹\nC. 大腿\nD. 小腿\n答案： C\n\n"
        "下列哪个是水果\nA. 白菜\nB. 土豆\nC. 萝卜\nD. 苹果\n答案：")


def test_ceval_and_cmmlu_files_word_the_subject_line_as_lm_eval_does(tmp_path, scorer):
    """lm-eval's ceval-valid and cmmlu tasks open with different sentences; each layout keeps its own."""
    ceval = read_mc_csv(write_mc_csv(tmp_path / "t" / "high_school_physics.csv", ZH_ROWS, "ceval"))
    cmmlu = read_mc_csv(write_mc_csv(tmp_path / "t" / "agronomy.csv", ZH_ROWS, "cmmlu"))
    question = "下列哪个是水果\nA. 白菜\nB. 土豆\nC. 萝卜\nD. 苹果\n答案："
    shot = "肉牛屠宰后，胴体的哪个部位肉质较好\nA. 胸\nB. 腹\nC. 大腿\nD. 小腿\n答案： C\n\n"
    assert mc_prompt(ceval.items[1], mc.few_shot_examples(ceval.items[1], ceval.items, 1), "zh", "高中物理", ceval.layout) == (
        "以下是中国关于高中物理的单项选择题，请选出其中的正确答案。\n\n" + shot + question)
    assert mc_prompt(cmmlu.items[1], mc.few_shot_examples(cmmlu.items[1], cmmlu.items, 1), "zh", "农学", cmmlu.layout) == (
        "以下是关于农学的单项选择题，请直接给出正确答案的选项。\n\n" + shot + question)
    # English prompts are MMLU's whatever the layout
    for layout in ("ceval", "cmmlu", "mmlu"):
        assert mc.mc_description("physics", "en", layout) == "The following are multiple choice questions (with answers) about physics.\n\n"
    # evaluating a directory of both: each file's prompts take its own layout's sentence
    entry = evaluate_multiple_choice(scorer, tmp_path / "t", k_shot=1)
    first_lines = {Path(e["source"].split(":")[0]).stem: e["prompt"].split("\n")[0] for e in entry["details"]["examples"]}
    assert first_lines == {"high_school_physics": "以下是中国关于高中物理的单项选择题，请选出其中的正确答案。",
                           "agronomy": "以下是关于农学的单项选择题，请直接给出正确答案的选项。"}
    assert {s: r["layout"] for s, r in entry["details"]["subjects"].items()} == {"high_school_physics": "ceval", "agronomy": "cmmlu"}


def test_auto_language_and_subject_names(tmp_path, scorer):
    write_mc_csv(tmp_path / "t" / "agronomy.csv", EN_ROWS, "cmmlu")  # cmmlu layout: zh even for ASCII questions
    write_mc_csv(tmp_path / "t" / "high_school_physics.csv", ZH_ROWS, "ceval")
    write_mc_csv(tmp_path / "t" / "my_quiz.csv", ZH_ROWS + EN_ROWS[:1], "mmlu")  # mostly CJK: zh
    write_mc_csv(tmp_path / "t" / "world_facts.csv", EN_ROWS, "mmlu")
    entry = evaluate_multiple_choice(scorer, tmp_path / "t")
    subjects = entry["details"]["subjects"]
    assert {s: (r["lang"], r["name"]) for s, r in subjects.items()} == {
        "agronomy": ("zh", "农学"), "high_school_physics": ("zh", "高中物理"), "my_quiz": ("zh", "my quiz"),
        "world_facts": ("en", "world facts")}
    assert evaluate_multiple_choice(scorer, tmp_path / "t", lang="en")["details"]["subjects"]["agronomy"]["name"] == "agronomy"


def test_k_shot_excludes_the_item_itself_and_refuses_too_few(tmp_path, scorer):
    path = write_mc_csv(tmp_path / "quiz.csv", MC_ROWS, "mmlu")
    entry = evaluate_multiple_choice(scorer, path, k_shot=5, lang="en")
    assert entry["details"]["fewshot_source"].startswith("evaluated split")
    first = entry["details"]["examples"][0]["prompt"]
    assert first.count("Answer:") == 6 and first.endswith("1 + 1 = ?\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer:")
    assert "1 + 1" not in first[: -len("1 + 1 = ?\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer:")]  # its own row is no example
    with pytest.raises(ConfigError, match="k_shot=6.*only 5 examples.*besides the item itself"):
        evaluate_multiple_choice(scorer, path, k_shot=6)
    # A separate dev split is used from its first row on.
    dev = write_mc_csv(tmp_path / "d" / "quiz_dev.csv", MC_ROWS[::-1], "mmlu")
    entry = evaluate_multiple_choice(scorer, path, dev_path=dev, k_shot=1, lang="en")
    assert entry["details"]["fewshot_source"] == "dev split"
    assert entry["details"]["examples"][0]["prompt"].split("\n\n")[1].startswith("The capital of France is")


# ---- scoring ---------------------------------------------------------------------------------------


def _task(tmp_path):
    root = tmp_path / "task"
    write_mc_csv(root / "mixed.csv", MC_ROWS, "cmmlu")
    write_mc_csv(root / "english_facts.csv", EN_ROWS[::-1], "mmlu")
    return root


@pytest.mark.parametrize("k_shot", [0, 2])
def test_letter_scoring_equals_a_full_forward(tmp_path, scorer, hf_model, k_shot):
    root = _task(tmp_path)
    entry = evaluate_multiple_choice(scorer, root, k_shot=k_shot)
    assert entry["details"]["letter_scoring"] == "next_token" and entry["details"]["truncated"] == 0
    for subject, row in entry["details"]["subjects"].items():
        file = read_mc_csv(root / f"{subject}.csv")
        correct = 0
        for item in file.items:
            prompt = mc_prompt(item, mc.few_shot_examples(item, file.items, k_shot), row["lang"], row["name"], file.layout)
            logliks = brute_force_logliks(hf_model, prompt, [" " + x for x in item.letters])
            mine = score_choices(scorer, [item], [prompt], "letter")[0][0]
            assert mine == pytest.approx(logliks, abs=2e-4)
            assert max(logliks) - sorted(logliks)[-2] > 1e-3  # margins clear of rounding noise
            correct += item.letters[logliks.index(max(logliks))] == item.answer
        assert row["correct"] == correct
    assert entry["details"]["examples"][0]["prompt"].startswith("The following are")  # english_facts sorts first


def test_letter_fallback_path_gives_the_same_scores(tmp_path, scorer, monkeypatch):
    root = _task(tmp_path)
    fast = evaluate_multiple_choice(scorer, root, k_shot=1)
    monkeypatch.setattr(mc, "_letter_ids", lambda *a: None)  # as if " A" were several tokens
    slow = evaluate_multiple_choice(scorer, root, k_shot=1)
    assert slow["details"]["letter_scoring"] == "loglikelihood"
    assert slow["details"]["subjects"] == fast["details"]["subjects"]
    for a, b in zip(slow["details"]["examples"], fast["details"]["examples"]):
        assert a["logliks"] == pytest.approx(b["logliks"], abs=1e-4)


def test_text_scoring_and_acc_norm(tmp_path, scorer, hf_model):
    path = write_mc_csv(tmp_path / "facts.csv", MC_ROWS, "mmlu")
    entry = evaluate_multiple_choice(scorer, path, scoring="text", lang="en")
    correct = normed = 0
    for item in read_mc_csv(path).items:
        prompt = mc_prompt(item, [], "en", "facts")
        logliks = brute_force_logliks(hf_model, prompt, [" " + o for o in item.options])
        correct += item.letters[logliks.index(max(logliks))] == item.answer
        per_char = [ll / len(o) for ll, o in zip(logliks, item.options)]  # lm-eval: characters, no space
        normed += item.letters[per_char.index(max(per_char))] == item.answer
    assert entry["details"]["subjects"]["facts"]["correct"] == correct
    assert entry["details"]["acc_norm"] == pytest.approx(normed / len(MC_ROWS))
    assert entry["details"]["scoring"] == "text" and entry["details"]["letter_scoring"] is None


def test_per_subject_results_add_up_and_the_table_shows_them(tmp_path, scorer):
    root = _task(tmp_path)
    bad = write_rows(root / "broken.csv", BAD_FILE)
    with pytest.raises(DataError, match=rf"{bad}:3: option B is empty"):
        evaluate_multiple_choice(scorer, root)
    entry = evaluate_multiple_choice(scorer, root, skip_bad=True, limit=5)
    subjects = entry["details"]["subjects"]
    assert {s: r["n"] for s, r in subjects.items()} == {"broken": 2, "english_facts": 4, "mixed": 5}
    assert entry["n"] == 11 and sum(r["correct"] for r in subjects.values()) == round(entry["value"] * 11)
    assert entry["chance"] == 0.25 and entry["details"]["skipped"] == 5
    assert entry["details"]["skipped_by_reason"] == {"bad_answer": 2, "empty_question": 1, "missing_option": 1, "wrong_column_count": 1}
    assert all(r["accuracy"] == r["correct"] / r["n"] for r in subjects.values())
    only = evaluate_multiple_choice(scorer, root, subjects=["mixed"], limit=2)
    assert only["n"] == 2 and list(only["details"]["subjects"]) == ["mixed"]
    with pytest.raises(ConfigError, match="subjects: nope not in"):
        evaluate_multiple_choice(scorer, root, subjects=["nope"])
    lines = format_mc_table(entry, title="demo")
    assert lines[0] == "demo" and lines[1].split() == ["subject", "n", "correct", "accuracy", "chance"]
    overall = lines[-2].split()
    assert overall[:3] == ["overall", "11", str(round(entry["value"] * 11))] and overall[4] == "25.0%"
    assert "5 bad rows skipped" in lines[-1]


def test_three_option_rows_have_a_third_chance(tmp_path, scorer):
    path = write_rows(tmp_path / "abc.csv", [["q one", "x", "y", "z", "A"], ["q two", "x", "y", "z", "C"]])
    entry = evaluate_multiple_choice(scorer, path)
    assert entry["chance"] == pytest.approx(1 / 3) and entry["n"] == 2
    assert set(entry["details"]["examples"][0]["logliks"]) == {"A", "B", "C"}


def test_truncated_prompts_are_counted(tmp_path, scorer):
    long_question = "word " * 600  # far over the 512-token context
    path = write_rows(tmp_path / "long.csv", [[long_question, "1", "2", "3", "4", "A"], ["short", "1", "2", "3", "4", "B"]])
    for scoring in ("letter", "text"):
        assert evaluate_multiple_choice(scorer, path, scoring=scoring)["details"]["truncated"] == 1


def test_real_cmmlu_dev_end_to_end(shared_data, scorer, tmp_path):
    cmmlu = shared_data / "eval" / "cmmlu_dev"
    if not cmmlu.is_dir():
        pytest.skip(f"{cmmlu} not found")
    entry = evaluate_multiple_choice(scorer, cmmlu)
    assert entry["n"] == 335 and len(entry["details"]["subjects"]) == 67
    assert 0 <= entry["value"] <= 1 and entry["chance"] == 0.25 and entry["details"]["skipped"] == 0
    assert entry["details"]["subjects"]["agronomy"]["name"] == "农学"
    assert entry["details"]["examples"][0]["prompt"].startswith("以下是关于农学的单项选择题，请直接给出正确答案的选项。\n\n肉牛屠宰后")
    # 4-shot from the same split (each item's own row left out); 5-shot cannot be done honestly.
    shutil.copytree(cmmlu, tmp_path / "c", ignore=lambda d, names: [n for n in names if not n.startswith(("a", "b"))])
    four = evaluate_multiple_choice(scorer, tmp_path / "c", k_shot=4)
    assert four["n"] == 5 * len(four["details"]["subjects"]) and math.isfinite(four["value"])
    with pytest.raises(ConfigError, match="only 4 examples"):
        evaluate_multiple_choice(scorer, tmp_path / "c", k_shot=5)


def test_math_problems_become_a_multiple_choice_set(tmp_path, scorer):
    from lmforge.synth.answers import answers_match
    from lmforge.synth.math import generate_problems

    records = generate_problems(40, levels=[1, 2, 3], langs=["zh"], seed=3, split="test")
    path = mc.write_mc_from_math(records, tmp_path / "math_word_problems.csv", seed=1)
    assert mc.write_mc_from_math(records, tmp_path / "again.csv", seed=1).read_bytes() == path.read_bytes()
    file = read_mc_csv(path)
    assert file.layout == "mmlu" and len(file.items) == 40
    for item, record in zip(file.items, records):
        assert item.question == record["messages"][0]["content"] and len(set(item.options)) == 4
        assert [answers_match(o, record["answer"]) for o in item.options] == [x == item.answer for x in item.letters]
    assert len({i.answer for i in file.items}) == 4  # the answer's position varies
    entry = evaluate_multiple_choice(scorer, path)
    assert entry["n"] == 40 and entry["details"]["subjects"]["math_word_problems"]["name"] == "数学应用题"
    assert entry["details"]["examples"][0]["prompt"].startswith("以下是关于数学应用题的单项选择题")
