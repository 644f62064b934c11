"""``lmforge report``: a report card from a fabricated run directory (no training, a few seconds).

The run directory is written by hand in the layout ``lmforge run`` leaves (run.json, stage
directories with stage.json, metrics.jsonl, checkpoints with config.json and lmforge.json,
eval_results.json, math_eval.json), so every number the report shows is known in advance.
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from lmforge.data.document import DataError
from lmforge.report import build_report
from lmforge.report.collect import read_metrics_strict

EVIL = "<script>alert('x')</script>"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _tiny_png() -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1, 1), dpi=20)
    FigureCanvasAgg(fig)
    fig.add_subplot(1, 1, 1).plot([0, 1], [1, 0])
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data if isinstance(data, str) else json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


def _checkpoint(run_dir: Path, step: int, stage: str) -> Path:
    from lmforge.model.config import ModelConfig
    from lmforge.model.hf import to_hf_config

    cfg = ModelConfig(vocab_size=320, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, ffn_hidden=64, max_seq_len=64)
    ckpt = run_dir / "checkpoints" / f"step_{step:08d}"
    _write(ckpt / "config.json", to_hf_config(cfg))
    _write(ckpt / "lmforge.json", {"stage": stage, "step": step, "tokens_seen": step * 256, "lmforge_version": "0.1.0",
                                   "world_size": 1, "saved_at": "2026-01-02T03:04:05+0000", "recipe": {"train": {"device": "cpu", "dtype": "float32"}}})
    return ckpt


def _metrics(n_steps: int, tasks: bool = False) -> str:
    lines = []
    for step in range(1, n_steps + 1):
        lines.append({"kind": "train", "step": step, "loss": 6.0 - 0.1 * step, "lr": 1e-3, "grad_norm": 1.0, "tokens_seen": 256 * step,
                      "tokens_per_s": 1000.0 + step, "mfu": 0.25})
        if step % 10 == 0:
            lines.append({"kind": "eval", "step": step, "eval_loss": 5.5 - 0.1 * step, "eval_bpt": 7.0, "eval_bpb": 1.5 - 0.01 * step,
                          "eval_tokens": 512, "baseline_loss": 6.25, "baseline_bpt": 9.0})
            if tasks:
                lines.append({"kind": "task", "step": step, "task/cmmlu_tiny/accuracy": 0.25 + 0.01 * step,
                              "task/cmmlu_tiny/chance": 0.25, "task/cmmlu_tiny/n": 6})
    return "".join(json.dumps(r) + "\n" for r in lines)


def _stage(root: Path, name: str, seconds: float, summary: dict | None = None, settings: dict | None = None) -> Path:
    directory = root / f"{name}-0123456789ab"
    _write(directory / "stage.json", {"stage": name, "key": "0123456789ab", "seconds": seconds, "settings": settings or {}, "summary": summary or {}})
    return directory


@pytest.fixture
def run_dir(tmp_path) -> Path:
    root = tmp_path / "run"
    stages = {}
    stages["corpus"] = d = _stage(root, "corpus", 1.5)
    _write(d / "corpus.stats.json", {"documents": 10, "bytes": 5000, "by_source": {"stdlib": {"documents": 6, "bytes": 3000}, "man": {"documents": 4, "bytes": 2000}}})
    stages["clean"] = d = _stage(root, "clean", 2.0)
    _write(d / "pipeline" / "stats.json", {
        "name": "default", "read": {"documents": 10, "bytes": 5000}, "output": {"documents": 7, "bytes": 4100, "files": []},
        "totals": {"read": 10, "kept": 7, "dropped": 3}, "seconds": 0.5, "checks": {"adds_up": True, "problems": []},
        "steps": [{"name": "langid", "docs_in": 10, "docs_out": 9, "bytes_in": 5000, "bytes_out": 4600, "changed": 0, "dropped": {"lang_other": {"docs": 1, "bytes": 400}}},
                  {"name": "gopher_repetition", "docs_in": 9, "docs_out": 7, "bytes_in": 4600, "bytes_out": 4100, "changed": 0,
                   "dropped": {"gopher_dup_5gram_char_frac": {"docs": 2, "bytes": 500}}}]})
    _write(d / "pipeline" / "funnel.png", _tiny_png())
    stages["tokenizer"] = d = _stage(root, "tokenizer", 0.5)
    _write(d / "compression.json", {"results": [{"tokenizer": str(d / "tokenizer"), "file": "clean.jsonl.zst", "documents": 7, "chars": 4090,
                                                 "bytes": 4100, "tokens": 1289, "bad_lines": 0, "bytes_per_token": 3.1807, "chars_per_token": 3.173}]})
    stages["shards"] = d = _stage(root, "shards", 0.25)
    _write(d / "shards" / "manifest.json", {"dtype": "uint16", "vocab_size": 320, "documents": {"train": 6, "val": 1},
                                            "splits": {"train": {"tokens": 1200}, "val": {"tokens": 89}}, "unigram_entropy_nats": 6.25})
    stages["pretrain"] = d = _stage(root, "pretrain", 100.0)
    _write(d / "metrics.jsonl", _metrics(30))
    ckpt = _checkpoint(d, 30, "pretrain")
    _write(ckpt / "eval_results.json", {"checkpoint": str(ckpt), "created": "2026-01-02T03:04:05", "lmforge_version": "0.1.0", "tasks": {
        "cmmlu": {"kind": "multiple_choice", "metric": "accuracy", "value": 0.4123, "chance": 0.25, "n": 335, "seconds": 12.5,
                  "details": {"subjects": {"agronomy": {"n": 5, "correct": 3, "accuracy": 0.6}}, "k_shot": 0, "scoring": "letter", "lang": "zh", "skipped": 0}},
        "wiki_bpb": {"kind": "bpb", "metric": "bpb", "value": 1.2345, "chance": None, "n": 40, "seconds": 1.0, "details": {}}}})
    stages["sample"] = d = _stage(root, "sample", 3.0, settings={"sampling": {"temperature": 0.7, "max_new_tokens": 16}})
    _write(d / "samples.json", {"checkpoint": str(ckpt), "samples": [{"prompt": "def ", "completion": f"x(): {EVIL} | `` ``` end"}]})
    stages["sft"] = d = _stage(root, "sft", 50.0)
    _write(d / "metrics.jsonl", _metrics(20, tasks=True))
    _checkpoint(d, 20, "sft")
    stages["evaluate"] = d = _stage(root, "evaluate", 7.0)
    _write(d / "math_eval.json", {"accuracy": {"base": 0.0, "sft": 0.125}, "n": 8, "chats": [{"prompt": "Who are you?", "reply": f"I am {EVIL}"}],
                                  "results": {"base": {"checkpoint": str(ckpt), "accuracy": 0.0, "n": 8, "correct": 0, "by_lang": {"en": {"accuracy": 0.0}}},
                                              "sft": {"checkpoint": "sft", "accuracy": 0.125, "n": 8, "correct": 1, "by_lang": {"en": {"accuracy": 0.125}},
                                                      "examples": [{"prompt": "1+1?", "reply": "2", "pred": "2", "gold": "2", "correct": True}]}}})
    records = [{"stage": name, "status": "cached" if name == "corpus" else "ran", "dir": str(d), "seconds": 0.0} for name, d in stages.items()]
    _write(root / "run.json", {"recipe": {"name": "fab-run"}, "stages": records, "summaries": {}})
    return root


def _png_bytes(html: str) -> list[bytes]:
    return [base64.b64decode(b64) for b64 in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)]


def test_report_has_every_section_with_the_input_numbers(run_dir, tmp_path):
    result = build_report(run_dir, tmp_path / "out")
    files = result["files"]
    md = Path(files["markdown"]).read_text(encoding="utf-8")
    html = Path(files["html"]).read_text(encoding="utf-8")
    assert json.loads(Path(files["json"]).read_text(encoding="utf-8"))["name"] == "fab-run"
    for title in ("Summary", "Environment", "Data", "Tokenizer", "Training", "Evaluation", "Samples", "Timings"):
        assert f"## {title}" in md and f"<h2>{title}</h2>" in html
    for text in (
        "| cmmlu | multiple_choice | accuracy | 41.2% | 25.0% | +16.2 pts | 335 | 12.5s |",  # eval table with chance
        "| wiki_bpb | bpb | bpb | 1.2345 | — | — | 40 | 1.0s |",
        "| langid | 10 | 9 | 1 | 90.0% | 0 | lang_other 1 |",  # funnel
        "| 3.181 | 3.173 |",  # compression: bytes/token, chars/token
        "| sft | 12.5% | 1 / 8 | 12.5% |",  # post-training math
        "| pretrain | ran | 1m 40s |",  # timings from stage.json, not run.json's 0.0 for cached stages
        "| corpus | cached | 1.5s |",
        "| total |  | 2m 44s | 100.0% |",  # 1.5 + 2 + 0.5 + 0.25 + 100 + 3 + 50 + 7 = 164.25 s
        "| final held-out loss | 2.500 | 3.500 |",  # 5.5 - 0.1 * step, pretrain and sft side by side
        "| unigram baseline loss | 6.250 | 6.250 |",
        "| held-out bits per byte | 1.2000 | 1.3000 |",
        "| cmmlu_tiny: accuracy | — | 45.0% |",  # the in-training task record at step 20
        "| agronomy | 5 | 3 | 60.0% |",
    ):
        assert text in md, text
    assert "41.2%" in html and "25.0%" in html and "+16.2 pts" in html
    assert "cmmlu_tiny: n" not in md and "cmmlu_tiny: chance" not in md  # item counts and chance levels are no metrics
    # The summary: parameter count of the checkpoint's config, tokens seen, loss against the baseline.
    parameters = result["model"]["parameters"]["total"]
    assert f"{parameters:,} parameters" in md and "7,680 tokens" in md and "2.500 nats/token" in md and "6.250" in md
    assert result["training"][0]["final"]["eval_loss"] == pytest.approx(2.5)
    assert result["eval_results"][0]["tasks"]["cmmlu"]["value"] == 0.4123
    assert result["built_on"]["python"] in md and result["notes"] == []


def test_images_are_embedded_pngs_and_written_beside_the_markdown(run_dir, tmp_path):
    result = build_report(run_dir, tmp_path / "out")
    html = Path(result["files"]["html"]).read_text(encoding="utf-8")
    embedded = _png_bytes(html)
    names = sorted(Path(p).name for p in result["files"]["images"])
    assert names == ["funnel.png", "pretrain_eval.png", "pretrain_loss.png", "pretrain_optim.png", "sft_eval.png", "sft_loss.png", "sft_optim.png"]
    assert len(embedded) == len(names)
    from matplotlib.image import imread

    for png in embedded:
        assert png.startswith(PNG_MAGIC)
        assert imread(io.BytesIO(png), format="png").shape[0] > 10  # decodes to real pixels
    md = Path(result["files"]["markdown"]).read_text(encoding="utf-8")
    for name in names:
        assert f"]({name})" in md and (tmp_path / "out" / name).read_bytes().startswith(PNG_MAGIC)
    assert "<link" not in html and "<script" not in html  # self-contained, no JavaScript


def test_model_text_is_escaped(run_dir, tmp_path):
    result = build_report(run_dir, tmp_path / "out")
    html = Path(result["files"]["html"]).read_text(encoding="utf-8")
    md = Path(result["files"]["markdown"]).read_text(encoding="utf-8")
    assert "<script" not in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html
    # Markdown: inside a fence longer than the sample's own backtick runs, or entity-escaped.
    assert "````text\nx(): <script>alert('x')</script> | `` ``` end\n````" in md
    assert "I am <script>" in md  # the chat reply, fenced
    assert "<script" not in md.replace("````text\nx(): <script>", "").replace("```text\nI am <script>", "")


def test_missing_stages_are_skipped_with_notes(run_dir, tmp_path):
    for name in ("clean", "tokenizer", "evaluate", "sample"):
        shutil.rmtree(run_dir / f"{name}-0123456789ab")
    shutil.rmtree(run_dir / "pretrain-0123456789ab" / "checkpoints")
    (run_dir / "run.json").unlink()  # found by scanning the stage directories instead
    result = build_report(run_dir, tmp_path / "out")
    md = Path(result["files"]["markdown"]).read_text(encoding="utf-8")
    assert "## Tokenizer" not in md and "## Samples" not in md and "funnel.png" not in md
    assert "## Training" in md and "## Timings" in md and "## Notes" in md
    notes = "\n".join(result["notes"])
    assert "no clean stage" in notes and "no tokenizer stage" in notes and "no checkpoint" in notes
    assert [s["name"] for s in result["stages"]] == ["corpus", "shards", "pretrain", "sft"]


def test_single_training_run_directory(run_dir, tmp_path):
    result = build_report(run_dir / "sft-0123456789ab", tmp_path / "out")
    md = Path(result["files"]["markdown"]).read_text(encoding="utf-8")
    assert result["kind"] == "training" and [t["stage"] for t in result["training"]] == ["sft"]
    assert "### sft" in md and "![sft: loss](sft_loss.png)" in md and "| sft | ran | 50.0s |" in md


def test_malformed_metrics_line_names_file_and_line(run_dir, tmp_path):
    metrics = run_dir / "sft-0123456789ab" / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    lines[2] = '{"kind": "train", "step": 3, "loss": '
    metrics.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=rf"{re.escape(str(metrics))}:3: malformed metrics line"):
        build_report(run_dir, tmp_path / "out")
    assert not (tmp_path / "out" / "report.html").exists()


def test_torn_last_metrics_line_is_skipped(tmp_path):
    path = _write(tmp_path / "metrics.jsonl", '{"kind": "train", "step": 1, "loss": 2.0}\n{"kind": "train", "st')
    notes = []
    assert read_metrics_strict(path, notes) == [{"kind": "train", "step": 1, "loss": 2.0}]
    assert "metrics.jsonl:2: torn last line" in notes[0]


def test_not_a_run_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        build_report(tmp_path)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium not installed")
def test_html_renders_in_headless_chromium(run_dir, tmp_path):
    result = build_report(run_dir, tmp_path / "out")
    dom = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--dump-dom", Path(result["files"]["html"]).as_uri()],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    assert "<table>" in dom and "41.2%" in dom and "&lt;script&gt;" in dom
