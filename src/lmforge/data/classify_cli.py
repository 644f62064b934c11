"""``lmforge data train-classifier`` and ``lmforge data train-topics``: train the fastText-style
classifiers that the ``quality_classifier`` and ``topic`` pipeline steps load.

    lmforge data train-classifier --pos wiki/ --pos books.jsonl --neg crawl.jsonl.zst --out runs/quality_clf
    lmforge data train-topics --from-keywords corpus/ --out runs/topic_clf
    lmforge data train-topics labelled.jsonl --label-key topic --out runs/topic_clf

Both hold out a stratified fraction of the examples (``--holdout``), train on the rest, print
the held-out accuracy and write the model directory (``classifier.json`` +
``weights.safetensors``) with a ``metrics.json`` beside them. The model that is written is the
one that was measured (trained without the held-out part).

``train-topics --from-keywords`` is weak supervision: the keyword labeller (``topics.py``)
labels the corpus, only its confident decisions (top score >= ``--min-confidence``, "other"
included) become training examples, and the classifier learns the vocabulary around the
keywords, so it also labels documents that contain none of them.

``register(app)`` adds both commands to the ``lmforge data`` Typer app.
"""

from __future__ import annotations

import collections
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from lmforge.cli_common import console
from lmforge.tokenizer.cli import check_txt_mode

OutOption = Annotated[Path, typer.Option("--out", "-o", help="Classifier directory to write (replaced atomically).")]
TextKey = Annotated[str, typer.Option("--text-key", help="JSON field / parquet column holding the text.")]
TxtMode = Annotated[
    str, typer.Option("--txt-mode", callback=check_txt_mode, help="How .txt files split into documents: paragraph, line, file or chunk.")
]
Epochs = Annotated[int, typer.Option("--epochs", help="Passes over the training examples.")]
Dim = Annotated[int, typer.Option("--dim", help="Embedding width.")]
Buckets = Annotated[int, typer.Option("--buckets", help="Hash buckets for word/n-gram features.")]
WordNgrams = Annotated[int, typer.Option("--word-ngrams", help="Longest word n-gram feature (2 = words + bigrams).")]
CharNgrams = Annotated[
    Optional[str], typer.Option("--char-ngrams", help="Character n-gram lengths as MIN-MAX, e.g. 3-5 (default: off).")
]
Lr = Annotated[float, typer.Option("--lr", help="Peak learning rate (Adam, decayed linearly to 0).")]
Seed = Annotated[int, typer.Option("--seed", help="Seed for the held-out split, initialization and shuffling.")]
Holdout = Annotated[float, typer.Option("--holdout", help="Fraction of each label's examples held out for the accuracy (0 = none).")]
MaxDocs = Annotated[int, typer.Option("--max-docs", help="Read at most this many documents per input group (0 = all).")]


def register(app: typer.Typer) -> None:
    """Add ``train-classifier`` and ``train-topics`` to the ``lmforge data`` app."""
    app.command("train-classifier", help="Train a quality classifier from positive and negative example files.")(train_classifier)
    app.command("train-topics", help="Train a topic classifier from labelled data or by weak supervision from the topic keywords.")(train_topics)


def train_classifier(
    pos: Annotated[list[Path], typer.Option("--pos", help="Positive examples: file or directory, any reader format (repeatable).", show_default=False)],
    neg: Annotated[list[Path], typer.Option("--neg", help="Negative examples: file or directory, any reader format (repeatable).", show_default=False)],
    out: OutOption,
    text_key: TextKey = "text",
    txt_mode: TxtMode = "paragraph",
    epochs: Epochs = 5,
    dim: Dim = 32,
    buckets: Buckets = 2_000_000,
    word_ngrams: WordNgrams = 2,
    char_ngrams: CharNgrams = None,
    lr: Lr = 0.05,
    seed: Seed = 0,
    holdout: Holdout = 0.1,
    max_docs: MaxDocs = 0,
) -> None:
    cfg = _classifier_config(epochs, dim, buckets, word_ngrams, char_ngrams, lr, seed, holdout)
    positives = _read_texts(pos, text_key, txt_mode, max_docs, "--pos")
    negatives = _read_texts(neg, text_key, txt_mode, max_docs, "--neg")
    console.print(f"read {len(positives):,} positive and {len(negatives):,} negative documents")
    texts = positives + negatives
    labels = ["positive"] * len(positives) + ["negative"] * len(negatives)
    _fit_and_report(texts, labels, cfg, holdout, out, {"inputs": {"pos": [str(p) for p in pos], "neg": [str(p) for p in neg]}})


