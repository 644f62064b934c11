"""Decoder-only dense and MoE transformers whose checkpoints are Hugging Face checkpoints."""

from lmforge.model.config import ModelConfig

__all__ = ["KVCache", "ModelConfig", "ModelOutput", "Transformer"]


def __getattr__(name: str):
    # The model classes need torch (seconds to import); loading them on first use keeps every
    # command that only reads a recipe (`--help`, `data run`, ...) quick to start.
    if name in ("KVCache", "ModelOutput", "Transformer"):
        from lmforge.model import transformer

        return getattr(transformer, name)
    raise AttributeError(f"module 'lmforge.model' has no attribute {name!r}")
