"""Decontamination: drop (or flag) pretraining documents that contain evaluation-set text.

A document is contaminated when it shares word n-grams (13 by default, as GPT-3 and FineWeb)
with an evaluation item. Words are ``words()`` from ``steps/text.py`` after Unicode NFKC, so
case, whitespace, punctuation and full-width digits do not hide a leak, and a CJK character
counts as one word (Chinese works without a segmenter).

Evaluation sets (``eval_sets``: files or directories, read recursively; ``evalsets.py`` reads them):

* ``.jsonl`` / ``.ndjson`` (also ``.gz`` / ``.zst``) and ``.parquet``: one record per line/row.
  The item is its question fields (``jsonl_fields``: question, prompt, ...) followed by its
  options (``jsonl_option_fields``: a list, or a dict keyed by letter) and answers
  (``jsonl_answer_fields``). GSM8K (``question``, ``answer`` ending ``#### N``) needs nothing
  more; its ``<<48/2=24>>`` calculator notes are indexed both kept and stripped.
* ``.csv`` (also ``.gz`` / ``.zst``), layout taken from the first row:
  - a header naming a question column (``question``, else ``input``/``prompt``/``problem``;
    any case): options are the one-letter columns
    (``A``..``J``), ``explanation`` counts as an answer, ``answer`` (a letter, no n-gram
    signal) and other columns (an id, CMMLU's unnamed index) are ignored. This covers CMMLU
    (``,Question,A,B,C,D,Answer``) and C-Eval (``id,question,A,B,C,D,answer[,explanation]``);
  - no such header: MMLU's raw layout, ``question,A,B,...,answer`` on every row (the first
    row fixes the column count).

Multiple-choice options are indexed both as ``A. text`` lines and bare, since leaks come in
both forms. An item shorter than ``ngram_size`` words becomes a single shorter n-gram (its
whole text); below ``min_item_words`` it is ignored, as such strings occur by chance.
Malformed input raises ``DataError("file:line: why")``.

Each worker builds the index once in ``setup``, or loads it from ``work_dir``, where the
first worker saved it under a key hashing the eval files' bytes and the settings. A document
is hashed in a few vectorized numpy passes (a polynomial rolling hash over its word hashes),
never a Python loop per n-gram. In YAML::

    steps:
      - type: decontaminate
        eval_sets: [eval/gsm8k_test.jsonl, eval/cmmlu/, eval/mmlu/test/]
        action: flag        # or drop (default): reason "contaminated"

In Python::

    step = Decontaminate(DecontaminateConfig(eval_sets=["eval/gsm8k_test.jsonl"]))
    step.setup(StepContext(base_dir=Path("."), work_dir=Path("work/decontam")))
    results = step.process_batch(docs)
    # flagged: doc.metadata["contamination"] ==
    #   {"ngrams": 41, "sets": ["gsm8k_test"], "items": ["gsm8k_test.jsonl:17"]}
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import logging
import os
import re
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from lmforge.data.document import DataError, Document
from lmforge.data.pipeline.base import Drop, Step, StepContext, drop, register_step
from lmforge.data.steps.evalsets import EvalItem, eval_files, read_eval_items
from lmforge.data.steps.text import words

log = logging.getLogger(__name__)

# Bump when hashing, words() or the file layout changes: old caches are then ignored.
# 2: words() splits Han Extension B+ into characters and drops ・.
INDEX_FORMAT = 2
ACTIONS = ("drop", "flag")
_POLY = np.uint64(0x9E3779B97F4A7C15)  # odd multiplier of the rolling hash (mod 2**64)


@dataclass
class DecontaminateConfig:
    # evaluation files or directories (recursive); relative paths are against the pipeline YAML
    eval_sets: list[str] = field(default_factory=list)
    # words per n-gram; 13 as GPT-3 / FineWeb: long enough that natural text rarely repeats one
    ngram_size: int = 13
    # items with fewer words are ignored (too generic to indicate a leak); items between this
    # and ngram_size words are matched as one whole-item n-gram
    min_item_words: int = 8
    # distinct eval n-grams a document must contain to count as contaminated; 1 = any overlap
    min_matches: int = 1
    # "drop" (reason "contaminated") or "flag" (keep, with metadata["contamination"])
    action: str = "drop"
    # multiple-choice options are part of an item (leaked questions usually carry them)
    include_options: bool = True
    # answers / solutions / explanations are part of an item (GSM8K solutions leak too)
    include_answers: bool = True
    # jsonl/parquet fields holding the question, in order; a record needs at least one
    jsonl_fields: list[str] = field(
        default_factory=lambda: ["question", "prompt", "problem", "text", "input", "instruction"]
    )
    # jsonl/parquet fields holding options: a list of strings or a dict keyed by letter
    jsonl_option_fields: list[str] = field(default_factory=lambda: ["choices", "options"])
    # jsonl/parquet fields holding answers/solutions (non-string values such as an index skipped)
    jsonl_answer_fields: list[str] = field(default_factory=lambda: ["answer", "solution", "output"])
    # how many matched item ids a flag records (the most-matched first)
    max_reported_items: int = 5

    def __post_init__(self) -> None:
        if isinstance(self.eval_sets, str):
            self.eval_sets = [self.eval_sets]
        if not self.eval_sets:
            raise ValueError("eval_sets must name at least one evaluation file or directory")
        for name in ("ngram_size", "min_item_words", "min_matches", "max_reported_items"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        if self.action not in ACTIONS:
            raise ValueError(f"action must be one of {', '.join(ACTIONS)}; got {self.action!r}")
        if not self.jsonl_fields:
            raise ValueError("jsonl_fields must name at least one question field")


# --- hashing ----------------------------------------------------------------------------------
# Characters NFKC leaves alone, or maps to other non-word characters: ASCII, CJK ideographs and
# common CJK/full-width punctuation. Each is a starter that nothing composes onto, so NFKC can
# skip runs of them: Chinese text is full of "，", which sends all of it down NFKC's slow path
# (~40 ms per MB, a third of this step's time; the skip makes it ~4). Tests check against NFKC.
# The ideograph ranges are not text.HAN_CHARS on purpose: compatibility ideographs (U+F900-FAFF,
# U+2F800-2FA1F) are exactly the Han characters NFKC does change.
_NFKC_INERT = ("\x00-\x7f\u3400-\u4dbf\u4e00-\u9fff\u3000-\u3003\u3008-\u3011\u3014-\u301f"
               "\u2014\u2018-\u201f\u2026\u00b7\uff01-\uff0f\uff1a-\uff20\uff3b-\uff40\uff5b-\uff64")
_NFKC_WORK_RE = re.compile(f"[^{_NFKC_INERT}]+")


def nfkc(text: str) -> str:
    """``unicodedata.normalize("NFKC", text)`` up to characters ``words()`` drops anyway, faster."""
    pieces: list[str] = []
    last = 0
    for m in _NFKC_WORK_RE.finditer(text):
        start = max(m.start() - 1, last)  # the preceding character may compose with a mark
        pieces += (text[last:start], unicodedata.normalize("NFKC", text[start : m.end()]))
        last = m.end()
    if not pieces:
        return text
    pieces.append(text[last:])
    return "".join(pieces)


class WordHasher:
    """Texts to arrays of stable 64-bit word hashes (blake2b, the same in every process)."""

    def __init__(self, max_cache: int = 2_000_000) -> None:
        self._cache: dict[str, int] = {}
        self._max_cache = max_cache  # Zipf: a small cache serves nearly every word

    def __call__(self, text: str) -> np.ndarray:
        return self.many([text])[0]

    def many(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(every text's word hashes, concatenated; words per text)."""
        tokens = [words(nfkc(t)) for t in texts]
        lengths = np.array([len(t) for t in tokens], dtype=np.int64)
        flat = list(itertools.chain.from_iterable(tokens))
        cache = self._cache
        new = set(flat).difference(cache)
        if len(cache) + len(new) > self._max_cache:
            cache.clear()
            new = set(flat)
        for w in new:
            cache[w] = int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest(), "little")
        return np.fromiter(map(cache.__getitem__, flat), dtype=np.uint64, count=len(flat)), lengths


