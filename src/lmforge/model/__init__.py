"""Decoder-only dense and MoE transformers whose checkpoints are Hugging Face checkpoints."""

from lmforge.model.config import ModelConfig
from lmforge.model.transformer import KVCache, ModelOutput, Transformer

__all__ = ["KVCache", "ModelConfig", "ModelOutput", "Transformer"]
