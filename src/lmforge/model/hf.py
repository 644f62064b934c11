"""Hugging Face interop: lmforge models are saved and loaded as plain HF checkpoint directories.

A directory written by ``save_pretrained`` holds ``config.json`` (a Llama / Qwen2 / Qwen3 /
Qwen3-MoE / Qwen2-MoE config, chosen by ``ModelConfig.hf_architecture``), ``model.safetensors``
(or shards plus ``model.safetensors.index.json``) in the hub's layout (one tensor per expert, as
vLLM and llama.cpp converters expect) and ``generation_config.json``.
``transformers.AutoModelForCausalLM.from_pretrained(dir)`` loads it without remote code, and
``load_pretrained`` reads such a directory back into an lmforge model — ours, or one from the
hub: sharded safetensors, transformers-5's fused-expert layout, or a hub repo id, fetched by
``resolve_model_dir`` into the standard hub cache (``HF_HUB_OFFLINE=1`` uses only that cache).

Usage::

    save_pretrained(model, "ckpt/")                   # + copy tokenizer files in yourself
    model = load_pretrained("ckpt/", device="cpu")    # Transformer, eval mode
    model = load_pretrained("Qwen/Qwen3-0.6B")        # a hub id: downloaded once, then cached
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer

_MODEL_TYPES = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "Qwen3MoeForCausalLM": "qwen3_moe",
    "Qwen2MoeForCausalLM": "qwen2_moe",
}
SUPPORTED_MODEL_TYPES = tuple(_MODEL_TYPES.values())

# What a checkpoint needs from a hub repo: config, weights, tokenizer (several formats), chat
# template. Skipping the rest avoids pulling .bin/.pth/.gguf duplicates of the same weights.
HUB_ALLOW_PATTERNS = [
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
]

def to_hf_config(cfg: ModelConfig, dtype: torch.dtype = torch.float32) -> dict:
    """The ``config.json`` contents for ``cfg``'s HF architecture."""
    arch = cfg.hf_architecture
    rope = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if cfg.rope_scaling_factor != 1.0:
        rope = {"rope_type": "linear", "factor": cfg.rope_scaling_factor, "rope_theta": cfg.rope_theta}
    out = {
        "architectures": [arch],
        "model_type": _MODEL_TYPES[arch],
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.ffn_hidden,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_parameters": rope,
        # The pre-v5 spelling, still read by llama.cpp's and vLLM's converters.
        "rope_theta": cfg.rope_theta,
        "tie_word_embeddings": cfg.tie_embeddings,
        "initializer_range": cfg.init_std,
        "attention_dropout": 0.0,
        "use_cache": True,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "pad_token_id": cfg.pad_token_id,
        "dtype": str(dtype).removeprefix("torch."),
    }
    if cfg.rope_scaling_factor != 1.0:
        out["rope_scaling"] = {"rope_type": "linear", "factor": cfg.rope_scaling_factor}
    if arch in ("LlamaForCausalLM", "Qwen3ForCausalLM", "Qwen3MoeForCausalLM"):
        out["attention_bias"] = False
    if arch == "LlamaForCausalLM":
        out["mlp_bias"] = False
    if arch in ("Qwen2ForCausalLM", "Qwen3ForCausalLM", "Qwen2MoeForCausalLM", "Qwen3MoeForCausalLM"):
        out["use_sliding_window"] = False
        out["sliding_window"] = None
    if cfg.is_moe:
        out.update(
            num_experts=cfg.num_experts,
            num_experts_per_tok=cfg.num_experts_per_tok,
            moe_intermediate_size=cfg.moe_ffn_hidden,
            norm_topk_prob=cfg.norm_topk_prob,
            router_aux_loss_coef=cfg.aux_loss_coef,
            decoder_sparse_step=1,
            mlp_only_layers=[],
            output_router_logits=False,
        )
    if arch == "Qwen2MoeForCausalLM":
        out["shared_expert_intermediate_size"] = cfg.num_shared_experts * cfg.moe_ffn_hidden
        out["qkv_bias"] = cfg.attention_bias
    return out


