"""Topic labels (math, physics, ..., literature, other) for mixtures, curricula and topic-based recall.

Two labellers, both CPU-only and shipped with lmforge:

* **Keywords** (the default): ``topic_keywords.yaml`` lists Chinese and English keywords per
  label. Chinese keywords match as substrings, English ones as whole words or phrases (regular
  plurals included), case-insensitively. A hit counts as many words as the keyword has (one per
  Chinese character, as ``words()`` counts them), so evidence is comparable across languages.
  A label's score is its share of the evidence *plus* an "other" mass that grows with length:

      score[label] = hits[label] / (sum(hits) + neutral_density * max(words, min_words))
      score[other] = neutral_density * max(words, min_words) / (same denominator)

  so ``neutral_density`` is the keyword coverage at which a label and "other" are equally
  likely: a long document needs many hits, a short question a few.
* **A trained classifier** (``model:``, from ``lmforge data train-topics``; see
  ``classifier.py``): generalizes beyond the keyword lists, for example when trained by weak
  supervision on documents the keywords label confidently.

When both are present the classifier decides; the keywords are the fallback where the
classifier is unsure (its top probability below ``min_confidence``) and they are confident.
The document gets ``metadata["topic"]`` (a label, or "other" when nothing reaches
``min_confidence``) and ``metadata["topic_scores"]`` (the deciding labeller's top few scores,
rounded). ``keep: [math, physics]`` turns the step into a filter (drop reason ``topic_<label>``),
as in YuLan-Mini's topic-based recall. Pipeline YAML::

    - type: topic
      min_confidence: 0.5
      # model: runs/topic_clf          # optional trained classifier
      # keep: [math, computer_science] # optional filter

From Python::

    labeller = KeywordLabeller.from_yaml()          # the shipped keywords
    labeller.label("求解方程 x^2 = 4 的实数根")       # ('math', {'math': 0.83, ..., 'other': 0.17})
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import yaml

from lmforge.data.document import Document
from lmforge.data.pipeline.base import Drop, Step, StepContext, drop, register_step
from lmforge.data.steps.text import CJK_RE, words

OTHER = "other"
KEYWORDS_FILE = "topic_keywords.yaml"


def load_keywords(path: str | Path | None = None) -> dict[str, dict[str, list[str]]]:
    """``{label: {"zh": [...], "en": [...]}}`` from a YAML file (default: the shipped one)."""
    if path is None:
        text = resources.files("lmforge.data.steps").joinpath(KEYWORDS_FILE).read_text(encoding="utf-8")
        where = KEYWORDS_FILE
    else:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such keyword file")
        text, where = path.read_text(encoding="utf-8"), str(path)
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{where}: invalid YAML: {exc}") from None
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"{where}: expected a mapping of label -> {{zh: [...], en: [...]}}")
    out: dict[str, dict[str, list[str]]] = {}
    for label, entry in raw.items():
        if not isinstance(label, str) or label == OTHER:
            raise ValueError(f"{where}: label {label!r} is not allowed ('{OTHER}' is the fallback, not a keyword label)")
        if not isinstance(entry, dict) or set(entry) - {"zh", "en"}:
            raise ValueError(f"{where}: {label}: expected a mapping with 'zh' and/or 'en' keyword lists; got {entry!r}")
        lists = {}
        for lang in ("zh", "en"):
            items = entry.get(lang) or []
            if not isinstance(items, list) or not all(isinstance(k, str) and k.strip() for k in items):
                raise ValueError(f"{where}: {label}.{lang} must be a list of non-empty strings")
            lists[lang] = [k.strip() for k in items]
        out[label] = lists
    return out


def _plurals(phrase: tuple[str, ...]) -> list[tuple[str, ...]]:
    """The phrase and its regular English plurals (last word + s / es / y -> ies)."""
    *head, last = phrase
    forms = {last, last + "s", last + "es"}
    if last.endswith("y") and len(last) > 2 and last[-2] not in "aeiou":
        forms.add(last[:-1] + "ies")
    return [(*head, form) for form in sorted(forms)]


class KeywordLabeller:
    """Keyword evidence per label; ``scores(text)`` and ``label(text)`` (see the module docstring)."""

    def __init__(
        self,
        keywords: dict[str, dict[str, list[str]]],
        labels: list[str] | None = None,
        neutral_density: float = 0.02,
        min_words: int = 100,
    ) -> None:
        if not neutral_density > 0 or min_words < 1:
            raise ValueError(f"neutral_density must be > 0 and min_words >= 1; got {neutral_density}, {min_words}")
        unknown = sorted(set(labels or []) - set(keywords) - {OTHER})
        if unknown:
            raise ValueError(f"labels {unknown} have no keywords (keyword labels: {', '.join(keywords)})")
        self.labels = [label for label in (labels or list(keywords)) if label != OTHER]
        self.neutral_density, self.min_words = neutral_density, min_words
        label_index = {label: i for i, label in enumerate(self.labels)}
        # Chinese: one alternation, longest first (so 化学方程式 wins over 方程); the regex engine
        # skips quickly over characters no keyword starts with.
        self._zh_labels: dict[str, list[int]] = {}
        # English: phrase (tuple of words) -> labels, looked up over the text's word sequence.
        self._en_labels: dict[tuple[str, ...], list[int]] = {}
        for label, lists in keywords.items():
            if label not in label_index:
                continue
            i = label_index[label]
            for kw in lists["zh"]:
                self._zh_labels.setdefault(kw, [])
                if i not in self._zh_labels[kw]:
                    self._zh_labels[kw].append(i)
            for kw in lists["en"]:
                phrase = tuple(words(kw))
                if not phrase or (len(phrase) == 1 and len(phrase[0]) < 2):
                    raise ValueError(f"English keyword {kw!r} ({label}) is too short to be discriminative")
                for form in _plurals(phrase):
                    self._en_labels.setdefault(form, [])
                    if i not in self._en_labels[form]:
                        self._en_labels[form].append(i)
        self._zh_weight = {kw: float(len(words(kw)) or len(kw)) for kw in self._zh_labels}
        zh = sorted(self._zh_labels, key=lambda k: (-len(k), k))
        self._zh_re = re.compile("|".join(map(re.escape, zh))) if zh else None
        self._en_first = {phrase[0] for phrase in self._en_labels}
        self._en_lengths = sorted({len(p) for p in self._en_labels}, reverse=True)

    @classmethod
    def from_yaml(cls, path: str | Path | None = None, **kwargs) -> KeywordLabeller:
        return cls(load_keywords(path), **kwargs)

    def hits(self, text: str, tokens: list[str] | None = None) -> np.ndarray:
        """Keyword evidence per label (matched keyword words; float array in ``self.labels`` order)."""
        hits = np.zeros(len(self.labels))
        if self._zh_re is not None and CJK_RE.search(text):
            for m in self._zh_re.finditer(text):
                kw = m.group()
                for i in self._zh_labels[kw]:
                    hits[i] += self._zh_weight[kw]
        tokens = words(text) if tokens is None else tokens
        i, n = 0, len(tokens)
        while i < n:
            step = 1
            if tokens[i] in self._en_first:
                for length in self._en_lengths:  # longest phrase first; a match consumes its words
                    if i + length > n:
                        continue
                    labels = self._en_labels.get(tuple(tokens[i : i + length]))
                    if labels:
                        for j in labels:
                            hits[j] += length
                        step = length
                        break
            i += step
        return hits

    def scores(self, text: str) -> dict[str, float]:
        """label -> score for every label and "other"; they sum to 1."""
        tokens = words(text)
        hits = self.hits(text, tokens)
        other = self.neutral_density * max(len(tokens), self.min_words)
        total = hits.sum() + other
        out = {label: float(h / total) for label, h in zip(self.labels, hits)}
        out[OTHER] = float(other / total)
        return out

    def label(self, text: str, min_confidence: float = 0.5) -> tuple[str, dict[str, float]]:
        """(the top label, or "other" below ``min_confidence``; all scores)."""
        scores = self.scores(text)
        top = max(scores, key=scores.__getitem__)
        return (top if scores[top] >= min_confidence else OTHER), scores


def top_scores(scores: dict[str, float], k: int, digits: int = 3) -> dict[str, float]:
    """The ``k`` highest scores, rounded, without zeros (metadata stays small and readable)."""
    best = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
    return {label: round(score, digits) for label, score in best if round(score, digits) > 0}


# --------------------------------------------------------------------------------------------
# The pipeline step


@dataclass
class TopicConfig:
    # The label set; documents get one of these or "other". None: every label of the keyword
    # file (or, with keywords off, of the classifier).
    labels: list[str] | None = None
    # Use the keyword labeller (alone, or as the classifier's fallback).
    use_keywords: bool = True
    # Keyword YAML (same layout as the shipped topic_keywords.yaml); None: the shipped one.
    keywords: str | None = None
    # A classifier directory from `lmforge data train-topics`; None: keywords only.
    model: str | None = None
    # The top score a label needs; below it the document is "other". 0.5: the label must
    # outweigh every alternative (other labels and "other") together.
    min_confidence: float = 0.5
    # Keyword coverage (keyword words per document word) at which a label and "other" weigh the
    # same; 2% ~ a topical paragraph of 100 words mentioning two topic terms.
    neutral_density: float = 0.02
    # Shorter documents count as this many words: with the default density a short text needs
    # two keyword words for a label (2 vs 0.02 * 100), so one incidental keyword is not decisive.
    min_words: int = 100
    # How many of the top scores metadata["topic_scores"] keeps.
    top_k: int = 3
    # Filter: keep only documents with these topics ("other" allowed); None keeps everything.
    keep: list[str] | None = None

    def __post_init__(self) -> None:
        if not 0 < self.min_confidence <= 1:
            raise ValueError(f"min_confidence must be in (0, 1]; got {self.min_confidence}")
        if not self.neutral_density > 0:
            raise ValueError(f"neutral_density must be > 0; got {self.neutral_density}")
        if self.min_words < 1:
            raise ValueError(f"min_words must be >= 1; got {self.min_words}")
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1; got {self.top_k}")
        if not self.use_keywords and not self.model:
            raise ValueError("use_keywords is false and no model is given: the topic step needs one of them")
        if self.keep is not None and not self.keep:
            raise ValueError("keep must list at least one label (or be left out to keep everything)")


@register_step("topic")
class Topic(Step):
    resource_fields = ("model", "keywords")
    """Writes metadata["topic"] and ["topic_scores"]; optional ``keep`` filter (reason topic_<label>)."""

    Config = TopicConfig

    def setup(self, ctx: StepContext) -> None:
        from lmforge.data.steps.classifier import TextClassifier

        cfg = self.config
        self.classifier = TextClassifier.load(ctx.resolve(cfg.model)) if cfg.model else None
        self.keywords = None
        if cfg.use_keywords:
            keywords = load_keywords(ctx.resolve(cfg.keywords) if cfg.keywords else None)
            labels = cfg.labels
            if labels is None and self.classifier is not None:  # the fallback speaks the classifier's labels
                labels = [label for label in self.classifier.labels if label in keywords]
            self.keywords = KeywordLabeller(keywords, labels, cfg.neutral_density, cfg.min_words)
        if cfg.labels:
            self.labels = [l for l in cfg.labels if l != OTHER]
        elif self.classifier is not None:
            self.labels = [l for l in self.classifier.labels if l != OTHER]
        else:
            self.labels = self.keywords.labels  # type: ignore[union-attr]
        if self.classifier is not None:
            missing = sorted(set(self.labels) - set(self.classifier.labels))
            if missing:
                raise ValueError(f"labels {missing} are not labels of the classifier {cfg.model} ({', '.join(self.classifier.labels)})")
            # Probabilities of the configured labels (and "other" when the classifier has it).
            self._columns = [i for i, l in enumerate(self.classifier.labels) if l in self.labels or l == OTHER]
        unknown = sorted(set(cfg.keep or []) - set(self.labels) - {OTHER})
        if unknown:
            raise ValueError(f"keep: {unknown} are not in the label set ({', '.join(self.labels)}, other)")
        self._keep = set(cfg.keep) if cfg.keep else None

    def process_batch(self, docs: list[Document]) -> list[Document | Drop]:
        cfg = self.config
        probs = self.classifier.predict_proba([d.text for d in docs]) if self.classifier is not None else None
        out: list[Document | Drop] = []
        for n, doc in enumerate(docs):
            label, scores, decided = OTHER, {OTHER: 1.0}, False
            if probs is not None:
                scores = {self.classifier.labels[i]: float(probs[n, i]) for i in self._columns}  # type: ignore[union-attr]
                top = max(scores, key=scores.__getitem__)
                decided = scores[top] >= cfg.min_confidence
                label = top if decided else OTHER
            if not decided and self.keywords is not None:
                # The keywords alone, or the fallback where the classifier is unsure.
                kw_label, kw_scores = self.keywords.label(doc.text, cfg.min_confidence)
                if probs is None:
                    label, scores = kw_label, kw_scores
                elif kw_label != OTHER:
                    label, scores = kw_label, kw_scores
                    self.count("keyword_fallback")
            doc.metadata["topic"] = label
            doc.metadata["topic_scores"] = top_scores(scores, cfg.top_k)
            self.count(f"labelled_{label}")
            if self._keep is not None and label not in self._keep:
                out.append(drop(f"topic_{label}"))
            else:
                out.append(doc)
        return out
