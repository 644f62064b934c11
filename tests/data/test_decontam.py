"""Decontamination: planted GSM8K/CMMLU leaks found (precision/recall printed), eval-set layouts,
the short-item policy, flag metadata, malformed eval files, the index cache, fast NFKC."""

from __future__ import annotations

import csv
import hashlib
import json
import random
import re
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from lmforge.data.document import DataError, Document
from lmforge.data.pipeline.base import Drop, StepContext
from lmforge.data.steps.decontam import _NFKC_INERT, Decontaminate, DecontaminateConfig, WordHasher, nfkc
from lmforge.data.steps.evalsets import eval_files, read_eval_items
from lmforge.data.steps.text import words

N = 13


def _step(tmp_path: Path, eval_sets, **settings) -> Decontaminate:
    step = Decontaminate(DecontaminateConfig(eval_sets=[str(p) for p in eval_sets], **settings))
    step.setup(StepContext(base_dir=tmp_path, work_dir=tmp_path / "work"))
    return step


def _items(path: Path, **settings):
    config = DecontaminateConfig(eval_sets=[str(path)], **settings)
    files = eval_files([path])
    return [item for p, shown, name in files for item in read_eval_items(p, p.read_bytes(), shown, name, config)]


# --- planted leaks in real text -------------------------------------------------------------
def _chunks(path: Path, size: int = 2048) -> list[str]:
    """~2 KB pieces of a text file, cut at line ends."""
    chunks, lines, n = [], [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        lines.append(line)
        n += len(line.encode()) + 1
        if n >= size:
            chunks.append("\n".join(lines))
            lines, n = [], 0
    return chunks


_ALNUM = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_FULL_WIDTH = str.maketrans({c: chr(ord(c) + 0xFEE0) for c in _ALNUM})  # "48" -> "４８"
_PUNCT_SWAP = str.maketrans(
    {",": "，", ".": "。", "?": "？", ":": "：", "$": "＄", "，": ",", "。": ".", "？": "?", "：": ":"}
)


def _reformat(text: str, form: str, rng: random.Random) -> str:
    """A leak as it might appear in crawled text; every form is invisible to NFKC + words()."""
    if form in ("whitespace", "all"):
        text = re.sub(r"\s+", lambda _: rng.choice([" ", "  ", "\n", " \t "]), text)
        text = re.sub(r"([\u4e00-\u9fff])", r"\1 ", text)  # "肉 牛 屠 宰": spaced-out Chinese
    if form in ("punctuation", "all"):
        text = text.translate(_PUNCT_SWAP)
    if form in ("case", "all"):
        text = text.upper() if rng.random() < 0.5 else text.title()
    if form in ("fullwidth", "all"):
        text = text.translate(_FULL_WIDTH)
    return text


FORMS = ("verbatim", "whitespace", "punctuation", "case", "fullwidth", "all")


def _leaks(shared: Path, rng: random.Random) -> list[tuple[str, str]]:
    """(item id, text) candidates: GSM8K question+answer or long question; CMMLU question+options."""
    leaks = []
    for line, raw in enumerate((shared / "eval/gsm8k_train.jsonl").read_text(encoding="utf-8").splitlines(), 1):
        record = json.loads(raw)
        leaks.append((f"gsm8k_train.jsonl:{line}", record["question"] + "\n" + record["answer"]))
        if len(words(record["question"])) >= N:
            leaks.append((f"gsm8k_train.jsonl:{line}", record["question"]))
    gsm8k = rng.sample(leaks, 200)
    cmmlu = []
    for path in sorted((shared / "eval/cmmlu_dev").glob("*.csv")):
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.reader(f)
            next(reader)
            for row in reader:
                item_id = f"cmmlu_dev/{path.name}:{reader.line_num}"
                question, options = row[1], row[2:6]
                lettered = " ".join(f"{letter}．{o}" for letter, o in zip("ABCD", options))
                if len(words(question + lettered)) >= N:  # short ones are the short-item test's
                    cmmlu.append((item_id, f"{question}（ ）\n{lettered}"))
                if len(words(question)) >= N:
                    cmmlu.append((item_id, question))
    return gsm8k + rng.sample(cmmlu, 200)


def test_planted_leaks_precision_recall(shared_data, tmp_path, show):
    rng = random.Random(0)
    clean = [c for f in sorted((shared_data / "pretrain").glob("*.txt")) for c in _chunks(f)]
    leaks = _leaks(shared_data, rng)
    planted = set(rng.sample(range(len(clean)), k=len(clean) // 3))
    truth: dict[int, tuple[str, str]] = {}  # doc index -> (item id, form)
    docs = []
    for i, text in enumerate(clean):
        if i in planted:
            item_id, leak = rng.choice(leaks)
            form = FORMS[len(truth) % len(FORMS)]
            lines = text.split("\n")
            at = rng.randrange(len(lines) + 1)
            text = "\n".join(lines[:at] + [_reformat(leak, form, rng)] + lines[at:])
            truth[i] = (item_id, form)
        docs.append(Document(f"doc{i}", text))
    eval_sets = [shared_data / "eval/gsm8k_train.jsonl", shared_data / "eval/cmmlu_dev"]

    step = Decontaminate(DecontaminateConfig(eval_sets=[str(p) for p in eval_sets]))
    step.setup(StepContext(base_dir=Path("."), work_dir=tmp_path))
    out = step.process_batch([Document(d.id, d.text) for d in docs])
    dropped = {i for i, r in enumerate(out) if isinstance(r, Drop)}
    assert all(r.reason == "contaminated" for r in out if isinstance(r, Drop))

    true_pos = len(dropped & truth.keys())
    precision = true_pos / max(len(dropped), 1)
    recall = true_pos / len(truth)
    per_form = {f: np.mean([i in dropped for i, (_, g) in truth.items() if g == f]) for f in FORMS}
    show(f"\ndecontaminate: {len(docs)} ~2 KB chunks of the pretrain samples, {len(truth)} with a planted "
          f"GSM8K/CMMLU leak: precision {precision:.3f}, recall {recall:.3f}")
    show("  recall by form: " + ", ".join(f"{f} {r:.3f}" for f, r in per_form.items()))
    show(f"  counters: {dict(step.counters)}")
    assert per_form["verbatim"] == 1.0
    assert recall == 1.0  # every reformatting here is one NFKC + words() normalizes away
    assert precision == 1.0  # no clean chunk of a novel/textbook/play shares a 13-gram with the evals
    assert step.counters["contaminated:gsm8k_train"] + step.counters["contaminated:cmmlu_dev"] >= len(truth)

    # Flag mode, same documents: kept, and the planted item is the one reported first.
    flagger = Decontaminate(DecontaminateConfig(eval_sets=[str(p) for p in eval_sets], action="flag"))
    flagger.setup(StepContext(base_dir=Path("."), work_dir=tmp_path))
    assert flagger.index_source == "cache"
    flagged = flagger.process_batch(docs)
    assert not any(isinstance(r, Drop) for r in flagged)
    for i, (item_id, _) in truth.items():
        assert flagged[i].metadata["contamination"]["items"][0] == item_id
    assert {i for i, d in enumerate(flagged) if "contamination" in d.metadata} == truth.keys()


def test_short_item_policy(tmp_path):
    short = "alpha beta gamma delta epsilon zeta eta theta iota"  # 9 words: one whole-item n-gram
    tiny = "one two three four five"  # 5 words: below min_item_words, ignored
    long = " ".join(f"word{i}" for i in range(30))
    path = tmp_path / "evals.jsonl"
    path.write_text("".join(json.dumps({"question": q}) + "\n" for q in (short, tiny, long)))
    docs = [
        Document("whole", "Intro. ALPHA, beta; gamma delta\nepsilon zeta — eta theta iota! Outro."),
        Document("partial", "alpha beta gamma delta epsilon zeta eta theta"),  # 8 of the 9 words
        Document("tiny", f"the list goes {tiny} and so on"),
        Document("long", " ".join(f"word{i}" for i in range(5, 5 + N))),  # one 13-gram of the long item
    ]
    step = _step(tmp_path, [path], min_item_words=8)
    assert step.index.stats["ignored_short_items"] == 1
    assert [isinstance(r, Drop) for r in step.process_batch(docs)] == [True, False, False, True]
    step = _step(tmp_path, [path], min_item_words=3)
    assert [isinstance(r, Drop) for r in step.process_batch(docs)] == [True, False, True, True]


def test_short_cmmlu_questions(shared_data, tmp_path):
    """Questions alone (no options): the short ones become whole-item n-grams or are ignored."""
    cmmlu = shared_data / "eval/cmmlu_dev"
    lengths = [len(words(item.texts[0])) for item in _items(cmmlu, include_options=False)]
    step = _step(tmp_path, [cmmlu], include_options=False, min_item_words=8)
    assert step.index.stats["items"] == len(lengths) == 335
    assert step.index.stats["ignored_short_items"] == sum(n < 8 for n in lengths) > 0
    # "牛的发情周期平均为" is a 9-word item: matched whole; 7 of its words are not
    docs = [Document("a", "牛的发情周期平均为多少天？"), Document("b", "发情周期平均为二十一天")]
    assert [isinstance(r, Drop) for r in step.process_batch(docs)] == [True, False]


def test_ngrams_do_not_cross_documents(tmp_path):
    item = " ".join(f"w{i}" for i in range(N))
    path = tmp_path / "e.jsonl"
    path.write_text(json.dumps({"question": item}) + "\n")
    step = _step(tmp_path, [path])
    first, second = item.split()[:7], item.split()[7:]
    docs = [Document("a", " ".join(first)), Document("b", " ".join(second)), Document("c", "x " + item)]
    assert [isinstance(r, Drop) for r in step.process_batch(docs)] == [False, False, True]
    assert [isinstance(step.process(d), Drop) for d in docs] == [False, False, True]


def test_flag_metadata_and_min_matches(tmp_path):
    records = [{"question": " ".join(f"q{k}w{i}" for i in range(20)), "answer": "so #### 7"} for k in range(3)]
    path = tmp_path / "gsm.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    one_gram = " ".join(f"q0w{i}" for i in range(N))  # exactly one 13-gram of item 1
    # all of item 2 (22 words with its answer) and 15 words of item 3
    both = " ".join(f"q1w{i}" for i in range(20)) + " so 7 ... " + " ".join(f"q2w{i}" for i in range(15))
    docs = [Document("one", one_gram), Document("both", both), Document("clean", "nothing to see")]
    step = _step(tmp_path, [path], action="flag", min_matches=2)
    out = step.process_batch(docs)
    assert out == docs  # flag mode keeps everything
    assert "contamination" not in out[0].metadata  # 1 hit < min_matches
    meta = out[1].metadata["contamination"]
    assert meta == {"ngrams": (22 - N + 1) + (15 - N + 1), "sets": ["gsm"], "items": ["gsm.jsonl:2", "gsm.jsonl:3"]}
    json.dumps(meta)  # plain JSON types
    assert "contamination" not in out[2].metadata
    assert step.counters == {"ngram_hits": 1 + meta["ngrams"], "docs_with_hits": 2, "contaminated:gsm": 1}


# --- eval-set formats -------------------------------------------------------------------------
def test_csv_layouts_and_jsonl_fields(tmp_path):
    (tmp_path / "cmmlu.csv").write_text(
        ",Question,A,B,C,D,Answer\n0,肉牛屠宰后胴体的哪个部位肉质较好,胸,腹,大腿,小腿,C\n", encoding="utf-8"
    )
    (tmp_path / "ceval.csv").write_text(
        'id,question,A,B,C,D,answer,explanation\n0,Which is prime?,4,6,7,9,C,"1. 7 has no divisors\n2. others do"\n',
        encoding="utf-8",
    )
    (tmp_path / "hf_mmlu.csv").write_text("input,A,B,C,D,target\nWhat is 1+1?,1,2,3,4,B\n", encoding="utf-8")
    (tmp_path / "mmlu_test.csv").write_text('"What is 2+2, roughly?",3,4,5,22,B\nNext?,a,b,c,d,A\n', encoding="utf-8")
    mc = {"question": "Pick one", "choices": ["x1", "y2"], "answer": 1}
    (tmp_path / "mc.jsonl").write_text(json.dumps(mc) + "\n")

    (cmmlu,) = _items(tmp_path / "cmmlu.csv")
    assert cmmlu.id == "cmmlu.csv:2" and cmmlu.set == "cmmlu"
    question = "肉牛屠宰后胴体的哪个部位肉质较好"
    assert cmmlu.texts == (f"{question}\nA. 胸\nB. 腹\nC. 大腿\nD. 小腿", f"{question}\n胸\n腹\n大腿\n小腿")
    (ceval,) = _items(tmp_path / "ceval.csv")
    assert ceval.texts[1] == "Which is prime?\n4\n6\n7\n9\n1. 7 has no divisors\n2. others do"  # explanation kept
    assert _items(tmp_path / "ceval.csv", include_answers=False)[0].texts[1] == "Which is prime?\n4\n6\n7\n9"
    assert [i.texts[1] for i in _items(tmp_path / "hf_mmlu.csv")] == ["What is 1+1?\n1\n2\n3\n4"]  # header: input
    mmlu = _items(tmp_path / "mmlu_test.csv")  # no header row: question, options..., answer
    assert [i.id for i in mmlu] == ["mmlu_test.csv:1", "mmlu_test.csv:2"]
    assert mmlu[0].texts[1] == "What is 2+2, roughly?\n3\n4\n5\n22"
    (mc,) = _items(tmp_path / "mc.jsonl")
    assert mc.texts == ("Pick one\nA. x1\nB. y2", "Pick one\nx1\ny2")  # the int answer carries no text
    assert _items(tmp_path / "mc.jsonl", include_options=False)[0].texts == ("Pick one",)

    # A directory is one set; its files show as dir/file.
    names = [(d, s) for _, d, s in eval_files([tmp_path])]
    assert names[0] == (f"{tmp_path.name}/ceval.csv", tmp_path.name)


def test_gsm8k_calculator_notes_indexed_both_ways(tmp_path):
    path = tmp_path / "gsm8k.jsonl"
    answer = "She sold 48/2 = <<48/2=24>>24 clips.\n#### 24"
    path.write_text(json.dumps({"question": "Q?", "answer": answer}) + "\n")
    (item,) = _items(path)
    assert item.texts == (f"Q?\n{answer}", "Q?\nShe sold 48/2 = 24 clips.\n#### 24")


@pytest.mark.parametrize(
    "name, content, where",
    [
        ("bad.csv", ",Question,A,B,C,D,Answer\n0,q,a,b,c,d,A\n1,q,a,b,c,B\n", "bad.csv:3"),  # missing option
        ("mmlu.csv", "q,a,b,c,d,A\nq2,a,b,c,B\n", "mmlu.csv:2"),
        ("empty_q.csv", "id,question,A,B,answer\n0,  ,x,y,A\n", "empty_q.csv:2"),
        ("bad.jsonl", '{"question": "fine"}\n{"question": "broken\n', "bad.jsonl:2"),
        ("fields.jsonl", '{"question": "fine"}\n\n{"query": "wrong field"}\n', "fields.jsonl:3"),
        ("list.jsonl", '["not", "an", "object"]\n', "list.jsonl:1"),
        ("empty.jsonl", "\n\n", "empty.jsonl: no evaluation items"),
    ],
)
def test_malformed_eval_files_name_file_and_row(tmp_path, name, content, where):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(where)):
        _step(tmp_path, [path])


def test_missing_eval_set_and_bad_config(tmp_path):
    with pytest.raises(DataError, match="no such evaluation file"):
        _step(tmp_path, [tmp_path / "absent.jsonl"])
    for bad, field in [({"eval_sets": []}, "eval_sets"), ({"ngram_size": 0}, "ngram_size"),
                       ({"action": "remove"}, "action"), ({"min_matches": 0}, "min_matches")]:
        with pytest.raises(ValueError, match=field):
            DecontaminateConfig(**{"eval_sets": ["x.jsonl"], **bad})


# --- the index cache --------------------------------------------------------------------------
def test_index_cache_is_reused_and_keyed_by_content_and_settings(tmp_path):
    path = tmp_path / "e.jsonl"
    path.write_text(json.dumps({"question": " ".join(f"w{i}" for i in range(20))}) + "\n")
    first = _step(tmp_path, [path])
    (cache,) = (tmp_path / "work").glob("decontam-index-*.npz")
    mtime = cache.stat().st_mtime_ns
    second = _step(tmp_path, [path])
    assert (first.index_source, second.index_source) == ("built", "cache")
    assert cache.stat().st_mtime_ns == mtime
    assert np.array_equal(first.index.tables[N][0], second.index.tables[N][0])

    assert _step(tmp_path, [path], ngram_size=10).index_source == "built"  # settings are in the key
    path.write_text(json.dumps({"question": "changed " * 20}) + "\n")
    assert _step(tmp_path, [path]).index_source == "built"  # so is the content
    assert len(list((tmp_path / "work").glob("decontam-index-*.npz"))) == 3

    cache.write_bytes(b"truncated")  # an unreadable cache is rebuilt, not fatal
    path.write_text(json.dumps({"question": " ".join(f"w{i}" for i in range(20))}) + "\n")
    assert _step(tmp_path, [path]).index_source == "built"


# --- hashing and normalization ----------------------------------------------------------------
def test_word_hashes_are_stable_across_processes():
    # blake2b, not Python's per-process salted hash(): a golden value pins it.
    assert WordHasher()("Hello, 世界").tolist() == [
        int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest(), "little")
        for w in ("hello", "世", "界")
    ]
    assert WordHasher()("hello").tolist() == [9022087748821825191]


def test_fast_nfkc_agrees_with_full_nfkc():
    for lo, hi in re.findall(r"(.)-(.)", _NFKC_INERT):
        for c in map(chr, range(max(ord(lo), 0x80), ord(hi) + 1)):
            if not 0x3400 <= ord(c) <= 0x9FFF:  # ideographs are NFKC-stable
                assert unicodedata.combining(c) == 0 and words(unicodedata.normalize("NFKC", c)) == words(c) == [], c
    rng = random.Random(0)
    alphabet = list("aeAZ09 ，。、？（）「」…·—“”\n") + [
        "\u0301", "\u0327", "\u0308", "４", "８", "Ｈ", "ｅ", "ﬁ", "①", "½", "™", "℃", "㎏", "\uf900", "\u3000",
        "가", "\u1100", "\u1161", "ｶ", "\uff9e", "･", "・", "〸", "å", "肉", "牛",
    ]
    for _ in range(3000):
        s = "".join(rng.choice(alphabet) for _ in range(rng.randrange(12)))
        assert words(nfkc(s)) == words(unicodedata.normalize("NFKC", s)), repr(s)
    assert nfkc("ＧＳＭ８Ｋ，第４８题") == "GSM8K，第48题"
