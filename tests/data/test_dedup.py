"""Deduplication: the MinHash core, and exact / near-duplicate / line dedup through the three phases.

``run_global_step`` below plays the executor: collect on every shard (batch by batch, rows saved
to ``collect-XXXXX.npz``), decide once, then setup + process every shard again. The planted
near-duplicate tests print precision and recall (``pytest -s`` shows them).
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lmforge.data.document import Document
from lmforge.data.pipeline.base import Drop, StepContext, step_types
from lmforge.data.steps import minhash as mh
from lmforge.data.steps.dedup import (
    ExactDedup, ExactDedupConfig, LineDedup, LineDedupConfig, MinHashDedup, MinHashDedupConfig,
)
from lmforge.data.steps.text import CJK_CHARS, words

WORD_SPAN_RE = re.compile(f"[{CJK_CHARS}]|[^\\W_{CJK_CHARS}]+")


# -- the executor's protocol ---------------------------------------------------------------------
def run_global_step(step_cls, config, shards: list[list[Document]], work_dir: Path, batch_size: int = 16):
    """collect per shard -> npz -> decide -> setup + process per shard; returns (summary, outputs, worker)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    collector, paths = step_cls(config), []
    for index, docs in enumerate(shards):
        collector.shard = index
        rows: dict[str, list[np.ndarray]] = {}
        for lo in range(0, len(docs), batch_size):
            for key, value in collector.collect(docs[lo : lo + batch_size]).items():
                rows.setdefault(key, []).append(value)
        path = work_dir / f"collect-{index:05d}.npz"
        np.savez(path, **{key: np.concatenate(parts) for key, parts in rows.items()})
        paths.append(path)
    summary = step_cls(config).decide(paths, work_dir)
    worker = step_cls(config)
    worker.setup(StepContext(base_dir=Path("."), work_dir=work_dir))
    outputs = []
    for docs in shards:
        out: list = []
        for lo in range(0, len(docs), batch_size):
            out += worker.process_batch(docs[lo : lo + batch_size])
        outputs.append(out)
    return summary, outputs, worker


def dropped_ids(shards, outputs, reason: str) -> set[str]:
    return {d.id for docs, out in zip(shards, outputs) for d, o in zip(docs, out) if isinstance(o, Drop) and o.reason == reason}


# -- corpora ---------------------------------------------------------------------------------------
def chunk(text: str, size: int) -> list[str]:
    """~``size``-character documents, cut at line ends."""
    out, start = [], 0
    while start < len(text):
        end = text.find("\n", start + size)
        end = len(text) if end < 0 else end + 1
        if text[start:end].strip():
            out.append(text[start:end])
        start = end
    return out


def real_documents(shared_data: Path) -> list[str]:
    """~2 KB documents (UTF-8) of English and Chinese: 2000 Latin or ~700 CJK characters."""
    en = chunk((shared_data / "pretrain/en_shakespeare.txt").read_text(encoding="utf-8"), 2000)
    zh = chunk((shared_data / "pretrain/zh_novel.txt").read_text(encoding="utf-8"), 700)
    return en[:100] + zh[:100]


def generated_documents(n: int = 200, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(5000)] + [chr(0x4E00 + i) for i in range(3000)]
    return [" ".join(rng.choice(vocab) for _ in range(rng.randint(250, 400))) for _ in range(n)]


def edit_words(text: str, rate: float, vocab: list[str], rng: random.Random) -> str:
    """Each word (as ``words()`` sees them) is, with probability ``rate``, deleted, replaced, or
    preceded by an inserted word (one third each); everything between words is kept."""
    out, last = [], 0
    for match in WORD_SPAN_RE.finditer(text):
        out.append(text[last : match.start()])
        last = match.end()
        if rng.random() >= rate:
            out.append(match.group())
            continue
        action = rng.randrange(3)
        if action == 1:
            out.append(rng.choice(vocab))
        elif action == 2:
            out.append(rng.choice(vocab) + " " + match.group())
    out.append(text[last:])
    return "".join(out)


def true_jaccard(a: str, b: str, n: int = 5) -> float:
    def shingles(text: str) -> set[tuple[str, ...]]:
        w = words(text)
        return {tuple(w[i : i + n]) for i in range(max(len(w) - n + 1, 1))} if w else set()

    x, y = shingles(a), shingles(b)
    return len(x & y) / len(x | y)


