"""Inference: one engine (KV cache, sampling, batching, streaming) behind chat, serving, eval and synthesis.

    from lmforge.infer import Engine, SamplingConfig
    engine = Engine.from_checkpoint("runs/demo")
    print(engine.complete("Once upon a time", SamplingConfig(max_new_tokens=32, seed=0)))

Names are resolved lazily: recipes import ``lmforge.infer.sampling`` and the CLI imports
``lmforge.infer.cli`` without paying for torch until an engine is actually used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "Engine": "lmforge.infer.engine",
    "GenerationResult": "lmforge.infer.engine",
    "IncrementalDecoder": "lmforge.infer.engine",
    "RequestState": "lmforge.infer.engine",
    "StepEvent": "lmforge.infer.engine",
    "default_stop_token_ids": "lmforge.infer.engine",
    "resolve_checkpoint": "lmforge.infer.engine",
    "SamplingConfig": "lmforge.infer.sampling",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from lmforge.infer.engine import (
        Engine,
        GenerationResult,
        IncrementalDecoder,
        RequestState,
        StepEvent,
        default_stop_token_ids,
        resolve_checkpoint,
    )
    from lmforge.infer.sampling import SamplingConfig


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lmforge.infer' has no attribute {name!r}")
