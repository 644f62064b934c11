"""A fastText-style text classifier, written for lmforge: hashed n-grams, averaged embeddings, softmax.

Used by the ``quality_classifier`` step (binary: is this document like the positive examples?)
and the ``topic`` step (multi-class), trained by ``lmforge data train-classifier`` and
``lmforge data train-topics``. Everything runs on CPU in seconds for thousands of documents.

How it works (the model of Joulin et al., "Bag of Tricks for Efficient Text Classification"):

* **Features**: the document's words (``words()``: Latin/digit runs, and single CJK characters,
  so Chinese needs no segmenter and its "bigrams" are character pairs), word n-grams up to
  ``word_ngrams``, and optionally fastText's character n-grams of each word (``<word>``), all
  hashed (crc32, stable across processes and machines) into ``buckets`` ids.
* **Model**: the mean of the features' ``dim``-wide embeddings, then a linear layer and a
  softmax. Trained in numpy with mini-batch Adam (only the rows a batch touches are updated),
  a linearly decaying learning rate and a class-balanced loss by default; seeded: the same data
  and config give the same model, bit for bit.
* **Storage**: only the buckets that occurred in training get an embedding row, so a large hash
  space (few collisions) costs nothing. Because the model is linear up to the softmax, inference
  precomputes each stored row's logit contribution (``embedding @ W.T``): a document costs one
  lookup per feature. Nothing here imports torch, so pipeline workers stay light. A feature
  never seen in training contributes zero but still counts in the mean, so text the model knows
  little about is pulled toward the prior.

Usage::

    from lmforge.data.steps.classifier import ClassifierConfig, TextClassifier, train
    clf = train(texts, labels, ClassifierConfig(epochs=5, seed=0))
    clf.predict_proba(["some text", "另一段文字"])       # [2, n_labels] float64, rows sum to 1
    clf.save("runs/quality_clf")                         # weights.safetensors + classifier.json
    clf = TextClassifier.load("runs/quality_clf")
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zlib
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

from lmforge.data.steps.text import words
from lmforge.io import replace_dir, write_json_atomic

FORMAT = "lmforge-text-classifier/1"
WEIGHTS_FILE = "weights.safetensors"
META_FILE = "classifier.json"

# fastText's multiplier for combining the hashes of consecutive words into an n-gram hash.
_NGRAM_MULTIPLIER = np.uint64(116049371)
# Seed for hashing character n-grams, so "<ab" and a word "<ab" can never share a hash by design.
_CHAR_NGRAM_SEED = 0x9E3779B9
_PREDICT_CHUNK = 256  # documents featurized at once in predict_proba (bounds peak memory)


@dataclass
class ClassifierConfig:
    """Features, model size and training schedule; stored with the model so loading reproduces features."""

    # Size of the hash space for all features. Only buckets seen in training are stored, so a
    # large space costs no memory; fastText's default (2M) keeps collisions rare.
    buckets: int = 2_000_000
    # Longest word n-gram: 1 = unigrams, 2 = + bigrams (fastText's usual -wordNgrams 2; for
    # Chinese a bigram is a character pair, which carries most of a word's meaning).
    word_ngrams: int = 2
    # fastText's subword features: character n-grams of "<word>" with these lengths; 0 = off
    # (the default: on short training sets they add noise more than recall; try 3 and 5).
    char_ngram_min: int = 0
    char_ngram_max: int = 0
    # Only a document's first max_words words are used (0 = all): bounds time and memory on
    # very long documents; the start of a document says what it is.
    max_words: int = 2000
    # Embedding width. Small (fastText uses 10-100 for classification): the model only has to
    # separate a handful of labels, and a narrow layer generalizes better from few examples.
    dim: int = 32
    # Passes over the training data (fastText's default for supervised training is 5).
    epochs: int = 5
    # Peak Adam learning rate, decayed linearly to 0 over training (as fastText does with SGD).
    lr: float = 0.05
    # Documents per optimizer step.
    batch_size: int = 16
    # Weight the loss by inverse label frequency, so a 10:1 imbalance between the example sets
    # does not just teach the model to say the majority label.
    balanced: bool = True
    # Seed for initialization and shuffling; the same data and config give the same model.
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("buckets", "word_ngrams", "dim", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        for name in ("char_ngram_min", "char_ngram_max", "max_words"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0; got {getattr(self, name)}")
        if (self.char_ngram_min == 0) != (self.char_ngram_max == 0) or self.char_ngram_min > self.char_ngram_max:
            raise ValueError(
                f"char_ngram_min/char_ngram_max must both be 0 (off) or 1 <= min <= max; "
                f"got {self.char_ngram_min}/{self.char_ngram_max}"
            )
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0; got {self.lr}")


# --------------------------------------------------------------------------------------------
# Features


def _word_hashes(tokens: list[str]) -> np.ndarray:
    return np.fromiter((zlib.crc32(t.encode("utf-8")) for t in tokens), dtype=np.uint64, count=len(tokens))


@lru_cache(maxsize=1 << 16)
def _char_ngram_hashes(word: str, n_min: int, n_max: int) -> tuple[int, ...]:
    # fastText's subwords: n-grams of "<word>", without the whole "<word>" (that is the word itself).
    marked = f"<{word}>"
    return tuple(
        zlib.crc32(marked[i : i + n].encode("utf-8"), _CHAR_NGRAM_SEED)
        for n in range(n_min, n_max + 1)
        for i in range(len(marked) - n + 1)
        if n < len(marked)
    )


def featurize(text: str, cfg: ClassifierConfig) -> np.ndarray:
    """Bucket ids (int64) of ``text``'s features: words, word n-grams, optional char n-grams."""
    tokens = words(text)
    if cfg.max_words:
        tokens = tokens[: cfg.max_words]
    word_hashes = _word_hashes(tokens)
    parts = [word_hashes]
    ngram = word_hashes
    for n in range(2, cfg.word_ngrams + 1):
        # Rolling hash: hash(w1..wn) = hash(w1..wn-1) * M + hash(wn), wrapping in uint64.
        ngram = ngram[:-1] * _NGRAM_MULTIPLIER + word_hashes[n - 1 :]
        parts.append(ngram)
    if cfg.char_ngram_max:
        subwords = [h for t in tokens for h in _char_ngram_hashes(t, cfg.char_ngram_min, cfg.char_ngram_max)]
        parts.append(np.asarray(subwords, dtype=np.uint64))
    return (np.concatenate(parts) % np.uint64(cfg.buckets)).astype(np.int64)


