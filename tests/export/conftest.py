"""Export and import tests: the tiny checkpoints, and tiny random models written by transformers."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from tiny_checkpoints import dense_ckpt, moe_ckpt, tokenizer_dir  # noqa: F401  (fixtures)

COMMON = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-6, tie_word_embeddings=False,
              eos_token_id=0, pad_token_id=0, bos_token_id=None)


def hf_model(kind: str):
    """A transformers model of each family lmforge imports, randomly initialised (seeded)."""
    import transformers as tf

    torch.manual_seed({"llama": 1, "qwen2": 2, "qwen3": 3, "qwen3_moe": 4, "qwen2_moe": 5}[kind])
    if kind == "llama":
        config = tf.LlamaConfig(**COMMON, head_dim=16)
        model = tf.LlamaForCausalLM(config)
    elif kind == "qwen2":
        model = tf.Qwen2ForCausalLM(tf.Qwen2Config(**COMMON))
    elif kind == "qwen3":
        model = tf.Qwen3ForCausalLM(tf.Qwen3Config(**COMMON, head_dim=24))  # head_dim != hidden/heads
    elif kind == "qwen3_moe":
        model = tf.Qwen3MoeForCausalLM(tf.Qwen3MoeConfig(**COMMON, head_dim=16, num_experts=4, num_experts_per_tok=2,
                                                         moe_intermediate_size=32, norm_topk_prob=True))
    else:
        model = tf.Qwen2MoeForCausalLM(tf.Qwen2MoeConfig(**COMMON, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                                                         shared_expert_intermediate_size=64, norm_topk_prob=False))
    # Random init in transformers is small; widen it so logits differ visibly between tokens.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.1)
    return model.eval()


@pytest.fixture
def hf_dir(tmp_path, tokenizer_dir):
    """Write a transformers model of ``kind`` with the tiny tokenizer; returns its directory."""

    def make(kind: str) -> Path:
        out = tmp_path / f"hf-{kind}"
        hf_model(kind).save_pretrained(out)
        for f in tokenizer_dir.iterdir():
            shutil.copy(f, out / f.name)
        return out

    return make


@pytest.fixture(scope="session")
def lmforge_tokenizer_dir(tmp_path_factory) -> Path:
    """A tokenizer from lmforge's own trainer (Qwen2 pre-tokenization, NFC, ChatML template)."""
    from lmforge.tokenizer.train import TokenizerConfig, train_tokenizer
    from tiny_checkpoints import CORPUS

    return Path(train_tokenizer(CORPUS, tmp_path_factory.mktemp("lmtok") / "tok", TokenizerConfig(vocab_size=400, num_reserved_tokens=4),
                                show_progress=False))


@pytest.fixture
def lmforge_ckpt(tmp_path, lmforge_tokenizer_dir):
    """An lmforge checkpoint of a given shape with lmforge's tokenizer: make(**ModelConfig fields)."""
    from transformers import AutoTokenizer

    from lmforge.model import ModelConfig, Transformer
    from lmforge.model.hf import save_pretrained

    def make(name: str, **shape) -> Path:
        tok = AutoTokenizer.from_pretrained(lmforge_tokenizer_dir)
        cfg = ModelConfig(**{**dict(vocab_size=len(tok) + 12, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=128,
                                    max_seq_len=128, init_std=0.15, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id), **shape})
        torch.manual_seed(len(name))
        out = save_pretrained(Transformer(cfg), tmp_path / name)
        for f in lmforge_tokenizer_dir.iterdir():
            if f.is_file():
                shutil.copy(f, out / f.name)
        return out

    return make
