"""The OpenAI wire format: request bodies (validated strictly), responses, chunks and errors.

Requests are pydantic models in strict mode, so a mistyped field (``"max_tokens": "10"``,
``"temperature": "hot"``) is a 400 naming the field, as OpenAI's API answers, instead of being
coerced. Fields lmforge does not implement are refused when they would change the result
(``logprobs: true``, a non-zero ``presence_penalty``, ``suffix``) and ignored when they would not
(``user``, unknown extras that third-party UIs send). Beyond OpenAI's fields, the vLLM-style
extensions ``top_k``, ``repetition_penalty`` and ``ignore_eos`` are accepted.

Errors use OpenAI's body, ``{"error": {"message", "type", "param", "code"}}``, raised as
``APIError`` anywhere in a handler.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator


class APIError(Exception):
    """An error answered with an OpenAI-style body and a 4xx status."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _null_means_default(cls, data):
        # OpenAI's API treats an explicit null as "not given"; clients that serialize every field
        # (proxies, some UIs) send {"n": null, "stream": null, ...}.
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None or k not in cls.model_fields or cls.model_fields[k].default is None}
        return data


class ContentPart(_Strict):
    """Any content part; only ``text`` parts can be served by a text-only model."""

    model_config = ConfigDict(strict=True, extra="allow")
    type: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[ContentPart], None] = None
    name: Optional[str] = None

    def text(self, index: int) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        pieces = []
        for j, part in enumerate(self.content):
            if part.type != "text" or not isinstance(getattr(part, "text", None), str):
                raise APIError(400, f"messages[{index}].content[{j}]: content of type {part.type!r} is not supported by a text model",
                               param=f"messages.{index}.content.{j}.type", code="unsupported_content")
            pieces.append(part.text)
        return "".join(pieces)


class StreamOptions(_Strict):
    include_usage: bool = False


class _Sampling(_Strict):
    """Fields both endpoints share."""

    model: str
    max_tokens: Optional[int] = Field(None, ge=1)
    temperature: Optional[float] = Field(None, ge=0, le=2)
    top_p: Optional[float] = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1, le=16)
    stop: Union[str, list[str], None] = None
    seed: Optional[int] = Field(None, ge=-(2**63), lt=2**63)
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    user: Optional[str] = None
    # vLLM-style extensions.
    top_k: int = Field(0, ge=-1, le=2**31)  # 0 or -1: off
    repetition_penalty: float = Field(1.0, gt=0, le=10)
    ignore_eos: bool = False

    @model_validator(mode="after")
    def _check(self):
        stops = self.stop_list()
        if len(stops) > 16 or any(not s for s in stops):
            raise ValueError("stop: at most 16 non-empty strings")
        return self

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    logit_bias: Optional[dict[str, Any]] = None
    response_format: Optional[dict[str, Any]] = None
    tools: Optional[list[Any]] = None
    tool_choice: Union[str, dict[str, Any], None] = None

    def refuse_unsupported(self) -> None:
        """Settings lmforge would otherwise silently ignore, changing what the caller gets."""
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name) != 0:
                raise APIError(400, f"{name} is not supported; use repetition_penalty (> 1 discourages repeats)", param=name,
                               code="unsupported_parameter")
        if self.logit_bias:
            raise APIError(400, "logit_bias is not supported", param="logit_bias", code="unsupported_parameter")
        if self.response_format and self.response_format.get("type", "text") != "text":
            raise APIError(400, f"response_format {self.response_format.get('type')!r} is not supported (only text)",
                           param="response_format", code="unsupported_parameter")
        if self.tools or self.tool_choice not in (None, "none", "auto"):
            raise APIError(400, "tools (function calling) are not supported", param="tools", code="unsupported_parameter")


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    logprobs: Optional[bool] = None
    top_logprobs: Optional[int] = None

    def refuse_unsupported(self) -> None:
        super().refuse_unsupported()
        if self.logprobs or self.top_logprobs:
            raise APIError(400, "logprobs are not supported", param="logprobs", code="unsupported_parameter")

    @property
    def reply_budget(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(_Sampling):
    prompt: Union[str, list[str], list[int], list[list[int]]]
    echo: bool = False
    suffix: Optional[str] = None
    logprobs: Optional[int] = None
    best_of: Optional[int] = None

    def refuse_unsupported(self) -> None:
        super().refuse_unsupported()
        if self.suffix:
            raise APIError(400, "suffix (insertion) is not supported", param="suffix", code="unsupported_parameter")
        if self.logprobs is not None:
            raise APIError(400, "logprobs are not supported", param="logprobs", code="unsupported_parameter")
        if self.best_of not in (None, 1):
            raise APIError(400, "best_of > 1 is not supported; use n", param="best_of", code="unsupported_parameter")

    def prompts(self) -> list[str | list[int]]:
        """One entry per prompt: text, or token ids."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if not p:
            raise APIError(400, "prompt is empty", param="prompt")
        if all(isinstance(x, int) for x in p):
            return [list(p)]
        return list(p)


# ---- responses ------------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}


def chat_completion(id: str, model: str, choices: list[dict], usage_: dict) -> dict[str, Any]:
    return {"id": id, "object": "chat.completion", "created": int(time.time()), "model": model, "choices": choices,
            "usage": usage_, "system_fingerprint": None}


def chat_chunk(id: str, model: str, created: int, choices: list[dict], usage_: dict | None = None) -> dict[str, Any]:
    chunk = {"id": id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices,
             "system_fingerprint": None}
    if usage_ is not None:
        chunk["usage"] = usage_
    return chunk


def text_completion(id: str, model: str, created: int, choices: list[dict], usage_: dict | None = None) -> dict[str, Any]:
    body = {"id": id, "object": "text_completion", "created": created, "model": model, "choices": choices, "system_fingerprint": None}
    if usage_ is not None:
        body["usage"] = usage_
    return body
