"""``lmforge synth math|pairs|identity|template`` through the real console app."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from lmforge.cli import app
from lmforge.data.document import DataError

runner = CliRunner()


def _read(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_math_pairs_identity_commands(tmp_path):
    math_file, pairs_file, identity_file = tmp_path / "math.jsonl", tmp_path / "pairs.jsonl", tmp_path / "id.jsonl"
    result = runner.invoke(app, ["synth", "math", "--n", "24", "--levels", "1,2", "--langs", "zh,en", "--seed", "3", "--split", "test", "--out", str(math_file)])
    assert result.exit_code == 0, result.output
    problems = _read(math_file)
    assert len(problems) == 24 and {p["split"] for p in problems} == {"test"} and {p["level"] for p in problems} == {1, 2}
    assert {p["lang"] for p in problems} == {"zh", "en"} and "wrote 24 test problems" in result.output

    result = runner.invoke(app, ["synth", "pairs", "--from", str(math_file), "--out", str(pairs_file)])
    assert result.exit_code == 0, result.output
    pairs = _read(pairs_file)
    assert len(pairs) == 24 and all(p["rejected_answer"] != p["answer"] for p in pairs) and "by error kind" in result.output

    result = runner.invoke(app, ["synth", "identity", "--name", "Forgey", "--creator", "Acme", "--n", "10", "--langs", "en", "--out", str(identity_file)])
    assert result.exit_code == 0, result.output
    assert len(_read(identity_file)) == 10 and all(r["lang"] == "en" for r in _read(identity_file))


def test_bad_options_and_bad_records(tmp_path):
    result = runner.invoke(app, ["synth", "math", "--levels", "1,9", "--out", str(tmp_path / "m.jsonl")])
    assert result.exit_code == 2 and "levels: 9" in result.output
    result = runner.invoke(app, ["synth", "math", "--levels", "one", "--out", str(tmp_path / "m.jsonl")])
    assert result.exit_code == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "Answer: 3"}]}) + "\n{oops\n")
    result = runner.invoke(app, ["synth", "pairs", "--from", str(bad), "--out", str(tmp_path / "p.jsonl")])
    assert isinstance(result.exception, DataError) and f"{bad}:2:" in str(result.exception)
    assert not (tmp_path / "p.jsonl").exists()


def test_template_command_continues_a_limited_run(fake_openai, seed_file, tmp_path):
    out = tmp_path / "qa.jsonl"
    args = ["synth", "template", "--seeds", str(seed_file), "--teacher", fake_openai.url, "--out", str(out), "--batch-size", "4", "--no-progress"]
    result = runner.invoke(app, [*args, "--limit", "5"])
    assert result.exit_code == 0, result.output
    assert "5 seeds read" in result.output and len(_read(out)) == 3
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "22 seeds read (1 too short), 21 generated: 8 accepted, 13 rejected" in result.output
    assert len(_read(out)) == 8 and json.loads((tmp_path / "qa.jsonl.stats.json").read_text())["finished"]


def test_template_command_reports_an_unreachable_endpoint(seed_file, tmp_path):
    # Port 9 (discard) has no listener here: connection refused, after the client's retries.
    result = runner.invoke(app, ["synth", "template", "--seeds", str(seed_file), "--teacher", "http://127.0.0.1:9/v1", "--model", "m", "--out", str(tmp_path / "x.jsonl"), "--no-progress"])
    assert result.exit_code == 1 and "rerun the same command to continue" in result.output
