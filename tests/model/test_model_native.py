"""The native CPU decode step (native_decode.c) against Transformer.forward and the torch step:
logits and caches equal to fp32 rounding for every dense layout, padded batches, the server's
slot cache and odd sizes; the cases it must hand back to torch; and how it is built and loaded."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from model_helpers import clone_cache, prefilled, slot_caches

from lmforge.model import KVCache, ModelConfig, Transformer
from lmforge.model import native
from lmforge.model.decode import DecodePlan

DENSE = ["LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"]
TOL = dict(rtol=1e-5, atol=1e-5)

pytestmark = pytest.mark.skipif(native.library() is None, reason="the native kernel does not build here (no C compiler)")


def _model(make_config, randomize, arch, **overrides) -> Transformer:
    torch.manual_seed(0)
    return randomize(Transformer(make_config(arch, **overrides))).eval()


@pytest.mark.parametrize("overrides", [{}, {"n_kv_heads": 4}, {"d_model": 40, "n_heads": 5, "n_kv_heads": 1, "ffn_hidden": 50}],
                         ids=["gqa", "mha", "odd-sizes"])
@pytest.mark.parametrize("arch_name", DENSE)
def test_native_step_equals_forward_on_a_padded_batch(arch_name, overrides, make_config, randomize):
    if arch_name == "Qwen3ForCausalLM" and "d_model" in overrides:
        overrides = {**overrides, "head_dim": 6}  # odd sizes: head_dim 6 is not a multiple of the 16 vector lanes
    model = _model(make_config, randomize, arch_name, **overrides)
    plan = DecodePlan.of(model)
    assert plan.native is not None
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(1, 96, (n,), generator=gen).tolist() for n in (7, 3, 5)]
    steps = []
    real = native.NativeDecoder.step
    with torch.inference_mode():
        by_forward, key_mask, positions = prefilled(model, prompts, total=16)
        by_native = clone_cache(by_forward)
        tokens = torch.tensor([5, 17, 42])
        for _ in range(6):  # each step reads what the previous ones wrote
            width = by_forward.length + 1
            key_mask[:, width - 1] = True
            expected = model(tokens[:, None], position_ids=positions[:, None], kv_cache=by_forward,
                             attention_mask=key_mask[:, :width]).logits[:, -1]
            got = real(plan.native, tokens, positions, by_native, key_mask[:, None, None, :width])  # a strided mask view
            assert got is not None
            steps.append(1)
            torch.testing.assert_close(got, expected, **TOL)
            assert by_native.length == by_forward.length == width
            torch.testing.assert_close(by_native.k, by_forward.k, **TOL)
            torch.testing.assert_close(by_native.v, by_forward.v, **TOL)
            tokens, positions = expected.argmax(-1), positions + 1
    assert len(steps) == 6


BF16_CASES = [(name, {}) for name in DENSE] + [("LlamaForCausalLM", {"d_model": 40, "n_heads": 5, "n_kv_heads": 1, "ffn_hidden": 50, "vocab_size": 97})]


@pytest.mark.parametrize("arch_name,overrides", BF16_CASES, ids=[a + ("-odd-sizes" if o else "") for a, o in BF16_CASES])
def test_bf16_native_step_is_closer_to_fp32_than_torchs_bf16_step(arch_name, overrides, make_config, randomize):
    """bf16 weights and cache, fp32 activations: against the fp32 forward of the very same weights
    and cached values, the native step errs only by rounding the new key/value and the logits,
    while torch's bf16 step rounds after every op."""
    model = _model(make_config, randomize, arch_name, **overrides).to(torch.bfloat16)
    reference = _model(make_config, randomize, arch_name, **overrides).to(torch.bfloat16).float()  # the same bf16 values, in fp32
    plan, torch_plan = DecodePlan.of(model), DecodePlan.of(model, native=False)
    assert plan.native is not None and plan.native.dtype is torch.bfloat16
    B, total, past = 3, 16, 9
    gen = torch.Generator().manual_seed(3)
    with torch.inference_mode():
        cache = model.new_kv_cache(B, total)
        cache.k.copy_(torch.randn(cache.k.shape, generator=gen))
        cache.v.copy_(torch.randn(cache.v.shape, generator=gen))
        cache.length = past
        by_torch, by_fp32 = clone_cache(cache), reference.new_kv_cache(B, total)
        by_fp32.k.copy_(cache.k.float()), by_fp32.v.copy_(cache.v.float())
        by_fp32.length = past
        tokens, positions = torch.tensor([5, 17, 42]), torch.tensor([9, 4, 7])
        key_mask = torch.ones(B, past + 1, dtype=torch.bool)
        key_mask[1, :5] = False  # a left-padded row
        mask = key_mask[:, None, None, :]
        expected = reference(tokens[:, None], position_ids=positions[:, None], kv_cache=by_fp32, attention_mask=key_mask).logits[:, -1]
        got = plan.native.step(tokens, positions, cache, mask)
        torch_step = torch_plan.step(tokens, positions, by_torch, mask)
    assert got.dtype is torch.bfloat16 and cache.length == past + 1
    native_error, torch_error = (got.float() - expected).abs().max(), (torch_step.float() - expected).abs().max()
    assert native_error <= 0.02 * expected.abs().max()
    assert native_error <= torch_error
    torch.testing.assert_close(cache.k[:, :, :, past].float(), by_fp32.k[:, :, :, past], rtol=1e-2, atol=1e-2)
    assert torch.equal(cache.k[:, :, :, :past], by_torch.k[:, :, :, :past]), "the cached past is untouched"


