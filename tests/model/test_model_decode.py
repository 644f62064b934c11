"""DecodePlan.step against Transformer.forward: bitwise-equal logits and caches, and refusal
wherever it could not be equal (training mode, adapters, hooks, subclasses). The torch step
only (``native=False``): the native kernel, equal to fp32 rounding, has test_model_native.py."""

from __future__ import annotations

import pytest
import torch
from model_helpers import clone_cache, prefilled, slot_caches

from lmforge.model import Transformer
from lmforge.model.decode import DecodePlan

ARCH_NAMES = ["LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "Qwen3MoeForCausalLM", "Qwen2MoeForCausalLM"]
MHA_AND_GQA = [(name, {}) for name in ARCH_NAMES] + [("LlamaForCausalLM", {"n_kv_heads": 4})]


def _model(make_config, randomize, arch, dtype=torch.float32, **overrides) -> Transformer:
    torch.manual_seed(0)
    return randomize(Transformer(make_config(arch, **overrides))).to(dtype).eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("arch_name,overrides", MHA_AND_GQA, ids=[a + ("-mha" if o else "") for a, o in MHA_AND_GQA])
def test_step_equals_forward_bitwise_on_a_padded_batch(arch_name, overrides, dtype, make_config, randomize):
    model = _model(make_config, randomize, arch_name, dtype, **overrides)
    plan = DecodePlan.of(model, native=False)
    assert plan is not None
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(1, 96, (n,), generator=gen).tolist() for n in (7, 3, 5)]
    with torch.inference_mode():
        by_forward, key_mask, positions = prefilled(model, prompts, total=12)
        by_plan = clone_cache(by_forward)
        tokens = torch.tensor([5, 17, 42])
        for _ in range(4):  # several steps: each one reads what the previous ones wrote
            width = by_forward.length + 1
            key_mask[:, width - 1] = True
            expected = model(tokens[:, None], position_ids=positions[:, None], kv_cache=by_forward,
                             attention_mask=key_mask[:, :width]).logits[:, -1]
            got = plan.step(tokens, positions, by_plan, key_mask[:, None, None, :width])
            assert torch.equal(got, expected)
            assert by_plan.length == by_forward.length == width
            assert torch.equal(by_plan.k, by_forward.k) and torch.equal(by_plan.v, by_forward.v)
            tokens, positions = expected.argmax(-1), positions + 1


def test_step_without_a_mask_equals_the_unpadded_forward(make_config, randomize):
    model = _model(make_config, randomize, "Qwen3ForCausalLM")
    plan = DecodePlan.of(model, native=False)
    with torch.inference_mode():
        cache = model.new_kv_cache(2, 16)
        model(torch.tensor([[3, 4, 5, 6], [7, 8, 9, 10]]), kv_cache=cache)
        mirror = clone_cache(cache)
        expected = model(torch.tensor([[11], [12]]), kv_cache=cache).logits[:, -1]
        got = plan.step(torch.tensor([11, 12]), torch.tensor([4, 4]), mirror, None)
    assert torch.equal(got, expected)


def test_step_writes_the_servers_slot_cache_at_each_rows_own_position(make_config, randomize):
    model = _model(make_config, randomize, "Qwen2MoeForCausalLM")
    plan = DecodePlan.of(model, native=False)
    lengths = torch.tensor([5, 2])  # slot 0 holds 5 tokens, slot 1 holds 2
    with torch.inference_mode():
        cache, mirror, mask = slot_caches(model.config, 2, lengths)
        tokens = torch.tensor([9, 30])
        expected = model(tokens[:, None], position_ids=lengths[:, None], kv_cache=cache, attention_mask=mask).logits[:, -1]
        got = plan.step(tokens, lengths, mirror, mask)
    assert torch.equal(got, expected)
    assert torch.equal(mirror.k, cache.k) and torch.equal(mirror.v, cache.v)


def test_no_plan_where_step_could_differ_from_forward(make_config, randomize):
    model = _model(make_config, randomize, "LlamaForCausalLM")
    assert DecodePlan.of(model) is not None

    model.train()
    assert DecodePlan.of(model) is None, "training mode (dropout-free today, but forward is the contract)"
    model.eval()

    handle = model.model.layers[0].mlp.register_forward_hook(lambda *args: None)
    assert DecodePlan.of(model) is None, "a forward hook would be skipped"
    handle.remove()

    class Custom(Transformer):
        pass

    assert DecodePlan.of(Custom(model.config).eval()) is None, "a subclass may override forward"
    assert DecodePlan.of(torch.nn.Sequential(model)) is None

    handle = model.model.norm.register_forward_pre_hook(lambda *args: None)
    assert DecodePlan.of(model) is None, "a forward pre-hook would be skipped"
    handle.remove()
    handle = torch.nn.modules.module.register_module_forward_hook(lambda *args: None)
    assert DecodePlan.of(model) is None, "a global forward hook would be skipped"
    handle.remove()

    model.model.layers[1].mlp.forward = lambda x: x  # what accelerate's offloading does
    assert DecodePlan.of(model) is None, "a forward patched onto an instance would be skipped"
    del model.model.layers[1].mlp.forward

    model.compile()  # in place: the type stays Transformer
    assert DecodePlan.of(model) is None
    assert DecodePlan.of(_model(make_config, randomize, "LlamaForCausalLM")) is not None


