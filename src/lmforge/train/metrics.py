"""Where training numbers go: ``metrics.jsonl``, TensorBoard, optional wandb, a PNG, the console.

``metrics.jsonl`` in the run directory has one JSON object per line, flushed as it is written
(a killed run loses nothing already logged):

* ``{"kind": "train", "step", "loss", "lr", "grad_norm", "tokens_seen", "tokens_per_s", "mfu",
  ...objective metrics (ce, aux_loss, expert_load [layer][expert] for MoE)}``
* ``{"kind": "eval", "step", "eval_loss", "eval_bpt", "eval_tokens", "baseline_loss", "baseline_bpt"}``
  (the baseline is the unigram entropy of the training tokens, when the shards record it)
  plus ``eval_bpb`` (bits per byte) when the objective counts the held-out bytes
* ``{"kind": "task", "step", "task/<name>/<metric>", "task/<name>/chance", "task/<name>/n"}``: evaluation
  tasks run during training (``train.eval_tasks``, ``lmforge.eval.hooks``)
* ``{"kind": "diverged", "step", "loss", "grad_norm"}`` when a run stops on NaN/inf.

On resume, records after the checkpoint's step are dropped first (``truncate_metrics``) so the
file reads as one uninterrupted run, and TensorBoard purges its events after that step too.

Usage::

    logger = MetricsLogger("runs/x", tensorboard=True)
    logger.log({"kind": "train", "step": 1, "loss": 5.2})
    logger.close()
    plot_loss_curve("runs/x/metrics.jsonl", "runs/x/loss_curve.png", baseline=4.1)
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from lmforge.cli_common import console
from lmforge.io import human, write_text_atomic

METRICS_FILE = "metrics.jsonl"
LOSS_CURVE_FILE = "loss_curve.png"
EVAL_CURVES_FILE = "eval_curves.png"
TENSORBOARD_DIR = "tensorboard"


def say(text: str, markup: bool = False) -> None:
    """Print a status line on stderr, unwrapped (paths stay copy-pasteable) and markup-safe."""
    console.print(text, soft_wrap=True, markup=markup, highlight=False)


def read_metrics(path: str | Path) -> list[dict]:
    """All complete records of a metrics file (a torn last line from a kill is skipped)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def truncate_metrics(path: str | Path, last_step: int) -> None:
    """Keep only records with ``step <= last_step`` (atomically rewritten)."""
    path = Path(path)
    if not path.is_file():
        return
    kept = [r for r in read_metrics(path) if r.get("step", 0) <= last_step]
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))


def _scalars(record: dict, prefix: str) -> dict[str, float]:
    out = {}
    for key, value in record.items():
        if key in ("kind", "step"):
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[f"{prefix}/{key}"] = float(value)
        elif key == "expert_load" and value:
            # per expert, averaged over layers: one curve per expert is readable, L×E are not
            n_layers = len(value)
            for e in range(len(value[0])):
                out[f"moe/expert_load/{e}"] = sum(layer[e] for layer in value) / n_layers
    return out


