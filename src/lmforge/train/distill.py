"""Distillation: a student checkpoint learns from a teacher, on the one ``Trainer``.

Two modes, chosen by the recipe's ``distill.mode`` (``DistillConfig``):

* ``whitebox`` (here): the teacher is a checkpoint with the student's tokenizer. On the
  assistant tokens of ``sft``'s packed chat data the student minimizes

      loss = α · CE(student, labels) + (1 − α) · T² · KL(p_teacher^T ‖ p_student^T)

  where ``p^T = softmax(logits / T)``. The forward KL (teacher first) makes the student cover
  all of the teacher's probability mass; T > 1 exposes the teacher's ranking of unlikely
  tokens, and T² keeps the KL gradient's scale independent of T (Hinton et al., 2015). The
  teacher runs under ``torch.no_grad`` with the same positions and block-diagonal mask as the
  student, and is never trained. Any teacher shape works (an MoE teacher for a dense student,
  a deeper or wider one): only the vocabularies must agree.
* ``blackbox`` (``lmforge.synth.teacher``): the teacher writes answers that become SFT data.

Usage::

    lmforge distill recipe.yaml --set train.init_from=runs/demo/sft --set distill.teacher=runs/big/sft \\
        --set 'sft.train=[chat.jsonl]' --set distill.alpha=0.5 --set distill.temperature=2

The run directory (default ``{out_dir}/distill``) gets the Trainer's checkpoints and
metrics.jsonl (``ce``, ``kl`` at T, ``kl_t1`` at T = 1 — the figure to compare across runs —
and ``eval_kl`` / ``eval_kl_t1`` / ``eval_teacher_ce`` on held-out chats) plus
``distill_data.json``: the chat data report, the teacher and student and their sizes, α and T.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.config import ConfigError, to_dict
from lmforge.io import write_json_atomic
from lmforge.train.checkpoint import resolve_checkpoint
from lmforge.train.distributed import resolve_dtype, training_session
from lmforge.train.flops import flops_per_token
from lmforge.train.metrics import say
from lmforge.train.objectives import IGNORE_INDEX
from lmforge.train.pretrain import as_config_error
from lmforge.train.sft import describe_chat_data, prepare_chat_data
from lmforge.train.trainer import Trainer, TrainResult


def token_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(p_teacher ‖ p_student) per row of [N, V] logits, both softened by ``temperature``."""
    log_p_teacher = F.log_softmax(teacher_logits / temperature, dim=-1)
    log_p_student = F.log_softmax(student_logits / temperature, dim=-1)
    return (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=-1)


class Distillation:
    """α · CE on the labels + (1 − α) · T² · KL(teacher ‖ student), token-averaged over labelled
    positions, plus the student's MoE load-balancing loss.

    Only the labelled positions' logits are gathered and cast to fp32, so the extra memory is
    [labelled tokens, V], not [B, T, V], for each model.
    """

    name = "distillation"

    def __init__(self, teacher: nn.Module, alpha: float = 0.5, temperature: float = 2.0, ignore_index: int = IGNORE_INDEX) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.teacher, self.alpha, self.temperature, self.ignore_index = teacher, alpha, temperature, ignore_index

    def loss_tokens(self, batch: dict) -> int:
        return int((batch["labels"] != self.ignore_index).sum())

    def frozen_models(self) -> list[nn.Module]:
        return [self.teacher]

    def _logits(self, model: nn.Module, batch: dict):
        """The student's output, and both models' fp32 logits and the labels at the labelled positions."""
        # Packed rows: each conversation has its own positions and sees only itself — in both models.
        extra = {k: batch[k] for k in ("position_ids", "attention_mask") if k in batch}
        selected = batch["labels"] != self.ignore_index
        out = model(batch["input_ids"], **extra)
        with torch.no_grad():
            teacher_logits = self.teacher(batch["input_ids"], **extra).logits[selected].float()
        student_logits = out.logits[selected].float()
        if teacher_logits.shape[-1] != student_logits.shape[-1]:
            raise ValueError(f"teacher vocabulary {teacher_logits.shape[-1]} != student vocabulary {student_logits.shape[-1]}")
        return out, student_logits, teacher_logits, batch["labels"][selected]

    def __call__(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        out, student, teacher, labels = self._logits(model, batch)
        n = max(labels.numel(), 1)
        ce = F.cross_entropy(student, labels, reduction="sum") / n
        kl = token_kl(teacher, student, self.temperature).sum() / n
        T = self.temperature
        loss = self.alpha * ce + (1.0 - self.alpha) * T * T * kl + out.aux_loss
        metrics: dict = {"ce": ce.detach(), "kl": kl.detach()}
        if T == 1.0:
            metrics["kl_t1"] = metrics["kl"]
        else:
            with torch.no_grad():
                metrics["kl_t1"] = token_kl(teacher, student.detach()).sum() / n
        if out.expert_load is not None:
            metrics["aux_loss"] = out.aux_loss.detach()
            metrics["expert_load"] = out.expert_load.detach()
        return loss, metrics

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batch: dict) -> tuple[float, int, dict]:
        """The student's summed held-out CE (the run's eval_loss), with summed KLs at T and 1 and
        the teacher's own CE on the same tokens (the floor the student is heading for)."""
        _, student, teacher, labels = self._logits(model, batch)
        sums = {
            "kl": float(token_kl(teacher, student, self.temperature).sum()),
            "kl_t1": float(token_kl(teacher, student).sum()),
            "teacher_ce": float(F.cross_entropy(teacher, labels, reduction="sum")),
        }
        return float(F.cross_entropy(student, labels, reduction="sum")), labels.numel(), sums


