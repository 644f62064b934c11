"""Metrics sinks: JSONL records truncated on resume, optional wandb, and the loss-curve PNG."""

import json
import sys
import types

from lmforge.train.metrics import MetricsLogger, plot_loss_curve, read_metrics, truncate_metrics


def test_resume_truncates_records_after_the_checkpoint_and_skips_a_torn_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"kind": "train", "step": s, "loss": 1.0 / s}) for s in range(1, 8)]
    lines.append(json.dumps({"kind": "eval", "step": 5, "eval_loss": 0.3}))
    path.write_text("\n".join(lines) + '\n{"kind": "train", "st')  # killed mid-write
    assert len(read_metrics(path)) == 8
    truncate_metrics(path, 5)
    assert [(r["kind"], r["step"]) for r in read_metrics(path)] == [("train", s) for s in range(1, 6)] + [("eval", 5)]
    logger = MetricsLogger(tmp_path, tensorboard=False, resume_step=3)
    logger.log({"kind": "train", "step": 4, "loss": 9.0})
    logger.close()
    records = read_metrics(path)
    assert [r["step"] for r in records] == [1, 2, 3, 4] and records[-1]["loss"] == 9.0
    MetricsLogger(tmp_path, tensorboard=False).close()  # a fresh run starts a fresh file
    assert read_metrics(path) == []


def test_wandb_gets_scalars_and_one_run_id_per_run_dir(tmp_path, monkeypatch):
    calls = []
    fake = types.SimpleNamespace(
        util=types.SimpleNamespace(generate_id=lambda: "abc123"),
        init=lambda **kw: calls.append(("init", kw)) or types.SimpleNamespace(
            log=lambda data, step: calls.append(("log", step, data)), finish=lambda: calls.append(("finish",))),
    )
    monkeypatch.setitem(sys.modules, "wandb", fake)
    logger = MetricsLogger(tmp_path, tensorboard=False, wandb_project="proj", run_name="r", config={"a": 1})
    logger.log({"kind": "train", "step": 3, "loss": 2.5, "expert_load": [[0.25, 0.75], [0.75, 0.25]]})
    logger.log({"kind": "eval", "step": 3, "eval_loss": 2.0})
    logger.close()
    assert calls[0][1]["id"] == "abc123" and calls[0][1]["project"] == "proj" and calls[0][1]["resume"] == "allow"
    assert calls[1] == ("log", 3, {"train/loss": 2.5, "moe/expert_load/0": 0.5, "moe/expert_load/1": 0.5})
    assert calls[2] == ("log", 3, {"eval/eval_loss": 2.0})
    assert (tmp_path / "wandb_id.txt").read_text() == "abc123"


def test_loss_curve_png(tmp_path):
    path = tmp_path / "metrics.jsonl"
    assert plot_loss_curve(path, tmp_path / "a.png") is None  # nothing logged yet
    path.write_text("\n".join(json.dumps(r) for r in [
        {"kind": "train", "step": 1, "loss": 5.0}, {"kind": "train", "step": 2, "loss": 4.0},
        {"kind": "eval", "step": 2, "eval_loss": 4.2}, {"kind": "diverged", "step": 3, "loss": "nan"},
    ]))
    png = plot_loss_curve(path, tmp_path / "loss.png", baseline=5.5, title="t")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
