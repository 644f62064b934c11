"""The inference engine: token ids in, tokens out, behind chat, the server, eval and synthesis.

One ``Engine(model, tokenizer)`` does all decoding for lmforge:

- **prefill once, then one token per step** through the model's preallocated KV cache; the
  prefill asks the model for the last position's logits only, and each step runs through
  ``lmforge.model.decode.DecodePlan`` (the forward for one token, bitwise the same, without the
  per-module Python that costs as much as the matrix products in a small model; a dense fp32
  model on the CPU goes further, to the native C step of ``model/native.py``, equal to fp32
  rounding; ``LMFORGE_NATIVE_DECODE=0`` keeps the bitwise path);
- **batches of prompts of different lengths**: prompts are left-padded, each row keeps its own
  RoPE positions (explicit ``position_ids``) and a key mask hides the padding, so every row
  computes what it would compute alone; rows that finish leave the batch (the KV cache, masks
  and sampling state are compacted) and stop costing compute;
- **sampling** (``sampling.py``): greedy, temperature, top-k, top-p, repetition penalty, each
  request seeded with its own ``torch.Generator``;
- **stopping**: eos ids (``<|endoftext|>``, ``<|im_end|>`` and the checkpoint's own), per-request
  stop token ids, stop strings (matched on decoded text, across token boundaries; the returned
  text ends before the stop string) and ``max_new_tokens``;
- **streaming**: ``stream`` yields token ids as they are produced; ``stream_text`` /
  ``chat_stream`` yield only complete text (``IncrementalDecoder``: byte-level BPE can split one
  Chinese character over several tokens) and hold back text that may be the start of a stop
  string;
- **context overflow**: a prompt longer than ``max_context - max_new_tokens`` is truncated from
  the left, keeping its tail (``overflow="truncate"``, the default; the result records how many
  tokens were dropped and a warning is logged) or rejected (``overflow="error"``).
  ``max_new_tokens >= max_context`` is always an error.

``steps`` is the primitive the others are built from: it yields, per decoding step, one
``StepEvent`` per active request (token, text delta, finish reason), so a server can stream
several requests at once. Everything runs under ``torch.inference_mode()``, on CPU or CUDA, in the
model's dtype (bf16 on GPUs by default).

Example (CPU, any checkpoint directory or training run directory)::

    from lmforge.infer import Engine, SamplingConfig
    engine = Engine.from_checkpoint("runs/demo")                 # latest checkpoints/step_*/
    engine.complete("The capital of France is", SamplingConfig(temperature=0))
    engine.chat([{"role": "user", "content": "你好"}], SamplingConfig(seed=0))
    results = engine.generate([[1, 2, 3], [4, 5]], SamplingConfig(max_new_tokens=8))
    for token_id in engine.stream([1, 2, 3]): ...
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence, overload

import torch

from lmforge.infer.sampling import RowParams, SamplingConfig, make_generator, sample_next
from lmforge.model.decode import DecodePlan
from lmforge.model.transformer import KVCache
from lmforge.tokenizer.train import EOS_TOKEN, IM_END
from lmforge.train.checkpoint import resolve_checkpoint  # noqa: F401  (re-exported)
from lmforge.train.distributed import cpu_has_fast_bf16, pick_device

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# Checkpoints, devices and dtypes

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


def inference_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """Weight dtype for decoding. None/"auto": bf16 where the hardware multiplies it natively
    (bf16 GPUs, AVX512-BF16/AMX CPUs), else fp32 — unlike training's autocast choice, weights are
    cast outright, so there is no fp16 fallback whose range could overflow activations."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False):
            return torch.bfloat16
        if device.type == "cpu" and cpu_has_fast_bf16():
            return torch.bfloat16
        return torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(_DTYPES)} or auto")
    return _DTYPES[dtype]


