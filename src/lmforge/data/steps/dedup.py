"""Deduplication at three levels, as ``GlobalStep``s: exact, near-duplicate, repeated lines.

- ``exact_dedup``: documents whose normalized text (lowercased, whitespace collapsed, optionally
  without punctuation) hashes the same (BLAKE2b, 128 bits) are one group; the first document of
  each group (shard order, then document order) stays, the others go as ``exact_duplicate``.
- ``minhash_dedup``: MinHash-LSH over word n-gram shingles (``minhash.py``): documents sharing a
  band bucket are candidates, candidates whose estimated Jaccard similarity reaches
  ``threshold`` are linked, linked documents form clusters (union-find); one document per
  cluster stays (the first, or the longest), the others go as ``near_duplicate``.
- ``line_dedup``: lines (or paragraphs) that occur in at least ``min_docs`` documents are
  boilerplate (CCNet); they are removed from every document but the first one they occur in.
  Short lines are never touched, so "All:" or a speaker's name in a play survive. A document
  left empty goes as ``empty_after_line_dedup``.

Run them in this order: exact, then near-duplicate, then line dedup — the cheap exact pass
shrinks MinHash's work, and lines shared by a document and its near-copies would otherwise look
like boilerplate (an original and two edited copies put every line in 3 documents).

Each runs in the executor's three phases (see ``GlobalStep``): ``collect`` stores compact rows
per document (ids, hashes or LSH band keys, an 80-character preview), ``decide`` reads every
shard's rows and writes its decision to the step's ``work_dir`` atomically, and returns the
summary the funnel report shows (cluster counts, a size histogram, the largest clusters with
member ids and previews); ``setup`` + ``process`` then apply the decision. In YAML::

    steps:
      - type: exact_dedup
      - type: minhash_dedup
        threshold: 0.8
        keep: first
      - type: line_dedup
        min_docs: 3
        min_chars: 20
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmforge.data.document import Document
from lmforge.data.pipeline.base import Drop, GlobalStep, StepContext, drop, register_step
from lmforge.data.steps.minhash import (
    MinHasher, band_hashes, candidate_pairs, connected_components, optimal_bands_rows, verify_pairs,
)
from lmforge.data.steps.text import DIGIT_RE, paragraph_pieces

DECISION_FILE = "decision.npz"
_PUNCTUATION_RE = re.compile(r"[^\w\s]|_")  # punctuation and symbols, any script
_EMPTY_IDS = np.zeros(0, dtype="<U1")


# -- shared helpers ---------------------------------------------------------------------------
def _digest(text: str, size: int) -> bytes:
    # surrogatepass: broken input with lone surrogates hashes instead of raising.
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=size).digest()


def _hash64(texts: list[str]) -> np.ndarray:
    return np.frombuffer(b"".join(_digest(t, 8) for t in texts), dtype=np.uint64).copy()


def _previews(docs: list[Document], chars: int) -> np.ndarray:
    return np.array([" ".join(d.text[: chars * 4].split())[:chars] for d in docs], dtype=f"<U{max(chars, 1)}")


def _ids(docs: list[Document]) -> np.ndarray:
    return np.array([d.id for d in docs], dtype=str) if docs else _EMPTY_IDS


def _save_atomic(path: Path, **arrays: np.ndarray) -> None:
    """Write an npz so that a reader sees the old file or the complete new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


