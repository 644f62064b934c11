"""Model-based scores and topic labels: the fastText-style classifier, the ``perplexity``,
``quality_classifier`` and ``topic`` steps, and ``lmforge data train-classifier / train-topics``.

Tests on the real samples in ../shared/data print what they measured (held-out accuracy, label
distributions per source) so a run shows the numbers, not only pass/fail.
"""

from __future__ import annotations

import collections
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from lmforge.data.classify_cli import register
from lmforge.data.document import DataError, Document
from lmforge.data.pipeline.base import Drop, StepContext
from lmforge.data.steps.classifier import ClassifierConfig, TextClassifier, evaluate, featurize, split_holdout, train
from lmforge.data.steps.scoring import (
    Perplexity,
    PerplexityConfig,
    QualityClassifier,
    QualityClassifierConfig,
    ReferenceLM,
)
from lmforge.data.steps.topics import OTHER, KeywordLabeller, Topic, TopicConfig, load_keywords

FAST = ClassifierConfig(dim=16, epochs=5, seed=0)


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    # The perplexity step sets torch's thread count for its worker process; give it back.
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _ctx(tmp_path: Path) -> StepContext:
    return StepContext(base_dir=tmp_path, work_dir=tmp_path / "work")


def _chunks(path: Path, size: int, limit: int | None = None) -> list[str]:
    """Consecutive pieces of about ``size`` characters, cut at line ends."""
    pieces, current = [], ""
    for line in path.read_text(encoding="utf-8").splitlines():
        current = f"{current}\n{line}" if current else line
        if len(current) >= size:
            pieces.append(current.strip())
            current = ""
            if limit and len(pieces) >= limit:
                break
    return [p for p in pieces if p]


def _shuffle_words(text: str, rng: random.Random) -> str:
    """Same words, random order: what spam generators and broken extraction produce."""
    is_chinese = sum("\u4e00" <= c <= "\u9fff" for c in text) > len(text) / 4
    tokens = [c for c in text if not c.isspace()] if is_chinese else text.split()
    rng.shuffle(tokens)
    return ("" if is_chinese else " ").join(tokens)


def _gsm8k_questions(shared_data: Path, n: int) -> list[str]:
    with open(shared_data / "eval" / "gsm8k_train.jsonl", encoding="utf-8") as f:
        return [json.loads(line)["question"] for _, line in zip(range(n), f)]


# --------------------------------------------------------------------------------------------
# The classifier


def _toy_task(n: int, seed: int) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    sport = "football goal match team coach league 比赛 球队 进球 冠军".split()
    cook = "recipe flour oven bake sugar butter 面粉 烤箱 糖 黄油".split()
    shared = "the a and of today we 今天 我们 非常 一个".split()
    texts, labels = [], []
    for i in range(n):
        label = "sport" if i % 2 else "cooking"
        vocab = sport if label == "sport" else cook
        texts.append(" ".join(rng.choice(vocab) if rng.random() < 0.4 else rng.choice(shared) for _ in range(20)))
        labels.append(label)
    return texts, labels


def test_classifier_learns_a_separable_toy_task():
    texts, labels = _toy_task(400, seed=1)
    train_idx, held = split_holdout(labels, 0.25, seed=0)
    assert len(held) == 100 and not set(train_idx) & set(held)
    clf = train([texts[i] for i in train_idx], [labels[i] for i in train_idx], FAST)
    result = evaluate(clf, [texts[i] for i in held], [labels[i] for i in held])
    print(f"toy task held-out accuracy {result['accuracy']}")
    assert result["accuracy"] == 1.0
    probs = clf.predict_proba(["football coach team 比赛", "oven flour 面粉 烤箱", "", "unseen words only"])
    assert probs.shape == (4, 2) and np.allclose(probs.sum(axis=1), 1.0)
    assert clf.predict(["football coach team 比赛", "oven flour 面粉 烤箱"]) == ["sport", "cooking"]
    # A document with no known feature falls back to the prior (balanced: about one half).
    assert abs(probs[2, 0] - 0.5) < 0.1 and abs(probs[3, 0] - 0.5) < 0.1


