"""Helpers shared by the post-training tests (sft, lora, dpo, distill): addition chats, tiny chat
checkpoints, and a hook that crashes a run. A plain module (``from chat_helpers import ...``):
pytest puts this directory on ``sys.path`` for its test modules, and a module-scoped fixture
could not take a function-scoped helper fixture."""

from __future__ import annotations

from pathlib import Path

CHAT_SYSTEM = "You add numbers."


def addition_chats(n: int, seed: int = 0) -> list[dict]:
    """YAYI-style records: single- and multi-turn sums with a system prompt; learnable in seconds."""
    import random

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        turns = [{"from": "human", "value": f"What is {a} plus {b}?"}, {"from": "gpt", "value": f"{a} plus {b} is {a + b}."}]
        if rng.random() < 0.5:  # multi-turn
            turns += [{"from": "human", "value": "And doubled?"}, {"from": "gpt", "value": f"Doubled it is {2 * (a + b)}."}]
        out.append({"system": CHAT_SYSTEM, "conversations": turns})
    return out


def save_chat_checkpoint(directory: Path, tokenizer_dir: Path, seed: int = 0, **shape) -> Path:
    """A random tiny Qwen3-style checkpoint (vocab 300 unless ``shape`` says otherwise) with the
    tokenizer files of ``tokenizer_dir`` copied in."""
    import shutil

    import torch

    from lmforge.model import ModelConfig, Transformer
    from lmforge.model.hf import save_pretrained

    torch.manual_seed(seed)
    config = dict(vocab_size=300, d_model=48, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=512, qk_norm=True, tie_embeddings=True)
    ckpt = save_pretrained(Transformer(ModelConfig(**{**config, **shape})), directory)
    for f in Path(tokenizer_dir).iterdir():
        shutil.copy(f, ckpt / f.name)
    return ckpt


class CrashAt:
    """A trainer hook that interrupts the run after ``step``, as a kill would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, trainer, step, record):
        if step == self.step:
            raise KeyboardInterrupt(f"simulated crash after step {step}")