def test_native_step_writes_the_servers_slot_cache_at_each_rows_own_position(make_config, randomize):
    model = _model(make_config, randomize, "Qwen3ForCausalLM")
    lengths = torch.tensor([5, 2, 9])  # each slot holds its own number of tokens
    with torch.inference_mode():
        cache, mirror, mask = slot_caches(model.config, 4, lengths)  # a spare fourth slot
        tokens = torch.tensor([9, 30, 2])
        expected = DecodePlan.of(model, native=False).step(tokens, lengths, cache, mask)
        got = DecodePlan.of(model).native.step(tokens, lengths, mirror, mask)
    assert got is not None
    torch.testing.assert_close(got, expected, **TOL)
    torch.testing.assert_close(mirror.k, cache.k, **TOL)
    torch.testing.assert_close(mirror.v, cache.v, **TOL)
    assert torch.equal(mirror.k[:, 3], cache.k[:, 3]), "the spare slot is untouched"


def test_greedy_generation_is_the_same_with_and_without_the_kernel(make_config, randomize, monkeypatch):
    from lmforge.infer import Engine, SamplingConfig

    engine = Engine(_model(make_config, randomize, "LlamaForCausalLM", max_seq_len=64))
    steps = []
    real = native.NativeDecoder.step
    monkeypatch.setattr(native.NativeDecoder, "step", lambda self, *a: steps.append(1) or real(self, *a))
    sampling = SamplingConfig(max_new_tokens=24, temperature=0, ignore_eos=True)
    fast = [r.token_ids for r in engine.generate([[1, 2, 3], [4], [7, 8]], sampling)]
    assert len(steps) == 23
    monkeypatch.setenv(native.SWITCH, "0")
    assert [r.token_ids for r in engine.generate([[1, 2, 3], [4], [7, 8]], sampling)] == fast
    assert len(steps) == 23, "switched off: no native step"


def test_the_scheduler_decodes_through_the_kernel(make_config, randomize, monkeypatch):
    from lmforge.infer import Engine, SamplingConfig
    from lmforge.serve.scheduler import Scheduler

    engine = Engine(_model(make_config, randomize, "Qwen2ForCausalLM"))
    steps = []
    real = native.NativeDecoder.step
    monkeypatch.setattr(native.NativeDecoder, "step", lambda self, *a: steps.append(real(self, *a)) or steps[-1])
    sampling = SamplingConfig(max_new_tokens=8, temperature=0, ignore_eos=True)
    expected = [r.token_ids for r in engine.generate([[1, 2, 3]], sampling)]
    steps.clear()
    scheduler = Scheduler(engine, max_batch_size=4).start()
    try:
        got = scheduler.generate([1, 2, 3], sampling, timeout=60)
    finally:
        scheduler.stop()
    assert steps and all(logits is not None for logits in steps)
    assert got.token_ids == expected[0]