# -- MinHash core ----------------------------------------------------------------------------------
def test_vectorized_words_equal_words():
    texts = ["GPT-4 写了 3 首诗", "İstanbul ΟΔΟΣ σας", "snake_case and x²+y³ café", "", "…!!", "ﬁne Ⅻ ①", "a\x00b\ud800c",
             "𠀀𪚥abc・カタ゠한국ｱｲ"]
    assert mh.batch_words(texts) == [words(t) for t in texts]


def test_vectorized_words_equal_words_on_real_text(shared_data):
    texts = real_documents(shared_data)
    assert mh.batch_words(texts) == [words(t) for t in texts]


def test_signatures_identical_texts_stable_across_batches_and_processes():
    texts = generated_documents(20)
    hasher = mh.MinHasher(seed=3)
    alone = hasher.signatures([texts[5]])[0]
    batch = hasher.signatures(texts)
    assert (batch[5] == alone).all()
    assert (hasher.signatures([texts[5], texts[5]]) == alone).all()
    assert (mh.MinHasher(seed=3).signatures(texts[::-1])[-6] == alone).all()
    assert not (mh.MinHasher(seed=4).signatures([texts[5]])[0] == alone).all()
    # Another process with another str hash seed computes the same signature.
    code = ("import sys; from lmforge.data.steps.minhash import MinHasher; "
            "print(MinHasher(seed=3).signatures([sys.stdin.read()])[0].tolist())")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], input=texts[5], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == str(alone.tolist())


def test_signatures_equal_direct_minimum_whatever_the_chunking(monkeypatch):
    texts = generated_documents(12) + ["", "two words", " ".join(f"x{i}" for i in range(3000))]
    hasher = mh.MinHasher(num_perm=16)
    shingles, offsets = hasher.shingle_hashes(texts)
    permuted = hasher._a * shingles[None, :] + hasher._b  # (num_perm, shingles), the definition
    expected = np.stack([permuted[:, lo:hi].min(axis=1) if hi > lo else np.full(16, 0xFFFFFFFF, np.uint32)
                         for lo, hi in zip(offsets[:-1], offsets[1:])])
    assert (hasher.signatures(texts) == expected).all()
    # Tiny blocks: documents cut across matrix blocks and tokenizer groups give the same answer.
    monkeypatch.setattr(mh, "_CHUNK_SHINGLES", 7)
    monkeypatch.setattr(mh, "_TOKENIZE_CHARS", 50)
    monkeypatch.setattr(mh, "_SIGNATURE_CHARS", 3000)
    assert (mh.MinHasher(num_perm=16).signatures(texts) == expected).all()


def test_long_texts_go_through_in_windows_with_the_same_result(monkeypatch):
    # Texts longer than _TOKENIZE_CHARS are hashed window by window (bounded memory): words
    # running across cuts, CJK characters at cuts, n-1 words carried over, texts with fewer
    # than n words but many characters all give what the whole text gives.
    rng = random.Random(1)
    vocab = ["alpha", "béta", "x" * 37, "写", "了", "𠀀", "İstanbul", "ΟΔΟΣ ", "42", "snake_case"]  # see _long_word_hashes on "Σ"
    texts = ["".join(rng.choice(vocab) + rng.choice([" ", "\n", ", ", "", "…"]) for _ in range(rng.randint(0, 80)))
             for _ in range(40)]
    texts += ["", " " * 500, " " * 300 + "one two", "z" * 1000, "写" * 333, "a" * 130 + " b"]
    for ngram in (1, 2, 5):
        whole = mh.MinHasher(ngram=ngram, num_perm=16)
        expected = [*whole.word_hashes(texts), *whole.shingle_hashes(texts), whole.signatures(texts)]
        for window in (50, 64):
            monkeypatch.setattr(mh, "_TOKENIZE_CHARS", window)
            windowed = mh.MinHasher(ngram=ngram, num_perm=16)
            got = [*windowed.word_hashes(texts), *windowed.shingle_hashes(texts), windowed.signatures(texts)]
            for want, have in zip(expected, got):
                assert np.array_equal(want, have), (ngram, window)
            assert len(windowed._powers) <= 2 * window + 1  # power tables stay bounded
            monkeypatch.undo()


