"""lmforge models compute exactly what `transformers` computes, and checkpoints cross both ways.

(a) lmforge model -> ``save_pretrained`` -> ``AutoModelForCausalLM.from_pretrained`` (no remote
code) is the expected HF class and gives the same logits; (b) a random HF model built from its
own config class -> ``hf_model.save_pretrained`` (per-expert or fused experts, single file or
shards) -> ``load_pretrained`` gives the same logits. Tiny fp32 models, max |diff| <= 1e-4.
"""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import AutoModelForCausalLM  # noqa: E402

from lmforge.model import Transformer  # noqa: E402
from lmforge.model.hf import load_pretrained, save_pretrained  # noqa: E402

ATOL = 1e-4


def _hf_from_dir(path):
    # eager attention: an implementation independent of the SDPA kernels lmforge uses.
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()


def _ids(vocab: int, batch: int = 2, length: int = 12) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(7))


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def test_lmforge_to_hf(arch, make_config, randomize, tmp_path):
    cfg = make_config(arch)
    model = randomize(Transformer(cfg)).eval()
    save_pretrained(model, tmp_path)
    hf = _hf_from_dir(tmp_path)
    assert type(hf).__name__ == arch
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == [arch]
    ids = _ids(cfg.vocab_size)
    with torch.no_grad():
        ours = model(ids).logits
        theirs = hf(ids).logits
    assert _max_diff(ours, theirs) <= ATOL
    # Tying survives the trip: HF re-ties instead of finding an lm_head.weight in the file.
    assert (hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()) == cfg.tie_embeddings


def _hf_config(arch: str, tie: bool, **extra):
    """The same tiny shapes, written with HF's own config classes (independent of to_hf_config)."""
    from transformers import LlamaConfig, Qwen2Config, Qwen2MoeConfig, Qwen3Config, Qwen3MoeConfig

    common = dict(
        vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6, tie_word_embeddings=tie,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    common.update(extra)
    moe = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=24)
    if arch == "LlamaForCausalLM":
        return LlamaConfig(**common)
    if arch == "Qwen2ForCausalLM":
        return Qwen2Config(**common)
    if arch == "Qwen3ForCausalLM":
        return Qwen3Config(head_dim=16, **common)
    if arch == "Qwen3MoeForCausalLM":
        return Qwen3MoeConfig(head_dim=16, norm_topk_prob=True, **moe, **common)
    return Qwen2MoeConfig(shared_expert_intermediate_size=48, norm_topk_prob=False, **moe, **common)


def _random_hf_model(arch: str, tie: bool, **extra):
    hf = AutoModelForCausalLM.from_config(_hf_config(arch, tie, **extra), attn_implementation="eager")
    assert type(hf).__name__ == arch
    with torch.no_grad():  # non-trivial norms and biases too (HF initializes them to 1 and 0)
        gen = torch.Generator().manual_seed(99)
        for name, p in hf.named_parameters():
            noise = torch.randn(p.shape, generator=gen) * 0.2
            p.copy_(1.0 + noise if name.endswith("norm.weight") else noise)
    return hf.eval()


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_hf_to_lmforge(arch, tie, tmp_path):
    hf = _random_hf_model(arch, tie)
    hf.save_pretrained(tmp_path)
    model = load_pretrained(tmp_path)
    assert model.config.hf_architecture == arch
    assert model.config.tie_embeddings == tie
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tie
    ids = _ids(96)
    with torch.no_grad():
        assert _max_diff(model(ids).logits, hf(ids).logits) <= ATOL