def test_cases_the_kernel_leaves_to_torch(make_config, randomize, monkeypatch):
    dense = _model(make_config, randomize, "LlamaForCausalLM")
    assert DecodePlan.of(dense).native is not None
    assert DecodePlan.of(dense, native=False).native is None
    assert DecodePlan.of(_model(make_config, randomize, "Qwen3MoeForCausalLM")).native is None, "MoE"
    assert DecodePlan.of(_model(make_config, randomize, "LlamaForCausalLM").to(torch.float16)).native is None, "fp16"
    monkeypatch.setenv(native.SWITCH, "0")
    assert DecodePlan.of(dense).native is None, "switched off"
    monkeypatch.delenv(native.SWITCH)

    plan = DecodePlan.of(dense)
    tokens, positions = torch.tensor([5]), torch.tensor([0])
    with torch.inference_mode():
        assert plan.native.step(tokens, positions, dense.new_kv_cache(1, 8, dtype=torch.bfloat16), None) is None, "a bf16 cache for fp32 weights"
        float_mask = torch.zeros(1, 1, 1, 1)
        assert plan.native.step(tokens, positions, dense.new_kv_cache(1, 8), float_mask) is None, "additive float mask"
        many = plan.native.max_batch + 1
        big = dense.new_kv_cache(many, 8)
        assert plan.native.step(torch.full((many,), 5), torch.zeros(many, dtype=torch.long), big, None) is None
        assert big.length == 0, "nothing touched"
        got = plan.step(torch.full((many,), 5), torch.zeros(many, dtype=torch.long), big, None)  # the torch step instead
        assert got.shape == (many, 96) and big.length == 1
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert plan.native.step(tokens, positions, dense.new_kv_cache(1, 8), None) is None, "autocast rounds to bf16"
        class RoundingCache(KVCache):  # an update() the kernel would skip
            def update(self, layer, k, v):
                return super().update(layer, k.half().float(), v.half().float())

        rounding = RoundingCache(dense.config, 1, 8, torch.float32, "cpu")
        assert plan.native.step(tokens, positions, rounding, None) is None, "a KVCache subclass"
        assert plan.native.step(tokens, positions.float(), dense.new_kv_cache(1, 8), None) is None, "a float position"
        elsewhere = dense.new_kv_cache(1, 8)
        elsewhere.v = elsewhere.v.to("meta")
        assert plan.native.step(tokens, positions, elsewhere, None) is None, "values on another device"
    dense.to("cpu")  # moves nothing, though the rotary module recomputes its table
    with torch.inference_mode():
        assert plan.native.step(tokens, positions, dense.new_kv_cache(1, 8), None) is not None
    with torch.no_grad():
        square = dense.model.layers[0].self_attn.o_proj.weight
        square.data = square.data.t()  # same storage, another layout
        assert plan.native.step(tokens, positions, dense.new_kv_cache(1, 8), None) is None, "a transposed weight"
        for p in dense.parameters():
            p.data = p.data.clone()  # storage swapped, as model.to() does: the addresses are stale
        assert plan.native.step(tokens, positions, dense.new_kv_cache(1, 8), None) is None
        assert plan.step(tokens, positions, dense.new_kv_cache(1, 8), None).shape == (1, 96)
    assert plan.native.step(tokens, positions, dense.new_kv_cache(1, 8), None) is None, "grad mode: autograd needs torch ops"


def test_biases_on_some_layers_only(make_config, randomize):
    model = _model(make_config, randomize, "LlamaForCausalLM", tie_embeddings=False)
    with torch.no_grad():
        model.lm_head = torch.nn.Linear(32, 96, bias=True)
        model.model.layers[0].self_attn.o_proj = torch.nn.Linear(32, 32, bias=True)
        model.model.layers[1].mlp.down_proj = torch.nn.Linear(48, 32, bias=True)
        model.model.layers[1].mlp.up_proj = torch.nn.Linear(32, 48, bias=True)
    plan = DecodePlan.of(model)
    with torch.inference_mode():
        cache = model.new_kv_cache(1, 8)
        model(torch.tensor([[3, 4, 5]]), kv_cache=cache)
        mirror = clone_cache(cache)
        expected = model(torch.tensor([[6]]), kv_cache=cache).logits[:, -1]
        got = plan.native.step(torch.tensor([6]), torch.tensor([3]), mirror, None)
    torch.testing.assert_close(got, expected, **TOL)