class _Collected:
    """The shards' ``collect-XXXXX.npz`` files (in shard order), read key by key."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = [Path(p) for p in paths]

    def load(self, key: str, empty: np.ndarray) -> np.ndarray:
        """One key's rows of every shard, concatenated (``empty`` if no shard has any)."""
        parts = []
        for path in self.paths:
            with np.load(path) as data:
                if key in data.files:
                    parts.append(data[key])
        parts = [p for p in parts if len(p)]
        return np.concatenate(parts) if parts else empty

    def take(self, key: str, rows: np.ndarray, empty: np.ndarray = _EMPTY_IDS) -> np.ndarray:
        """``key``'s values at global ``rows`` (numbered across shards in order), in that order.

        Reads one shard at a time, so memory holds one shard's array plus the rows asked for
        (decide verifies candidate pairs without loading every signature at once).
        """
        unique, inverse = np.unique(np.asarray(rows, np.int64), return_inverse=True)
        parts, start = [], 0
        for path in self.paths:
            with np.load(path) as data:
                if key not in data.files:
                    continue
                values = data[key]
            lo, hi = np.searchsorted(unique, [start, start + len(values)])
            if hi > lo:
                parts.append(values[unique[lo:hi] - start])
            start += len(values)
        if len(unique) and unique[-1] >= start:
            raise ValueError(f"row {unique[-1]} beyond the {start} collected rows of {key!r}")
        return (np.concatenate(parts) if parts else empty)[inverse.reshape(-1)]


def _size_histogram(sizes: np.ndarray) -> dict[str, int]:
    """Cluster sizes in powers-of-two buckets: {"2": n, "3-4": n, "5-8": n, ...}."""
    histogram: dict[str, int] = {}
    low = 2
    while len(sizes) and low <= sizes.max():
        high = 2 if low == 2 else 2 * (low - 1)
        count = int(((sizes >= low) & (sizes <= high)).sum())
        if count:
            histogram[str(low) if low == high else f"{low}-{high}"] = count
        low = high + 1
    return histogram


def _cluster_report(collected: _Collected, labels: np.ndarray, keep: np.ndarray, largest: int,
                    members_shown: int = 5) -> dict:
    """Counts, a size histogram and the ``largest`` clusters with a few members' ids/previews."""
    roots, sizes = np.unique(labels, return_counts=True)
    multi = sizes > 1
    roots, sizes = roots[multi], sizes[multi]
    top = np.argsort(-sizes, kind="stable")[:largest]
    shown_rows = [np.flatnonzero(labels == roots[t])[:members_shown] for t in top]
    flat = np.concatenate(shown_rows) if shown_rows else np.zeros(0, np.int64)
    ids, previews = collected.take("id", flat), collected.take("preview", flat)
    clusters, k = [], 0
    for t, rows in zip(top, shown_rows):
        members = [{"id": str(ids[k + m]), "kept": bool(keep[r]), "preview": str(previews[k + m])} for m, r in enumerate(rows)]
        clusters.append({"size": int(sizes[t]), "members": members})
        k += len(rows)
    return {"clusters": int(len(roots)), "cluster_sizes": _size_histogram(sizes), "largest_clusters": clusters}


def _load_decision(step: GlobalStep, ctx: StepContext) -> dict[str, np.ndarray]:
    """The arrays ``decide`` saved in the step's work_dir (phase 3 cannot run without them)."""
    path = Path(ctx.work_dir) / DECISION_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{step.name}: no decision at {path}; the collect and decide phases must run first")
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


def _write_drop_ids(collected: _Collected, dropped_rows: np.ndarray, work_dir: Path) -> None:
    ids = collected.take("id", dropped_rows)
    _save_atomic(Path(work_dir) / DECISION_FILE, drop_ids=np.sort(ids.astype(str)))


class _DropListStep(GlobalStep):
    """Phase 3 of the document-level dedups: drop the documents whose id the decision lists."""

    drop_reason = ""

    def setup(self, ctx: StepContext) -> None:
        self._drop_ids = _load_decision(self, ctx)["drop_ids"]

    def process_batch(self, docs: list[Document]) -> list[Document | Drop]:
        if not len(self._drop_ids) or not docs:
            return list(docs)
        ids = _ids(docs)
        at = np.minimum(np.searchsorted(self._drop_ids, ids), len(self._drop_ids) - 1)
        hit = self._drop_ids[at] == ids
        return [drop(self.drop_reason) if h else d for d, h in zip(docs, hit.tolist())]


