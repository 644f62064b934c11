"""The one training loop: every stage (pretrain, SFT, DPO, distillation) runs through ``Trainer``.

A stage supplies a model (already transformed, e.g. with LoRA adapters — only parameters with
``requires_grad`` are optimized), an objective (``objectives.py``: loss, token count, held-out
loss, frozen reference models), a stateful train iterator (``next()``, ``state_dict()``,
``load_state_dict()``), an optional re-iterable held-out set, and a ``TrainConfig``. The loop
does the rest, identically for all stages:

* AdamW + warmup/cosine/WSD schedule; gradient accumulation where each micro-batch is weighted
  by its share of the step's tokens over all micro-batches and ranks, so a step's loss and
  gradient are the token mean of the global batch; gradient clipping; bf16 autocast (fp16 with
  a GradScaler on CUDA); DDP with ``no_sync`` on accumulation micro-steps.
* held-out loss (and bits per byte) every ``eval_every`` steps and at the end, plus the
  evaluation tasks of ``train.eval_tasks`` (``lmforge.eval.hooks``); metrics to
  JSONL/TensorBoard/wandb; a progress bar; loss-curve and evaluation-curve PNGs.
* atomic checkpoints every ``ckpt_every`` steps and at the end; ``fit(resume=True)`` continues
  from the latest one bit-for-bit (CPU): weights, optimizer, scaler, data position and RNGs are
  all restored, and the learning rate is a function of the step.
* a NaN/inf loss or gradient stops the run before the bad update touches the weights, without
  saving, and raises ``TrainingDiverged`` naming the last good checkpoint.

Hooks are objects with any of ``on_step_end(trainer, step, record)``,
``on_eval(trainer, step, record)``, ``on_checkpoint(trainer, step, path)``; every rank calls them.

Usage (the pretraining stage assembles this for you: ``lmforge.train.pretrain.train``)::

    trainer = Trainer(model, LanguageModeling(), PackedLoader(shards, 256, 8), cfg, run_dir="runs/x")
    result = trainer.fit(resume=True)      # TrainResult(checkpoint=..., metrics={...})
"""

from __future__ import annotations

import math
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from torch import nn

from lmforge import __version__
from lmforge.config import ConfigError
from lmforge.train import checkpoint as ckpt
from lmforge.train.config import TrainConfig
from lmforge.train.distributed import DistEnv, pick_device, resolve_dtype, wrap_ddp
from lmforge.train.flops import peak_flops
from lmforge.train.metrics import EVAL_CURVES_FILE, LOSS_CURVE_FILE, TENSORBOARD_DIR, MetricsLogger, ProgressDisplay, plot_eval_curves, plot_loss_curve, say
from lmforge.train.objectives import Objective
from lmforge.train.optim import build_optimizer
from lmforge.train.schedules import LRSchedule

_PLOT_INTERVAL_S = 60.0  # re-draw the loss curve at a checkpoint at most this often; always at the end


class TrainingDiverged(RuntimeError):
    """The loss or gradient became NaN/inf; the weights were not updated with it."""

    def __init__(self, step: int, loss: float, grad_norm: float, last_checkpoint: Path | None, cfg: TrainConfig) -> None:
        self.step, self.loss, self.grad_norm, self.last_checkpoint = step, loss, grad_norm, last_checkpoint
        what = f"loss {loss}" if not math.isfinite(loss) else f"gradient norm {grad_norm}"
        kept = f"the last good checkpoint is {last_checkpoint}" if last_checkpoint else "no checkpoint was saved yet"
        hints = [f"lower train.lr (now {cfg.lr:g})", f"a longer warmup (train.warmup_steps, now {cfg.warmup_steps})"]
        if cfg.grad_clip <= 0:
            hints.append("enable gradient clipping (train.grad_clip=1.0)")
        if cfg.dtype in ("float16", "auto"):
            hints.append("train.dtype=bfloat16 or float32 if this ran in float16 (fp16 overflows easily)")
        if not cfg.z_loss:
            hints.append("train.z_loss=1e-4")
        super().__init__(
            f"{what} at step {step}; stopped without saving the bad state, {kept}. "
            f"Try {', '.join(hints)}, then "
            + ("continue with --resume (it restarts from that checkpoint)." if last_checkpoint else "run again.")
        )


