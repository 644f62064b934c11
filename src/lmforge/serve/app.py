"""The OpenAI-compatible HTTP server: a thin FastAPI adapter over the scheduler and the engine.

Routes:

==================================  ===========================================================
``GET  /``                          the browser chat page (``static/``)
``GET  /v1/models``                 the served model (also ``/v1/models/{id}``)
``POST /v1/chat/completions``       chat through the checkpoint's chat template; ``stream``
                                    sends server-sent events ending in ``data: [DONE]``
``POST /v1/completions``            plain continuation of text or token-id prompts
``GET  /health``                    liveness and the scheduler's counters (active, waiting, ...)
==================================  ===========================================================

Every request becomes one scheduler request per choice (``n``); the scheduler batches them
with everyone else's. A client that disconnects, streaming or not, cancels its generation.
Bad requests — invalid JSON, missing or mistyped fields, out-of-range values, a prompt that does
not fit the context, an unknown model, a missing API key — are answered with a 4xx and an
OpenAI-style error body; the server itself never goes down over a request.

Usage (``lmforge serve CKPT`` does this)::

    engine = load_off_thread(Engine.from_checkpoint, "runs/demo", overflow="error")  # see scheduler.py
    app = create_app(engine, model_name="demo")
    uvicorn.run(app, host="127.0.0.1", port=8000)
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.background import BackgroundTask
from starlette.requests import ClientDisconnect

from lmforge.infer.engine import Engine, StepEvent
from lmforge.infer.sampling import SamplingConfig
from lmforge.serve import protocol as p
from lmforge.serve.scheduler import Scheduler

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).with_name("static")


@dataclass
class _Prepared:
    """A validated request: prompt ids per choice and the sampling config of each."""

    prompts: list[list[int]]  # one per choice: each prompt n times in a row
    samplings: list[SamplingConfig]
    n: int = 1

    @property
    def prompt_tokens(self) -> int:
        """Usage counts each prompt once, however many choices it has (as OpenAI does)."""
        return sum(len(ids) for ids in self.prompts[:: self.n])


class _Mailbox:
    """Hands scheduler-thread items to one event loop's queues with at most one wake-up pending.

    A decode step produces one event per active request; waking the loop once per event (a
    ``call_soon_threadsafe`` each, a write to its self-pipe) cost the scheduler thread a fifth
    of its time at 8 clients. Items posted while a wake-up is pending ride along with it.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = weakref.ref(loop)  # weak: the registry below must not keep closed loops alive
        self._lock = threading.Lock()
        self._items: list[tuple[asyncio.Queue, Any]] = []

    def post(self, queue: asyncio.Queue, item: Any) -> None:
        with self._lock:
            self._items.append((queue, item))
            if len(self._items) > 1:
                return  # the wake-up scheduled for the first item delivers this one too
        loop = self._loop()
        try:
            if loop is None:
                raise RuntimeError("the event loop is gone")
            loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # a closed loop: nobody will read these, and later posts must not wait on them
            with self._lock:
                self._items.clear()
            raise

    def _drain(self) -> None:
        with self._lock:
            items, self._items = self._items, []
        for queue, item in items:
            queue.put_nowait(item)


_mailboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Mailbox] = weakref.WeakKeyDictionary()
_mailboxes_lock = threading.Lock()


def _mailbox(loop: asyncio.AbstractEventLoop) -> _Mailbox:
    with _mailboxes_lock:
        box = _mailboxes.get(loop)
        if box is None:
            box = _mailboxes[loop] = _Mailbox(loop)
        return box


