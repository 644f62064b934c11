"""Hugging Face directories out and in: ``export_hf`` for distribution, ``import_hf`` for training.

``export_hf(ckpt, out)`` writes what the hub, ``transformers``, vLLM and SGLang expect of a model
repo, and nothing of the training run: ``config.json``, ``model.safetensors`` (optionally cast to
bf16 / fp16, sharded past ``max_shard_size``), ``generation_config.json`` whose eos ids include
``<|im_end|>`` (so ``generate`` and vLLM stop at the end of a chat turn), the tokenizer files
with the chat template both in ``tokenizer_config.json`` (older readers, llama.cpp's converter)
and as ``chat_template.jinja`` (transformers ≥ 4.43), and a ``README.md`` model card.
``trainer_state.pt`` (optimizer state) stays behind; ``lmforge.json`` goes along as provenance.

``import_hf(src, out)`` turns a local Llama / Qwen2 / Qwen3 / Qwen3-MoE / Qwen2-MoE directory
(or a hub id, through the hub cache) into an lmforge checkpoint: lmforge's canonical config and
unfused per-expert weights in float32 (what continued pretraining and fine-tuning resume from),
the tokenizer, and an ``lmforge.json`` naming the source. It then checks the result: the
imported model's logits must equal those ``transformers`` computes from the source directory.

Both write into a temporary sibling and rename it into place: an interrupted run leaves no
half-written directory under the target name.

    export_hf("runs/demo/dpo-abc", "exported/demo", dtype="bfloat16")
    report = import_hf("/models/Qwen3-0.6B", "ckpts/qwen3-0.6b")     # report["max_abs_diff"]
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from lmforge.io import replace_dir

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _temp_sibling(out: Path) -> Path:
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def _save_tokenizer(src: Path, dst: Path) -> bool:
    """Tokenizer files as ``transformers`` writes them, the chat template in both places.
    Returns whether there is a chat template."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(src)
    tokenizer.save_pretrained(dst)
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str):
        (dst / "chat_template.jinja").write_text(template, encoding="utf-8")
        config_path = dst / "tokenizer_config.json"
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config["chat_template"] = template
        config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return isinstance(template, str)


def _model_card(name: str, model, meta: dict, has_template: bool) -> str:
    cfg = model.config
    shape = f"d_model {cfg.d_model}, {cfg.n_layers} layers, {cfg.n_heads} query / {cfg.n_kv_heads} KV heads, vocabulary {cfg.vocab_size}"
    if cfg.is_moe:
        shape += f", {cfg.num_experts} experts (top-{cfg.num_experts_per_tok})"
    lines = [
        "---", "library_name: transformers", "tags: [lmforge]", "---", "", f"# {name}", "",
        f"A {cfg.hf_architecture} checkpoint ({model.num_parameters():,} parameters; {shape}; context {cfg.max_seq_len}) "
        "exported by lmforge: plain `transformers` code, no remote code.", "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        f'model = AutoModelForCausalLM.from_pretrained("{name}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{name}")',
        "```", "",
    ]
    if has_template:
        lines += ["Chat turns use ChatML (`<|im_start|>role ... <|im_end|>`); generation stops at `<|im_end|>`.", ""]
    if meta:
        lines += ["Training provenance (from `lmforge.json`):", "",
                  f"- step {meta.get('step', '?')}, tokens seen {meta.get('tokens_seen', '?')}",
                  f"- parent checkpoint: {meta.get('parent_checkpoint') or meta.get('imported_from') or 'none'}", ""]
    return "\n".join(lines)