# -- exact ------------------------------------------------------------------------------------
@dataclass
class ExactDedupConfig:
    lowercase: bool = True  # "Hello" == "hello": case rarely makes a different document
    collapse_whitespace: bool = True  # runs of spaces/newlines count as one space; ends stripped
    # Off by default: documents that differ only in punctuation are near-duplicates, which
    # minhash_dedup (whose shingles ignore punctuation) catches; "exact" stays conservative.
    strip_punctuation: bool = False
    preview_chars: int = 80  # characters of text kept per document for the report's examples
    report_clusters: int = 10  # the largest duplicate groups listed in the summary

    def __post_init__(self) -> None:
        if self.preview_chars < 0:
            raise ValueError(f"exact_dedup.preview_chars must be >= 0, got {self.preview_chars}")
        if self.report_clusters < 0:
            raise ValueError(f"exact_dedup.report_clusters must be >= 0, got {self.report_clusters}")


@register_step("exact_dedup")
class ExactDedup(_DropListStep):
    """Keep the first document of every group with the same normalized text."""

    Config = ExactDedupConfig
    drop_reason = "exact_duplicate"

    def normalize(self, text: str) -> str:
        c = self.config
        text = text.lower() if c.lowercase else text
        text = _PUNCTUATION_RE.sub("", text) if c.strip_punctuation else text
        return " ".join(text.split()) if c.collapse_whitespace else text

    def collect(self, docs: list[Document]) -> dict[str, np.ndarray]:
        digests = b"".join(_digest(self.normalize(d.text), 16) for d in docs)
        return {
            "id": _ids(docs),
            "hash": np.frombuffer(digests, dtype=np.uint64).reshape(-1, 2).copy(),
            "preview": _previews(docs, self.config.preview_chars),
        }

    def decide(self, collected: list[Path], work_dir: Path) -> dict:
        shards = _Collected(collected)
        hashes = shards.load("hash", np.zeros((0, 2), np.uint64))
        rows = np.arange(len(hashes))
        order = np.lexsort((rows, hashes[:, 1], hashes[:, 0]))  # by hash, then first row first
        sorted_hashes = hashes[order]
        starts_group = np.ones(len(order), bool)
        starts_group[1:] = (sorted_hashes[1:] != sorted_hashes[:-1]).any(axis=1)
        labels = np.empty(len(order), np.int64)
        labels[order] = order[np.flatnonzero(starts_group)][np.cumsum(starts_group) - 1]
        keep = labels == rows
        _write_drop_ids(shards, np.flatnonzero(~keep), work_dir)
        report = _cluster_report(shards, labels, keep, self.config.report_clusters)
        return {"documents": int(len(rows)), "duplicates_dropped": int((~keep).sum()), **report}


# -- near-duplicates ---------------------------------------------------------------------------
@dataclass
class MinHashDedupConfig:
    ngram: int = 5  # words per shingle (a CJK character is a word), datatrove's default
    # 128 slots: the estimated Jaccard similarity has a standard deviation of 0.035 at 0.8,
    # enough to verify candidates; 16 bands x 8 rows use all of them.
    num_perm: int = 128
    # 16 x 8 favours recall because candidates are verified afterwards: a pair at Jaccard 0.8
    # becomes a candidate with p = 0.95, at 0.6 with p = 0.24 (then rejected), at 0.5 with
    # p = 0.06. Leave both null to derive them from threshold as datasketch does (equal
    # weights on false positives and negatives: 9 x 13 for 0.8, p = 0.40 at Jaccard 0.8).
    bands: int | None = 16
    rows: int | None = 8
    threshold: float = 0.8  # Jaccard similarity of shingle sets above which documents are duplicates
    # Keep a candidate pair only if its estimated Jaccard similarity (from the signatures) reaches
    # threshold: LSH alone also links pairs well below it. Costs 256 bytes/document (16-bit slots).
    verify: bool = True
    keep: str = "first"  # which cluster member stays: "first" (shard, then document order) or "longest"
    seed: int = 0  # permutations and hashes; every worker must use the same
    preview_chars: int = 80  # characters of text kept per document for the report's examples
    report_clusters: int = 10  # the largest clusters listed in the summary

    def __post_init__(self) -> None:
        for field in ("ngram", "num_perm"):
            if getattr(self, field) < 1:
                raise ValueError(f"minhash_dedup.{field} must be >= 1, got {getattr(self, field)}")
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"minhash_dedup.threshold must be in (0, 1], got {self.threshold}")
        if self.keep not in ("first", "longest"):
            raise ValueError(f"minhash_dedup.keep must be 'first' or 'longest', got {self.keep!r}")
        for field in ("bands", "rows"):
            value = getattr(self, field)
            if value is not None and value < 1:
                raise ValueError(f"minhash_dedup.{field} must be >= 1 or null, got {value}")
        if self.bands is None and self.rows is None:
            self.bands, self.rows = optimal_bands_rows(self.threshold, self.num_perm)
        elif self.bands is None:
            self.bands = self.num_perm // self.rows
        elif self.rows is None:
            self.rows = self.num_perm // self.bands
        if self.bands * self.rows > self.num_perm or self.bands * self.rows == 0:
            raise ValueError(f"minhash_dedup: bands x rows = {self.bands} x {self.rows} must be in 1..num_perm ({self.num_perm})")
        if self.preview_chars < 0 or self.report_clusters < 0:
            raise ValueError("minhash_dedup.preview_chars and report_clusters must be >= 0")


