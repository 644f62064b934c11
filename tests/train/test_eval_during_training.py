"""Evaluation during training: held-out bits per byte in the ``eval`` records, evaluation tasks
(``train.eval_tasks``) as ``task`` records every few steps, the evaluation-curves plot — and a
run with tasks trains exactly the weights of the same run without them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lmforge.config import ConfigError
from lmforge.train.pretrain import train

TASK_STEPS = ["train.max_steps=4", "train.eval_every=2", "train.ckpt_every=0", "model.max_seq_len=128"]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    """A 300-token BPE with the ChatML template, trained on English and Chinese math problems."""
    from lmforge.synth.math import generate_problems
    from lmforge.tokenizer.train import TokenizerConfig, train_tokenizer

    texts = [m["content"] for r in generate_problems(120, seed=4) for m in r["messages"]]
    texts += ["The capital of France is Paris. History is written by the victors."] * 10
    return train_tokenizer(texts, tmp_path_factory.mktemp("tok") / "tok", TokenizerConfig(vocab_size=300, num_reserved_tokens=4))


@pytest.fixture
def tok_shards(tmp_path, shard_factory, tokenizer_dir) -> Path:
    """The conftest's synthetic token shards (ids < 256), made "with" this tokenizer."""
    from lmforge.tokenizer.train import tokenizer_sha256

    return shard_factory(tmp_path / "shards", extra={"tokenizer_dir": str(tokenizer_dir), "tokenizer_sha256": tokenizer_sha256(tokenizer_dir),
                                                     "vocab_size": 300})


