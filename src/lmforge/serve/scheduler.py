"""Continuous batching: one thread owns the model and steps every active request together.

The server hands requests to a ``Scheduler``; its thread loops:

1. **admit** waiting requests while there are free slots (``max_batch_size``) and the prefill
   budget (``max_prefill_tokens`` per iteration) allows: their prompts run as one right-padded
   batch, each row's last position gives its first token;
2. **decode** one token for every active request in a single forward pass;
3. **release** requests that finished (eos, stop string, ``max_new_tokens``) or were cancelled
   (the client went away), freeing their slots for the next admission.

So a request that arrives while others are decoding joins the batch at the next step instead of
waiting for the batch to drain, and aggregate tokens/s grows with the number of clients: on a
small model a decode step costs about the same for 1 or 32 rows.

The KV cache (``SlotKVCache``) has one row per slot, each at its own length: a request's keys
start at column 0 of its slot and its new token is written at its own position, with a per-row
key mask hiding the rest. Active requests always occupy slots ``0..B-1`` (a released slot is
refilled by moving the last one into it), so the model reads a plain slice of the cache. The
cache grows (slots and columns, up to ``max_batch_size`` and the model's context) as requests
need it, instead of reserving the worst case up front.

Per-token policy (stop strings, UTF-8-safe incremental text, budgets) is the engine's
``RequestState``, and requests are built by ``Engine.new_request``: what the server streams is
exactly what ``Engine.generate`` would produce for the same prompt and settings.

Usage (the server does this; any thread may submit)::

    scheduler = Scheduler(engine, max_batch_size=32).start()
    request = scheduler.submit(prompt_ids, SamplingConfig(max_new_tokens=32), on_event=print)
    result = scheduler.generate(prompt_ids, SamplingConfig(temperature=0))   # blocking helper
    request.cancel()                                                          # frees its slot
    scheduler.stop()

``on_event`` is called from the scheduler thread with each ``StepEvent`` (its ``finish_reason``
set on the last one), or with an ``Exception`` if the forward pass failed; it must be quick
(the server just posts it to its event loop).

On a CPU, keep the scheduler's thread the only long-lived one that runs parallel torch ops:
load the engine with ``load_off_thread`` (``engine = load_off_thread(Engine.from_checkpoint,
ckpt)``), or a second OpenMP pool throttles both and decoding gets several times slower.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, TypeVar

import torch

from lmforge.infer.engine import Engine, GenerationResult, RequestState, StepEvent
from lmforge.infer.sampling import RowParams, SamplingConfig, make_generator, sample_next
from lmforge.model.decode import DecodePlan
from lmforge.model.transformer import KVCache

logger = logging.getLogger(__name__)

T = TypeVar("T")


def load_off_thread(load: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``load(*args, **kwargs)`` on a thread that exits when it is done; its result or its error.

    PyTorch's Linux CPU builds run their parallel ops on GNU OpenMP, which keeps a pool of
    worker threads for every thread that ever ran one. Loading a model can (casting the weights
    to bf16 does), and the server decodes on the scheduler's thread: with two pools and no more
    cores than one pool's threads, libgomp stops spin-waiting and every parallel op sleeps and
    wakes on futexes — decoding measured 2.5x slower on 2 cores. A thread that exits takes its
    pool with it. The loading thread is a daemon and the wait is interruptible: Ctrl-C during a
    long load exits at once.
    """
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = load(*args, **kwargs)
        except BaseException as exc:  # handed to the caller's thread as is
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="lmforge-load", daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome.pop("error")
    return outcome["value"]

EventCallback = Callable[["StepEvent | Exception"], None]


