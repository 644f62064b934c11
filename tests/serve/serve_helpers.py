"""Helpers for the serving tests (a plain module: test files import it by name, which they cannot
do with ``conftest``): a real uvicorn server in a thread, raw HTTP, the /health counters, and an
engine slowed down for tests that must act while a generation is still running."""

from __future__ import annotations

import http.client
import json
import threading
import time
from contextlib import contextmanager
from urllib.parse import urlparse


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


def raw(url: str, method: str, path: str, body: bytes | str | None = None, headers: dict | None = None):
    """(status, parsed JSON or text) of one plain HTTP request."""
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    conn.request(method, path, body=body, headers=headers or {"Content-Type": "application/json"})
    response = conn.getresponse()
    data = response.read().decode()
    conn.close()
    try:
        return response.status, json.loads(data)
    except json.JSONDecodeError:
        return response.status, data


def health(url: str) -> dict:
    return raw(url, "GET", "/health")[1]


def wait_until(predicate, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def slowed(engine, seconds_per_step: float):
    """``engine`` with every decode step (scheduler and ``Engine.generate`` alike) taking at least
    ``seconds_per_step`` longer: a test that stops or disconnects mid-reply then acts while the
    reply is certainly still running, however fast the machine decodes."""
    fast = engine.decode_logits

    def slow(*args, **kwargs):
        time.sleep(seconds_per_step)
        return fast(*args, **kwargs)

    engine.decode_logits = slow
    return engine
