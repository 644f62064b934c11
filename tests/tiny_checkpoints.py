"""Tiny checkpoints for the inference, serving and export tests: a byte-level BPE tokenizer with a
ChatML template, and random dense (Qwen3) and MoE (Qwen3-MoE) checkpoints saved as HF
directories with it. Test directories use the fixtures with
``from tiny_checkpoints import tokenizer_dir, dense_ckpt, moe_ckpt`` in their conftest (pytest
puts ``tests/`` on ``sys.path``).

The tokenizer is built here with ``tokenizers`` directly (not lmforge's trainer) so these tests
depend only on the engine. Its vocabulary is small on purpose: most Chinese characters stay split
over several byte tokens, which is what the UTF-8 streaming tests need.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lmforge.tokenizer.train import CHAT_TEMPLATE  # the template lmforge's own tokenizers carry

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world, hello model. Small models learn fast.",
    "def add(a, b):\n    return a + b\n",
    "你好，世界。今天天气很好。",
    "我们一起学习语言模型。",
    "Once upon a time there was a tiny language model.",
] * 20


def build_tokenizer(out_dir: Path, vocab_size: int = 300):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    hf.chat_template = CHAT_TEMPLATE
    hf.save_pretrained(out_dir)
    return hf


def build_checkpoint(out_dir: Path, tokenizer_dir: Path, moe: bool) -> Path:
    import shutil

    from lmforge.model import ModelConfig, Transformer
    from lmforge.model.hf import save_pretrained

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    extra = dict(num_experts=4, num_experts_per_tok=2, moe_ffn_hidden=32) if moe else {}
    cfg = ModelConfig(
        vocab_size=len(tok), d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=128,
        max_seq_len=128, qk_norm=True, tie_embeddings=not moe, init_std=0.15,
        eos_token_id=tok.eos_token_id, bos_token_id=None, pad_token_id=tok.pad_token_id, **extra,
    )
    torch.manual_seed(1234 if moe else 4321)
    model = Transformer(cfg)
    save_pretrained(model, out_dir)
    for f in tokenizer_dir.iterdir():
        shutil.copy(f, out_dir / f.name)
    return out_dir


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tok")
    build_tokenizer(out)
    return out


@pytest.fixture(scope="session")
def dense_ckpt(tmp_path_factory, tokenizer_dir) -> Path:
    return build_checkpoint(tmp_path_factory.mktemp("dense"), tokenizer_dir, moe=False)


@pytest.fixture(scope="session")
def moe_ckpt(tmp_path_factory, tokenizer_dir) -> Path:
    return build_checkpoint(tmp_path_factory.mktemp("moe"), tokenizer_dir, moe=True)