class SlotKVCache(KVCache):
    """A KV cache whose rows ("slots") each hold one request at its own length.

    Before a decode step the scheduler sets ``write_pos`` ([B] long: where each of the first B
    slots writes its new token) and ``length`` (the widest row's length); ``update`` writes the
    step's single key/value per row there and returns the first ``length + 1`` columns of the
    first B slots, a view. The model's causal mask is replaced by an explicit per-row key mask.
    """

    # model/native.py may write this cache itself: ``update`` is exactly "row b's key and value
    # at column write_pos[b]" over contiguous [layers, slots, heads, capacity, head_dim] tensors.
    native_decode_layout = True

    def __init__(self, config, slots: int, capacity: int, dtype: torch.dtype, device) -> None:
        super().__init__(config, slots, capacity, dtype, device)
        self.write_pos: torch.Tensor | None = None

    @property
    def slots(self) -> int:
        return self.k.shape[1]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = k.shape[0]
        index = torch.arange(rows, device=k.device)
        self.k[layer, index, :, self.write_pos] = k[:, :, 0]
        self.v[layer, index, :, self.write_pos] = v[:, :, 0]
        width = self.length + 1
        return self.k[layer, :rows, :, :width], self.v[layer, :rows, :, :width]

    def grow(self, slots: int, capacity: int) -> None:
        """At least ``slots`` rows of ``capacity`` columns, keeping what is stored."""
        if slots <= self.slots and capacity <= self.max_len:
            return
        slots, capacity = max(slots, self.slots), max(capacity, self.max_len)
        shape = (self.k.shape[0], slots, self.k.shape[2], capacity, self.k.shape[4])
        # Both allocated before either is replaced: running out of memory leaves the cache as it was.
        k, v = (torch.zeros(shape, dtype=self.k.dtype, device=self.k.device) for _ in range(2))
        k[:, : self.k.shape[1], :, : self.k.shape[3]] = self.k
        v[:, : self.v.shape[1], :, : self.v.shape[3]] = self.v
        self.k, self.v, self.max_len = k, v, capacity

    def copy_row(self, src: "KVCache", src_row: int, dst_row: int, length: int) -> None:
        self.k[:, dst_row, :, :length] = src.k[:, src_row, :, :length]
        self.v[:, dst_row, :, :length] = src.v[:, src_row, :, :length]


@dataclass
class Request:
    """A submitted request: its state, where its events go, and its timings."""

    id: int
    state: RequestState
    on_event: EventCallback
    submitted_at: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    cancelled: bool = False
    # Set by the scheduler while the request holds a slot.
    length: int = 0  # tokens in its KV cache row
    pending: int = -1  # sampled token not yet in the cache
    generator: torch.Generator | None = None

    def cancel(self) -> None:
        """Stop generating for this request (thread-safe); its slot is freed at the next step."""
        self.cancelled = True

    @property
    def prompt_tokens(self) -> int:
        return len(self.state.prompt_ids)

    @property
    def completion_tokens(self) -> int:
        return len(self.state.token_ids)


