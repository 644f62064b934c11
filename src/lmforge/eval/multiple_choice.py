"""Multiple-choice evaluation in the C-Eval / CMMLU / MMLU CSV layouts: reading, prompts, scoring.

A task path is one CSV file or a directory of them, one subject per file. Directories may hold the
benchmarks' own layouts: ``dev/`` + ``test/`` (CMMLU, MMLU's ``data/``) or ``dev/`` + ``val/`` +
``test/`` (C-Eval), and file names may carry the split (``{subject}_test.csv``,
``{subject}_dev.csv``, ``{subject}_val.csv``). The evaluated split is ``test``, else ``val``, else
the unnamed files, else ``dev``; few-shot examples come from ``dev`` (``dev_path`` overrides).

The layout is read from the first row (or given): ``cmmlu`` = header ``,Question,A,B,C,D,Answer``;
``ceval`` = header ``id,question,A,B,C,D,answer[,explanation]``; ``mmlu`` = no header, ``question,
A, B, C, D, answer``. Columns ``E``, ``F``, ... (or more mmlu columns) give more options. A bad row
(wrong column count, empty question, empty option, answer not among the options) raises
``DataError`` naming ``file:row`` — the line an editor shows, also for quoted multi-line fields —
or, with ``skip_bad=True``, is skipped and counted by reason.

Prompts are lm-evaluation-harness's ``cmmlu`` / ``ceval-valid`` / ``mmlu`` strings (``mc_prompt``):
a description line, k solved examples joined by blank lines, then the question; each option is
scored as the continuation ``" " + letter`` (``scoring="letter"``) or ``" " + option text``
(``scoring="text"``), so lm-eval's ``acc`` on the same rows equals lmforge's accuracy.

Choices made here, and why:

* ``lang="auto"`` follows the benchmark the layout comes from: cmmlu and ceval files get the
  Chinese template, mmlu files the English one unless most of the file's questions contain CJK
  characters (a Chinese set written without a header). Decided per subject, so an item and its
  examples always share one template.
* k-shot examples are the first k dev rows of the item's subject, never the item's own row (the
  same ``file:row``). With no dev split, the evaluated split supplies them (again leaving the item
  out): CMMLU's published dev split has 5 rows per subject, so it can be evaluated 0..4-shot.
  Fewer than k examples is an error rather than a quietly smaller k.
* Letter scoring takes one forward per question (``next_token_logprobs``) when every ``" X"`` is
  a single token that does not merge with the prompt's end; otherwise it scores the letters as
  continuations with ``loglikelihood``. Both give the same numbers.
* Text scoring also reports ``acc_norm``: log-likelihood divided by the option's length in
  characters (without the leading space), exactly as lm-eval computes it.
* The question is stripped of surrounding whitespace, the options are kept verbatim (lm-eval's
  templates do the same: ``{{Question.strip()}}`` but ``{{A}}``). Examples show the answer
  letter under both scorings. ``limit`` counts items per subject (as lm-eval's, per subtask).

Usage::

    scorer = LoglikScorer.from_checkpoint("runs/demo/sft/checkpoints/step_000150")
    entry = evaluate_multiple_choice(scorer, "data/cmmlu/test", k_shot=5)   # dev from data/cmmlu/dev
    print("\\n".join(format_mc_table(entry)))
    entry["value"], entry["chance"], entry["details"]["subjects"]["agronomy"]

``write_mc_from_math`` turns synthetic math problems (``lmforge.synth.math``) into a 4-option
set in the mmlu layout, wrong options from ``lmforge.synth.pairs``' planted errors, so a run with
no downloaded benchmark still reports a multiple-choice number::

    write_mc_from_math(generate_problems(200, langs=["en"], split="test"), "out/mc/math_word_problems.csv")
"""

from __future__ import annotations

import csv
import io
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from lmforge.config import ConfigError
from lmforge.data.document import DataError
from lmforge.eval.subjects import subject_name_zh