def train_topics(
    out: OutOption,
    inputs: Annotated[Optional[list[Path]], typer.Argument(help="Labelled examples (jsonl/parquet with a label field).", show_default=False)] = None,
    label_key: Annotated[str, typer.Option("--label-key", help="Field holding each labelled example's topic.")] = "label",
    from_keywords: Annotated[
        Optional[list[Path]],
        typer.Option("--from-keywords", help="Unlabelled corpus to label with the topic keywords instead (repeatable).", show_default=False),
    ] = None,
    keywords: Annotated[Optional[Path], typer.Option("--keywords", help="Keyword YAML (default: the shipped topic_keywords.yaml).")] = None,
    min_confidence: Annotated[float, typer.Option("--min-confidence", help="Keyword score a document needs to become an example.")] = 0.6,
    other: Annotated[bool, typer.Option("--other/--no-other", help="Also learn 'other' from documents the keywords confidently call other.")] = True,
    min_per_label: Annotated[int, typer.Option("--min-per-label", help="Labels with fewer examples are left out of training.")] = 10,
    max_per_label: Annotated[int, typer.Option("--max-per-label", help="Keep at most this many examples per label (0 = all), for balance and speed.")] = 0,
    text_key: TextKey = "text",
    txt_mode: TxtMode = "paragraph",
    epochs: Epochs = 5,
    dim: Dim = 32,
    buckets: Buckets = 2_000_000,
    word_ngrams: WordNgrams = 2,
    char_ngrams: CharNgrams = None,
    lr: Lr = 0.05,
    seed: Seed = 0,
    holdout: Holdout = 0.1,
    max_docs: MaxDocs = 0,
) -> None:
    from lmforge.data.document import DataError
    from lmforge.data.readers import read_documents

    if bool(inputs) == bool(from_keywords):
        raise typer.BadParameter("give either labelled INPUTS or --from-keywords CORPUS (not both)")
    if not 0 < min_confidence <= 1:
        raise typer.BadParameter(f"must be in (0, 1]; got {min_confidence}", param_hint="--min-confidence")
    cfg = _classifier_config(epochs, dim, buckets, word_ngrams, char_ngrams, lr, seed, holdout)
    texts: list[str] = []
    labels: list[str] = []
    skipped = 0
    if inputs:
        source = "labelled"
        for doc in read_documents(inputs, text_key=text_key, txt_mode=txt_mode):  # type: ignore[arg-type]
            label = doc.metadata.get(label_key)
            if not isinstance(label, str) or not label.strip():
                where = f"{doc.metadata.get('source', '?')}:{doc.metadata.get('line', '?')}"
                raise DataError(f"{where}: no string '{label_key}' field (choose the field with --label-key)")
            if doc.text.strip():
                texts.append(doc.text)
                labels.append(label.strip())
            if max_docs and len(texts) >= max_docs:
                break
    else:
        from lmforge.data.steps.topics import OTHER, KeywordLabeller

        source = "keywords"
        try:
            labeller = KeywordLabeller.from_yaml(keywords)
        except (OSError, ValueError) as exc:
            raise typer.BadParameter(str(exc), param_hint="--keywords") from None
        for text in _read_texts(from_keywords, text_key, txt_mode, max_docs, "--from-keywords"):  # type: ignore[arg-type]
            label, scores = labeller.label(text, min_confidence)
            if scores[label] >= min_confidence and (other or label != OTHER):
                texts.append(text)
                labels.append(label)
            else:
                skipped += 1
        left_out = "below --min-confidence" + ("" if other else ", or 'other'")
        console.print(f"keyword labels: {len(texts):,} confident documents, {skipped:,} left out ({left_out})")
    texts, labels, dropped = _select_per_label(texts, labels, min_per_label, max_per_label, seed)
    counts = collections.Counter(labels)
    console.print("examples per label: " + ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items())))
    if dropped:
        rare = ", ".join(f"{k} {v}" for k, v in sorted(dropped.items()))
        console.print(f"[yellow]labels left out[/] (fewer than {min_per_label} examples): {rare}")
    if len(counts) < 2:
        raise DataError(f"need examples of at least 2 labels to train; got {dict(counts) or 'none'}")
    extra = {
        "source": source,
        "per_label": dict(sorted(counts.items())),
        "left_out_labels": dropped,
        "not_confident": skipped,
        "min_confidence": min_confidence if source == "keywords" else None,
    }
    _fit_and_report(texts, labels, cfg, holdout, out, extra)


