"""Training settings (the recipe's ``train`` section), shared by every objective."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class TrainConfig:
    # where to read and write
    shards: str = ""  # token-shard directory written by `lmforge data tokenize` (manifest.json)
    tokenizer: str = ""  # tokenizer directory, copied into every checkpoint
    out_dir: str = "runs/pretrain"
    init_from: str = ""  # checkpoint to continue pretraining from ("" = random init)
    # batch geometry: global batch = batch_size · grad_accum · world_size sequences of seq_len
    seq_len: int = 512
    batch_size: int = 8
    grad_accum: int = 1
    max_steps: int = 1000
    # optimizer: AdamW; weight decay skips norms, biases and embeddings unless decay_embeddings
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    decay_embeddings: bool = False
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0
    z_loss: float = 0.0  # coefficient of the log-partition penalty (YuLan-Mini uses 1e-4)
    # schedule
    schedule: Literal["cosine", "wsd", "constant"] = "cosine"
    warmup_steps: int = 100
    decay_fraction: float = 0.2  # WSD: share of max_steps spent decaying
    decay_shape: Literal["linear", "cosine", "sqrt"] = "sqrt"  # sqrt = 1 - sqrt(progress)
    # numerics and hardware
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"  # autocast dtype; weights stay fp32
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    compile: bool = False
    seed: int = 1337
    # checkpoints, logging, evaluation
    ckpt_every: int = 500
    keep_last: int = 3
    log_every: int = 10
    eval_every: int = 200
    eval_batches: int = 20
    tensorboard: bool = True
    wandb_project: str = ""  # "" = wandb off
