"""Pretraining text -> fixed-size memory-mapped token shards (recipe section ``data``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TokenizeConfig:
    text_key: str = "text"
    shard_tokens: int = 1 << 24  # tokens per shard file
    val_fraction: float = 0.0  # documents routed (by a hash of their text) to the held-out split
    workers: int = 0  # 0 = one per CPU core
    skip_bad: bool = False
