"""The engine against transformers' generate and against itself (batched vs alone, cached vs not)."""

from __future__ import annotations

import pytest
import torch

from lmforge.infer import Engine, IncrementalDecoder, SamplingConfig, resolve_checkpoint
from lmforge.model.hf import load_pretrained

GREEDY = SamplingConfig(temperature=0, max_new_tokens=12, ignore_eos=True)
PROMPTS = ["Hello world", "The quick brown fox jumps", "你好", "def add(a, b):\n    return"]


@pytest.fixture(scope="module")
def dense_engine(dense_ckpt) -> Engine:
    return Engine.from_checkpoint(dense_ckpt, device="cpu", dtype="float32")


def _hf_greedy(ckpt, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None  # generate exactly max_new_tokens, as ignore_eos does
    ids = torch.tensor([prompt_ids])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=0)
    return out[0, len(prompt_ids) :].tolist()


def _naive_greedy(model, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """Full forward over the whole sequence at every step: no cache, no padding."""
    ids = list(prompt_ids)
    with torch.no_grad():
        for _ in range(max_new_tokens):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt_ids) :]


@pytest.mark.parametrize("kind", ["dense", "moe"])
def test_greedy_matches_transformers_generate_alone_and_batched(kind, request):
    ckpt = request.getfixturevalue(f"{kind}_ckpt")
    engine = Engine.from_checkpoint(ckpt, device="cpu", dtype="float32")  # HF below runs fp32; auto is bf16 on AMX CPUs
    prompts = [engine.encode(p) for p in PROMPTS]
    assert len({len(p) for p in prompts}) > 1  # rows really are padded
    expected = [_hf_greedy(ckpt, p, GREEDY.max_new_tokens) for p in prompts]
    assert len(set(map(tuple, expected))) == len(expected)
    alone = [engine.generate([p], GREEDY)[0].token_ids for p in prompts]
    batched = [r.token_ids for r in engine.generate(prompts, GREEDY)]
    assert alone == expected
    assert batched == expected


def test_kv_cache_decoding_equals_full_recompute(dense_ckpt):
    model = load_pretrained(dense_ckpt)
    engine = Engine(model)  # token ids only: no tokenizer needed
    prompts = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [20, 21, 22, 23]]
    results = engine.generate(prompts, GREEDY)
    assert [r.token_ids for r in results] == [_naive_greedy(model, p, GREEDY.max_new_tokens) for p in prompts]
    assert all(r.text is None and r.finish_reason == "length" for r in results)


