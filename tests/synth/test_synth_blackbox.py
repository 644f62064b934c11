"""Black-box distillation end to end: a teacher (a fake OpenAI-compatible endpoint, or a local
checkpoint) answers prompts, and ``lmforge distill`` fine-tunes the student on its answers."""

from __future__ import annotations

import json

from typer.testing import CliRunner


def _prompts(path, n: int = 24):
    rows = [{"messages": [{"role": "user", "content": f"question {i}"}]} for i in range(n)]
    rows[3] = {"messages": [{"role": "user", "content": "question silent"}]}  # the teacher says nothing
    rows[5] = {"conversations": [{"from": "human", "value": "question 5"}, {"from": "gpt", "value": "an old answer the teacher replaces"}]}
    rows[7] = {"instruction": "question 7"}  # Alpaca without an output: a prompt
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _recipe(tmp_path, student, teacher, prompts, *extra: str):
    recipe = tmp_path / "distill.yaml"
    recipe.write_text(
        f"out_dir: {tmp_path}\nsft: {{val_fraction: 0.1}}\n"
        f"distill: {{mode: blackbox, teacher: '{teacher}', teacher_model: fake-teacher, prompts: [{prompts}], max_new_tokens: 16}}\n"
        f"train: {{init_from: {student}, seq_len: 128, batch_size: 2, max_steps: 4, lr: 0.003, warmup_steps: 1, num_threads: 1, "
        f"device: cpu, dtype: float32, progress: false, tensorboard: false}}\n"
    )
    return [str(recipe), *[a for kv in extra for a in ("--set", kv)]]


def test_blackbox_distill_through_an_openai_endpoint(tiny_checkpoint, fake_openai, tmp_path, monkeypatch):
    from lmforge.cli import app

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    prompts = _prompts(tmp_path / "prompts.jsonl")
    result = CliRunner().invoke(app, ["distill", *_recipe(tmp_path, tiny_checkpoint, fake_openai.url, prompts)])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (tmp_path / "distill" / "teacher_sft.jsonl").read_text().splitlines()]
    assert len(records) == 23  # 24 prompts, one unanswered
    by_index = {r["source_index"]: r["messages"] for r in records}
    assert by_index[5] == [{"role": "user", "content": "question 5"}, {"role": "assistant", "content": "Teacher reply to 5."}]
    assert by_index[7][-1]["content"] == "Teacher reply to 7." and 3 not in by_index
    report = json.loads((tmp_path / "distill" / "distill_data.json").read_text())
    assert report["teacher_answers"]["answered"] == 23 and report["teacher_answers"]["rejected"]["empty"] == 1
    assert all(r["authorization"] == "Bearer sk-test" for r in fake_openai.requests)
    ckpt = tmp_path / "distill" / "checkpoints" / "step_00000004"
    assert json.loads((ckpt / "lmforge.json").read_text())["parent_checkpoint"] == str(tiny_checkpoint)
    sft_report = json.loads((tmp_path / "distill" / "sft_data.json").read_text())
    assert sft_report["train_conversations"] + sft_report["val_conversations"] == 23

    # A rerun with --resume asks the teacher nothing more: its answers are already written.
    asked = len(fake_openai.requests)
    again = CliRunner().invoke(app, ["distill", *_recipe(tmp_path, tiny_checkpoint, fake_openai.url, prompts), "--resume"])
    assert again.exit_code == 0, again.output
    assert len(fake_openai.requests) == asked


def test_blackbox_distill_from_a_local_teacher_checkpoint(tiny_checkpoint, tmp_path):
    from lmforge.cli import app

    prompts = _prompts(tmp_path / "prompts.jsonl", n=12)
    result = CliRunner().invoke(app, ["distill", *_recipe(tmp_path, tiny_checkpoint, tiny_checkpoint, prompts, "train.max_steps=2")])
    stats = json.loads((tmp_path / "distill" / "teacher_sft.jsonl.stats.json").read_text())["stats"]
    # A random teacher writes garbage (reserved tokens that decode to nothing, or text cut off at
    # max_new_tokens): every prompt is accounted for, and nothing of it is kept.
    assert stats["answered"] + sum(stats["rejected"].values()) + stats["skipped"]["no_user_turn"] == 12
    if stats["answered"]:
        assert result.exit_code == 0, result.output
    else:  # nothing to learn from: said so, not a crash
        assert "the teacher answered none" in str(result.exception)


def test_blackbox_distill_needs_a_teacher_and_prompts(tiny_checkpoint, tmp_path):
    from lmforge.cli import app
    from lmforge.config import ConfigError

    prompts = _prompts(tmp_path / "prompts.jsonl")
    no_teacher = CliRunner().invoke(app, ["distill", *_recipe(tmp_path, tiny_checkpoint, "", prompts)])
    assert isinstance(no_teacher.exception, ConfigError) and "distill.teacher is not set" in str(no_teacher.exception)
    no_prompts = CliRunner().invoke(app, ["distill", *_recipe(tmp_path, tiny_checkpoint, "http://127.0.0.1:9/v1", prompts), "--set", "distill.prompts=[]"])
    assert isinstance(no_prompts.exception, ConfigError) and "distill.prompts is not set" in str(no_prompts.exception)
