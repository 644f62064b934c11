"""The decode step: one new token per row through a ``Transformer`` and its KV cache, lean.

``Transformer.forward`` is general: any number of new tokens, training, packed-document masks,
MoE statistics, a module call per projection. Decoding runs it once per generated token with
T = 1, and for a small model on a CPU the Python around each operation (module calls, hooks
bookkeeping, building the attention mask, RoPE's autocast guard) costs as much as the
matrix-vector products themselves. ``DecodePlan`` is the same computation written as straight
torch calls on the weights:

- the same operations in the same order as ``forward`` (RMSNorm in fp32, QK-norm, rotate-half
  RoPE, grouped-query SDPA, SwiGLU or the MoE block), so its logits are bitwise equal to
  ``forward``'s (tested for dense, QK-norm, biased and MoE layouts, padded batches and the
  server's slot cache);
- RoPE as one roll and two products per tensor, the attention mask given ready-made
  ([B, 1, 1, S] bool, or None when every cached position is visible);
- the cache's own ``update`` writes keys and values, so the engine's ``KVCache`` and the
  server's per-slot cache both work.

On the CPU a dense fp32 or bf16 model's steps go further, to a C kernel (``native.py``) that runs
the whole step in one OpenMP region: about 2x faster again in fp32 (equal to ``forward`` to fp32
rounding rather than bitwise), more in bf16 (closer to an fp32 forward than torch's bf16 step).
``DecodePlan.of(model, native=False)`` or ``LMFORGE_NATIVE_DECODE=0`` keep the bitwise path.

``DecodePlan.of(model)`` returns None for anything it cannot reproduce exactly — a wrapped or
compiled model (``torch.compile(model)`` or ``model.compile()``), a module whose ``forward`` was
replaced, projections replaced by adapters (peft's LoRA layers), modules carrying hooks (FSDP,
accelerate), sharded parameters — and the caller then uses ``model(...)``. A plan holds the
Parameter objects: ``model.to(...)`` keeps it valid (by default it swaps their data), anything
that replaces a Parameter (``load_state_dict(assign=True)``) needs a new plan::

    plan = DecodePlan.of(model)     # once per generation loop
    logits = plan.step(tokens, positions, kv_cache, mask) if plan else model(tokens[:, None], ...).logits[:, -1]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.model.moe import MoEFeedForward, SwiGLU
from lmforge.model.native import NativeDecoder
from lmforge.model.transformer import (Attention, Backbone, DecoderLayer, KVCache, RMSNorm, RotaryEmbedding,
                                       Transformer, _native_gqa, rms_norm)


@dataclass(frozen=True)
class _Layer:
    """One decoder layer's tensors (the Parameters themselves; see the module docstring)."""

    input_norm: torch.Tensor
    q: torch.Tensor
    q_bias: torch.Tensor | None
    k: torch.Tensor
    k_bias: torch.Tensor | None
    v: torch.Tensor
    v_bias: torch.Tensor | None
    o: torch.Tensor
    o_bias: torch.Tensor | None
    q_norm: torch.Tensor | None
    k_norm: torch.Tensor | None
    post_norm: torch.Tensor
    swiglu: tuple[torch.Tensor | None, ...] | None  # gate, up, down weights and biases; None: MoE
    mlp: nn.Module


