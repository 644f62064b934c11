"""Tokenizer training, HF loading, chat template, compression metrics and the CLI."""

from __future__ import annotations

import json
import random

import pytest

from lmforge.tokenizer.evaluate import evaluate_compression, write_json
from lmforge.tokenizer.train import (
    CHAT_TEMPLATE,
    SIDECAR,
    TokenizerConfig,
    load_tokenizer,
    special_tokens,
    tokenizer_sha256,
    train_tokenizer,
)

SAMPLES = [
    "Hello, world! It's 2024 and we're testing.",
    "天龙八部这名词出于佛经。许多大乘佛经叙述佛向诸菩萨说法。",
    "def add(x, y):\n    return x + y  # 求和\n\n\tprint(add(1, 22))\r\n",
    "emoji 😀🎉 and mixed 中文English混排, symbols ©®™ «»",
    "  leading and trailing spaces   \n\n\n",
]


@pytest.fixture(scope="module")
def _cache():
    return {}


@pytest.fixture
def real_tok(shared_data, tmp_path_factory, _cache):
    """A 1,000-token tokenizer trained on ~200 KB of real Chinese + English text (trained once)."""
    if "dir" not in _cache:
        texts = []
        for name in ("zh_novel.txt", "en_shakespeare.txt"):
            text = (shared_data / "pretrain" / name).read_text(encoding="utf-8")[:100_000]
            texts += [t for t in text.split("\n") if t.strip()]
        out = tmp_path_factory.mktemp("tok") / "tok"
        _cache["dir"] = train_tokenizer(texts, out, TokenizerConfig(vocab_size=1000), show_progress=False)
    return _cache["dir"]


def _synthetic_texts(n: int = 200) -> list[str]:
    """Varied enough (random words) that a few hundred merges exist."""
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 8))) for _ in range(300)]
    zh = "天龙八部这名词出于佛经许多大乘佛经叙述佛向诸菩萨说法"
    return [" ".join(rng.choice(words) for _ in range(20)) + " " + zh[i % 20 :] + f" {i * 7}" for i in range(n)]


