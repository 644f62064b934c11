"""``lmforge lora``: peft adapters over a frozen tiny checkpoint through the one Trainer — the loss
falls, only adapter weights change, the adapter loads with peft over ``transformers``, merging
gives the same logits, resume is exact, and the CLI trains and merges."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from chat_helpers import CHAT_SYSTEM, CrashAt, addition_chats, save_chat_checkpoint

from lmforge.recipe import load_recipe


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """A random tiny Qwen3-style checkpoint with a tokenizer trained on the chat text.

    init_std 0.1, not the default 0.02: with 0.02-std tied embeddings a random model's logits stay
    within about ±1, and frozen weights keep them there, so no adapter could lower the loss much
    (a real pretrained base has a working output layer).
    """
    from lmforge.tokenizer.train import TokenizerConfig, train_tokenizer

    root = tmp_path_factory.mktemp("pretrained")
    texts = [t["value"] for c in addition_chats(200, seed=9) for t in c["conversations"]] + [CHAT_SYSTEM] * 20
    tok = train_tokenizer(texts, root / "tok", TokenizerConfig(vocab_size=300, num_reserved_tokens=4))
    return save_chat_checkpoint(root / "ckpt", tok, init_std=0.1)


def _settings(tmp_path: Path, ckpt: Path) -> list[str]:
    data = tmp_path / "chat.jsonl"
    if not data.exists():
        data.write_text("\n".join(json.dumps(c) for c in addition_chats(160)) + "\n")
    return [
        f"out_dir={tmp_path}", f"train.init_from={ckpt}", f"sft.train=[{data}]", "sft.val_fraction=0.1",
        "train.seq_len=256", "train.batch_size=2", "train.max_steps=20", "train.warmup_steps=2", "train.lr=1e-2",
        "train.log_every=1", "train.eval_every=10", "train.ckpt_every=10", "train.num_threads=1", "train.dtype=float32",
        "train.device=cpu", "train.progress=false", "train.tensorboard=false",
    ]  # fmt: skip


def _recipe(tmp_path: Path, ckpt: Path, *overrides: str):
    return load_recipe(None, [*_settings(tmp_path, ckpt), *overrides])


def _losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "train"]


def _ids(n: int = 2, t: int = 24) -> torch.Tensor:
    return torch.randint(0, 300, (n, t), generator=torch.Generator().manual_seed(3))


class _KeepModel:
    """Keeps the trainer's model (the peft-wrapped one it optimized) at its last checkpoint."""

    model = None

    def on_checkpoint(self, trainer, step, path):
        self.model = trainer.raw_model


@pytest.fixture(scope="module")
def trained(pretrained, tmp_path_factory):
    """One LoRA run (default targets): its run dir, result and the trained model itself."""
    from lmforge.train.lora import train_lora

    tmp = tmp_path_factory.mktemp("lora")
    kept = _KeepModel()
    result = train_lora(_recipe(tmp, pretrained), hooks=[kept])
    return tmp / "lora", result, kept.model.eval()


def _adapted(base: Path, checkpoint: Path, lcfg):
    from lmforge.model.hf import load_pretrained
    from lmforge.train.lora import add_adapters, load_adapter, peft_config

    model = add_adapters(load_pretrained(base), peft_config(lcfg, base))
    load_adapter(model, checkpoint)
    return model.eval()


def test_lora_loss_falls_and_only_adapters_change(pretrained, trained):
    from lmforge.model.hf import read_state_dict

    run_dir, result, model = trained
    losses = _losses(run_dir)
    assert len(losses) == 20 and sum(losses[-4:]) / 4 < 0.7 * sum(losses[:2]) / 2, losses
    assert result.summary()["val_loss"] < losses[0]
    report = json.loads((run_dir / "lora_data.json").read_text())
    assert report["train_conversations"] + report["val_conversations"] == 160
    # 7 projections x 2 layers, each r·(in + out): q 48+48, k/v 48+24, o 48+48, gate/up 48+128, down 128+48
    assert report["trainable_parameters"] == 2 * 8 * (96 + 72 + 72 + 96 + 176 + 176 + 176) == 13_824
    assert report["total_parameters"] == report["trainable_parameters"] + sum(
        t.numel() for t in read_state_dict(pretrained).values())

    ckpt = result.checkpoint
    meta = json.loads((ckpt / "lmforge.json").read_text())
    assert meta["stage"] == "lora" and meta["parent_checkpoint"] == str(pretrained.resolve())
    config = json.loads((ckpt / "adapter_config.json").read_text())
    assert config["task_type"] == "CAUSAL_LM" and config["base_model_name_or_path"] == str(pretrained.resolve())
    assert config["r"] == 8 and config["lora_alpha"] == 16
    assert (ckpt / "tokenizer.json").is_file() and not (ckpt / "model.safetensors").exists()

    # every base weight bit-identical after training; every adapter matrix moved from its start
    # (the same seed draws the same initial adapters; lora_B starts at zero)
    from lmforge.model.hf import load_pretrained
    from lmforge.train.lora import add_adapters, peft_config

    torch.manual_seed(1337)  # train.seed
    start = dict(add_adapters(load_pretrained(pretrained), peft_config(load_recipe(None).lora, pretrained)).named_parameters())
    after = dict(model.named_parameters())
    assert after.keys() == start.keys()
    adapters = [n for n in after if ".lora_" in n]
    assert len(adapters) == 2 * 7 * 2 and {n for n, p in after.items() if p.requires_grad} == set(adapters)
    assert all(torch.equal(after[n], start[n]) for n in after if n not in adapters)
    assert not any(torch.equal(after[n], start[n]) for n in adapters)
    assert all(start[n].abs().sum() == 0 and after[n].abs().sum() > 0 for n in adapters if "lora_B" in n)
    # and the base weights are the checkpoint's, under peft's names
    base = {n.replace("base_model.model.", "").replace(".base_layer", ""): p for n, p in after.items() if n not in adapters}
    assert all(torch.equal(base[n], t) for n, t in read_state_dict(pretrained).items())
    saved = load_file(ckpt / "adapter_model.safetensors")
    assert len(saved) == len(adapters)
    assert all(torch.equal(t, after[n.replace(".weight", ".default.weight")]) for n, t in saved.items())


