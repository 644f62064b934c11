"""Continuous batching: the scheduler gives what the engine gives alone, while batching requests
that arrive at different times, freeing the slots of finished and cancelled ones."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from lmforge.infer import Engine, SamplingConfig
from lmforge.serve.scheduler import Scheduler
from serve_helpers import slowed

TEXTS = ["Hello world", "你好，世界。今天", "def add(a, b):", "The quick brown fox jumps over", "Once"]


@pytest.fixture
def scheduler_for(request):
    started = []

    def make(engine, **kwargs):
        s = Scheduler(engine, **kwargs).start()
        started.append(s)
        return s

    yield make
    for s in started:
        s.stop()


def _run_concurrently(scheduler, prompts, configs, stagger: float = 0.005):
    """Submit from separate threads, a little apart, so requests join a batch already decoding."""
    results = [None] * len(prompts)

    def run(i):
        time.sleep(stagger * i)
        results[i] = scheduler.generate(prompts[i], configs[i], timeout=120)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


@pytest.mark.parametrize("kind", ["dense", "moe"])
def test_concurrent_requests_match_the_engine_alone(kind, request, scheduler_for):
    engine = Engine.from_checkpoint(request.getfixturevalue(f"{kind}_ckpt"), device="cpu", dtype="float32")
    prompts = [engine.encode(t) for t in TEXTS]
    configs = [SamplingConfig(max_new_tokens=n, temperature=0, ignore_eos=True) for n in (5, 20, 13, 30, 7)]
    # A seeded sampled request with a repetition penalty, among greedy ones.
    prompts.append(prompts[1])
    configs.append(SamplingConfig(max_new_tokens=25, temperature=0.9, top_p=0.9, top_k=50, seed=3, repetition_penalty=1.3, ignore_eos=True))
    expected = [engine.generate([p], c)[0] for p, c in zip(prompts, configs)]

    # 2 ms a step at least: requests submitted 5 ms apart then overlap however fast the machine
    # decodes (unslowed, a 5-token request may finish before the next one arrives).
    scheduler = scheduler_for(slowed(engine, 0.002), max_batch_size=3)  # fewer slots than requests: some wait
    got = _run_concurrently(scheduler, prompts, configs)
    for want, have in zip(expected, got):
        assert have.token_ids == want.token_ids
        assert have.text == want.text
        assert have.finish_reason == want.finish_reason == "length"
    stats = scheduler.stats()
    assert stats["completed"] == stats["submitted"] == len(prompts)
    assert stats["generated_tokens"] == sum(c.max_new_tokens for c in configs)
    # Batched: far fewer decode steps than tokens (one step serves every active request).
    assert stats["steps"] < 0.7 * stats["generated_tokens"]
    assert stats["active"] == stats["waiting"] == 0


def test_stop_strings_and_eos_behave_as_in_the_engine(engine, scheduler_for):
    prompts = [engine.encode(t) for t in TEXTS]
    configs = [SamplingConfig(max_new_tokens=40, temperature=0.8, seed=i, stop=["o", "，"]) for i in range(len(prompts))]
    expected = [engine.generate([p], c)[0] for p, c in zip(prompts, configs)]
    got = _run_concurrently(scheduler_for(engine), prompts, configs)
    assert [(g.token_ids, g.text, g.finish_reason, g.stop_reason) for g in got] == \
           [(e.token_ids, e.text, e.finish_reason, e.stop_reason) for e in expected]
    assert any(e.stop_reason in ("o", "，") for e in expected)  # the stop strings were exercised


def test_new_requests_join_a_running_batch(engine, scheduler_for):
    scheduler = scheduler_for(engine, max_batch_size=8)
    long_cfg = SamplingConfig(max_new_tokens=100, temperature=0, ignore_eos=True)
    short_cfg = SamplingConfig(max_new_tokens=5, temperature=0, ignore_eos=True)
    events = []
    first = scheduler.submit(engine.encode("Hello"), long_cfg, events.append)
    while len(events) < 10:  # the long request is decoding
        time.sleep(0.001)
    late = scheduler.generate(engine.encode("你好"), short_cfg, timeout=60)
    # The late request finished while the first was still running: it did not wait for it.
    assert len(late.token_ids) == 5
    assert first.state.finish_reason is None
    while first.state.finish_reason is None:
        time.sleep(0.01)
    assert first.completion_tokens == 100


def test_cancel_frees_the_slot_and_stops_generation(engine, scheduler_for):
    scheduler = scheduler_for(engine, max_batch_size=1)
    events = []
    running = scheduler.submit(engine.encode("Hello"), SamplingConfig(max_new_tokens=120, temperature=0, ignore_eos=True), events.append)
    queued = scheduler.submit(engine.encode("Once"), SamplingConfig(max_new_tokens=4, ignore_eos=True), lambda e: None)
    while len(events) < 3:
        time.sleep(0.001)
    queued.cancel()  # cancelled while waiting: never admitted
    running.cancel()
    after = scheduler.generate(engine.encode("def"), SamplingConfig(max_new_tokens=3, temperature=0), timeout=60)
    assert after.finish_reason in ("length", "stop")
    assert running.completion_tokens < 120
    stats = scheduler.stats()
    assert stats["cancelled"] == 2
    assert stats["active"] == stats["waiting"] == 0


def test_a_failing_forward_fails_its_requests_and_the_scheduler_keeps_serving(engine, scheduler_for, monkeypatch):
    scheduler = scheduler_for(engine)
    calls = {"n": 0}
    original = engine.decode_logits

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated device failure")
        return original(*args, **kwargs)

    monkeypatch.setattr(engine, "decode_logits", flaky)
    with pytest.raises(RuntimeError, match="simulated device failure"):
        scheduler.generate(engine.encode("Hello"), SamplingConfig(max_new_tokens=10, ignore_eos=True), timeout=60)
    ok = scheduler.generate(engine.encode("Hello"), SamplingConfig(max_new_tokens=4, ignore_eos=True), timeout=60)
    assert len(ok.token_ids) == 4
    assert scheduler.stats()["failed"] == 1


def test_a_failing_prefill_fails_only_the_requests_it_admitted(engine, scheduler_for, monkeypatch):
    scheduler = scheduler_for(engine)
    original = engine.model_logits
    broken = {"on": False}

    def flaky(*args, **kwargs):
        if broken["on"] and "logits_mask" in kwargs:  # prefills pass logits_mask, decode steps do not
            broken["on"] = False
            raise RuntimeError("simulated prefill failure")
        return original(*args, **kwargs)

    monkeypatch.setattr(engine, "model_logits", flaky)
    cfg = SamplingConfig(max_new_tokens=60, temperature=0, ignore_eos=True)
    expected = engine.generate([engine.encode("Hello")], cfg)[0].token_ids
    events = []
    running = scheduler.submit(engine.encode("Hello"), cfg, events.append)
    while len(events) < 5:
        time.sleep(0.001)
    broken["on"] = True
    with pytest.raises(RuntimeError, match="simulated prefill failure"):
        scheduler.generate(engine.encode("Once"), SamplingConfig(max_new_tokens=4), timeout=60)
    while running.state.finish_reason is None:
        time.sleep(0.005)
    assert running.state.token_ids == expected and not any(isinstance(e, Exception) for e in events)
    assert scheduler.stats()["failed"] == 1


def test_prompts_that_cannot_fit_are_refused_at_submit(engine, scheduler_for):
    scheduler = scheduler_for(engine)
    with pytest.raises(ValueError, match="context"):
        scheduler.submit(list(range(3, 120)), SamplingConfig(max_new_tokens=64), lambda e: None)
    with pytest.raises(ValueError, match="empty"):
        scheduler.submit([], SamplingConfig(max_new_tokens=4), lambda e: None)


def test_the_cache_grows_with_the_batch_and_the_longest_request(engine, scheduler_for):
    scheduler = scheduler_for(engine, max_batch_size=16)
    prompts = [engine.encode(t) for t in TEXTS * 3]
    configs = [SamplingConfig(max_new_tokens=8 + 6 * i, temperature=0, ignore_eos=True) for i in range(len(prompts))]
    expected = [engine.generate([p], c)[0].token_ids for p, c in zip(prompts, configs)]
    got = _run_concurrently(scheduler, prompts, configs, stagger=0.0)
    assert [g.token_ids for g in got] == expected
    cache = scheduler._cache
    assert cache.slots <= 16 and cache.max_len <= engine.max_context
    assert cache.k.dtype == torch.float32


def test_events_of_one_step_wake_the_event_loop_once():
    """The server's bridge (app._Mailbox): items posted from another thread while a wake-up is
    pending ride along with it, and every item still reaches its own queue, in order."""
    import asyncio

    from lmforge.serve.app import _mailbox

    async def main():
        loop = asyncio.get_running_loop()
        box = _mailbox(loop)
        assert _mailbox(loop) is box, "one mailbox per loop"
        wakeups = []
        real = loop.call_soon_threadsafe
        loop.call_soon_threadsafe = lambda fn, *a: (fn == box._drain and wakeups.append(1)) or real(fn, *a)
        queues = [asyncio.Queue() for _ in range(8)]

        def one_step(step):  # as the scheduler thread does: an event per active request
            for i, q in enumerate(queues):
                box.post(q, (step, i))

        for step in range(3):
            # Joined while the loop is blocked, so nothing drains mid-step: deterministic counts.
            poster = threading.Thread(target=one_step, args=(step,))
            poster.start()
            poster.join()
            await asyncio.sleep(0)
        got = [[await asyncio.wait_for(q.get(), 5) for _ in range(3)] for q in queues]
        loop.call_soon_threadsafe = real
        return wakeups, got

    wakeups, got = asyncio.run(main())
    assert got == [[(step, i) for step in range(3)] for i in range(8)]
    assert len(wakeups) == 3, "one wake-up per step of 8 events"


def test_a_closed_loop_fails_its_posts_without_blocking_later_ones():
    import asyncio

    from lmforge.serve.app import _Mailbox

    loop = asyncio.new_event_loop()
    box = _Mailbox(loop)
    queue = asyncio.Queue()
    loop.close()
    for _ in range(2):  # the second post must try (and fail) too, not wait on the first's wake-up
        with pytest.raises(RuntimeError):
            box.post(queue, "event")
