"""Training settings (the recipe's ``train`` section), shared by every objective.

One ``TrainConfig`` drives the one trainer loop: pretraining reads ``shards``; later stages
(SFT, DPO, distillation) reuse the same optimizer, schedule, checkpoint and logging settings.
Step counts are optimizer steps; one step sees ``batch_size · grad_accum · world_size``
sequences of ``seq_len`` tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class TrainConfig:
    # where to read and write
    shards: str = ""  # token-shard directory written by `lmforge data tokenize` (manifest.json)
    tokenizer: str = ""  # tokenizer directory copied into every checkpoint ("" = the shards' own, if present)
    out_dir: str = ""  # run directory: checkpoints/, metrics.jsonl, tensorboard/ ("" = {recipe.out_dir}/pretrain)
    init_from: str = ""  # checkpoint (or run dir) to continue pretraining from ("" = random init)
    # batch geometry: global batch = batch_size · grad_accum · world_size sequences of seq_len
    seq_len: int = 512
    batch_size: int = 8
    grad_accum: int = 1
    max_steps: int = 1000
    # optimizer: AdamW; weight decay skips norms, biases and embeddings unless decay_embeddings
    lr: float = 3e-4
    min_lr_ratio: float = 0.1  # the schedule ends at lr · min_lr_ratio (cosine and WSD)
    weight_decay: float = 0.1
    decay_embeddings: bool = False
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global gradient norm; 0 = no clipping (the norm is still logged)
    z_loss: float = 0.0  # coefficient of the log-partition penalty (YuLan-Mini uses 1e-4)
    # schedule
    schedule: Literal["cosine", "wsd", "constant"] = "cosine"
    warmup_steps: int = 100
    decay_fraction: float = 0.2  # WSD: share of max_steps spent decaying
    decay_shape: Literal["linear", "cosine", "sqrt"] = "sqrt"  # sqrt = 1 - sqrt(progress)
    # numerics and hardware
    # autocast dtype; weights and optimizer state stay fp32. auto: bfloat16 on CUDA (float16 on
    # GPUs without bf16) and on CPUs with native bf16 (AVX512-BF16/AMX), else float32 — emulated
    # bf16 matmuls (e.g. AVX2-only CPUs) are ~50x slower than fp32.
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    compile: bool = False
    seed: int = 1337  # model init and the data order; change it to get a different run
    num_threads: int = 0  # CPU intra-op threads (0 = torch's default); pin it for bit-exact CPU resumes
    # checkpoints, logging, evaluation
    ckpt_every: int = 500  # also saved at the end; 0 = only at the end
    keep_last: int = 3  # checkpoints kept in {out_dir}/checkpoints; 0 = keep all
    log_every: int = 10  # metrics.jsonl / TensorBoard record every this many steps (and the last)
    eval_every: int = 200  # held-out loss every this many steps (and at the end); 0 = only at the end
    eval_batches: int = 20  # held-out set = the val split's first eval_batches global batches of windows
    # evaluation tasks run during training (lmforge.eval.tasks specs, e.g. "mc:evals/cmmlu?limit=50"),
    # logged to metrics.jsonl as kind "task" and plotted in eval_curves.png
    eval_tasks: list[str] = field(default_factory=list)
    eval_tasks_every: int = 0  # steps between task evaluations (0 = eval_every); always at the end
    progress: bool = True  # rich progress bar on a terminal, a plain line per log step otherwise
    tensorboard: bool = True
    wandb_project: str = ""  # "" = wandb off; needs `pip install wandb`

    def __post_init__(self) -> None:
        # The recipe loader reports a ValueError here as "file:line: section 'train': ...".
        for name in ("seq_len", "batch_size", "grad_accum", "max_steps", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "eval_every", "ckpt_every", "keep_last", "eval_batches", "eval_tasks_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0:  # also rejects NaN
            raise ValueError(f"lr must be > 0, got {self.lr}")
        for name in ("min_lr_ratio", "decay_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not self.grad_clip >= 0:
            raise ValueError(f"grad_clip must be >= 0 (0 = no clipping), got {self.grad_clip}")
        if self.eval_tasks:
            from lmforge.eval.tasks import parse_task

            for spec in self.eval_tasks:  # a typo fails now, not after hours of training
                parse_task(spec)


@dataclass
class SFTConfig:
    """A recipe's ``sft`` section: the chat data ``lmforge sft`` fine-tunes on (``lmforge.train.sft``)."""

    train: list[str] = field(default_factory=list)  # chat jsonl files or directories
    val: list[str] = field(default_factory=list)  # held-out chat files; empty: hold out val_fraction of train
    val_fraction: float = 0.02  # conversations held out (by a stable hash of their text) when val is empty
    overlong: Literal["drop", "truncate"] = "truncate"  # conversations longer than train.seq_len
    skip_bad: bool = False  # count and skip malformed records instead of stopping at the first
    pack_window: int = 256  # open rows the best-fit packer chooses among

    def __post_init__(self) -> None:
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1); got {self.val_fraction}")