LETTERS = "ABCDEFGHIJ"
LAYOUTS = ("cmmlu", "ceval", "mmlu")
LANGS = ("auto", "zh", "en")
SCORINGS = ("letter", "text")
SKIP_REASONS = ("wrong_column_count", "empty_question", "missing_option", "bad_answer")
_SPLITS = ("test", "val", "dev")
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_N_EXAMPLES = 3  # prompts + predictions kept in the results, for a reader to see what was asked


@dataclass(frozen=True)
class MCItem:
    subject: str  # the file stem without a split suffix, e.g. "agronomy"
    question: str
    options: tuple[str, ...]
    answer: str  # a letter among ``letters``
    source: str  # "file:row"

    @property
    def letters(self) -> str:
        return LETTERS[: len(self.options)]


@dataclass
class MCFile:
    path: Path
    subject: str
    layout: str
    items: list[MCItem] = field(default_factory=list)


# ---- reading ---------------------------------------------------------------------------------------


@dataclass
class _Columns:
    layout: str
    header: bool
    width: int
    question: int
    options: list[int]
    answer: int


def _columns(first: list[str], where: str, layout: str | None) -> _Columns:
    names = [c.strip().lower() for c in first]
    if "question" in names and "a" in names:  # a header row
        detected = "ceval" if names[0] == "id" else "cmmlu"
        if layout == "mmlu":
            raise DataError(f"{where}:1: a header row ({','.join(first)}), but the mmlu layout has none")
        if "answer" not in names:
            raise DataError(f"{where}:1: no answer column in the header ({','.join(first)}); "
                            "C-Eval's test split has no public answers: evaluate its val split")
        options = []
        for letter in LETTERS.lower():
            if letter not in names:
                break
            options.append(names.index(letter))
        if len(options) < 2:
            raise DataError(f"{where}:1: the header names fewer than two options (columns A, B, ...)")
        return _Columns(layout or detected, True, len(first), names.index("question"), options, names.index("answer"))
    if layout in ("cmmlu", "ceval"):
        raise DataError(f"{where}:1: no header row, but the {layout} layout starts with one")
    if not 4 <= len(first) <= len(LETTERS) + 2:
        raise DataError(f"{where}:1: {len(first)} columns; the headerless mmlu layout is question, "
                        f"2 to {len(LETTERS)} options, answer (6 columns for 4 options)")
    return _Columns("mmlu", False, len(first), 0, list(range(1, len(first) - 1)), len(first) - 1)


def _parse_row(cells: list[str], cols: _Columns, subject: str, where: str) -> MCItem | tuple[str, str]:
    """An item, or (reason, message) for a bad row."""
    if len(cells) != cols.width:
        return "wrong_column_count", f"{len(cells)} columns, expected {cols.width}"
    question = cells[cols.question].strip()
    if not question:
        return "empty_question", "empty question"
    options = tuple(cells[i] for i in cols.options)
    letters = LETTERS[: len(options)]
    for letter, option in zip(letters, options):
        if not option.strip():
            return "missing_option", f"option {letter} is empty"
    raw = cells[cols.answer]
    answer = raw.strip().upper()
    if len(answer) != 1 or answer not in letters:
        return "bad_answer", f"answer {raw!r} is not one of {', '.join(letters)}"
    return MCItem(subject, question, options, answer, where)


def subject_of(path: str | Path) -> str:
    """A subject's name from its file: the stem without a ``_test`` / ``_val`` / ``_dev`` suffix."""
    stem = Path(path).stem
    for split in _SPLITS:
        if stem.endswith("_" + split) and len(stem) > len(split) + 1:
            return stem[: -len(split) - 1]
    return stem


