"""Bits per byte: byte lengths per token id (for training's held-out bits per byte), and
``evaluate_bpb`` on text files — every figure recomputed from the scorer's own rolling
log-likelihood and the files' UTF-8 bytes, per file and in total."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lmforge.data.document import DataError
from lmforge.eval.bpb import evaluate_bpb, token_byte_lengths, token_bytes_for
from lmforge.eval.scorer import LoglikScorer

MIXED = [
    "The capital of France is Paris.",
    "肉牛屠宰后，胴体的哪个部位肉质较好？下列哪个是水果",
    "emoji 🎉🚀 and accents: café, naïve, Ünïcödé — “quotes” ½ ∑",
    "mixed 中文 and English 123 + 456 = 579\n\ttabs\r\nand newlines  ",
    "Ω≈ç√∫˜µ≤ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ﷽ 👩‍👩‍👧",
]


@pytest.fixture(scope="module")
def tokenizer(eval_checkpoint):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(eval_checkpoint)


@pytest.fixture(scope="module")
def scorer(eval_checkpoint):
    # A short context (64) so a few hundred bytes already span several windows.
    scorer = LoglikScorer.from_checkpoint(eval_checkpoint, device="cpu", dtype="float32", batch_size=4)
    scorer.max_length = 64
    return scorer


# ---- bytes per token ---------------------------------------------------------------------------


@pytest.mark.parametrize("text", MIXED)
def test_token_byte_lengths_add_up_to_the_texts_bytes(tokenizer, text):
    lengths = token_byte_lengths(tokenizer)
    assert lengths.shape == (len(tokenizer),) and lengths.dtype == torch.long
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) > 1
    assert int(lengths[ids].sum()) == len(text.encode("utf-8"))
    # the raw tokenizers.Tokenizer gives the same table
    assert torch.equal(token_byte_lengths(tokenizer.backend_tokenizer), lengths)


def test_special_and_added_tokens_count_no_bytes(tokenizer):
    lengths = token_byte_lengths(tokenizer)
    special = sorted(tokenizer.get_added_vocab().values())
    assert len(special) >= 7 and all(int(lengths[i]) == 0 for i in special)
    assert int(lengths[len(special):].min()) >= 1  # every real token stands for at least one byte
    # a chat-templated text: only the message text and the template's own plain text count
    messages = [{"role": "user", "content": MIXED[1]}, {"role": "assistant", "content": MIXED[2]}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    ids = tokenizer.encode(rendered, add_special_tokens=False)
    markup = sum(rendered.count(t) * len(t.encode()) for t in tokenizer.get_added_vocab())
    assert any(i in special for i in ids)
    assert int(lengths[ids].sum()) == len(rendered.encode("utf-8")) - markup


def test_token_byte_lengths_of_a_sentencepiece_style_tokenizer():
    """Not byte-level BPE: ``▁`` stands for one space, a byte-fallback piece ``<0xF0>`` for one
    byte, and ``é`` for two (it is text here, not a byte-level alphabet letter). Each document gets
    one prepended ``▁`` that is not in the text: a fixed per-token count cannot know that."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tok.train_from_iterator(["café au lait, déjà vu", "the cat sat on the mat", "naïve façade 你好世界"] * 20,
                            trainers.BpeTrainer(vocab_size=80, special_tokens=["<unk>"]))
    # SentencePiece's byte pieces live in the model's vocabulary (not added tokens), as in Llama's tokenizer.json
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    vocab.update({f"<0x{b:02X}>": len(vocab) + b for b in range(256)})
    tok = Tokenizer.from_str(json.dumps(spec))
    lengths = token_byte_lengths(tok)
    assert int(lengths[tok.token_to_id("<unk>")]) == 0 and int(lengths[tok.token_to_id("<0xF0>")]) == 1
    for text in ["café au lait", "déjà vu, the cat", "你好 naïve", "🎉 ok zzz"]:
        ids = tok.encode(text).ids
        assert int(lengths[ids].sum()) == len((" " + text).encode("utf-8")), [tok.id_to_token(i) for i in ids]


def test_token_bytes_for_a_directory(eval_checkpoint, tokenizer, tmp_path):
    table = token_byte_lengths(tokenizer)
    bigger = token_bytes_for(eval_checkpoint, 512)  # a model vocabulary padded past the tokenizer's
    assert bigger.shape == (512,) and torch.equal(bigger[:400], table) and int(bigger[400:].abs().sum()) == 0
    smaller = token_bytes_for(eval_checkpoint, 300)
    assert torch.equal(smaller, table[:300])
    assert token_bytes_for(tmp_path, 400) is None  # no tokenizer.json there
    assert token_bytes_for(None, 400) is None
    (tmp_path / "tokenizer.json").write_text("{not json")
    assert token_bytes_for(tmp_path, 400) is None  # unreadable: no bits per byte, no crash


# ---- evaluate_bpb ----------------------------------------------------------------------------------


def _write(path, text: str):
    path.write_bytes(text.encode("utf-8"))
    return path


