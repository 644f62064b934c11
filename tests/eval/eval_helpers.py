"""Helpers for the evaluation tests: a tiny checkpoint whose tokenizer knows the multiple-choice
prompt shapes (so `` A`` ... `` D`` are single tokens), and multiple-choice tasks written in each
CSV layout. Imported as ``from eval_helpers import ...`` (a plain module: ``from conftest import``
would find another directory's conftest when several test directories run together)."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

MC_ROWS = [  # question, A, B, C, D, answer
    ("1 + 1 = ?", "1", "2", "3", "4", "B"),
    ("Which is a colour?", "red", "dog", "run", "seven", "A"),
    ("2 × 3 = ?", "5", "9", "6", "8", "C"),
    ("肉牛屠宰后，胴体的哪个部位肉质较好", "胸", "腹", "大腿", "小腿", "C"),
    ("下列哪个是水果", "白菜", "土豆", "萝卜", "苹果", "D"),
    ("The capital of France is", "Paris", "Rome", "Berlin", "Madrid", "A"),
]


def _tokenizer_texts() -> list[str]:
    from lmforge.synth.math import generate_problems

    texts = [m["content"] for r in generate_problems(150, seed=5) for m in r["messages"]]
    for q, a, b, c, d, ans in MC_ROWS * 4:
        texts.append(f"{q}\nA. {a}\nB. {b}\nC. {c}\nD. {d}\nAnswer: {ans}\n\n")
        texts.append(f"{q}\nA. {a}\nB. {b}\nC. {c}\nD. {d}\n答案： {ans}\n\n")
    texts += ["The following are multiple choice questions (with answers) about tests.", "以下是关于测试的单项选择题，请直接给出正确答案的选项。"] * 5
    texts += ["Answer: A Answer: B Answer: C Answer: D 答案： A 答案： B 答案： C 答案： D"] * 20  # one token per " X"
    return texts


def make_checkpoint(root: Path, *, seed: int = 0, d_model: int = 48, n_layers: int = 2, init_std: float = 0.02) -> Path:
    """A random tiny Qwen3-style checkpoint (vocab 400, context 512) with the eval tokenizer."""
    from lmforge.model import ModelConfig, Transformer
    from lmforge.model.hf import save_pretrained
    from lmforge.tokenizer.train import TokenizerConfig, train_tokenizer

    tok = train_tokenizer(_tokenizer_texts(), root / "tok", TokenizerConfig(vocab_size=400, num_reserved_tokens=4))
    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=400, d_model=d_model, n_layers=n_layers, n_heads=4, n_kv_heads=2, max_seq_len=512,
                         qk_norm=True, tie_embeddings=True, init_std=init_std)
    ckpt = save_pretrained(Transformer(config), root / "ckpt")
    for f in tok.iterdir():
        shutil.copy(f, ckpt / f.name)
    return ckpt


def write_mc_csv(path: Path, rows, layout: str = "cmmlu") -> Path:
    """``rows`` as a CSV in one of the three layouts: cmmlu (``,Question,A,B,C,D,Answer``),
    ceval (``id,question,A,B,C,D,answer,explanation``) or mmlu (no header)."""
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        if layout == "cmmlu":
            w.writerow(["", "Question", "A", "B", "C", "D", "Answer"])
            w.writerows([i, *row] for i, row in enumerate(rows))
        elif layout == "ceval":
            w.writerow(["id", "question", "A", "B", "C", "D", "answer", "explanation"])
            w.writerows([i, *row, ""] for i, row in enumerate(rows))
        elif layout == "mmlu":
            w.writerows(rows)
        else:
            raise ValueError(layout)
    return path