def export_hf(checkpoint: str | Path, out: str | Path, dtype: str = "float32", max_shard_size: str | None = None) -> Path:
    """Write ``checkpoint`` (a checkpoint or run dir) as a clean HF model directory ``out``."""
    from lmforge.infer.engine import default_stop_token_ids
    from lmforge.model.hf import load_pretrained, save_pretrained
    from lmforge.train.checkpoint import META, read_meta, resolve_checkpoint

    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}; got {dtype!r}")
    checkpoint, out = resolve_checkpoint(checkpoint), Path(out)
    if out.resolve() == checkpoint.resolve():
        raise ValueError(f"{out}: the export must go to another directory than the checkpoint")
    model = load_pretrained(checkpoint, device="cpu", dtype=torch.float32)
    tmp = _temp_sibling(out)
    try:
        has_template = _save_tokenizer(checkpoint, tmp)
        from transformers import AutoTokenizer

        eos = default_stop_token_ids(AutoTokenizer.from_pretrained(tmp), checkpoint, model.config.eos_token_id)
        save_pretrained(model, tmp, dtype=_DTYPES[dtype], eos_token_ids=eos, max_shard_size=max_shard_size)
        meta = read_meta(checkpoint)
        if meta:
            (tmp / META).write_text(json.dumps({**meta, "exported_from": str(checkpoint)}, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        (tmp / "README.md").write_text(_model_card(out.name, model, meta, has_template), encoding="utf-8")
        return replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def compare_with_transformers(source: Path, model, vocab_size: int, seq_len: int = 32, seed: int = 0) -> dict:
    """Largest |logit difference| between ``transformers`` on ``source`` and ``model`` (fp32, CPU)."""
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (2, seq_len), generator=generator)
    with torch.inference_mode():
        want = reference(ids).logits.float()
        got = model(ids).logits.float()
    return {"max_abs_diff": float((want - got).abs().max()), "logit_scale": float(want.abs().max()),
            "greedy_agreement": float((want.argmax(-1) == got.argmax(-1)).float().mean()), "positions": ids.numel()}


def import_hf(source: str | Path, out: str | Path, verify: bool = True, tolerance: float = 1e-4) -> dict:
    """Make an lmforge checkpoint ``out`` from an HF model directory (or hub id); returns a report.

    ``verify`` compares logits with ``transformers`` on random token ids and refuses the import
    (nothing is written) if they differ by more than ``tolerance`` times the logit scale.
    """
    from lmforge.model.hf import from_hf_config, load_pretrained, resolve_model_dir, save_pretrained
    from lmforge.train.checkpoint import META, META_FORMAT, copy_tokenizer_files

    src, out = resolve_model_dir(source), Path(out)
    config_path = src / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{src}: not a model directory (no config.json)")
    hf_config = json.loads(config_path.read_text())
    from_hf_config(hf_config, str(config_path))  # unsupported architectures fail here, by name
    model = load_pretrained(src, device="cpu", dtype=torch.float32)
    report = {"source": str(source), "architecture": model.config.hf_architecture, "parameters": model.num_parameters()}
    if verify:
        report.update(compare_with_transformers(src, model, model.config.vocab_size))
        if report["max_abs_diff"] > tolerance * max(1.0, report["logit_scale"]):
            raise ValueError(f"{src}: imported logits differ from transformers' by {report['max_abs_diff']:.3g} "
                             f"(tolerance {tolerance:g} × scale {report['logit_scale']:.3g}); not written")
    tmp = _temp_sibling(out)
    try:
        save_pretrained(model, tmp)
        generation = src / "generation_config.json"
        if generation.is_file():  # keep the source's sampling defaults and stop ids
            shutil.copy2(generation, tmp / "generation_config.json")
        try:
            copy_tokenizer_files(src, tmp)
            report["tokenizer"] = True
        except FileNotFoundError:
            report["tokenizer"] = False
        meta = {"format": META_FORMAT, "step": 0, "tokens_seen": 0, "imported_from": str(source),
                "source_architectures": hf_config.get("architectures"), "verification": {k: report[k] for k in report if k in
                                                                                          ("max_abs_diff", "logit_scale", "greedy_agreement")}}
        (tmp / META).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    report["out"] = str(out)
    return report