@pytest.fixture
def text_file(tmp_path) -> Path:
    path = tmp_path / "held_out.txt"
    path.write_text("The capital of France is Paris. 苹果有 12 个，吃了 5 个，还剩几个？ " * 6, encoding="utf-8")
    return path


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_tasks_are_logged_and_plotted_and_do_not_change_training(tok_shards, text_file, tmp_path, make_recipe, losses, tokenizer_dir):
    from safetensors.torch import load_file

    from lmforge.data.loader import HeldOutWindows
    from lmforge.data.shards import ShardSet
    from lmforge.eval.bpb import token_bytes_for
    from lmforge.model.hf import load_pretrained
    from lmforge.train.metrics import eval_series

    tasks = f'train.eval_tasks=["bpb:{text_file}", "math?n=2&max_new_tokens=4"]'
    with_tasks = train(make_recipe(tok_shards, tmp_path / "with", *TASK_STEPS, tasks))
    without = train(make_recipe(tok_shards, tmp_path / "without", *TASK_STEPS))

    # the hook must not perturb training: same losses, bit-identical weights
    assert losses(tmp_path / "with") == losses(tmp_path / "without")
    a, b = load_file(with_tasks.checkpoint / "model.safetensors"), load_file(without.checkpoint / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    logged = records(tmp_path / "with")
    task_records = [r for r in logged if r["kind"] == "task"]
    assert [r["step"] for r in task_records] == [2, 4]
    bpb_key, math_key = "task/bpb:held_out/bpb", "task/math/accuracy"
    text_bytes = len(text_file.read_bytes())
    for r in task_records:
        assert set(r) == {"kind", "step", bpb_key, "task/bpb:held_out/n", math_key, "task/math/n"}
        assert r["task/bpb:held_out/n"] == text_bytes and r["task/math/n"] == 2
        assert 0 < r[bpb_key] < 30 and 0 <= r[math_key] <= 1
    assert task_records[0][bpb_key] != task_records[1][bpb_key]  # measured on the weights of each step
    # each task record sits after its step's train record (the order training produced them)
    order = [(r["kind"], r["step"]) for r in logged]
    assert order.index(("task", 2)) > order.index(("train", 2)) and order.index(("task", 4)) > order.index(("train", 4))
    assert not any(r["kind"] == "task" for r in records(tmp_path / "without"))

    # held-out bits per byte: the bytes the held-out labels stand for, from the tokenizer, and the
    # loss of those labels only (zero-byte tokens, here the end-of-document id 0, count in neither)
    evals = [r for r in logged if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [2, 4]
    table = token_bytes_for(tokenizer_dir, 300)
    windows = list(HeldOutWindows(ShardSet(tok_shards), 32, 4, 2 * 4))
    expected_bytes = sum(int(table[batch["labels"]].sum()) for batch in windows)
    assert any(bool((table[batch["labels"]] == 0).any()) for batch in windows)  # the rule is exercised
    for r in evals:
        assert r["eval_bytes"] == expected_bytes > r["eval_tokens"] / 2
        assert "eval_byte_nll" not in r
    # recomputed from the final checkpoint (the weights of step 4)
    final = load_pretrained(with_tasks.checkpoint).eval()
    loss_sum = byte_nll = 0.0
    tokens = 0
    with torch.no_grad():
        for batch in windows:
            labels = batch["labels"].flatten()
            ce = F.cross_entropy(final(batch["input_ids"]).logits.float().flatten(0, 1), labels, reduction="none")
            loss_sum, tokens = loss_sum + float(ce.sum()), tokens + labels.numel()
            byte_nll += float(ce[table[labels] > 0].sum())
    assert evals[-1]["eval_tokens"] == tokens and evals[-1]["eval_loss"] == pytest.approx(loss_sum / tokens, rel=1e-5)
    assert evals[-1]["eval_bpb"] == pytest.approx(byte_nll / math.log(2) / expected_bytes, rel=1e-5)
    assert byte_nll < loss_sum and evals[-1]["eval_bpb"] != pytest.approx(loss_sum / math.log(2) / expected_bytes, rel=1e-3)
    assert [r["eval_loss"] for r in evals] == [r["eval_loss"] for r in records(tmp_path / "without") if r["kind"] == "eval"]

    # eval_curves.png: held-out bits per byte and both task curves
    png = tmp_path / "with" / "eval_curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    series = eval_series(logged)
    assert set(series) == {"bpb", "bpb:held_out/bpb", "math/accuracy"}
    assert [step for step, _ in series["bpb:held_out/bpb"]] == [2, 4]
    # the run without tasks still plots held-out bits per byte
    assert (tmp_path / "without" / "eval_curves.png").is_file()


def test_eval_tasks_every_and_the_last_step(tok_shards, text_file, tmp_path, make_recipe):
    train(make_recipe(tok_shards, tmp_path / "run", "train.max_steps=5", "train.eval_every=0", "train.eval_tasks_every=2",
                      "train.ckpt_every=0", "model.max_seq_len=128", f'train.eval_tasks=["bpb:{text_file}?max_bytes=40&name=short"]'))
    logged = records(tmp_path / "run")
    task_records = [r for r in logged if r["kind"] == "task"]
    assert [r["step"] for r in task_records] == [2, 4, 5]  # every 2 steps, and always at the end
    assert all(r["task/short/n"] <= 40 for r in task_records)
    assert [r["step"] for r in logged if r["kind"] == "eval"] == [5]  # eval_every=0: held-out loss only at the end


def test_a_failing_task_is_logged_and_training_goes_on(tok_shards, text_file, tmp_path, make_recipe, losses, capsys, monkeypatch):
    """The task file disappears after the step-2 evaluation: step 4's evaluation fails, is logged
    as an error, and the run still finishes with its final checkpoint, trained as without tasks."""
    import lmforge.eval.tasks as tasks

    recipe = make_recipe(tok_shards, tmp_path / "run", *TASK_STEPS, f'train.eval_tasks=["bpb:{text_file}?name=held_out"]',
                         "train.progress=true")  # progress lines on: the hook's messages are shown
    real_run_tasks = tasks.run_tasks

    def then_delete(*args, **kwargs):
        results = real_run_tasks(*args, **kwargs)
        text_file.unlink()
        return results

    monkeypatch.setattr(tasks, "run_tasks", then_delete)
    result = train(recipe)
    assert result.checkpoint.name == "step_00000004" and (result.checkpoint / "model.safetensors").is_file()
    logged = records(tmp_path / "run")
    task_records = [r for r in logged if r["kind"] == "task"]
    assert [r["step"] for r in task_records] == [2, 4]
    assert "task/held_out/bpb" in task_records[0] and "error" not in task_records[0]
    failed = task_records[1]
    assert set(failed) == {"kind", "step", "error"} and "held_out.txt" in failed["error"]
    assert [r["step"] for r in logged if r["kind"] == "train"] == [1, 2, 3, 4]
    assert [r["step"] for r in logged if r["kind"] == "eval"] == [2, 4]
    captured = capsys.readouterr()
    shown = " ".join((captured.out + captured.err).split())
    assert f"step 4: evaluation tasks failed, training goes on: {failed['error']}" in shown
    without = train(make_recipe(tok_shards, tmp_path / "without", *TASK_STEPS))
    assert losses(tmp_path / "run") == losses(tmp_path / "without") and without.checkpoint.name == result.checkpoint.name


def test_a_bad_task_spec_fails_when_the_recipe_loads(tok_shards, tmp_path, make_recipe):
    for spec, message in [("nope:x", "unknown kind 'nope'"), ("bpb", "bpb needs a path"), ("math?n=lots", "not a valid int")]:
        with pytest.raises(ConfigError) as info:
            make_recipe(tok_shards, tmp_path / "run", f'train.eval_tasks=["math", "{spec}"]')
        assert spec in str(info.value) and message in str(info.value)
    assert not (tmp_path / "run").exists()  # nothing started
    with pytest.raises(ConfigError, match="eval_tasks_every must be >= 0"):
        make_recipe(tok_shards, tmp_path / "run", "train.eval_tasks_every=-1")


def test_tasks_need_a_tokenizer(shards, tmp_path, make_recipe):
    with pytest.raises(ConfigError, match="train.eval_tasks needs a tokenizer"):
        train(make_recipe(shards, tmp_path / "run", "train.max_steps=2", 'train.eval_tasks=["math?n=1"]'))


def test_language_modeling_counts_the_bytes_of_scored_labels():
    from lmforge.model import ModelConfig, Transformer
    from lmforge.train.objectives import IGNORE_INDEX, LanguageModeling

    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=50, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, max_seq_len=16)).eval()
    table = torch.arange(50) % 4  # 0..3 bytes per token
    ids = torch.randint(0, 50, (2, 9))
    labels = ids[:, 1:].clone()
    labels[0, :3] = IGNORE_INDEX
    batch = {"input_ids": ids[:, :-1], "labels": labels}
    loss, tokens, sums = LanguageModeling(token_bytes=table).evaluate(model, batch)
    with torch.no_grad():
        logits = model(batch["input_ids"]).logits.float()
    mask = labels != IGNORE_INDEX
    scored = labels[mask]
    ce = torch.nn.functional.cross_entropy(logits[mask], scored, reduction="none")  # one loss per scored label
    text = table[scored] > 0  # zero-byte (special) tokens: out of both sums
    assert tokens == scored.numel() == 13 and int((~text).sum()) > 0 and int(text.sum()) > 0
    assert set(sums) == {"bytes", "byte_nll"} and sums["bytes"] == float(table[scored].sum())
    assert sums["byte_nll"] == pytest.approx(float(ce[text].sum()), rel=1e-5) and sums["byte_nll"] < loss
    assert loss == pytest.approx(float(ce.sum()), rel=1e-5)
    assert LanguageModeling().evaluate(model, batch) == (loss, tokens)  # no table: no bytes, the same loss
