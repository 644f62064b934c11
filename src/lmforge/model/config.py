"""Model shape: one dataclass for dense and MoE decoders, and which HF architecture it maps to.

The architecture is derived from the shape, never chosen separately, so a checkpoint always
names the one `transformers` class that computes exactly what lmforge computes:

==========================  ==================  ===================
feed-forward                attention           HF architecture
==========================  ==================  ===================
dense                       QK-norm             Qwen3ForCausalLM
dense                       plain               LlamaForCausalLM
dense                       q/k/v bias          Qwen2ForCausalLM
MoE, no shared expert       QK-norm             Qwen3MoeForCausalLM
MoE, shared expert          plain or q/k/v bias Qwen2MoeForCausalLM
==========================  ==================  ===================
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ModelConfig:
    """Decoder-only transformer shape. Field names are lmforge's; `hf.py` maps them to HF's."""

    vocab_size: int = 6400
    d_model: int = 512
    n_layers: int = 8
    n_heads: int = 8
    n_kv_heads: int = 2
    head_dim: int | None = None  # None: d_model // n_heads
    ffn_hidden: int | None = None  # None: 8/3·d_model rounded up to a multiple of 64 (MiniMind's rule)
    max_seq_len: int = 2048
    rope_theta: float = 1_000_000.0
    rope_scaling_factor: float = 1.0  # >1: linear position interpolation for longer contexts
    norm_eps: float = 1e-6
    qk_norm: bool = False
    attention_bias: bool = False  # bias on q/k/v projections (Qwen2 style)
    tie_embeddings: bool = True
    init_std: float = 0.02
    # MoE feed-forward: num_experts == 0 means dense.
    num_experts: int = 0
    num_experts_per_tok: int = 2
    moe_ffn_hidden: int | None = None  # None: same as ffn_hidden
    num_shared_experts: int = 0  # shared experts are fused into one of width n·moe_ffn_hidden
    norm_topk_prob: bool = True
    aux_loss_coef: float = 0.01
    # token ids written into config.json so HF tools know them; filled from the tokenizer.
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "max_seq_len"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive; got {getattr(self, name)}")
        if self.rope_theta <= 0 or self.rope_scaling_factor <= 0 or self.norm_eps <= 0:
            raise ValueError("rope_theta, rope_scaling_factor and norm_eps must be positive")
        if self.num_experts < 0 or self.num_shared_experts < 0:
            raise ValueError("num_experts and num_shared_experts must be >= 0")
        if self.head_dim is None:
            if self.d_model % self.n_heads:
                raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
            self.head_dim = self.d_model // self.n_heads
        if self.ffn_hidden is None:
            self.ffn_hidden = 64 * ((int(self.d_model * 8 / 3) + 63) // 64)
        if self.moe_ffn_hidden is None:
            self.moe_ffn_hidden = self.ffn_hidden
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} must be a multiple of n_kv_heads={self.n_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for RoPE")
        if self.num_experts:
            if not 1 <= self.num_experts_per_tok <= self.num_experts:
                raise ValueError(
                    f"num_experts_per_tok={self.num_experts_per_tok} must be in 1..num_experts={self.num_experts}"
                )
            if self.num_shared_experts and self.qk_norm:
                raise ValueError(
                    "a shared expert maps to Qwen2MoeForCausalLM, which has no QK-norm: "
                    "set qk_norm: false or num_shared_experts: 0"
                )
            if not self.num_shared_experts and not self.qk_norm:
                raise ValueError(
                    "MoE without a shared expert maps to Qwen3MoeForCausalLM, which uses QK-norm: "
                    "set qk_norm: true or num_shared_experts: 1"
                )
            if self.num_shared_experts and self.head_dim * self.n_heads != self.d_model:
                raise ValueError("Qwen2MoeForCausalLM needs head_dim * n_heads == d_model")
        elif self.qk_norm and self.attention_bias:
            raise ValueError("QK-norm with q/k/v bias has no matching HF architecture; drop one")

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def hf_architecture(self) -> str:
        if self.is_moe:
            return "Qwen2MoeForCausalLM" if self.num_shared_experts else "Qwen3MoeForCausalLM"
        if self.qk_norm:
            return "Qwen3ForCausalLM"
        return "Qwen2ForCausalLM" if self.attention_bias else "LlamaForCausalLM"
