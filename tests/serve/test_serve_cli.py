"""``lmforge serve`` as a user runs it: a subprocess on a free loopback port, key from the
environment, answering the ``openai`` client, and clear errors for what cannot be served."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest

openai = pytest.importorskip("openai")


def _start(args: list[str], env: dict) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "lmforge.cli", "serve", *args], stderr=subprocess.PIPE, text=True, env=env)
    lines = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if match := re.search(r"API: (http://127\.0\.0\.1:\d+/v1)", line):
            return proc, match.group(1)
    proc.kill()
    raise AssertionError("server did not start:\n" + "".join(lines))


def test_serve_binds_loopback_and_takes_the_key_from_the_environment(dense_ckpt):
    env = {**os.environ, "LMFORGE_API_KEY": "sk-env"}
    proc, base = _start([str(dense_ckpt), "--port", "0", "--model-name", "tiny", "--dtype", "float32", "--log-level", "warning"], env)
    try:
        client = openai.OpenAI(base_url=base, api_key="sk-env", max_retries=0, timeout=60)
        reply = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=5)
        assert reply.choices[0].finish_reason in ("stop", "length")
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=base, api_key="other", max_retries=0).models.list()
    finally:
        proc.terminate()
        proc.wait(30)


def test_serve_refuses_what_it_cannot_serve(tmp_path, dense_ckpt):
    missing = subprocess.run([sys.executable, "-m", "lmforge.cli", "serve", str(tmp_path / "nope")], capture_output=True, text=True)
    assert missing.returncode == 2 and "no such checkpoint" in missing.stderr
    bad = subprocess.run([sys.executable, "-m", "lmforge.cli", "serve", str(dense_ckpt), "--max-batch-size", "0"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--max-batch-size" in bad.stderr


def test_default_model_name_is_the_run_name(tmp_path):
    from lmforge.serve.cli import default_model_name

    step = tmp_path / "runs" / "sft-abc" / "checkpoints" / "step_00000010"
    step.mkdir(parents=True)
    assert default_model_name(step) == "sft-abc"
    assert default_model_name(tmp_path / "runs" / "sft-abc") == "sft-abc"


def test_load_off_thread_returns_the_result_and_raises_the_error_from_an_exited_thread():
    import threading

    from lmforge.serve.scheduler import load_off_thread

    seen = []

    def load(value, *, fail=False):
        seen.append(threading.current_thread())
        if fail:
            raise FileNotFoundError("no such checkpoint")
        return value

    assert load_off_thread(load, 42) == 42
    assert seen[0] is not threading.current_thread() and not seen[0].is_alive()
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        load_off_thread(load, 0, fail=True)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts threads in /proc/self/task")
def test_a_load_off_thread_leaves_no_openmp_pool_behind():
    # A parallel op (a bf16 cast large enough to be split) on the calling thread leaves an
    # OpenMP worker alive for good; through load_off_thread it leaves nothing.
    script = """
import os, time, torch
from lmforge.serve.scheduler import load_off_thread
torch.set_num_threads(2)
threads = lambda: len(os.listdir("/proc/self/task"))
cast = lambda: torch.randn(1 << 20).to(torch.bfloat16)
before = threads()
load_off_thread(cast)
deadline = time.monotonic() + 10  # the exiting thread's workers leave a moment after join()
while threads() > before and time.monotonic() < deadline:
    time.sleep(0.05)
after_off_thread = threads()
cast(); after_main = threads()
print(before, after_off_thread, after_main)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True).stdout
    before, after_off_thread, after_main = map(int, out.split())
    assert after_off_thread == before
    assert after_main > before  # the check can see a pool (else this machine has one core)
