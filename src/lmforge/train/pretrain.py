"""The pretraining stage: token shards + a model recipe → checkpoints, through the one ``Trainer``.

``train(recipe)`` assembles the pieces and runs them; ``lmforge pretrain`` and the pipeline
runner both call it. What it decides, and why:

* **Model**: built from the recipe's ``model`` section with ``train.seed``, or loaded from
  ``train.init_from`` (a checkpoint or a run directory) for continued pretraining. The vocabulary
  size comes from the shard manifest when the recipe's differs (the shards are the truth); a
  loaded model whose vocabulary is smaller than the shards' is an error.
* **Special tokens**: bos/eos/pad are the tokens ``tokenizer_config.json`` names, with their ids
  from the tokenizer itself, else eos from the manifest; they are written into the model config
  so ``config.json`` carries them.
* **Tokenizer**: ``train.tokenizer``, else the one the shards were made with (manifest
  ``tokenizer_dir``), else the ``init_from`` checkpoint's; it is checked against the manifest's
  ``tokenizer_sha256`` and copied into every checkpoint.
* **Data**: ``PackedLoader`` over the train split; held-out loss over the val split's first
  ``eval_batches`` global batches of windows (the same set however the batch is split over
  ranks and micro-batches), logged next to the manifest's ``unigram_entropy_nats`` baseline.

Usage::

    from lmforge.recipe import load_recipe
    from lmforge.train.pretrain import train
    result = train(load_recipe("recipes/demo.yaml", ["train.max_steps=20"]), resume=True)
    result.checkpoint, result.metrics["loss"]
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from lmforge.config import ConfigError, to_dict
from lmforge.data.loader import HeldOutWindows, PackedLoader
from lmforge.data.shards import ShardSet
from lmforge.eval.bpb import token_bytes_for
from lmforge.model import ModelConfig, Transformer
from lmforge.tokenizer.train import load_tokenizer, tokenizer_sha256
from lmforge.train.checkpoint import resolve_checkpoint
from lmforge.train.distributed import training_session
from lmforge.train.flops import flops_per_token
from lmforge.train.metrics import say
from lmforge.train.objectives import LanguageModeling
from lmforge.train.trainer import Trainer, TrainResult

_VOCAB_SCAN_TOKENS = 1 << 24  # without a manifest vocab_size, check this many tokens per shard


def _token_name(token) -> str | None:
    """A special token as tokenizer_config.json names it: a string or ``{"content": ...}``."""
    if isinstance(token, dict):
        token = token.get("content")
    return token or None


def special_token_ids(tokenizer_dir: str | Path | None, manifest: dict) -> dict[str, int | None]:
    """``{"bos_token_id", "eos_token_id", "pad_token_id"}`` from the tokenizer, else the manifest."""
    ids: dict[str, int | None] = {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
    directory = Path(tokenizer_dir) if tokenizer_dir else None
    if directory and (directory / "tokenizer_config.json").is_file() and (directory / "tokenizer.json").is_file():
        config = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))
        tokenizer = load_tokenizer(directory)
        for name in ("bos", "eos", "pad"):
            token = _token_name(config.get(f"{name}_token"))
            ids[f"{name}_token_id"] = tokenizer.token_to_id(token) if token else None
    if ids["eos_token_id"] is None and manifest.get("eos_id") is not None:
        ids["eos_token_id"] = int(manifest["eos_id"])
    return ids


def resolve_tokenizer_dir(cfg, manifest: dict, init_checkpoint: Path | None) -> Path | None:
    """The tokenizer to copy into checkpoints (see the module docstring), checked against the shards."""
    candidates = [cfg.tokenizer, manifest.get("tokenizer_dir"), init_checkpoint]
    explicit = bool(cfg.tokenizer)
    directory = None
    for i, candidate in enumerate(candidates):
        if candidate and (Path(candidate) / "tokenizer.json").is_file():
            directory = Path(candidate)
            break
        if i == 0 and explicit:
            raise ConfigError(f"train.tokenizer={cfg.tokenizer!r}: no tokenizer.json there")
    expected = manifest.get("tokenizer_sha256")
    if directory is not None and expected and tokenizer_sha256(directory) != expected:
        raise ConfigError(
            f"{directory}: this tokenizer is not the one the shards in {cfg.shards} were made with "
            "(tokenizer.json sha256 differs from the manifest's tokenizer_sha256); point train.tokenizer at the right one"
        )
    return directory


def _max_token_id(shards: ShardSet) -> int:
    return max(int(a[:_VOCAB_SCAN_TOKENS].max()) for split in shards.splits for a in shards.arrays(split))


def build_model(model_cfg: ModelConfig, cfg, shards: ShardSet, ids: dict, is_main: bool) -> tuple[Transformer, str | None]:
    """A fresh model from the recipe, or the ``init_from`` checkpoint's; returns (model, parent path)."""
    manifest_vocab = shards.manifest.get("vocab_size")
    if cfg.init_from:
        from lmforge.model.hf import load_pretrained

        parent = resolve_checkpoint(cfg.init_from)
        model = load_pretrained(parent, device="cpu", dtype=torch.float32)
        needed = manifest_vocab or _max_token_id(shards) + 1
        if model.config.vocab_size < needed:
            raise ConfigError(
                f"train.init_from={cfg.init_from}: the model's vocabulary ({model.config.vocab_size}) is smaller than the "
                f"shards' ({needed}); continued pretraining needs shards made with the model's own tokenizer"
            )
        for key, value in ids.items():
            if value is not None:
                setattr(model.config, key, value)
        return model, str(parent)
    changes = {k: v for k, v in ids.items() if v is not None}
    if manifest_vocab and manifest_vocab != model_cfg.vocab_size:
        if is_main:
            say(f"model.vocab_size {model_cfg.vocab_size} → {manifest_vocab} (from the shard manifest)")
        changes["vocab_size"] = int(manifest_vocab)
    elif not manifest_vocab:
        top = _max_token_id(shards)
        if top >= model_cfg.vocab_size:
            raise ConfigError(f"{shards.dir}: token id {top} does not fit model.vocab_size={model_cfg.vocab_size}")
    model_cfg = dataclasses.replace(model_cfg, **changes)
    return Transformer(model_cfg), None


