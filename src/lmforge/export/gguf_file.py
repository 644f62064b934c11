"""GGUF export: an lmforge checkpoint as one file llama.cpp (and Ollama, LM Studio, …) runs.

Written with the ``gguf`` package's ``GGUFWriter``; what goes in, and why:

* **Architecture** from ``config.json``: ``llama``, ``qwen2``, ``qwen3``, ``qwen3moe`` or
  ``qwen2moe`` — llama.cpp's names for the five HF layouts lmforge checkpoints use. Its
  hyperparameters (context, widths, heads, head size, RMSNorm ε, RoPE base and linear scaling,
  expert counts) are the GGUF keys of that architecture.
* **Tensors** renamed to llama.cpp's scheme (``blk.N.attn_q.weight`` …); experts stacked into
  ``[n_expert, out, in]`` tensors (``ffn_gate_exps`` …). For ``llama`` the q/k projections are
  permuted: HF Llama rotates halves of each head (NeoX style) while llama.cpp's ``llama``
  rotates adjacent pairs, so the rows are reordered to make the two agree (the Qwen
  architectures use NeoX rotation in llama.cpp too and are written as they are).
* **Types**: ``f32`` keeps everything in float32; ``f16`` / ``bf16`` store the matrices so and
  keep norms, biases and MoE routers in float32, as llama.cpp's own converter does.
* **Tokenizer**: byte-level BPE as ``gpt2`` (vocabulary in id order, merges, token types:
  special tokens are ``control``), with the pre-tokenizer llama.cpp must apply: ``qwen2`` for
  lmforge's own tokenizers (Qwen2's split regex), ``gpt2`` for GPT-2's. Any other
  pre-tokenizer is refused rather than exported to tokenize differently. Rows of a vocabulary
  padded beyond the tokenizer get ``[PAD{id}]`` placeholders. bos/eos/pad ids, ``<|im_end|>``
  as end of turn, and the chat template are included, so ``llama-cli -cnv`` and Ollama chat
  with the checkpoint's own template. A normalizer other than none or NFC is refused too
  (llama.cpp applies none; NFC, lmforge's and Qwen2's, changes only non-NFC input).

Usage::

    export_gguf("runs/demo/dpo-abc", "demo-f16.gguf", outtype="f16")

Not handled: quantized types (run llama.cpp's ``llama-quantize`` on the f16 file), MoE
checkpoints whose top-k renormalization differs from what llama.cpp hard-codes for the
architecture (Qwen3-MoE renormalizes, Qwen2-MoE does not) — refused with the reason.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "Qwen3MoeForCausalLM": "qwen3moe",
    "Qwen2MoeForCausalLM": "qwen2moe",
}
OUTTYPES = ("f32", "f16", "bf16")

_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    "mlp.gate.weight": "ffn_gate_inp.weight",
    "mlp.shared_expert.gate_proj.weight": "ffn_gate_shexp.weight",
    "mlp.shared_expert.up_proj.weight": "ffn_up_shexp.weight",
    "mlp.shared_expert.down_proj.weight": "ffn_down_shexp.weight",
    "mlp.shared_expert_gate.weight": "ffn_gate_inp_shexp.weight",
}
_EXPERT_PARTS = {"gate_proj": "ffn_gate_exps.weight", "up_proj": "ffn_up_exps.weight", "down_proj": "ffn_down_exps.weight"}
# Kept in float32 whatever the outtype (small, and precision-sensitive).
_F32_ALWAYS = ("_norm.weight", ".bias", "ffn_gate_inp.weight", "ffn_gate_inp_shexp.weight")


def llama_permute(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder each head's rows from rotate-half (HF) to adjacent-pair (llama.cpp ``llama``) RoPE.

    Within a head, HF pairs dimension i with i + head_dim/2; llama.cpp pairs 2i with 2i+1. Rows
    [0..h/2) and [h/2..h) are interleaved so that the pairs line up.
    """
    out_features = weight.shape[0]
    head_dim = out_features // n_heads
    return weight.reshape(n_heads, 2, head_dim // 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


def _pre_tokenizer(tokenizer_json: dict, source: Path) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenization, or an error naming what it is."""
    from lmforge.tokenizer.train import QWEN2_PRETOKENIZE_REGEX

    pre = tokenizer_json.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space", False):
        return "gpt-2"
    if pre.get("type") == "Sequence":
        parts = pre.get("pretokenizers") or []
        if (len(parts) == 2 and parts[0].get("type") == "Split" and (parts[0].get("pattern") or {}).get("Regex") == QWEN2_PRETOKENIZE_REGEX
                and parts[1].get("type") == "ByteLevel" and not parts[1].get("use_regex", True)):
            return "qwen2"
    raise ValueError(f"{source}: pre-tokenizer {json.dumps(pre)[:200]} is not one llama.cpp applies the same way "
                     "(supported: Qwen2's split regex, as lmforge tokenizers use, or GPT-2's byte-level regex)")


def _vocabulary(checkpoint: Path, vocab_size: int):
    """(tokens, token types, merges, pre-tokenizer name) from ``tokenizer.json``."""
    import gguf

    path = checkpoint / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"{checkpoint}: no tokenizer.json; GGUF export needs the (byte-level BPE) tokenizer")
    data = json.loads(path.read_text(encoding="utf-8"))
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise ValueError(f"{path}: a {model.get('type')} tokenizer; GGUF export supports byte-level BPE")
    pre = _pre_tokenizer(data, path)
    normalizer = data.get("normalizer")
    if normalizer is not None and normalizer.get("type") != "NFC":
        # llama.cpp applies no normalizer; NFC (lmforge's, Qwen2's) only matters for text that is
        # not NFC already, anything else would change how ordinary text tokenizes.
        raise ValueError(f"{path}: normalizer {json.dumps(normalizer)[:120]} has no llama.cpp equivalent (only none or NFC export)")
    by_id: dict[int, tuple[str, int]] = {i: (tok, gguf.TokenType.NORMAL) for tok, i in model["vocab"].items()}
    for added in data.get("added_tokens") or []:
        by_id[added["id"]] = (added["content"], gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED)
    if max(by_id) >= vocab_size:
        raise ValueError(f"{path}: token id {max(by_id)} does not fit the model's vocab_size {vocab_size}")
    tokens, types = [], []
    for i in range(vocab_size):
        token, kind = by_id.get(i, (f"[PAD{i}]", gguf.TokenType.UNUSED))
        tokens.append(token)
        types.append(kind)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    return tokens, types, merges, pre


def _special_ids(checkpoint: Path, tokens: list[str]) -> dict[str, int | None]:
    config = json.loads((checkpoint / "config.json").read_text())
    ids = {"bos": config.get("bos_token_id"), "eos": config.get("eos_token_id"), "pad": config.get("pad_token_id")}
    ids = {k: (v[0] if isinstance(v, list) else v) for k, v in ids.items()}
    ids["eot"] = tokens.index("<|im_end|>") if "<|im_end|>" in tokens else None
    return ids


def _chat_template(checkpoint: Path) -> str | None:
    jinja = checkpoint / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    config = checkpoint / "tokenizer_config.json"
    if config.is_file():
        template = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
        return template if isinstance(template, str) else None
    return None


def _tensors(model, arch: str):
    """(gguf name, float32 tensor) in llama.cpp's layout, layer by layer."""
    cfg = model.config
    state = model.state_dict()
    yield "token_embd.weight", state["model.embed_tokens.weight"]
    for layer in range(cfg.n_layers):
        prefix = f"model.layers.{layer}."
        experts: dict[str, list[torch.Tensor]] = {}
        for name, tensor in state.items():
            if not name.startswith(prefix):
                continue
            local = name[len(prefix):]
            if local.startswith("mlp.experts."):
                _, _, index, part, _ = local.split(".")
                experts.setdefault(part, []).append((int(index), tensor))
                continue
            if local not in _LAYER_NAMES:
                raise ValueError(f"no GGUF name for tensor {name}")
            if arch == "llama" and local == "self_attn.q_proj.weight":
                tensor = llama_permute(tensor, cfg.n_heads)
            elif arch == "llama" and local == "self_attn.k_proj.weight":
                tensor = llama_permute(tensor, cfg.n_kv_heads)
            elif local == "mlp.shared_expert_gate.weight":
                tensor = tensor.reshape(-1)  # llama.cpp wants [n_embd], HF stores [1, n_embd]
            yield f"blk.{layer}.{_LAYER_NAMES[local]}", tensor
        for part, indexed in experts.items():
            stacked = torch.stack([t for _, t in sorted(indexed, key=lambda it: it[0])])
            yield f"blk.{layer}.{_EXPERT_PARTS[part]}", stacked
    yield "output_norm.weight", state["model.norm.weight"]
    if not cfg.tie_embeddings:
        yield "output.weight", state["lm_head.weight"]


def export_gguf(checkpoint: str | Path, out: str | Path, outtype: str = "f16", name: str | None = None) -> Path:
    """Write ``checkpoint`` (a checkpoint or run dir) as a GGUF file at ``out``, atomically."""
    import gguf

    from lmforge.model.hf import load_pretrained
    from lmforge.train.checkpoint import resolve_checkpoint

    if outtype not in OUTTYPES:
        raise ValueError(f"outtype must be one of {', '.join(OUTTYPES)}; got {outtype!r}")
    checkpoint = resolve_checkpoint(checkpoint)
    model = load_pretrained(checkpoint, device="cpu", dtype=torch.float32)
    cfg = model.config
    arch = ARCHITECTURES[cfg.hf_architecture]
    if arch == "qwen3moe" and not cfg.norm_topk_prob:
        raise ValueError(f"{checkpoint}: llama.cpp's qwen3moe always renormalizes the top-k expert weights; this model has norm_topk_prob false")
    if arch == "qwen2moe" and cfg.norm_topk_prob:
        raise ValueError(f"{checkpoint}: llama.cpp's qwen2moe never renormalizes the top-k expert weights; this model has norm_topk_prob true")
    tokens, types, merges, pre = _vocabulary(checkpoint, cfg.vocab_size)
    special = _special_ids(checkpoint, tokens)

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    writer = gguf.GGUFWriter(str(tmp), arch)
    try:
        writer.add_name(name or checkpoint.name)
        writer.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                              "bf16": gguf.LlamaFileType.MOSTLY_BF16}[outtype])
        writer.add_context_length(cfg.max_seq_len)
        writer.add_embedding_length(cfg.d_model)
        writer.add_block_count(cfg.n_layers)
        writer.add_feed_forward_length(cfg.ffn_hidden)
        writer.add_head_count(cfg.n_heads)
        writer.add_head_count_kv(cfg.n_kv_heads)
        writer.add_key_length(cfg.head_dim)
        writer.add_value_length(cfg.head_dim)
        writer.add_rope_dimension_count(cfg.head_dim)
        writer.add_rope_freq_base(cfg.rope_theta)
        if cfg.rope_scaling_factor != 1.0:
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(cfg.rope_scaling_factor)
        writer.add_layer_norm_rms_eps(cfg.norm_eps)
        writer.add_vocab_size(cfg.vocab_size)
        if cfg.is_moe:
            writer.add_expert_count(cfg.num_experts)
            writer.add_expert_used_count(cfg.num_experts_per_tok)
            writer.add_expert_feed_forward_length(cfg.moe_ffn_hidden)
            if cfg.num_shared_experts:
                writer.add_expert_shared_feed_forward_length(cfg.num_shared_experts * cfg.moe_ffn_hidden)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        writer.add_token_merges(merges)
        for key, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id), ("pad", writer.add_pad_token_id),
                         ("eot", writer.add_eot_token_id)):
            if special[key] is not None:
                add(int(special[key]))
        writer.add_add_bos_token(False)  # lmforge tokenizers add no BOS; prompts start as trained
        if template := _chat_template(checkpoint):
            writer.add_chat_template(template)
        for tensor_name, tensor in _tensors(model, arch):
            keep_f32 = outtype == "f32" or tensor.dim() == 1 or tensor_name.endswith(_F32_ALWAYS)
            if keep_f32:
                writer.add_tensor(tensor_name, tensor.float().numpy())
            elif outtype == "f16":
                writer.add_tensor(tensor_name, tensor.to(torch.float16).numpy())
            else:  # bf16: numpy has no bfloat16; hand over the raw 16-bit words
                words = tensor.to(torch.bfloat16).view(torch.int16).numpy()
                writer.add_tensor(tensor_name, words, raw_shape=words.shape, raw_dtype=gguf.GGMLQuantizationType.BF16)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return out


def ollama_modelfile(gguf_name: str, has_chat_template: bool = True) -> str:
    """A Modelfile for ``ollama create``: the GGUF, ChatML turns, and the turn-end stop token."""
    lines = [f"FROM ./{gguf_name}"]
    if has_chat_template:
        lines += [
            # .Messages already holds the system message: rendering .System too would repeat it.
            'TEMPLATE """{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"""',
            'PARAMETER stop "<|im_end|>"',
            'PARAMETER stop "<|endoftext|>"',
        ]
    return "\n".join(lines) + "\n"
