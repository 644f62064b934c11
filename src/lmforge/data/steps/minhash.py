"""Vectorized MinHash-LSH: word shingles, signatures, LSH banding and clustering, all in numpy.

This module knows nothing about pipelines; ``dedup.py`` wraps it as the ``minhash_dedup`` step and
``benchmarks/minhash_vs_datasketch.py`` times it against ``datasketch``. Usage::

    hasher = MinHasher(ngram=5, num_perm=128, seed=0)
    signatures = hasher.signatures(texts)                # (docs, 128) uint32
    bands = band_hashes(signatures, bands=16, rows=8)    # (docs, 16) uint64
    labels = cluster(bands, signatures, threshold=0.8)   # labels[i] = first doc of i's cluster

Why it is fast. ``datasketch`` spends its time in Python per document and per shingle (building
shingle strings, SHA-1 of each); here a batch of documents goes through numpy together, in
groups of ~128k characters:

1. The texts are joined and their UTF-32 code points looked up in a table giving each one's
   lowercase and class — separator, word character or CJK character — by the exact rules of
   ``text.words()`` (a run of letters/digits is a word, a CJK character is a word by itself).
2. Each word is hashed as a polynomial of its code points mod 2^64 with a seeded odd radix, for
   all words at once: one prefix sum (``np.cumsum``) of ``code_point * radix^position``,
   differenced at word bounds and rescaled by ``radix^-start``. A shingle (``ngram``
   consecutive words of one document; a document shorter than that is one shingle) combines
   its words' hashes with seeded random multipliers; the high 32 bits of that sum go through
   MurmurHash3's 32-bit finalizer.
3. The signature is ``min`` over a document's shingles of ``a_p * x + b_p mod 2^32`` for
   ``num_perm`` odd ``a_p`` — the family ``datasketch`` itself uses since 2.0 — computed as one
   ``(num_perm, shingles)`` matrix per block of 8k shingles and reduced per document with
   ``np.minimum.reduceat``.

The Python work per document is a few list operations, so the cost is that of the numpy passes:
about 35-45 µs for a 2 KB document on one core, against about 1 ms for ``datasketch``
(``benchmarks/minhash_vs_datasketch.py``).

Memory is bounded whatever the input: the passes take ~20 bytes per character, so a text longer
than one group (a 100 MB file read whole) goes through in windows of 128k characters, a word
running across a cut joined and the last ngram-1 words of a window carried into the next. Its
words, shingles and signature are exactly those of the unwindowed computation.

Every random parameter comes from a SplitMix64 stream of ``seed``, so a text gets the same
signature in every process, run, batch composition and numpy version.
"""

from __future__ import annotations

import functools
import re
from typing import Iterator

import numpy as np

from lmforge.data.steps.text import CJK_CHARS, LETTER_DIGIT_RUN_RE

_SEPARATOR, _WORD, _CJK = 0, 1, 2
_MAX_CODE_POINT = 0x110000
_CLASS_SHIFT = 24  # a table entry is (class << 24) | lowercased code point (0 for separators)
_CODE_MASK = (1 << _CLASS_SHIFT) - 1
_U64 = np.uint64
_EMPTY = np.uint32(0xFFFFFFFF)  # every slot of the signature of a document without words
# Shingles per (num_perm, shingles) matrix: 8k x 128 x 4 bytes = 4 MiB; numpy's per-row loop
# overhead makes narrower blocks slower, wider ones fall out of cache (measured on EPYC).
_CHUNK_SHINGLES = 8192
# Characters tokenized in one go; a longer text goes alone, in windows of this size. Measured
# on a 2-core EPYC: 128k is fastest; 1M is ~1.6x slower (the ~20 bytes/char of temporaries fall
# out of cache), 16k ~1.5x slower (numpy's per-call overhead dominates).
_TOKENIZE_CHARS = 1 << 17
# Characters whose shingles are min-hashed in one go: bounds the shingle arrays.
_SIGNATURE_CHARS = 1 << 22


def splitmix64(seed: int, n: int) -> np.ndarray:
    """``n`` pseudo-random uint64 from ``seed``: a fixed algorithm, stable across numpy versions."""
    state, out, mask = seed & (2**64 - 1), [], 2**64 - 1
    for _ in range(n):
        state = (state + 0x9E3779B97F4A7C15) & mask
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        out.append(z ^ (z >> 31))
    return np.array(out, dtype=_U64)


def fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer (a bijection that spreads every input bit over the output)."""
    h = h ^ (h >> _U64(33))
    h *= _U64(0xFF51AFD7ED558CCD)
    h ^= h >> _U64(33)
    h *= _U64(0xC4CEB9FE1A85EC53)
    h ^= h >> _U64(33)
    return h


def fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer."""
    h = h ^ (h >> np.uint32(16))
    h *= np.uint32(0x85EBCA6B)
    h ^= h >> np.uint32(13)
    h *= np.uint32(0xC2B2AE35)
    h ^= h >> np.uint32(16)
    return h


@functools.cache
def _char_table() -> tuple[np.ndarray, str]:
    """Per code point: its lowercase (as ``str.lower``) and the class ``words()`` gives that.

    Classes come from the regular expressions ``text.words()`` uses (``LETTER_DIGIT_RUN_RE``
    for runs of letters/digits, ``CJK_CHARS`` for characters that are words on their own), so
    the two agree by construction; the test suite checks it on the real corpora. Also returns the characters whose lowercase is not one
    context-free code point ("İ" -> "i̇", final "Σ" -> "ς"): a batch containing one is lowercased
    by Python instead. About 0.1 s, once per process.
    """
    every_char = np.arange(_MAX_CODE_POINT, dtype="<u4").tobytes().decode("utf-32-le", "surrogatepass")
    lowered = np.arange(_MAX_CODE_POINT, dtype=np.uint32)
    # Lowercase block by block (str.lower runs in C); a block whose length changes holds a
    # character that lowercases to several, and goes character by character.
    multi: list[int] = []
    block = 1 << 14
    for start in range(0, _MAX_CODE_POINT, block):
        chunk = every_char[start : start + block]
        low = chunk.lower()
        if len(low) == len(chunk):
            lowered[start : start + len(chunk)] = np.frombuffer(low.encode("utf-32-le", "surrogatepass"), "<u4")
            continue
        for i, c in enumerate(chunk):
            if len(c.lower()) == 1:
                lowered[start + i] = ord(c.lower())
            else:
                multi.append(start + i)
    special = []
    changed = np.flatnonzero(lowered != np.arange(_MAX_CODE_POINT, dtype=np.uint32)).tolist()
    for c in sorted(set(changed) | set(multi)):  # ~1,400 code points
        lower = chr(c).lower()
        if len(lower) != 1 or ("a" + chr(c)).lower()[1:] != lower:
            special.append(chr(c))  # multi-character or context-dependent: Python lowercases these
            lowered[c] = c
        else:
            lowered[c] = ord(lower)
    classes = np.zeros(_MAX_CODE_POINT, np.uint32)
    for cls, run_re in ((_WORD, LETTER_DIGIT_RUN_RE), (_CJK, re.compile(f"[{CJK_CHARS}]+"))):
        for m in run_re.finditer(every_char):
            classes[m.start() : m.end()] = cls
    classes = classes[lowered]  # words() classifies the lowercased text
    table = np.where(classes == _SEPARATOR, 0, lowered) | (classes << np.uint32(_CLASS_SHIFT))
    return table, "".join(special)


def _code_points(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The texts joined by a separator as table entries (class, lowercase), and each text's start."""
    table, special = _char_table()
    joined = "\x00".join(texts)
    if any(c in joined for c in special):
        texts = [t.lower() for t in texts]
        joined = "\x00".join(texts)
    starts = np.zeros(len(texts) + 1, np.int64)
    np.cumsum(np.fromiter(map(len, texts), np.int64, len(texts)) + 1, out=starts[1:])
    # surrogatepass: a lone surrogate (broken input) becomes a separator instead of an error.
    code_points = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), np.uint32)
    return np.take(table, code_points), starts