def test_features_hash_words_bigrams_and_char_ngrams_stably():
    cfg = ClassifierConfig(buckets=1000)
    ids = featurize("Hello world 你好", cfg)
    assert len(ids) == 4 + 3  # words: hello, world, 你, 好; bigrams: 3
    assert ids.min() >= 0 and ids.max() < 1000
    assert np.array_equal(ids, featurize("HELLO  world, 你好!", cfg))  # lowercased, punctuation ignored
    with_chars = featurize("Hello world 你好", ClassifierConfig(buckets=1000, char_ngram_min=3, char_ngram_max=4))
    assert len(with_chars) > len(ids)
    assert featurize("", cfg).size == 0
    with pytest.raises(ValueError, match="char_ngram_min"):
        ClassifierConfig(char_ngram_min=3)
    with pytest.raises(ValueError, match="dim"):
        ClassifierConfig(dim=0)


def test_classifier_training_is_deterministic_and_save_load_round_trips(tmp_path):
    texts, labels = _toy_task(200, seed=2)
    a = train(texts, labels, FAST)
    b = train(texts, labels, FAST)
    for name in ("rows", "vectors", "weight", "bias"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    other_seed = train(texts, labels, ClassifierConfig(dim=16, epochs=5, seed=1))
    assert not np.array_equal(a.vectors, other_seed.vectors)

    probe = texts[:20] + ["", "完全没见过的文字"]
    a.save(tmp_path / "clf")
    loaded = TextClassifier.load(tmp_path / "clf")
    assert loaded.labels == a.labels and loaded.config == a.config
    assert np.array_equal(loaded.predict_proba(probe), a.predict_proba(probe))
    meta = json.loads((tmp_path / "clf" / "classifier.json").read_text())
    assert meta["format"] == "lmforge-text-classifier/1" and meta["info"]["train_documents"] == 200
    a.save(tmp_path / "clf")  # replacing an existing directory works and leaves no temporary siblings
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clf"]
    with pytest.raises(FileNotFoundError, match="classifier.json"):
        TextClassifier.load(tmp_path)


def test_classifier_on_real_text(shared_data):
    rng = random.Random(0)
    pretrain = shared_data / "pretrain"
    medical = _chunks(pretrain / "zh_medical.txt", 300, limit=240)
    history = _chunks(pretrain / "en_history.txt", 400)
    # Positives: real prose. Negatives: *other* chunks of the same books with their words shuffled,
    # so the vocabulary is the same and only word order (bigrams) tells them apart.
    pos = medical[::2] + history[::2]
    neg = [_shuffle_words(t, rng) for t in medical[1::2] + history[1::2]]
    texts, labels = pos + neg, ["positive"] * len(pos) + ["negative"] * len(neg)
    train_idx, held = split_holdout(labels, 0.25, seed=0)
    clf = train([texts[i] for i in train_idx], [labels[i] for i in train_idx], FAST)
    garbled = evaluate(clf, [texts[i] for i in held], [labels[i] for i in held])
    print(f"\nprose vs shuffled words ({len(texts)} docs): held-out accuracy {garbled['accuracy']}, {garbled['per_label']}")
    assert garbled["accuracy"] >= 0.85

    shakespeare = _chunks(pretrain / "en_shakespeare.txt", 400, limit=len(history) * 2)
    texts, labels = history + shakespeare, ["history"] * len(history) + ["shakespeare"] * len(shakespeare)
    train_idx, held = split_holdout(labels, 0.3, seed=0)
    clf = train([texts[i] for i in train_idx], [labels[i] for i in train_idx], FAST)
    style = evaluate(clf, [texts[i] for i in held], [labels[i] for i in held])
    print(f"history vs shakespeare ({len(texts)} docs): held-out accuracy {style['accuracy']}")
    assert style["accuracy"] >= 0.95


def test_quality_classifier_step_scores_and_filters(tmp_path):
    texts, labels = _toy_task(200, seed=3)
    train(texts, ["positive" if l == "sport" else "negative" for l in labels], FAST).save(tmp_path / "q")
    step = QualityClassifier(QualityClassifierConfig(model="q", min_score=0.5))
    step.setup(_ctx(tmp_path))  # the model path resolves against the pipeline's directory
    docs = [Document("a", "football match team goal 比赛"), Document("b", "oven butter sugar 面粉")]
    out = step.process_batch(docs)
    assert isinstance(out[0], Document) and out[0].metadata["quality_score"] > 0.5
    assert out[1] == Drop("low_quality_score") and docs[1].metadata["quality_score"] < 0.5
    with pytest.raises(ValueError, match="positive_label|not one of"):
        QualityClassifier(QualityClassifierConfig(model="q", positive_label="good")).setup(_ctx(tmp_path))
    with pytest.raises(ValueError, match="model is required"):
        QualityClassifierConfig()


# --------------------------------------------------------------------------------------------
# Perplexity

REPEATED = "The cat sat on the mat. " * 12
TRAIN_TEXT = "\n".join(
    [REPEATED, "传染病是指由病原微生物感染人体后产生的有传染性的疾病。" * 4, "The history of the Republican party after the Civil War."] * 3
)


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory) -> Path:
    """A run directory holding one lmforge checkpoint of a tiny model, briefly trained on REPEATED."""
    import torch

    from lmforge.model import ModelConfig, Transformer
    from lmforge.model.hf import save_pretrained
    from lmforge.tokenizer.train import TokenizerConfig, load_tokenizer, train_tokenizer
    from lmforge.train.checkpoint import copy_tokenizer_files

    root = tmp_path_factory.mktemp("ppl")
    tok_dir = train_tokenizer([TRAIN_TEXT] * 5, root / "tok", TokenizerConfig(vocab_size=300, num_reserved_tokens=0), show_progress=False)
    tok = load_tokenizer(tok_dir)
    cfg = ModelConfig(
        vocab_size=tok.get_vocab_size(), d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=64,
        max_seq_len=256, tie_embeddings=True, eos_token_id=0, pad_token_id=0, bos_token_id=None,
    )
    torch.manual_seed(0)
    model = Transformer(cfg)
    ids = torch.tensor([[0] + tok.encode(REPEATED).ids])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(12):  # a few steps: enough for the model to expect this sentence
        logits = model(ids[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    ckpt = root / "run" / "checkpoints" / "step_00000025"
    save_pretrained(model.eval(), ckpt)
    copy_tokenizer_files(tok_dir, ckpt)
    (ckpt / "lmforge.json").write_text("{}")  # the trainer's completion mark
    return root / "run"


def test_perplexity_matches_a_direct_transformers_computation(tiny_lm):
    import torch
    from transformers import AutoModelForCausalLM

    from lmforge.tokenizer.train import load_tokenizer

    ckpt = tiny_lm / "checkpoints" / "step_00000025"
    docs = [REPEATED, "传染病的诊断和治疗。", "Completely different words here: zebra quantum 42!", "x", "", "史" * 3]
    lm = ReferenceLM.load(tiny_lm)  # a run directory resolves to its latest checkpoint
    assert lm.is_lmforge and lm.context_token == 0  # no bos: eos starts a document, as in training
    scores = lm.score(docs, max_tokens=512)
    one_by_one = lm.score(docs, max_tokens=512, batch_tokens=1)  # one document per forward pass
    hf = AutoModelForCausalLM.from_pretrained(ckpt, local_files_only=True).eval()
    tok = load_tokenizer(ckpt)
    for text, s, single in zip(docs, scores, one_by_one):
        ids = tok.encode(text, add_special_tokens=False).ids
        if not text:
            assert s.tokens == 0 and math.isnan(s.bpb)
            continue
        with torch.no_grad():
            x = torch.tensor([[0] + ids])
            loss = float(hf(input_ids=x, labels=x).loss)  # mean over the len(ids) predicted tokens
        assert s.tokens == len(ids) and s.bytes == len(text.encode("utf-8"))
        assert s.nll == pytest.approx(loss * len(ids), rel=1e-4)
        assert s.ppl == pytest.approx(math.exp(loss), rel=1e-4)
        assert s.bpb == pytest.approx(loss * len(ids) / math.log(2) / len(text.encode("utf-8")), rel=1e-4)
        assert single.nll == pytest.approx(s.nll, rel=1e-5)  # padding in a batch changes nothing

    # A causal LM lmforge has no architecture for (GPT-2 here) goes through transformers.
    from transformers import GPT2Config, GPT2LMHeadModel

    from lmforge.train.checkpoint import copy_tokenizer_files

    gpt2_dir = tiny_lm.parent / "gpt2"
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=tok.get_vocab_size(), n_positions=256, n_embd=32, n_layer=1, n_head=2, bos_token_id=0, eos_token_id=0)).save_pretrained(gpt2_dir)
    copy_tokenizer_files(ckpt, gpt2_dir)
    gpt2 = ReferenceLM.load(gpt2_dir)
    assert not gpt2.is_lmforge and gpt2.context_token == 0
    with torch.no_grad():
        x = torch.tensor([[0] + tok.encode(docs[1], add_special_tokens=False).ids])
        expected = float(gpt2.model(input_ids=x, labels=x).loss) * (x.shape[1] - 1)
    assert gpt2.score(docs[:3])[1].nll == pytest.approx(expected, rel=1e-4)

    # Truncation: only the first max_tokens tokens, and the bytes they cover, are scored.
    cut = lm.score([REPEATED], max_tokens=8)[0]
    assert cut.tokens == 8 and 0 < cut.bytes < len(REPEATED.encode())
    # Without a context token the first token is only context: one token fewer, its bytes too.
    bare = ReferenceLM.load(ckpt, context="none").score([REPEATED])[0]
    assert bare.tokens == scores[0].tokens - 1 and bare.bytes < scores[0].bytes


