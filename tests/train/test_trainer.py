"""End-to-end behaviour of the one loop on a ~40k-parameter model (fp32, 1 thread, CPU)."""

import json
import math

import pytest
import torch
from chat_helpers import CrashAt

from lmforge.config import ConfigError
from lmforge.train.checkpoint import list_checkpoints, load_trainer_state, read_meta
from lmforge.train.objectives import LanguageModeling
from lmforge.train.pretrain import train
from lmforge.train.trainer import TrainingDiverged


@pytest.mark.parametrize("dtype, steps, crash", [("float32", 12, 7), ("bfloat16", 6, 5)])
def test_resume_is_bit_exact(shards, tmp_path, make_recipe, losses, dtype, steps, crash):
    overrides = [f"train.dtype={dtype}", f"train.max_steps={steps}", "train.ckpt_every=3", "train.grad_accum=2", "train.batch_size=2"]
    full = train(make_recipe(shards, tmp_path / "full", *overrides))
    with pytest.raises(KeyboardInterrupt):
        train(make_recipe(shards, tmp_path / "cut", *overrides), hooks=[CrashAt(crash)])
    assert losses(tmp_path / "cut")[crash]  # it logged past its last checkpoint (step 3 or 6)
    resumed = train(make_recipe(shards, tmp_path / "cut", *overrides), resume=True)
    expected, got = losses(tmp_path / "full"), losses(tmp_path / "cut")
    assert sorted(got) == list(range(1, steps + 1))  # no duplicated or missing steps
    assert got == expected  # exact float equality, every step
    assert losses(tmp_path / "cut", "grad_norm") == losses(tmp_path / "full", "grad_norm")
    assert resumed.metrics["eval_loss"] == full.metrics["eval_loss"]
    assert resumed.tokens_seen == full.tokens_seen == steps * 4 * 32
    a = torch.load(full.checkpoint / "trainer_state.pt", weights_only=True)
    b = torch.load(resumed.checkpoint / "trainer_state.pt", weights_only=True)
    assert a["train_data"] == b["train_data"]


def test_eval_records_and_checkpoint_contents(shards, tmp_path, make_recipe, losses):
    result = train(make_recipe(shards, tmp_path / "run", "train.tensorboard=true"))
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [4, 8, 12]
    assert evals[-1]["baseline_loss"] == 5.3 and evals[-1]["eval_bpt"] == pytest.approx(evals[-1]["eval_loss"] / math.log(2))
    assert evals[-1]["eval_tokens"] == 2 * 4 * 32
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"]
    train_records = [r for r in records if r["kind"] == "train"]
    assert {"loss", "lr", "grad_norm", "tokens_seen", "tokens_per_s", "mfu"} <= set(train_records[0])
    # keep_last=2 of the checkpoints at 4, 8, 12
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step_00000008", "step_00000012"]
    ckpt = result.checkpoint
    assert ckpt.name == "step_00000012"
    meta = read_meta(ckpt)
    assert meta["step"] == 12 and meta["tokens_seen"] == 12 * 4 * 32 and meta["lmforge_version"]
    assert meta["recipe"]["train"]["lr"] == 3e-3 and meta["recipe"]["model"]["d_model"] == 32
    assert meta["metrics"]["eval_loss"] == evals[-1]["eval_loss"] and meta["metrics"]["loss"] == train_records[-1]["loss"]
    config = json.loads((ckpt / "config.json").read_text())
    assert config["eos_token_id"] == 0  # from the shard manifest
    state = load_trainer_state(ckpt)
    assert state["step"] == 12 and set(state["rng"]) >= {"python", "numpy", "torch"}
    assert (tmp_path / "run" / "loss_curve.png").stat().st_size > 1000
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert result.summary()["val_loss"] == evals[-1]["eval_loss"]


