"""``lmforge export --to hf``: a clean model directory that ``transformers`` loads and generates
from exactly as lmforge does, with the chat template and turn-end stop ids in place."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from lmforge.export.hf_dir import export_hf
from lmforge.infer import Engine, SamplingConfig


@pytest.fixture
def trained_looking_ckpt(dense_ckpt, tmp_path):
    """The tiny checkpoint with what a training run adds: optimizer state and lmforge.json."""
    ckpt = tmp_path / "run" / "checkpoints" / "step_00000010"
    ckpt.mkdir(parents=True)
    for f in dense_ckpt.iterdir():
        (ckpt / f.name).write_bytes(f.read_bytes())
    torch.save({"step": 10}, ckpt / "trainer_state.pt")
    (ckpt / "lmforge.json").write_text(json.dumps({"format": "lmforge-checkpoint/1", "step": 10, "tokens_seen": 1234}))
    return ckpt


def test_transformers_loads_the_export_and_generates_what_lmforge_generates(trained_looking_ckpt, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    out = export_hf(tmp_path / "run", tmp_path / "export")  # a run dir: its latest checkpoint
    names = sorted(p.name for p in out.iterdir())
    assert "trainer_state.pt" not in names
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            "chat_template.jinja", "README.md", "lmforge.json"} <= set(names)
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "你好"}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n"
    assert json.loads((out / "tokenizer_config.json").read_text())["chat_template"] == (out / "chat_template.jinja").read_text()
    generation = GenerationConfig.from_pretrained(out)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end in generation.eos_token_id and tokenizer.eos_token_id in generation.eos_token_id

    engine = Engine.from_checkpoint(trained_looking_ckpt, device="cpu", dtype="float32")
    ids = engine.encode_chat(messages)
    want = engine.generate([ids], SamplingConfig(max_new_tokens=20, temperature=0))[0]
    with torch.inference_mode():
        got = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long), do_sample=False,
                             max_new_tokens=20, generation_config=generation)[0, len(ids):].tolist()
    if got and got[-1] in generation.eos_token_id:
        got = got[:-1]  # transformers returns the stop token, lmforge does not
    assert got == want.token_ids
    assert "step 10, tokens seen 1234" in (out / "README.md").read_text()


def test_bf16_export_and_atomic_replacement(dense_ckpt, tmp_path):
    from safetensors import safe_open

    out = export_hf(dense_ckpt, tmp_path / "export", dtype="bfloat16")
    with safe_open(out / "model.safetensors", "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    export_hf(dense_ckpt, out)  # again into the same place: replaced whole
    assert json.loads((out / "config.json").read_text())["dtype"] == "float32"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_cli_errors(dense_ckpt, tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    for args, words in [
        ([str(adapter), "--to", "hf", "--out", str(tmp_path / "o")], "lora merge"),
        ([str(dense_ckpt), "--to", "onnx", "--out", str(tmp_path / "o")], "--to must be hf or gguf"),
        ([str(dense_ckpt), "--to", "hf", "--out", str(tmp_path / "o"), "--dtype", "int4"], "dtype must be one of"),
        ([str(dense_ckpt), "--to", "hf", "--out", str(dense_ckpt)], "another directory"),
    ]:
        done = subprocess.run([sys.executable, "-m", "lmforge.cli", "export", *args], capture_output=True, text=True)
        assert done.returncode == 2 and words in done.stderr, done.stderr
