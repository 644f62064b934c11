"""The server through real clients: the official ``openai`` package, and raw HTTP for the requests
a well-behaved client would never send."""

from __future__ import annotations

import http.client
import json
import socket
from urllib.parse import urlparse

import pytest
from serve_helpers import health, raw, running_server, slowed, wait_until

from lmforge.infer import SamplingConfig

openai = pytest.importorskip("openai")


def _client(url: str, key: str = "none"):
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60)


def test_models_lists_the_served_model(server):
    models = _client(server).models.list()
    assert [m.id for m in models.data] == ["tiny"]
    assert _client(server).models.retrieve("tiny").id == "tiny"
    status, body = raw(server, "GET", "/v1/models/other")
    assert status == 404 and body["error"]["code"] == "model_not_found"


def test_chat_completion_matches_the_engine(server, engine):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "你好，世界"}]
    reply = _client(server).chat.completions.create(model="tiny", messages=messages, max_tokens=12, temperature=0)
    want = engine.generate([engine.encode_chat(messages)], SamplingConfig(max_new_tokens=12, temperature=0))[0]
    assert reply.object == "chat.completion"
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == want.text
    assert reply.choices[0].finish_reason == want.finish_reason
    assert reply.usage.prompt_tokens == len(want.prompt_ids)
    assert reply.usage.completion_tokens == len(want.token_ids)
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_chat_stream_reassembles_to_the_same_reply_with_usage(server):
    client = _client(server)
    kwargs = dict(model="tiny", messages=[{"role": "user", "content": "Hello"}], max_tokens=20, temperature=0.9, seed=7, ignore_eos=True)
    whole = client.chat.completions.create(**{k: v for k, v in kwargs.items() if k != "ignore_eos"}, extra_body={"ignore_eos": True})
    chunks = list(client.chat.completions.create(**{k: v for k, v in kwargs.items() if k != "ignore_eos"}, extra_body={"ignore_eos": True},
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1  # really streamed
    assert text == whole.choices[0].message.content  # same seed, same reply
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 20


def test_stream_ends_with_done_marker(server):
    u = urlparse(server)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    conn.request("POST", "/v1/chat/completions", json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                                                              "max_tokens": 4, "stream": True}))
    response = conn.getresponse()
    assert response.status == 200 and response.getheader("content-type").startswith("text/event-stream")
    events = [e for e in response.read().decode().split("\n\n") if e]
    conn.close()
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[-2][6:])["choices"][0]["finish_reason"] in ("stop", "length")


def test_completions_text_tokens_echo_n_and_stop(server, engine):
    client = _client(server)
    out = client.completions.create(model="tiny", prompt=["Hello", "你好"], max_tokens=6, temperature=0, n=2)
    assert len(out.choices) == 4 and [c.index for c in out.choices] == [0, 1, 2, 3]
    want = [engine.generate([engine.encode(t)], SamplingConfig(max_new_tokens=6, temperature=0))[0].text for t in ("Hello", "你好")]
    assert [c.text for c in out.choices] == [want[0], want[0], want[1], want[1]]  # greedy: n copies agree
    assert out.usage.prompt_tokens == len(engine.encode("Hello")) + len(engine.encode("你好"))
    ids = client.completions.create(model="tiny", prompt=engine.encode("Hello"), max_tokens=6, temperature=0)
    assert ids.choices[0].text == want[0]
    echoed = client.completions.create(model="tiny", prompt="Hello", max_tokens=3, temperature=0, echo=True)
    assert echoed.choices[0].text.startswith("Hello")
    # A stop string taken from the greedy continuation itself: the reply ends right before it.
    full = engine.generate([engine.encode("Once")], SamplingConfig(max_new_tokens=30, temperature=0, ignore_eos=True))[0].text
    stop = full[5:7]
    cut = client.completions.create(model="tiny", prompt="Once", max_tokens=30, temperature=0, stop=[stop], extra_body={"ignore_eos": True})
    assert cut.choices[0].text == full[: full.index(stop)] and cut.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].text for c in client.completions.create(model="tiny", prompt="Once", max_tokens=30, temperature=0,
                                                                            stop=[stop], stream=True, extra_body={"ignore_eos": True}) if c.choices)
    assert streamed == cut.choices[0].text


def test_seeded_sampling_is_reproducible_and_n_choices_differ(server):
    client = _client(server)
    kwargs = dict(model="tiny", messages=[{"role": "user", "content": "Once"}], max_tokens=16, temperature=1.0, seed=11, n=3)
    a, b = client.chat.completions.create(**kwargs), client.chat.completions.create(**kwargs)
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    assert len({c.message.content for c in a.choices}) > 1


BAD_REQUESTS = [
    # (body, status, param or None, words in the message)
    ("{not json", 400, None, "not valid JSON"),
    ("[1, 2]", 400, None, "JSON object"),
    ({"messages": [{"role": "user", "content": "hi"}]}, 400, "model", "missing"),
    ({"model": "tiny"}, 400, "messages", "missing"),
    ({"model": "tiny", "messages": []}, 400, "messages", "at least 1"),
    ({"model": "tiny", "messages": [{"role": "bot", "content": "hi"}]}, 400, "messages.0.role", "'user'"),
    ({"model": "tiny", "messages": [{"role": "user"}], "temperature": "hot"}, 400, "temperature", "valid number"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": "10"}, 400, "max_tokens", "valid integer"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, 400, "max_tokens", "greater than or equal to 1"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "temperature": 3}, 400, "temperature", "less than or equal to 2"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "top_p": 0}, 400, "top_p", "greater than 0"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "n": 100}, 400, "n", "less than or equal"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stop": [""]}, 400, None, "stop"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}, 400, "stream", "valid boolean"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1000}, 400, "messages", "maximum context length is 128"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "hello " * 200}]}, 400, "messages", "maximum context length"),
    ({"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}, 404, "model", "does not exist"),
    ({"model": "tiny", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, 400, None, "image_url"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "logprobs": True}, 400, "logprobs", "not supported"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "presence_penalty": 0.5}, 400, "presence_penalty", "not supported"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "seed": 2**64}, 400, "seed", "less than"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "json_object"}}, 400, "response_format", "not supported"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]}, 400, "tools", "not supported"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "logit_bias": {"5": 10}}, 400, "logit_bias", "not supported"),
    ("[" * 100_000, 400, None, "not valid JSON"),
    ('{"model": "tiny", "max_tokens": 1' + "0" * 5000 + "}", 400, None, "not valid JSON"),
]