def default_stop_token_ids(tokenizer: Any, checkpoint_dir: Path | None = None, model_eos: int | None = None) -> list[int]:
    """eos ids a generation stops on: the tokenizer's eos, ``<|im_end|>`` (ChatML turn end),
    ``<|endoftext|>``, and whatever the checkpoint's ``generation_config.json`` lists."""
    ids: list[int] = []

    def add(value):
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(v, int) and v >= 0 and v not in ids:
                ids.append(v)

    if tokenizer is not None:
        add(tokenizer.eos_token_id)
        vocab = tokenizer.get_vocab()
        for token in (IM_END, EOS_TOKEN):
            add(vocab.get(token))
    if checkpoint_dir is not None and (checkpoint_dir / "generation_config.json").is_file():
        add(json.loads((checkpoint_dir / "generation_config.json").read_text()).get("eos_token_id"))
    add(model_eos)
    return ids


# --------------------------------------------------------------------------------------------
# Text: incremental UTF-8-safe decoding and per-request bookkeeping


class IncrementalDecoder:
    """Turns a stream of token ids into complete text pieces.

    Byte-level BPE may split one character (a Chinese character is 3 UTF-8 bytes) over several
    tokens; decoding them one by one would print U+FFFD. This keeps two offsets into the token
    list (the vLLM / HF TextStreamer scheme): text is emitted only when decoding the pending
    tokens no longer ends in an incomplete character. Decoding a short window including earlier
    tokens also keeps SentencePiece-style leading-space handling right. A pending run of more
    than ``max_pending`` tokens is emitted anyway, so truly invalid bytes cannot stall output.

        dec = IncrementalDecoder(tokenizer)
        text = "".join(dec.push(t) for t in ids) + dec.flush()
    """

    def __init__(self, tokenizer: Any, skip_special_tokens: bool = True, context_ids: Sequence[int] = (), max_pending: int = 4) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.max_pending = max_pending
        self._backend = _plain_backend(tokenizer)
        # A few prompt tokens as context: some tokenizers decode a word differently at the start.
        self.ids: list[int] = list(context_ids)[-4:]
        self.prefix_offset = 0
        self.read_offset = len(self.ids)

    def _decode(self, ids: list[int]) -> str:
        if self._backend is not None:
            return self._backend.decode(ids, skip_special_tokens=self.skip_special_tokens)
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def push(self, token_id: int) -> str:
        """Add one token; return the newly completed text ('' while a character is incomplete)."""
        self.ids.append(token_id)
        prefix_text = self._decode(self.ids[self.prefix_offset : self.read_offset])
        new_text = self._decode(self.ids[self.prefix_offset :])
        pending = len(self.ids) - self.read_offset
        if len(new_text) > len(prefix_text) and (not new_text.endswith("\ufffd") or pending >= self.max_pending):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            return new_text[len(prefix_text) :]
        return ""

    def flush(self) -> str:
        """Whatever is still pending (an incomplete character decodes to U+FFFD)."""
        prefix_text = self._decode(self.ids[self.prefix_offset : self.read_offset])
        new_text = self._decode(self.ids[self.prefix_offset :])
        self.prefix_offset = self.read_offset = len(self.ids)
        return new_text[len(prefix_text) :]


def _plain_backend(tokenizer: Any) -> Any:
    """The Rust ``tokenizers.Tokenizer`` under a transformers fast tokenizer whose decoding is
    exactly the backend's (the base class's own ``decode``/``_decode``, no space clean-up), else
    None. Calling it directly skips transformers' wrapper, which costs more than the decoding
    itself — and streaming decodes twice per generated token."""
    try:
        from transformers.tokenization_utils_base import PreTrainedTokenizerBase
        from transformers.tokenization_utils_tokenizers import TokenizersBackend
    except ImportError:  # another transformers layout: keep the public decode
        return None
    cls = type(tokenizer)
    if (not isinstance(tokenizer, TokenizersBackend) or cls._decode is not TokenizersBackend._decode
            or cls.decode is not PreTrainedTokenizerBase.decode or tokenizer.clean_up_tokenization_spaces):
        return None
    return tokenizer.backend_tokenizer


