"""Training-curve PNGs for the report card, drawn with matplotlib's Agg canvas (no display).

For each training stage (pretrain, sft, dpo, distill, ...), from the series ``collect`` read out
of its ``metrics.jsonl``:

* ``{stage}_loss.png``: train loss, held-out loss and the unigram baseline when recorded;
* ``{stage}_eval.png``: one panel per other held-out metric (``eval_*``: bits per byte, DPO reward
  accuracy, ...; the train-side value beside it where one is logged) and per in-training task
  metric (``task/<name>/<metric>``; a ``task/<name>/chance`` key draws that task's chance level,
  ``task/<name>/n`` is its item count, not a curve);
* ``{stage}_optim.png``: learning rate and gradient norm.

Usage::

    from lmforge.report.plots import training_figures
    figures = training_figures(collect_training("pretrain", run_dir, notes), out_dir)
    # [{"path": ".../pretrain_loss.png", "title": ..., "png": b"..."}, ...]
"""

from __future__ import annotations

import io
import os
from pathlib import Path

MAX_PANELS = 12
# Held-out keys that are not curves of their own: the loss panel has eval_loss; bits per token
# is the same curve divided by ln 2; the token count and baseline are constants.
_NOT_PANELS = {"eval_loss", "eval_bpt", "eval_tokens", "eval_bytes", "baseline_loss", "baseline_bpt"}
_TRAIN, _HELD_OUT, _EXTRA = "#1f77b4", "#ff7f0e", "#2ca02c"


def metric_label(key: str) -> str:
    """``eval_bpb`` -> "held-out bits per byte", ``task/gsm8k/accuracy`` -> "gsm8k: accuracy"."""
    if key.startswith("task/"):
        parts = key.split("/")
        return f"{parts[1]}: {'/'.join(parts[2:]) or 'value'}"
    named = {"eval_bpt": "held-out bits per token", "eval_bpb": "held-out bits per byte", "eval_ppl": "held-out perplexity"}
    if key in named:
        return named[key]
    return ("held-out " if key.startswith("eval_") else "") + key.removeprefix("eval_").replace("_", " ")


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Binary twin of ``lmforge.io.write_text_atomic``: temp file beside the target, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _figure(n_panels: int, width: float = 3.4, height: float = 2.6, columns: int = 3):
    # The object API with an explicit Agg canvas: no pyplot global state, safe in threads and tests.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = min(columns, n_panels)
    rows = -(-n_panels // columns)
    fig = Figure(figsize=(width * columns, height * rows), dpi=110)
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(rows, columns, i + 1) for i in range(n_panels)]
    return fig, axes


def _png(fig) -> bytes:
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _style(ax, title: str, ylabel: str = "") -> None:
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step", fontsize=8)
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)


def plot_loss(training: dict, baseline: float | None = None) -> bytes | None:
    train = training["series"]["train"].get("loss", [])
    held_out = training["series"]["eval"].get("eval_loss", [])
    if not train and not held_out:
        return None
    baseline_points = training["series"]["eval"].get("baseline_loss")
    if baseline_points:
        baseline = baseline_points[-1][1]
    fig, (ax,) = _figure(1, width=7.5, height=4.0, columns=1)
    if train:
        ax.plot(*zip(*train), label="train loss", color=_TRAIN, linewidth=1.2)
    if held_out:
        ax.plot(*zip(*held_out), "o-", label="held-out loss", color=_HELD_OUT, markersize=4)
    if baseline is not None:
        ax.axhline(baseline, linestyle="--", color="gray", label=f"unigram baseline ({baseline:.2f})")
    # Only a language-modelling loss is in nats per token; DPO's and distillation's are not.
    per_token = training["meta"].get("objective", "language_modeling") == "language_modeling"
    _style(ax, f"{training['stage']}: loss", "loss (nats / token)" if per_token else f"{training['meta']['objective']} loss")
    ax.legend(fontsize=8)
    return _png(fig)