# The post-training sections below read their conversations through ``lmforge.data.chat``; the
# optimizer, schedule, batch geometry and ``init_from`` come from ``train`` as for every stage.

_ALL_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class LoRAConfig:
    """A recipe's ``lora`` section: low-rank adapters through ``peft`` (``lmforge.train.lora``).

    ``lmforge lora`` trains adapters on ``sft``'s chat data; only adapter weights change.
    """

    target_modules: list[str] = field(default_factory=lambda: list(_ALL_PROJECTIONS))  # module names to adapt
    rank: int = 8
    alpha: float = 16.0  # the update is scaled by alpha / rank
    dropout: float = 0.05  # on the adapter's input
    modules_to_save: list[str] = field(default_factory=list)  # also trained in full, e.g. ["lm_head"]

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        unknown = sorted(set(self.target_modules) - set(_ALL_PROJECTIONS))
        if unknown or not self.target_modules:
            raise ValueError(f"target_modules must be a non-empty subset of {_ALL_PROJECTIONS}; unknown: {unknown}")


@dataclass
class DPOConfig:
    """A recipe's ``dpo`` section: preference pairs and the DPO loss (``lmforge.train.dpo``).

    Pairs are MiniMind ``{"chosen": [msgs], "rejected": [msgs]}`` or ShareGPT-style
    ``{"conversations": [...], "chosen": {...}, "rejected": {...}}`` records.
    """

    train: list[str] = field(default_factory=list)  # preference jsonl files or directories
    val: list[str] = field(default_factory=list)  # held-out pairs; empty: hold out val_fraction of train
    val_fraction: float = 0.05
    beta: float = 0.1  # strength of the KL anchor to the reference model (higher = stay closer)
    sft_weight: float = 0.0  # + this × the chosen replies' per-token NLL (RPO / TRL's rpo_alpha); 0 = plain DPO
    # frozen: a copy of the starting model scores every batch (2x forward memory and compute);
    # precomputed: its log-probabilities are computed once before training and kept with the data.
    reference: Literal["frozen", "precomputed"] = "precomputed"
    reference_from: str = ""  # reference checkpoint ("" = train.init_from, the usual choice)
    overlong: Literal["drop", "truncate"] = "truncate"  # pairs longer than train.seq_len: drop, or cut the prompt's oldest turns
    skip_bad: bool = False  # count and skip malformed records instead of stopping at the first

    def __post_init__(self) -> None:
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if not self.sft_weight >= 0:
            raise ValueError(f"sft_weight must be >= 0, got {self.sft_weight}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1); got {self.val_fraction}")


@dataclass
class DistillConfig:
    """A recipe's ``distill`` section (``lmforge.train.distill``).

    ``whitebox``: the student (``train.init_from``) learns from the teacher's token distribution
    on ``sft``'s chat data, loss = alpha · CE + (1 − alpha) · T² · KL(teacher ‖ student) on the
    assistant tokens; the teacher needs the student's tokenizer. ``blackbox``: the teacher (a
    checkpoint, or an OpenAI-compatible endpoint URL) answers the user turns of ``prompts``; its
    answers become SFT data for the student.
    """

    mode: Literal["whitebox", "blackbox"] = "whitebox"
    teacher: str = ""  # lmforge or HF checkpoint directory, or (blackbox) http(s)://host/v1
    teacher_model: str = ""  # blackbox endpoint: the model name to ask for
    api_key_env: str = "OPENAI_API_KEY"  # blackbox endpoint: environment variable holding the key
    alpha: float = 0.5  # weight of the cross-entropy on the data's own labels
    temperature: float = 2.0  # softens both distributions; the KL term is scaled by T²
    prompts: list[str] = field(default_factory=list)  # blackbox: chat files whose user turns the teacher answers
    max_new_tokens: int = 256  # blackbox: longest teacher answer
    teacher_temperature: float = 0.0  # blackbox: sampling temperature of the teacher (0 = greedy)

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