@register_step("minhash_dedup")
class MinHashDedup(_DropListStep):
    """Keep one document per cluster of near-duplicates (MinHash-LSH)."""

    Config = MinHashDedupConfig
    drop_reason = "near_duplicate"
    _hasher: MinHasher | None = None

    def collect(self, docs: list[Document]) -> dict[str, np.ndarray]:
        c = self.config
        if self._hasher is None:
            self._hasher = MinHasher(c.ngram, c.num_perm, c.seed)
        signatures = self._hasher.signatures([d.text for d in docs])
        out = {
            "id": _ids(docs),
            "bands": band_hashes(signatures, c.bands, c.rows),
            "has_words": (signatures != np.uint32(0xFFFFFFFF)).any(axis=1),
            "length": np.array([len(d.text) for d in docs], dtype=np.int64),
            "preview": _previews(docs, c.preview_chars),
        }
        if c.verify:  # b-bit MinHash: the low 16 bits of each slot estimate Jaccard just as well
            out["signature"] = (signatures & np.uint32(0xFFFF)).astype(np.uint16)
        return out

    def decide(self, collected: list[Path], work_dir: Path) -> dict:
        c = self.config
        shards = _Collected(collected)
        bands = shards.load("bands", np.zeros((0, c.bands), np.uint64))
        has_words = shards.load("has_words", np.zeros(0, bool))
        i, j = candidate_pairs(bands, valid=has_words)
        candidates = len(i)
        if c.verify and len(i):
            endpoints, compact = np.unique(np.concatenate([i, j]), return_inverse=True)
            signatures = shards.take("signature", endpoints, np.zeros((0, c.num_perm), np.uint16))
            linked = verify_pairs(signatures, compact[: len(i)], compact[len(i) :], c.threshold, bits=16)
            i, j = i[linked], j[linked]
        labels = connected_components(len(bands), i, j)
        rows = np.arange(len(bands))
        if c.keep == "first":
            keep = labels == rows
        else:  # the longest member of each cluster, the first among equally long ones
            length = shards.load("length", np.zeros(0, np.int64))
            order = np.lexsort((rows, -length, labels))
            first_of_cluster = np.ones(len(order), bool)
            first_of_cluster[1:] = labels[order[1:]] != labels[order[:-1]]
            keep = np.zeros(len(rows), bool)
            keep[order[first_of_cluster]] = True
        _write_drop_ids(shards, np.flatnonzero(~keep), work_dir)
        report = _cluster_report(shards, labels, keep, c.report_clusters)
        return {
            "documents": int(len(rows)), "documents_without_words": int((~has_words).sum()),
            "bands": c.bands, "rows": c.rows, "threshold": c.threshold,
            "candidate_pairs": int(candidates), "linked_pairs": int(len(i)),
            "duplicates_dropped": int((~keep).sum()), **report,
        }


