"""Shared pieces for the training tests: tiny token shards and tiny recipes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lmforge.data.shards import ShardWriter
from lmforge.recipe import load_recipe

TINY_MODEL = [
    "model.vocab_size=256", "model.d_model=32", "model.n_layers=2", "model.n_heads=4",
    "model.n_kv_heads=2", "model.max_seq_len=64",
]


def synthetic_tokens(n: int, seed: int = 0) -> np.ndarray:
    """Learnable but not trivial: arithmetic runs with random restarts and eos (0) separators."""
    rng = np.random.default_rng(seed)
    out = np.empty(n, dtype=np.uint16)
    i = 0
    while i < n:
        length = int(rng.integers(8, 40))
        start, step = int(rng.integers(1, 256)), int(rng.integers(1, 7))
        run = (start + step * np.arange(length)) % 255 + 1
        take = min(length, n - i)
        out[i : i + take] = run[:take]
        i += take
        if i < n:
            out[i] = 0
            i += 1
    return out


def write_shards(directory: Path, train_tokens: int = 30_000, val_tokens: int = 3_000, shard_tokens: int = 7_000, extra: dict | None = None) -> Path:
    writer = ShardWriter(directory, dtype="uint16", shard_tokens=shard_tokens)
    writer.add("train", synthetic_tokens(train_tokens, seed=1))
    if val_tokens:
        writer.add("val", synthetic_tokens(val_tokens, seed=2))
    manifest = {"eos_id": 0, "vocab_size": 256, "unigram_entropy_nats": 5.3}
    writer.close({**manifest, **(extra or {})})
    return Path(directory)


@pytest.fixture
def shards(tmp_path) -> Path:
    return write_shards(tmp_path / "shards")


def tiny_recipe(shards: Path, out_dir: Path, *overrides: str):
    """A recipe for a ~40k-parameter model that trains a step in a few milliseconds (fp32, 1 thread)."""
    base = TINY_MODEL + [
        f"train.shards={shards}", f"train.out_dir={out_dir}", "train.seq_len=32", "train.batch_size=4",
        "train.max_steps=12", "train.warmup_steps=2", "train.lr=3e-3", "train.log_every=1", "train.eval_every=4",
        "train.eval_batches=2", "train.ckpt_every=4", "train.keep_last=2", "train.num_threads=1", "train.dtype=float32",
        "train.progress=false", "train.tensorboard=false", "train.device=cpu",
    ]
    return load_recipe(None, base + list(overrides))


def train_losses(run_dir: Path, key: str = "loss") -> dict[int, float]:
    """step -> ``key`` of the train records in a run's metrics.jsonl."""
    records = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r[key] for r in records if r["kind"] == "train"}


# Test modules in this directory are not a package; they get the helpers through fixtures.
@pytest.fixture
def make_recipe():
    return tiny_recipe


@pytest.fixture
def shard_factory():
    return write_shards


@pytest.fixture
def losses():
    return train_losses


@pytest.fixture(autouse=True)
def _peak_flops_fixed(monkeypatch):
    # MFU needs a peak; measuring it is not what these tests are about.
    monkeypatch.setenv("LMFORGE_PEAK_FLOPS", "1e11")