class MetricsLogger:
    """Writes records to the JSONL file and, if enabled, TensorBoard and wandb. Rank 0 only."""

    def __init__(
        self,
        run_dir: str | Path,
        tensorboard: bool = True,
        wandb_project: str = "",
        run_name: str = "",
        config: dict | None = None,
        resume_step: int | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / METRICS_FILE
        if resume_step is None:
            self.path.unlink(missing_ok=True)  # a fresh run starts a fresh file
        else:
            truncate_metrics(self.path, resume_step)
        self._file = open(self.path, "a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step hides events a killed run wrote after its last checkpoint.
            self._tb = SummaryWriter(
                str(self.run_dir / TENSORBOARD_DIR), purge_step=None if resume_step is None else resume_step + 1
            )
        self._wandb = self._init_wandb(wandb_project, run_name, config) if wandb_project else None

    def _init_wandb(self, project: str, run_name: str, config: dict | None):
        try:
            import wandb
        except ImportError:
            say("[yellow]warning:[/] train.wandb_project is set but wandb is not installed (pip install wandb); logging locally only", markup=True)
            return None
        # One wandb run per run directory, continued across resumes.
        id_file = self.run_dir / "wandb_id.txt"
        if id_file.is_file():
            run_id = id_file.read_text().strip()
        else:
            run_id = wandb.util.generate_id()
            write_text_atomic(id_file, run_id)
        return wandb.init(project=project, name=run_name or None, id=run_id, resume="allow", config=config or {}, dir=str(self.run_dir))

    def log(self, record: dict) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        step = record.get("step", 0)
        prefix = "eval" if record.get("kind") in ("eval", "task") else "train"
        scalars = _scalars(record, prefix)
        if self._tb is not None:
            for key, value in scalars.items():
                self._tb.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def plot_loss_curve(metrics_path: str | Path, png_path: str | Path, baseline: float | None = None, title: str = "") -> Path | None:
    """Train loss, held-out loss and the unigram baseline against steps, as a PNG (None if no data)."""
    records = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in records if r.get("kind") == "train" and math.isfinite(r.get("loss", math.nan))]
    held_out = [(r["step"], r["eval_loss"]) for r in records if r.get("kind") == "eval"]
    if not train and not held_out:
        return None
    # The object API with an explicit Agg canvas: no pyplot global state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if train:
        ax.plot(*zip(*train), label="train loss", color="tab:blue", linewidth=1)
    if held_out:
        ax.plot(*zip(*held_out), "o-", label="held-out loss", color="tab:orange", markersize=3)
    if baseline is not None:
        ax.axhline(baseline, linestyle="--", color="gray", label=f"unigram baseline ({baseline:.2f})")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats / token)")
    ax.set_title(title or "loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _save_png(fig, png_path)


def eval_series(records: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """Evaluation curves in a run's records: held-out bits per byte (and DPO's reward accuracy
    and margin) from ``eval`` records, every task metric from ``task`` records (chance levels
    and item counts left out). ``{label: [(step, value), ...]}``."""
    series: dict[str, list[tuple[int, float]]] = {}
    for r in records:
        if r.get("kind") == "eval":
            keys = [k for k in ("eval_bpb", "eval_reward_accuracy", "eval_reward_margin") if k in r]
        elif r.get("kind") == "task":
            keys = [k for k in r if k.startswith("task/") and not k.endswith(("/chance", "/n"))]
        else:
            continue
        for key in keys:
            value = r[key]
            if isinstance(value, (int, float)) and math.isfinite(value):
                series.setdefault(key.removeprefix("task/").removeprefix("eval_"), []).append((r["step"], float(value)))
    return series


def _save_png(fig, png_path: str | Path) -> Path:
    # Binary, so not lmforge.io's text helper; the same temp-file-then-rename pattern.
    png_path = Path(png_path)
    tmp = png_path.with_name(f".{png_path.name}.tmp-{os.getpid()}")
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, png_path)
    finally:
        tmp.unlink(missing_ok=True)
    return png_path


def plot_eval_curves(metrics_path: str | Path, png_path: str | Path, title: str = "") -> Path | None:
    """One small panel per evaluation curve (``eval_series``), chance levels dashed; None if the
    run logged none."""
    records = read_metrics(metrics_path)
    series = eval_series(records)
    if not series:
        return None
    chance = {k.removeprefix("task/").removesuffix("/chance"): v for r in records if r.get("kind") == "task"
              for k, v in r.items() if k.endswith("/chance")}
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = min(3, len(series))
    rows = math.ceil(len(series) / cols)
    fig = Figure(figsize=(4.2 * cols, 3.2 * rows), dpi=100)
    FigureCanvasAgg(fig)
    for i, (label, points) in enumerate(sorted(series.items())):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.plot(*zip(*points), "o-", markersize=3, color="tab:green")
        task = label.rsplit("/", 1)[0]
        if task in chance:
            ax.axhline(chance[task], linestyle="--", color="gray", label=f"chance ({chance[task]:.0%})")
            ax.legend(fontsize=8)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(f"{title}: evaluation during training", fontsize=10)
    fig.tight_layout()
    return _save_png(fig, png_path)


class ProgressDisplay:
    """A rich progress bar on a terminal (loss, tokens/s, MFU, ETA); plain lines otherwise."""

    def __init__(self, total_steps: int, start_step: int, enabled: bool = True) -> None:
        self.enabled = enabled
        self.total = total_steps
        self._bar = None
        self._start_time, self._start_step = time.time(), start_step
        if enabled and console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}  {task.fields[speed]} tok/s  MFU {task.fields[mfu]}"),
                TimeRemainingColumn(),
                console=console,
            )
            self._task = self._bar.add_task("train", total=total_steps, completed=start_step, loss="-", speed="-", mfu="-")
            self._bar.start()

    def update(self, step: int, record: dict, logged: bool) -> None:
        if not self.enabled:
            return
        loss, speed, mfu = f"{record['loss']:.4f}", human(record["tokens_per_s"]), f"{100 * record['mfu']:.1f}%"
        if self._bar is not None:
            self._bar.update(self._task, completed=step, loss=loss, speed=speed, mfu=mfu)
        elif logged:
            done = step - self._start_step
            elapsed = time.time() - self._start_time
            eta = elapsed / done * (self.total - step) if done else 0.0
            say(f"step {step}/{self.total}  loss {loss}  lr {record['lr']:.2e}  {speed} tok/s  MFU {mfu}  ETA {eta:.0f}s")

    def message(self, text: str) -> None:
        if self.enabled:
            say(text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