class DecodePlan:
    """References to one model's weights, laid out for ``step``; see the module docstring."""

    def __init__(self, model: Transformer) -> None:
        config = model.config
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        self.eps = config.norm_eps
        self.rotary = model.rotary
        self.embed = model.model.embed_tokens.weight
        self.final_norm = model.model.norm.weight
        self.lm_head, self.lm_head_bias = model.lm_head.weight, model.lm_head.bias
        self.native: NativeDecoder | None = None  # set by ``of(model, native=True)``
        self.layers = []
        for layer in model.model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            self.layers.append(_Layer(
                layer.input_layernorm.weight,
                attn.q_proj.weight, attn.q_proj.bias, attn.k_proj.weight, attn.k_proj.bias, attn.v_proj.weight, attn.v_proj.bias,
                attn.o_proj.weight, attn.o_proj.bias,
                attn.q_norm.weight if attn.q_norm is not None else None, attn.k_norm.weight if attn.k_norm is not None else None,
                layer.post_attention_layernorm.weight,
                _weights_and_biases(mlp.gate_proj, mlp.up_proj, mlp.down_proj) if type(mlp) is SwiGLU else None,
                mlp,
            ))

    @classmethod
    def of(cls, model: nn.Module, native: bool = True) -> DecodePlan | None:
        """A plan for a plain lmforge ``Transformer``; None where ``step`` would not equal ``forward``.

        ``native``: let the C kernel (``native.py``) take the steps it covers (dense fp32 or bf16
        on the CPU): faster, equal to ``forward`` to rounding rather than bitwise.
        """
        if type(model) is not Transformer or model.training:
            return None
        for module in model.modules():
            if type(module) not in _REIMPLEMENTED:
                return None  # e.g. a peft LoRA layer in place of a projection
            if module._forward_hooks or module._forward_pre_hooks or "forward" in module.__dict__:
                return None  # hooks (FSDP, accelerate) or a forward patched onto the instance
            if getattr(module, "_compiled_call_impl", None) is not None:
                return None  # model.compile() / module.compile() in place
            if type(module) is nn.Embedding and module.max_norm is not None:
                return None  # renormalizes rows as it looks them up
        if any(type(p) is not nn.Parameter and type(p) is not torch.Tensor for p in model.parameters()):
            return None  # DTensor (FSDP/TP) shards, quantized tensors
        if nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks:
            return None
        plan = cls(model)
        if native:
            plan.native = NativeDecoder.of(plan)
        return plan

    def step(self, tokens: torch.Tensor, positions: torch.Tensor, kv_cache: KVCache, mask: torch.Tensor | None) -> torch.Tensor:
        """tokens [B] long, positions [B] long (each row's RoPE position) -> logits [B, V].

        ``kv_cache.length`` cached positions precede this token; ``mask`` is a [B, 1, 1, length + 1]
        bool key mask (False: a position this row must not see) or None for "see everything".
        Advances ``kv_cache.length`` by one, as ``forward`` does.
        """
        if self.native is not None and (logits := self.native.step(tokens, positions, kv_cache, mask)) is not None:
            return logits
        B = tokens.shape[0]
        H, K, d, eps = self.n_heads, self.n_kv_heads, self.head_dim, self.eps
        x = F.embedding(tokens[:, None], self.embed)  # [B, 1, D]
        cos, sin_signed = self._rope(positions, x.dtype)
        gqa = K != H
        native_gqa = gqa and _native_gqa(x.device, mask)
        extra = {"enable_gqa": True} if native_gqa else {}
        for index, layer in enumerate(self.layers):
            h = rms_norm(x, layer.input_norm, eps)
            # [B, 1, heads * d] viewed as [B, heads, 1, d]: with one token, forward's
            # view-then-transpose is this same layout.
            q = F.linear(h, layer.q, layer.q_bias).view(B, H, 1, d)
            k = F.linear(h, layer.k, layer.k_bias).view(B, K, 1, d)
            v = F.linear(h, layer.v, layer.v_bias).view(B, K, 1, d)
            if layer.q_norm is not None:
                q, k = rms_norm(q, layer.q_norm, eps), rms_norm(k, layer.k_norm, eps)
            # Rotate-half RoPE, x·cos + [-x2, x1]·sin, as [x2, x1]·[-sin, sin]: the same products
            # (negation is exact), one roll instead of two slices, a negation and a concatenation.
            q = q * cos + q.roll(d // 2, -1) * sin_signed
            k = k * cos + k.roll(d // 2, -1) * sin_signed
            k, v = kv_cache.update(index, k, v)
            if gqa and not native_gqa:
                k, v = k.repeat_interleave(H // K, dim=1), v.repeat_interleave(H // K, dim=1)
            attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **extra)
            x = x + F.linear(attn.reshape(B, 1, H * d), layer.o, layer.o_bias)
            h = rms_norm(x, layer.post_norm, eps)
            if layer.swiglu is not None:
                gate, gate_bias, up, up_bias, down, down_bias = layer.swiglu
                x = x + F.linear(F.silu(F.linear(h, gate, gate_bias)) * F.linear(h, up, up_bias), down, down_bias)
            else:
                x = x + layer.mlp(h)
        kv_cache.length += 1
        return F.linear(rms_norm(x, self.final_norm, eps)[:, 0], self.lm_head, self.lm_head_bias)

    def _rope(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and [-sin, sin] halves, [B, 1, 1, d] (broadcast over heads)."""
        cos, sin = self.rotary.cos_sin(positions[:, None, None], dtype)
        half = self.head_dim // 2
        return cos, torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)


# Exactly the modules whose forward ``step`` reproduces; a subclass or anything else means "don't".
_REIMPLEMENTED = frozenset({Transformer, Backbone, DecoderLayer, Attention, RotaryEmbedding, RMSNorm,
                            nn.Embedding, nn.ModuleList, nn.Linear, SwiGLU, MoEFeedForward})


def _weights_and_biases(*linears: nn.Linear) -> tuple[torch.Tensor | None, ...]:
    return tuple(t for linear in linears for t in (linear.weight, linear.bias))