def test_signature_agreement_estimates_jaccard():
    rng = np.random.default_rng(0)
    num_perm, pairs = 128, []
    for _ in range(60):
        size = int(rng.integers(100, 1500))
        base = rng.integers(0, 50_000, size)
        other = np.where(rng.random(size) < rng.uniform(0.0, 0.25), rng.integers(0, 50_000, size), base)
        pairs.append((" ".join(f"w{i}" for i in base), " ".join(f"w{i}" for i in other)))
    hasher = mh.MinHasher(num_perm=num_perm)
    a = hasher.signatures([p[0] for p in pairs])
    b = hasher.signatures([p[1] for p in pairs])
    estimate = mh.estimated_jaccard(a, b)
    truth = np.array([true_jaccard(x, y) for x, y in pairs])
    sigma = np.sqrt(np.maximum(truth * (1 - truth), 0.01) / num_perm)
    z = (estimate - truth) / sigma
    print(f"\nJaccard estimates: true {truth.min():.2f}..{truth.max():.2f}, mean error {np.mean(estimate - truth):+.4f}, "
          f"z std {z.std():.2f}, max |z| {np.abs(z).max():.2f}")
    assert np.abs(z).max() < 4.5
    assert abs(z.mean()) < 0.5  # unbiased: 60 pairs, mean z has std 0.13
    # 16-bit slots (what minhash_dedup stores) estimate the same
    assert np.allclose(mh.estimated_jaccard(a & 0xFFFF, b & 0xFFFF, bits=16), estimate, atol=0.01)


def test_short_and_empty_documents():
    hasher = mh.MinHasher(ngram=5)
    shingles, offsets = hasher.shingle_hashes(["one two three", "one two three", "", "!!! ...", "a b c d e f"])
    assert np.diff(offsets).tolist() == [1, 1, 0, 0, 2]  # < n words: one shingle; no words: none
    assert shingles[0] == shingles[1]
    sig = hasher.signatures(["one two three", "", "one two three four"])
    assert (sig[1] == 0xFFFFFFFF).all() and not (sig[0] == sig[2]).all()


def test_components_and_candidates():
    labels = mh.connected_components(7, np.array([5, 1, 3, 6]), np.array([6, 2, 4, 4]))
    assert labels.tolist() == [0, 1, 1, 3, 3, 3, 3]
    sig = np.array([[1, 2, 3, 4], [1, 2, 9, 9], [7, 7, 3, 4], [5, 5, 5, 5]], np.uint32)
    i, j = mh.candidate_pairs(mh.band_hashes(sig, bands=2, rows=2))
    assert sorted(zip(i.tolist(), j.tolist())) == [(0, 1), (0, 2)]
    assert mh.optimal_bands_rows(0.8, 128) == (9, 13)  # datasketch's choice for its defaults


# -- exact dedup -----------------------------------------------------------------------------------
def test_exact_dedup_keeps_first_across_shards(tmp_path):
    shards = [
        [Document("a", "Hello  world"), Document("b", "something else"), Document("c", "hello world")],
        [Document("d", "HELLO WORLD\n"), Document("e", "hello, world"), Document("f", "something else")],
    ]
    summary, outputs, _ = run_global_step(ExactDedup, ExactDedupConfig(), shards, tmp_path / "exact", batch_size=2)
    assert dropped_ids(shards, outputs, "exact_duplicate") == {"c", "d", "f"}
    assert summary["duplicates_dropped"] == 3 and summary["clusters"] == 2
    assert summary["largest_clusters"][0]["size"] == 3
    assert summary["largest_clusters"][0]["members"][0] == {"id": "a", "kept": True, "preview": "Hello world"}
    summary, outputs, _ = run_global_step(ExactDedup, ExactDedupConfig(strip_punctuation=True), shards, tmp_path / "p")
    assert dropped_ids(shards, outputs, "exact_duplicate") == {"c", "d", "e", "f"}