def read_mc_csv(path: str | Path, *, layout: str | None = None, skip_bad: bool = False,
                stats: dict[str, int] | None = None) -> MCFile:
    """One subject's CSV. Bad rows raise ``DataError`` ("file:row: problem") or, with ``skip_bad``,
    are counted in ``stats`` (reason -> rows) and left out."""
    if layout is not None and layout not in LAYOUTS:
        raise ConfigError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    path = Path(path)
    subject = subject_of(path)
    stats = {} if stats is None else stats
    result = MCFile(path, subject, layout or "mmlu")
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            cols, end_of_previous = None, 0
            for cells in reader:
                # A record starts on the line after the previous one ended (quoted fields may span lines).
                line, end_of_previous = end_of_previous + 1, reader.line_num
                if not any(c.strip() for c in cells):
                    continue  # blank lines, e.g. at the end of a file
                if cols is None:
                    cols = _columns(cells, str(path), layout)
                    result.layout = cols.layout
                    if cols.header:
                        continue
                parsed = _parse_row(cells, cols, subject, f"{path}:{line}")
                if isinstance(parsed, MCItem):
                    result.items.append(parsed)
                elif skip_bad:
                    stats[parsed[0]] = stats.get(parsed[0], 0) + 1
                else:
                    raise DataError(f"{path}:{line}: {parsed[1]} (skip such rows with skip_bad / --skip-bad)")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from None
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: unreadable CSV ({e})") from None
    return result


