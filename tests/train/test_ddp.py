"""Two CPU processes under torchrun (gloo) train exactly like one process with the same global batch."""

import json
import os
import subprocess
import sys

import pytest
import yaml

from lmforge.recipe import load_recipe
from lmforge.train.checkpoint import list_checkpoints
from lmforge.train.pretrain import train

MODEL = {"vocab_size": 256, "d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "max_seq_len": 64}
TRAIN = {
    "seq_len": 32, "max_steps": 6, "warmup_steps": 2, "lr": 3e-3, "log_every": 1, "eval_every": 3, "eval_batches": 2,
    "ckpt_every": 3, "num_threads": 1, "dtype": "float32", "tensorboard": False, "device": "cpu",
}


def _recipe(path, shards, out_dir, **train_overrides):
    path.write_text(yaml.safe_dump({"model": MODEL, "train": {**TRAIN, "shards": str(shards), "out_dir": str(out_dir), **train_overrides}}))
    return path


def _records(run_dir, kind):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r for r in map(json.loads, lines) if r["kind"] == kind}


def _torchrun(recipe_path, tmp_path):
    env = {**os.environ, "LMFORGE_PEAK_FLOPS": "1e11", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "lmforge.train.cli", str(recipe_path)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    return out


@pytest.mark.parametrize("batch_size, grad_accum", [(2, 1), (1, 2)])  # (1, 2) exercises no_sync micro-steps
def test_two_ranks_match_one_process_with_the_same_global_batch(shards, tmp_path, batch_size, grad_accum):
    ddp_dir = tmp_path / "ddp"
    out = _torchrun(_recipe(tmp_path / "ddp.yaml", shards, ddp_dir, batch_size=batch_size, grad_accum=grad_accum), tmp_path)
    assert out.stderr.count("saved") == 2  # only rank 0 reports (and writes) checkpoints
    assert "2 × cpu" in out.stderr

    train(load_recipe(_recipe(tmp_path / "one.yaml", shards, tmp_path / "one", batch_size=4)))
    train(load_recipe(_recipe(tmp_path / "acc.yaml", shards, tmp_path / "acc", batch_size=2, grad_accum=2)))
    ddp = _records(ddp_dir, "train")
    assert sorted(ddp) == list(range(1, 7))
    for ref_dir in (tmp_path / "one", tmp_path / "acc"):
        ref = _records(ref_dir, "train")
        for step in ref:
            assert ddp[step]["loss"] == pytest.approx(ref[step]["loss"], rel=1e-5, abs=1e-6)
            assert ddp[step]["grad_norm"] == pytest.approx(ref[step]["grad_norm"], rel=1e-4)
            assert ddp[step]["tokens_seen"] == ref[step]["tokens_seen"] == step * 4 * 32
        ref_eval, ddp_eval = _records(ref_dir, "eval"), _records(ddp_dir, "eval")
        assert ddp_eval[6]["eval_tokens"] == ref_eval[6]["eval_tokens"]  # held-out windows split, not repeated
        assert ddp_eval[6]["eval_loss"] == pytest.approx(ref_eval[6]["eval_loss"], rel=1e-5)
    assert [p.name for p in list_checkpoints(ddp_dir)] == ["step_00000003", "step_00000006"]
    assert not list(ddp_dir.glob("checkpoints/.tmp-*"))
