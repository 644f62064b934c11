"""Byte-level BPE tokenizer training (recipe section ``tokenizer``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TokenizerConfig:
    vocab_size: int = 6400
    min_frequency: int = 2
    num_reserved_tokens: int = 16  # <|reserved_0|> ... kept free for later special tokens
    max_train_chars: int = 0  # 0 = train on everything; else stop reading after this many characters