# --------------------------------------------------------------------------------------------
# Helpers


def _classifier_config(
    epochs: int, dim: int, buckets: int, word_ngrams: int, char_ngrams: str | None, lr: float, seed: int, holdout: float
):
    """The training config from the command-line options; bad values fail before any reading."""
    from lmforge.data.steps.classifier import ClassifierConfig

    if not 0 <= holdout < 1:
        raise typer.BadParameter(f"must be in [0, 1); got {holdout}", param_hint="--holdout")
    lo = hi = 0
    if char_ngrams:
        try:
            lo, hi = (int(x) for x in char_ngrams.split("-"))
        except ValueError:
            raise typer.BadParameter(f"expected MIN-MAX such as 3-5; got {char_ngrams!r}", param_hint="--char-ngrams") from None
    try:  # the config's own checks name the field
        return ClassifierConfig(
            buckets=buckets, word_ngrams=word_ngrams, char_ngram_min=lo, char_ngram_max=hi,
            dim=dim, epochs=epochs, lr=lr, seed=seed,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def _read_texts(paths: list[Path], text_key: str, txt_mode: str, max_docs: int, option: str) -> list[str]:
    from lmforge.data.document import DataError
    from lmforge.data.readers import read_documents

    texts = []
    for doc in read_documents(paths, text_key=text_key, txt_mode=txt_mode):  # type: ignore[arg-type]
        if doc.text.strip():
            texts.append(doc.text)
            if max_docs and len(texts) >= max_docs:
                break
    if not texts:
        raise DataError(f"{', '.join(map(str, paths))}: no non-empty documents in {option}")
    return texts


def _select_per_label(texts: list[str], labels: list[str], min_count: int, max_count: int, seed: int):
    """Leave out labels with fewer than ``min_count`` examples; keep a seeded sample of ``max_count``."""
    import numpy as np

    counts = collections.Counter(labels)
    dropped = {label: n for label, n in counts.items() if n < min_count}
    rng = np.random.default_rng(seed)
    keep: list[int] = []
    for label in sorted(set(counts) - set(dropped)):
        idx = [i for i, l in enumerate(labels) if l == label]
        if max_count and len(idx) > max_count:
            idx = sorted(rng.choice(idx, size=max_count, replace=False).tolist())
        keep.extend(idx)
    keep.sort()
    return [texts[i] for i in keep], [labels[i] for i in keep], dropped


def _fit_and_report(texts: list[str], labels: list[str], cfg, holdout: float, out: Path, extra: dict) -> None:
    from lmforge.data.steps.classifier import evaluate, split_holdout, train
    from lmforge.io import write_json_atomic

    train_idx, held_idx = split_holdout(labels, holdout, cfg.seed)
    start = time.perf_counter()
    clf = train([texts[i] for i in train_idx], [labels[i] for i in train_idx], cfg)
    seconds = time.perf_counter() - start
    console.print(
        f"trained on {len(train_idx):,} documents in {seconds:.1f}s ({cfg.epochs} epochs, "
        f"{clf.info['feature_rows']:,} feature rows, final loss {clf.info['epoch_losses'][-1]:.4f})"
    )
    metrics = {**extra, "train_documents": int(len(train_idx)), "train_seconds": round(seconds, 2), "training": dict(clf.info)}
    if len(held_idx):
        held = evaluate(clf, [texts[i] for i in held_idx], [labels[i] for i in held_idx])
        metrics["holdout"] = held
        per_label = ", ".join(
            f"{name} P {m['precision'] if m['precision'] is not None else '-'} R {m['recall'] if m['recall'] is not None else '-'}"
            for name, m in held["per_label"].items()
        )
        console.print(f"held-out accuracy [bold]{held['accuracy']:.4f}[/] on {held['documents']:,} documents ({per_label})")
    else:
        console.print("no held-out documents (--holdout 0): accuracy not measured")
    if "holdout" in metrics:  # kept with the model too, so the step's users can see how good it was
        clf.info["holdout_accuracy"] = metrics["holdout"]["accuracy"]
    clf.save(out)
    write_json_atomic(out / "metrics.json", metrics)
    console.print(f"[green]wrote[/] {out} (classifier.json, weights.safetensors, metrics.json)")
