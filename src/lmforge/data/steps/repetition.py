"""Gopher's repetition filter (Rae et al. 2021, appendix A, table A1) for Chinese and English.

Documents that repeat themselves — the same line or paragraph over and over, one phrase
stuffed everywhere, boilerplate copied down a page — are dropped when one of these fractions
is above its threshold:

* duplicate lines / paragraphs: the share of lines (paragraphs) that repeat an earlier one,
  and the share of characters in them;
* top n-gram character fraction (n = 2, 3, 4): the share of word characters covered by the
  most frequent n-gram;
* duplicate n-gram character fraction (n = 5 … 10): the share of word characters covered by
  n-grams that occur more than once.

n-grams are over ``words()`` (a CJK character is one word), so Chinese works without a
segmenter; because a Chinese word is about 1.5 characters, the n-gram sizes are scaled by
``cjk_chars_per_word`` for Chinese documents (see ``GopherRepetitionConfig``).

Usage::

    step = GopherRepetition(GopherRepetitionConfig(max_dup_line_frac=0.2))
    step.setup(ctx)
    out = step.process(doc)  # the document, or drop("gopher_dup_line_frac")

``ngram_repetition`` works on any batch of token lists, for other steps that want the figures.
"""

from __future__ import annotations

import collections
import itertools
import math
from dataclasses import dataclass, field

import numpy as np

from lmforge.data.document import Document
from lmforge.data.pipeline.base import Drop, Step, drop, register_step
from lmforge.data.steps.charclass import is_mostly_cjk, resolve_lang
from lmforge.data.steps.text import CJK_CHARS_PER_WORD, nonempty_lines, paragraphs, words

# Multiplier of the rolling n-gram hash; the values wrap around modulo 2**64 (numpy uint64).
_HASH_BASE = np.uint64(1_000_003)
# Odd 64-bit constant (2**64 / golden ratio) that salts each document's n-gram hashes.
_DOC_SALT = np.uint64(0x9E3779B97F4A7C15)
# Words per vectorized group in ngram_repetition: big enough to amortize numpy's per-call cost,
# small enough for the sorts to stay in cache (measured: 8-32k words about equally fast).
_GROUP_TOKENS = 1 << 14


def duplicate_fractions(items: list[str]) -> tuple[float, float]:
    """(share of items that repeat an earlier item, share of characters in those repeats).

    The first occurrence is not a duplicate: a document that is one line twice scores 0.5.
    """
    if not items:
        return 0.0, 0.0
    counts = collections.Counter(items)
    repeats = len(items) - len(counts)
    if not repeats:
        return 0.0, 0.0
    repeated_chars = sum(len(item) * (n - 1) for item, n in counts.items() if n > 1)
    return repeats / len(items), repeated_chars / max(1, sum(map(len, items)))


