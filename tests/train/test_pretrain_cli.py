"""`lmforge pretrain` as a real process: SIGKILL mid-run, then --resume, equals an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from typer.testing import CliRunner

from lmforge.recipe import load_recipe
from lmforge.train.checkpoint import checkpoint_step, latest_checkpoint
from lmforge.train.pretrain import train

RECIPE = {
    "name": "kill-test",
    "model": {"vocab_size": 256, "d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "max_seq_len": 64},
    "train": {
        "seq_len": 32, "batch_size": 4, "max_steps": 200, "warmup_steps": 5, "lr": 3e-3, "log_every": 1,
        "eval_every": 50, "eval_batches": 2, "ckpt_every": 10, "keep_last": 2, "num_threads": 1, "dtype": "float32",
        "tensorboard": False, "device": "cpu",
    },
}


def _write_recipe(path, shards, out_dir, **train):
    recipe = json.loads(json.dumps(RECIPE))
    recipe["train"].update(shards=str(shards), out_dir=str(out_dir), **train)
    path.write_text(yaml.safe_dump(recipe))
    return path


def _cli(*args):
    env = {**os.environ, "LMFORGE_PEAK_FLOPS": "1e11", "OMP_NUM_THREADS": "1"}
    return [sys.executable, "-m", "lmforge.train.cli", *map(str, args)], env


def _steps_logged(metrics):
    if not metrics.is_file():
        return 0
    steps = [0]
    for line in metrics.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        steps.append(record["step"])
    return max(steps)


def test_sigkill_mid_run_then_resume_matches_uninterrupted_run(shards, tmp_path, losses):
    run_dir = tmp_path / "killed"
    recipe_path = _write_recipe(tmp_path / "recipe.yaml", shards, run_dir)
    cmd, env = _cli(recipe_path)
    log = open(tmp_path / "killed.log", "w")  # a file, not a pipe: a full pipe would stall the child
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    killed_after = None
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            ckpt = latest_checkpoint(run_dir)
            if ckpt is not None and _steps_logged(run_dir / "metrics.jsonl") >= checkpoint_step(ckpt) + 2:
                os.kill(proc.pid, signal.SIGKILL)
                killed_after = checkpoint_step(ckpt)
                break
            time.sleep(0.005)
    finally:
        if proc.poll() is None and killed_after is None:
            proc.kill()
        proc.wait()
        log.close()
    output = (tmp_path / "killed.log").read_text()
    assert killed_after is not None, f"the run ended (rc={proc.returncode}) before it could be killed:\n{output}"
    assert proc.returncode == -signal.SIGKILL
    # It had logged steps past checkpoint `killed_after`; resuming redoes them from the latest checkpoint.
    at_kill = checkpoint_step(latest_checkpoint(run_dir))
    assert killed_after <= at_kill < 200

    resumed = subprocess.run(_cli(recipe_path, "--resume")[0], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from {run_dir / 'checkpoints' / f'step_{at_kill:08d}'}" in resumed.stderr.replace("\n", "")
    assert "checkpoint" in resumed.stderr and "step_00000200" in resumed.stderr

    # the same recipe, uninterrupted, in this process
    reference = load_recipe(_write_recipe(tmp_path / "ref.yaml", shards, tmp_path / "reference"))
    train(reference)
    got, expected = losses(run_dir), losses(tmp_path / "reference")
    assert sorted(got) == list(range(1, 201))
    assert got == expected  # bit for bit
    evals = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in evals if r["kind"] == "eval"] == [50, 100, 150, 200]


def test_cli_diverging_run_exits_nonzero_with_advice(shards, tmp_path):
    from lmforge.train.cli import pretrain
    import typer

    app = typer.Typer()
    app.command()(pretrain)
    recipe_path = _write_recipe(tmp_path / "recipe.yaml", shards, tmp_path / "run", lr=1e6, max_steps=20, ckpt_every=1)
    result = CliRunner().invoke(app, [str(recipe_path)])
    assert result.exit_code == 1
    out = " ".join(result.output.split())
    assert "training diverged" in out and "lower train.lr" in out
    last_good = latest_checkpoint(tmp_path / "run")
    assert f"the last good checkpoint is {last_good}" in out
    diverged_at = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert diverged_at["kind"] == "diverged" and checkpoint_step(last_good) == diverged_at["step"] - 1


def test_cli_help_lists_resume_and_set():
    cmd, env = _cli("--help")
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    assert "--resume" in out.stdout and "--set" in out.stdout


@pytest.mark.parametrize("problem", ["tiny shards", "bad setting"])
def test_cli_input_mistakes_are_one_line_errors_with_exit_status_2(shard_factory, tmp_path, monkeypatch, capsys, problem):
    from lmforge.train.cli import main

    tiny = shard_factory(tmp_path / "tiny", train_tokens=100, val_tokens=0)
    recipe_path = _write_recipe(tmp_path / "recipe.yaml", tiny, tmp_path / "run")
    extra = ["--set", "train.log_every=0"] if problem == "bad setting" else []
    monkeypatch.setattr(sys, "argv", ["lmforge-pretrain", str(recipe_path), *extra])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith("error:") and "Traceback" not in err
    assert ("train.shards=" in err and "fewer than one global micro-batch" in err) if problem == "tiny shards" \
        else "log_every must be >= 1" in err