@dataclass
class GenerationResult:
    prompt_ids: list[int]  # the prompt as run (after any left truncation)
    token_ids: list[int]  # generated tokens, without the stop token (stop-string tokens included)
    text: str | None  # decoded continuation, cut before a matched stop string; None without a tokenizer
    finish_reason: Literal["stop", "length"]
    stop_reason: int | str | None = None  # the stop token id or stop string that ended it
    prompt_tokens_dropped: int = 0  # left truncation to fit the context


@dataclass
class StepEvent:
    """What one decoding step did for one request (``index`` = its position in the prompt list)."""

    index: int
    token_id: int | None  # the new token; None when the step sampled a stop token
    text: str  # newly completed text ('' while a character is incomplete or a stop string may start)
    finish_reason: Literal["stop", "length"] | None = None  # set on the request's last event


@dataclass
class RequestState:
    """One request's progress: generated ids, decoded text, stop detection.

    ``push`` is the whole per-token policy, kept apart from the batching loop so that a server
    scheduler can drive requests through its own loop with identical semantics.
    """

    index: int
    prompt_ids: list[int]
    sampling: SamplingConfig
    stop_token_ids: frozenset[int]
    decoder: IncrementalDecoder | None
    prompt_tokens_dropped: int = 0
    token_ids: list[int] = field(default_factory=list)
    text: str = ""  # decoded so far (after a stop string matched: cut before it)
    emitted: int = 0  # len(text) already handed out through events
    finish_reason: Literal["stop", "length"] | None = None
    stop_reason: int | str | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def push(self, token_id: int) -> StepEvent:
        if token_id in self.stop_token_ids:
            self.finish_reason, self.stop_reason = "stop", token_id
            self._add_text(self.decoder.flush() if self.decoder else "")
            return StepEvent(self.index, None, self._take_text(final=True), self.finish_reason)
        self.token_ids.append(token_id)
        if self.decoder is not None:
            self._add_text(self.decoder.push(token_id))
        if not self.finished and len(self.token_ids) >= self.sampling.max_new_tokens:
            self.finish_reason = "length"
            if self.decoder is not None:
                self._add_text(self.decoder.flush())
        return StepEvent(self.index, token_id, self._take_text(final=self.finished), self.finish_reason)

    def _add_text(self, piece: str) -> None:
        if not piece or isinstance(self.stop_reason, str):  # text after a stop string is dropped
            return
        start = len(self.text)
        self.text += piece
        # A stop string may straddle earlier text: search from where it could have begun.
        longest = max((len(s) for s in self.sampling.stop), default=0)
        hits = [(i, s) for s in self.sampling.stop if (i := self.text.find(s, max(0, start - longest + 1))) >= 0]
        if hits:
            cut, stop = min(hits)
            self.text = self.text[:cut]
            self.finish_reason, self.stop_reason = "stop", stop

    def _take_text(self, final: bool) -> str:
        end = len(self.text)
        if not final and self.sampling.stop:
            # Hold back a tail that could be the beginning of a stop string; it is released
            # when the next token rules that out, or dropped if the stop string completes.
            end -= max((k for s in self.sampling.stop for k in range(1, len(s)) if self.text.endswith(s[:k])), default=0)
        end = max(end, self.emitted)
        piece, self.emitted = self.text[self.emitted : end], end
        return piece

    def result(self) -> GenerationResult:
        return GenerationResult(
            prompt_ids=self.prompt_ids,
            token_ids=self.token_ids,
            text=self.text if self.decoder is not None else None,
            finish_reason=self.finish_reason or "length",
            stop_reason=self.stop_reason,
            prompt_tokens_dropped=self.prompt_tokens_dropped,
        )


# --------------------------------------------------------------------------------------------
# The engine


