"""Serving tests: the tiny checkpoints, and a real uvicorn server on 127.0.0.1 in a thread."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import pytest

from tiny_checkpoints import dense_ckpt, moe_ckpt, tokenizer_dir  # noqa: F401  (fixtures)


@contextmanager
def running_server(app, timeout: float = 30.0):
    """Serve ``app`` on a free loopback port; yields the base URL, shuts down on exit."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)


@pytest.fixture(scope="module")
def engine(dense_ckpt):
    from lmforge.infer import Engine

    return Engine.from_checkpoint(dense_ckpt, device="cpu", dtype="float32", overflow="error")


@pytest.fixture(scope="module")
def server(engine):
    """Base URL of a server for the dense checkpoint, model name 'tiny'."""
    from lmforge.serve.app import create_app

    with running_server(create_app(engine, "tiny", max_batch_size=8)) as url:
        yield url