def test_perplexity_step_writes_metadata_and_filters(tiny_lm, tmp_path):
    rng = random.Random(0)
    noise = "".join(rng.choice("qwxzjkvbp%$#@!") for _ in range(200))
    cfg = dict(model=str(tiny_lm), max_tokens=128)
    step = Perplexity(PerplexityConfig(**cfg))
    step.setup(_ctx(tmp_path))
    import torch

    assert torch.get_num_threads() == 1  # one thread per worker, the default
    docs = [Document("rep", REPEATED), Document("noise", noise), Document("empty", "")]
    out = step.process_batch(docs)
    rep, noisy = out[0].metadata, out[1].metadata
    print(f"\nrepeated text: ppl {rep['ppl']} bpb {rep['bpb']}; noise: ppl {noisy['ppl']} bpb {noisy['bpb']}")
    assert rep["bpb"] < noisy["bpb"] and rep["ppl"] < noisy["ppl"]  # the trained text is expected
    assert "ppl" not in out[2].metadata and step.counters["unscored"] == 1

    middle = (rep["bpb"] + noisy["bpb"]) / 2
    high = Perplexity(PerplexityConfig(**cfg, max_bpb=middle, prefix="ref_"))
    high.setup(_ctx(tmp_path))
    out = high.process_batch([Document("rep", REPEATED), Document("noise", noise)])
    assert isinstance(out[0], Document) and "ref_bpb" in out[0].metadata and out[1] == Drop("high_perplexity")
    low = Perplexity(PerplexityConfig(**cfg, min_bpb=middle))
    low.setup(_ctx(tmp_path))
    out = low.process_batch([Document("rep", REPEATED), Document("noise", noise)])
    assert out[0] == Drop("low_perplexity") and isinstance(out[1], Document)

    with pytest.raises(ValueError, match="min_bpb"):
        PerplexityConfig(model="m", min_bpb=2.0, max_bpb=1.0)
    with pytest.raises(ValueError, match="model is required"):
        PerplexityConfig()
    with pytest.raises(FileNotFoundError):
        Perplexity(PerplexityConfig(model="nowhere")).setup(_ctx(tmp_path))