def _resolve_teacher(teacher: str) -> Path:
    """A local checkpoint or run directory (latest checkpoint), else a hub repo id."""
    from lmforge.model.hf import resolve_model_dir

    return resolve_checkpoint(teacher) if Path(teacher).expanduser().exists() else resolve_model_dir(teacher)


def _vocabulary(directory: Path, key: str) -> dict[str, int]:
    from lmforge.tokenizer.train import load_tokenizer

    if (directory / "tokenizer.json").is_file():
        return load_tokenizer(directory).get_vocab(with_added_tokens=True)
    try:  # an HF checkpoint with only a slow tokenizer's files (vocab.json + merges.txt, ...)
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(directory)).get_vocab()
    except Exception as exc:  # transformers' errors vary; all mean "no usable tokenizer here"
        raise ConfigError(f"{key}={directory}: no tokenizer found ({exc}); whitebox distillation needs it to check "
                          "that teacher and student share one vocabulary") from None


def check_same_tokenizer(student_dir: Path, teacher_dir: Path) -> None:
    """ConfigError unless student and teacher map the same token strings to the same ids: the
    KL compares distributions id by id, so any difference would silently compare wrong tokens."""
    from lmforge.tokenizer.train import tokenizer_sha256

    if (student_dir / "tokenizer.json").is_file() and (teacher_dir / "tokenizer.json").is_file():
        if tokenizer_sha256(student_dir) == tokenizer_sha256(teacher_dir):
            return  # byte-identical files; otherwise the vocabularies decide (files re-saved by HF differ in layout)
    student, teacher = _vocabulary(student_dir, "train.init_from"), _vocabulary(teacher_dir, "distill.teacher")
    if student == teacher:
        return
    by_id_s, by_id_t = {i: s for s, i in student.items()}, {i: s for s, i in teacher.items()}
    first = min((i for i in set(by_id_s) | set(by_id_t) if by_id_s.get(i) != by_id_t.get(i)), default=None)
    raise ConfigError(
        f"distill.teacher={teacher_dir} and train.init_from={student_dir} have different tokenizers "
        f"({len(teacher):,} vs {len(student):,} tokens; id {first} is {by_id_t.get(first)!r} vs {by_id_s.get(first)!r}): "
        "whitebox distillation compares the two models' distributions token id by token id, so they must share one "
        "vocabulary; distill.mode=blackbox works across tokenizers"
    )


def _parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # tied embeddings count once


def train_distill(recipe, resume: bool = False, hooks: Iterable = ()) -> TrainResult:
    """Distil ``recipe.distill.teacher`` into the student ``recipe.train.init_from``."""
    if recipe.distill.mode == "blackbox":
        from lmforge.synth.teacher import train_blackbox

        return train_blackbox(recipe, resume=resume, hooks=hooks)
    return _train_whitebox(recipe, resume, hooks)


