"""Tokenizer: byte-level BPE training (Qwen2 pre-tokenizer, ChatML template) and compression metrics.

    from lmforge.tokenizer import TokenizerConfig, train_tokenizer, load_tokenizer
    out = train_tokenizer(texts, "runs/tok", TokenizerConfig(vocab_size=6400))
    ids = load_tokenizer(out).encode("你好 world").ids

The written directory loads with ``transformers.AutoTokenizer.from_pretrained(out)``.
Command line: ``lmforge tokenizer train|eval`` (``lmforge.tokenizer.cli``).
"""

from lmforge.tokenizer.train import (
    CHAT_TEMPLATE,
    EOS_TOKEN,
    IM_END,
    IM_START,
    TokenizerConfig,
    load_tokenizer,
    special_tokens,
    tokenizer_sha256,
    train_tokenizer,
)

__all__ = [
    "CHAT_TEMPLATE",
    "EOS_TOKEN",
    "IM_END",
    "IM_START",
    "TokenizerConfig",
    "evaluate_compression",
    "load_tokenizer",
    "special_tokens",
    "tokenizer_sha256",
    "train_tokenizer",
]


def __getattr__(name: str):
    # evaluate pulls in the readers; import it only when asked for.
    if name == "evaluate_compression":
        from lmforge.tokenizer.evaluate import evaluate_compression

        return evaluate_compression
    raise AttributeError(name)