def _by_subject(files: Sequence[Path]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for f in files:
        subject = subject_of(f)
        if subject in out:
            raise DataError(f"{f}: a second file for subject {subject!r} (the first: {out[subject]})")
        out[subject] = f
    return out


def _splits_in(directory: Path) -> dict[str, dict[str, Path]]:
    """A directory's CSVs by split ("test", "val", "dev", or "" for files that name none): from
    split subdirectories where there are any, else from ``_test``-style file name suffixes."""
    subdirs = [s for s in _SPLITS if (directory / s).is_dir()]
    if subdirs:
        return {s: _by_subject(sorted((directory / s).glob("*.csv"))) for s in subdirs}
    groups: dict[str, list[Path]] = {}
    for f in sorted(directory.glob("*.csv")):
        split = next((s for s in _SPLITS if f.stem.endswith("_" + s) and subject_of(f) != f.stem), "")
        groups.setdefault(split, []).append(f)
    return {split: _by_subject(files) for split, files in groups.items()}


def locate_splits(path: str | Path, dev_path: str | Path | None = None) -> tuple[dict[str, Path], dict[str, Path] | None, str]:
    """(evaluated files by subject, dev files by subject or None if there is no dev split, the
    evaluated split's name). See the module docstring for the layouts understood."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if path.is_file():
        subject = subject_of(path)
        split = path.stem[len(subject) + 1 :] or (path.parent.name if path.parent.name in _SPLITS else "")
        evaluated = {subject: path}
        if split == "dev":
            dev = evaluated
        else:
            near = [path.with_name(f"{subject}_dev.csv")]
            if path.parent.name in _SPLITS:
                near += [path.parent.parent / "dev" / f"{subject}_dev.csv", path.parent.parent / "dev" / f"{subject}.csv"]
            found = [p for p in near if p.is_file()]
            dev = {subject: found[0]} if found else None
    else:
        splits = _splits_in(path)
        split = next((s for s in ("test", "val", "", "dev") if splits.get(s)), None)
        if split is None:
            raise DataError(f"{path}: no .csv files (expected one CSV per subject, or dev/ and test/ or val/ directories of them)")
        evaluated = splits[split]
        dev = splits.get("dev")
        if split == "" and path.name in _SPLITS:  # a split's own directory, e.g. data/test
            split = path.name
            if split == "dev":
                dev = evaluated
            elif (path.parent / "dev").is_dir():
                dev = _by_subject(sorted((path.parent / "dev").glob("*.csv")))
    if dev_path is not None:
        dev_path = Path(dev_path)
        if dev_path.is_file():
            dev = {subject_of(dev_path): dev_path}
        elif dev_path.is_dir():
            splits = _splits_in(dev_path)
            dev = splits.get("dev") or splits.get("")
            if not dev:
                raise DataError(f"{dev_path}: no dev .csv files")
        else:
            raise DataError(f"{dev_path}: no such file or directory")
    return evaluated, dev, split or "unnamed"


# ---- prompts ---------------------------------------------------------------------------------------


def mc_description(subject_name: str, lang: str, layout: str = "cmmlu") -> str:
    """The subject line before the questions, as lm-eval's ``cmmlu`` / ``ceval-valid`` / ``mmlu`` tasks word it."""
    if lang == "zh" and layout == "ceval":
        return f"以下是中国关于{subject_name}的单项选择题，请选出其中的正确答案。\n\n"
    if lang == "zh":
        return f"以下是关于{subject_name}的单项选择题，请直接给出正确答案的选项。\n\n"
    return f"The following are multiple choice questions (with answers) about {subject_name}.\n\n"


def mc_question_text(question: str, options: Sequence[str], lang: str) -> str:
    lines = [question.strip()] + [f"{letter}. {option}" for letter, option in zip(LETTERS, options)]
    return "\n".join(lines) + ("\n答案：" if lang == "zh" else "\nAnswer:")


def mc_prompt(item: MCItem, shots: Sequence[MCItem], lang: str, subject_name: str, layout: str = "cmmlu") -> str:
    """description + solved examples (question text, " ", answer letter, blank line) + the question."""
    examples = "".join(mc_question_text(s.question, s.options, lang) + " " + s.answer + "\n\n" for s in shots)
    return mc_description(subject_name, lang, layout) + examples + mc_question_text(item.question, item.options, lang)


def subject_lang(layout: str, questions: Sequence[str]) -> str:
    """``lang="auto"``: zh for cmmlu / ceval files, and for mmlu files whose questions are mostly CJK."""
    if layout in ("cmmlu", "ceval"):
        return "zh"
    return "zh" if 2 * sum(bool(_CJK.search(q)) for q in questions) > len(questions) else "en"


def subject_display_name(subject: str, layout: str, lang: str) -> str:
    """The name in the description line: Chinese for zh where known, else the stem with spaces."""
    return subject_name_zh(subject, layout) if lang == "zh" else subject.replace("_", " ")


def few_shot_examples(item: MCItem, pool: Sequence[MCItem], k: int) -> list[MCItem]:
    """The first ``k`` items of ``pool`` other than ``item`` itself (same ``file:row``)."""
    return [shot for shot in pool if shot.source != item.source][:k]


# ---- scoring ---------------------------------------------------------------------------------------


def _score_continuations(scorer, prompts: Sequence[str], continuations: Sequence[Sequence[str]]) -> tuple[list[list[float]], int]:
    """Log-likelihood of each item's continuations after its prompt (lm-eval's token split) and
    how many items lost context tokens to the length limit (the scorer keeps the room the longest
    continuation of a shared context needs)."""
    requests, spans, truncated = [], [], 0
    for prompt, conts in zip(prompts, continuations):
        pairs = [scorer.split_pair(prompt, c) for c in conts]
        truncated += len(pairs[0][0]) + max(len(x) for _, x in pairs) > scorer.max_length + 1
        spans.append((len(requests), len(pairs)))
        requests.extend(pairs)
    results = scorer.loglikelihood(requests)
    return [[results[start + j][0] for j in range(n)] for start, n in spans], truncated


def _letter_ids(scorer, prompts: Sequence[str], letters: str) -> list[int] | None:
    """The token id of each ``" X"`` if each is one token and stays one after every prompt's end
    (checked on the first prompt of each template: its end is the template's fixed answer cue)."""
    ids = [scorer.encode(" " + letter) for letter in letters]
    if any(len(i) != 1 for i in ids):
        return None
    firsts = {prompt.endswith("答案："): prompt for prompt in reversed(prompts)}
    for prompt in firsts.values():
        context = scorer.encode(prompt)
        if any(scorer.split_pair(prompt, " " + letter) != (context, i) for letter, i in zip(letters, ids)):
            return None
    return [i[0] for i in ids]


def _score_letters(scorer, prompts: Sequence[str], n_options: Sequence[int]) -> tuple[list[list[float]], int, str]:
    letters = LETTERS[: max(n_options)]
    ids = _letter_ids(scorer, prompts, letters)
    if ids is None:
        lls, truncated = _score_continuations(scorer, prompts, [[" " + x for x in letters[:n]] for n in n_options])
        return lls, truncated, "loglikelihood"
    contexts = [scorer.encode(p) for p in prompts]
    table = scorer.next_token_logprobs(contexts, ids)
    truncated = sum(len(c) > scorer.max_length for c in contexts)
    return [table[r, :n].tolist() for r, n in enumerate(n_options)], truncated, "next_token"


def score_choices(scorer, items: Sequence[MCItem], prompts: Sequence[str], scoring: str = "letter") -> tuple[list[list[float]], int, str | None]:
    """(per item, the log-likelihood of each option after its prompt (``mc_prompt``); how many
    prompts were truncated; for letter scoring the way it ran: "next_token" or "loglikelihood")."""
    if scoring == "letter":
        return _score_letters(scorer, prompts, [len(i.options) for i in items])
    if scoring == "text":
        lls, truncated = _score_continuations(scorer, prompts, [[" " + o for o in i.options] for i in items])
        return lls, truncated, None
    raise ConfigError(f"scoring must be one of {', '.join(SCORINGS)}, got {scoring!r}")


def _argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))  # the first of equals, as numpy's


