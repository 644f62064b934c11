"""Model-based synthesis (``synthesize_from_template``) and black-box teacher answers
(``write_teacher_answers``) against a fake OpenAI-compatible server and a tiny local checkpoint:
accepted / rejected counts, resume after a limit or a crash equal to an uninterrupted run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmforge.config import ConfigError
from lmforge.synth.backends import EngineBackend, OpenAIBackend
from lmforge.synth.template import copies_seed, load_template, parse_sections, synthesize_from_template
from lmforge.synth.teacher import write_teacher_answers


class _CrashAfter:
    """A backend that fails on its (calls + 1)-th batch, like a run killed mid-way."""

    def __init__(self, inner, calls: int) -> None:
        self.inner, self.calls, self.description = inner, calls, inner.description

    def chat(self, conversations, **kwargs):
        if self.calls == 0:
            raise RuntimeError("simulated crash")
        self.calls -= 1
        return self.inner.chat(conversations, **kwargs)


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _stats(path: Path) -> dict:
    return json.loads(Path(f"{path}.stats.json").read_text())


def test_template_run_against_an_openai_endpoint(fake_openai, seed_file, tmp_path, monkeypatch):
    monkeypatch.setenv("SYNTH_TEST_KEY", "sk-test")
    out = tmp_path / "qa.jsonl"
    before = len(fake_openai.requests)
    stats = synthesize_from_template([seed_file], out, teacher=fake_openai.url, api_key_env="SYNTH_TEST_KEY", batch_size=4, max_new_tokens=64, temperature=0.7, seed=3)
    assert stats["seeds_read"] == 22 and stats["seeds_skipped"]["too_short"] == 1 and stats["generated"] == 21
    assert stats["accepted"] == 8 and stats["accepted"] + sum(stats["rejected"].values()) == stats["generated"]
    assert stats["rejected"] == {"truncated": 3, "no_problem": 0, "no_solution": 3, "empty": 0, "too_short": 3, "copied_seed": 3, "duplicate": 1}
    records = _read(out)
    assert [r["seed_id"] for r in records] == ["s0", "s1", "s2", "s7", "s8", "s9", "s15", "s16"]
    assert records[0]["messages"] == [
        {"role": "user", "content": "A train covers 0 km in 2 hours. What is its speed?"},
        {"role": "assistant", "content": "Speed = 0 / 2 = 0 km/h.\nAnswer: 0"},
    ]
    assert records[1]["messages"][0]["content"].startswith("A train") and "**" not in json.dumps(records[1])  # markdown markers
    assert records[2]["messages"][0]["content"].startswith("小明有2个苹果")  # [问题]/[解答] sections
    asked = fake_openai.requests[before:]
    assert len(asked) == 21 and {r["model"] for r in asked} == {"fake-teacher"}  # the endpoint's first model
    assert {r["max_tokens"] for r in asked} == {64} and {r["temperature"] for r in asked} == {0.7}
    assert len({r["seed"] for r in asked}) == 21 and {r["authorization"] for r in asked} == {"Bearer sk-test"}
    # requests run concurrently, so their order at the server is not the seeds' order
    prompts = [r["messages"][0]["content"] for r in asked]
    assert any("This is seed 0:" in p for p in prompts) and all("[Problem]" in p for p in prompts)
    state = _stats(out)
    assert state["finished"] and state["done"] == 22 and state["stats"] == stats


def test_template_resume_after_a_limit_or_a_crash_equals_an_uninterrupted_run(fake_openai, seed_file, tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    kwargs = dict(teacher=fake_openai.url, model="fake-teacher", batch_size=4, max_new_tokens=64, temperature=0.7, seed=3)
    full = tmp_path / "full.jsonl"
    synthesize_from_template([seed_file], full, **kwargs)
    assert fake_openai.requests[-1]["authorization"] == "Bearer EMPTY"

    limited = tmp_path / "limited.jsonl"
    partial = synthesize_from_template([seed_file], limited, limit=7, **kwargs)
    assert partial["seeds_read"] == 7 and not _stats(limited)["finished"]
    with open(limited, "a") as f:  # a batch appended just before a kill, its state never saved
        f.write('{"messages": "half a rec')
    before = len(fake_openai.requests)
    synthesize_from_template([seed_file], limited, **kwargs)
    assert len(fake_openai.requests) - before == 14  # seeds 7..21 minus the short one: nothing asked twice
    assert limited.read_bytes() == full.read_bytes() and _stats(limited)["stats"] == _stats(full)["stats"]

    crashed = tmp_path / "crashed.jsonl"
    with pytest.raises(RuntimeError, match="simulated crash"):
        synthesize_from_template([seed_file], crashed, backend=_CrashAfter(OpenAIBackend(fake_openai.url, model="fake-teacher"), 2), **kwargs)
    assert _stats(crashed)["done"] == 8
    synthesize_from_template([seed_file], crashed, **kwargs)
    assert crashed.read_bytes() == full.read_bytes() and _stats(crashed)["stats"] == _stats(full)["stats"]

    with pytest.raises(ConfigError, match="changed: temperature"):
        synthesize_from_template([seed_file], crashed, **{**kwargs, "temperature": 0.0})
    stats = synthesize_from_template([seed_file], crashed, resume=False, limit=3, **kwargs)
    assert stats["seeds_read"] == 3 and len(_read(crashed)) == 3


def test_template_run_with_a_local_checkpoint_counts_every_seed(tiny_checkpoint, seed_file, tmp_path):
    out = tmp_path / "local.jsonl"
    stats = synthesize_from_template([seed_file], out, teacher=str(tiny_checkpoint), batch_size=4, max_new_tokens=16, limit=10, device="cpu")
    # A random model writes no [Problem]/[Solution]: everything is rejected, and counted.
    assert stats["seeds_read"] == 10 and stats["seeds_skipped"]["too_short"] == 1 and stats["generated"] == 9
    assert stats["accepted"] + sum(stats["rejected"].values()) == 9 and len(_read(out)) == stats["accepted"]
    assert stats["teacher"].startswith("checkpoint ")


def test_local_replies_do_not_depend_on_the_batch(tiny_checkpoint):
    from lmforge.infer.engine import Engine

    backend = EngineBackend(Engine.from_checkpoint(tiny_checkpoint, device="cpu", dtype="float32"))
    convs = [[{"role": "user", "content": text}] for text in ("What is 3 plus 4?", "你好", "A long question about apples and pencils?")]
    together = backend.chat(convs, max_new_tokens=10, temperature=0.9, seeds=[1, 2, 3])
    alone = [backend.chat([c], max_new_tokens=10, temperature=0.9, seeds=[s])[0] for c, s in zip(convs, (1, 2, 3))]
    assert [r.text for r in together] == [r.text for r in alone]
    assert all(r.finish_reason in ("stop", "length") for r in together)


def test_sections_copies_and_templates(tmp_path):
    assert parse_sections("[Problem]\nWhat is 2+2?\n[Solution]\n2+2=4.") == ("What is 2+2?", "2+2=4.")
    assert parse_sections("**[Problem]**: Q here\n\n**[Solution]**: S here") == ("Q here", "S here")
    assert parse_sections("[Solution] first\n[Problem] then") == "no_solution"
    assert parse_sections("just text") == "no_problem"
    assert parse_sections("[Problem]\n\n[Solution]\nfine") == "empty"
    seed = "The Nile is the longest river in Africa, flowing north for about 6,650 km."
    assert copies_seed("the Nile is the longest river   in Africa", seed)
    assert not copies_seed("How long does a boat take to travel 6650 km at 25 km/h?", seed)
    assert set(load_template("problem")) == {"en", "zh"} and "{text}" in load_template("problem-zh")["*"]
    no_placeholder = tmp_path / "t.txt"
    no_placeholder.write_text("Write a problem.")
    with pytest.raises(ConfigError, match="placeholder"):
        load_template(str(no_placeholder))
    with pytest.raises(ConfigError, match="not a builtin"):
        load_template("nope")


def test_teacher_answers_resume_and_stats(fake_openai, tmp_path):
    conversations = [[{"role": "user", "content": f"question {i}"}] for i in range(9)]
    conversations[1] = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "question 1"}]
    conversations[2] = [
        {"role": "user", "content": "question a"}, {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": "question 2"}, {"role": "assistant", "content": "an answer the teacher replaces"},
    ]  # fmt: skip
    conversations[4] = [{"role": "assistant", "content": "no question at all"}]
    conversations[6] = [{"role": "user", "content": "question silent"}]
    full = tmp_path / "teacher.jsonl"
    stats = write_teacher_answers(fake_openai.url, conversations, full, batch_size=4, seed=1)
    assert stats["answered"] == 7 and stats["skipped"] == {"no_user_turn": 1} and stats["rejected"] == {"empty": 1, "truncated": 0}
    records = _read(full)
    assert [r["source_index"] for r in records] == [0, 1, 2, 3, 5, 7, 8]
    assert records[1]["messages"][0] == {"role": "system", "content": "Be brief."}
    assert [m["content"] for m in records[2]["messages"]] == ["question a", "first answer", "question 2", "Teacher reply to 2."]
    assert all(r["messages"][-1]["role"] == "assistant" for r in records)

    crashed = tmp_path / "crashed.jsonl"
    with pytest.raises(RuntimeError, match="simulated crash"):
        write_teacher_answers(fake_openai.url, conversations, crashed, batch_size=4, seed=1, backend=_CrashAfter(OpenAIBackend(fake_openai.url), 1))
    assert _stats(crashed)["done"] == 4
    assert write_teacher_answers(fake_openai.url, conversations, crashed, batch_size=4, seed=1) == stats
    assert crashed.read_bytes() == full.read_bytes()
    with pytest.raises(ConfigError, match="conversations_sha256"):
        write_teacher_answers(fake_openai.url, conversations[:-1] + [[{"role": "user", "content": "question 9"}]], crashed, batch_size=4, seed=1)


def test_teacher_answers_cut_off_at_max_new_tokens_are_rejected(tmp_path):
    from lmforge.synth.backends import Reply

    class CutOff:
        description = "stub teacher"

        def chat(self, conversations, **kwargs):
            return [Reply(f"reply {i}", "length" if i % 2 else "stop") for i, _ in enumerate(conversations)]

    conversations = [[{"role": "user", "content": f"question {i}"}] for i in range(6)]
    stats = write_teacher_answers("stub", conversations, tmp_path / "t.jsonl", batch_size=6, backend=CutOff())
    # a student trained on a cut-off reply would learn to stop mid-answer
    assert stats["answered"] == 3 and stats["rejected"] == {"empty": 0, "truncated": 3}
    assert [r["source_index"] for r in _read(tmp_path / "t.jsonl")] == [0, 2, 4]