def test_padded_cached_logits_equal_unpadded_full_logits(dense_ckpt):
    model = load_pretrained(dense_ckpt)
    seqs = [[5, 6, 7, 8, 9, 10], [30, 31, 32]]
    prompt_lens = [4, 1]
    pad = max(prompt_lens)
    cache = model.new_kv_cache(2, 16)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    ids = torch.zeros(2, pad, dtype=torch.long)
    for row, (seq, n) in enumerate(zip(seqs, prompt_lens)):
        ids[row, pad - n :] = torch.tensor(seq[:n])
        mask[row, pad - n : pad] = True
    pos = (mask[:, :pad].long().cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        step_logits = [model(ids, position_ids=pos, kv_cache=cache, attention_mask=mask[:, :pad], num_logits_to_keep=1).logits[:, -1]]
        next_pos = torch.tensor(prompt_lens).unsqueeze(1)
        for step in range(2):
            tok = torch.tensor([[seqs[0][prompt_lens[0] + step]], [seqs[1][prompt_lens[1] + step]]])
            mask[:, cache.length] = True
            step_logits.append(model(tok, position_ids=next_pos, kv_cache=cache, attention_mask=mask[:, : cache.length + 1]).logits[:, -1])
            next_pos = next_pos + 1
        for row, (seq, n) in enumerate(zip(seqs, prompt_lens)):
            full = model(torch.tensor([seq])).logits[0]
            for step, logits in enumerate(step_logits):
                torch.testing.assert_close(logits[row], full[n - 1 + step], atol=1e-5, rtol=1e-5)


def test_seeded_sampling_is_reproducible_alone_and_in_a_batch(dense_engine):
    cfg = SamplingConfig(temperature=1.0, top_p=0.95, top_k=50, repetition_penalty=1.1, max_new_tokens=10, seed=3, ignore_eos=True)
    prompts = [dense_engine.encode(p) for p in PROMPTS[:3]]
    first = [r.token_ids for r in dense_engine.generate(prompts, cfg)]
    assert first == [r.token_ids for r in dense_engine.generate(prompts, cfg)]
    assert dense_engine.generate([prompts[1]], cfg)[0].token_ids == first[1]
    other = SamplingConfig(**{**cfg.__dict__, "seed": 4})
    assert [r.token_ids for r in dense_engine.generate(prompts, other)] != first


def test_per_request_configs_and_rows_finishing_early(dense_engine):
    prompts = [dense_engine.encode(p) for p in PROMPTS]
    configs = [SamplingConfig(**{**GREEDY.__dict__, "max_new_tokens": n}) for n in (3, 12, 1, 7)]
    results = dense_engine.generate(prompts, configs)
    for prompt, cfg, result in zip(prompts, configs, results):
        assert result.token_ids == dense_engine.generate([prompt], GREEDY)[0].token_ids[: cfg.max_new_tokens]
        assert result.finish_reason == "length"


def test_top_k_1_sampling_equals_greedy(dense_engine):
    prompt = dense_engine.encode(PROMPTS[1])
    sampled = dense_engine.generate([prompt], SamplingConfig(temperature=2.0, top_k=1, max_new_tokens=12, ignore_eos=True))
    assert sampled[0].token_ids == dense_engine.generate([prompt], GREEDY)[0].token_ids


def test_repetition_penalty_changes_greedy_path_away_from_repeats(dense_engine):
    prompt = dense_engine.encode(PROMPTS[0])
    plain = dense_engine.generate([prompt], SamplingConfig(**{**GREEDY.__dict__, "max_new_tokens": 20}))[0].token_ids
    penalized = dense_engine.generate(
        [prompt], SamplingConfig(**{**GREEDY.__dict__, "max_new_tokens": 20, "repetition_penalty": 1e6})
    )[0].token_ids
    assert len(set(plain)) < len(plain)  # the random model repeats itself...
    assert len(set(penalized)) == len(penalized)  # ...an overwhelming penalty never repeats a token
    assert not set(penalized) & set(prompt)


def test_stop_tokens_end_generation(dense_ckpt):
    model = load_pretrained(dense_ckpt)
    prompt = [5, 6, 7]
    full = Engine(model).generate([prompt], GREEDY)[0].token_ids
    stop = full[4]
    expected = full[: full.index(stop)]
    via_eos = Engine(model, eos_token_ids=[stop]).generate([prompt], SamplingConfig(temperature=0, max_new_tokens=12))[0]
    assert (via_eos.token_ids, via_eos.finish_reason, via_eos.stop_reason) == (expected, "stop", stop)
    via_request = Engine(model, eos_token_ids=[]).generate([prompt], SamplingConfig(temperature=0, max_new_tokens=12, stop_token_ids=[stop]))[0]
    assert via_request.token_ids == expected
    ignored = Engine(model, eos_token_ids=[stop]).generate([prompt], GREEDY)[0]
    assert ignored.token_ids == full and ignored.finish_reason == "length"
    # In a batch, the stopped row leaves and the others carry on unchanged.
    batch = Engine(model, eos_token_ids=[stop]).generate([prompt, [40, 41]], SamplingConfig(temperature=0, max_new_tokens=12))
    assert batch[0].token_ids == expected
    assert batch[1].token_ids == Engine(model, eos_token_ids=[stop]).generate([[40, 41]], SamplingConfig(temperature=0, max_new_tokens=12))[0].token_ids


def test_stop_strings_cut_the_text(dense_engine):
    prompt = dense_engine.encode(PROMPTS[3])
    full = dense_engine.generate([prompt], GREEDY)[0]
    stop = full.text[len(full.text) // 2 :][:2]
    result = dense_engine.generate([prompt], SamplingConfig(**{**GREEDY.__dict__, "stop": ["never-there", stop]}))[0]
    assert result.text == full.text[: full.text.index(stop)]
    assert (result.finish_reason, result.stop_reason) == ("stop", stop)
    assert result.token_ids == full.token_ids[: len(result.token_ids)]
    assert len(result.token_ids) < len(full.token_ids)


def test_stream_yields_the_same_tokens_as_generate(dense_engine):
    prompt = dense_engine.encode(PROMPTS[0])
    assert list(dense_engine.stream(prompt, GREEDY)) == dense_engine.generate([prompt], GREEDY)[0].token_ids
    pieces = list(dense_engine.stream_text(prompt, GREEDY))
    assert "".join(pieces) == dense_engine.generate([prompt], GREEDY)[0].text


def test_context_overflow_keeps_the_prompt_tail_or_errors(dense_ckpt):
    model = load_pretrained(dense_ckpt)
    prompt = list(range(3, 3 + 40)) * 3  # 120 tokens; context is 128
    cfg = SamplingConfig(temperature=0, max_new_tokens=20, ignore_eos=True)
    result = Engine(model).generate([prompt], cfg)[0]
    assert result.prompt_tokens_dropped == 12 and result.prompt_ids == prompt[12:]
    assert result.token_ids == Engine(model).generate([prompt[12:]], cfg)[0].token_ids
    with pytest.raises(ValueError, match="at most 108 fit"):
        Engine(model, overflow="error").generate([prompt], cfg)
    with pytest.raises(ValueError, match="leaves no room"):
        Engine(model).generate([[1]], SamplingConfig(max_new_tokens=128))


def test_engine_rejects_empty_prompts_and_stop_strings_without_tokenizer(dense_ckpt):
    engine = Engine(load_pretrained(dense_ckpt))
    with pytest.raises(ValueError, match="empty"):
        engine.generate([[]], GREEDY)
    with pytest.raises(ValueError, match="tokenizer"):
        engine.generate([[1, 2]], SamplingConfig(stop=["x"]))


def test_bf16_on_cpu_runs(dense_ckpt):
    engine = Engine.from_checkpoint(dense_ckpt, device="cpu", dtype="bfloat16")
    assert engine.model.lm_head.weight.dtype == torch.bfloat16
    results = engine.generate([engine.encode(p) for p in PROMPTS[:2]], GREEDY)
    assert [len(r.token_ids) for r in results] == [12, 12]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_greedy(dense_ckpt, dense_engine):
    gpu = Engine.from_checkpoint(dense_ckpt, device="cuda", dtype="float32")
    prompts = [gpu.encode(p) for p in PROMPTS]
    assert [r.token_ids for r in gpu.generate(prompts, GREEDY)] == [r.token_ids for r in dense_engine.generate(prompts, GREEDY)]
    sampled = SamplingConfig(temperature=1.0, top_p=0.9, seed=0, max_new_tokens=8)
    assert gpu.generate(prompts, sampled)[0].token_ids == gpu.generate(prompts, sampled)[0].token_ids
    bf16 = Engine.from_checkpoint(dense_ckpt, device="cuda")  # auto dtype: bf16 on a GPU
    assert bf16.model.lm_head.weight.dtype == torch.bfloat16
    assert [len(r.token_ids) for r in bf16.generate(prompts, GREEDY)] == [GREEDY.max_new_tokens] * len(prompts)


def test_resolve_checkpoint_takes_the_latest_complete_step(tmp_path, dense_ckpt):
    import shutil

    run = tmp_path / "run"
    for step in ("step_00000010", "step_00000200"):
        shutil.copytree(dense_ckpt, run / "checkpoints" / step)
        (run / "checkpoints" / step / "lmforge.json").write_text("{}")  # the trainer's completion mark
    (run / "checkpoints" / "step_00000300").mkdir()  # being written: no config.json yet
    assert resolve_checkpoint(run) == run / "checkpoints" / "step_00000200"
    assert resolve_checkpoint(run / "checkpoints") == run / "checkpoints" / "step_00000200"
    assert resolve_checkpoint(dense_ckpt) == dense_ckpt
    with pytest.raises(FileNotFoundError, match="no such"):
        resolve_checkpoint(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="neither a checkpoint"):
        resolve_checkpoint(run / "checkpoints" / "step_00000300")


def test_default_stop_tokens_include_eos_and_im_end(dense_engine):
    vocab = dense_engine.tokenizer.get_vocab()
    assert {vocab["<|endoftext|>"], vocab["<|im_end|>"]} <= set(dense_engine.eos_token_ids)