@dataclass
class TrainResult:
    run_dir: Path
    checkpoint: Path | None  # the final checkpoint
    step: int
    tokens_seen: int
    metrics: dict = field(default_factory=dict)  # the last train record merged with the last eval record
    metrics_path: Path | None = None
    loss_curve: Path | None = None
    tensorboard_dir: Path | None = None
    baseline_loss: float | None = None
    is_main: bool = True

    def summary(self) -> dict:
        """A JSON-friendly digest (used by the pipeline runner and printed by the CLI)."""
        return {
            "checkpoint": str(self.checkpoint) if self.checkpoint else None,
            "metrics": str(self.metrics_path) if self.metrics_path else None,
            "loss_curve": str(self.loss_curve) if self.loss_curve else None,
            "tensorboard": str(self.tensorboard_dir) if self.tensorboard_dir else None,
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "train_loss": self.metrics.get("loss"),
            "val_loss": self.metrics.get("eval_loss"),
            "val_bpt": self.metrics.get("eval_bpt"),
            "unigram_baseline": self.baseline_loss,
        }


def _default_save_weights(model: nn.Module, directory: Path) -> None:
    from lmforge.model.hf import save_pretrained

    save_pretrained(model, directory)


def _default_load_weights(model: nn.Module, directory: Path) -> None:
    from lmforge.model.hf import load_pretrained

    model.load_state_dict(load_pretrained(directory, device="cpu", dtype=torch.float32).state_dict())