# --------------------------------------------------------------------------------------------
# Topics


def test_keyword_labeller_matches_words_phrases_and_chinese_substrings():
    labeller = KeywordLabeller(
        {"biology": {"zh": ["细胞"], "en": ["cell", "natural selection"]}, "law": {"zh": ["法院"], "en": ["court"]}},
        min_words=1,
    )
    assert labeller.hits("Cells divide. An excellent cell!", None).tolist() == [2.0, 0.0]  # plural yes, 'excellent' no
    assert labeller.hits("natural selection in 细胞 and the courts of 法院", None).tolist() == [4.0, 3.0]
    label, scores = labeller.label("The court ruled. The court adjourned.")
    assert label == "law" and scores["law"] > 0.5 and math.isclose(sum(scores.values()), 1.0)
    assert labeller.label("nothing relevant at all")[0] == OTHER
    only_law = KeywordLabeller(load_keywords(), labels=["law"])
    assert only_law.labels == ["law"]
    with pytest.raises(ValueError, match="no keywords"):
        KeywordLabeller(load_keywords(), labels=["astrology"])


def test_shipped_keywords_cover_the_default_labels():
    keywords = load_keywords()
    expected = {"math", "physics", "chemistry", "biology", "computer_science", "medicine", "history", "law", "economics", "literature"}
    assert set(keywords) == expected
    for label, lists in keywords.items():
        assert len(lists["zh"]) >= 30 and len(lists["en"]) >= 30, label
        assert len(set(lists["zh"])) == len(lists["zh"]) and len(set(lists["en"])) == len(lists["en"]), f"{label}: duplicates"