def test_two_files_per_file_and_total_figures(scorer, tmp_path):
    en = _write(tmp_path / "en.txt", "The capital of France is Paris. " * 12 + "\n\nA second paragraph, same file.")
    zh = _write(tmp_path / "zh.txt", "下列哪个是水果？苹果。" * 15 + " emoji 🎉")
    result = evaluate_bpb(scorer, [en, zh])
    assert (result["kind"], result["metric"], result["chance"]) == ("bpb", "bpb", None)
    files = result["details"]["files"]
    assert list(files) == [str(en), str(zh)]
    for path in (en, zh):
        row, text = files[str(path)], path.read_text(encoding="utf-8")
        assert row["documents"] == 1 and row["bytes"] == path.stat().st_size  # txt_mode="file": the whole file
        nll, n = scorer.rolling_loglik(scorer.encode(text))
        assert n > scorer.max_length  # several windows
        assert row["tokens"] == n and row["nll"] == pytest.approx(nll, abs=1e-6)
        assert row["bpb"] == pytest.approx(nll / math.log(2) / row["bytes"])
        assert row["perplexity"] == pytest.approx(math.exp(nll / n)) and row["bytes_per_token"] == pytest.approx(row["bytes"] / n)
    total = result["details"]
    assert total["bytes"] == result["n"] == sum(r["bytes"] for r in files.values())
    assert total["tokens"] == sum(r["tokens"] for r in files.values())
    assert total["nll"] == pytest.approx(sum(r["nll"] for r in files.values()))
    assert result["value"] == total["bpb"] == pytest.approx(total["nll"] / math.log(2) / total["bytes"])
    assert total["stride"] == 64 and result["seconds"] >= 0
    # the same as bytes per token from the table training uses
    table = token_byte_lengths(scorer.tokenizer)
    assert sum(int(table[scorer.encode(p.read_text(encoding="utf-8"))].sum()) for p in (en, zh)) == total["bytes"]
    # a smaller stride: more context per token, every token still scored once
    strided = evaluate_bpb(scorer, [en, zh], stride=16)
    assert strided["details"]["tokens"] == total["tokens"] and strided["details"]["stride"] == 16
    assert strided["value"] != result["value"]


def test_paragraph_mode_and_jsonl(scorer, tmp_path):
    text = "first paragraph here.\n\nsecond one, 第二段。\n\n\nthird."
    path = _write(tmp_path / "p.txt", text)
    result = evaluate_bpb(scorer, path, txt_mode="paragraph")
    paragraphs = ["first paragraph here.", "second one, 第二段。", "third."]
    assert result["details"]["documents"] == 3 and result["n"] == sum(len(p.encode()) for p in paragraphs)
    expected = sum(scorer.rolling_loglik(scorer.encode(p))[0] for p in paragraphs)
    assert result["details"]["nll"] == pytest.approx(expected, abs=1e-6)
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("\n".join(json.dumps({"body": p}) for p in paragraphs) + "\n")
    same = evaluate_bpb(scorer, jsonl, text_key="body")
    assert same["n"] == result["n"] and same["details"]["nll"] == pytest.approx(expected, abs=1e-6)


def test_max_bytes_caps_each_file_at_a_character_boundary(scorer, tmp_path):
    zh = _write(tmp_path / "zh.txt", "苹果是水果。" * 40)  # 3 bytes per character
    en = _write(tmp_path / "en.txt", "abcdefghij" * 40)
    result = evaluate_bpb(scorer, [zh, en], max_bytes=100)
    files = result["details"]["files"]
    assert files[str(en)]["bytes"] == 100
    assert files[str(zh)]["bytes"] == 99  # 33 whole characters; the 34th would pass the cap
    cut = zh.read_text(encoding="utf-8")[:33]
    assert files[str(zh)]["nll"] == pytest.approx(scorer.rolling_loglik(scorer.encode(cut))[0], abs=1e-6)
    assert result["n"] == 199
    many = tmp_path / "many.txt"
    many.write_text("\n\n".join(f"paragraph {i} of many." for i in range(50)))
    capped = evaluate_bpb(scorer, many, txt_mode="paragraph", max_bytes=60)
    assert capped["n"] == 60 and capped["details"]["documents"] < 50


def test_bad_inputs_are_errors_naming_the_file(scorer, tmp_path):
    good = _write(tmp_path / "good.txt", "some text")
    empty = _write(tmp_path / "empty.txt", "")
    with pytest.raises(ValueError, match=f"{empty}: no text to score"):
        evaluate_bpb(scorer, [good, empty])
    blank = _write(tmp_path / "blank.txt", "  \n\n \n")
    with pytest.raises(ValueError, match="blank.txt: no text to score"):
        evaluate_bpb(scorer, blank)
    with pytest.raises(ValueError, match="at least one text file"):
        evaluate_bpb(scorer, [])
    with pytest.raises(DataError, match="missing.txt: no such file"):
        evaluate_bpb(scorer, tmp_path / "missing.txt")
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text('{"text": "one document"}\nnot json\n{"text": "another"}\n')
    with pytest.raises(DataError, match=f"{jsonl}:2"):
        evaluate_bpb(scorer, jsonl)
    skipped = evaluate_bpb(scorer, jsonl, skip_bad=True)
    assert skipped["details"]["bad_lines"] == 1 and skipped["details"]["documents"] == 2
    assert skipped["n"] == len("one document") + len("another")


def test_real_english_text(scorer, shared_data):
    path = shared_data / "pretrain" / "en_history.txt"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    result = evaluate_bpb(scorer, path, max_bytes=20_000)
    d = result["details"]
    assert result["n"] == d["bytes"] == 20_000 and d["documents"] == 1
    assert 1.2 < d["bytes_per_token"] < 4.5  # a 400-token BPE (trained on little text) on English prose
    # a random model: about log2(400) bits per token, spread over the bytes of a token
    uniform = math.log2(400) / d["bytes_per_token"]
    assert 0.7 * uniform < result["value"] < 1.6 * uniform
    assert d["tokens"] == len(scorer.encode(path.read_bytes()[:20_000].decode("utf-8", errors="ignore")))