def test_biases_anywhere_are_applied(make_config, randomize):
    # Only q/k/v have biases in the architectures lmforge maps to, but a Linear swapped for one
    # with a bias (o_proj, the MLP, the head) must still give forward's logits.
    model = _model(make_config, randomize, "LlamaForCausalLM", tie_embeddings=False)
    with torch.no_grad():
        model.lm_head = torch.nn.Linear(32, 96, bias=True)
        model.model.layers[0].self_attn.o_proj = torch.nn.Linear(32, 32, bias=True)
        model.model.layers[1].mlp.down_proj = torch.nn.Linear(48, 32, bias=True)
    plan = DecodePlan.of(model, native=False)
    with torch.inference_mode():
        cache = model.new_kv_cache(1, 8)
        model(torch.tensor([[3, 4, 5]]), kv_cache=cache)
        mirror = clone_cache(cache)
        expected = model(torch.tensor([[6]]), kv_cache=cache).logits[:, -1]
        assert torch.equal(plan.step(torch.tensor([6]), torch.tensor([3]), mirror, None), expected)


@pytest.mark.parametrize("arch_name", ["LlamaForCausalLM", "Qwen3ForCausalLM", "Qwen2MoeForCausalLM"])
def test_step_equals_forward_when_kv_heads_are_copied(arch_name, make_config, randomize, monkeypatch):
    """Where SDPA cannot share K/V heads itself (CUDA with a mask) both copy them."""
    import lmforge.model.decode as decode
    import lmforge.model.transformer as transformer

    monkeypatch.setattr(transformer, "_native_gqa", lambda device, mask: False)
    monkeypatch.setattr(decode, "_native_gqa", lambda device, mask: False)
    model = _model(make_config, randomize, arch_name)
    prompts = [[5, 6, 7, 8], [9, 10]]
    with torch.inference_mode():
        cache, key_mask, positions = prefilled(model, prompts, total=8)
        mirror = clone_cache(cache)
        key_mask[:, 4] = True
        expected = model(torch.tensor([[11], [12]]), position_ids=positions[:, None], kv_cache=cache,
                         attention_mask=key_mask[:, :5]).logits[:, -1]
        got = DecodePlan.of(model, native=False).step(torch.tensor([11, 12]), positions, mirror, key_mask[:, None, None, :5])
    assert torch.equal(got, expected)


def test_the_engine_decodes_loaded_checkpoints_through_a_plan(make_config, randomize, tmp_path, monkeypatch):
    from lmforge.infer import Engine, SamplingConfig
    from lmforge.model.hf import load_pretrained, save_pretrained

    save_pretrained(_model(make_config, randomize, "Qwen3ForCausalLM"), tmp_path)
    engine = Engine(load_pretrained(tmp_path))  # as Engine.from_checkpoint loads it
    steps = []
    real = DecodePlan.step
    monkeypatch.setattr(DecodePlan, "step", lambda self, *a: steps.append(1) or real(self, *a))
    fast = engine.generate([[1, 2, 3], [4]], SamplingConfig(max_new_tokens=6, temperature=0, ignore_eos=True))
    assert len(steps) == 5  # every token after the prefill's
    monkeypatch.setattr(DecodePlan, "of", classmethod(lambda cls, model, native=True: None))
    slow = engine.generate([[1, 2, 3], [4]], SamplingConfig(max_new_tokens=6, temperature=0, ignore_eos=True))
    assert [r.token_ids for r in fast] == [r.token_ids for r in slow]


def test_no_plan_for_peft_adapters(make_config, randomize):
    peft = pytest.importorskip("peft")
    model = _model(make_config, randomize, "LlamaForCausalLM")
    peft.inject_adapter_in_model(peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False), model)
    assert DecodePlan.of(model.eval()) is None


def test_step_equals_forward_under_bf16_autocast(make_config, randomize):
    """An evaluation hook may decode an fp32 training model inside the trainer's autocast."""
    model = _model(make_config, randomize, "Qwen3ForCausalLM")
    plan = DecodePlan.of(model, native=False)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        cache = model.new_kv_cache(1, 8)
        model(torch.tensor([[3, 4, 5]]), kv_cache=cache)
        mirror = clone_cache(cache)
        expected = model(torch.tensor([[6]]), kv_cache=cache).logits[:, -1]
        got = plan.step(torch.tensor([6]), torch.tensor([3]), mirror, None)
    assert got.dtype == expected.dtype
    assert torch.equal(got, expected)
