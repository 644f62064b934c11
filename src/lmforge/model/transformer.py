"""The decoder-only transformer: pre-norm RMSNorm, RoPE, grouped-query attention, SwiGLU or MoE.

Parameter names follow Hugging Face's Llama/Qwen layout (``model.layers.0.self_attn.q_proj``),
so ``state_dict()`` is already an HF checkpoint; see ``hf.py``. The file stays pure: no
distribution, compilation or checkpointing here — those wrap the model from outside.

Usage::

    from lmforge.model import ModelConfig, Transformer
    model = Transformer(ModelConfig(vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2))
    out = model(torch.randint(0, 256, (1, 16)))          # out.logits: [1, 16, 256]
    cache = model.new_kv_cache(batch_size=1, max_len=64)  # incremental decoding
    out = model(ids, kv_cache=cache)

``forward`` returns a ``ModelOutput`` with ``logits``, ``aux_loss`` (MoE load balancing, already
scaled by ``aux_loss_coef``; 0 for dense) and ``expert_load`` ([n_layers, n_experts] fraction of
routed tokens per expert, or None).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.model.config import ModelConfig
from lmforge.model.moe import MoEFeedForward, SwiGLU


@dataclass
class ModelOutput:
    logits: torch.Tensor
    aux_loss: torch.Tensor
    expert_load: torch.Tensor | None = None


class RMSNorm(nn.Module):
    """Root-mean-square norm computed in fp32, as HF's Llama/Qwen do (needed for logits equality).

    ``weight * norm(x.float()).to(x.dtype)`` is HF's exact order of operations; the fused
    ``F.rms_norm`` gives bit-identical fp32 results with fewer temporaries kept for backward.
    """

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``RMSNorm``'s computation (the decode step calls it without the module)."""
    if x.dtype is torch.float32:  # both casts would be no-ops that still cost a call each
        return weight * F.rms_norm(x, (x.shape[-1],), eps=eps)
    return weight * F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