def test_bad_tokens_and_a_full_cache_are_errors(make_config, randomize):
    model = _model(make_config, randomize, "LlamaForCausalLM")
    plan = DecodePlan.of(model)
    with torch.inference_mode():
        with pytest.raises(IndexError, match="token id 96 out of range for vocabulary size 96"):
            plan.native.step(torch.tensor([96]), torch.tensor([0]), model.new_kv_cache(1, 8), None)
        full = model.new_kv_cache(1, 2)
        full.length = 2
        with pytest.raises(ValueError, match="KV cache overflow"):
            plan.native.step(torch.tensor([3]), torch.tensor([2]), full, None)


def test_no_compiler_means_a_warning_and_the_torch_step(make_config, randomize, monkeypatch, tmp_path):
    monkeypatch.setattr(native, "_libraries", {})
    monkeypatch.setattr(native, "_unavailable", {})
    monkeypatch.setenv("LMFORGE_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", "no-such-compiler")
    model = _model(make_config, randomize, "LlamaForCausalLM")
    with pytest.warns(RuntimeWarning, match="no-such-compiler"):
        plan = DecodePlan.of(model)
    assert plan.native is None
    with torch.inference_mode():
        cache = model.new_kv_cache(1, 8)
        assert plan.step(torch.tensor([3]), torch.tensor([0]), cache, None).shape == (1, 96)
    assert DecodePlan.of(model).native is None  # the failure is remembered: one warning, not one per call


def test_a_failed_bf16_build_leaves_the_fp32_kernel(monkeypatch, tmp_path):
    monkeypatch.setattr(native, "_libraries", {})
    monkeypatch.setattr(native, "_unavailable", {})
    monkeypatch.setenv("LMFORGE_CACHE_DIR", str(tmp_path))
    monkeypatch.setitem(native.DTYPES, torch.bfloat16, ["-DLMF_BF16", "-Werror=no-such-warning-flag"])  # as an old gcc would fail
    with pytest.warns(RuntimeWarning, match="bfloat16"):
        assert native.library(torch.bfloat16) is None
    assert native.library(torch.float32) is not None


def test_the_build_is_cached_and_atomic(monkeypatch, tmp_path):
    monkeypatch.setenv("LMFORGE_CACHE_DIR", str(tmp_path))
    built = native._build()
    assert built.is_file() and built.parent.parent == tmp_path / "native"
    assert [p.name for p in built.parent.iterdir()] == [built.name], "no temporary files left beside it"
    stamp = built.stat().st_mtime_ns
    assert native._build() == built and built.stat().st_mtime_ns == stamp, "built once per machine"


def test_the_kernel_runs_on_torchs_openmp_pool():
    """One OpenMP runtime and no extra threads: a second pool on the same cores would make both
    sleep and wake instead of spinning (see serve.scheduler.load_off_thread)."""
    script = textwrap.dedent("""
        import os, torch
        from lmforge.model import KVCache, ModelConfig, Transformer
        from lmforge.model.decode import DecodePlan
        from lmforge.model import native
        torch.set_num_threads(2)
        model = Transformer(ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, max_seq_len=16)).eval()
        with torch.inference_mode():
            torch.randn(256, 256) @ torch.randn(256, 256)  # torch's pool exists
            before = len(os.listdir("/proc/self/task"))
            plan = DecodePlan.of(model)
            assert plan.native is not None
            for step in range(4):
                assert plan.native.step(torch.tensor([1]), torch.tensor([step]), cache := model.new_kv_cache(1, 8), None) is not None
            after = len(os.listdir("/proc/self/task"))
        print(before, after, len(native._openmp_runtimes()))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    before, after, runtimes = map(int, out.stdout.split())
    assert after == before and runtimes == 1


def test_config_shapes_the_kernel_reads():
    """The C struct mirrors ModelConfig: a shape change there must reach native.py's fields."""
    cfg = ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, max_seq_len=16)
    plan = DecodePlan.of(Transformer(cfg).eval())
    model = plan.native._model
    assert (model.n_layers, model.d_model, model.n_heads, model.n_kv_heads, model.head_dim, model.ffn_hidden, model.vocab_size) == (
        1, 32, 2, 1, 16, cfg.ffn_hidden, 64)
    assert model.eps == pytest.approx(cfg.norm_eps)