def test_saved_adapter_loads_with_peft_over_transformers_and_merges(pretrained, trained, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from lmforge.infer.engine import Engine
    from lmforge.infer.sampling import SamplingConfig
    from lmforge.model.hf import load_pretrained
    from lmforge.train.lora import merge_lora

    run_dir, result, model = trained
    ours = _adapted(pretrained, result.checkpoint, load_recipe(None).lora)
    with torch.no_grad():
        base_logits = load_pretrained(pretrained)(_ids()).logits
        logits = model(_ids()).logits
        assert torch.equal(ours(_ids()).logits, logits)  # the checkpoint is the trained model
        hf = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(pretrained), result.checkpoint).eval()
        hf_logits = hf(_ids()).logits
    assert (logits - base_logits).abs().max() > 1e-2  # the adapter does something
    torch.testing.assert_close(hf_logits, logits, atol=1e-5, rtol=1e-5)

    merged_dir = merge_lora(run_dir, tmp_path / "merged")  # a run dir: its latest checkpoint, base from adapter_config
    meta = json.loads((merged_dir / "lmforge.json").read_text())
    assert meta["stage"] == "lora_merge" and meta["base"] == str(pretrained.resolve()) and meta["adapter"] == str(result.checkpoint)
    with torch.no_grad():
        torch.testing.assert_close(load_pretrained(merged_dir)(_ids()).logits, logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(AutoModelForCausalLM.from_pretrained(merged_dir)(_ids()).logits, logits, atol=1e-5, rtol=1e-5)
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=12)
    reply = Engine.from_checkpoint(merged_dir, device="cpu").chat([{"role": "user", "content": "What is 3 plus 4?"}], greedy)
    assert isinstance(reply, str) and reply
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