def test_keyword_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "kw.yaml"
    bad.write_text("math: [equation]\n")
    with pytest.raises(ValueError, match="kw.yaml: math"):
        load_keywords(bad)
    bad.write_text("other: {en: [thing]}\n")
    with pytest.raises(ValueError, match="fallback"):
        load_keywords(bad)


def test_keyword_labels_on_real_sources(shared_data):
    labeller = KeywordLabeller.from_yaml()
    sources = {
        "zh_medical": (_chunks(shared_data / "pretrain" / "zh_medical.txt", 1000), "medicine", 0.8),
        "en_history": (_chunks(shared_data / "pretrain" / "en_history.txt", 1500), "history", 0.5),
        "gsm8k": (_gsm8k_questions(shared_data, 1000), "math", 0.7),
        "zh_novel": (_chunks(shared_data / "pretrain" / "zh_novel.txt", 1000, limit=100), OTHER, 0.9),
    }
    print()
    for name, (docs, expected, share) in sources.items():
        counts = collections.Counter(labeller.label(d)[0] for d in docs)
        print(f"{name:11s} {len(docs):5d} docs: {dict(counts.most_common())}")
        assert counts.most_common(1)[0][0] == expected
        assert counts[expected] / len(docs) >= share


def test_topic_step_labels_counts_and_keeps(tmp_path):
    docs = [
        Document("m", "We solve the quadratic equation and prove the theorem about the integral of a polynomial."),
        Document("h", "秦朝统一六国后，皇帝建立了中央集权的王朝，这段历史影响了后来的朝代。"),
        Document("o", "The weather was nice and we walked to the park with our dog."),
    ]
    step = Topic(TopicConfig(keep=["math", OTHER], top_k=2))
    step.setup(_ctx(tmp_path))
    out = step.process_batch(docs)
    assert [d.metadata["topic"] for d in docs] == ["math", "history", OTHER]
    assert isinstance(out[0], Document) and out[1] == Drop("topic_history") and isinstance(out[2], Document)
    assert len(docs[0].metadata["topic_scores"]) <= 2 and docs[0].metadata["topic_scores"]["math"] > 0.5
    assert docs[2].metadata["topic_scores"] == {OTHER: 1.0}
    assert step.counters == {"labelled_math": 1, "labelled_history": 1, "labelled_other": 1}
    json.dumps(docs[0].metadata)  # metadata stays JSON-serializable
    with pytest.raises(ValueError, match="keep"):
        Topic(TopicConfig(keep=["astrology"])).setup(_ctx(tmp_path))
    with pytest.raises(ValueError, match="min_confidence"):
        TopicConfig(min_confidence=0)


def test_topic_step_with_a_classifier_falls_back_to_confident_keywords(tmp_path):
    texts, labels = _toy_task(200, seed=6)
    names = {"sport": "history", "cooking": "math"}  # toy vocabularies standing in for two topics
    train(texts, [names[l] for l in labels], FAST).save(tmp_path / "clf")
    step = Topic(TopicConfig(model="clf", min_confidence=0.6))
    step.setup(_ctx(tmp_path))
    assert step.labels == ["history", "math"]
    docs = [
        Document("known", "football coach team goal match league"),  # the classifier is sure
        Document("unknown", "Solve quadratic equations to prove theorems about integrals."),  # no word it knows
        Document("neither", "Nothing either labeller knows about."),
    ]
    step.process_batch(docs)
    assert [d.metadata["topic"] for d in docs] == ["history", "math", OTHER]
    assert step.counters["keyword_fallback"] == 1
    with pytest.raises(ValueError, match="not labels of the classifier"):
        Topic(TopicConfig(model="clf", labels=["law"])).setup(_ctx(tmp_path))


def _invoke(args: list) -> "typer.testing.Result":
    app = typer.Typer()

    @app.callback()
    def _data() -> None:  # keeps the commands named subcommands, as in `lmforge data`
        pass

    register(app)
    return CliRunner().invoke(app, [str(a) for a in args])


