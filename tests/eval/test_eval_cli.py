"""``lmforge eval CKPT --task ...`` end to end: the table, the results file next to the
checkpoint (merged, or not written), ``--json``, bad specs and bad rows (exit status 2, named
file:row, or skipped and counted with ``--skip-bad``), the real CMMLU dev split, and one run of
the installed console script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from lmforge.eval.tasks import EvalModel

ROOT = Path(__file__).resolve().parents[2]


from eval_helpers import MC_ROWS, write_mc_csv  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(eval_checkpoint, tmp_path_factory) -> Path:
    """A private copy: these tests write eval_results.json into it."""
    return Path(shutil.copytree(eval_checkpoint, tmp_path_factory.mktemp("cli") / "ckpt"))


@pytest.fixture(scope="module")
def task_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tasks")
    write_mc_csv(root / "mc" / "dev" / "facts.csv", MC_ROWS[:3])
    write_mc_csv(root / "mc" / "test" / "facts.csv", MC_ROWS)
    text = root / "history.txt"
    text.write_text("The capital of France is Paris. 下列哪个是水果？苹果。 " * 10, encoding="utf-8")
    return {"mc": root / "mc", "text": text}


def capped(path: Path, max_bytes: int) -> int:
    """The bytes bits per byte reads of a file under max_bytes: whole characters only."""
    return len(path.read_bytes()[:max_bytes].decode("utf-8", errors="ignore").encode("utf-8"))


def lmforge(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """Run ``lmforge ARGS`` in this process through the console entry (its error handling
    included): (exit status, stdout, stderr)."""
    from lmforge.cli import main

    monkeypatch.setenv("COLUMNS", "250")  # rich wraps at the terminal width: keep table rows whole
    monkeypatch.setattr(sys, "argv", ["lmforge", *map(str, args)])
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


def test_three_tasks_print_a_table_and_save_results(checkpoint, task_files, monkeypatch, capsys):
    results_file = checkpoint / "eval_results.json"
    results_file.unlink(missing_ok=True)
    code, out, err = lmforge(monkeypatch, capsys, "eval", checkpoint, "--task", f"mc:{task_files['mc']}",
                             "--task", f"bpb:{task_files['text']}", "--task", "math?n=4&max_new_tokens=8", "--device", "cpu")
    assert code == 0, err
    for name in ("mc:mc", "bpb:history", "math"):
        assert name in err
    table = err[err.index("evaluation of"):]
    assert "chance" in table and "25.0%" in table and f"{len(MC_ROWS)} items" in table
    assert f"{len(task_files['text'].read_bytes()):,} bytes" in table and "4 items" in table
    data = json.loads(results_file.read_text())
    assert data["checkpoint"] == str(checkpoint) and data["lmforge_version"]
    tasks = data["tasks"]
    assert set(tasks) == {"mc:mc", "bpb:history", "math"}
    assert (tasks["mc:mc"]["kind"], tasks["mc:mc"]["metric"], tasks["mc:mc"]["chance"], tasks["mc:mc"]["n"]) == ("multiple_choice", "accuracy", 0.25, len(MC_ROWS))
    assert (tasks["bpb:history"]["kind"], tasks["bpb:history"]["metric"], tasks["bpb:history"]["chance"]) == ("bpb", "bpb", None)
    assert tasks["bpb:history"]["n"] == len(task_files["text"].read_bytes())
    assert (tasks["math"]["kind"], tasks["math"]["n"]) == ("math", 4) and tasks["math"]["details"]["sampling"]["max_new_tokens"] == 8
    assert all(0 <= t["value"] for t in tasks.values()) and all(t["seconds"] > 0 for t in tasks.values())
    assert f"results: {results_file}" in " ".join(err.split())
    # the same numbers as the library gives
    from lmforge.eval.tasks import run_tasks

    model = EvalModel.from_checkpoint(checkpoint, device="cpu", batch_size=32)
    again = run_tasks(model, [f"mc:{task_files['mc']}", f"bpb:{task_files['text']}"])
    assert again["mc:mc"]["value"] == tasks["mc:mc"]["value"]
    assert again["bpb:history"]["value"] == pytest.approx(tasks["bpb:history"]["value"], rel=1e-9)

    # a second run merges: a new task is added, an old one replaced, the third kept
    code, _, err = lmforge(monkeypatch, capsys, "eval", checkpoint, "--task", f"mc:{task_files['mc']}?k_shot=2&name=mc:mc",
                           "--task", f"bpb:{task_files['text']}?max_bytes=50&name=bpb-short", "--device", "cpu")
    assert code == 0, err
    merged = json.loads(results_file.read_text())["tasks"]
    assert set(merged) == {"mc:mc", "bpb:history", "math", "bpb-short"}
    assert merged["mc:mc"]["details"]["k_shot"] == 2 and merged["math"] == tasks["math"] and merged["bpb-short"]["n"] == capped(task_files["text"], 50)


def test_no_save_and_json_output(checkpoint, task_files, monkeypatch, capsys, tmp_path):
    results_file = checkpoint / "eval_results.json"
    before = results_file.read_text() if results_file.exists() else None
    code, out, err = lmforge(monkeypatch, capsys, "eval", checkpoint, "--task", f"bpb:{task_files['text']}?max_bytes=100",
                             "--no-save", "--json", "--device", "cpu")
    assert code == 0, err
    results = json.loads(out)  # stdout is only the JSON; the table and progress go to stderr
    assert list(results) == ["bpb:history"] and results["bpb:history"]["n"] == capped(task_files["text"], 100) > 90
    assert "evaluation of" in err and "results:" not in err
    assert (results_file.read_text() if results_file.exists() else None) == before
    # --out: another file
    other = tmp_path / "elsewhere" / "results.json"
    code, _, err = lmforge(monkeypatch, capsys, "eval", checkpoint, "--task", f"bpb:{task_files['text']}?max_bytes=100",
                           "--out", other, "--device", "cpu")
    assert code == 0, err
    assert list(json.loads(other.read_text())["tasks"]) == ["bpb:history"]
    assert (results_file.read_text() if results_file.exists() else None) == before


@pytest.mark.parametrize("spec, message", [
    ("nope:x", "unknown kind 'nope'"),
    ("bpb", "bpb needs a path"),
    ("mc:d?k_shot=two", "option k_shot='two' is not a valid int"),
])  # fmt: skip
def test_a_bad_spec_exits_2_before_the_model_loads(checkpoint, task_files, monkeypatch, capsys, spec, message):
    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the specs were checked")

    monkeypatch.setattr(EvalModel, "from_checkpoint", no_loading)
    code, out, err = lmforge(monkeypatch, capsys, "eval", checkpoint, "--task", f"bpb:{task_files['text']}", "--task", spec)
    assert code == 2
    err = " ".join(err.split())
    assert err.startswith("error:") and message in err and spec in err and "Traceback" not in err


def test_usage_errors_exit_2(checkpoint, tmp_path, monkeypatch, capsys):
    code, _, err = lmforge(monkeypatch, capsys, "eval", checkpoint)
    assert code == 2 and "nothing to evaluate" in err
    code, _, err = lmforge(monkeypatch, capsys, "eval", tmp_path / "missing", "--task", "math?n=1")
    assert code == 2 and "error:" in err and "missing" in err and "Traceback" not in err
    text, other = tmp_path / "x.txt", tmp_path / "sub" / "x.txt"
    other.parent.mkdir()
    for path in (text, other):
        path.write_text("some text")
    code, _, err = lmforge(monkeypatch, capsys, "eval", checkpoint, "--task", f"bpb:{text}", "--task", f"bpb:{other}")
    assert code == 2 and "two tasks share a name" in err

    # a missing task file is found while the specs are parsed, before the model loads
    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the task paths were checked")

    monkeypatch.setattr(EvalModel, "from_checkpoint", no_loading)
    for spec, missing in ((f"bpb:{tmp_path / 'absent.txt'}", tmp_path / "absent.txt"),
                          (f"mc:{tmp_path}?dev={tmp_path / 'no_dev'}", f"dev={tmp_path / 'no_dev'}")):
        code, _, err = lmforge(monkeypatch, capsys, "eval", checkpoint, "--task", f"bpb:{text}", "--task", spec, "--device", "cpu")
        err = " ".join(err.split())
        assert code == 2 and f"error: task {spec!r}: {missing} does not exist" in err and "Traceback" not in err


def test_a_corrupt_results_file_exits_2(checkpoint, task_files, monkeypatch, capsys, tmp_path):
    bad = tmp_path / "results.json"
    bad.write_text("[]")
    code, _, err = lmforge(monkeypatch, capsys, "eval", checkpoint, "--task", f"bpb:{task_files['text']}?max_bytes=20",
                           "--out", bad, "--device", "cpu")
    err = " ".join(err.split())
    assert code == 2 and f"error: {bad}: not a results file" in err and "Traceback" not in err
    # results are saved as each task finishes: the first save finds the file bad, after the
    # task's line was printed (its number is not lost) and before any further task runs
    assert "bpb:history: bpb " in err and err.index("bpb:history: bpb ") < err.index("error:")
    assert bad.read_text() == "[]"


def test_a_failing_task_keeps_the_results_of_those_before_it(checkpoint, task_files, monkeypatch, capsys, tmp_path):
    import lmforge.eval.tasks as tasks
    from lmforge.data.document import DataError

    real_run_task = tasks.run_task

    def second_fails(model, spec, **kwargs):
        if spec.name == "broken":
            raise DataError(f"{spec.path}:3: a row this test breaks")
        return real_run_task(model, spec, **kwargs)

    monkeypatch.setattr(tasks, "run_task", second_fails)
    out_file = tmp_path / "results.json"
    code, _, err = lmforge(monkeypatch, capsys, "eval", checkpoint, "--task", f"bpb:{task_files['text']}?max_bytes=30&name=first",
                           "--task", f"mc:{task_files['mc']}?name=broken", "--task", f"bpb:{task_files['text']}?max_bytes=20&name=third",
                           "--out", out_file, "--device", "cpu")
    err = " ".join(err.split())
    assert code == 2 and f"error: {task_files['mc']}:3: a row this test breaks" in err and "Traceback" not in err
    saved = json.loads(out_file.read_text())
    assert list(saved["tasks"]) == ["first"] and saved["checkpoint"] == str(checkpoint)
    assert saved["tasks"]["first"]["n"] == capped(task_files["text"], 30) and saved["tasks"]["first"]["kind"] == "bpb"


def test_a_malformed_csv_row_exits_2_or_is_skipped(checkpoint, tmp_path, monkeypatch, capsys):
    path = write_mc_csv(tmp_path / "bad" / "facts.csv", MC_ROWS)
    lines = path.read_text(encoding="utf-8").splitlines()
    lines.insert(3, "9,What is missing?,1,,3,4,A")  # row 4 of the file: option B empty
    lines.insert(5, "10,Answer outside,1,2,3,4,E")  # row 6: answer not among the options
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    code, _, err = lmforge(monkeypatch, capsys, "eval", checkpoint, "--task", f"mc:{path}", "--no-save", "--device", "cpu")
    assert code == 2
    err = " ".join(err.split())
    assert f"error: {path}:4: option B is empty" in err and "Traceback" not in err
    code, out, err = lmforge(monkeypatch, capsys, "eval", checkpoint, "--task", f"mc:{path}", "--skip-bad", "--no-save", "--json", "--device", "cpu")
    assert code == 0, err
    entry = json.loads(out)["mc:facts"]
    assert entry["n"] == len(MC_ROWS) and entry["details"]["skipped"] == 2


def test_real_cmmlu_dev_one_item_per_subject(checkpoint, shared_data, monkeypatch, capsys):
    cmmlu = shared_data / "eval" / "cmmlu_dev"
    if not cmmlu.is_dir():
        pytest.skip(f"{cmmlu} not found")
    subjects = sorted(p.stem for p in cmmlu.glob("*.csv"))
    code, out, err = lmforge(monkeypatch, capsys, "eval", checkpoint, "--task", f"cmmlu:{cmmlu}", "--limit", "1",
                             "--no-save", "--json", "--details", "--device", "cpu")
    assert code == 0, err
    entry = json.loads(out)["cmmlu:cmmlu_dev"]
    assert entry["n"] == len(subjects) == 67 and entry["chance"] == 0.25
    per_subject = entry["details"]["subjects"]
    assert sorted(per_subject) == subjects and all(s["n"] == 1 for s in per_subject.values())
    assert sum(s["correct"] for s in per_subject.values()) == round(entry["value"] * entry["n"])
    assert "cmmlu:cmmlu_dev: subjects" in err  # --details: the per-subject table, chance level included
    table = err[err.index("cmmlu:cmmlu_dev: subjects"):].splitlines()
    assert [c.strip() for c in table[2].split("┃")[1:-1]] == ["", "n", "correct", "accuracy", "chance"]
    rows = {cells[0]: cells[1:] for cells in ([c.strip() for c in line.split("│")[1:-1]] for line in table if line.startswith("│"))}
    assert sorted(rows) == subjects
    assert all(r[0] == "1" and r[1] == str(per_subject[s]["correct"]) and r[3] == "25.0%" for s, r in rows.items())


def test_the_console_script_end_to_end(checkpoint, task_files, tmp_path):
    script = ROOT / ".venv" / "bin" / "lmforge"
    if not script.is_file():
        pytest.skip(f"{script} not installed")
    out_file = tmp_path / "r.json"
    env = {**os.environ, "COLUMNS": "200"}
    run = subprocess.run([str(script), "eval", str(checkpoint), "--task", f"bpb:{task_files['text']}?max_bytes=200&name=short",
                          "--device", "cpu", "--out", str(out_file), "--json"], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["short"]["n"] == capped(task_files["text"], 200)
    assert json.loads(out_file.read_text())["tasks"]["short"] == json.loads(run.stdout)["short"]
    bad = subprocess.run([str(script), "eval", str(checkpoint), "--task", "bpb"], capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 2 and "bpb needs a path" in bad.stderr and "Traceback" not in bad.stderr