def from_hf_config(hf: dict, source: str = "config.json") -> ModelConfig:
    """Map an HF ``config.json`` dict to a ``ModelConfig``; unsupported features are errors."""
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        archs = ", ".join(hf.get("architectures") or []) or "unknown architecture"
        raise ValueError(
            f"{source}: model_type {model_type!r} ({archs}) is not supported; "
            f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"{source}: hidden_act {hf['hidden_act']!r} is not supported (only silu)")
    if hf.get("use_sliding_window") or "sliding_attention" in (hf.get("layer_types") or []):
        raise ValueError(f"{source}: sliding-window attention is not supported")
    required = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"]
    if model_type in ("qwen3_moe", "qwen2_moe"):
        required += ["num_experts_per_tok", "moe_intermediate_size"]
    missing = [key for key in required if key not in hf]
    if missing:
        raise ValueError(f"{source}: missing {', '.join(missing)}")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "linear"):
        raise ValueError(f"{source}: rope type {rope_type!r} is not supported (default or linear)")
    rope_theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
    n_heads = hf["num_attention_heads"]
    kwargs = dict(
        vocab_size=hf["vocab_size"],
        d_model=hf["hidden_size"],
        n_layers=hf["num_hidden_layers"],
        n_heads=n_heads,
        n_kv_heads=hf.get("num_key_value_heads") or n_heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // n_heads,
        ffn_hidden=hf["intermediate_size"],
        max_seq_len=hf.get("max_position_embeddings", 2048),
        rope_theta=float(rope_theta),
        rope_scaling_factor=float(rope.get("factor", 1.0)) if rope_type == "linear" else 1.0,
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        init_std=hf.get("initializer_range", 0.02),
        qk_norm=model_type in ("qwen3", "qwen3_moe"),
        attention_bias=False,
        bos_token_id=hf.get("bos_token_id"),
        eos_token_id=_first(hf.get("eos_token_id")),
        pad_token_id=hf.get("pad_token_id"),
    )
    if model_type in ("llama", "qwen3", "qwen3_moe") and hf.get("attention_bias"):
        raise ValueError(f"{source}: attention_bias on all projections is not supported")
    if model_type == "llama" and hf.get("mlp_bias"):
        raise ValueError(f"{source}: mlp_bias is not supported")
    if model_type == "qwen2":
        kwargs["attention_bias"] = True
    if model_type in ("qwen3_moe", "qwen2_moe"):
        if hf.get("mlp_only_layers") or hf.get("decoder_sparse_step", 1) != 1:
            raise ValueError(f"{source}: mixing dense and MoE layers (mlp_only_layers / decoder_sparse_step) is not supported")
        kwargs.update(
            num_experts=hf.get("num_experts") or hf.get("num_local_experts"),
            num_experts_per_tok=hf["num_experts_per_tok"],
            moe_ffn_hidden=hf["moe_intermediate_size"],
            norm_topk_prob=bool(hf.get("norm_topk_prob", False)),
            aux_loss_coef=hf.get("router_aux_loss_coef", 0.001),
        )
    if model_type == "qwen2_moe":
        shared, width = hf.get("shared_expert_intermediate_size", 0), hf["moe_intermediate_size"]
        if shared % width:
            raise ValueError(f"{source}: shared_expert_intermediate_size {shared} is not a multiple of moe_intermediate_size {width}")
        kwargs["num_shared_experts"] = shared // width
        kwargs["attention_bias"] = bool(hf.get("qkv_bias", True))
    try:
        return ModelConfig(**kwargs)
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None


def _first(value):
    return value[0] if isinstance(value, list) else value