@pytest.mark.parametrize("body,status,param,words", BAD_REQUESTS, ids=[str(i) for i in range(len(BAD_REQUESTS))])
def test_bad_chat_requests_get_openai_style_4xx(server, body, status, param, words):
    payload = body if isinstance(body, str) else json.dumps(body)
    got_status, got = raw(server, "POST", "/v1/chat/completions", payload)
    assert got_status == status, got
    error = got["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert words in error["message"]
    if param is not None:
        assert error["param"] == param


@pytest.mark.parametrize("body,words", [
    ({"model": "tiny", "prompt": []}, "empty"),
    ({"model": "tiny", "prompt": [999999]}, "outside the vocabulary"),
    ({"model": "tiny", "prompt": "hi", "suffix": "x"}, "suffix"),
    ({"model": "tiny", "prompt": 5}, "prompt"),
    ({"model": "tiny", "prompt": "hi", "max_tokens": 500}, "maximum context length"),
])
def test_bad_completion_requests_get_4xx(server, body, words):
    status, got = raw(server, "POST", "/v1/completions", json.dumps(body))
    assert status == 400 and words in got["error"]["message"]


def test_edge_values_that_are_valid_are_served(server):
    """Explicit nulls mean defaults; extreme but legal values are clamped, not fatal to the batch."""
    client = _client(server)
    base = dict(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    for extra in [dict(n=None, stream=None, presence_penalty=None, top_k=None), dict(temperature=1e-38), dict(top_k=2**31),
                  dict(seed=2**63 - 2, n=2), dict(seed=-5), dict(response_format={"type": "text"}, tool_choice="none")]:
        status, body = raw(server, "POST", "/v1/chat/completions", json.dumps({**base, **extra}))
        assert status == 200, (extra, body)
        assert all(c["finish_reason"] in ("stop", "length") for c in body["choices"])
    assert client.chat.completions.create(**base).choices  # the server is fine afterwards
    assert health(server)["failed"] == 0


def test_the_server_survives_bad_requests_and_http_oddities(server):
    for path, method in [("/v1/nothing", "GET"), ("/v1/models", "POST"), ("/v1/chat/completions", "GET")]:
        status, body = raw(server, method, path)
        assert status in (404, 405) and "error" in body
    status, body = raw(server, "POST", "/v1/chat/completions", b"\xff\xfe not utf-8")
    assert status == 400 and body["error"]["code"] == "invalid_json"
    # JSON sent as a form (curl -d) is still read as JSON.
    status, body = raw(server, "POST", "/v1/completions", json.dumps({"model": "tiny", "prompt": "hi", "max_tokens": 2}),
                       headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200 and body["object"] == "text_completion"
    # A connection that sends half a request and vanishes.
    u = urlparse(server)
    with socket.create_connection((u.hostname, u.port)) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{\"model\":")
    assert health(server)["status"] == "ok"


@pytest.fixture(scope="module")
def slow_server(dense_ckpt):
    """A server whose decoding takes >= 5 ms a token: 120 tokens outlast any disconnect's notice."""
    from lmforge.infer import Engine
    from lmforge.serve.app import create_app

    engine = slowed(Engine.from_checkpoint(dense_ckpt, device="cpu", dtype="float32", overflow="error"), 0.005)
    with running_server(create_app(engine, "tiny")) as url:
        yield url


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_disconnects_cancels_its_generation(slow_server, stream):
    server = slow_server
    before = health(server)
    u = urlparse(server)
    body = json.dumps({"model": "tiny", "prompt": "Once", "max_tokens": 120, "stream": stream, "ignore_eos": True, "temperature": 0})
    s = socket.create_connection((u.hostname, u.port))
    s.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}".encode())
    assert wait_until(lambda: health(server)["submitted"] > before["submitted"])  # the server took it on
    if stream:  # tokens are flowing
        received = b""
        while b"data:" not in received:
            received += s.recv(4096)
    s.close()
    assert wait_until(lambda: health(server)["cancelled"] == before["cancelled"] + 1), health(server)
    assert wait_until(lambda: health(server)["active"] == 0)


def test_api_key_is_required_when_set(engine):
    from lmforge.serve.app import create_app

    with running_server(create_app(engine, "tiny", api_key="sk-test")) as url:
        with pytest.raises(openai.AuthenticationError):
            _client(url, "wrong").models.list()
        status, body = raw(url, "GET", "/v1/models", headers={})
        assert status == 401 and body["error"]["code"] == "invalid_api_key"
        assert [m.id for m in _client(url, "sk-test").models.list().data] == ["tiny"]
        assert raw(url, "GET", "/health")[0] == 200  # liveness needs no key
        assert raw(url, "GET", "/")[0] == 200  # the page asks for the key itself
