"""Where model-written data comes from: a local lmforge checkpoint, or any OpenAI-compatible
endpoint (vLLM, llama.cpp's server, lmforge's own server, a hosted API).

Both answer a batch of chat conversations with one ``Reply`` each (text and finish reason),
in order. Each conversation carries its own sampling seed, so a reply does not depend on which
batch the conversation happened to be in — what makes resumed synthesis runs equal to
uninterrupted ones.

* ``EngineBackend``: lmforge's inference ``Engine`` (KV cache, rows batched together, greedy or
  seeded sampling), prompts rendered through the checkpoint's chat template.
* ``OpenAIBackend``: the official ``openai`` client's ``chat.completions.create`` against
  ``base_url``, with the API key read from an environment variable (``"EMPTY"`` when unset, as
  local servers expect) and ``concurrency`` requests in flight at once. With no model name,
  the endpoint's first listed model (``/v1/models``) is used.

::

    backend = open_backend("runs/teacher")                                  # a checkpoint or run dir
    backend = open_backend("http://127.0.0.1:8000/v1", model="qwen2.5-7b-instruct")
    replies = backend.chat([[{"role": "user", "content": "2+2?"}]], max_new_tokens=64, temperature=0.0, seeds=[0])
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Protocol, Sequence

from lmforge.config import ConfigError

logger = logging.getLogger(__name__)

Messages = list[dict]


@dataclass
class Reply:
    text: str
    finish_reason: str  # "stop"; "length" when cut off by max_new_tokens; or what an endpoint says


class ChatBackend(Protocol):
    description: str

    def chat(self, conversations: Sequence[Messages], *, max_new_tokens: int, temperature: float, seeds: Sequence[int]) -> list[Reply]: ...


def is_endpoint(teacher: str) -> bool:
    return str(teacher).startswith(("http://", "https://"))


class EngineBackend:
    """A local checkpoint through ``lmforge.infer.Engine``; one ``chat`` call is one batch."""

    def __init__(self, engine) -> None:
        if not getattr(engine.tokenizer, "chat_template", None):
            raise ConfigError(f"teacher {engine.checkpoint_dir}: its tokenizer has no chat template to render the prompts with")
        self.engine = engine
        self.description = f"checkpoint {engine.checkpoint_dir}" if engine.checkpoint_dir else "engine"

    @classmethod
    def from_checkpoint(cls, path: str, device: str = "auto", dtype: str | None = None) -> EngineBackend:
        from lmforge.infer.engine import Engine

        try:
            return cls(Engine.from_checkpoint(path, device=device, dtype=None if dtype in (None, "auto") else dtype))
        except (FileNotFoundError, OSError) as exc:
            raise ConfigError(f"teacher {path!r}: {exc}") from None

    def chat(self, conversations: Sequence[Messages], *, max_new_tokens: int, temperature: float, seeds: Sequence[int]) -> list[Reply]:
        from lmforge.infer.sampling import SamplingConfig

        engine = self.engine
        budget = max_new_tokens
        if budget >= engine.max_context:  # no room for any prompt: keep half the context for it
            budget = engine.max_context // 2
            logger.warning("max_new_tokens %d >= the teacher's %d-token context; using %d", max_new_tokens, engine.max_context, budget)
        base = SamplingConfig(max_new_tokens=budget, temperature=temperature)
        configs = [replace(base, seed=int(seed)) for seed in seeds]
        results = engine.generate([engine.encode_chat(list(c)) for c in conversations], configs)
        return [Reply(r.text or "", r.finish_reason) for r in results]


class OpenAIBackend:
    """An OpenAI-compatible ``/v1`` endpoint through the official client."""

    def __init__(self, base_url: str, model: str = "", api_key_env: str = "OPENAI_API_KEY", concurrency: int = 8, timeout: float = 600.0, max_retries: int = 3) -> None:
        from openai import OpenAI

        if concurrency < 1:
            raise ConfigError(f"concurrency must be >= 1, got {concurrency}")
        self.client = OpenAI(base_url=base_url, api_key=os.environ.get(api_key_env) or "EMPTY", timeout=timeout, max_retries=max_retries)
        self.base_url, self.concurrency = base_url, concurrency
        self.model = model or self._first_model()
        self.description = f"{base_url} model {self.model}"

    def _first_model(self) -> str:
        import openai

        try:
            models = [m.id for m in self.client.models.list()]
        except openai.OpenAIError as exc:
            raise ConfigError(f"{self.base_url}: cannot list models ({exc}); name one with --model") from None
        if not models:
            raise ConfigError(f"{self.base_url}: the endpoint lists no models; name one with --model")
        return models[0]

    def _one(self, messages: Messages, max_new_tokens: int, temperature: float, seed: int) -> Reply:
        response = self.client.chat.completions.create(
            model=self.model, messages=list(messages), max_tokens=max_new_tokens, temperature=temperature, seed=int(seed)
        )
        if not response.choices:
            return Reply("", "no_choices")
        choice = response.choices[0]
        return Reply(choice.message.content or "", choice.finish_reason or "stop")

    def chat(self, conversations: Sequence[Messages], *, max_new_tokens: int, temperature: float, seeds: Sequence[int]) -> list[Reply]:
        if not conversations:
            return []
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(conversations))) as pool:
            return list(pool.map(self._one, conversations, [max_new_tokens] * len(seeds), [temperature] * len(seeds), seeds))


def open_backend(teacher: str, *, model: str = "", api_key_env: str = "OPENAI_API_KEY", concurrency: int = 8, device: str = "auto", dtype: str | None = None) -> ChatBackend:
    """An endpoint for an ``http(s)://`` teacher, else a local checkpoint (or run) directory."""
    if not teacher:
        raise ConfigError("no teacher given: a checkpoint directory or an http(s)://host/v1 endpoint")
    if is_endpoint(teacher):
        return OpenAIBackend(teacher, model=model, api_key_env=api_key_env, concurrency=concurrency)
    return EngineBackend.from_checkpoint(teacher, device=device, dtype=dtype)