def test_checkpoint_loads_in_transformers(shards, tmp_path, make_recipe, losses):
    transformers = pytest.importorskip("transformers")
    result = train(make_recipe(shards, tmp_path / "run", "train.max_steps=2", "train.ckpt_every=0"))
    hf = transformers.AutoModelForCausalLM.from_pretrained(result.checkpoint).eval()
    from lmforge.model.hf import load_pretrained

    ours = load_pretrained(result.checkpoint)
    ids = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, ours(ids).logits, atol=1e-4, rtol=1e-4)


def test_grad_accumulation_matches_one_big_batch(shards, tmp_path, make_recipe, losses):
    train(make_recipe(shards, tmp_path / "big", "train.max_steps=4", "train.eval_every=0"))
    train(make_recipe(shards, tmp_path / "acc", "train.max_steps=4", "train.eval_every=0", "train.batch_size=1", "train.grad_accum=4"))
    big, acc = losses(tmp_path / "big"), losses(tmp_path / "acc")
    for step in big:
        assert acc[step] == pytest.approx(big[step], rel=1e-5)


class NaNAt(LanguageModeling):
    def __init__(self, step):
        super().__init__()
        self.calls, self.bad_call = 0, step

    def __call__(self, model, batch):
        self.calls += 1
        loss, metrics = super().__call__(model, batch)
        return (loss * float("nan") if self.calls == self.bad_call else loss), metrics


def test_nan_loss_stops_and_keeps_last_good_checkpoint(shards, tmp_path, make_recipe, losses, monkeypatch):
    import lmforge.train.pretrain as pretrain

    monkeypatch.setattr(pretrain, "LanguageModeling", lambda **kwargs: NaNAt(7))
    with pytest.raises(TrainingDiverged, match="loss nan at step 7") as info:
        train(make_recipe(shards, tmp_path / "run"))
    assert "step_00000004" in str(info.value) and "train.lr" in str(info.value)
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step_00000004"]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1] == {"kind": "diverged", "step": 7, "loss": "nan", "grad_norm": "nan"}
    assert max(r["step"] for r in records if r["kind"] == "train") == 6


def test_moe_logs_aux_loss_and_expert_load(shards, tmp_path, make_recipe, losses):
    moe = ["model.num_experts=4", "model.num_experts_per_tok=2", "model.qk_norm=true", "train.max_steps=3"]
    result = train(make_recipe(shards, tmp_path / "moe", *moe))
    records = [json.loads(line) for line in (tmp_path / "moe" / "metrics.jsonl").read_text().splitlines()]
    rec = [r for r in records if r["kind"] == "train"][-1]
    load = rec["expert_load"]
    assert len(load) == 2 and all(len(layer) == 4 for layer in load)
    assert all(sum(layer) == pytest.approx(1.0) for layer in load)
    assert rec["aux_loss"] > 0 and rec["loss"] == pytest.approx(rec["ce"] + rec["aux_loss"], rel=1e-5)
    assert json.loads((result.checkpoint / "config.json").read_text())["architectures"] == ["Qwen3MoeForCausalLM"]


def test_existing_run_needs_resume_and_vocab_comes_from_manifest(shards, tmp_path, make_recipe, losses):
    result = train(make_recipe(shards, tmp_path / "run", "train.max_steps=2", "model.vocab_size=300"))
    assert json.loads((result.checkpoint / "config.json").read_text())["vocab_size"] == 256
    with pytest.raises(ConfigError, match="--resume"):
        train(make_recipe(shards, tmp_path / "run", "train.max_steps=2"))


def test_init_from_continues_pretraining_from_weights(shards, tmp_path, make_recipe, losses):
    first = train(make_recipe(shards, tmp_path / "a", "train.max_steps=4"))
    second = train(make_recipe(shards, tmp_path / "b", "train.max_steps=2", f"train.init_from={tmp_path / 'a'}"))
    meta = read_meta(second.checkpoint)
    assert meta["parent_checkpoint"] == str(first.checkpoint)
    # it starts from the trained weights, so its first loss is far below a fresh model's
    assert losses(tmp_path / "b")[1] < losses(tmp_path / "a")[1] - 0.1