def _word_starts(entries: np.ndarray) -> np.ndarray:
    """Positions where a word starts: every CJK character, and a letter/digit after a non-one."""
    if not len(entries):
        return np.zeros(0, np.int64)
    classes = entries >> np.uint32(_CLASS_SHIFT)
    in_word = classes == _WORD
    starts = classes == _CJK
    starts[0] |= in_word[0]
    starts[1:] |= in_word[1:] & ~in_word[:-1]
    return np.flatnonzero(starts)


def batch_words(texts: list[str]) -> list[list[str]]:
    """The words of every text as the vectorized tokenizer sees them (equal to ``words()``)."""
    entries, text_starts = _code_points(texts)
    chars = entries & np.uint32(_CODE_MASK)
    starts = _word_starts(entries)
    ends = np.append(starts[1:], len(chars))
    out: list[list[str]] = [[] for _ in texts]
    for start, end in zip(starts.tolist(), ends.tolist()):
        word = chars[start:end]
        text = int(np.searchsorted(text_starts, start, "right")) - 1
        out[text].append(word[word > 0].tobytes().decode("utf-32-le"))
    return out


class MinHasher:
    """MinHash signatures of word n-gram shingles, for whole batches of texts at once."""

    def __init__(self, ngram: int = 5, num_perm: int = 128, seed: int = 0) -> None:
        if ngram < 1:
            raise ValueError(f"ngram must be >= 1, got {ngram}")
        if num_perm < 1:
            raise ValueError(f"num_perm must be >= 1, got {num_perm}")
        self.ngram, self.num_perm, self.seed = ngram, num_perm, seed
        params = splitmix64(seed, 2 + ngram + 2 * num_perm)
        self._radix = int(params[0]) | 1  # odd, hence invertible mod 2^64
        self._salt = params[1]
        self._word_multipliers = params[2 : 2 + ngram] | _U64(1)
        perm = params[2 + ngram :] >> _U64(32)
        # h -> a*h + b mod 2^32 with odd a is a bijection: the permutation adds no collisions.
        self._a = (perm[:num_perm].astype(np.uint32) | np.uint32(1))[:, None]
        self._b = perm[num_perm:].astype(np.uint32)[:, None]
        self._powers = self._inverse_powers = np.ones(0, _U64)

    def _power_tables(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """radix^i and radix^-i mod 2^64 for i < n (wrapping uint64 cumprod is exact mod 2^64).

        Batches hold at most ``_TOKENIZE_CHARS`` characters and longer texts are hashed in
        windows of that size, so the tables kept on the hasher stay at ``2 * _TOKENIZE_CHARS + 1``
        entries, 4 MiB (twice: lowercasing "İ" gives two code points); a larger request would
        be computed and not kept.
        """
        if len(self._powers) < n:
            cap = 2 * _TOKENIZE_CHARS + 1
            size = max(n, cap)
            inverse = pow(self._radix, -1, 2**64)
            powers = np.concatenate([[_U64(1)], np.cumprod(np.full(size - 1, self._radix, _U64))])
            inverse_powers = np.concatenate([[_U64(1)], np.cumprod(np.full(size - 1, inverse, _U64))])
            if size > cap:
                return powers[:n], inverse_powers[:n]
            self._powers, self._inverse_powers = powers, inverse_powers
        return self._powers[:n], self._inverse_powers[:n]

    def _span_hashes(self, entries: np.ndarray, bounds: np.ndarray) -> np.ndarray:
        """Polynomial hash of every span ``entries[bounds[i]:bounds[i + 1]]`` (bounds ascending).

        sum(c_k * radix^k) over the span's code points (separators have c = 0), for all spans
        at once: the difference of one prefix sum of c_i * radix^i at the bounds, times
        radix^-start.
        """
        powers, inverse_powers = self._power_tables(len(entries) + 1)
        weighted = (entries & np.uint32(_CODE_MASK)).astype(_U64) * powers[: len(entries)]
        prefix = np.zeros(len(entries) + 1, _U64)
        np.cumsum(weighted, out=prefix[1:])  # wraps mod 2^64, as intended
        return (prefix[bounds[1:]] - prefix[bounds[:-1]]) * inverse_powers[bounds[:-1]]

    # -- words -----------------------------------------------------------------------------
    def word_hashes(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """64-bit (polynomial) hashes of every text's ``words()``, concatenated, and per-text offsets (D+1).

        A word's hash is the polynomial sum(c_k * radix^k) over its lowercased code points.
        Not finalized: shingles combine these with random multipliers and are finalized.
        """
        return self._per_text(texts, self._group_word_hashes, self._long_word_hashes, _U64)

    def _group_word_hashes(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """``word_hashes`` of texts of at most ``_TOKENIZE_CHARS`` characters together."""
        entries, text_starts = _code_points(texts)
        starts = _word_starts(entries)
        if len(starts) == 0:
            return np.zeros(0, _U64), np.zeros(len(texts) + 1, np.int64)
        hashes = self._span_hashes(entries, np.append(starts, len(entries)))
        return hashes, np.searchsorted(starts, text_starts).astype(np.int64)

    def _long_word_hashes(self, text: str) -> Iterator[np.ndarray]:
        """The word hashes of one text longer than ``_TOKENIZE_CHARS``, window by window.

        Each window of at most ``_TOKENIZE_CHARS`` characters is hashed like a batch of its
        own, so memory does not grow with the text. A word running across a cut is joined: its
        hash is h(head) + radix^len(head) * h(tail), so the words and hashes are those of the
        whole text. Windows end at a space or line break where their second half has one:
        lowercasing depends on neighbours only for a final "Σ" (-> "ς"), and whitespace ends
        that context, so per-window lowercasing equals the whole text's (a Greek word cut
        mid-word in a text without whitespace might differ in one letter).
        """
        window = _TOKENIZE_CHARS
        pending: int | None = None  # hash of the previous window's last word, which may go on
        pending_length = 0
        after_word_char = False  # whether the previous window ended inside a letter/digit run
        lo = 0
        while lo < len(text):
            hi = min(lo + window, len(text))
            if hi < len(text):
                space = max(text.rfind(" ", lo + window // 2, hi), text.rfind("\n", lo + window // 2, hi))
                hi = space if space > lo else hi
            entries, _ = _code_points([text[lo:hi]])
            lo = hi
            starts = _word_starts(entries)
            classes = entries >> np.uint32(_CLASS_SHIFT)
            if after_word_char and classes[0] == _WORD and len(starts) and starts[0] == 0:
                starts = starts[1:]  # no new word: the previous window's last one goes on
            spans = self._span_hashes(entries, np.concatenate([[0], starts, [len(entries)]]))
            if pending is not None:  # the part before the first word start continues it
                pending = (pending + int(spans[0]) * pow(self._radix, pending_length, 2**64)) % 2**64
                pending_length += int(starts[0]) if len(starts) else len(entries)
            if len(starts):
                finished = spans[1:-1] if pending is None else np.concatenate([[_U64(pending)], spans[1:-1]])
                pending, pending_length = int(spans[-1]), len(entries) - int(starts[-1])
                yield finished
            after_word_char = bool(classes[-1] == _WORD)
        if pending is not None:
            yield np.array([pending], _U64)

    # -- shingles --------------------------------------------------------------------------
    def shingle_hashes(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """32-bit hashes of every text's shingles, concatenated, and per-text offsets (D+1).

        A shingle is ``ngram`` consecutive words of one text; a text with fewer words is one
        shingle of all of them; a text without words has none.
        """
        return self._per_text(texts, self._group_shingle_hashes, self._long_shingle_hashes, np.uint32)

    def _group_shingle_hashes(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        words, offsets = self._group_word_hashes(texts)
        n = self.ngram
        counts = np.diff(offsets)
        # Combine every window of n words at once, then pick the windows inside one text.
        windows = self._ngram_sums(words)
        shingle_counts = np.where(counts >= n, counts - n + 1, np.minimum(counts, 1))
        shingle_offsets = np.zeros(len(texts) + 1, np.int64)
        np.cumsum(shingle_counts, out=shingle_offsets[1:])
        source = np.arange(shingle_offsets[-1]) + np.repeat(offsets[:-1] - shingle_offsets[:-1], shingle_counts)
        shingles = windows[np.minimum(source, len(windows) - 1)] if len(windows) else np.zeros(len(source), _U64)
        short = np.flatnonzero((counts > 0) & (counts < n))
        if len(short):  # texts with fewer than n words: one shingle of the words they have
            short_hash = np.zeros(len(short), _U64)
            for k in range(n - 1):
                present = k < counts[short]
                short_hash[present] += words[offsets[short[present]] + k] * self._word_multipliers[k]
            shingles[shingle_offsets[short]] = short_hash
        return self._finalize(shingles), shingle_offsets

    def _long_shingle_hashes(self, text: str) -> Iterator[np.ndarray]:
        """The shingle hashes of one text longer than ``_TOKENIZE_CHARS``, window by window.

        The last ngram-1 words of each window are carried into the next, so every shingle
        across a cut is there, once: the shingles are those of the whole text.
        """
        keep = self.ngram - 1
        carried, total = np.zeros(0, _U64), 0
        for words in self._long_word_hashes(text):
            total += len(words)
            carried = np.concatenate([carried, words])
            if len(carried) >= self.ngram:
                yield self._finalize(self._ngram_sums(carried))
                carried = carried[len(carried) - keep :]
        if 0 < total < self.ngram:  # fewer than n words in all: one shingle of them
            yield self._finalize((carried * self._word_multipliers[: len(carried)]).sum(dtype=_U64)[None])

    def _ngram_sums(self, words: np.ndarray) -> np.ndarray:
        """sum_k words[i + k] * multiplier_k for every window of ``ngram`` consecutive words,
        with contiguous slices (no gathers)."""
        windows = np.zeros(max(len(words) - self.ngram + 1, 0), _U64)
        for k in range(self.ngram):
            windows += words[k : k + len(windows)] * self._word_multipliers[k]
        return windows

    def _finalize(self, sums: np.ndarray) -> np.ndarray:
        # The high half of a multilinear hash with random multipliers is universal; the 32-bit
        # finalizer then spreads it, as datasketch premixes before its affine permutations.
        return fmix32(((sums + self._salt) >> _U64(32)).astype(np.uint32))

    def _per_text(self, texts: list[str], group_fn, long_fn, dtype) -> tuple[np.ndarray, np.ndarray]:
        """``group_fn`` over batches of ``_TOKENIZE_CHARS`` characters and ``long_fn`` (window
        by window) over each longer text, joined: values concatenated, per-text offsets (D+1)."""
        parts, counts = [np.zeros(0, dtype)], [np.zeros(0, np.int64)]
        for lo, hi in _groups(texts, _TOKENIZE_CHARS):
            if len(texts[lo]) > _TOKENIZE_CHARS:  # _groups puts such a text alone
                values = np.concatenate([np.zeros(0, dtype), *long_fn(texts[lo])])
                parts.append(values)
                counts.append(np.array([len(values)], np.int64))
            else:
                values, offsets = group_fn(texts[lo:hi])
                parts.append(values)
                counts.append(np.diff(offsets))
        offsets = np.zeros(len(texts) + 1, np.int64)
        np.cumsum(np.concatenate(counts), out=offsets[1:])
        return np.concatenate(parts), offsets

    # -- signatures ------------------------------------------------------------------------
    def signatures(self, texts: list[str]) -> np.ndarray:
        """``(len(texts), num_perm)`` uint32 signatures; a text without words gets all 0xFFFFFFFF."""
        out = np.empty((len(texts), self.num_perm), np.uint32)
        short = []
        for i, text in enumerate(texts):
            if len(text) > _TOKENIZE_CHARS:  # window by window: a 100 MB text costs no more memory than a page
                out[i] = self._long_signature(text)
            else:
                short.append(i)
        short_texts = [texts[i] for i in short]
        for lo, hi in _groups(short_texts, _SIGNATURE_CHARS):
            out[short[lo:hi]] = self._signatures(short_texts[lo:hi])
        return out

    def _long_signature(self, text: str) -> np.ndarray:
        signature = np.full(self.num_perm, _EMPTY, np.uint32)
        for shingles in self._long_shingle_hashes(text):
            for lo in range(0, len(shingles), _CHUNK_SHINGLES):
                block = self._a * shingles[None, lo : lo + _CHUNK_SHINGLES] + self._b
                np.minimum(signature, block.min(axis=1), out=signature)
        return signature

    def _signatures(self, texts: list[str]) -> np.ndarray:
        shingles, offsets = self.shingle_hashes(texts)
        signature = np.full((self.num_perm, len(texts)), _EMPTY, np.uint32)
        # Segments to min-reduce: each text's shingles, cut again at block boundaries.
        nonempty = np.flatnonzero(np.diff(offsets) > 0)
        cuts = np.arange(0, len(shingles), _CHUNK_SHINGLES)
        cuts = cuts[~np.isin(cuts, offsets[nonempty])]
        seg_starts = np.concatenate([offsets[nonempty], cuts])
        seg_owner = np.concatenate([nonempty, np.searchsorted(offsets, cuts, "right") - 1])
        order = np.argsort(seg_starts, kind="stable")
        seg_starts, seg_owner = seg_starts[order], seg_owner[order]
        buffer = np.empty((self.num_perm, min(_CHUNK_SHINGLES, len(shingles))), np.uint32)
        for lo in range(0, len(shingles), _CHUNK_SHINGLES):
            hi = min(lo + _CHUNK_SHINGLES, len(shingles))
            block = buffer[:, : hi - lo]
            np.multiply(self._a, shingles[None, lo:hi], out=block)
            block += self._b
            first, last = np.searchsorted(seg_starts, [lo, hi])
            owners = seg_owner[first:last]
            seg_min = np.minimum.reduceat(block, seg_starts[first:last] - lo, axis=1)
            signature[:, owners] = np.minimum(signature[:, owners], seg_min)
        return signature.T


def _groups(texts: list[str], max_chars: int) -> Iterator[tuple[int, int]]:
    """Consecutive ``(lo, hi)`` ranges of texts of at most ``max_chars`` characters together
    (separators counted); a longer text is a range of its own."""
    lo, chars = 0, 0
    for i, text in enumerate(texts):
        size = len(text) + 1
        if chars and chars + size > max_chars:
            yield lo, i
            lo, chars = i, 0
        chars += size
    if lo < len(texts):
        yield lo, len(texts)


# -- LSH --------------------------------------------------------------------------------------
def band_hashes(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """``(docs, bands)`` uint64: each band's ``rows`` signature values hashed to one bucket key.

    Uses the first ``bands * rows`` slots of the signature.
    """
    docs, num_perm = signatures.shape
    if bands * rows > num_perm:
        raise ValueError(f"bands * rows = {bands * rows} exceeds the signature's {num_perm} slots")
    multipliers = splitmix64(0x5EED_BA4D, rows) | _U64(1)
    grouped = signatures[:, : bands * rows].reshape(docs, bands, rows).astype(_U64)
    keys = (grouped * multipliers).sum(axis=2, dtype=_U64)  # wraps mod 2^64, as intended
    return fmix64(keys + np.arange(bands, dtype=_U64))


def candidate_pairs(bands: np.ndarray, valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``(i, j)``, ``i < j``, of documents sharing a bucket in at least one band.

    Within a bucket each member is paired with the bucket's first member (a star) and with its
    predecessor (a chain), not with every other member: a bucket of m copies costs 2m pairs, not
    m^2/2, and still connects the whole bucket. After verification a member stays linked if it
    is similar enough to the bucket's first member or to its predecessor (in this or another
    band); a member similar only to some third member of every bucket it shares would be missed,
    which needs an unlikely arrangement. ``valid`` (bool per document) leaves documents out.
    """
    rows_all = np.arange(len(bands)) if valid is None else np.flatnonzero(valid)
    left, right = [], []
    for band in range(bands.shape[1]):
        keys = bands[rows_all, band]
        order = np.argsort(keys, kind="stable")  # stable: a bucket's members stay in doc order
        sorted_keys = keys[order]
        same = sorted_keys[1:] == sorted_keys[:-1]
        if not same.any():
            continue
        run_start = np.flatnonzero(np.concatenate([[True], ~same]))
        leader = run_start[np.cumsum(np.concatenate([[True], ~same])) - 1]
        members = np.flatnonzero(np.concatenate([[False], same]))
        docs = rows_all[order]
        left += [docs[leader[members]], docs[members - 1]]
        right += [docs[members], docs[members]]
    if not left:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    i, j = np.concatenate(left), np.concatenate(right)
    keys = np.unique(np.minimum(i, j) * len(bands) + np.maximum(i, j))
    return keys // len(bands), keys % len(bands)


def estimated_jaccard(a: np.ndarray, b: np.ndarray, bits: int = 32) -> np.ndarray:
    """Fraction of equal signature slots (row-wise) corrected for ``bits``-bit truncation.

    With only the low ``bits`` of each minimum stored (b-bit MinHash, Li & König 2010), unequal
    minima still agree with probability 2^-bits; the estimate removes that.
    """
    agreement = (a == b).mean(axis=-1)
    chance = 2.0**-bits
    return np.clip((agreement - chance) / (1 - chance), 0.0, 1.0)


def verify_pairs(signatures: np.ndarray, i: np.ndarray, j: np.ndarray, threshold: float, bits: int = 32) -> np.ndarray:
    """Mask of the pairs whose estimated Jaccard similarity is at least ``threshold``."""
    keep = np.zeros(len(i), bool)
    step = max(1, 4_000_000 // max(1, signatures.shape[1]))  # bound the (pairs, num_perm) temporaries
    for lo in range(0, len(i), step):
        hi = lo + step
        keep[lo:hi] = estimated_jaccard(signatures[i[lo:hi]], signatures[j[lo:hi]], bits) >= threshold
    return keep


def connected_components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Union-find over ``n`` nodes and the edges ``(i, j)``: each node's label is the smallest
    node of its component (so "the first document of the cluster" by construction).

    Vectorized hook-and-compress: every root hooks under the smallest root it has an edge to,
    then paths are halved by pointer jumping, until every edge lies inside one component.
    Labels only ever decrease, so it terminates; in practice in a handful of rounds.
    """
    parent = np.arange(n)
    i, j = np.asarray(i, np.int64), np.asarray(j, np.int64)
    while len(i):
        root_i, root_j = parent[i], parent[j]
        split = root_i != root_j
        if not split.any():
            break
        root_i, root_j = root_i[split], root_j[split]
        np.minimum.at(parent, np.maximum(root_i, root_j), np.minimum(root_i, root_j))
        while True:  # compress: point every node at its root
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
        i, j = i[split], j[split]
    return parent


def cluster(bands: np.ndarray, signatures: np.ndarray | None = None, threshold: float | None = None,
            bits: int = 32, valid: np.ndarray | None = None) -> np.ndarray:
    """Cluster label (first member's index) of every document; singletons are their own label.

    With ``signatures`` and ``threshold``, candidate pairs are kept only if their estimated
    Jaccard similarity reaches the threshold, cutting LSH's false positives.
    """
    i, j = candidate_pairs(bands, valid)
    if signatures is not None and threshold is not None and len(i):
        keep = verify_pairs(signatures, i, j, threshold, bits)
        i, j = i[keep], j[keep]
    return connected_components(len(bands), i, j)


def candidate_probability(similarity: np.ndarray | float, bands: int, rows: int) -> np.ndarray:
    """P(two documents of this Jaccard similarity share a bucket) = 1 - (1 - s^rows)^bands."""
    return 1.0 - (1.0 - np.asarray(similarity, float) ** rows) ** bands


def optimal_bands_rows(threshold: float, num_perm: int, false_positive_weight: float = 0.5,
                       false_negative_weight: float = 0.5) -> tuple[int, int]:
    """``(bands, rows)`` with ``bands * rows <= num_perm`` minimizing the weighted areas under
    the candidate curve below ``threshold`` (false positives) and above it (false negatives):
    the criterion ``datasketch.MinHashLSH`` uses, so its users get the parameters they expect.
    """
    below, above = np.linspace(0.0, threshold, 201), np.linspace(threshold, 1.0, 201)
    best = (np.inf, 1, 1)
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            fp = _area(candidate_probability(below, bands, rows), below)
            fn = _area(1.0 - candidate_probability(above, bands, rows), above)
            error = false_positive_weight * fp + false_negative_weight * fn
            if error < best[0]:
                best = (error, bands, rows)
    return best[1], best[2]


def _area(y: np.ndarray, x: np.ndarray) -> float:
    """Trapezoidal integral (``np.trapezoid`` is numpy >= 2 only)."""
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2)