def test_train_topics_from_keywords_generalizes_the_keywords(shared_data, tmp_path):
    pretrain = shared_data / "pretrain"
    sources = {
        "medical": _chunks(pretrain / "zh_medical.txt", 600, limit=160),
        "history": _chunks(pretrain / "en_history.txt", 500),
        "gsm8k": _gsm8k_questions(shared_data, 400),
        "shakespeare": _chunks(pretrain / "en_shakespeare.txt", 600, limit=160),
    }
    corpus, evaluation = tmp_path / "corpus.jsonl", []
    with open(corpus, "w", encoding="utf-8") as f:
        for name, docs in sources.items():
            split = int(len(docs) * 0.75)  # the rest is never seen by the trainer
            for text in docs[:split]:
                f.write(json.dumps({"text": text, "src": name}, ensure_ascii=False) + "\n")
            evaluation += [(name, text) for text in docs[split:]]
    out = tmp_path / "topic_clf"
    result = _invoke(["train-topics", "--from-keywords", corpus, "--out", out, "--dim", 16, "--min-per-label", 5])
    print("\n" + result.output)
    assert result.exit_code == 0, result.output
    assert "held-out accuracy" in result.output and "examples per label" in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["source"] == "keywords" and metrics["holdout"]["accuracy"] >= 0.85
    assert {"medicine", "history", "math", OTHER} <= set(metrics["per_label"])

    # On documents the trainer never saw: agreement with the confident keyword labels, and labels
    # for documents the keywords leave undecided.
    clf = TextClassifier.load(out)
    labeller = KeywordLabeller.from_yaml()
    predicted = clf.predict([t for _, t in evaluation])
    agree = confident = 0
    per_source: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for (name, text), label in zip(evaluation, predicted):
        kw_label, scores = labeller.label(text, 0.6)
        if scores[kw_label] >= 0.6:
            confident += 1
            agree += kw_label == label
        per_source[name][label] += 1
    print(f"agreement with confident keyword labels on unseen documents: {agree}/{confident}")
    print({name: dict(c) for name, c in per_source.items()})
    assert agree / confident >= 0.85
    assert per_source["medical"].most_common(1)[0][0] == "medicine"
    assert per_source["gsm8k"].most_common(1)[0][0] == "math"

    # The topic step with the classifier: it decides, keywords are only its fallback.
    step = Topic(TopicConfig(model=str(out)))
    step.setup(_ctx(tmp_path))
    doc = Document("g", evaluation[-1][1])
    step.process_batch([doc])
    assert doc.metadata["topic"] in clf.labels and sum(step.counters.values()) >= 1


def test_train_classifier_cli(tmp_path):
    texts, labels = _toy_task(300, seed=4)
    pos, neg = tmp_path / "pos.jsonl", tmp_path / "neg.txt"
    pos.write_text("".join(json.dumps({"body": t}) + "\n" for t, l in zip(texts, labels) if l == "sport"))
    neg.write_text("\n\n".join(t for t, l in zip(texts, labels) if l == "cooking") + "\n")
    out = tmp_path / "q"
    result = _invoke(["train-classifier", "--pos", pos, "--neg", neg, "--text-key", "body", "--out", out, "--epochs", 3, "--holdout", 0.2])
    assert result.exit_code == 0, result.output
    assert "read 150 positive and 150 negative documents" in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["holdout"]["documents"] == 60 and metrics["holdout"]["accuracy"] >= 0.95
    assert TextClassifier.load(out).labels == ["negative", "positive"]

    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    result = _invoke(["train-classifier", "--pos", pos, "--neg", empty, "--text-key", "body", "--out", out])
    assert isinstance(result.exception, DataError) and "no non-empty documents in --neg" in str(result.exception)
    result = _invoke(["train-classifier", "--pos", pos, "--neg", neg, "--out", out, "--char-ngrams", "5"])
    assert result.exit_code == 2 and "MIN-MAX" in result.output


def test_train_topics_from_labelled_jsonl(tmp_path):
    texts, labels = _toy_task(200, seed=5)
    data = tmp_path / "labelled.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": l}) + "\n" for t, l in zip(texts, labels)))
    result = _invoke(["train-topics", data, "--out", tmp_path / "t", "--epochs", 3])
    assert result.exit_code == 0, result.output
    assert "examples per label: cooking 100, sport 100" in result.output
    assert json.loads((tmp_path / "t" / "metrics.json").read_text())["source"] == "labelled"

    data.write_text(json.dumps({"text": "no label here"}) + "\n")
    result = _invoke(["train-topics", data, "--out", tmp_path / "t"])
    assert isinstance(result.exception, DataError) and "labelled.jsonl:1" in str(result.exception)
    result = _invoke(["train-topics", "--out", tmp_path / "t"])
    assert result.exit_code == 2 and "either" in result.output