class RotaryEmbedding(nn.Module):
    """cos/sin tables for rotate-half RoPE; linear interpolation when ``scaling_factor`` > 1.

    ``inv_freq`` always stays fp32 and is recomputed (not converted) when the module moves:
    ``model.to(torch.bfloat16)`` would otherwise round the frequencies (HF keeps them fp32 too),
    and a model built on the ``meta`` device gets real values when it is materialized.
    """

    def __init__(self, head_dim: int, theta: float, scaling_factor: float = 1.0) -> None:
        super().__init__()
        self.head_dim, self.theta, self.scaling_factor = head_dim, theta, scaling_factor
        self.register_buffer("inv_freq", self._inv_freq(torch.device("cpu")), persistent=False)

    def _inv_freq(self, device: torch.device) -> torch.Tensor:
        exponents = torch.arange(0, self.head_dim, 2, dtype=torch.int64, device=device).float() / self.head_dim
        return 1.0 / (self.theta**exponents) / self.scaling_factor

    def _apply(self, fn, recurse: bool = True):
        # `fn` is what .to()/.cuda()/.to_empty() do to each tensor; a probe tells the target device.
        device = fn(torch.zeros((), dtype=torch.float32)).device
        self.inv_freq = self._inv_freq(device)
        return self

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        # fp32 outer product even under autocast: positions up to 1e5 lose precision in bf16.
        with torch.autocast(device_type=position_ids.device.type, enabled=False):
            return self.cos_sin(position_ids, dtype)

    def cos_sin(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin tables [..., head_dim] for positions [...], outside ``forward``'s autocast
        guard (whose set-up costs more than this; none of these ops is autocast-eligible, so
        callers not under autocast, like the decode step, get the same values without it)."""
        freqs = position_ids[..., None].float() * self.inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, H, T, D]; cos/sin: [B or 1, T, D] (one table shared by the batch when positions agree)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos + _rotate_half(x) * sin


class KVCache:
    """Preallocated keys/values for all layers: [n_layers, B, n_kv_heads, max_len, head_dim].

    All sequences in a batch share one write position (``length``); left-padded prompts keep
    their own RoPE positions through ``position_ids`` and hide padding through a key mask
    (``key_mask`` remembers the one ``forward`` was last given; the engine's decode steps pass
    theirs explicitly).
    """

    def __init__(self, config: ModelConfig, batch_size: int, max_len: int, dtype: torch.dtype, device) -> None:
        shape = (config.n_layers, batch_size, config.n_kv_heads, max_len, config.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.max_len = max_len
        self.length = 0
        # key_mask[b, s] is False for padding slots; None means every slot is a real token.
        self.key_mask: torch.Tensor | None = None

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        start, end = self.length, self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} tokens > max_len {self.max_len}")
        # select/narrow rather than tuple indexing: the same views, at a third of the Python cost
        # (this runs twice per layer per decoded token).
        keys, values = self.k.select(0, layer), self.v.select(0, layer)
        keys.narrow(2, start, end - start).copy_(k)
        values.narrow(2, start, end - start).copy_(v)
        return keys.narrow(2, 0, end), values.narrow(2, 0, end)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        bias = config.attention_bias
        self.q_proj = nn.Linear(config.d_model, self.n_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.d_model, self.n_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.d_model, self.n_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, config.d_model, bias=False)
        if config.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, config.norm_eps)
            self.k_norm = RMSNorm(self.head_dim, config.norm_eps)
        else:
            self.q_norm = self.k_norm = None

    def forward(self, x, cos, sin, mask: torch.Tensor | None, is_causal: bool, kv_cache: KVCache | None) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_idx, k, v)
        gqa = self.n_kv_heads != self.n_heads
        if gqa and not _native_gqa(q.device, mask):
            rep = self.n_heads // self.n_kv_heads
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
            gqa = False
        # enable_gqa only where it is true: torch < 2.5 does not know the keyword.
        extra = {"enable_gqa": True} if gqa else {}
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, **extra)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))


def _native_gqa(device: torch.device, mask: torch.Tensor | None) -> bool:
    """Whether SDPA can share K/V heads itself instead of us copying them ``n_heads/n_kv_heads`` times.

    The CPU flash kernel (torch >= 2.5) and the CUDA flash kernel (causal, no mask) take grouped
    K/V directly. With a mask CUDA would pick the memory-efficient kernel, which has no GQA and
    would fall back to the slow math path, so there K/V are expanded instead.
    """
    if not _SDPA_HAS_GQA:
        return False
    return device.type == "cpu" or mask is None


_SDPA_HAS_GQA = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 5)


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.d_model, config.norm_eps)
        self.self_attn = Attention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.d_model, config.norm_eps)
        self.mlp = MoEFeedForward(config) if config.is_moe else SwiGLU(config.d_model, config.ffn_hidden)

    def forward(self, x, cos, sin, mask, is_causal, kv_cache):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, is_causal, kv_cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class Backbone(nn.Module):
    """Named ``model`` inside ``Transformer`` so parameter names match HF (``model.layers.N``)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, config.norm_eps)


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.model = Backbone(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.rotary = RotaryEmbedding(config.head_dim, config.rope_theta, config.rope_scaling_factor)
        self.tie_weights()
        self.reset_parameters()

    def tie_weights(self) -> None:
        """Share the output projection with the token embedding when the config says so (again
        after anything that replaces parameters, e.g. ``load_state_dict(assign=True)``)."""
        if self.config.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Normal(0, init_std) weights; residual output projections scaled by 1/sqrt(2·n_layers)."""
        std = self.config.init_std
        residual_std = std / math.sqrt(2 * self.config.n_layers)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                is_residual_out = name.endswith(("o_proj", "down_proj"))
                nn.init.normal_(module.weight, 0.0, residual_std if is_residual_out else std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, 0.0, std)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)

    def new_kv_cache(self, batch_size: int, max_len: int | None = None, dtype: torch.dtype | None = None) -> KVCache:
        param = self.model.embed_tokens.weight
        return KVCache(self.config, batch_size, max_len or self.config.max_seq_len, dtype or param.dtype, param.device)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        params = {id(p): p for p in self.parameters()}  # tied weights count once
        total = sum(p.numel() for p in params.values())
        if exclude_embeddings:
            total -= self.model.embed_tokens.weight.numel()
        return total

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        attention_mask: torch.Tensor | None = None,
        num_logits_to_keep: int = 0,
        logits_mask: torch.Tensor | None = None,
    ) -> ModelOutput:
        """input_ids [B, T] -> logits [B, T, V] (or the last ``num_logits_to_keep`` positions).

        ``logits_mask`` (bool [B, T]) computes logits only where it is True and returns them as
        [N, V] in row-major order: scoring needs a few positions per row, and the output
        projection over the vocabulary costs as much as the rest of a small model.

        ``attention_mask`` is an optional bool [B, S] key mask (False = padding) over all
        positions seen so far including these; with a KV cache it is remembered there.
        An explicit [B, 1, T, S] bool/float mask is passed to attention as is (packed documents).
        """
        B, T = input_ids.shape
        past = kv_cache.length if kv_cache is not None else 0
        if position_ids is None:
            # [1, T]: one cos/sin table broadcast over the batch instead of B identical ones.
            position_ids = torch.arange(past, past + T, device=input_ids.device).unsqueeze(0)
        mask, is_causal = self._attention_mask(attention_mask, kv_cache, B, T, past, input_ids.device)
        x = self.model.embed_tokens(input_ids)
        cos, sin = self.rotary(position_ids, x.dtype)
        for layer in self.model.layers:
            x = layer(x, cos, sin, mask, is_causal, kv_cache)
        if kv_cache is not None:
            kv_cache.length = past + T
        x = self.model.norm(x)
        if logits_mask is not None:
            x = x[logits_mask]
        elif num_logits_to_keep:
            x = x[:, -num_logits_to_keep:]
        logits = self.lm_head(x)
        return ModelOutput(logits=logits, **self._collect_moe_stats(x))

    @staticmethod
    def _attention_mask(attention_mask, kv_cache, B, T, past, device) -> tuple[torch.Tensor | None, bool]:
        """(mask for SDPA, is_causal). No mask at all wherever plain causal attention is exact,
        so training and unpadded prefill take SDPA's fast causal kernels."""
        if attention_mask is not None and attention_mask.dim() == 4:
            return attention_mask, False
        if attention_mask is not None and attention_mask.dim() != 2:
            raise ValueError(f"attention_mask must be a [batch, keys] key mask or a [batch, 1, T, S] mask; got {tuple(attention_mask.shape)}")
        if kv_cache is not None and attention_mask is not None:
            kv_cache.key_mask = attention_mask.bool()
        key_mask = kv_cache.key_mask if kv_cache is not None else attention_mask
        if key_mask is None:
            if past == 0:
                return None, True  # SDPA's causal path: no [T, S] mask is materialized
            if T == 1:
                return None, False  # one new token sees every cached one
        S = past + T
        q_pos = torch.arange(past, S, device=device)[:, None]
        k_pos = torch.arange(S, device=device)[None, :]
        mask = (k_pos <= q_pos)[None, None].expand(B, 1, T, S)
        if key_mask is not None:
            if key_mask.shape != (B, S):
                raise ValueError(f"attention_mask must be [batch, {S}] over all positions; got {tuple(key_mask.shape)}")
            # A padding query may see only itself: a row with no visible key would give NaN,
            # and NaN keys/values poison later layers even when masked out.
            mask = (mask & key_mask[:, None, None, :].bool()) | (k_pos == q_pos)[None, None]
        return mask, False

    def _collect_moe_stats(self, x: torch.Tensor) -> dict:
        if not self.config.is_moe:
            return {"aux_loss": x.new_zeros((), dtype=torch.float32), "expert_load": None}
        aux = [layer.mlp.last_aux_loss for layer in self.model.layers]
        load = [layer.mlp.last_expert_load for layer in self.model.layers]
        return {
            "aux_loss": torch.stack(aux).mean() * self.config.aux_loss_coef,  # mean: coef independent of depth
            "expert_load": torch.stack(load),
        }