# ---- the task --------------------------------------------------------------------------------------


def _check_options(k_shot: int, lang: str, scoring: str, limit: int | None) -> None:
    if not isinstance(k_shot, int) or k_shot < 0:
        raise ConfigError(f"k_shot must be an integer >= 0, got {k_shot!r}")
    if lang not in LANGS:
        raise ConfigError(f"lang must be one of {', '.join(LANGS)}, got {lang!r}")
    if scoring not in SCORINGS:
        raise ConfigError(f"scoring must be one of {', '.join(SCORINGS)}, got {scoring!r}")
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be >= 1 (items per subject), got {limit!r}")


def evaluate_multiple_choice(scorer, path: str | Path, *, dev_path: str | Path | None = None, k_shot: int = 0,
                             lang: str = "auto", scoring: str = "letter", limit: int | None = None,
                             skip_bad: bool = False, subjects: Sequence[str] | None = None,
                             layout: str | None = None) -> dict:
    """Accuracy of ``scorer``'s model on a multiple-choice task; the results-JSON task entry
    (``kind``, ``metric``, ``value``, ``chance``, ``n``, ``seconds``, ``details``)."""
    _check_options(k_shot, lang, scoring, limit)
    started = time.perf_counter()
    evaluated, dev_files, split = locate_splits(path, dev_path)
    if subjects is not None:
        subjects = [subjects] if isinstance(subjects, str) else list(subjects)
        unknown = sorted(set(subjects) - set(evaluated))
        if unknown:
            raise ConfigError(f"subjects: {', '.join(unknown)} not in {path} (it has: {', '.join(sorted(evaluated))})")
        evaluated = {s: p for s, p in evaluated.items() if s in set(subjects)}
    skipped: dict[str, int] = {}
    files = {s: read_mc_csv(p, layout=layout, skip_bad=skip_bad, stats=skipped) for s, p in sorted(evaluated.items())}

    pools: dict[str, list[MCItem]] = {}
    examples_from_evaluated = False
    if k_shot:
        for subject, file in files.items():
            dev_file = (dev_files or {}).get(subject, file.path if dev_files is None else None)
            if dev_file is None:
                raise ConfigError(f"k_shot={k_shot}: no dev file for subject {subject!r} among {', '.join(sorted(dev_files))}")
            same = Path(dev_file).resolve() == file.path.resolve()
            examples_from_evaluated |= same
            pools[subject] = file.items if same else read_mc_csv(dev_file, layout=layout, skip_bad=skip_bad, stats=skipped).items
            if len(pools[subject]) - same < k_shot:  # the item's own row never serves as its example
                raise ConfigError(f"k_shot={k_shot}, but subject {subject!r} has only {len(pools[subject]) - same} examples "
                                  f"in {dev_file}" + (" besides the item itself (the dev split is the evaluated split)" if same else ""))

    items, prompts, langs, names = [], [], {}, {}
    for subject, file in files.items():
        chosen = file.items[:limit]
        langs[subject] = lang if lang != "auto" else subject_lang(file.layout, [i.question for i in file.items])
        names[subject] = subject_display_name(subject, file.layout, langs[subject])
        for item in chosen:
            shots = few_shot_examples(item, pools[subject], k_shot) if k_shot else []
            items.append(item)
            prompts.append(mc_prompt(item, shots, langs[subject], names[subject], file.layout))
    if not items:
        raise DataError(f"{path}: no multiple-choice items to evaluate" + (f" ({sum(skipped.values())} bad rows skipped)" if skipped else ""))

    lls, truncated, letter_path = score_choices(scorer, items, prompts, scoring)
    acc_norm_hits = None
    if scoring == "text":
        acc_norm_hits = [_argmax([ll / len(o) for ll, o in zip(row, i.options)]) == i.letters.index(i.answer) for row, i in zip(lls, items)]
    predictions = [LETTERS[_argmax(row)] for row in lls]
    return _results(items, prompts, lls, predictions, acc_norm_hits, files, langs, names, skipped, truncated, time.perf_counter() - started,
                    dict(k_shot=k_shot, scoring=scoring, lang=lang, split=split, letter_scoring=letter_path, limit=limit,
                         fewshot_source=None if not k_shot else ("evaluated split (each item's own row left out)" if examples_from_evaluated else "dev split")))