def ngram_hashes(word_hashes: np.ndarray, lengths: list[int]) -> Iterator[tuple[int, np.ndarray]]:
    """``(L, hashes of every L-word window)`` for each L in ``lengths`` (ascending), vectorized.

    h(w_i..w_{i+L-1}) = sum_k w_{i+k} * P^(L-1-k) mod 2**64, grown one word per numpy pass.
    """
    grams = word_hashes
    size = 1
    for length in lengths:
        while size < length and len(grams):
            grams = grams[:-1] * _POLY + word_hashes[size:]
            size += 1
        if len(grams) and size == length:
            yield length, grams


@dataclass(frozen=True)
class Match:
    """What one text shares with the eval sets: distinct n-grams, items hit (most first)."""

    ngrams: int
    items: np.ndarray  # indices into NgramIndex.item_ids
    hits_per_item: np.ndarray


_NO_ITEMS = np.empty(0, dtype=np.int64)


# --- the index --------------------------------------------------------------------------------
class NgramIndex:
    """Eval n-gram hashes by length, each with the items it occurs in (CSR: offsets, members)."""

    def __init__(self, tables: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]],
                 item_ids: np.ndarray, item_sets: np.ndarray, set_names: list[str], stats: dict) -> None:
        self.tables = dict(sorted(tables.items()))  # length -> (sorted keys, offsets, item indices)
        self.item_ids, self.item_sets, self.set_names, self.stats = item_ids, item_sets, set_names, stats
        # A one-probe Bloom filter over every key's top bits, at >= 16 slots per key (<= 6%
        # false positives): most of a clean document's n-grams are ruled out by one gather,
        # and only the few candidates pay for the binary search.
        total = sum(len(keys) for keys, _, _ in self.tables.values())
        bits = int(np.clip(np.ceil(np.log2(max(total, 1) * 16)), 16, 26))
        self._shift = np.uint64(64 - bits)
        self._filter = np.zeros(1 << bits, dtype=bool)
        for keys, _, _ in self.tables.values():
            self._filter[keys >> self._shift] = True

    @classmethod
    def build(cls, items: list[EvalItem], ngram_size: int, min_item_words: int, hasher: WordHasher) -> NgramIndex:
        set_names = list(dict.fromkeys(item.set for item in items))
        text_item = np.array([i for i, item in enumerate(items) for _ in item.texts], dtype=np.int32)
        flat, lengths = hasher.many([text for item in items for text in item.texts])
        text_start = np.cumsum(lengths) - lengths
        by_length: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
        # Texts of >= ngram_size words: all their n-grams, in one pass over every text at once.
        owner = np.repeat(np.arange(len(lengths)), lengths)
        for _, grams in ngram_hashes(flat, [ngram_size]):
            inside = np.flatnonzero(owner[: len(grams)] == owner[ngram_size - 1 :])
            by_length[ngram_size] = [(grams[inside], text_item[owner[inside]])]
        # Shorter texts (but not too short): one whole-text n-gram each.
        for t in np.flatnonzero((lengths >= min_item_words) & (lengths < ngram_size)):
            whole = flat[text_start[t] : text_start[t] + lengths[t]]
            grams = next(ngram_hashes(whole, [len(whole)]))[1]
            by_length.setdefault(len(whole), []).append((grams, text_item[t : t + 1]))
        indexed = np.zeros(len(items), dtype=bool)
        indexed[text_item[lengths >= min_item_words]] = True
        tables = {}
        for length, parts in by_length.items():
            keys = np.concatenate([g for g, _ in parts])
            members = np.concatenate([m for _, m in parts])
            order = np.lexsort((members, keys))
            keys, members = keys[order], members[order]
            keep = np.ones(len(keys), dtype=bool)  # one (n-gram, item) pair per item, not per variant
            keep[1:] = (keys[1:] != keys[:-1]) | (members[1:] != members[:-1])
            keys, members = keys[keep], members[keep]
            unique, starts = np.unique(keys, return_index=True)
            tables[length] = (unique, np.append(starts, len(keys)).astype(np.int64), members)
        stats = {"items": len(items), "ignored_short_items": int((~indexed).sum()),
                 "ngrams": {str(n): int(len(t[0])) for n, t in sorted(tables.items())}}
        item_ids = np.array([item.id for item in items], dtype=str)
        item_sets = np.array([set_names.index(item.set) for item in items], dtype=np.int32)
        return cls(tables, item_ids, item_sets, set_names, stats)

    def match(self, word_hashes: np.ndarray, lengths: np.ndarray) -> list[Match]:
        """One ``Match`` per text, given the texts' concatenated word hashes and word counts.

        All texts go through each numpy pass together (n-grams crossing from one text into the
        next are masked out), so short documents cost little more per byte than long ones.
        """
        n_texts = len(lengths)
        owner = np.repeat(np.arange(n_texts, dtype=np.int64), lengths)  # text of each word
        found = np.zeros(n_texts, dtype=np.int64)
        pairs = []  # (text, item) for every distinct (text, eval n-gram) hit
        for length, grams in ngram_hashes(word_hashes, list(self.tables)):
            keys, offsets, items = self.tables[length]
            if len(keys) <= 32:  # a few short items: a handful of compares beats random gathers
                starts = np.flatnonzero(np.isin(grams, keys))
            else:
                starts = np.flatnonzero(self._filter[grams >> self._shift])
            starts = starts[owner[starts] == owner[starts + length - 1]]  # inside one text
            pos = np.minimum(np.searchsorted(keys, grams[starts]), len(keys) - 1)
            hit = keys[pos] == grams[starts]
            # Distinct n-grams per text: a text repeating one eval n-gram counts it once.
            text_key = np.unique(owner[starts[hit]] * len(keys) + pos[hit])
            texts, pos = text_key // len(keys), text_key % len(keys)
            found += np.bincount(texts, minlength=n_texts)
            first, counts = offsets[pos], offsets[pos + 1] - offsets[pos]
            members = np.repeat(first - (np.cumsum(counts) - counts), counts) + np.arange(counts.sum())
            pairs.append(np.repeat(texts, counts) * len(self.item_ids) + items[members])
        out = [Match(0, _NO_ITEMS, _NO_ITEMS)] * n_texts
        if not found.any():
            return out
        pair, per_item = np.unique(np.concatenate(pairs), return_counts=True)
        texts, item = np.divmod(pair, len(self.item_ids))
        bounds = np.searchsorted(texts, np.arange(n_texts + 1))
        for t in np.flatnonzero(found):
            order = np.argsort(-per_item[bounds[t] : bounds[t + 1]], kind="stable")
            span = slice(bounds[t], bounds[t + 1])
            out[t] = Match(int(found[t]), item[span][order], per_item[span][order])
        return out

    def save(self, path: Path, key: str) -> None:
        """Write atomically (temporary file, then rename): a reader never sees half an index."""
        meta = {"format": INDEX_FORMAT, "key": key, "set_names": self.set_names, "stats": self.stats,
                "lengths": list(self.tables)}
        arrays = {"meta": np.array(json.dumps(meta)), "item_ids": self.item_ids, "item_sets": self.item_sets}
        for length, (keys, offsets, members) in self.tables.items():
            arrays |= {f"keys_{length}": keys, f"offsets_{length}": offsets, f"members_{length}": members}
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path, key: str) -> NgramIndex | None:
        """The index saved under ``key``, or None when the file is missing, stale or unreadable."""
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                if meta.get("format") != INDEX_FORMAT or meta.get("key") != key:
                    return None
                tables = {n: (z[f"keys_{n}"], z[f"offsets_{n}"], z[f"members_{n}"]) for n in meta["lengths"]}
                return cls(tables, z["item_ids"], z["item_sets"], meta["set_names"], meta["stats"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError) as exc:  # a truncated or foreign file: rebuild
            log.warning("decontaminate: ignoring unreadable index cache %s (%s)", path, exc)
            return None


# --- the step ---------------------------------------------------------------------------------
@register_step("decontaminate")
class Decontaminate(Step):
    resource_fields = ("eval_sets",)
    """Drop or flag documents sharing n-grams with evaluation sets (see the module docstring)."""

    Config = DecontaminateConfig
    index: NgramIndex
    index_source: str = ""  # "built" or "cache": what setup did (for logs and tests)

    def setup(self, ctx: StepContext) -> None:
        cfg = self.config
        files = eval_files([ctx.resolve(p) for p in cfg.eval_sets])
        raw = [path.read_bytes() for path, _, _ in files]
        key = self._cache_key(files, raw)
        ctx.work_dir.mkdir(parents=True, exist_ok=True)
        path = ctx.work_dir / f"decontam-index-{key[:20]}.npz"
        self.hasher = WordHasher()
        # One builder at a time: workers starting together wait for the first one's file.
        with open(ctx.work_dir / ".decontam-index.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            index = NgramIndex.load(path, key)
            self.index_source = "cache"
            if index is None:
                items = []
                for (eval_path, display, set_name), data in zip(files, raw):
                    found = list(read_eval_items(eval_path, data, display, set_name, cfg))
                    if not found:
                        raise DataError(f"{eval_path}: no evaluation items in this file")
                    items += found
                index = NgramIndex.build(items, cfg.ngram_size, cfg.min_item_words, self.hasher)
                index.save(path, key)
                self.index_source = "built"
        self.index = index
        log.info("decontaminate: %s index %s (%s)", self.index_source, path.name, json.dumps(index.stats))
        if not index.tables:
            log.warning("decontaminate: every eval item is shorter than min_item_words; nothing will match")

    def _cache_key(self, files: list[tuple[Path, str, str]], raw: list[bytes]) -> str:
        """Hash of everything the index depends on: file contents, names and indexing settings."""
        cfg = asdict(self.config)
        settings = {k: cfg[k] for k in ("ngram_size", "min_item_words", "include_options", "include_answers",
                                         "jsonl_fields", "jsonl_option_fields", "jsonl_answer_fields")}
        h = hashlib.blake2b(json.dumps([INDEX_FORMAT, settings]).encode(), digest_size=20)
        for (_, display, set_name), data in zip(files, raw):
            h.update(json.dumps([display, set_name, len(data)]).encode())
            h.update(hashlib.blake2b(data, digest_size=20).digest())
        return h.hexdigest()

    def process(self, doc: Document) -> Document | Drop:
        return self.process_batch([doc])[0]

    def process_batch(self, docs: list[Document]) -> list[Document | Drop]:
        matches = self.index.match(*self.hasher.many([doc.text for doc in docs]))
        return [self._decide(doc, m) for doc, m in zip(docs, matches)]

    def _decide(self, doc: Document, match: Match) -> Document | Drop:
        if not match.ngrams:
            return doc
        self.count("ngram_hits", match.ngrams)
        self.count("docs_with_hits")
        if match.ngrams < self.config.min_matches:
            return doc
        sets = sorted({self.index.set_names[s] for s in self.index.item_sets[match.items]})
        for name in sets:
            self.count(f"contaminated:{name}")
        # Also on a dropped document: the side file of dropped documents then shows the match.
        doc.metadata["contamination"] = {
            "ngrams": match.ngrams,
            "sets": sets,
            "items": [str(i) for i in self.index.item_ids[match.items[: self.config.max_reported_items]]],
        }
        return drop("contaminated") if self.config.action == "drop" else doc