def _rng_state() -> dict:
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),
        # plain ints, so that torch.load(weights_only=True) reads it back
        "numpy": {"key": [int(x) for x in np_state["state"]["key"]], "pos": int(np_state["state"]["pos"]),
                  "has_gauss": int(np_state["has_gauss"]), "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state({"bit_generator": "MT19937", "state": {"key": np.array(n["key"], dtype=np.uint32), "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    def __init__(
        self,
        model: nn.Module,
        objective: Objective,
        train_data: Iterator[dict],
        cfg: TrainConfig,
        *,
        run_dir: str | Path,
        env: DistEnv | None = None,
        eval_data: Iterable[dict] | None = None,
        baseline_loss: float | None = None,
        tokenizer_dir: str | Path | None = None,
        recipe: dict | None = None,
        parent_checkpoint: str | None = None,
        flops_per_token: float = 0.0,
        hooks: Iterable = (),
        save_weights: Callable[[nn.Module, Path], None] = _default_save_weights,
        load_weights: Callable[[nn.Module, Path], None] = _default_load_weights,
        stage: str = "pretrain",
    ) -> None:
        self.cfg, self.objective, self.stage = cfg, objective, stage
        self.env = env or DistEnv(device=pick_device(cfg.device))
        self.device = self.env.device
        self.run_dir = Path(run_dir)
        self.train_data, self.eval_data = train_data, eval_data
        self.baseline_loss, self.tokenizer_dir = baseline_loss, tokenizer_dir
        self.recipe, self.parent_checkpoint = recipe or {}, parent_checkpoint
        self.flops_per_token, self.hooks = flops_per_token, list(hooks)
        if cfg.eval_tasks:
            from lmforge.eval.hooks import TaskEvalHook

            self.hooks.append(TaskEvalHook.from_trainer_config(cfg, tokenizer_dir))
        self.save_weights, self.load_weights = save_weights, load_weights
        if cfg.grad_accum < 1 or cfg.batch_size < 1 or cfg.max_steps < 1:
            raise ConfigError(f"train.batch_size, grad_accum and max_steps must be >= 1 (got {cfg.batch_size}, {cfg.grad_accum}, {cfg.max_steps})")
        self.amp_dtype = resolve_dtype(cfg.dtype, self.device)
        if self.amp_dtype == torch.float16 and self.device.type != "cuda":
            raise ConfigError(f"train.dtype=float16 needs a CUDA device (this run is on {self.device.type}); use bfloat16 or float32")

        self.raw_model = model.to(self.device)
        self.optimizer = build_optimizer(self.raw_model, cfg)  # before wrapping: same Parameter objects
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        is_moe = bool(getattr(getattr(model, "config", None), "is_moe", False))
        self.model = wrap_ddp(self.raw_model, self.env, find_unused_parameters=is_moe)
        if cfg.compile:
            self.model = torch.compile(self.model)
        for frozen in objective.frozen_models():
            frozen.to(self.device).eval().requires_grad_(False)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.schedule = LRSchedule.from_config(cfg)
        self.step = 0
        self.tokens_seen = 0
        self.last_checkpoint: Path | None = None
        self.last_train: dict = {}
        self.last_eval: dict = {}
        self._peak = peak_flops(self.device, self.amp_dtype) if flops_per_token else 0.0
        self._step_tokens = 0
        self._logger: MetricsLogger | None = None
        self._progress: ProgressDisplay | None = None
        self._last_plot = 0.0

    # --- pieces -------------------------------------------------------------------------------

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype != torch.float32)

    def _to_device(self, batch: dict) -> dict:
        return {k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def log_record(self, record: dict) -> None:
        """Add a record to metrics.jsonl (and TensorBoard/wandb); for hooks. Rank 0 logs."""
        if self._logger is not None:
            self._logger.log(record)

    def message(self, text: str) -> None:
        """A line on the console above the progress bar (rank 0 only)."""
        if self._progress is not None:
            self._progress.message(text)
        elif self.env.is_main:
            say(text)

    def _call_hooks(self, name: str, *args) -> None:
        for hook in self.hooks:
            fn = getattr(hook, name, None)
            if fn is not None:
                fn(self, *args)

    def train_step(self) -> dict:
        """One optimizer step over ``grad_accum`` micro-batches; returns the step's metrics."""
        cfg, env = self.cfg, self.env
        lr = self.schedule(self.step + 1)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        micro = [next(self.train_data) for _ in range(cfg.grad_accum)]
        counts = [self.objective.loss_tokens(b) for b in micro]
        global_tokens = env.all_reduce_sum([sum(counts)])[0]
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        sums: dict[str, torch.Tensor] = {}
        input_tokens, padding_tokens = 0, 0
        for i, batch in enumerate(micro):
            batch = self._to_device(batch)
            input_tokens += batch["input_ids"].numel()
            padding_tokens += int(batch.get("padding_tokens", 0))
            last = i == len(micro) - 1
            # Gradients are all-reduced once per step, on the last micro-batch.
            sync = nullcontext() if last or not env.is_distributed else self.model.no_sync()
            with sync:
                with self.autocast():
                    loss, metrics = self.objective(self.model, batch)
                # DDP averages gradients over ranks, hence the world_size factor.
                weight = counts[i] * env.world_size / max(global_tokens, 1.0)
                self.scaler.scale(loss * weight).backward()
            loss_sum += loss.detach().double() * counts[i]
            for key, value in metrics.items():
                value = torch.as_tensor(value, device=self.device).double() * counts[i]
                sums[key] = sums[key] + value if key in sums else value
        self.scaler.unscale_(self.optimizer)
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, max_norm))

        # One collective for everything logged: loss, objective metrics, input tokens.
        keys = sorted(sums)
        shapes = [sums[k].shape for k in keys]
        flat = torch.cat([loss_sum.reshape(1)] + [sums[k].reshape(-1) for k in keys]).tolist()
        reduced = env.all_reduce_sum(flat + [float(padding_tokens), float(input_tokens)])
        loss_value = reduced[0] / max(global_tokens, 1.0)
        step = self.step + 1
        if not math.isfinite(loss_value) or (not self.scaler.is_enabled() and not math.isfinite(grad_norm)):
            self.optimizer.zero_grad(set_to_none=True)
            raise TrainingDiverged(step, loss_value, grad_norm, self.last_checkpoint, cfg)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step = step
        self._step_tokens = int(reduced[-1])
        self.tokens_seen += self._step_tokens

        record = {"kind": "train", "step": step, "loss": loss_value, "lr": lr, "grad_norm": grad_norm,
                  "tokens_seen": self.tokens_seen}
        offset = 1
        for key, shape in zip(keys, shapes):
            n = math.prod(shape)
            values = [v / max(global_tokens, 1.0) for v in reduced[offset : offset + n]]
            offset += n
            record[key] = values[0] if not shape else torch.tensor(values).reshape(shape).tolist()
        if any("padding_tokens" in b for b in micro):  # packed or padded batches: the share of compute wasted
            record["padding_fraction"] = reduced[-2] / max(reduced[-1], 1.0)
        return record

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Held-out loss (nats/token) and bits per token over all ranks' share of the held-out set."""
        model = self.raw_model  # no DDP: evaluation needs no gradient sync
        was_training = model.training
        model.eval()
        loss_sum, tokens = 0.0, 0
        extra_sums: dict[str, float] = {}
        with self.autocast():
            for batch in self.eval_data:
                s, n, *extra = self.objective.evaluate(model, self._to_device(batch))
                loss_sum, tokens = loss_sum + s, tokens + n
                for key, value in (extra[0] if extra else {}).items():
                    extra_sums[key] = extra_sums.get(key, 0.0) + float(value)
        model.train(was_training)
        keys = sorted(extra_sums)
        loss_sum, tokens, *extras = self.env.all_reduce_sum([loss_sum, tokens] + [extra_sums[k] for k in keys])
        loss = loss_sum / max(tokens, 1.0)
        record = {"kind": "eval", "step": self.step, "eval_loss": loss, "eval_bpt": loss / math.log(2), "eval_tokens": int(tokens)}
        sums = dict(zip(keys, extras))
        total_bytes, byte_nll = sums.pop("bytes", None), sums.pop("byte_nll", None)
        record.update({f"eval_{k}": v / max(tokens, 1.0) for k, v in sums.items()})
        if total_bytes is not None and byte_nll is not None:  # bits per byte: comparable across tokenizers
            record.update(eval_bytes=int(total_bytes), eval_bpb=byte_nll / math.log(2) / max(total_bytes, 1.0))
        if self.baseline_loss is not None:
            record.update(baseline_loss=self.baseline_loss, baseline_bpt=self.baseline_loss / math.log(2))
        return record

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "schedule": self.schedule.state_dict(),
            "train_data": self.train_data.state_dict(),
            "rng": _rng_state(),  # rank 0's; no randomness differs by rank in these objectives
            "world_size": self.env.world_size,
        }

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.train_data.load_state_dict(state["train_data"])
        _set_rng_state(state["rng"])
        self.step, self.tokens_seen = int(state["step"]), int(state["tokens_seen"])

    def save(self) -> Path:
        """Checkpoint the current step (rank 0 writes; every rank waits for it)."""
        path = ckpt.checkpoint_dir(self.run_dir, self.step)
        if self.env.is_main:
            meta = {
                "stage": self.stage,
                "objective": getattr(self.objective, "name", type(self.objective).__name__),
                "step": self.step,
                "tokens_seen": self.tokens_seen,
                "parent_checkpoint": self.parent_checkpoint,
                "metrics": {**self.last_train, **{k: v for k, v in self.last_eval.items() if k not in ("kind", "step")}},
                "last_eval": self.last_eval,
                "lmforge_version": __version__,
                "world_size": self.env.world_size,
                "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "recipe": self.recipe,
            }
            meta["metrics"].pop("kind", None)
            path = ckpt.save_checkpoint(
                self.run_dir, self.step, lambda d: self.save_weights(self.raw_model, d), self.state_dict(), meta,
                tokenizer_dir=self.tokenizer_dir, keep_last=self.cfg.keep_last,
            )
        self.env.barrier()
        self.last_checkpoint = path
        self._call_hooks("on_checkpoint", self.step, path)
        return path

    def _plot(self) -> Path | None:
        self._last_plot = time.time()
        try:
            plot_eval_curves(self.run_dir / "metrics.jsonl", self.run_dir / EVAL_CURVES_FILE, title=self.recipe.get("name", ""))
            return plot_loss_curve(self.run_dir / "metrics.jsonl", self.run_dir / LOSS_CURVE_FILE, self.baseline_loss,
                                   title=self.recipe.get("name", ""))
        except Exception as exc:  # a plot is a convenience; never let it hide the run's own outcome
            say(f"warning: could not draw the loss curve: {exc}")
            return None

    # --- the loop -----------------------------------------------------------------------------

    def _restore(self, resume: bool) -> bool:
        if self.env.is_main:  # finish what a killed save or prune left behind, before looking
            ckpt.remove_stale_temp_dirs(self.run_dir)
        self.env.barrier()
        existing = ckpt.latest_checkpoint(self.run_dir)
        if existing is None:
            if resume and self.env.is_main:
                say(f"no checkpoint in {self.run_dir} yet; starting from step 0")
            return False
        if not resume:
            raise ConfigError(
                f"{self.run_dir} already has checkpoints (latest {existing.name}); pass --resume to continue that run, "
                "or choose another train.out_dir"
            )
        # A checkpoint that does not fit this recipe (another model shape, seq_len, seed or
        # shards) is a configuration mistake: one line naming it, not a traceback.
        try:
            self.load_weights(self.raw_model, existing)
        except RuntimeError as exc:  # load_state_dict: size mismatch, missing/unexpected keys
            detail = " ".join(str(exc).split())
            raise ConfigError(f"--resume: {existing} does not fit this recipe's model (was the model section changed?): "
                              f"{detail[:300]}") from None
        try:
            self.load_state_dict(ckpt.load_trainer_state(existing))
        except ValueError as exc:
            raise ConfigError(f"--resume: {existing}: {exc}; resume with the settings it was saved with, "
                              "or choose another train.out_dir") from None
        meta = ckpt.read_meta(existing)
        self.parent_checkpoint = meta.get("parent_checkpoint", self.parent_checkpoint)
        self.last_eval = meta.get("last_eval") or {}
        self.last_train = {"kind": "train", "step": self.step,
                           **{k: v for k, v in meta.get("metrics", {}).items() if k not in self.last_eval}}
        self.last_checkpoint = existing
        if self.env.is_main:
            say(f"resuming from {existing} (step {self.step:,}, {self.tokens_seen:,} tokens seen)")
        return True

    def fit(self, resume: bool = False) -> TrainResult:
        cfg, env = self.cfg, self.env
        resumed = self._restore(resume)
        start_step = self.step
        if env.is_main:
            self._logger = MetricsLogger(self.run_dir, cfg.tensorboard, cfg.wandb_project, self.recipe.get("name", ""),
                                         self.recipe, resume_step=self.step if resumed else None)
        progress = self._progress = ProgressDisplay(cfg.max_steps, start_step, enabled=env.is_main and cfg.progress)
        self.raw_model.train()
        window_tokens, window_time = 0, 0.0
        try:
            while self.step < cfg.max_steps:
                t0 = time.perf_counter()
                try:
                    record = self.train_step()
                except TrainingDiverged as exc:
                    if self._logger is not None:
                        self._logger.log({"kind": "diverged", "step": exc.step, "loss": str(exc.loss), "grad_norm": str(exc.grad_norm)})
                    raise
                window_time += time.perf_counter() - t0
                window_tokens += self._step_tokens
                record["tokens_per_s"] = window_tokens / max(window_time, 1e-9)
                record["mfu"] = record["tokens_per_s"] * self.flops_per_token / (self._peak * env.world_size) if self._peak else 0.0
                self.last_train = record
                step = self.step
                # The logged steps depend only on the step, so a resumed run's metrics.jsonl reads
                # exactly like an uninterrupted run's. The first step after (re)starting is still
                # shown on the console, and its time (warm-up, compilation) kept out of tokens/s.
                logged = step % cfg.log_every == 0 or step == cfg.max_steps or step == 1
                first = step == start_step + 1
                if logged or first:
                    window_tokens, window_time = 0, 0.0
                if logged and self._logger is not None:
                    self._logger.log(record)
                progress.update(step, record, logged or first)
                self._call_hooks("on_step_end", step, record)
                final = step == cfg.max_steps
                if self.eval_data is not None and ((cfg.eval_every > 0 and step % cfg.eval_every == 0) or final):
                    self.last_eval = self.evaluate()
                    if self._logger is not None:
                        self._logger.log(self.last_eval)
                    bpb = f", {self.last_eval['eval_bpb']:.3f} bits/byte" if "eval_bpb" in self.last_eval else ""
                    progress.message(f"step {step}: held-out loss {self.last_eval['eval_loss']:.4f} ({self.last_eval['eval_bpt']:.3f} bits/token{bpb})"
                                     + (f", unigram baseline {self.baseline_loss:.4f}" if self.baseline_loss is not None else ""))
                    self._call_hooks("on_eval", step, self.last_eval)
                if (cfg.ckpt_every > 0 and step % cfg.ckpt_every == 0) or final:
                    path = self.save()
                    progress.message(f"step {step}: saved {path}")
                    if env.is_main and not final and time.time() - self._last_plot > _PLOT_INTERVAL_S:
                        self._plot()
        finally:
            progress.close()
            self._progress = None
            if self._logger is not None:
                self._logger.close()
                self._logger = None
                if self.step > start_step or not resumed:
                    self._plot()
        return TrainResult(
            run_dir=self.run_dir,
            checkpoint=self.last_checkpoint,
            step=self.step,
            tokens_seen=self.tokens_seen,
            metrics={**self.last_train, **{k: v for k, v in self.last_eval.items() if k not in ("kind", "step")}},
            metrics_path=self.run_dir / "metrics.jsonl",
            loss_curve=self.run_dir / LOSS_CURVE_FILE if (self.run_dir / LOSS_CURVE_FILE).is_file() else None,
            tensorboard_dir=self.run_dir / TENSORBOARD_DIR if cfg.tensorboard else None,
            baseline_loss=self.baseline_loss,
            is_main=env.is_main,
        )


def train(recipe, resume: bool = False, hooks: Iterable = ()) -> TrainResult:
    """Run the pretraining stage of ``recipe`` in-process (see ``lmforge.train.pretrain.train``)."""
    from lmforge.train.pretrain import train as pretrain_stage

    return pretrain_stage(recipe, resume=resume, hooks=hooks)