def _results(items, prompts, lls, predictions, acc_norm_hits, files, langs, names, skipped, truncated, seconds, settings) -> dict:
    per_subject: dict[str, dict] = {}
    for index, (item, prediction) in enumerate(zip(items, predictions)):
        row = per_subject.setdefault(item.subject, {"n": 0, "correct": 0, "chance_sum": 0.0, "norm": 0})
        row["n"] += 1
        row["correct"] += prediction == item.answer
        row["chance_sum"] += 1 / len(item.options)
        if acc_norm_hits is not None:
            row["norm"] += acc_norm_hits[index]
    subjects = {}
    for subject, row in per_subject.items():
        subjects[subject] = {"n": row["n"], "correct": row["correct"], "accuracy": row["correct"] / row["n"],
                             "chance": row["chance_sum"] / row["n"], "lang": langs[subject], "name": names[subject],
                             "layout": files[subject].layout}
        if acc_norm_hits is not None:
            subjects[subject]["acc_norm"] = row["norm"] / row["n"]
    n = len(items)
    correct = sum(r["correct"] for r in per_subject.values())
    examples, seen = [], set()
    for item, prompt, row, prediction in zip(items, prompts, lls, predictions):
        if item.subject not in seen and len(examples) < _N_EXAMPLES:  # one per subject, for variety
            seen.add(item.subject)
            examples.append({"source": item.source, "prompt": prompt, "answer": item.answer, "prediction": prediction,
                             "logliks": {letter: round(ll, 4) for letter, ll in zip(item.letters, row)}})
    details = {"subjects": subjects, **settings, "skipped": sum(skipped.values()),
               "skipped_by_reason": dict(sorted(skipped.items())), "truncated": truncated, "examples": examples}
    if acc_norm_hits is not None:
        details["acc_norm"] = sum(acc_norm_hits) / n
    return {"kind": "multiple_choice", "metric": "accuracy", "value": correct / n,
            "chance": sum(1 / len(i.options) for i in items) / n, "n": n, "seconds": round(seconds, 3), "details": details}


