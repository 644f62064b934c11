"""A bounded load test: 32 concurrent ``openai`` clients × 10 requests each, mixed streaming and
not, against one server; every request must succeed and the scheduler's books must balance."""

from __future__ import annotations

import asyncio
import time

import pytest
from serve_helpers import health

openai = pytest.importorskip("openai")

CLIENTS, REQUESTS_EACH, MAX_TOKENS = 32, 10, 6


async def _client_session(client, worker: int) -> tuple[int, int, list[str]]:
    done = tokens = 0
    errors = []
    for i in range(REQUESTS_EACH):
        messages = [{"role": "user", "content": f"Request {i} from client {worker}: hello, 你好"}]
        try:
            if (worker + i) % 2:
                reply = await client.chat.completions.create(model="tiny", messages=messages, max_tokens=MAX_TOKENS, seed=worker * 100 + i)
                tokens += reply.usage.completion_tokens
            else:
                stream = await client.chat.completions.create(model="tiny", messages=messages, max_tokens=MAX_TOKENS, stream=True,
                                                              stream_options={"include_usage": True})
                async for chunk in stream:
                    if chunk.usage:
                        tokens += chunk.usage.completion_tokens
            done += 1
        except Exception as exc:  # counted, not raised: the test reports them all
            errors.append(f"client {worker} request {i}: {type(exc).__name__}: {exc}")
    return done, tokens, errors


def test_32_clients_by_10_requests_without_errors(server, show):
    async def main():
        client = openai.AsyncOpenAI(base_url=f"{server}/v1", api_key="none", max_retries=0, timeout=120)
        try:
            return await asyncio.wait_for(asyncio.gather(*(_client_session(client, w) for w in range(CLIENTS))), timeout=300)
        finally:
            await client.close()

    before = health(server)
    start = time.perf_counter()
    results = asyncio.run(main())
    seconds = time.perf_counter() - start
    errors = [e for _, _, errs in results for e in errs]
    assert not errors, errors[:5]
    assert sum(done for done, _, _ in results) == CLIENTS * REQUESTS_EACH
    after = health(server)
    assert after["completed"] - before["completed"] == CLIENTS * REQUESTS_EACH
    assert after["failed"] == before["failed"] and after["active"] == after["waiting"] == 0
    tokens = sum(t for _, t, _ in results)
    assert tokens == after["generated_tokens"] - before["generated_tokens"]
    show(f"\nload test: {CLIENTS * REQUESTS_EACH} requests from {CLIENTS} clients in {seconds:.1f} s, 0 errors, "
         f"{tokens} tokens ({tokens / seconds:.0f} tokens/s aggregate)")