def as_config_error(key: str, fn, path):
    """Missing or broken inputs are configuration mistakes: a one-line error, not a traceback."""
    try:
        return fn(path)
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(f"{key}={path}: {exc}") from None


def train(recipe, resume: bool = False, hooks: Iterable = ()) -> TrainResult:
    """Pretrain (or continue pretraining) ``recipe``'s model on ``recipe.train.shards``."""
    cfg = recipe.train
    if not cfg.shards:
        raise ConfigError("train.shards is not set: point it at a directory written by `lmforge data tokenize`")
    run_dir = Path(cfg.out_dir or Path(recipe.out_dir) / "pretrain")
    with training_session(cfg.device, cfg.num_threads) as env:
        shards = as_config_error("train.shards", ShardSet, cfg.shards)
        init_ckpt = as_config_error("train.init_from", resolve_checkpoint, cfg.init_from) if cfg.init_from else None
        tokenizer_dir = resolve_tokenizer_dir(cfg, shards.manifest, init_ckpt)
        ids = special_token_ids(tokenizer_dir, shards.manifest)
        # Same seed on every rank: identical initial weights (DDP also broadcasts rank 0's).
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        model, parent = build_model(recipe.model, cfg, shards, ids, env.is_main)
        if cfg.seq_len > model.config.max_seq_len:
            raise ConfigError(f"train.seq_len={cfg.seq_len} exceeds model.max_seq_len={model.config.max_seq_len}")
        used = dataclasses.replace(recipe, model=model.config, train=dataclasses.replace(
            cfg, out_dir=str(run_dir), tokenizer=str(tokenizer_dir or "")))
        try:
            train_data = PackedLoader(shards, cfg.seq_len, cfg.batch_size, seed=cfg.seed, rank=env.rank, world_size=env.world_size)
        except ValueError as exc:  # e.g. less data than one global batch
            raise ConfigError(f"train.shards={cfg.shards}: {exc}") from None
        eval_data = None
        if "val" in shards.splits:
            # sized in global batches, so the held-out set is the same however the batch is split
            global_batch = cfg.batch_size * cfg.grad_accum * env.world_size
            eval_data = HeldOutWindows(shards, cfg.seq_len, cfg.batch_size, cfg.eval_batches * global_batch,
                                       rank=env.rank, world_size=env.world_size)
            if eval_data.num_windows == 0:
                eval_data = None
        if eval_data is None and env.is_main:
            say(f"note: {shards.dir} has no usable val split (≥ seq_len+1 tokens); no held-out loss will be logged")
        trainer = Trainer(
            model, LanguageModeling(z_loss=cfg.z_loss, token_bytes=token_bytes_for(tokenizer_dir, model.config.vocab_size)), train_data, cfg,
            run_dir=run_dir, env=env, eval_data=eval_data,
            baseline_loss=shards.manifest.get("unigram_entropy_nats"),
            tokenizer_dir=tokenizer_dir, recipe=to_dict(used), parent_checkpoint=parent,
            flops_per_token=flops_per_token(model.config, cfg.seq_len), hooks=hooks,
        )
        if env.is_main:
            say(
                f"pretrain: {model.config.hf_architecture} with {model.num_parameters() / 1e6:.2f}M parameters; "
                f"{shards.num_tokens('train'):,} train tokens; global batch {cfg.batch_size * cfg.grad_accum * env.world_size} "
                f"× {cfg.seq_len} tokens; {cfg.max_steps} steps on {env.world_size} × {env.device} "
                f"({str(trainer.amp_dtype).removeprefix('torch.')}) → {run_dir}"
            )
        return trainer.fit(resume=resume)

