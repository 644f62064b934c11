"""``lmforge generate`` and ``lmforge chat`` end to end on a tiny checkpoint (piped stdin for chat)."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner


from lmforge.cli import app


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, dense_ckpt):
    run = tmp_path_factory.mktemp("run")
    shutil.copytree(dense_ckpt, run / "checkpoints" / "step_00000005")
    (run / "checkpoints" / "step_00000005" / "lmforge.json").write_text("{}")  # the trainer's completion mark
    return run


def _invoke(args, input=None):
    return CliRunner().invoke(app, [str(a) for a in args], input=input)


def test_generate_streams_one_prompt(run_dir):
    result = _invoke(["generate", run_dir, "--prompt", "Hello", "-n", "8", "--seed", "1", "--top-p", "0.9"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Hello")
    assert "step_00000005" in result.stderr  # which checkpoint was resolved
    again = _invoke(["generate", run_dir, "--prompt", "Hello", "-n", "8", "--seed", "1", "--top-p", "0.9", "--no-stream"])
    assert again.stdout == result.stdout


def test_generate_batch_as_json_matches_the_engine(run_dir, dense_ckpt):
    from lmforge.infer import Engine, SamplingConfig

    prompts = ["Hello world", "你好"]
    result = _invoke(["generate", run_dir, "-p", prompts[0], "-p", prompts[1], "-n", "6", "-t", "0", "--json"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    engine = Engine.from_checkpoint(dense_ckpt, device="cpu")
    expected = engine.complete_batch(prompts, SamplingConfig(temperature=0, max_new_tokens=6))
    assert [r["prompt"] for r in records] == prompts
    assert [r["completion"] for r in records] == [e.text for e in expected]
    assert all(r["completion_tokens"] <= 6 and r["finish_reason"] in ("stop", "length") for r in records)


def test_generate_reads_the_prompt_from_stdin(run_dir):
    result = _invoke(["generate", run_dir, "-n", "4", "-t", "0", "--no-stream"], input="The quick\n")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("The quick")


def test_generate_reports_a_missing_checkpoint(tmp_path):
    result = _invoke(["generate", tmp_path / "nope", "-p", "x"])
    assert result.exit_code == 2
    assert "no such checkpoint or run directory" in result.output
    (tmp_path / "empty").mkdir()
    result = _invoke(["generate", tmp_path / "empty", "-p", "x"])
    assert result.exit_code == 2 and "neither a checkpoint" in result.output


def test_generate_rejects_bad_sampling_values(run_dir):
    result = _invoke(["generate", run_dir, "-p", "x", "--top-p", "0"])
    assert result.exit_code == 2 and "top_p" in result.output


def test_chat_with_piped_stdin(run_dir):
    script = "hello there\n你好\n/reset\n/bogus\nagain\n/exit\nnever read\n"
    result = _invoke(["chat", run_dir, "--system", "You are terse.", "-n", "6", "--seed", "0"], input=script)
    assert result.exit_code == 0, result.output
    lines = result.stdout.split("\n")
    assert "(conversation cleared)" in lines
    assert any(line.startswith("unknown command /bogus") for line in lines)
    # three replies: two before /reset, one after; nothing after /exit
    assert len([line for line in lines if line and not line.startswith(("(", "unknown"))]) <= 3
    same = _invoke(["chat", run_dir, "--system", "You are terse.", "-n", "6", "--seed", "0"], input=script)
    assert same.stdout == result.stdout


def test_chat_history_is_multi_turn_and_reset_clears_it(dense_ckpt):
    import io

    from lmforge.infer import Engine, SamplingConfig
    from lmforge.infer.chat import run_chat

    engine = Engine.from_checkpoint(dense_ckpt, device="cpu")
    seen = []
    original = engine.stream_text

    def recording_stream(ids, sampling):
        seen.append(engine.tokenizer.decode(ids))
        return original(ids, sampling)

    engine.stream_text = recording_stream
    out = io.StringIO()
    replies = run_chat(engine, SamplingConfig(temperature=0, max_new_tokens=4), system="sys", stdin=io.StringIO("one\ntwo\n/reset\nthree\n"), stdout=out, interactive=False)
    assert replies == 3
    assert seen[0].count("<|im_start|>user") == 1 and seen[0].startswith("<|im_start|>system\nsys")
    assert seen[1].count("<|im_start|>user") == 2 and seen[1].count("<|im_start|>assistant") == 2
    assert "user\none" in seen[1] and "user\ntwo" in seen[1]
    assert seen[2].count("<|im_start|>user") == 1 and "user\nthree" in seen[2] and seen[2].startswith("<|im_start|>system")


def test_chat_drops_oldest_turns_when_the_context_is_full(dense_ckpt):
    from lmforge.infer import Engine, SamplingConfig
    from lmforge.infer.chat import fit_history

    engine = Engine.from_checkpoint(dense_ckpt, device="cpu")  # 128-token context
    messages = [{"role": "system", "content": "sys"}]
    for i in range(6):
        messages += [{"role": "user", "content": f"question {i} " * 3}, {"role": "assistant", "content": f"answer {i} " * 3}]
    messages.append({"role": "user", "content": "last"})
    ids, dropped = fit_history(engine, messages, SamplingConfig(max_new_tokens=32))
    assert dropped > 0 and dropped % 2 == 0
    assert len(ids) <= 128 - 32
    text = engine.tokenizer.decode(ids)
    assert text.startswith("<|im_start|>system\nsys") and "user\nlast" in text and "question 0" not in text


def test_chat_reply_budget_larger_than_the_context_is_reduced(run_dir):
    result = _invoke(["chat", run_dir, "-n", "1000", "-t", "0"], input="hi\n")
    assert result.exit_code == 0, result.output
    assert "using 64" in result.stderr  # the tiny checkpoint's context is 128 tokens