# -- near-duplicates -------------------------------------------------------------------------------
def planted_corpus(originals: list[str], seed: int = 0):
    """Shard 0: the originals; near-duplicates (0.5-1.5% word edits: Jaccard of 5-gram shingles
    falls roughly as (1-e)^5 / (2-(1-e)^5), so 1.5% is already ~0.86) go half into shard 0 after
    their original and half into shard 1, some originals get three copies; far variants (10%
    edits, Jaccard ~0.45, and 50%, ~0.02) go into shard 1 and must survive."""
    rng = random.Random(seed)
    vocab = sorted({w for t in originals for w in words(t)})
    shards: list[list[Document]] = [[Document(f"orig-{i}", t) for i, t in enumerate(originals)], []]
    planted, jaccards, far = set(), [], []
    for i in rng.sample(range(len(originals)), len(originals) // 3):
        for copy in range(3 if i % 4 == 0 else 1):
            text = edit_words(originals[i], rng.uniform(0.005, 0.015), vocab, rng)
            jaccards.append(true_jaccard(originals[i], text))
            doc = Document(f"near-{i}-{copy}", text)
            shards[rng.randrange(2)].append(doc)
            planted.add(doc.id)
    for i in rng.sample(range(len(originals)), len(originals) // 5):
        rate = rng.choice([0.1, 0.5])
        text = edit_words(originals[i], rate, vocab, rng)
        far.append(true_jaccard(originals[i], text))
        shards[1].append(Document(f"far-{i}", text))
    return shards, planted, np.array(jaccards), np.array(far)


def check_planted(originals: list[str], tmp_path: Path, label: str, show=print) -> dict:
    shards, planted, jaccards, far = planted_corpus(originals)
    summary, outputs, _ = run_global_step(MinHashDedup, MinHashDedupConfig(), shards, tmp_path / label)
    dropped = dropped_ids(shards, outputs, "near_duplicate")
    precision = len(dropped & planted) / max(len(dropped), 1)
    recall = len(dropped & planted) / len(planted)
    show(f"\n[{label}] planted near-duplicates: {len(planted)} (true Jaccard {jaccards.min():.2f}..{jaccards.max():.2f}), "
          f"far variants {len(far)} (Jaccard {far.min():.2f}..{far.max():.2f}), documents {sum(map(len, shards))}")
    show(f"[{label}] dropped {len(dropped)}: precision {precision:.3f}, recall {recall:.3f}; "
          f"candidate pairs {summary['candidate_pairs']}, linked {summary['linked_pairs']}, "
          f"clusters {summary['clusters']} {summary['cluster_sizes']}")
    top = summary["largest_clusters"][0]
    show(f"[{label}] largest cluster ({top['size']}): " + " | ".join(f"{m['id']}: {m['preview'][:40]!r}" for m in top["members"]))
    assert precision >= 0.95 and recall >= 0.9, (precision, recall)
    assert not any(d.startswith("far-") for d in dropped)
    assert all(o is d for docs, out in zip(shards, outputs) for d, o in zip(docs, out) if d.id not in dropped)
    return summary


def test_minhash_dedup_planted_near_duplicates_real_text(shared_data, tmp_path, show):
    summary = check_planted(real_documents(shared_data), tmp_path, "shakespeare+novel", show)
    assert summary["largest_clusters"][0]["size"] == 4  # an original and its three copies
    assert summary["largest_clusters"][0]["members"][0]["kept"]


def test_minhash_dedup_planted_near_duplicates_generated(tmp_path, show):
    check_planted(generated_documents(200), tmp_path, "generated", show)


def test_minhash_dedup_keep_longest_and_empty(tmp_path):
    base = " ".join(f"w{i}" for i in range(300))
    shards = [[Document("short", base), Document("blank", "  ...  "), Document("blank2", "!!")],
              [Document("long", base + " w300 w301"), Document("other", " ".join(f"v{i}" for i in range(300)))]]
    summary, outputs, _ = run_global_step(MinHashDedup, MinHashDedupConfig(keep="longest"), shards, tmp_path / "m")
    assert dropped_ids(shards, outputs, "near_duplicate") == {"short"}
    assert summary["documents_without_words"] == 2 and summary["clusters"] == 1


def test_minhash_config_validation():
    with pytest.raises(ValueError, match="minhash_dedup.threshold"):
        MinHashDedupConfig(threshold=1.5)
    with pytest.raises(ValueError, match="bands x rows"):
        MinHashDedupConfig(bands=20, rows=8)
    with pytest.raises(ValueError, match="minhash_dedup.keep"):
        MinHashDedupConfig(keep="last")
    assert (MinHashDedupConfig(bands=None, rows=None).bands, MinHashDedupConfig(rows=4, bands=None).bands) == (9, 32)
    assert {"exact_dedup", "minhash_dedup", "line_dedup"} <= set(step_types())


# -- repeated lines -------------------------------------------------------------------------------
FOOTER = "Copyright 2024 Example Corp. All rights reserved."


def test_line_dedup_removes_boilerplate_keeps_first(tmp_path):
    shards = [
        [Document("a", f"First story about cats.\nAll:\n{FOOTER}"),
         Document("b", f"A note on dogs and their owners.\nAll:\n{FOOTER}\nThe end of the note.")],
        [Document("c", f"{FOOTER}\nBirds are singing today."),
         Document("d", "  copyright 2025 example corp.   all rights reserved.  "),  # same after normalization
         Document("e", "Quoted twice: to be or not to be.\nAll:"),
         Document("f", "Quoted twice: to be or not to be.\nsomething")],
    ]
    summary, outputs, worker = run_global_step(LineDedup, LineDedupConfig(), shards, tmp_path / "lines", batch_size=2)
    texts = {d.id: o if isinstance(o, Drop) else o.text for docs, out in zip(shards, outputs) for d, o in zip(docs, out)}
    assert texts["a"] == f"First story about cats.\nAll:\n{FOOTER}"  # first occurrence kept
    assert texts["b"] == "A note on dogs and their owners.\nAll:\nThe end of the note."
    assert texts["c"] == "Birds are singing today."
    assert texts["d"] == Drop("empty_after_line_dedup")
    assert texts["e"] == "Quoted twice: to be or not to be.\nAll:"  # in 2 documents only, "All:" is short
    assert worker.counters["lines_removed"] == 3
    assert summary["repeated_units"] == 1 and summary["units_to_remove"] == 3
    assert summary["most_repeated"][0]["documents"] == 4
    assert summary["most_repeated"][0]["preview"] == FOOTER


def test_line_dedup_paragraphs(tmp_path):
    para = "Subscribe to our newsletter\nfor weekly updates."
    fruits = ["apples", "pears", "plums", "figs"]
    docs = [Document(f, f"A long story about {f}.\n\n{para}\n\nThe end of the {f}.") for f in fruits]
    summary, outputs, _ = run_global_step(LineDedup, LineDedupConfig(unit="paragraph"), [docs], tmp_path / "p")
    assert outputs[0][0].text == docs[0].text
    assert [o.text for o in outputs[0][1:]] == [f"A long story about {f}.\n\nThe end of the {f}." for f in fruits[1:]]
    assert summary["units_to_remove"] == 3
    with pytest.raises(ValueError, match="line_dedup.unit"):
        LineDedupConfig(unit="sentence")


def test_line_dedup_on_real_samples(shared_data, tmp_path):
    """What line_dedup does to ~2 KB chunks of a play and a novel: with the defaults nothing (the
    repeated lines are speaker names, shorter than min_chars); with min_chars=1 the speaker names
    would go, which is why the default is 20."""
    en = chunk((shared_data / "pretrain/en_shakespeare.txt").read_text(encoding="utf-8"), 2000)
    zh = chunk((shared_data / "pretrain/zh_novel.txt").read_text(encoding="utf-8"), 700)
    shards = [[Document(f"en-{i}", t) for i, t in enumerate(en)], [Document(f"zh-{i}", t) for i, t in enumerate(zh)]]
    for min_chars in (20, 1):
        summary, outputs, worker = run_global_step(LineDedup, LineDedupConfig(min_chars=min_chars), shards,
                                                   tmp_path / f"real{min_chars}", batch_size=64)
        changed = sum(o is not d for docs, out in zip(shards, outputs) for d, o in zip(docs, out))
        print(f"\nline_dedup min_chars={min_chars} on {sum(map(len, shards))} chunks: repeated units "
              f"{summary['repeated_units']}, lines removed {worker.counters['lines_removed']}, documents changed {changed}; "
              f"most repeated: {[(u['preview'], u['documents']) for u in summary['most_repeated'][:5]]}")
        if min_chars == 20:
            assert worker.counters["lines_removed"] == 0 and changed == 0
        else:
            assert summary["repeated_units"] > 50  # "Gloucester:", "Romeo:", ... in dozens of chunks