def test_trains_and_writes_hf_directory(real_tok):
    names = {p.name for p in real_tok.iterdir()}
    assert {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", SIDECAR} <= names
    info = json.loads((real_tok / SIDECAR).read_text())
    assert info["vocab_size"] == 1000
    assert info["config"]["vocab_size"] == 1000
    assert info["train_bytes"] > info["train_chars"] > 100_000  # Chinese is 3 bytes a character
    assert info["tokenizer_sha256"] == tokenizer_sha256(real_tok)
    assert load_tokenizer(real_tok).get_vocab_size() == 1000


def test_special_tokens_have_low_ids_and_stay_single(real_tok):
    tok = load_tokenizer(real_tok)
    for i, token in enumerate(special_tokens(16)):
        assert tok.token_to_id(token) == i
        assert tok.encode(token).ids == [i]
    assert tok.token_to_id("<|endoftext|>") == 0
    assert tok.token_to_id("<|im_start|>") == 1 and tok.token_to_id("<|im_end|>") == 2
    assert tok.token_to_id("<|reserved_15|>") == 18 and tok.token_to_id("<|reserved_16|>") is None


def test_digits_split_one_per_token(real_tok):
    tok = load_tokenizer(real_tok)
    assert tok.encode("12345").tokens == ["1", "2", "3", "4", "5"]
    assert [t for t in tok.encode("共2024年").tokens if t.isdigit()] == ["2", "0", "2", "4"]


def test_roundtrip_is_lossless(real_tok):
    tok = load_tokenizer(real_tok)
    for text in SAMPLES + ["".join(chr(c) for c in range(0x20, 0x250))]:
        assert tok.decode(tok.encode(text).ids, skip_special_tokens=False) == text


def test_auto_tokenizer_matches_fast_tokenizer(real_tok):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(real_tok)
    tok = load_tokenizer(real_tok)
    assert hf.eos_token == "<|endoftext|>" and hf.eos_token_id == 0 and hf.pad_token_id == 0
    assert hf.bos_token is None
    assert len(hf) == 1000
    for text in SAMPLES + ["<|im_start|>user\nhi<|im_end|>"]:
        ids = hf.encode(text)
        assert ids == tok.encode(text).ids
        assert hf.decode(ids) == text


def test_chat_template_renders_chatml(real_tok):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(real_tok)
    messages = [
        {"role": "system", "content": "你是助手。"},
        {"role": "user", "content": "1+1=?"},
        {"role": "assistant", "content": "2"},
    ]
    text = hf.apply_chat_template(messages, tokenize=False)
    assert text == (
        "<|im_start|>system\n你是助手。<|im_end|>\n"
        "<|im_start|>user\n1+1=?<|im_end|>\n"
        "<|im_start|>assistant\n2<|im_end|>\n"
    )
    prompt = hf.apply_chat_template(messages[1:2], tokenize=False, add_generation_prompt=True)
    assert prompt == "<|im_start|>user\n1+1=?<|im_end|>\n<|im_start|>assistant\n"
    ids = hf.apply_chat_template(messages[1:2], add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    assert ids[0] == 1 and ids.count(2) == 1  # markers are single special tokens
    assert json.loads((real_tok / "tokenizer_config.json").read_text())["chat_template"] == CHAT_TEMPLATE


def test_eval_compression_zh_vs_en(real_tok, shared_data, tmp_path):
    # Held-out text from the same two sources the tokenizer was trained on (it saw 100k chars each).
    zh, en = tmp_path / "zh.txt", tmp_path / "en.jsonl"
    zh.write_text((shared_data / "pretrain" / "zh_novel.txt").read_text(encoding="utf-8")[200_000:230_000], encoding="utf-8")
    held_out = (shared_data / "pretrain" / "en_shakespeare.txt").read_text(encoding="utf-8")[200_000:230_000]
    en.write_text("".join(json.dumps({"text": p}) + "\n" for p in held_out.split("\n\n")), encoding="utf-8")
    rows = evaluate_compression([real_tok], [zh, en], txt_mode="line", max_chars=20_000)
    by_file = {r["file"]: r for r in rows}
    assert set(by_file) == {str(zh), str(en), "TOTAL"}
    zh_row, en_row = by_file[str(zh)], by_file[str(en)]
    assert zh_row["chars"] == en_row["chars"] == 20_000
    assert zh_row["bytes_per_token"] > en_row["bytes_per_token"]  # CJK: 3 bytes a character
    assert 1.2 < en_row["bytes_per_token"] < 6.0 and 1.5 < zh_row["bytes_per_token"] < 9.0
    assert en_row["chars_per_token"] == pytest.approx(en_row["chars"] / en_row["tokens"])
    total = by_file["TOTAL"]
    assert total["tokens"] == zh_row["tokens"] + en_row["tokens"]
    out = write_json(rows, tmp_path / "cmp.json")
    assert json.loads(out.read_text())["results"] == rows


def test_train_validates_and_replaces_atomically(tmp_path):
    out = tmp_path / "tok"
    with pytest.raises(ValueError, match="too small"):
        train_tokenizer(_synthetic_texts(), out, TokenizerConfig(vocab_size=100), show_progress=False)
    assert not out.exists()
    out.mkdir()
    (out / "stale.txt").write_text("old")
    cfg = TokenizerConfig(vocab_size=300, num_reserved_tokens=2, max_train_chars=3000)
    train_tokenizer(_synthetic_texts(), out, cfg, show_progress=False)
    assert not (out / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["tok"]  # no temporary or backup dirs left
    info = json.loads((out / SIDECAR).read_text())
    assert info["train_chars"] == 3000
    assert load_tokenizer(out).token_to_id("<|reserved_1|>") == 4
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        load_tokenizer(tmp_path)


def test_cli_train_and_eval(tmp_path):
    from typer.testing import CliRunner

    from lmforge.tokenizer.cli import app

    data = tmp_path / "corpus.jsonl"
    data.write_text("".join(json.dumps({"body": t}) + "\n" for t in _synthetic_texts()), encoding="utf-8")
    runner = CliRunner()
    res = runner.invoke(
        app, ["train", str(data), "--out", str(tmp_path / "tok"), "--text-key", "body", "--set", "tokenizer.vocab_size=320", "-q"]
    )
    assert res.exit_code == 0, res.output
    assert load_tokenizer(tmp_path / "tok").get_vocab_size() == 320
    res = runner.invoke(app, ["train", str(data), "--out", str(tmp_path / "t2"), "--vocab-size", "10"])
    assert res.exit_code != 0 and "too small" in res.output
    res = runner.invoke(
        app, ["eval", str(data), "--tokenizer", str(tmp_path / "tok"), "--text-key", "body", "--json", str(tmp_path / "e.json")]
    )
    assert res.exit_code == 0, res.output
    (row,) = json.loads((tmp_path / "e.json").read_text())["results"]
    assert row["documents"] == 200 and row["tokens"] > 0
    res = runner.invoke(app, ["eval", str(data), "--tokenizer", str(tmp_path)])
    assert res.exit_code != 0 and "no tokenizer.json" in res.output


def test_eval_compression_skip_bad(tmp_path):
    from lmforge.data.document import DataError

    tok = train_tokenizer(_synthetic_texts(), tmp_path / "tok", TokenizerConfig(vocab_size=300), show_progress=False)
    good, bad = _synthetic_texts(3), tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps({"text": t}) + "\n" for t in good) + '{"text": 5}\nnot json\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl:4"):
        evaluate_compression([tok], [bad])
    (row,) = evaluate_compression([tok], [bad], skip_bad=True)
    assert row["documents"] == 3 and row["bad_lines"] == 2 and row["tokens"] > 0
    rows = evaluate_compression([tok], [bad, bad], skip_bad=True)
    assert rows[-1]["file"] == "TOTAL" and rows[-1]["bad_lines"] == 4

    from typer.testing import CliRunner

    from lmforge.tokenizer.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["eval", str(bad), "--tokenizer", str(tok)])
    assert res.exit_code != 0 and isinstance(res.exception, DataError)
    res = runner.invoke(app, ["eval", str(bad), "--tokenizer", str(tok), "--skip-bad", "--json", str(tmp_path / "e.json")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "e.json").read_text())["results"][0]["bad_lines"] == 2
    res = runner.invoke(app, ["eval", str(bad), "--tokenizer", str(tok), "--set", "data.skip_bad=true"])
    assert res.exit_code == 0, res.output  # the recipe's data section gives the default
    res = runner.invoke(app, ["eval", str(bad), "--tokenizer", str(tok), "--txt-mode", "sentence"])
    assert res.exit_code != 0 and "'sentence' is not one of paragraph" in res.output


def test_cli_help_texts_survive_rich_markup():
    """Typer renders help with rich markup: a "[default: x]" in a help string would vanish."""
    import typer.main
    from rich.text import Text

    from lmforge.data.cli import app as data_app
    from lmforge.tokenizer.cli import app as tokenizer_app

    checked = 0
    for app in (tokenizer_app, data_app):
        group = typer.main.get_command(app)
        for command in group.commands.values():
            for text in [command.help or ""] + [p.help or "" for p in command.params if hasattr(p, "help")]:
                assert Text.from_markup(text).plain == text, f"{command.name}: {text!r}"
                checked += 1
    assert checked > 20