@pytest.mark.parametrize("arch_name", ["Qwen3MoeForCausalLM", "Qwen2MoeForCausalLM"])
def test_hf_fused_experts_and_shards_load(arch_name, tmp_path):
    """transformers 5 keeps experts fused in memory; saved without conversion back to the hub
    layout (and sharded) they are [E, 2I, D] / [E, D, I] tensors that load_pretrained splits."""
    hf = _random_hf_model(arch_name, tie=False)
    hf.save_pretrained(tmp_path, save_original_format=False, max_shard_size="40KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert any(name.endswith("mlp.experts.gate_up_proj") for name in index["weight_map"])
    assert len(set(index["weight_map"].values())) > 1
    model = load_pretrained(tmp_path)
    ids = _ids(96)
    with torch.no_grad():
        assert _max_diff(model(ids).logits, hf(ids).logits) <= ATOL


def test_hf_per_expert_layout_is_what_we_write(make_config, tmp_path):
    """Our files use the hub's per-expert names, the layout vLLM and llama.cpp converters read."""
    from safetensors import safe_open

    save_pretrained(Transformer(make_config("Qwen3MoeForCausalLM")), tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        names = set(f.keys())
    assert "model.layers.0.mlp.experts.3.gate_proj.weight" in names
    assert "model.layers.0.mlp.gate.weight" in names
    assert not any(name.endswith("gate_up_proj") for name in names)


def test_rope_linear_scaling_matches_hf(make_config, randomize, tmp_path):
    cfg = make_config("LlamaForCausalLM", rope_scaling_factor=4.0)
    model = randomize(Transformer(cfg)).eval()
    save_pretrained(model, tmp_path / "ours")
    written = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert written["rope_parameters"]["rope_type"] == "linear" and written["rope_parameters"]["factor"] == 4.0
    hf = _hf_from_dir(tmp_path / "ours")
    ids = _ids(cfg.vocab_size, length=40)
    with torch.no_grad():
        ours = model(ids).logits
        assert _max_diff(ours, hf(ids).logits) <= ATOL
        # Not vacuous: the scaled model differs from the same weights without scaling.
        unscaled = make_config("LlamaForCausalLM")
        plain = Transformer(unscaled).eval()
        plain.load_state_dict(model.state_dict())
        assert _max_diff(plain(ids).logits, ours) > 1e-3

    # And the other way: an HF config with rope_type linear is read as a scaling factor.
    hf2 = _random_hf_model("Qwen3ForCausalLM", tie=True, rope_parameters={"rope_type": "linear", "factor": 2.5, "rope_theta": 5000.0})
    hf2.save_pretrained(tmp_path / "theirs")
    loaded = load_pretrained(tmp_path / "theirs")
    assert loaded.config.rope_scaling_factor == 2.5 and loaded.config.rope_theta == 5000.0
    with torch.no_grad():
        assert _max_diff(loaded(ids).logits, hf2(ids).logits) <= ATOL


def test_moe_aux_loss_matches_hf_load_balancing_loss(make_config, randomize, tmp_path):
    """HF's Switch loss counts top-k slots per token (it is k under uniform routing); ours divides
    by k so that it is 1. With one layer the two agree up to that factor."""
    cfg = make_config("Qwen3MoeForCausalLM", n_layers=1, aux_loss_coef=0.01)
    model = randomize(Transformer(cfg)).eval()
    save_pretrained(model, tmp_path)
    hf = _hf_from_dir(tmp_path)
    ids = _ids(cfg.vocab_size, length=16)
    with torch.no_grad():
        ours = model(ids).aux_loss / cfg.aux_loss_coef
        theirs = hf(ids, output_router_logits=True).aux_loss
    assert ours.item() == pytest.approx(theirs.item() / cfg.num_experts_per_tok, abs=1e-5)


def test_sharded_save_loads_in_both(make_config, randomize, tmp_path):
    cfg = make_config("Qwen2MoeForCausalLM")
    model = randomize(Transformer(cfg)).eval()
    save_pretrained(model, tmp_path, max_shard_size="16KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and all((tmp_path / s).is_file() for s in shards)
    assert not (tmp_path / "model.safetensors").exists()
    ids = _ids(cfg.vocab_size)
    with torch.no_grad():
        expected = model(ids).logits
        assert _max_diff(load_pretrained(tmp_path)(ids).logits, expected) == 0.0
        assert _max_diff(_hf_from_dir(tmp_path)(ids).logits, expected) <= ATOL
    # Saving again unsharded replaces the shards: a loader never sees two layouts.
    save_pretrained(model, tmp_path)
    assert sorted(p.name for p in tmp_path.glob("model*")) == ["model.safetensors"]


def test_bf16_checkpoint_loads_as_requested_dtype(make_config, randomize, tmp_path):
    cfg = make_config("Qwen3ForCausalLM")
    model = randomize(Transformer(cfg)).eval()
    save_pretrained(model, tmp_path, dtype=torch.bfloat16)
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    loaded = load_pretrained(tmp_path, dtype=torch.float32)
    assert loaded.model.embed_tokens.weight.dtype == torch.float32
    assert loaded.rotary.inv_freq.dtype == torch.float32
    ids = _ids(cfg.vocab_size)
    with torch.no_grad():
        assert _max_diff(loaded(ids).logits, model(ids).logits) < 0.1  # bf16 rounding of the weights only