def _train_whitebox(recipe, resume: bool, hooks: Iterable) -> TrainResult:
    from lmforge.model.hf import load_pretrained
    from lmforge.tokenizer.train import load_tokenizer, tokenizer_sha256

    cfg, dcfg = recipe.train, recipe.distill
    if not cfg.init_from:
        raise ConfigError("train.init_from is not set: distillation trains a student checkpoint (a run directory or checkpoint)")
    if not dcfg.teacher:
        raise ConfigError("distill.teacher is not set: name the teacher checkpoint (lmforge or HF directory) with the student's tokenizer")
    run_dir = Path(cfg.out_dir or Path(recipe.out_dir) / "distill")
    with training_session(cfg.device, cfg.num_threads) as env:
        student_dir = as_config_error("train.init_from", resolve_checkpoint, cfg.init_from)
        teacher_dir = as_config_error("distill.teacher", _resolve_teacher, dcfg.teacher)
        check_same_tokenizer(student_dir, teacher_dir)
        tokenizer = load_tokenizer(student_dir)
        torch.manual_seed(cfg.seed)
        model = load_pretrained(student_dir, device="cpu", dtype=torch.float32)
        # The teacher only runs forward under autocast: weights in the autocast dtype give the same
        # matmuls for half the memory when training in bf16/fp16 (fp32 stays fp32).
        teacher_dtype = resolve_dtype(cfg.dtype, env.device)
        teacher = as_config_error("distill.teacher", lambda d: load_pretrained(d, device="cpu", dtype=teacher_dtype), teacher_dir)
        if teacher.config.vocab_size != model.config.vocab_size:
            raise ConfigError(f"distill.teacher={teacher_dir} has vocab_size {teacher.config.vocab_size} but train.init_from="
                              f"{student_dir} has {model.config.vocab_size}: whitebox distillation needs equal vocabularies")
        for what, m, where in (("train.init_from", model, student_dir), ("distill.teacher", teacher, teacher_dir)):
            if cfg.seq_len > m.config.max_seq_len:
                raise ConfigError(f"train.seq_len={cfg.seq_len} exceeds {what}={where}'s max_seq_len={m.config.max_seq_len}")
        data = prepare_chat_data(recipe.sft, cfg, tokenizer, env)
        used = dataclasses.replace(
            recipe, model=model.config, distill=dataclasses.replace(dcfg, teacher=str(teacher_dir)),
            train=dataclasses.replace(cfg, out_dir=str(run_dir), tokenizer=str(student_dir)),
        )  # fmt: skip
        # MFU counts the teacher's forward too: a third of its training FLOPs per token.
        fpt = flops_per_token(model.config, cfg.seq_len) + flops_per_token(teacher.config, cfg.seq_len) / 3
        trainer = Trainer(
            model, Distillation(teacher, dcfg.alpha, dcfg.temperature), data.train, cfg,
            run_dir=run_dir, env=env, eval_data=data.eval, tokenizer_dir=student_dir, recipe=to_dict(used),
            parent_checkpoint=str(student_dir), flops_per_token=fpt, hooks=hooks, stage="distill",
        )  # fmt: skip
        if env.is_main:
            n_student, n_teacher = _parameters(model), _parameters(teacher)
            write_json_atomic(run_dir / "distill_data.json", {
                **data.report, "mode": "whitebox", "alpha": dcfg.alpha, "temperature": dcfg.temperature,
                "student": str(student_dir), "student_architecture": model.config.hf_architecture, "student_parameters": n_student,
                "teacher": str(teacher_dir), "teacher_architecture": teacher.config.hf_architecture, "teacher_parameters": n_teacher,
                "tokenizer_sha256": tokenizer_sha256(student_dir),
            })  # fmt: skip
            say(f"distill: teacher {teacher.config.hf_architecture} ({n_teacher:,} parameters) from {teacher_dir} → student "
                f"{model.config.hf_architecture} ({n_student:,}) from {student_dir}; alpha {dcfg.alpha}, T {dcfg.temperature}; "
                f"{describe_chat_data(data, cfg.seq_len)} → {run_dir}")
        return trainer.fit(resume=resume)