# --------------------------------------------------------------------------------------------
# The model


class TextClassifier:
    """A trained classifier: ``predict_proba`` / ``predict`` in numpy, ``save`` / ``load`` a directory."""

    def __init__(
        self,
        labels: Sequence[str],
        config: ClassifierConfig,
        rows: np.ndarray,
        vectors: np.ndarray,
        weight: np.ndarray,
        bias: np.ndarray,
        info: dict | None = None,
    ) -> None:
        self.labels = list(labels)
        self.config = config
        self.rows = np.asarray(rows, dtype=np.int64)  # sorted bucket ids that have an embedding
        self.vectors = np.asarray(vectors, dtype=np.float32)  # [rows, dim]
        self.weight = np.asarray(weight, dtype=np.float32)  # [labels, dim]
        self.bias = np.asarray(bias, dtype=np.float32)  # [labels]
        self.info = dict(info or {})  # training summary, stored in classifier.json
        n_labels = len(self.labels)
        if n_labels < 2 or len(set(self.labels)) != n_labels:
            raise ValueError(f"a classifier needs at least 2 distinct labels; got {self.labels}")
        shapes = (self.vectors.shape, self.weight.shape, self.bias.shape)
        if shapes != ((len(self.rows), config.dim), (n_labels, config.dim), (n_labels,)):
            raise ValueError(
                f"inconsistent classifier arrays: rows {self.rows.shape}, vectors {self.vectors.shape}, "
                f"weight {self.weight.shape}, bias {self.bias.shape} for dim {config.dim} and {n_labels} labels"
            )
        if len(self.rows) > 1 and not np.all(self.rows[1:] > self.rows[:-1]):
            raise ValueError("classifier rows must be sorted and unique")
        # The model is linear up to the softmax: mean(E[ids]) @ W.T == mean((E @ W.T)[ids]).
        self._row_logits = (self.vectors.astype(np.float64) @ self.weight.T.astype(np.float64)).astype(np.float32)

    def label_index(self, label: str) -> int:
        try:
            return self.labels.index(label)
        except ValueError:
            raise ValueError(f"label {label!r} is not one of this classifier's labels: {', '.join(self.labels)}") from None

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """[len(texts), len(labels)] probabilities (float64); each row sums to 1."""
        out = np.empty((len(texts), len(self.labels)), dtype=np.float64)
        for start in range(0, len(texts), _PREDICT_CHUNK):
            chunk = texts[start : start + _PREDICT_CHUNK]
            out[start : start + len(chunk)] = self._predict_chunk([featurize(t, self.config) for t in chunk])
        return out

    def predict(self, texts: Sequence[str]) -> list[str]:
        return [self.labels[i] for i in self.predict_proba(texts).argmax(axis=1)]

    def _predict_chunk(self, features: list[np.ndarray]) -> np.ndarray:
        n = len(features)
        counts = np.array([len(f) for f in features], dtype=np.int64)
        sums = np.zeros((n, len(self.labels)), dtype=np.float64)
        if counts.sum() and len(self.rows):
            ids = np.concatenate(features)
            doc = np.repeat(np.arange(n), counts)
            pos = np.minimum(np.searchsorted(self.rows, ids), len(self.rows) - 1)
            known = self.rows[pos] == ids
            doc, contrib = doc[known], self._row_logits[pos[known]]
            for j in range(len(self.labels)):
                sums[:, j] = np.bincount(doc, weights=contrib[:, j], minlength=n)
        logits = sums / np.maximum(counts, 1)[:, None] + self.bias
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        return probs / probs.sum(axis=1, keepdims=True)

    # ---- storage

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``weights.safetensors`` + ``classifier.json`` into ``directory``, replacing it atomically."""
        from safetensors.numpy import save_file

        out = Path(directory)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        try:
            tensors = {"rows": self.rows, "vectors": self.vectors, "weight": self.weight, "bias": self.bias}
            save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp / WEIGHTS_FILE))
            with open(tmp / WEIGHTS_FILE, "rb") as f:  # on disk before the directory appears under its name
                os.fsync(f.fileno())
            meta = {"format": FORMAT, "labels": self.labels, "config": asdict(self.config), "info": self.info}
            write_json_atomic(tmp / META_FILE, meta)
            replace_dir(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return out

    @classmethod
    def load(cls, directory: str | os.PathLike) -> TextClassifier:
        from safetensors.numpy import load_file

        directory = Path(directory)
        meta_path = directory / META_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(
                f"{directory}: not a classifier directory (no {META_FILE}; train one with `lmforge data train-classifier`)"
            )
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT:
            raise ValueError(f"{meta_path}: format {meta.get('format')!r} is not {FORMAT!r}")
        known = {f.name for f in fields(ClassifierConfig)}
        unknown = sorted(set(meta["config"]) - known)
        if unknown:
            raise ValueError(f"{meta_path}: unknown config fields {unknown} (written by a newer lmforge?)")
        tensors = load_file(str(directory / WEIGHTS_FILE))
        return cls(
            meta["labels"], ClassifierConfig(**meta["config"]), tensors["rows"], tensors["vectors"],
            tensors["weight"], tensors["bias"], meta.get("info"),
        )


# --------------------------------------------------------------------------------------------
# Training and evaluation


class _LazyAdam:
    """Adam that updates only the given rows (and their moments), like torch's SparseAdam: rows a
    batch does not touch keep their state, so a step costs O(touched rows), not O(all rows)."""

    def __init__(self, param: np.ndarray, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.param, self.betas, self.eps = param, betas, eps
        self.m = np.zeros_like(param)
        self.v = np.zeros_like(param)

    def step(self, grad: np.ndarray, lr: float, t: int, rows: np.ndarray | None = None) -> None:
        b1, b2 = self.betas
        index = slice(None) if rows is None else rows
        m = self.m[index] * b1 + (1 - b1) * grad
        v = self.v[index] * b2 + (1 - b2) * grad * grad
        self.m[index], self.v[index] = m, v
        step_size = lr / (1 - b1**t)
        self.param[index] -= step_size * m / (np.sqrt(v / (1 - b2**t)) + self.eps)


def train(
    texts: Sequence[str],
    labels: Sequence[str],
    cfg: ClassifierConfig | None = None,
    label_names: Sequence[str] | None = None,
) -> TextClassifier:
    """Train on ``texts`` with one label each; ``label_names`` fixes the label order (default sorted).

    Mini-batch Adam on the cross-entropy of softmax(W · mean(E[features]) + b), written out in
    numpy (the gradients of a mean of rows and a linear layer are two lines each), so training
    needs no torch and is bit-for-bit reproducible for a given seed.
    """
    cfg = cfg or ClassifierConfig()
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
    names = list(label_names) if label_names is not None else sorted(set(labels))
    index = {name: i for i, name in enumerate(names)}
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise ValueError(f"labels {unknown} are not in label_names {names}")
    if len(set(labels)) < 2:
        raise ValueError(f"training needs examples of at least 2 labels; got only {sorted(set(labels))}")
    y = np.array([index[label] for label in labels], dtype=np.int64)

    features = [featurize(t, cfg) for t in texts]
    counts = np.array([len(f) for f in features], dtype=np.int64)
    all_ids = np.concatenate(features) if counts.sum() else np.zeros(0, dtype=np.int64)
    rows, compact = np.unique(all_ids, return_inverse=True)  # only seen buckets get a row
    compact = compact.reshape(-1)
    starts = np.concatenate([[0], np.cumsum(counts)])

    per_label = np.bincount(y, minlength=len(names)).astype(np.float64)
    class_weight = np.ones(len(names), dtype=np.float32)
    if cfg.balanced:
        class_weight = (per_label.sum() / (len(names) * np.maximum(per_label, 1))).astype(np.float32)

    rng = np.random.default_rng(cfg.seed)
    # fastText's initialization: small uniform embeddings, a zero output layer.
    vectors = rng.uniform(-1.0 / cfg.dim, 1.0 / cfg.dim, size=(len(rows), cfg.dim)).astype(np.float32)
    weight = np.zeros((len(names), cfg.dim), dtype=np.float32)
    bias = np.zeros(len(names), dtype=np.float32)
    optimizers = [_LazyAdam(vectors), _LazyAdam(weight), _LazyAdam(bias)]
    steps_per_epoch = -(-len(texts) // cfg.batch_size)
    total_steps, t, losses = cfg.epochs * steps_per_epoch, 0, []
    for _ in range(cfg.epochs):
        order = rng.permutation(len(texts))
        epoch_loss = 0.0
        for b in range(0, len(order), cfg.batch_size):
            batch = order[b : b + cfg.batch_size]
            n_feat = counts[batch]
            ids = np.concatenate([compact[starts[i] : starts[i + 1]] for i in batch])
            doc_of = np.repeat(np.arange(len(batch)), n_feat)
            denom = np.maximum(n_feat, 1).astype(np.float32)[:, None]
            # Forward: hidden = mean of the rows (reduceat over each document's segment).
            hidden = np.zeros((len(batch), cfg.dim), dtype=np.float32)
            has = n_feat > 0
            if ids.size:
                hidden[has] = np.add.reduceat(vectors[ids], (np.cumsum(n_feat) - n_feat)[has])
            hidden /= denom
            logits = hidden @ weight.T + bias
            logits -= logits.max(axis=1, keepdims=True)
            probs = np.exp(logits)
            probs /= probs.sum(axis=1, keepdims=True)
            target = y[batch]
            w = class_weight[target]
            w_norm = w / w.sum()  # the weighted mean, as torch's CrossEntropyLoss(weight=...) takes it
            picked = probs[np.arange(len(batch)), target]
            epoch_loss += float(-(np.log(np.maximum(picked, 1e-12)) * w_norm).sum()) * len(batch)
            # Backward: d(loss)/d(logits) = (probs - onehot) * weight; then the linear layer and the mean.
            grad_logits = probs
            grad_logits[np.arange(len(batch)), target] -= 1.0
            grad_logits *= w_norm[:, None].astype(np.float32)
            grad_hidden = (grad_logits @ weight) / denom
            t += 1
            lr = cfg.lr * (1.0 - (t - 1) / total_steps)  # linear decay to 0, as fastText does
            optimizers[1].step(grad_logits.T @ hidden, lr, t)
            optimizers[2].step(grad_logits.sum(axis=0), lr, t)
            if ids.size:
                # Each row's gradient is the sum of its documents' hidden gradients: group the
                # (row, document) pairs by row after a sort, then add up each group.
                by_row = np.argsort(ids, kind="stable")
                sorted_ids = ids[by_row]
                first = np.flatnonzero(np.concatenate([[True], sorted_ids[1:] != sorted_ids[:-1]]))
                grad_rows = np.add.reduceat(grad_hidden[doc_of[by_row]], first)
                optimizers[0].step(grad_rows, lr, t, rows=sorted_ids[first])
        losses.append(round(epoch_loss / len(texts), 5))
    info = {
        "train_documents": len(texts),
        "per_label": {name: int(n) for name, n in zip(names, per_label)},
        "feature_rows": int(len(rows)),
        "epoch_losses": losses,
    }
    return TextClassifier(names, cfg, rows, vectors, weight, bias, info)


def split_holdout(labels: Sequence[str], fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) indices, stratified: ``fraction`` of each label's examples held out."""
    if not 0 <= fraction < 1:
        raise ValueError(f"holdout fraction must be in [0, 1); got {fraction}")
    rng = np.random.default_rng(seed)
    labels_arr = np.asarray(labels)
    held: list[np.ndarray] = []
    for label in sorted(set(labels)):
        idx = rng.permutation(np.flatnonzero(labels_arr == label))
        held.append(idx[: int(round(fraction * len(idx)))])
    held_out = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    train_idx = np.setdiff1d(np.arange(len(labels_arr)), held_out)
    return train_idx, held_out


def evaluate(clf: TextClassifier, texts: Sequence[str], labels: Sequence[str]) -> dict:
    """Accuracy, per-label precision/recall/support and the confusion counts on labelled texts."""
    predicted = clf.predict(texts) if texts else []
    per_label = {}
    for name in clf.labels:
        tp = sum(p == name and t == name for p, t in zip(predicted, labels))
        n_pred = sum(p == name for p in predicted)
        n_true = sum(t == name for t in labels)
        per_label[name] = {
            "precision": round(tp / n_pred, 4) if n_pred else None,
            "recall": round(tp / n_true, 4) if n_true else None,
            "support": n_true,
        }
    confusion: dict[str, dict[str, int]] = {}
    for p, t in zip(predicted, labels):
        confusion.setdefault(t, {}).setdefault(p, 0)
        confusion[t][p] += 1
    correct = sum(p == t for p, t in zip(predicted, labels))
    return {
        "documents": len(labels),
        "accuracy": round(correct / len(labels), 4) if labels else None,
        "per_label": per_label,
        "confusion": confusion,
    }
