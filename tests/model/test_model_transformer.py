"""The model on its own: KV-cache decoding, padding, packed masks, MoE statistics, gradients,
mixed precision and configuration errors."""

from __future__ import annotations

import json

import pytest
import torch

from lmforge.model import ModelConfig, Transformer
from lmforge.model.hf import from_hf_config, load_pretrained, save_pretrained
from lmforge.model.moe import MoEFeedForward

ATOL = 1e-5


def _model(make_config, randomize, arch, **overrides) -> Transformer:
    return randomize(Transformer(make_config(arch, **overrides))).eval()


@torch.no_grad()
def test_kv_cache_decoding_equals_full_forward(arch, make_config, randomize):
    model = _model(make_config, randomize, arch)
    ids = torch.randint(0, 96, (2, 14))
    full = model(ids).logits
    cache = model.new_kv_cache(batch_size=2, max_len=20)
    steps = [model(ids[:, :5], kv_cache=cache).logits]  # prefill
    steps.append(model(ids[:, 5:8], kv_cache=cache).logits)  # a chunk on top of a cache
    for t in range(8, 14):  # then one token at a time
        steps.append(model(ids[:, t : t + 1], kv_cache=cache).logits)
    assert cache.length == 14
    assert (torch.cat(steps, dim=1) - full).abs().max() <= ATOL


@torch.no_grad()
def test_left_padded_batch_matches_unpadded_rows(arch, make_config, randomize):
    """Left padding hidden by a key mask, RoPE positions starting at each row's first real
    token: prefill and cached decoding give every row what it gets alone."""
    model = _model(make_config, randomize, arch)
    prompts = [torch.randint(0, 96, (n,)) for n in (7, 3, 5)]
    cont = torch.randint(0, 96, (3, 4))
    width = max(len(p) for p in prompts)
    ids = torch.zeros((3, width), dtype=torch.long)
    key_mask = torch.zeros((3, width + cont.shape[1]), dtype=torch.bool)
    for row, p in enumerate(prompts):
        ids[row, width - len(p) :] = p
        key_mask[row, width - len(p) : width] = True
    positions = (key_mask[:, :width].long().cumsum(-1) - 1).clamp(min=0)

    cache = model.new_kv_cache(batch_size=3, max_len=width + cont.shape[1])
    prefill = model(ids, position_ids=positions, kv_cache=cache, attention_mask=key_mask[:, :width]).logits
    next_pos = positions[:, -1:] + 1
    decoded = []
    for t in range(cont.shape[1]):
        key_mask[:, width + t] = True
        out = model(cont[:, t : t + 1], position_ids=next_pos, kv_cache=cache, attention_mask=key_mask[:, : width + t + 1])
        decoded.append(out.logits)
        next_pos = next_pos + 1
    decoded = torch.cat(decoded, dim=1)

    for row, p in enumerate(prompts):
        alone = model(torch.cat([p, cont[row]]).unsqueeze(0)).logits[0]
        assert (prefill[row, width - len(p) :] - alone[: len(p)]).abs().max() <= ATOL
        assert (decoded[row] - alone[len(p) :]).abs().max() <= ATOL
        assert torch.isfinite(prefill[row]).all()  # padding rows stay finite (no all-masked NaN)


@torch.no_grad()
def test_packed_documents_with_block_mask(make_config, randomize):
    """A [B, 1, T, T] mask (block-diagonal causal) plus per-document positions equals running
    the documents separately: the path packed training uses."""
    model = _model(make_config, randomize, "Qwen3ForCausalLM")
    a, b = torch.randint(0, 96, (6,)), torch.randint(0, 96, (4,))
    ids = torch.cat([a, b]).unsqueeze(0)
    doc = torch.tensor([0] * 6 + [1] * 4)
    causal = torch.tril(torch.ones(10, 10, dtype=torch.bool))
    mask = (causal & (doc[:, None] == doc[None, :]))[None, None]
    positions = torch.cat([torch.arange(6), torch.arange(4)]).unsqueeze(0)
    packed = model(ids, position_ids=positions, attention_mask=mask).logits[0]
    assert (packed[:6] - model(a.unsqueeze(0)).logits[0]).abs().max() <= ATOL
    assert (packed[6:] - model(b.unsqueeze(0)).logits[0]).abs().max() <= ATOL