def format_mc_table(entry: dict, title: str | None = None) -> list[str]:
    """Plain-text lines: one row per subject (n, correct, accuracy, chance [, acc_norm]), then the
    overall row and the settings, for the CLI to print and the report to embed."""
    details = entry["details"]
    norm = "acc_norm" in details
    rows = [(s, r["n"], r["correct"], r["accuracy"], r["chance"], r.get("acc_norm")) for s, r in sorted(details["subjects"].items())]
    rows.append(("overall", entry["n"], sum(r[2] for r in rows), entry["value"], entry["chance"], details.get("acc_norm")))
    width = max(len("subject"), *(len(r[0]) for r in rows))
    head = f"{'subject':<{width}}  {'n':>6}  {'correct':>7}  {'accuracy':>8}  {'chance':>6}" + ("  acc_norm" if norm else "")
    lines = ([title] if title else []) + [head, "-" * len(head)]
    for i, (subject, n, correct, accuracy, chance, acc_norm) in enumerate(rows):
        if i == len(rows) - 1:
            lines.append("-" * len(head))
        lines.append(f"{subject:<{width}}  {n:>6}  {correct:>7}  {accuracy:>8.1%}  {chance:>6.1%}" + (f"  {acc_norm:>8.1%}" if norm else ""))
    settings = f"{details['k_shot']}-shot, {details['scoring']} scoring, lang {details['lang']}, split {details['split']}"
    lines.append(f"{settings}; {details['skipped']} bad rows skipped; {details['truncated']} prompts truncated")
    return lines


# ---- a multiple-choice set from synthetic math -------------------------------------------------


def _math_distractors(record: dict, seed: int, n: int) -> list[str]:
    """``n`` wrong answers a solver could reach: the final answers of solutions with one planted
    error (``synth.pairs``: a slipped step, a swapped operation, a wrong final line), then
    intermediate results, then near misses. Never negative for a non-negative answer, never a
    fraction in a decimal problem, all different from the answer and from each other."""
    from fractions import Fraction

    from lmforge.synth.answers import format_number, parse_number
    from lmforge.synth.math import evaluate_steps
    from lmforge.synth.pairs import make_pair

    style = record.get("style", "decimal")
    gold = parse_number(str(record["answer"]))
    candidates = (parse_number(make_pair(record, seed=seed * 1000 + t)["rejected_answer"]) for t in range(8))
    intermediate = evaluate_steps(record["steps"])[:-1] if record.get("steps") else []
    step = Fraction(1, gold.denominator)  # a fraction's near misses move its numerator
    near = [gold + d * step for d in (1, -1, 2, -2, 10, -10, 3, 4, 5, 6)]
    out, seen = [], {gold}
    for value in (*candidates, *intermediate, *near):
        text = format_number(value, style)
        if value in seen or (value < 0 <= gold) or (style == "decimal" and "/" in text):
            continue
        seen.add(value)
        out.append(text)
        if len(out) == n:
            return out
    raise ValueError(f"no {n} distinct wrong answers for the problem with answer {record['answer']!r}")


def write_mc_from_math(records, path: str | Path, seed: int = 0, n_options: int = 4) -> Path:
    """An mmlu-layout CSV (question, A-D, answer) from solved math problem records: the question is
    the user turn, one option the gold answer (at a seeded random position), the others wrong
    answers from planted errors. Name the file ``math_word_problems.csv`` (the zh template then
    says 数学应用题) and give one language per file: ``lang="auto"`` picks one template per file."""
    if not 2 <= n_options <= len(LETTERS):
        raise ConfigError(f"n_options must be in [2, {len(LETTERS)}], got {n_options}")
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    for index, record in enumerate(records):
        messages = record.get("messages") or []
        question = next((m["content"] for m in messages if m.get("role") == "user"), None)
        if question is None or record.get("answer") is None:
            raise ValueError(f"record {index} ({record.get('id', 'no id')}): a math record needs a user turn and an 'answer'")
        options = [str(record["answer"]), *_math_distractors(record, seed, n_options - 1)]
        random.Random(f"lmforge-mc-math:{seed}:{record.get('id', index)}").shuffle(options)
        writer.writerow([question, *options, LETTERS[options.index(str(record["answer"]))]])
    from lmforge.io import write_text_atomic

    return write_text_atomic(path, buffer.getvalue())