class _Events:
    """Bridges scheduler-thread events into this request's asyncio queue, tagged by choice.

    ``final_only``: pass on only each choice's last event (and errors) — a non-streaming
    response needs nothing else, and every wake-up of the event loop takes a core from the
    decoding threads.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, final_only: bool = False) -> None:
        self.mailbox = _mailbox(loop)
        self.final_only = final_only
        self.queue: asyncio.Queue[tuple[int, StepEvent | Exception]] = asyncio.Queue()

    def callback(self, choice: int):
        def on_event(event):
            if self.final_only and not isinstance(event, Exception) and event.finish_reason is None:
                return
            self.mailbox.post(self.queue, (choice, event))

        return on_event


def create_app(
    engine: Engine,
    model_name: str,
    api_key: str | None = None,
    max_batch_size: int = 32,
    max_prefill_tokens: int = 4096,
    cors_origins: list[str] | None = None,
) -> FastAPI:
    """The server app for one engine. ``api_key``: require ``Authorization: Bearer <key>`` on /v1."""
    scheduler = Scheduler(engine, max_batch_size=max_batch_size, max_prefill_tokens=max_prefill_tokens)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        scheduler.start()
        try:
            yield
        finally:
            scheduler.stop()

    app = FastAPI(title="lmforge", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.scheduler = scheduler  # for embedding code that wants the counters or to drain it
    _install_error_handlers(app)
    created = int(time.time())

    @app.middleware("http")
    async def check_api_key(request: Request, call_next):
        if api_key and request.url.path.startswith("/v1/") and request.method != "OPTIONS":
            header = request.headers.get("authorization", "")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
                message = "missing API key: send 'Authorization: Bearer <key>'" if not header else "incorrect API key"
                return JSONResponse(p.error_body(message, code="invalid_api_key"), status_code=401)
        return await call_next(request)

    if cors_origins:  # added last, so outermost: a 401 from the key check carries CORS headers too
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=cors_origins, allow_methods=["*"], allow_headers=["*"])

    def model_card() -> dict[str, Any]:
        return {"id": model_name, "object": "model", "created": created, "owned_by": "lmforge", "max_model_len": engine.max_context}

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str):
        _check_model(model_id, model_name)
        return model_card()

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name, **scheduler.stats()}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await _parse(request, p.ChatCompletionRequest)
        _check_model(body.model, model_name)
        body.refuse_unsupported()
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text(i)} for i, m in enumerate(body.messages)]
        try:
            ids = engine.encode_chat(messages)
        except ValueError as exc:  # no chat template
            raise p.APIError(400, str(exc), param="messages") from None
        except Exception as exc:  # a template that rejects this conversation (e.g. roles out of order)
            raise p.APIError(400, f"the chat template could not render these messages: {exc}", param="messages") from None
        prepared = _prepare(engine, body, [ids] * body.n, body.reply_budget, param="messages")
        if body.stream:
            events, requests = _submit(scheduler, prepared)
            return _sse(_chat_stream(events, requests, prepared, body, model_name), requests)
        return await _complete(scheduler, prepared, request, lambda results: _chat_response(results, prepared, model_name))

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await _parse(request, p.CompletionRequest)
        _check_model(body.model, model_name)
        body.refuse_unsupported()
        prompts = [_prompt_ids(engine, prompt, i) for i, prompt in enumerate(body.prompts())]
        per_choice = [ids for ids in prompts for _ in range(body.n)]
        prepared = _prepare(engine, body, per_choice, body.max_tokens, param="prompt")
        echo = [engine.tokenizer.decode(ids) if body.echo else "" for ids in per_choice]
        if body.stream:
            events, requests = _submit(scheduler, prepared)
            return _sse(_completion_stream(events, requests, prepared, body, model_name, echo), requests)
        return await _complete(scheduler, prepared, request, lambda results: _completion_response(results, prepared, model_name, echo))

    if STATIC_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

        @app.get("/", include_in_schema=False)
        async def chat_page():
            return FileResponse(STATIC_DIR / "index.html")

    return app


# ---- request preparation --------------------------------------------------------------------


async def _parse(request: Request, model: type[BaseModel]):
    """The JSON body as ``model``. Read whatever the Content-Type says: ``curl -d`` sends JSON
    labelled as a form, and OpenAI's API accepts it too."""
    try:
        raw = await request.body()
    except ClientDisconnect:  # gone before sending the whole body: nobody to answer
        raise p.APIError(400, "the client disconnected before sending the whole request", code="client_disconnected") from None
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, absurd nesting or number sizes
        where = f" (line {exc.lineno}, column {exc.colno})" if isinstance(exc, json.JSONDecodeError) else ""
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else \
            "not UTF-8" if isinstance(exc, UnicodeDecodeError) else "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise p.APIError(400, f"the request body is not valid JSON: {reason}{where}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise p.APIError(400, f"the request body must be a JSON object, not {type(data).__name__}", code="invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(exc.errors()) from None


def _validation_error(errors: list) -> p.APIError:
    """The first problem, named by its field path (``messages.0.role``), as OpenAI words it."""
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    field = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    if first.get("type") == "missing":
        message = f"missing required field '{field}'{more}"
    else:
        got = first.get("input")
        shown = json.dumps(got, ensure_ascii=False)[:80] if isinstance(got, (str, int, float, bool, type(None))) else type(got).__name__
        message = f"{field}: {first['msg']} (got {shown}){more}" if field else f"{first['msg']}{more}"
    return p.APIError(400, message, param=field or None, code="invalid_value")


def _check_model(name: str, served: str) -> None:
    if name != served:
        raise p.APIError(404, f"the model '{name}' does not exist; this server serves '{served}'", param="model", code="model_not_found")


def _prompt_ids(engine: Engine, prompt: str | list[int], index: int) -> list[int]:
    if isinstance(prompt, str):
        return engine.encode(prompt)
    vocab = engine.model.config.vocab_size
    if not prompt:
        raise p.APIError(400, f"prompt[{index}] is an empty list of token ids", param="prompt")
    bad = [t for t in prompt if not 0 <= t < vocab]
    if bad:
        raise p.APIError(400, f"prompt[{index}]: token id {bad[0]} is outside the vocabulary (0..{vocab - 1})", param="prompt")
    return list(prompt)


def _prepare(engine: Engine, body: p._Sampling, prompts: list[list[int]], max_tokens: int | None, param: str) -> _Prepared:
    """Check every prompt against the context and build its sampling config."""
    context = engine.max_context
    samplings = []
    for choice, ids in enumerate(prompts):
        budget = max_tokens if max_tokens is not None else context - len(ids)
        if budget < 1 or len(ids) + budget > context:
            asked = f"{len(ids) + budget} tokens ({len(ids)} in the {param}, {budget} for the completion)" if max_tokens is not None \
                else f"{len(ids)} tokens in the {param}, leaving no room for a completion"
            raise p.APIError(400, f"this model's maximum context length is {context} tokens; however, you requested {asked}. "
                             f"Shorten the {param} or lower max_tokens.", param=param, code="context_length_exceeded")
        seed = body.seed + choice if body.seed is not None else None  # n choices must differ
        temperature = 1.0 if body.temperature is None else body.temperature
        samplings.append(SamplingConfig(
            max_new_tokens=budget,
            # Below 1e-5 the scaled logits overflow; the distribution is greedy anyway (as vLLM).
            temperature=0.0 if temperature < 1e-5 else temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            top_k=min(max(body.top_k, 0), engine.model.config.vocab_size),
            repetition_penalty=body.repetition_penalty,
            stop=body.stop_list(),
            seed=seed,
            ignore_eos=body.ignore_eos,
        ))
    return _Prepared(prompts, samplings, n=body.n)


def _submit(scheduler: Scheduler, prepared: _Prepared, final_only: bool = False) -> tuple[_Events, list]:
    """Queue every choice; before any response is sent, so a refusal is still a clean error."""
    events = _Events(asyncio.get_running_loop(), final_only)
    requests = []
    try:
        for choice, (ids, sampling) in enumerate(zip(prepared.prompts, prepared.samplings)):
            requests.append(scheduler.submit(ids, sampling, events.callback(choice)))
    except Exception as exc:
        for request in requests:
            request.cancel()
        if isinstance(exc, ValueError):
            raise p.APIError(400, str(exc)) from None
        raise p.APIError(503, f"the server cannot take requests now: {exc}", type="server_error") from None
    return events, requests


# ---- non-streaming --------------------------------------------------------------------------


async def _complete(scheduler: Scheduler, prepared: _Prepared, http_request: Request, respond):
    """Wait for every choice; a client that hangs up cancels them all."""
    events, requests = _submit(scheduler, prepared, final_only=True)
    pending = len(requests)
    disconnect = asyncio.ensure_future(_wait_for_disconnect(http_request))
    try:
        while pending:
            get = asyncio.ensure_future(events.queue.get())
            done, _ = await asyncio.wait({get, disconnect}, return_when=asyncio.FIRST_COMPLETED)
            if get not in done:
                get.cancel()
                logger.info("client disconnected; cancelled %d requests", len(requests))
                return JSONResponse(p.error_body("client disconnected", code="client_disconnected"), status_code=499)
            _, event = get.result()
            if isinstance(event, Exception):
                return _server_error(event)
            if event.finish_reason is not None:
                pending -= 1
        return respond(requests)
    finally:
        disconnect.cancel()
        for request in requests:
            request.cancel()  # no-op for finished ones


async def _wait_for_disconnect(request: Request) -> None:
    # The body has been read, so the next ASGI message is the client going away.
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _chat_response(requests, prepared: _Prepared, model: str) -> dict:
    choices = [{"index": i, "message": {"role": "assistant", "content": r.state.text}, "logprobs": None,
                "finish_reason": r.state.finish_reason or "length"} for i, r in enumerate(requests)]
    completion = sum(r.completion_tokens for r in requests)
    return p.chat_completion(p.new_id("chatcmpl"), model, choices, p.usage(prepared.prompt_tokens, completion))


def _completion_response(requests, prepared: _Prepared, model: str, echo: list[str]) -> dict:
    choices = [{"index": i, "text": echo[i] + r.state.text, "logprobs": None, "finish_reason": r.state.finish_reason or "length"}
               for i, r in enumerate(requests)]
    completion = sum(r.completion_tokens for r in requests)
    return p.text_completion(p.new_id("cmpl"), model, int(time.time()), choices, p.usage(prepared.prompt_tokens, completion))


def _server_error(exc: Exception) -> JSONResponse:
    return JSONResponse(p.error_body(f"generation failed: {type(exc).__name__}: {exc}", type="server_error"), status_code=500)


# ---- streaming ------------------------------------------------------------------------------


def _sse(chunks: AsyncIterator[dict], requests: list) -> StreamingResponse:
    """Server-sent events of ``chunks``, then ``[DONE]``. However the response ends — finished,
    client gone while we wait for a token or while a write is blocked — the requests are
    cancelled: in the generator's ``finally`` and, as a backstop, in a background task."""

    def cancel_all():
        for request in requests:
            request.cancel()  # no-op for finished ones

    async def body():
        try:
            async with contextlib.aclosing(chunks):
                async for chunk in chunks:
                    yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            cancel_all()

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                             background=BackgroundTask(cancel_all))