@torch.no_grad()
def test_num_logits_to_keep(make_config, randomize):
    model = _model(make_config, randomize, "LlamaForCausalLM")
    ids = torch.randint(0, 96, (2, 9))
    kept = model(ids, num_logits_to_keep=1).logits
    assert kept.shape == (2, 1, 96)
    assert (kept - model(ids).logits[:, -1:]).abs().max() <= ATOL


def test_kv_cache_overflow_is_an_error(make_config):
    model = Transformer(make_config("LlamaForCausalLM")).eval()
    cache = model.new_kv_cache(batch_size=1, max_len=4)
    with pytest.raises(ValueError, match="KV cache overflow"):
        model(torch.zeros((1, 5), dtype=torch.long), kv_cache=cache)


@pytest.mark.parametrize("arch_name", ["Qwen3MoeForCausalLM", "Qwen2MoeForCausalLM"])
def test_aux_loss_is_one_under_uniform_router_probabilities(arch_name, make_config, randomize):
    """Zero router weights make every probability 1/E. The top-k then breaks the ties the same
    way for every token (all tokens go to the same k experts), so the load f is as skewed as it
    gets, yet E·Σ f_e·P_e = E·Σ f_e/E = Σ f_e = 1: the loss only penalizes load where the router
    puts probability. Expert load still sums to 1 per layer."""
    model = _model(make_config, randomize, arch_name, aux_loss_coef=0.01)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.gate.weight.zero_()
    out = model(torch.randint(0, 96, (3, 10)))
    assert out.aux_loss.item() == pytest.approx(0.01, abs=1e-7)  # coef · mean over layers of 1.0
    for layer in model.model.layers:
        assert layer.mlp.last_aux_loss.item() == pytest.approx(1.0, abs=1e-6)
    assert out.expert_load.shape == (2, 4)
    assert torch.allclose(out.expert_load.sum(dim=-1), torch.ones(2))


def test_aux_loss_is_one_for_balanced_load_and_larger_when_skewed():
    cfg = ModelConfig(vocab_size=16, d_model=4, n_layers=1, n_heads=1, n_kv_heads=1, head_dim=4,
                      num_experts=4, num_experts_per_tok=2, moe_ffn_hidden=8, qk_norm=True)
    moe = MoEFeedForward(cfg)
    with torch.no_grad():
        moe.gate.weight.copy_(torch.eye(4) * 3.0)
    # Tokens 0 and 2 prefer experts {0, 1}, tokens 1 and 3 prefer {2, 3}: each expert gets exactly
    # 2 of the 8 slots, so f_e = 1/4 whatever the (non-uniform) probabilities are.
    balanced = torch.tensor([[1.0, 0.9, 0, 0], [0, 0, 1.0, 0.9], [0.9, 1.0, 0, 0], [0, 0, 0.9, 1.0]])
    moe(balanced.unsqueeze(0))
    assert torch.allclose(moe.last_expert_load, torch.full((4,), 0.25))
    assert moe.last_aux_loss.item() == pytest.approx(1.0, abs=1e-6)
    # Everything to experts {0, 1} with confident probabilities: the loss rises towards E/k = 2.
    skewed = torch.tensor([[1.0, 0.9, 0, 0]] * 4)
    moe(skewed.unsqueeze(0))
    assert moe.last_expert_load.tolist() == [0.5, 0.5, 0.0, 0.0]
    assert 1.5 < moe.last_aux_loss.item() < 2.0


@pytest.mark.parametrize("arch_name", ["Qwen3MoeForCausalLM", "Qwen2MoeForCausalLM"])
def test_gradients_reach_the_router(arch_name, make_config, randomize):
    model = _model(make_config, randomize, arch_name).train()
    ids = torch.randint(0, 96, (2, 8))
    # Through the LM loss alone: the routing weights scale each expert's output.
    torch.nn.functional.cross_entropy(model(ids).logits.flatten(0, 1), ids.flatten()).backward()
    for layer in model.model.layers:
        assert layer.mlp.gate.weight.grad is not None and layer.mlp.gate.weight.grad.abs().sum() > 0
    model.zero_grad()
    # Through the balancing loss alone.
    model(ids).aux_loss.backward()
    assert all(layer.mlp.gate.weight.grad.abs().sum() > 0 for layer in model.model.layers)


def test_dense_model_reports_no_moe_stats(make_config):
    out = Transformer(make_config("LlamaForCausalLM"))(torch.zeros((1, 3), dtype=torch.long))
    assert out.aux_loss.item() == 0.0 and out.expert_load is None