def _eval_panels(training: dict) -> list[dict]:
    series = training["series"]
    panels = []
    # Quality measures (bits per byte, accuracies, margins) first, then the rest alphabetically.
    def order(key: str) -> tuple:
        return (not any(word in key for word in ("bpb", "acc", "margin")), key)

    for key, points in sorted(series["eval"].items(), key=lambda kv: order(kv[0])):
        if key in _NOT_PANELS or key.startswith("task/"):
            continue
        name = key.removeprefix("eval_")
        lines = [("held-out", points, _HELD_OUT, "o-")]
        if name in series["train"]:
            lines.insert(0, ("train", series["train"][name], _TRAIN, "-"))
        panels.append({"title": metric_label(key).removeprefix("held-out "), "lines": lines, "chance": None})
    chance = {key.split("/")[1]: points[-1][1] for key, points in series["task"].items() if key.endswith("/chance")}
    for key, points in sorted(series["task"].items()):
        parts = key.split("/")
        if key.endswith(("/chance", "/n")) or len(parts) < 2:  # a chance level and an item count are not curves
            continue
        panels.append({"title": metric_label(key), "lines": [("task", points, _EXTRA, "o-")], "chance": chance.get(parts[1])})
    return panels


def plot_eval_metrics(training: dict, notes: list[str]) -> bytes | None:
    panels = _eval_panels(training)
    if not panels:
        return None
    if len(panels) > MAX_PANELS:
        notes.append(f"{training['stage']}: {len(panels) - MAX_PANELS} more evaluation curves not drawn "
                     f"({', '.join(p['title'] for p in panels[MAX_PANELS:])})")
        panels = panels[:MAX_PANELS]
    fig, axes = _figure(len(panels))
    for ax, panel in zip(axes, panels):
        for label, points, color, style in panel["lines"]:
            ax.plot(*zip(*points), style, label=label, color=color, markersize=3, linewidth=1)
        if panel["chance"] is not None:
            ax.axhline(panel["chance"], linestyle="--", color="gray", label=f"chance ({panel['chance']:.3g})")
        _style(ax, panel["title"])
        if len(panel["lines"]) > 1 or panel["chance"] is not None:
            ax.legend(fontsize=7)
    return _png(fig)


def plot_optimizer(training: dict) -> bytes | None:
    train = training["series"]["train"]
    keys = [k for k in ("lr", "grad_norm") if train.get(k)]
    if not keys:
        return None
    fig, axes = _figure(len(keys), width=3.8, height=2.6)
    for ax, key in zip(axes, keys):
        ax.plot(*zip(*train[key]), color=_TRAIN, linewidth=1)
        _style(ax, {"lr": "learning rate", "grad_norm": "gradient norm (before clipping)"}[key])
    return _png(fig)


def training_figures(training: dict, out_dir: str | Path, baseline: float | None = None, notes: list[str] | None = None) -> list[dict]:
    """Draw and write one training stage's PNGs; each entry keeps its bytes for embedding."""
    notes = [] if notes is None else notes
    stage = training["stage"]
    drawn = [
        ("loss", "loss", plot_loss(training, baseline),
         "Train loss at each logged step, held-out loss at each evaluation, and the unigram baseline (a model that ignores context) where recorded."),
        ("eval", "evaluation during training", plot_eval_metrics(training, notes),
         "Held-out metrics (beside their train-side values where logged) and in-training task evaluations, against the step."),
        ("optim", "optimizer", plot_optimizer(training), "Learning-rate schedule and gradient norm before clipping."),
    ]
    figures = []
    for suffix, title, png, caption in drawn:
        if png is not None:
            path = write_bytes_atomic(Path(out_dir) / f"{stage}_{suffix}.png", png)
            figures.append({"path": str(path), "title": f"{stage}: {title}", "caption": caption, "png": png})
    return figures
