"""Tiny model shapes for every HF architecture lmforge maps to, and helpers shared by the model tests."""

from __future__ import annotations

import pytest
import torch

# One tiny shape per HF architecture. Each exercises a different attention/feed-forward variant:
# GQA everywhere, q/k/v bias (Qwen2, Qwen2-MoE), QK-norm with head_dim != d_model/n_heads
# (Qwen3, Qwen3-MoE), untied embeddings on some, renormalized and raw top-k weights.
ARCH_CONFIGS = {
    "LlamaForCausalLM": dict(tie_embeddings=True),
    "Qwen2ForCausalLM": dict(attention_bias=True, tie_embeddings=False),
    "Qwen3ForCausalLM": dict(qk_norm=True, head_dim=16, tie_embeddings=True),
    "Qwen3MoeForCausalLM": dict(
        qk_norm=True, head_dim=16, tie_embeddings=False, num_experts=4, num_experts_per_tok=2,
        moe_ffn_hidden=24, norm_topk_prob=True,
    ),
    "Qwen2MoeForCausalLM": dict(
        attention_bias=True, tie_embeddings=True, num_experts=4, num_experts_per_tok=2,
        moe_ffn_hidden=24, num_shared_experts=1, norm_topk_prob=False,
    ),
}
ARCHS = list(ARCH_CONFIGS)


def tiny_config(arch: str, **overrides):
    from lmforge.model import ModelConfig

    kwargs = dict(vocab_size=96, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=48, max_seq_len=64, rope_theta=10000.0)
    kwargs.update(ARCH_CONFIGS[arch])
    kwargs.update(overrides)
    cfg = ModelConfig(**kwargs)
    assert cfg.hf_architecture == arch
    return cfg


@torch.no_grad()
def randomize_(model: torch.nn.Module, std: float = 0.2) -> torch.nn.Module:
    """Give every parameter (norm weights and biases included) non-trivial values, so a weight
    that is mis-mapped or ignored shows up in the logits instead of hiding behind ones/zeros."""
    gen = torch.Generator().manual_seed(1234)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=gen) * std
        if name.endswith("norm.weight"):
            p.copy_(1.0 + noise)
        else:
            p.copy_(noise)
    return model


@pytest.fixture
def make_config():
    return tiny_config


@pytest.fixture
def randomize():
    return randomize_


def pytest_generate_tests(metafunc):
    # Any test taking `arch` runs once per HF architecture.
    if "arch" in metafunc.fixturenames:
        metafunc.parametrize("arch", ARCHS)
