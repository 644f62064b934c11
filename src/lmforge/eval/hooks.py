"""Evaluation tasks during training: a trainer hook that runs ``train.eval_tasks`` every few steps.

The trainer adds it when a recipe lists tasks::

    train:
      eval_every: 100
      eval_tasks: ["mc:evals/cmmlu_dev?limit=100", "math?n=50", "bpb:evals/wiki.txt?max_bytes=100000"]
      eval_tasks_every: 0        # 0 = with every held-out evaluation; always at the last step

Each run logs one record to ``metrics.jsonl`` (``{"kind": "task", "step", "task/<name>/<metric>",
"task/<name>/chance", "task/<name>/n"}``), prints a line, and the trainer draws the curves in
``eval_curves.png``. The tasks run on rank 0 with the model in eval mode under the run's autocast;
other ranks wait at a barrier. Keep them light (``limit``, ``max_bytes``): they cost training time.
A task that fails is logged (``{"kind": "task", "step", "error"}``) and training goes on.
"""

from __future__ import annotations

from pathlib import Path

from lmforge.config import ConfigError


class TaskEvalHook:
    """Runs evaluation tasks on the model being trained; see the module docstring."""

    def __init__(self, specs: list[str], every: int, max_steps: int, tokenizer_dir: str | Path | None, batch_size: int = 16) -> None:
        from lmforge.eval.tasks import parse_task

        if not tokenizer_dir:
            raise ConfigError("train.eval_tasks needs a tokenizer: this run has none (train.tokenizer, or shards with one)")
        self.specs = [parse_task(s) for s in specs]
        self.every, self.max_steps = every, max_steps
        self.tokenizer_dir, self.batch_size = Path(tokenizer_dir), batch_size
        self._tokenizer = None

    @classmethod
    def from_trainer_config(cls, cfg, tokenizer_dir) -> TaskEvalHook:
        return cls(cfg.eval_tasks, cfg.eval_tasks_every or cfg.eval_every, cfg.max_steps, tokenizer_dir)

    def due(self, step: int) -> bool:
        return step == self.max_steps or (self.every > 0 and step % self.every == 0)

    def on_step_end(self, trainer, step: int, record: dict) -> None:
        if not self.due(step):
            return
        if trainer.env.is_main:
            # A failing task must not cost the run: it is logged and training goes on (the
            # checkpoint of this step is saved after the hooks), and every rank reaches the barrier.
            try:
                trainer.log_record(self.evaluate(trainer, step))
            except Exception as exc:  # noqa: BLE001
                trainer.log_record({"kind": "task", "step": step, "error": f"{type(exc).__name__}: {exc}"})
                from lmforge.train.metrics import say

                # say, not trainer.message: a failure is shown even with train.progress=false.
                say(f"step {step}: evaluation tasks failed, training goes on: {type(exc).__name__}: {exc}")
        trainer.env.barrier()

    def evaluate(self, trainer, step: int) -> dict:
        from transformers import AutoTokenizer

        from lmforge.eval.tasks import EvalModel, format_value, run_tasks

        if self._tokenizer is None:
            self._tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_dir)
        model = trainer.raw_model
        was_training = model.training
        model.eval()
        try:
            with trainer.autocast():
                results = run_tasks(EvalModel(model, self._tokenizer, batch_size=self.batch_size), self.specs)
        finally:
            model.train(was_training)
        out = {"kind": "task", "step": step}
        for name, entry in results.items():
            out[f"task/{name}/{entry['metric']}"] = entry["value"]
            out[f"task/{name}/n"] = entry["n"]
            if entry.get("chance") is not None:
                out[f"task/{name}/chance"] = entry["chance"]
        shown = ", ".join(f"{name} {format_value(entry)}" for name, entry in results.items())
        trainer.message(f"step {step}: {shown}")
        return out