class Scheduler:
    """Continuous batching over one ``Engine``; see the module docstring."""

    def __init__(self, engine: Engine, max_batch_size: int = 32, max_prefill_tokens: int = 4096) -> None:
        if max_batch_size < 1 or max_prefill_tokens < 1:
            raise ValueError("max_batch_size and max_prefill_tokens must be >= 1")
        self.engine = engine
        self.max_batch_size = max_batch_size
        self.max_prefill_tokens = max_prefill_tokens
        self._cond = threading.Condition()
        self._waiting: deque[Request] = deque()
        self._active: list[Request] = []  # slot order: _active[i] holds cache row i
        self._ids = itertools.count(1)
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._cache: SlotKVCache | None = None
        self._seen: torch.Tensor | None = None  # [slots, V] tokens in context, for repetition penalty
        self._params: RowParams | None = None  # of the active rows; None after membership changes
        self._plan = DecodePlan.of(engine.model)  # the served model is fixed for the scheduler's life
        self.counters = dict(submitted=0, completed=0, cancelled=0, failed=0, prompt_tokens=0, generated_tokens=0, steps=0)

    # ---- control -----------------------------------------------------------------------

    def start(self) -> Scheduler:
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._loop, name="lmforge-scheduler", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def submit(self, prompt_ids: Sequence[int], sampling: SamplingConfig, on_event: EventCallback) -> Request:
        """Queue a request (any thread). Raises ``ValueError`` for a prompt that cannot run."""
        state = self.engine.new_request(0, prompt_ids, sampling)
        # Built here, so an unusable seed is the caller's error, not a failed batch.
        request = Request(next(self._ids), state, on_event, generator=make_generator(sampling.seed, self.engine.device))
        with self._cond:
            if self._stopping or self._thread is None:
                raise RuntimeError("the scheduler is not running")
            self._waiting.append(request)
            self.counters["submitted"] += 1
            self._cond.notify_all()
        return request

    def generate(self, prompt_ids: Sequence[int], sampling: SamplingConfig, timeout: float | None = None) -> GenerationResult:
        """Submit and wait for the whole result (tests, benchmarks, synchronous callers)."""
        done = threading.Event()
        errors: list[Exception] = []

        def on_event(event):
            if isinstance(event, Exception):
                errors.append(event)
                done.set()
            elif event.finish_reason is not None:
                done.set()

        request = self.submit(prompt_ids, sampling, on_event)
        if not done.wait(timeout):
            request.cancel()
            raise TimeoutError(f"request {request.id} did not finish in {timeout} s")
        if errors:
            raise errors[0]
        return request.state.result()

    def stats(self) -> dict[str, Any]:
        with self._cond:
            return {**self.counters, "active": len(self._active), "waiting": len(self._waiting),
                    "max_batch_size": self.max_batch_size, "running": self._thread is not None}

    # ---- the loop ----------------------------------------------------------------------

    def _loop(self) -> None:
        with torch.inference_mode():
            while True:
                with self._cond:
                    while not self._stopping and not self._waiting and not self._active:
                        self._cond.wait()
                    if self._stopping:
                        break
                    admitted = self._take_admissions()
                # A failed forward must not kill the server; a failed prefill fails only the
                # requests it was admitting (the decoding ones' cache rows are untouched).
                self._release_cancelled()
                if admitted:
                    active_before = len(self._active)
                    try:
                        self._prefill(admitted)
                    except Exception as exc:
                        del self._active[active_before:]
                        self._fail([r for r in admitted], exc, "prefill")
                if self._active:
                    try:
                        self._decode_step()
                    except Exception as exc:
                        self._fail(self._active, exc, "decode step")
                        self._active, self._cache, self._seen = [], None, None  # rebuilt on the next admission
            with self._cond:
                waiting, self._waiting = list(self._waiting), deque()
            self._fail([*self._active, *waiting], RuntimeError("the server is shutting down"), None)
            self._active = []

    def _fail(self, requests: list[Request], exc: Exception, what: str | None) -> None:
        """Hand ``exc`` to every unfinished request of ``requests``."""
        failing = [r for r in requests if not r.state.finished and not r.cancelled]
        if failing and what:
            logger.error("%s failed (%s: %s); failing its %d requests", what, type(exc).__name__, exc, len(failing), exc_info=exc)
        for request in failing:
            self._deliver(request, exc)
        with self._cond:
            self.counters["failed"] += len(failing)
        self._params = None

    def _take_admissions(self) -> list[Request]:
        """Pop waiting requests that fit (called with the lock held)."""
        admitted, longest = [], 0
        while self._waiting and len(self._active) + len(admitted) < self.max_batch_size:
            request = self._waiting[0]
            if request.cancelled:
                self._waiting.popleft()
                self.counters["cancelled"] += 1
                continue
            # The prefill batch is right-padded: its cost is rows × the longest prompt.
            if admitted and (len(admitted) + 1) * max(longest, request.prompt_tokens) > self.max_prefill_tokens:
                break
            admitted.append(self._waiting.popleft())
            longest = max(longest, request.prompt_tokens)
        return admitted

    def _deliver(self, request: Request, event: StepEvent | Exception) -> None:
        try:
            request.on_event(event)
        except Exception:  # a consumer's bug must not stop everyone else's generation
            logger.exception("event callback of request %d failed; cancelling it", request.id)
            request.cancel()

    def _ensure_cache(self, slots: int, capacity: int) -> SlotKVCache:
        """A cache with at least ``slots`` rows of ``capacity`` columns, grown geometrically."""
        model = self.engine.model
        capacity = min(self.engine.max_context, -(-capacity // 64) * 64)  # round up: fewer regrowths
        if self._cache is None:
            dtype = model.model.embed_tokens.weight.dtype
            self._cache = SlotKVCache(model.config, min(self.max_batch_size, max(slots, 4)), capacity, dtype, self.engine.device)
        elif slots > self._cache.slots or capacity > self._cache.max_len:
            grown_slots = min(self.max_batch_size, max(slots, 2 * self._cache.slots)) if slots > self._cache.slots else slots
            self._cache.grow(grown_slots, max(capacity, min(self.engine.max_context, 2 * self._cache.max_len)) if capacity > self._cache.max_len else capacity)
        if self._seen is not None and self._seen.shape[0] < self._cache.slots:
            grown = torch.zeros((self._cache.slots, self._seen.shape[1]), dtype=torch.bool, device=self._seen.device)
            grown[: self._seen.shape[0]] = self._seen
            self._seen = grown
        return self._cache

    def _penalty_rows(self, rows: slice, requests: Sequence[Request], vocab: int) -> torch.Tensor | None:
        """The ``seen`` rows for sampling, allocated on the first request that uses a penalty."""
        if self._seen is None:
            if not any(r.state.sampling.repetition_penalty != 1.0 for r in requests):
                return None
            self._seen = torch.zeros((self._cache.slots, vocab), dtype=torch.bool, device=self.engine.device)
            for row, request in enumerate(self._active):  # rows admitted before the first penalty
                self._seen[row, torch.tensor(request.state.prompt_ids + request.state.token_ids, device=self.engine.device)] = True
        return self._seen[rows]

    def _prefill(self, admitted: list[Request]) -> None:
        """Run the new prompts as one right-padded batch; sample each one's first token."""
        engine, device = self.engine, self.engine.device
        lengths = [r.prompt_tokens for r in admitted]
        width = max(lengths)
        ids = torch.full((len(admitted), width), engine.pad_token_id, dtype=torch.long, device=device)
        key_mask = torch.zeros((len(admitted), width), dtype=torch.bool, device=device)
        for row, request in enumerate(admitted):
            ids[row, : lengths[row]] = torch.tensor(request.state.prompt_ids, device=device)
            key_mask[row, : lengths[row]] = True
        last = torch.zeros_like(key_mask)
        last[torch.arange(len(admitted)), torch.tensor(lengths) - 1] = True
        scratch = engine.model.new_kv_cache(len(admitted), width, dtype=engine.model.model.embed_tokens.weight.dtype)
        # Right padding: each row's positions start at 0 (the default), its padding lies after its
        # last token, where the causal mask already hides it from every real query.
        logits = engine.model_logits(ids, kv_cache=scratch, attention_mask=None if min(lengths) == width else key_mask, logits_mask=last)

        base = len(self._active)
        cache = self._ensure_cache(base + len(admitted), max(r.prompt_tokens + r.state.sampling.max_new_tokens for r in [*self._active, *admitted]))
        seen = self._penalty_rows(slice(base, base + len(admitted)), admitted, logits.shape[-1])
        if seen is not None:
            seen.zero_()
            for row, request in enumerate(admitted):
                seen[row, torch.tensor(request.state.prompt_ids, device=device)] = True
        params = RowParams.from_configs([r.state.sampling for r in admitted], device)
        tokens = sample_next(logits, params, seen, [r.generator for r in admitted]).tolist()

        now = time.perf_counter()
        with self._cond:
            self.counters["prompt_tokens"] += sum(lengths)
        for row, (request, token) in enumerate(zip(admitted, tokens)):
            request.first_token_at = now
            event = request.state.push(token)
            self._count(event)
            self._deliver(request, event)
            if request.cancelled and not request.state.finished:
                with self._cond:
                    self.counters["cancelled"] += 1
            if request.state.finished or request.cancelled:
                continue
            slot = len(self._active)
            cache.copy_row(scratch, row, slot, lengths[row])
            if self._seen is not None and slot != base + row:
                self._seen[slot] = self._seen[base + row]
            if self._seen is not None:
                self._seen[slot, token] = True
            request.length, request.pending = lengths[row], token
            self._active.append(request)
        self._params = None

    def _decode_step(self) -> None:
        """One token for every active request, in one forward pass."""
        engine, device, cache = self.engine, self.engine.device, self._cache
        active = self._active
        lengths = torch.tensor([r.length for r in active], device=device)
        tokens = torch.tensor([r.pending for r in active], device=device)
        width = int(lengths.max()) + 1
        cache.length, cache.write_pos = width - 1, lengths
        # Row i sees its own columns 0..length_i (the new token included), nothing of the slot's tail.
        mask = (torch.arange(width, device=device)[None, :] <= lengths[:, None])[:, None, None, :]
        logits = engine.decode_logits(self._plan, tokens, lengths, cache, mask)
        for request in active:
            request.length += 1
        if self._params is None:
            self._params = RowParams.from_configs([r.state.sampling for r in active], device)
        seen = self._penalty_rows(slice(0, len(active)), active, logits.shape[-1])
        sampled = sample_next(logits, self._params, seen, [r.generator for r in active]).tolist()
        with self._cond:
            self.counters["steps"] += 1
        finished = []
        for row, (request, token) in enumerate(zip(active, sampled)):
            if request.cancelled:
                finished.append(row)
                with self._cond:
                    self.counters["cancelled"] += 1
                continue
            event = request.state.push(token)
            self._count(event)
            self._deliver(request, event)
            if request.state.finished or request.cancelled:
                finished.append(row)
            else:
                request.pending = token
                if self._seen is not None:
                    self._seen[row, token] = True
        self._release(finished)

    def _count(self, event: StepEvent) -> None:
        with self._cond:
            if event.token_id is not None:
                self.counters["generated_tokens"] += 1
            if event.finish_reason is not None:
                self.counters["completed"] += 1

    def _release_cancelled(self) -> None:
        rows = [row for row, r in enumerate(self._active) if r.cancelled]
        if rows:
            with self._cond:
                self.counters["cancelled"] += len(rows)
            self._release(rows)

    def _release(self, rows: list[int]) -> None:
        """Free slots: the last active row moves into each hole, so rows stay 0..B-1."""
        for row in sorted(rows, reverse=True):
            last = len(self._active) - 1
            if row != last:
                moved = self._active[last]
                self._cache.copy_row(self._cache, last, row, moved.length)
                if self._seen is not None:
                    self._seen[row] = self._seen[last]
                self._active[row] = moved
            self._active.pop()
        if rows:
            self._params = None
