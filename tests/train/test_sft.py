"""``lmforge sft``: a tiny pretrained checkpoint fine-tuned on chat data through the one Trainer —
the loss on assistant replies falls, resume is exact, checkpoints load in transformers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmforge.recipe import load_recipe
from chat_helpers import CHAT_SYSTEM, CrashAt, addition_chats, save_chat_checkpoint


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """A random tiny Qwen3-style checkpoint with a tokenizer trained on the chat text."""
    from lmforge.tokenizer.train import TokenizerConfig, train_tokenizer

    root = tmp_path_factory.mktemp("pretrained")
    texts = [t["value"] for c in addition_chats(200, seed=9) for t in c["conversations"]] + [CHAT_SYSTEM] * 20
    tok = train_tokenizer(texts, root / "tok", TokenizerConfig(vocab_size=300, num_reserved_tokens=4))
    return save_chat_checkpoint(root / "ckpt", tok)


def _recipe(tmp_path: Path, ckpt: Path, *overrides: str):
    data = tmp_path / "chat.jsonl"
    if not data.exists():
        data.write_text("\n".join(json.dumps(c) for c in addition_chats(160)) + "\n")
    return load_recipe(None, [
        f"out_dir={tmp_path}", f"train.out_dir={tmp_path / 'sft'}", f"train.init_from={ckpt}", f"sft.train=[{data}]",
        "sft.val_fraction=0.1", "train.seq_len=512", "train.batch_size=2", "train.max_steps=40", "train.warmup_steps=2",
        "train.lr=5e-3", "train.log_every=1", "train.eval_every=20", "train.ckpt_every=20", "train.num_threads=1",
        "train.dtype=float32", "train.device=cpu", "train.progress=false", "train.tensorboard=false", *overrides,
    ])  # fmt: skip


def _losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "train"]


def test_sft_loss_falls_and_the_checkpoint_chats(pretrained, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmforge.train.sft import train_sft

    result = train_sft(_recipe(tmp_path, pretrained))
    losses = _losses(tmp_path / "sft")
    assert len(losses) == 40 and sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5, losses
    report = json.loads((tmp_path / "sft" / "sft_data.json").read_text())
    assert report["train_conversations"] + report["val_conversations"] == 160 and report["val_conversations"] > 0
    assert report["packing"]["padding_fraction"] <= 0.05
    train_records = [json.loads(r) for r in (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()]
    padding = [r["padding_fraction"] for r in train_records if r["kind"] == "train"]
    # per step, measured on the batches it trained on: around the packer's overall figure
    assert len(padding) == 40 and abs(sum(padding) / 40 - report["packing"]["padding_fraction"]) < 0.02, padding
    summary = result.summary()
    assert summary["val_loss"] is not None and summary["val_loss"] < losses[0]
    meta = json.loads((Path(summary["checkpoint"]) / "lmforge.json").read_text())
    assert meta["stage"] == "sft" and meta["parent_checkpoint"] == str(pretrained)
    model = AutoModelForCausalLM.from_pretrained(summary["checkpoint"])
    tok = AutoTokenizer.from_pretrained(summary["checkpoint"])
    assert tok.chat_template and model.config.vocab_size == 300


def test_sft_resume_is_exact(pretrained, tmp_path):
    from lmforge.train.sft import train_sft

    overrides = ("train.max_steps=30", "train.ckpt_every=10")
    (tmp_path / "full").mkdir()
    train_sft(_recipe(tmp_path / "full", pretrained, *overrides))
    (tmp_path / "cut").mkdir()
    with pytest.raises(KeyboardInterrupt):
        train_sft(_recipe(tmp_path / "cut", pretrained, *overrides), hooks=[CrashAt(24)])
    train_sft(_recipe(tmp_path / "cut", pretrained, *overrides), resume=True)
    assert _losses(tmp_path / "cut" / "sft") == _losses(tmp_path / "full" / "sft")  # every step, exactly


def test_sft_needs_a_checkpoint_and_chat_data(tmp_path):
    from lmforge.config import ConfigError
    from lmforge.train.sft import train_sft

    with pytest.raises(ConfigError, match="train.init_from is not set"):
        train_sft(load_recipe(None, [f"out_dir={tmp_path}"]))


def test_sft_cli_names_a_bad_record_or_skips_it_with_skip_bad(pretrained, tmp_path):
    from typer.testing import CliRunner

    from lmforge.cli import app
    from lmforge.data.document import DataError

    data = tmp_path / "chat.jsonl"
    lines = [json.dumps(c) for c in addition_chats(40)]
    lines[6] = json.dumps({"conversations": [{"from": "gpt", "value": "an answer before any question"}]})
    data.write_text("\n".join(lines) + "\n")
    recipe = tmp_path / "sft.yaml"
    recipe.write_text(
        f"out_dir: {tmp_path}\nsft: {{train: [{data}], val_fraction: 0.1}}\n"
        f"train: {{init_from: {pretrained}, seq_len: 256, batch_size: 2, max_steps: 2, num_threads: 1, device: cpu, "
        f"dtype: float32, progress: false, tensorboard: false}}\n"
    )
    failed = CliRunner().invoke(app, ["sft", str(recipe)])
    assert isinstance(failed.exception, DataError) and str(failed.exception).startswith(f"{data}:7: turn 0 is 'assistant'")
    done = CliRunner().invoke(app, ["sft", str(recipe), "--skip-bad"])
    assert done.exit_code == 0, done.output
    report = json.loads((tmp_path / "sft" / "sft_data.json").read_text())
    assert report["bad_records"] == 1 and report["train_conversations"] + report["val_conversations"] == 39