def ngram_repetition(
    token_lists: list[list[str]], top_ns: list[int], dup_ns: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Gopher's n-gram statistics for a batch of documents (each a list of ``words()``).

    Returns ``top`` of shape (documents, len(top_ns)): the characters of each document's most
    frequent n-gram times its count, as a fraction of the document's word characters (capped
    at 1; Gopher's definition), and ``dup`` of shape (documents, len(dup_ns)): the fraction of
    word characters inside n-grams that occur more than once in the document, each character
    counted once. Spaces and punctuation are not characters here, so both scripts compare.

    Vectorized over groups of documents with numpy, because per-document numpy calls would
    cost more than the work on a 2 kB document, while sorting one huge array is slower per
    element than sorting cache-sized ones; groups hold about ``_GROUP_TOKENS`` words.
    """
    top = np.zeros((len(token_lists), len(top_ns)))
    dup = np.zeros((len(token_lists), len(dup_ns)))
    start, tokens = 0, 0
    for end, doc_tokens in enumerate(token_lists, 1):
        tokens += len(doc_tokens)
        if tokens >= _GROUP_TOKENS or end == len(token_lists):
            top[start:end], dup[start:end] = _ngram_repetition_group(token_lists[start:end], top_ns, dup_ns)
            start, tokens = end, 0
    return top, dup


def _ngram_repetition_group(
    token_lists: list[list[str]], top_ns: list[int], dup_ns: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    # Each n-gram is a 64-bit rolling hash of its words' hashes, salted with its document so
    # documents never match each other; one sort per n finds the repeats. A repeated n-gram
    # starts a repeated (n-1)-gram and is followed by one, so after the smallest n only the
    # positions repeated at n-1 are sorted — all occurrences of every repeated n-gram, the
    # most frequent one included, and in prose a shrinking share (for 5-grams a few percent).
    n_docs = len(token_lists)
    top = np.zeros((n_docs, len(top_ns)))
    dup = np.zeros((n_docs, len(dup_ns)))
    wanted = set(top_ns) | set(dup_ns)
    sizes = np.fromiter(map(len, token_lists), dtype=np.int64, count=n_docs)
    total = int(sizes.sum())
    if not wanted or total == 0:
        return top, dup
    tokens = list(itertools.chain.from_iterable(token_lists))
    lengths = np.fromiter(map(len, tokens), dtype=np.int64, count=total)
    word_hash = np.fromiter(map(hash, tokens), dtype=np.int64, count=total).view(np.uint64)
    doc_of = np.repeat(np.arange(n_docs), sizes)
    doc_end = np.cumsum(sizes)[doc_of]  # one past each token's document's last token
    doc_chars = np.bincount(doc_of, weights=lengths, minlength=n_docs)
    doc_chars[doc_chars == 0] = 1.0
    offsets = np.concatenate(([0], np.cumsum(lengths)))  # offsets[i]: characters before token i
    salt = (np.arange(1, n_docs + 1, dtype=np.uint64) * _DOC_SALT)[doc_of]
    index = np.arange(total)
    top_col = {n: k for k, n in enumerate(top_ns)}
    dup_col = {n: k for k, n in enumerate(dup_ns)}

    def covered_char_fraction(starts: np.ndarray, n: int) -> np.ndarray:
        # Per document: characters of the tokens inside any [start, start + n), counted once.
        depth = np.zeros(total + 1, dtype=np.int64)
        depth[starts] += 1  # starts are distinct, so plain fancy-index updates are exact
        depth[starts + n] -= 1
        covered = np.cumsum(depth[:-1]) > 0
        return np.bincount(doc_of[covered], weights=lengths[covered], minlength=n_docs) / doc_chars

    ngram_hash = word_hash
    repeated: np.ndarray | None = None  # per (n-1)-gram start: occurs again in its document
    with np.errstate(over="ignore"):
        for n in range(2, max(wanted) + 1):
            ngram_hash = ngram_hash[:-1] * _HASH_BASE + word_hash[n - 1 :]
            if n < min(wanted):
                continue
            inside = index[: len(ngram_hash)] + n <= doc_end[: len(ngram_hash)]  # not crossing a document end
            if repeated is None:
                positions = np.flatnonzero(inside)
            else:
                positions = np.flatnonzero(repeated[:-1] & repeated[1:] & inside)
            keys = ngram_hash[positions] ^ salt[positions]
            order = np.argsort(keys)
            ordered = keys[order]
            same_as_next = ordered[1:] == ordered[:-1]
            in_group = np.zeros(len(ordered), dtype=bool)
            in_group[1:] = same_as_next
            in_group[:-1] |= same_as_next
            repeated = np.zeros(len(ngram_hash), dtype=bool)
            repeated[positions[order[in_group]]] = True
            if n in top_col and len(ordered):
                group_starts = np.flatnonzero(np.concatenate(([True], ~same_as_next)))
                group_sizes = np.diff(np.append(group_starts, len(ordered)))
                first = positions[order[group_starts]]
                frequent = group_sizes > 1
                first, group_sizes = first[frequent], group_sizes[frequent]
                score = group_sizes * (offsets[first + n] - offsets[first])
                # Each document's best score: sort (document, score) pairs packed in one int64
                # and take each document's last.
                scale = int(score.max(initial=0)) + 1
                ranked_doc, ranked_score = np.divmod(np.sort(doc_of[first] * scale + score), scale)
                last = np.flatnonzero(np.append(ranked_doc[1:] != ranked_doc[:-1], len(ranked_doc) > 0))
                best = np.zeros(n_docs)
                best[ranked_doc[last]] = ranked_score[last]
                top[:, top_col[n]] = np.minimum(best / doc_chars, 1.0)
            if n in dup_col:
                dup[:, dup_col[n]] = covered_char_fraction(np.flatnonzero(repeated), n)
            if not repeated.any():
                break  # nothing repeats at n, so nothing repeats at any larger n (fractions stay 0)
    return top, dup


def _int_keyed(name: str, table: dict) -> dict[int, float]:
    # YAML (and lmforge.config) give mapping keys as strings; the n-gram sizes are integers.
    out: dict[int, float] = {}
    for key, value in table.items():
        try:
            n = int(key)
        except (TypeError, ValueError):
            raise ValueError(f"{name}: n-gram size {key!r} is not an integer") from None
        if n < 1 or not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"{name}: needs n >= 1 and a fraction in [0, 1]; got {key!r}: {value!r}")
        out[n] = float(value)
    return out


@dataclass
class GopherRepetitionConfig:
    """Thresholds of Gopher's repetition filter; a document is dropped when a fraction exceeds one.

    Defaults are Gopher's (Rae et al. 2021, table A1). Lines are the text's non-empty lines,
    paragraphs its blank-line separated blocks; "character fraction" is the share of characters
    in the repeated lines (paragraphs) or covered by the n-grams. A threshold of 1.0 turns its
    rule off. Chinese documents (``metadata["lang"] == "zh"``, or untagged and mostly CJK) count
    n-grams in CJK characters, ``ceil(n * cjk_chars_per_word)`` of them for the configured n.
    """

    max_dup_line_frac: float = 0.30  # Gopher: share of lines repeating an earlier line
    max_dup_line_char_frac: float = 0.20  # Gopher: share of characters in those lines
    max_dup_para_frac: float = 0.30  # Gopher: share of paragraphs repeating an earlier one
    max_dup_para_char_frac: float = 0.20  # Gopher: share of characters in those paragraphs
    # Gopher: most frequent n-gram's share of the characters, per n.
    max_top_ngram_char_frac: dict[int, float] = field(default_factory=lambda: {2: 0.20, 3: 0.18, 4: 0.16})
    # Gopher: share of characters inside n-grams that occur more than once, per n.
    max_dup_ngram_char_frac: dict[int, float] = field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}
    )
    # Why scale n for Chinese: with one character per "word", a 5-gram is about three Chinese
    # words, and names, terms and set phrases repeat at that length in good text. On the shared
    # samples (2000-character chunks) the duplicate 5-character-gram fraction of the medical
    # textbook is 0.13 at the median and 0.30 at worst: with 1.0 (Gopher's n on characters) 42%
    # of its chunks are dropped (gopher_dup_5gram_char_frac). With 1.5 (5 words = 8 characters)
    # its worst chunk is 0.14 and every chunk of it and of the novel passes, while keyword
    # spam and repeated lines are still dropped (tests/data/test_quality.py).
    cjk_chars_per_word: float = CJK_CHARS_PER_WORD
    # Documents whose metadata["lang"] is listed pass untouched: code repeats lines ("}",
    # "return x") by nature.
    skip_langs: list[str] = field(default_factory=lambda: ["code"])

    def __post_init__(self) -> None:
        for name in ("max_dup_line_frac", "max_dup_line_char_frac", "max_dup_para_frac", "max_dup_para_char_frac"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]; got {getattr(self, name)}")
        self.max_top_ngram_char_frac = _int_keyed("max_top_ngram_char_frac", self.max_top_ngram_char_frac)
        self.max_dup_ngram_char_frac = _int_keyed("max_dup_ngram_char_frac", self.max_dup_ngram_char_frac)
        if any(n < 2 for n in self.max_top_ngram_char_frac) or any(n < 2 for n in self.max_dup_ngram_char_frac):
            raise ValueError("max_top_ngram_char_frac / max_dup_ngram_char_frac: n-gram sizes must be >= 2")
        if self.cjk_chars_per_word < 1.0:
            raise ValueError(f"cjk_chars_per_word must be >= 1; got {self.cjk_chars_per_word}")


@register_step("gopher_repetition")
class GopherRepetition(Step):
    """Drop documents dominated by repeated lines, paragraphs or n-grams (Gopher)."""

    Config = GopherRepetitionConfig

    def __init__(self, config: GopherRepetitionConfig | None = None, name: str | None = None) -> None:
        super().__init__(config, name)
        cfg = self.config
        # Per script: [(n-gram size counted, configured n, threshold)] for the top and dup rules.
        # ceil(n * factor) is strictly increasing in n for factor >= 1, so sizes never collide.
        self._plans = {
            script: tuple(
                [(math.ceil(n * factor - 1e-9), n, limit) for n, limit in sorted(table.items())]
                for table in (cfg.max_top_ngram_char_frac, cfg.max_dup_ngram_char_frac)
            )
            for script, factor in (("latin", 1.0), ("cjk", cfg.cjk_chars_per_word))
        }
        self._skip = frozenset(cfg.skip_langs)

    def process_batch(self, docs: list[Document]) -> list[Document | Drop]:
        results: list[Document | Drop] = list(docs)
        pending: dict[str, list[int]] = {"latin": [], "cjk": []}  # documents left for the n-gram rules
        for i, doc in enumerate(docs):
            lang = resolve_lang(doc)
            if lang in self._skip:
                self.count(f"skipped_lang_{lang}")
                continue
            verdict = self._line_rules(doc.text)
            if verdict is not None:
                results[i] = verdict
            else:
                cjk = lang == "zh" or (lang != "en" and is_mostly_cjk(doc.text))
                pending["cjk" if cjk else "latin"].append(i)
        for script, members in pending.items():
            if not members:
                continue
            top_plan, dup_plan = self._plans[script]
            top, dup = ngram_repetition(
                [words(docs[i].text) for i in members], [p[0] for p in top_plan], [p[0] for p in dup_plan]
            )
            for row, i in enumerate(members):
                for col, (_, n, limit) in enumerate(top_plan):
                    if top[row, col] > limit:
                        results[i] = drop(f"gopher_top_{n}gram_char_frac")
                        break
                else:
                    for col, (_, n, limit) in enumerate(dup_plan):
                        if dup[row, col] > limit:
                            results[i] = drop(f"gopher_dup_{n}gram_char_frac")
                            break
        return results

    def process(self, doc: Document) -> Document | Drop:
        return self.process_batch([doc])[0]

    def _line_rules(self, text: str) -> Drop | None:
        cfg = self.config
        line_frac, line_char_frac = duplicate_fractions(nonempty_lines(text))
        if line_frac > cfg.max_dup_line_frac:
            return drop("gopher_dup_line_frac")
        if line_char_frac > cfg.max_dup_line_char_frac:
            return drop("gopher_dup_line_char_frac")
        para_frac, para_char_frac = duplicate_fractions(paragraphs(text))
        if para_frac > cfg.max_dup_para_frac:
            return drop("gopher_dup_para_frac")
        if para_char_frac > cfg.max_dup_para_char_frac:
            return drop("gopher_dup_para_char_frac")
        return None