def resolve_model_dir(
    name_or_path: str | Path,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    allow_patterns: list[str] | None = None,
) -> Path:
    """A local checkpoint directory for ``name_or_path``: a directory as is, else a hub repo id.

    Hub repos go through ``huggingface_hub.snapshot_download`` into the standard cache
    (``cache_dir`` or ``HF_HUB_CACHE``), fetching only ``HUB_ALLOW_PATTERNS``. With
    ``HF_HUB_OFFLINE=1`` (read at call time, so setting it after import works) nothing is
    downloaded: the cached snapshot for ``revision`` (default ``main``) is used or an error says
    it is missing.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    name = str(name_or_path)
    if path.exists():
        raise NotADirectoryError(f"{name}: a checkpoint must be a directory (with config.json), not a file")
    if not _looks_like_repo_id(name):
        raise FileNotFoundError(f"{name}: no such checkpoint directory (and not a hub repo id like 'org/name')")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover - transformers depends on huggingface_hub
        raise FileNotFoundError(f"{name}: no such directory, and huggingface_hub is not installed to fetch it") from exc
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    try:
        local = snapshot_download(
            repo_id=name,
            revision=revision,
            cache_dir=str(cache_dir) if cache_dir is not None else None,
            allow_patterns=allow_patterns or HUB_ALLOW_PATTERNS,
            local_files_only=offline,
        )
    except Exception as exc:  # the hub's errors are many; all mean "not available here"
        where = "in the local hub cache (HF_HUB_OFFLINE is set)" if offline else "locally or on the hub"
        raise FileNotFoundError(f"{name}: no such checkpoint directory, and repo {name!r} could not be found {where}: {exc}") from exc
    return Path(local)


def _looks_like_repo_id(name: str) -> bool:
    # 'name' or 'org/name' with the hub's allowed characters; paths like './x' or '/a/b/c' are not.
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?", name)) and ".." not in name and not name.endswith(".")


def parse_size(size: int | str) -> int:
    """Bytes in ``size``: an int, or a string like ``"500MB"``, ``"2GB"``, ``"64KiB"`` (HF's units)."""
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B?\s*", str(size), flags=re.IGNORECASE)
    if not match:
        raise ValueError(f"cannot read size {size!r}; use bytes or e.g. '500MB', '2GB', '64KiB'")
    number, unit, binary = float(match.group(1)), match.group(2).upper(), bool(match.group(3))
    power = "KMGT".index(unit) + 1 if unit else 0
    return int(number * (1024 if binary else 1000) ** power)


_WEIGHT_FILE = re.compile(r"model(-\d{5}-of-\d{5})?\.safetensors(\.index\.json)?")


def save_pretrained(
    model: Transformer,
    directory: str | Path,
    dtype: torch.dtype | None = None,
    eos_token_ids: list[int] | None = None,
    max_shard_size: int | str | None = None,
) -> Path:
    """Write config.json, the weights and generation_config.json into ``directory``.

    Weights go to one ``model.safetensors``, or, when ``max_shard_size`` is given and they are
    larger, to ``model-0000i-of-0000n.safetensors`` shards with ``model.safetensors.index.json``
    (the hub's layout). Weight files left by an earlier save in ``directory`` are removed first,
    so a loader never mixes an old layout with the new one.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    state = {}
    for name, tensor in model.state_dict().items():
        if cfg.tie_embeddings and name == "lm_head.weight":
            continue  # tied to embed_tokens; safetensors cannot store shared storage, HF re-ties on load
        t = tensor.detach().to("cpu")
        state[name] = (t.to(dtype) if dtype is not None and t.is_floating_point() else t).contiguous()
    for old in directory.iterdir():
        if _WEIGHT_FILE.fullmatch(old.name):
            old.unlink()
    shards = _shard(state, parse_size(max_shard_size)) if max_shard_size is not None else [state]
    if len(shards) == 1:
        save_file(state, directory / "model.safetensors", metadata={"format": "pt"})
    else:
        weight_map = {}
        for i, shard in enumerate(shards, start=1):
            filename = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, directory / filename, metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(shard, filename))
        total = sum(t.numel() * t.element_size() for t in state.values())
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    saved_dtype = dtype or next(model.parameters()).dtype
    (directory / "config.json").write_text(json.dumps(to_hf_config(cfg, saved_dtype), indent=2) + "\n")
    eos = eos_token_ids or ([cfg.eos_token_id] if cfg.eos_token_id is not None else [])
    generation = {"bos_token_id": cfg.bos_token_id, "eos_token_id": eos[0] if len(eos) == 1 else eos, "pad_token_id": cfg.pad_token_id}
    (directory / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    return directory


def _shard(state: dict[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    """Split in state-dict order (a layer's tensors stay together); a tensor larger than
    ``max_bytes`` gets a shard of its own, as HF does."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    return shards


def read_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of an HF directory: single or sharded safetensors."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        state: dict[str, torch.Tensor] = {}
        for name in sorted(set(weight_map.values())):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"{directory}: shard {name} named in model.safetensors.index.json is missing")
            state.update(load_file(directory / name))
        return state
    single = directory / "model.safetensors"
    if single.is_file():
        return load_file(single)
    if any(directory.glob("*.bin")) or any(directory.glob("*.pth")):
        raise FileNotFoundError(f"{directory}: only pickle weights (.bin/.pth) found; convert them to safetensors first")
    raise FileNotFoundError(f"{directory}: no model.safetensors or model.safetensors.index.json")


def _unfuse_experts(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers 5 may store experts fused ([E, 2I, D] gate_up, [E, D, I] down); split them."""
    out = {}
    for name, tensor in state.items():
        if name.endswith("mlp.experts.gate_up_proj"):
            prefix = name[: -len("gate_up_proj")]
            gate, up = tensor.chunk(2, dim=1)  # HF's fused layout: gate rows first, then up
            for e in range(tensor.shape[0]):
                out[f"{prefix}{e}.gate_proj.weight"] = gate[e]
                out[f"{prefix}{e}.up_proj.weight"] = up[e]
        elif name.endswith("mlp.experts.down_proj"):
            prefix = name[: -len("down_proj")]
            for e in range(tensor.shape[0]):
                out[f"{prefix}{e}.down_proj.weight"] = tensor[e]
        elif name.endswith("rotary_emb.inv_freq"):
            continue  # a buffer some older checkpoints saved; recomputed from the config
        else:
            out[name] = tensor
    return out


def load_pretrained(
    directory: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    revision: str | None = None,
) -> Transformer:
    """Build an lmforge ``Transformer`` (eval mode) from an HF checkpoint directory or hub repo id.

    The model is built on the ``meta`` device and takes the checkpoint's tensors directly, so
    loading costs one copy of the weights and no random initialization.
    """
    directory = resolve_model_dir(directory, revision=revision)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{directory}: not a checkpoint directory (no config.json)")
    cfg = from_hf_config(json.loads(config_path.read_text()), str(config_path))
    with torch.device("meta"):
        model = Transformer(cfg)
    state = _unfuse_experts(read_state_dict(directory))
    if cfg.tie_embeddings:
        state.pop("lm_head.weight", None)
    expected = model.state_dict()
    if cfg.tie_embeddings:
        expected.pop("lm_head.weight")
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{directory}: weights do not match config.json; missing {missing[:5]}, unexpected {unexpected[:5]}")
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise ValueError(f"{directory}: {name} has shape {tuple(tensor.shape)}, config implies {tuple(expected[name].shape)}")
    # Convert while still on CPU so a bf16 checkpoint loaded as fp32 (or back) needs no second pass.
    state = {name: t.to(dtype) if t.is_floating_point() else t for name, t in state.items()}
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()  # assign=True replaced embed_tokens.weight; lm_head must follow it
    return model.to(device=device).eval()