class Engine:
    """Generation for one model (+ optional tokenizer); see the module docstring.

    ``eos_token_ids``: ids that end every request unless ``sampling.ignore_eos`` (default: from
    the tokenizer and the model config). ``max_context``: prompt + new tokens limit (default: the
    model's ``max_seq_len``). ``overflow``: ``"truncate"`` keeps the prompt's tail, ``"error"``
    raises ``ValueError``.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any = None,
        eos_token_ids: Sequence[int] | None = None,
        max_context: int | None = None,
        overflow: Literal["truncate", "error"] = "truncate",
    ) -> None:
        if overflow not in ("truncate", "error"):
            raise ValueError(f"overflow must be 'truncate' or 'error'; got {overflow!r}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        model_eos = getattr(model.config, "eos_token_id", None)
        self.eos_token_ids = list(eos_token_ids) if eos_token_ids is not None else default_stop_token_ids(tokenizer, None, model_eos)
        self.max_context = max_context or model.config.max_seq_len
        self.overflow = overflow
        self.pad_token_id = 0  # any valid id: padding is masked out and never attended to
        self.checkpoint_dir: Path | None = None  # set by from_checkpoint

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype | None = None,
        **kwargs: Any,
    ) -> Engine:
        """Load model + tokenizer from a checkpoint dir or a run dir (its latest step)."""
        from transformers import AutoTokenizer

        from lmforge.model.hf import load_pretrained

        ckpt = resolve_checkpoint(path)
        dev = pick_device(str(device))
        model = load_pretrained(ckpt, device=dev, dtype=inference_dtype(dtype, dev))
        if not any((ckpt / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
            raise FileNotFoundError(f"{ckpt}: no tokenizer files (tokenizer.json / tokenizer_config.json) next to the weights")
        tokenizer = AutoTokenizer.from_pretrained(ckpt)
        kwargs.setdefault("eos_token_ids", default_stop_token_ids(tokenizer, ckpt, model.config.eos_token_id))
        engine = cls(model, tokenizer, **kwargs)
        engine.checkpoint_dir = ckpt
        return engine

    @property
    def device(self) -> torch.device:
        return self.model.model.embed_tokens.weight.device

    # ---- token level -------------------------------------------------------------------

    def generate(
        self, prompts: Sequence[Sequence[int]], sampling: SamplingConfig | Sequence[SamplingConfig] | None = None
    ) -> list[GenerationResult]:
        """Run prompts as one batch; results in prompt order. One config for all or one per prompt.

        A shared seeded config gives every row the same seed: each row's result equals what that
        prompt would give alone. For several different samples of one prompt, vary the seed.
        """
        requests = self._requests(prompts, sampling)
        for _ in self._run(requests):
            pass
        return [r.result() for r in requests]

    def steps(
        self, prompts: Sequence[Sequence[int]], sampling: SamplingConfig | Sequence[SamplingConfig] | None = None
    ) -> Iterator[list[StepEvent]]:
        """Per decoding step, one event per still-active request. Closing the iterator stops work."""
        return self._run(self._requests(prompts, sampling))

    def stream(self, prompt_ids: Sequence[int], sampling: SamplingConfig | None = None) -> Iterator[int]:
        """Yield each generated token id as it is produced (the stop token is not yielded)."""
        for events in self.steps([prompt_ids], sampling):
            if events[0].token_id is not None:
                yield events[0].token_id

    def stream_text(self, prompt_ids: Sequence[int], sampling: SamplingConfig | None = None) -> Iterator[str]:
        """Yield complete text pieces as they are produced (never a broken UTF-8 character)."""
        self._need_tokenizer("stream_text")
        for events in self.steps([prompt_ids], sampling):
            if events[0].text:
                yield events[0].text

    # ---- text level --------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Tokenize a completion prompt; an empty prompt starts from a document boundary (eos)."""
        self._need_tokenizer("encode")
        ids = self.tokenizer.encode(text)
        if not ids and self.eos_token_ids:
            ids = [self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else self.eos_token_ids[0]]
        return ids

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        """Render messages through the tokenizer's chat template, ready for the assistant's reply."""
        self._need_tokenizer("encode_chat")
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError("this checkpoint's tokenizer has no chat template; use plain completion (lmforge generate)")
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        # The template already wrote every special token; don't let the tokenizer add a BOS.
        return self.tokenizer.encode(text, add_special_tokens=False)

    @overload
    def complete(self, text: str, sampling: SamplingConfig | None = None) -> str: ...
    @overload
    def complete(self, text: list[str], sampling: SamplingConfig | None = None) -> list[str]: ...

    def complete(self, text, sampling=None):
        """Continue a text (-> str) or a list of texts as one batch (-> list[str])."""
        if isinstance(text, str):
            return self.generate([self.encode(text)], sampling)[0].text
        return [r.text for r in self.complete_batch(text, sampling)]

    def complete_batch(self, texts: Sequence[str], sampling: SamplingConfig | Sequence[SamplingConfig] | None = None) -> list[GenerationResult]:
        return self.generate([self.encode(t) for t in texts], sampling)

    def chat(self, messages: list[dict[str, str]], sampling: SamplingConfig | None = None) -> str:
        return self.generate([self.encode_chat(messages)], sampling)[0].text

    def chat_stream(self, messages: list[dict[str, str]], sampling: SamplingConfig | None = None) -> Iterator[str]:
        return self.stream_text(self.encode_chat(messages), sampling)

    # ---- internals ---------------------------------------------------------------------

    def _need_tokenizer(self, what: str) -> None:
        if self.tokenizer is None:
            raise ValueError(f"Engine.{what} needs a tokenizer; this engine was built with token ids only")

    def _requests(self, prompts, sampling) -> list[RequestState]:
        if not prompts:
            raise ValueError("no prompts given")
        if sampling is None or isinstance(sampling, SamplingConfig):
            configs = [sampling or SamplingConfig()] * len(prompts)
        else:
            configs = list(sampling)
            if len(configs) != len(prompts):
                raise ValueError(f"{len(configs)} sampling configs for {len(prompts)} prompts")
        return [self.new_request(index, prompt, cfg) for index, (prompt, cfg) in enumerate(zip(prompts, configs))]

    def new_request(self, index: int, prompt: Sequence[int], cfg: SamplingConfig) -> RequestState:
        """One request's state, its prompt checked against the context (truncated or refused
        as ``overflow`` says). The server's scheduler builds its requests here too, so stops,
        budgets and overflow behave the same everywhere."""
        prompt = [int(t) for t in prompt]
        if not prompt:
            raise ValueError(f"prompt {index} is empty; give at least one token (e.g. the eos/bos id)")
        if cfg.stop and self.tokenizer is None:
            raise ValueError("stop strings need a tokenizer to decode text")
        budget = self.max_context - cfg.max_new_tokens
        if budget < 1:
            raise ValueError(f"max_new_tokens={cfg.max_new_tokens} leaves no room for a prompt in a {self.max_context}-token context")
        dropped = max(0, len(prompt) - budget)
        if dropped:
            if self.overflow == "error":
                raise ValueError(
                    f"prompt {index} has {len(prompt)} tokens; with max_new_tokens={cfg.max_new_tokens} at most "
                    f"{budget} fit the {self.max_context}-token context"
                )
            logger.warning("prompt %d: dropped its first %d of %d tokens to fit the context", index, dropped, len(prompt))
            prompt = prompt[dropped:]
        stops = frozenset(cfg.stop_token_ids) | (frozenset() if cfg.ignore_eos else frozenset(self.eos_token_ids))
        decoder = IncrementalDecoder(self.tokenizer, context_ids=prompt) if self.tokenizer is not None else None
        return RequestState(index, prompt, cfg, stops, decoder, dropped)

    def _forward(self, input_ids: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """The model's last-position logits [B, V]."""
        return self.model_logits(input_ids, **kwargs)[:, -1]

    def model_logits(self, input_ids: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """One forward pass of the model for decoding (``kwargs`` as ``Transformer.forward``).

        On CUDA, cuDNN's attention backend is excluded: it builds an execution plan for every
        new key length, which decoding produces at every step (~70 ms each on an H100, 8x the
        step itself); the memory-efficient kernel handles the key mask without that cost.
        """
        with self._sdpa_backends() if input_ids.device.type == "cuda" else contextlib.nullcontext():
            return self.model(input_ids, **kwargs).logits

    def decode_logits(
        self, plan: DecodePlan | None, tokens: torch.Tensor, positions: torch.Tensor, kv_cache: KVCache, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Logits [B, V] for one new token per row: ``tokens`` and ``positions`` (RoPE) are [B],
        ``mask`` a [B, 1, 1, S] bool key mask over the cache including this token, or None.

        Through ``plan`` (``DecodePlan.of(model)``, built once per generation loop: the model's
        forward without its per-module Python, or the native CPU step) where there is one, else
        through the forward itself.
        """
        with self._sdpa_backends() if tokens.device.type == "cuda" else contextlib.nullcontext():
            if plan is not None:
                return plan.step(tokens, positions, kv_cache, mask)
            return self.model(tokens[:, None], position_ids=positions[:, None], kv_cache=kv_cache, attention_mask=mask).logits[:, -1]

    @staticmethod
    def _sdpa_backends():
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])

    @torch.inference_mode()
    def _run(self, requests: list[RequestState]) -> Iterator[list[StepEvent]]:
        model, device = self.model, self.device
        batch = len(requests)
        lengths = [len(r.prompt_ids) for r in requests]
        padded = max(lengths)
        # Cache slots: padded prompt + the largest budget. With mixed budgets this may exceed
        # max_context, harmlessly: each row's own positions stay within its prompt + budget.
        total = padded + max(r.sampling.max_new_tokens for r in requests)

        # Left-pad so every row's last prompt token sits in the same column; `key_mask` marks
        # real tokens over the whole cache (generated tokens are appended as True columns).
        ids = torch.full((batch, padded), self.pad_token_id, dtype=torch.long, device=device)
        key_mask = torch.zeros((batch, total), dtype=torch.bool, device=device)
        for row, r in enumerate(requests):
            ids[row, padded - lengths[row] :] = torch.tensor(r.prompt_ids, device=device)
            key_mask[row, padded - lengths[row] : padded] = True
        # Each row's positions start at 0 on its first real token, exactly as if run alone.
        positions = (key_mask[:, :padded].long().cumsum(-1) - 1).clamp(min=0)
        cache = model.new_kv_cache(batch, total, dtype=model.model.embed_tokens.weight.dtype)
        # A plain causal mask (SDPA's fast path) when nothing is padded; then decoding needs no
        # mask either and `key_mask` goes unused.
        prefill_mask = key_mask[:, :padded] if min(lengths) != padded else None
        logits = self._forward(ids, position_ids=positions, kv_cache=cache, attention_mask=prefill_mask, num_logits_to_keep=1)

        params = RowParams.from_configs([r.sampling for r in requests], device)
        seen = None
        if params.any_penalty:  # tokens in context, for the repetition penalty (padding excluded)
            seen = torch.zeros((batch, logits.shape[-1]), dtype=torch.bool, device=device)
            for row, r in enumerate(requests):
                seen[row, torch.tensor(r.prompt_ids, device=device)] = True
        generators = [make_generator(r.sampling.seed, device) for r in requests]
        next_pos = torch.tensor(lengths, device=device)
        plan = DecodePlan.of(model)
        active = list(range(batch))  # batch row -> request

        while True:
            tokens = sample_next(logits, params, seen, generators)
            events = [requests[req].push(tok) for req, tok in zip(active, tokens.tolist())]
            yield events
            keep = [row for row, req in enumerate(active) if not requests[req].finished]
            if not keep:
                return
            if len(keep) < len(active):
                # Finished rows leave the batch so they stop costing attention and matmuls.
                rows = torch.tensor(keep, device=device)
                cache.k, cache.v = cache.k.index_select(1, rows), cache.v.index_select(1, rows)
                key_mask, tokens, next_pos = key_mask[rows], tokens[rows], next_pos[rows]
                params = params.select(rows)
                seen = seen[rows] if seen is not None else None
                generators = [generators[row] for row in keep]
                active = [active[row] for row in keep]
            if seen is not None:
                seen.scatter_(1, tokens.unsqueeze(1), True)
            width = cache.length + 1
            mask = None  # unpadded prompts: every cached position is visible to every row
            if prefill_mask is not None:
                key_mask[:, width - 1] = True
                mask = key_mask[:, None, None, :width]
            logits = self.decode_logits(plan, tokens, next_pos, cache, mask)
            next_pos = next_pos + 1