@pytest.mark.parametrize("arch_name", ["Qwen3ForCausalLM", "Qwen2MoeForCausalLM"])
def test_bf16_autocast_and_bf16_weights(arch_name, make_config, randomize):
    model = _model(make_config, randomize, arch_name)
    ids = torch.randint(0, 96, (2, 8))
    with torch.no_grad():
        ref = model(ids).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model(ids).logits
        assert mixed.dtype == torch.bfloat16
        assert torch.isfinite(mixed).all() and (mixed.float() - ref).abs().max() < 0.25
        # Pure bf16 weights: RoPE frequencies stay fp32 (they would be rounded by .to()).
        model_bf16 = model.to(torch.bfloat16)
        assert model_bf16.rotary.inv_freq.dtype == torch.float32
        pure = model_bf16(ids).logits
        assert pure.dtype == torch.bfloat16 and (pure.float() - ref).abs().max() < 0.5
    # A training step under autocast: gradients land on the fp32 weights.
    model = _model(make_config, randomize, arch_name).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids)
        loss = torch.nn.functional.cross_entropy(out.logits.float().flatten(0, 1), ids.flatten()) + out.aux_loss
    loss.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())


def test_meta_device_construction_and_counts(make_config):
    cfg = make_config("Qwen2MoeForCausalLM")
    with torch.device("meta"):
        meta = Transformer(cfg)
    real = Transformer(cfg)
    assert meta.num_parameters() == real.num_parameters()
    assert real.num_parameters(exclude_embeddings=True) == real.num_parameters() - cfg.vocab_size * cfg.d_model


# --- configuration errors -----------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(d_model=30, n_heads=4), "not divisible by n_heads"),
        (dict(n_heads=8, n_kv_heads=3), "multiple of n_kv_heads"),
        (dict(n_layers=0), "n_layers must be positive"),
        (dict(num_experts=4, num_experts_per_tok=5, qk_norm=True), "num_experts_per_tok=5 must be in 1..num_experts=4"),
        (dict(num_experts=4, num_shared_experts=1, qk_norm=True), "Qwen2MoeForCausalLM, which has no QK-norm"),
        (dict(num_experts=4), "Qwen3MoeForCausalLM, which uses QK-norm"),
        (dict(qk_norm=True, attention_bias=True), "no matching HF architecture"),
        (dict(head_dim=7, n_heads=4), "must be even"),
    ],
)
def test_bad_model_configs(kwargs, message):
    base = dict(vocab_size=32, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2)
    base.update(kwargs)
    with pytest.raises(ValueError, match=message):
        ModelConfig(**base)


def test_unsupported_hf_model_type_is_named(tmp_path):
    hf = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": 10}
    with pytest.raises(ValueError, match=r"model_type 'gpt2' \(GPT2LMHeadModel\) is not supported; supported: llama, qwen2"):
        from_hf_config(hf)
    (tmp_path / "config.json").write_text(json.dumps(hf))
    with pytest.raises(ValueError, match=r"config\.json: model_type 'gpt2'"):
        load_pretrained(tmp_path)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}}, "rope type 'yarn' is not supported"),
        ({"hidden_act": "gelu"}, "hidden_act 'gelu' is not supported"),
        ({"use_sliding_window": True}, "sliding-window"),
        ({"num_attention_heads": None}, None),
        ({"num_key_value_heads": 3}, "multiple of n_kv_heads"),
    ],
)
def test_unsupported_hf_features_are_errors(change, message, make_config):
    from lmforge.model.hf import to_hf_config

    hf = to_hf_config(make_config("Qwen3ForCausalLM"))
    hf.update(change)
    if change.get("num_attention_heads", 0) is None:
        del hf["num_attention_heads"]
        message = "missing num_attention_heads"
    with pytest.raises(ValueError, match=message):
        from_hf_config(hf)


def test_weights_that_do_not_match_the_config_are_named(make_config, tmp_path):
    cfg = make_config("LlamaForCausalLM")
    save_pretrained(Transformer(cfg), tmp_path)
    hf = json.loads((tmp_path / "config.json").read_text())
    hf["num_hidden_layers"] = 3
    (tmp_path / "config.json").write_text(json.dumps(hf))
    with pytest.raises(ValueError, match=r"missing \['model\.layers\.2\."):
        load_pretrained(tmp_path)
    hf["num_hidden_layers"], hf["intermediate_size"] = 2, 64
    (tmp_path / "config.json").write_text(json.dumps(hf))
    with pytest.raises(ValueError, match=r"mlp\.\w+_proj\.weight has shape \(\d+, \d+\), config implies"):
        load_pretrained(tmp_path)
