"""Supervised fine-tuning: chat data + a pretrained checkpoint → an assistant, on the one ``Trainer``.

SFT differs from pretraining only in its data: conversations (any of the formats
``lmforge.data.chat`` reads) rendered with the checkpoint's ChatML template, loss on the
assistant's replies only, packed into rows with a block-diagonal mask (``lmforge.data.packing``).
The objective is the same ``LanguageModeling`` loss, and the loop is the same ``Trainer``::

    lmforge sft recipes/sft.yaml --set train.init_from=runs/demo/pretrain-<key> --set 'sft.train=[chat.jsonl]'

Recipe sections: ``sft`` (``SFTConfig``: data files, held-out share, over-long policy) and
``train`` (``init_from`` is required; ``seq_len`` is the packed row length). Checkpoints carry
the tokenizer and chat template, so ``lmforge chat`` and ``transformers`` use them as they are.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
import hashlib
import json
import random
from pathlib import Path
from typing import Iterable

import torch

from lmforge.config import ConfigError, to_dict
from lmforge.data.chat import read_conversations
from lmforge.data.packing import Packer, PackedRow, collate
from lmforge.data.readers import ReadStats
from lmforge.eval.bpb import token_bytes_for
from lmforge.io import write_json_atomic
from lmforge.train.checkpoint import resolve_checkpoint
from lmforge.train.config import SFTConfig, TrainConfig
from lmforge.train.distributed import training_session
from lmforge.train.flops import flops_per_token
from lmforge.train.metrics import say
from lmforge.train.pretrain import as_config_error
from lmforge.train.objectives import LanguageModeling
from lmforge.train.trainer import Trainer, TrainResult


class PackedChatBatches:
    """Batches of packed rows, reshuffled every epoch with ``seed``; resumable from its state.

    Each rank takes every ``world_size``-th batch of the same global order, so the data a step
    sees does not depend on how the global batch is split.
    """

    def __init__(self, rows: list[PackedRow], batch_size: int, seq_len: int, pad_id: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if len(rows) < batch_size * world_size:
            raise ValueError(f"{len(rows)} packed rows cannot fill one global batch of {batch_size * world_size}")
        self.rows, self.batch_size, self.seq_len, self.pad_id = rows, batch_size, seq_len, pad_id
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch, self.position = 0, 0  # position: global batches taken in this epoch
        self._order = self._shuffle()

    def _shuffle(self) -> list[int]:
        order = list(range(len(self.rows)))
        random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        return order

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        global_batch = self.batch_size * self.world_size
        if (self.position + 1) * global_batch > len(self._order):
            self.epoch, self.position = self.epoch + 1, 0
            self._order = self._shuffle()
        start = self.position * global_batch + self.rank * self.batch_size
        picked = [self.rows[i] for i in self._order[start : start + self.batch_size]]
        self.position += 1
        return collate(picked, self.pad_id, self.seq_len)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._shuffle()


def _held_out(messages: list[dict], fraction: float) -> bool:
    digest = hashlib.sha1(json.dumps(messages, ensure_ascii=False).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def _read(paths: Iterable[str], skip_bad: bool, what: str) -> tuple[list[list[dict]], ReadStats]:
    stats = ReadStats()
    convs = [c.messages for c in read_conversations(list(paths), skip_bad=skip_bad, stats=stats)]
    if not convs:
        raise ConfigError(f"sft.{what}: no conversations in {list(paths)}")
    return convs, stats


@dataclass
class ChatData:
    """Packed chat data for a stage: the train iterator, held-out batches and a report for the run dir."""

    train: PackedChatBatches
    eval: list[dict] | None
    report: dict
    packer: Packer
    read_stats: ReadStats


def prepare_chat_data(scfg: SFTConfig, cfg: TrainConfig, tokenizer, env) -> ChatData:
    """Read ``scfg``'s conversations, hold out a validation share, and pack both into rows of
    ``cfg.seq_len``; this rank's shares of the batches. Shared by SFT, LoRA and distillation."""
    if not scfg.train:
        raise ConfigError("sft.train is not set: name chat jsonl files (MiniMind, ShareGPT, OpenAI, Alpaca or YAYI records)")
    train_convs, read_stats = _read(scfg.train, scfg.skip_bad, "train")
    val_stats = ReadStats()
    if scfg.val:
        val_convs, val_stats = _read(scfg.val, scfg.skip_bad, "val")
    else:
        val_convs = [c for c in train_convs if _held_out(c, scfg.val_fraction)]
        train_convs = [c for c in train_convs if not _held_out(c, scfg.val_fraction)]
    packer = Packer(cfg.seq_len, scfg.overlong, scfg.pack_window)
    rows = list(packer.pack_messages(train_convs, tokenizer))
    pad_id = tokenizer.token_to_id("<|endoftext|>") or 0
    try:
        train_data = PackedChatBatches(rows, cfg.batch_size, cfg.seq_len, pad_id, cfg.seed, env.rank, env.world_size)
    except ValueError as exc:
        raise ConfigError(f"sft.train: {exc}; use more data or a smaller train.batch_size") from None
    eval_data = None
    if val_convs:
        val_rows = list(Packer(cfg.seq_len, scfg.overlong, scfg.pack_window).pack_messages(val_convs, tokenizer))
        if cfg.eval_batches:  # the held-out set is the first eval_batches global batches, as in pretraining
            val_rows = val_rows[: cfg.eval_batches * cfg.batch_size * cfg.grad_accum * env.world_size]
        # Every rank must evaluate (its collectives pair up with the others'): equal shares.
        val_rows = val_rows[: len(val_rows) // env.world_size * env.world_size]
        mine = val_rows[env.rank :: env.world_size]
        eval_data = [collate(mine[i : i + cfg.batch_size], pad_id, cfg.seq_len) for i in range(0, len(mine), cfg.batch_size)] or None
    report = {
        "train_conversations": len(train_convs), "val_conversations": len(val_convs),
        "bad_records": read_stats.bad_lines + val_stats.bad_lines, "bad_examples": (read_stats.bad_examples + val_stats.bad_examples)[:10],
        "packing": packer.stats.as_dict(),
    }  # fmt: skip
    return ChatData(train_data, eval_data, report, packer, read_stats)


def describe_chat_data(data: ChatData, seq_len: int) -> str:
    """One line for the console: conversations, rows, padding, over-long and bad records."""
    p, r = data.packer.stats, data.report
    return (
        f"{r['train_conversations']:,} conversations ({r['val_conversations']:,} held out) packed into {p.rows:,} rows "
        f"of {seq_len} (padding {p.padding_fraction:.1%}, {p.trained_tokens:,} trained tokens; over-long: "
        f"{p.truncated_overlong} truncated, {p.dropped_overlong} dropped; bad records {r['bad_records']})"
    )


def train_sft(recipe, resume: bool = False, hooks: Iterable = ()) -> TrainResult:
    """Fine-tune ``recipe.train.init_from`` on ``recipe.sft``'s conversations."""
    from lmforge.model.hf import load_pretrained
    from lmforge.tokenizer.train import load_tokenizer

    cfg, scfg = recipe.train, recipe.sft
    if not cfg.init_from:
        raise ConfigError("train.init_from is not set: SFT starts from a pretrained checkpoint (a run directory or checkpoint)")
    run_dir = Path(cfg.out_dir or Path(recipe.out_dir) / "sft")
    with training_session(cfg.device, cfg.num_threads) as env:
        parent = as_config_error("train.init_from", resolve_checkpoint, cfg.init_from)
        tokenizer = load_tokenizer(parent)
        torch.manual_seed(cfg.seed)
        model = load_pretrained(parent, device="cpu", dtype=torch.float32)
        if cfg.seq_len > model.config.max_seq_len:
            raise ConfigError(f"train.seq_len={cfg.seq_len} exceeds the checkpoint's max_seq_len={model.config.max_seq_len}")
        data = prepare_chat_data(scfg, cfg, tokenizer, env)
        used = dataclasses.replace(recipe, model=model.config, train=dataclasses.replace(cfg, out_dir=str(run_dir), tokenizer=str(parent)))
        trainer = Trainer(
            model, LanguageModeling(z_loss=cfg.z_loss, token_bytes=token_bytes_for(parent, model.config.vocab_size)), data.train, cfg,
            run_dir=run_dir, env=env, eval_data=data.eval, tokenizer_dir=parent, recipe=to_dict(used),
            parent_checkpoint=str(parent), flops_per_token=flops_per_token(model.config, cfg.seq_len), hooks=hooks, stage="sft",
        )  # fmt: skip
        if env.is_main:
            write_json_atomic(run_dir / "sft_data.json", data.report)
            say(f"sft: {model.config.hf_architecture} from {parent}; {describe_chat_data(data, cfg.seq_len)} → {run_dir}")
        return trainer.fit(resume=resume)
