"""``lmforge export --to gguf``, checked by llama.cpp itself (``llama-cpp-python``): it loads the
file, tokenizes as lmforge does, and decodes the same greedy tokens with the same logits."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from lmforge.export.gguf_file import export_gguf, llama_permute
from lmforge.infer import Engine, SamplingConfig

llama_cpp = pytest.importorskip("llama_cpp")
gguf = pytest.importorskip("gguf")

TEXT = "Hello world, hello model. 你好，世界。 def add(a, b): return 12345"
NEW_TOKENS = 24


def _llama(path, n_ctx: int = 128):
    return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=1, verbose=False, logits_all=True)


def _compare(ckpt, gguf_path, round_weights_to=None, atol=1e-2):
    """llama.cpp against lmforge on ``TEXT``: tokens, last-position logits, greedy continuation."""
    engine = Engine.from_checkpoint(ckpt, device="cpu", dtype="float32")
    if round_weights_to is not None:  # what a 16-bit file holds: compare against those weights
        with torch.no_grad():
            for name, p in engine.model.named_parameters():
                if p.dim() > 1 and not name.endswith("mlp.gate.weight"):
                    p.copy_(p.to(round_weights_to).float())
    ids = engine.tokenizer.encode(TEXT)
    want = engine.generate([ids], SamplingConfig(max_new_tokens=NEW_TOKENS, temperature=0, ignore_eos=True))[0].token_ids
    with torch.inference_mode():
        ref = engine.model(torch.tensor([ids])).logits[0].numpy()
    llm = _llama(gguf_path)
    try:
        assert llm.tokenize(TEXT.encode(), add_bos=False, special=False) == ids
        assert llm.detokenize(ids).decode() == engine.tokenizer.decode(ids)
        llm.eval(ids)
        got_logits = np.array(llm.scores[: len(ids)])
        llm.reset()
        got = []
        for token in llm.generate(ids, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0):
            got.append(token)
            if len(got) == NEW_TOKENS:
                break
    finally:
        llm.close()
    np.testing.assert_allclose(got_logits, ref, atol=atol * max(1.0, float(np.abs(ref).max())), rtol=0)
    assert got == want


@pytest.mark.parametrize("outtype", ["f32", "f16"])
def test_qwen3_with_a_gpt2_tokenizer(dense_ckpt, tmp_path, outtype):
    path = export_gguf(dense_ckpt, tmp_path / f"m-{outtype}.gguf", outtype=outtype)
    _compare(dense_ckpt, path, round_weights_to=None if outtype == "f32" else torch.float16)
    reader = gguf.GGUFReader(str(path))
    fields = {name: reader.fields[name] for name in reader.fields}
    value = lambda key: fields[key].contents()  # noqa: E731
    assert value("general.architecture") == "qwen3" and value("tokenizer.ggml.pre") == "gpt-2"
    assert "<|im_start|>" in value("tokenizer.chat_template")
    assert value("tokenizer.ggml.eot_token_id") == 2  # <|im_end|>
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == ("F32" if outtype == "f32" else "F16") and types["blk.0.attn_norm.weight"] == "F32"


def test_qwen3_moe(moe_ckpt, tmp_path):
    _compare(moe_ckpt, export_gguf(moe_ckpt, tmp_path / "moe.gguf", outtype="f32"))


@pytest.mark.parametrize("shape", [
    dict(),  # Llama: q/k rows permuted for llama.cpp's RoPE
    dict(attention_bias=True),  # Qwen2
    dict(qk_norm=True, head_dim=24),  # Qwen3 with head_dim != d_model / n_heads
    dict(num_experts=4, num_experts_per_tok=2, moe_ffn_hidden=32, num_shared_experts=1, norm_topk_prob=False, tie_embeddings=False),  # Qwen2-MoE
], ids=["llama", "qwen2", "qwen3-head-dim", "qwen2-moe"])
def test_architectures_with_lmforge_tokenizer(lmforge_ckpt, tmp_path, shape):
    ckpt = lmforge_ckpt("m", **shape)
    path = export_gguf(ckpt, tmp_path / "m.gguf", outtype="f32")
    assert gguf.GGUFReader(str(path)).fields["tokenizer.ggml.pre"].contents() == "qwen2"
    _compare(ckpt, path)


def test_bf16_loads_and_agrees_roughly(dense_ckpt, tmp_path):
    path = export_gguf(dense_ckpt, tmp_path / "m.gguf", outtype="bf16")
    _compare(dense_ckpt, path, round_weights_to=torch.bfloat16, atol=3e-2)


def test_llama_permute_is_the_rope_layout_change():
    # Rotating halves of a permuted head equals rotating adjacent pairs of the original's rows.
    w = torch.arange(2 * 8 * 3, dtype=torch.float32).reshape(16, 3)  # 2 heads of head_dim 8
    p = llama_permute(w, n_heads=2)
    assert torch.equal(p[:8:2], w[:4]) and torch.equal(p[1:8:2], w[4:8])
    assert torch.equal(p[8:], llama_permute(w[8:], n_heads=1))


def test_refusals_name_the_reason(dense_ckpt, lmforge_ckpt, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in dense_ckpt.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    tok = json.loads((broken / "tokenizer.json").read_text())
    tok["pre_tokenizer"] = {"type": "Whitespace"}
    (broken / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(ValueError, match="pre-tokenizer .*Whitespace"):
        export_gguf(broken, tmp_path / "x.gguf")
    odd_moe = lmforge_ckpt("moe", num_experts=4, num_experts_per_tok=2, moe_ffn_hidden=32, qk_norm=True, norm_topk_prob=False)
    with pytest.raises(ValueError, match="renormalizes"):
        export_gguf(odd_moe, tmp_path / "y.gguf")
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*tmp*"))


def test_cli_writes_the_file_and_an_ollama_modelfile(dense_ckpt, tmp_path):
    out = tmp_path / "gguf" / "tiny-f16.gguf"
    done = subprocess.run([sys.executable, "-m", "lmforge.cli", "export", str(dense_ckpt), "--to", "gguf", "--out", str(out), "--modelfile"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert out.is_file() and "llama-cli -m" in done.stderr
    modelfile = (out.parent / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./tiny-f16.gguf") and 'PARAMETER stop "<|im_end|>"' in modelfile
    bad = subprocess.run([sys.executable, "-m", "lmforge.cli", "export", str(dense_ckpt), "--to", "gguf", "--out", str(tmp_path / "x.bin")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and ".gguf" in bad.stderr
