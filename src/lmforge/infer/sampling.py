"""Sampling settings and the logits processors that apply them (temperature, top-k, top-p, repetition penalty)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SamplingConfig:
    max_new_tokens: int = 64
    temperature: float = 0.8  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    repetition_penalty: float = 1.0  # 1 = off; >1 discourages tokens already in the context
    stop: list[str] = field(default_factory=list)  # stop strings, besides the eos token
    seed: int | None = None