async def _events(events: _Events, count: int):
    """(choice, event) pairs until every choice finished, or until the first error."""
    pending = count
    while pending:
        choice, event = await events.queue.get()
        yield choice, event
        if isinstance(event, Exception):
            return
        if event.finish_reason is not None:
            pending -= 1


async def _chat_stream(events: _Events, requests: list, prepared: _Prepared, body: p.ChatCompletionRequest, model: str):
    id_, created = p.new_id("chatcmpl"), int(time.time())
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    for choice in range(len(prepared.prompts)):
        yield p.chat_chunk(id_, model, created, [{"index": choice, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}])
    async for choice, event in _events(events, len(requests)):
        if isinstance(event, Exception):
            yield _server_error_chunk(event)
            return
        if event.text:
            yield p.chat_chunk(id_, model, created, [{"index": choice, "delta": {"content": event.text}, "logprobs": None, "finish_reason": None}])
        if event.finish_reason is not None:
            yield p.chat_chunk(id_, model, created, [{"index": choice, "delta": {}, "logprobs": None, "finish_reason": event.finish_reason}])
    if include_usage:
        yield p.chat_chunk(id_, model, created, [], p.usage(prepared.prompt_tokens, sum(r.completion_tokens for r in requests)))


async def _completion_stream(events: _Events, requests: list, prepared: _Prepared, body: p.CompletionRequest, model: str,
                             echo: list[str]):
    id_, created = p.new_id("cmpl"), int(time.time())
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    for choice, text in enumerate(echo):
        if text:
            yield p.text_completion(id_, model, created, [{"index": choice, "text": text, "logprobs": None, "finish_reason": None}])
    async for choice, event in _events(events, len(requests)):
        if isinstance(event, Exception):
            yield _server_error_chunk(event)
            return
        if event.text or event.finish_reason is not None:
            yield p.text_completion(id_, model, created, [{"index": choice, "text": event.text, "logprobs": None, "finish_reason": event.finish_reason}])
    if include_usage:
        yield p.text_completion(id_, model, created, [], p.usage(prepared.prompt_tokens, sum(r.completion_tokens for r in requests)))


def _server_error_chunk(exc: Exception) -> dict:
    # Headers (200) are already sent: the error travels as an event, as vLLM and OpenAI do.
    return p.error_body(f"generation failed: {type(exc).__name__}: {exc}", type="server_error")


# ---- errors ---------------------------------------------------------------------------------


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(p.APIError)
    async def api_error(_request: Request, exc: p.APIError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError):
        error = _validation_error(list(exc.errors()))
        return JSONResponse(error.body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(p.error_body(str(exc.detail), type=kind), status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, exc: Exception):  # a bug: say so, keep serving
        logger.exception("unhandled error")
        return JSONResponse(p.error_body(f"internal error: {type(exc).__name__}: {exc}", type="server_error"), status_code=500)
