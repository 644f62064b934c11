"""``lmforge import``: models written by transformers become lmforge checkpoints with equal logits,
and the result trains (continued pretraining from it)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmforge.export.hf_dir import import_hf
from lmforge.model.hf import load_pretrained

def _load_module(path: Path):
    spec = importlib.util.spec_from_file_location(f"_helpers_{path.parent.name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


KINDS = ["llama", "qwen2", "qwen3", "qwen3_moe", "qwen2_moe"]


@pytest.mark.parametrize("kind", KINDS)
def test_import_gives_the_logits_transformers_gives(kind, hf_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    source = hf_dir(kind)
    report = import_hf(source, tmp_path / "ckpt")
    assert report["max_abs_diff"] < 1e-4 and report["greedy_agreement"] == 1.0
    ids = torch.randint(0, 300, (3, 40), generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        want = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()(ids).logits
        ours = load_pretrained(tmp_path / "ckpt")(ids).logits
        # The written checkpoint is itself an HF directory transformers reads back, unchanged.
        again = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt", dtype=torch.float32).eval()(ids).logits
    torch.testing.assert_close(ours, want, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(again, want, atol=1e-5, rtol=1e-5)
    meta = json.loads((tmp_path / "ckpt" / "lmforge.json").read_text())
    assert meta["imported_from"] == str(source) and meta["step"] == 0
    assert (tmp_path / "ckpt" / "tokenizer.json").is_file()


def test_imported_checkpoint_continues_pretraining(hf_dir, tmp_path):
    from lmforge.recipe import load_recipe
    from lmforge.train.pretrain import train

    train_helpers = _load_module(Path(__file__).resolve().parents[1] / "train" / "conftest.py")  # write_shards
    import_hf(hf_dir("qwen3"), tmp_path / "ckpt")
    shards = train_helpers.write_shards(tmp_path / "shards")  # token ids < 256 fit the 300-token vocabulary
    recipe = load_recipe(None, [
        f"train.shards={shards}", f"train.out_dir={tmp_path / 'run'}", f"train.init_from={tmp_path / 'ckpt'}",
        "train.seq_len=32", "train.batch_size=4", "train.max_steps=3", "train.warmup_steps=1", "train.lr=1e-3",
        "train.eval_every=3", "train.eval_batches=1", "train.ckpt_every=3", "train.num_threads=1", "train.dtype=float32",
        "train.progress=false", "train.tensorboard=false", "train.device=cpu", "train.log_every=1",
    ])
    result = train(recipe)
    assert json.loads((result.checkpoint / "lmforge.json").read_text())["parent_checkpoint"] == str(tmp_path / "ckpt")
    assert torch.isfinite(torch.tensor(result.metrics["loss"]))


def test_import_cli_reports_the_check_and_refuses_unsupported_models(hf_dir, tmp_path):
    source = hf_dir("llama")
    done = subprocess.run([sys.executable, "-m", "lmforge.cli", "import", str(source), "--out", str(tmp_path / "ok")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "logits equal transformers'" in done.stderr and "LlamaForCausalLM" in done.stderr

    config = json.loads((source / "config.json").read_text())
    (source / "config.json").write_text(json.dumps({**config, "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    refused = subprocess.run([sys.executable, "-m", "lmforge.cli", "import", str(source), "--out", str(tmp_path / "no")],
                             capture_output=True, text=True)
    assert refused.returncode == 2
    assert "model_type 'gpt2'" in refused.stderr and "supported: llama" in refused.stderr
    assert not (tmp_path / "no").exists()
    missing = subprocess.run([sys.executable, "-m", "lmforge.cli", "import", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")],
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "no such checkpoint directory" in missing.stderr
