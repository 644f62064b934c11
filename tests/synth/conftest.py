"""Fixtures for the synth tests: a tiny random checkpoint (its replies are garbage, which is what
the rejection counting needs) and a fake OpenAI-compatible server on 127.0.0.1 with canned
replies, talked to through the real ``openai`` client."""

from __future__ import annotations

import json
import re
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A random tiny Qwen3-style checkpoint with a tokenizer trained on math and template text."""
    from lmforge.model import ModelConfig, Transformer
    from lmforge.model.hf import save_pretrained
    from lmforge.synth.math import generate_problems
    from lmforge.synth.template import BUILTIN_TEMPLATES
    from lmforge.tokenizer.train import TokenizerConfig, train_tokenizer

    root = tmp_path_factory.mktemp("synth-ckpt")
    texts = [m["content"] for r in generate_problems(200, seed=5) for m in r["messages"]] + list(BUILTIN_TEMPLATES.values()) * 5
    tok = train_tokenizer(texts, root / "tok", TokenizerConfig(vocab_size=400, num_reserved_tokens=4))
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=400, d_model=48, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=512, qk_norm=True, tie_embeddings=True))
    ckpt = save_pretrained(model, root / "ckpt")
    for f in tok.iterdir():
        shutil.copy(f, ckpt / f.name)
    return ckpt


def canned_reply(prompt: str) -> tuple[str, str]:
    """The fake teacher's answer to a prompt, chosen by the 'seed N' marker in it:
    N % 7 -> 0-2 well-formed, 3 no [Solution], 4 problem copied from the seed, 5 too short,
    6 truncated; seed 14 repeats seed 7's problem. Teacher-answer prompts ('question N') get a plain reply; 'question silent' none."""
    m = re.search(r"seed (\d+)", prompt)
    if m is None:
        q = re.search(r"question (\w+)", prompt)
        if q and q.group(1) == "silent":
            return "", "stop"
        return f"Teacher reply to {q.group(1) if q else '?'}.", "stop"
    n = int(m.group(1))
    if n == 14:  # the same problem as seed 7's: a duplicate
        n = 7
    well_formed = f"[Problem]\nA train covers {n * 10} km in 2 hours. What is its speed?\n\n[Solution]\nSpeed = {n * 10} / 2 = {n * 5} km/h.\nAnswer: {n * 5}"
    return {
        0: (well_formed, "stop"),
        1: ("**[Problem]** " + well_formed.split("[Problem]\n")[1].replace("[Solution]", "**[Solution]**"), "stop"),
        2: (f"[问题]\n小明有{n}个苹果，又买了3个，现在有几个？\n[解答]\n{n} + 3 = {n + 3}，所以小明现在有{n + 3}个苹果。\n答案：{n + 3}", "stop"),
        3: (f"[Problem]\nWhat is {n} plus 1? I forgot the solution section entirely here.", "stop"),
        4: (f"[Problem]\nThis is seed {n}: facts about rivers and their lengths in kilometers.\n[Solution]\nRivers are long, and this solution is long enough.", "stop"),
        5: ("[Problem]\nHi?\n[Solution]\nYes.", "stop"),
        6: (well_formed[:40], "length"),
    }[n % 7]


class FakeOpenAI:
    """A ThreadingHTTPServer speaking the two routes the client uses; records what it was asked."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def _send(self, payload: dict, status: int = 200) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path.rstrip("/") == "/v1/models":
                    return self._send({"object": "list", "data": [{"id": "fake-teacher", "object": "model", "created": 0, "owned_by": "tests"}]})
                self._send({"error": {"message": "not found"}}, 404)

            def do_POST(self):
                if self.path.rstrip("/") != "/v1/chat/completions":
                    return self._send({"error": {"message": "not found"}}, 404)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.requests.append({**body, "authorization": self.headers.get("Authorization")})
                text, finish = canned_reply(body["messages"][-1]["content"])
                self._send({
                    "id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                })  # fmt: skip

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def fake_openai():
    server = FakeOpenAI()
    yield server
    server.close()


@pytest.fixture
def seed_file(tmp_path) -> Path:
    """22 seed snippets (one too short to be asked), as jsonl with ids."""
    path = tmp_path / "seeds.jsonl"
    rows = [{"id": f"s{n}", "text": f"This is seed {n}: facts about rivers and their lengths in kilometers."} for n in range(21)]
    rows.insert(9, {"id": "short", "text": "tiny"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
