"""Feed-forward blocks: the dense SwiGLU and the swappable mixture-of-experts layer.

``MoEFeedForward`` routes each token to its top-k experts (softmax router, optionally
renormalized top-k weights, as Qwen3-MoE/Qwen2-MoE do), adds an optional always-on shared expert
with a sigmoid gate (Qwen2-MoE's layout), and records after each call:

- ``last_aux_loss``: Switch/DeepSeek load-balancing loss ``E · Σ_e f_e · P_e`` where ``f_e`` is
  the fraction of routed (token, slot) pairs sent to expert e and ``P_e`` the mean router
  probability; it equals 1.0 under perfectly uniform routing whatever E and k are.
- ``last_expert_load``: ``f_e`` per expert, for the training metrics.

The transformer sums these over layers; nothing here knows about training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SwiGLU(nn.Module):
    """down(silu(gate(x)) · up(x)); names match HF's ``LlamaMLP``."""

    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(d_model, hidden, bias=False)
        self.up_proj = nn.Linear(d_model, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class MoEFeedForward(nn.Module):
    def __init__(self, config) -> None:
        super().__init__()
        self.num_experts = config.num_experts
        self.top_k = config.num_experts_per_tok
        self.norm_topk_prob = config.norm_topk_prob
        self.gate = nn.Linear(config.d_model, config.num_experts, bias=False)  # the router
        self.experts = nn.ModuleList(SwiGLU(config.d_model, config.moe_ffn_hidden) for _ in range(config.num_experts))
        if config.num_shared_experts:
            self.shared_expert = SwiGLU(config.d_model, config.num_shared_experts * config.moe_ffn_hidden)
            self.shared_expert_gate = nn.Linear(config.d_model, 1, bias=False)
        else:
            self.shared_expert = None
        self.last_aux_loss: torch.Tensor | None = None
        self.last_expert_load: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        n_tokens = flat.shape[0]
        router_logits = self.gate(flat)
        probs = F.softmax(router_logits, dim=-1, dtype=torch.float32)
        weights, experts = torch.topk(probs, self.top_k, dim=-1)
        if self.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        weights = weights.to(flat.dtype)

        # Group the (token, slot) pairs by expert so that each expert runs one dense matmul.
        flat_experts = experts.reshape(-1)
        order = torch.argsort(flat_experts, stable=True)
        counts = torch.bincount(flat_experts, minlength=self.num_experts)
        flat_weights = weights.reshape(-1)
        out = torch.zeros_like(flat)
        start = 0
        for expert_idx, count in enumerate(counts.tolist()):
            if count == 0:
                continue
            pairs = order[start : start + count]
            start += count
            tokens = pairs // self.top_k
            # index_select, not flat[tokens]: its backward is an index_add (a token appears at
            # most once per expert, so it stays deterministic) instead of advanced indexing's
            # sort-based index_put, which is much slower on GPUs.
            y = self.experts[expert_idx](flat.index_select(0, tokens)) * flat_weights.index_select(0, pairs).unsqueeze(1)
            out.index_add_(0, tokens, y.to(out.dtype))

        if self.shared_expert is not None:
            shared = self.shared_expert(flat) * torch.sigmoid(self.shared_expert_gate(flat))
            out = out + shared.to(out.dtype)

        load = counts.float() / max(n_tokens * self.top_k, 1)
        self.last_expert_load = load.detach()
        self.last_aux_loss = self.num_experts * (load * probs.mean(dim=0)).sum()
        return out.view(shape)