@pytest.mark.parametrize("adapt", ["modules_to_save", "lora_on_lm_head"])
def test_merge_keeps_a_trained_output_layer_apart_from_tied_embeddings(pretrained, tmp_path, adapt):
    """The base ties lm_head to embed_tokens. Training a copy of lm_head (modules_to_save) or a
    LoRA on it (as adapters from elsewhere may) changes only the output layer: the merged
    checkpoint must come out untied, with the embedding as it was."""
    from peft import LoraConfig, PeftModel
    from transformers import AutoModelForCausalLM

    from lmforge.model.hf import load_pretrained
    from lmforge.train.lora import add_adapters, merge_lora, peft_config, save_adapter

    if adapt == "modules_to_save":
        config = peft_config(load_recipe(None, ["lora.target_modules=[q_proj,v_proj]", "lora.modules_to_save=[lm_head]"]).lora, pretrained)
    else:
        config = LoraConfig(r=4, target_modules=["q_proj", "lm_head"], task_type="CAUSAL_LM", base_model_name_or_path=str(pretrained))
    torch.manual_seed(1)
    model = add_adapters(load_pretrained(pretrained), config)
    with torch.no_grad():  # stand-in for training: every trainable tensor moves
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
        logits = model.eval()(_ids()).logits
    save_adapter(model, tmp_path / "adapter")
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    hf = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(pretrained), tmp_path / "adapter").eval()
    merged = merge_lora(tmp_path / "adapter", tmp_path / "merged")
    assert json.loads((merged / "config.json").read_text())["tie_word_embeddings"] is False
    merged_model = load_pretrained(merged)
    assert torch.equal(merged_model.model.embed_tokens.weight, load_pretrained(pretrained).model.embed_tokens.weight)
    with torch.no_grad():
        torch.testing.assert_close(hf(_ids()).logits, logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(merged_model(_ids()).logits, logits, atol=1e-5, rtol=1e-5)


def test_lora_resume_is_exact(pretrained, tmp_path):
    from lmforge.train.lora import train_lora

    overrides = ("train.max_steps=8", "train.ckpt_every=3", "train.eval_every=0")
    (tmp_path / "full").mkdir()
    full = train_lora(_recipe(tmp_path / "full", pretrained, *overrides))
    (tmp_path / "cut").mkdir()
    with pytest.raises(KeyboardInterrupt):
        train_lora(_recipe(tmp_path / "cut", pretrained, *overrides), hooks=[CrashAt(5)])
    cut = train_lora(_recipe(tmp_path / "cut", pretrained, *overrides), resume=True)
    assert _losses(tmp_path / "cut" / "lora") == _losses(tmp_path / "full" / "lora")  # every step, exactly
    a, b = load_file(full.checkpoint / "adapter_model.safetensors"), load_file(cut.checkpoint / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_lora_configuration_mistakes_are_clear(pretrained, tmp_path):
    from lmforge.config import ConfigError
    from lmforge.train.lora import train_lora

    train_lora(_recipe(tmp_path, pretrained, "train.max_steps=1"))
    with pytest.raises(ConfigError, match="does not fit this recipe"):
        train_lora(_recipe(tmp_path, pretrained, "train.max_steps=2", "lora.rank=4"), resume=True)
    (tmp_path / "again").mkdir()
    with pytest.raises(ConfigError, match="a LoRA adapter .*, not a full checkpoint.*lora merge"):  # adapters on adapters
        train_lora(_recipe(tmp_path / "again", pretrained, f"train.init_from={tmp_path / 'lora'}"))
    with pytest.raises(ConfigError, match="modules_to_save: the model has no module named 'head'"):
        train_lora(_recipe(tmp_path / "again", pretrained, "lora.modules_to_save=[head]"))


def test_cli_trains_only_the_named_modules_and_merges(pretrained, tmp_path):
    from typer.testing import CliRunner

    from lmforge.cli import app
    from lmforge.model.hf import load_pretrained

    recipe = tmp_path / "lora.yaml"
    recipe.write_text("lora:\n  target_modules: [q_proj, v_proj]\n  rank: 4\n  alpha: 8\n")
    settings = [x for s in _settings(tmp_path, pretrained) for x in ("--set", s)]
    runner = CliRunner()
    trained = runner.invoke(app, ["lora", str(recipe), *settings, "--set", "train.max_steps=2"])
    assert trained.exit_code == 0, trained.output
    assert "lmforge lora merge" in trained.output
    ckpt = tmp_path / "lora" / "checkpoints" / "step_00000002"
    names = {n.split(".")[-3] for n in load_file(ckpt / "adapter_model.safetensors")}  # ...q_proj.lora_A.weight
    assert names == {"q_proj", "v_proj"}
    assert json.loads((ckpt / "adapter_config.json").read_text())["r"] == 4

    merged = runner.invoke(app, ["lora", "merge", str(ckpt), "--out", str(tmp_path / "merged")])
    assert merged.exit_code == 0, merged.output
    assert load_pretrained(tmp_path / "merged").config.vocab_size == 300
    again = runner.invoke(app, ["lora", "merge", str(ckpt), "--out", str(tmp_path / "merged")])
    assert again.exit_code != 0 and "not empty" in str(again.exception)


def test_merge_errors_are_clear(pretrained, tmp_path):
    from lmforge.config import ConfigError
    from lmforge.model import Transformer
    from lmforge.model.hf import from_hf_config, load_pretrained, save_pretrained
    from lmforge.train.lora import add_adapters, merge_lora, peft_config, save_adapter

    with pytest.raises(ConfigError, match="not a LoRA adapter"):
        merge_lora(pretrained, tmp_path / "a")  # a full checkpoint
    with pytest.raises(ConfigError, match="no such directory"):
        merge_lora(tmp_path / "missing", tmp_path / "a")
    model = add_adapters(load_pretrained(pretrained), peft_config(load_recipe(None).lora, pretrained))
    save_adapter(model, tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": None}))
    with pytest.raises(ConfigError, match="no base_model_name_or_path.*--base"):
        merge_lora(tmp_path / "adapter", tmp_path / "b")
    assert merge_lora(tmp_path / "adapter", tmp_path / "b", base=pretrained).is_dir()
    other = shutil.copytree(pretrained, tmp_path / "other")  # same names, another feed-forward width
    save_pretrained(Transformer(from_hf_config({**json.loads((other / "config.json").read_text()), "intermediate_size": 64})), other)
    with pytest.raises(ConfigError, match="does not fit base"):
        merge_lora(tmp_path / "adapter", tmp_path / "c", base=other)
    assert not (tmp_path / "c").exists()