def _fake_tokenizer(directory):
    directory.mkdir()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<s>"]
    from tokenizers import Tokenizer, models

    tokenizer = Tokenizer(models.BPE())
    tokenizer.add_special_tokens(specials)  # ids 0, 1, 2, 3
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "added_tokens_decoder": {str(i): {"content": t} for i, t in enumerate(specials[:3])},
        "bos_token": "<s>", "eos_token": "<|im_end|>", "pad_token": {"content": "<|endoftext|>"},
    }))
    return directory


def test_special_token_ids_come_from_the_tokenizer_which_is_copied_and_checked(tmp_path, make_recipe, shard_factory):
    import hashlib

    tok = _fake_tokenizer(tmp_path / "tok")
    sha = hashlib.sha256((tok / "tokenizer.json").read_bytes()).hexdigest()
    shards = shard_factory(tmp_path / "shards", extra={"tokenizer_dir": str(tok), "tokenizer_sha256": sha})
    # train.tokenizer unset: the shards' own tokenizer is found through the manifest
    result = train(make_recipe(shards, tmp_path / "run", "train.max_steps=1"))
    config = json.loads((result.checkpoint / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (3, 2, 0)
    assert json.loads((result.checkpoint / "generation_config.json").read_text())["eos_token_id"] == 2
    assert (result.checkpoint / "tokenizer.json").read_bytes() == (tok / "tokenizer.json").read_bytes()
    assert (result.checkpoint / "tokenizer_config.json").is_file()

    other = _fake_tokenizer(tmp_path / "other")
    (other / "tokenizer.json").write_text("{}")
    with pytest.raises(ConfigError, match="not the one the shards"):
        train(make_recipe(shards, tmp_path / "run2", "train.max_steps=1", f"train.tokenizer={other}"))


def test_a_resumed_run_logs_the_same_steps_as_an_uninterrupted_one(shards, tmp_path, make_recipe, losses):
    overrides = ["train.log_every=5", "train.ckpt_every=3", "train.eval_every=0"]
    train(make_recipe(shards, tmp_path / "full", *overrides))
    with pytest.raises(KeyboardInterrupt):
        train(make_recipe(shards, tmp_path / "cut", *overrides), hooks=[CrashAt(8)])
    train(make_recipe(shards, tmp_path / "cut", *overrides), resume=True)  # from step 6: step 7 is not a log step

    def logged(run):
        return [(r["kind"], r["step"]) for r in map(json.loads, (tmp_path / run / "metrics.jsonl").read_text().splitlines())]

    assert logged("cut") == logged("full") == [("train", 1), ("train", 5), ("train", 10), ("train", 12), ("eval", 12)]
    assert losses(tmp_path / "cut") == losses(tmp_path / "full")


def test_too_little_data_and_a_resume_mismatch_are_config_errors(shards, tmp_path, make_recipe, shard_factory):
    tiny = shard_factory(tmp_path / "tiny", train_tokens=100, val_tokens=0)  # 3 windows of 32 < a batch of 4
    with pytest.raises(ConfigError, match=r"train\.shards=.*fewer than one global micro-batch"):
        train(make_recipe(tiny, tmp_path / "tiny-run"))
    train(make_recipe(shards, tmp_path / "run", "train.max_steps=2"))
    with pytest.raises(ConfigError, match=r"--resume: .*step_00000002.*seq_len was 32 .* now 16"):
        train(make_recipe(shards, tmp_path / "run", "train.max_steps=4", "train.seq_len=16"), resume=True)
    with pytest.raises(ConfigError, match=r"--resume: .*does not fit this recipe's model"):
        train(make_recipe(shards, tmp_path / "run", "train.max_steps=4", "model.d_model=64"), resume=True)