# -- repeated lines / paragraphs ---------------------------------------------------------------
@dataclass
class LineDedupConfig:
    unit: str = "line"  # "line", or "paragraph" (text between blank lines)
    # A unit in 2 documents may be a quotation or a shared sentence (and near-duplicate documents
    # are minhash_dedup's job); in 3 or more it is a template: headers, footers, navigation.
    min_docs: int = 3
    # Units shorter than this (after normalization) are never removed: speaker names in a play
    # ("All:", "King Richard II:"), "Chapter 3", short replies recur naturally. At 20, the
    # shared pretrain samples (Shakespeare, a novel, a textbook) lose nothing.
    min_chars: int = 20
    keep_first: bool = True  # leave the unit in the first document it occurs in (CCNet); false: remove it everywhere
    lowercase: bool = True  # normalization before hashing, as CCNet: case-insensitive...
    digits_to_zero: bool = True  # ...and "Page 3 of 9" == "Page 4 of 9"
    preview_chars: int = 80  # characters of a repeated unit shown in the summary
    report_units: int = 10  # the most repeated units listed in the summary

    def __post_init__(self) -> None:
        if self.unit not in ("line", "paragraph"):
            raise ValueError(f"line_dedup.unit must be 'line' or 'paragraph', got {self.unit!r}")
        if self.min_docs < 2:
            raise ValueError(f"line_dedup.min_docs must be >= 2, got {self.min_docs}")
        for field in ("min_chars", "preview_chars", "report_units"):
            if getattr(self, field) < 0:
                raise ValueError(f"line_dedup.{field} must be >= 0, got {getattr(self, field)}")


@register_step("line_dedup")
class LineDedup(GlobalStep):
    """Remove lines/paragraphs that recur across documents from all but their first document."""

    Config = LineDedupConfig

    def split(self, text: str) -> list[tuple[str, str]]:
        """The text's units with their trailing separators; concatenated they give the text."""
        if self.config.unit == "line":
            parts = text.split("\n")
            return [(p, "\n") for p in parts[:-1]] + [(parts[-1], "")]
        return paragraph_pieces(text)

    def normalize(self, unit: str) -> str:
        unit = " ".join(unit.split())
        unit = unit.lower() if self.config.lowercase else unit
        return DIGIT_RE.sub("0", unit) if self.config.digits_to_zero else unit

    def _unit_hashes(self, docs: list[Document]) -> tuple[list[list[tuple[str, str]]], np.ndarray, np.ndarray, np.ndarray]:
        """Per document its units; for every unit long enough: hash, document index, unit index."""
        units, keys, owner, index = [], [], [], []
        for d, doc in enumerate(docs):
            split = self.split(doc.text)
            units.append(split)
            for u, (text, _) in enumerate(split):
                normalized = self.normalize(text)
                if normalized and len(normalized) >= self.config.min_chars:  # blank lines are layout
                    keys.append(normalized)
                    owner.append(d)
                    index.append(u)
        return units, _hash64(keys), np.array(owner, np.int64), np.array(index, np.int64)

    def collect(self, docs: list[Document]) -> dict[str, np.ndarray]:
        units, hashes, owner, index = self._unit_hashes(docs)
        # Previews for the report: units already repeated within this batch (the most repeated
        # units nearly always are), one row per distinct unit; storing every unit's text would
        # double the collected data.
        first_seen: dict[int, tuple[int, int]] = {}
        preview_rows = {}
        for h, d, u in zip(hashes.tolist(), owner.tolist(), index.tolist()):
            first_d, first_u = first_seen.setdefault(h, (d, u))
            if first_d != d and h not in preview_rows:
                preview_rows[h] = " ".join(units[first_d][first_u][0].split())[: self.config.preview_chars]
        return {
            "unit_hash": hashes,
            "unit_doc": _hash64([docs[d].id for d in owner.tolist()]),
            "preview_hash": np.fromiter(preview_rows.keys(), np.uint64, len(preview_rows)),
            "preview": np.array(list(preview_rows.values()), dtype=f"<U{max(self.config.preview_chars, 1)}"),
        }

    def decide(self, collected: list[Path], work_dir: Path) -> dict:
        shards = _Collected(collected)
        hashes = shards.load("unit_hash", np.zeros(0, np.uint64))
        doc_keys = shards.load("unit_doc", np.zeros(0, np.uint64))
        rows = np.arange(len(hashes))
        order = np.lexsort((rows, hashes))  # by unit, then first occurrence first
        h, d = hashes[order], doc_keys[order]
        new_unit = np.ones(len(h), bool)
        new_unit[1:] = h[1:] != h[:-1]
        unit_of = np.cumsum(new_unit) - 1
        first_doc = d[new_unit]
        # Documents per unit: distinct (unit, document) pairs.
        pair_order = np.lexsort((d, h))
        new_pair = np.ones(len(h), bool)
        new_pair[1:] = (h[pair_order][1:] != h[pair_order][:-1]) | (d[pair_order][1:] != d[pair_order][:-1])
        doc_count = np.bincount(unit_of[pair_order][new_pair], minlength=int(new_unit.sum()))
        repeated = doc_count >= self.config.min_docs
        occurrences = np.bincount(unit_of, minlength=len(doc_count))
        removed_rows = repeated[unit_of] & ((d != first_doc[unit_of]) if self.config.keep_first else True)
        unit_hashes = h[new_unit]
        _save_atomic(Path(work_dir) / DECISION_FILE, unit_hash=unit_hashes[repeated], first_doc=first_doc[repeated])

        previews = dict(zip(shards.load("preview_hash", np.zeros(0, np.uint64)).tolist(),
                            shards.load("preview", np.zeros(0, "<U1")).tolist()))
        top = np.flatnonzero(repeated)[np.argsort(-doc_count[repeated], kind="stable")][: self.config.report_units]
        return {
            "units_hashed": int(len(h)), "distinct_units": int(len(doc_count)),
            "repeated_units": int(repeated.sum()), "units_to_remove": int(removed_rows.sum()),
            "documents_affected": int(len(np.unique(d[removed_rows]))),
            "documents_per_repeated_unit": _size_histogram(doc_count[repeated]),
            "most_repeated": [{"documents": int(doc_count[t]), "occurrences": int(occurrences[t]),
                               "preview": previews.get(int(unit_hashes[t]))} for t in top],
        }

    def setup(self, ctx: StepContext) -> None:
        decision = _load_decision(self, ctx)
        self._repeated, self._first_doc = decision["unit_hash"], decision["first_doc"]
        self._label = "lines_removed" if self.config.unit == "line" else "paragraphs_removed"

    def process_batch(self, docs: list[Document]) -> list[Document | Drop]:
        if not docs or not len(self._repeated):
            return list(docs)
        units, hashes, owner, index = self._unit_hashes(docs)
        at = np.minimum(np.searchsorted(self._repeated, hashes), len(self._repeated) - 1)
        remove = self._repeated[at] == hashes
        if self.config.keep_first and remove.any():
            doc_keys = _hash64([docs[d].id for d in owner[remove].tolist()])
            remove[remove] = doc_keys != self._first_doc[at[remove]]
        removed_by_doc: dict[int, set[int]] = {}
        for d, u in zip(owner[remove].tolist(), index[remove].tolist()):
            removed_by_doc.setdefault(d, set()).add(u)
        out: list[Document | Drop] = list(docs)
        for d, gone in removed_by_doc.items():
            kept = [u for u in range(len(units[d])) if u not in gone]
            text = "".join(units[d][u][0] + units[d][u][1] for u in kept)
            if kept and kept[-1] != len(units[d]) - 1:  # the old last unit went: drop its separator too
                text = text[: len(text) - len(units[d][kept[-1]][1])]
            self.count(self._label, len(gone))
            self.count("chars_removed", len(docs[d].text) - len(text))
            if not text.strip():
                out[d] = drop("empty_after_line_dedup")
            else:
                out[d] = Document(docs[d].id, text, docs[d].metadata)
        return out
