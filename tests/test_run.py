"""The stage-graph runner: caching by settings, partial reruns, forcing; and the tiny demo end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from lmforge import run as run_module
from lmforge.config import ConfigError
from lmforge.recipe import Recipe, load_recipe
from lmforge.run import Stage, run_pipeline

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def toy_stages(monkeypatch):
    """Three cheap stages standing in for corpus → tokenizer → train; they count their runs."""
    calls: list[str] = []

    def make(name):
        def run(ctx):
            calls.append(name)
            (ctx.dir / "out.txt").write_text(name)
            return {"name": name, "inputs": sorted(ctx.upstream)}

        return run

    stages = [
        Stage("a", (), lambda r: {"max_bytes": r.corpus.max_bytes}, make("a")),
        Stage("b", ("a",), lambda r: {"vocab": r.tokenizer.vocab_size}, make("b")),
        Stage("c", ("b",), lambda r: {"lr": r.train.lr}, make("c")),
    ]
    monkeypatch.setattr(run_module, "STAGES", stages)
    return calls


def test_second_run_is_cached_and_a_changed_setting_reruns_only_downstream(tmp_path, toy_stages):
    recipe = Recipe(out_dir=str(tmp_path))
    first = run_pipeline(recipe)
    assert toy_stages == ["a", "b", "c"]
    assert [s["status"] for s in first["stages"]] == ["ran"] * 3
    second = run_pipeline(recipe)
    assert toy_stages == ["a", "b", "c"]
    assert [s["status"] for s in second["stages"]] == ["cached"] * 3
    assert second["summaries"] == first["summaries"]

    changed = replace(recipe, tokenizer=replace(recipe.tokenizer, vocab_size=999))
    third = run_pipeline(changed)
    assert toy_stages == ["a", "b", "c", "b", "c"]
    assert [s["status"] for s in third["stages"]] == ["cached", "ran", "ran"]
    # The old outputs stay: switching back costs nothing.
    run_pipeline(recipe)
    assert len(toy_stages) == 5


def test_force_and_until(tmp_path, toy_stages):
    recipe = Recipe(out_dir=str(tmp_path))
    run_pipeline(recipe, until="b")
    assert toy_stages == ["a", "b"]
    run_pipeline(recipe, force={"b"})
    assert toy_stages == ["a", "b", "b", "c"]
    with pytest.raises(Exception, match="unknown stage"):
        run_pipeline(recipe, until="nope")


def test_unfinished_stage_output_is_rebuilt(tmp_path, toy_stages):
    recipe = Recipe(out_dir=str(tmp_path))
    run_pipeline(recipe)
    stage_dir = Path(run_pipeline(recipe)["stages"][1]["dir"])
    (stage_dir / "stage.json").unlink()  # as if the process died before the marker was written
    (stage_dir / "junk").write_text("partial")
    run_pipeline(recipe)
    assert toy_stages == ["a", "b", "c", "b"]
    assert not (stage_dir / "junk").exists()


@pytest.mark.slow
def test_tiny_demo_end_to_end(tmp_path):
    """`lmforge run recipes/demo-tiny.yaml`: a real model below the unigram baseline, loadable by transformers."""
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "lmforge.cli", "run", str(REPO / "recipes" / "demo-tiny.yaml"), "--set", f"out_dir={out}"]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((out / "run.json").read_text())
    pretrain = record["summaries"]["pretrain"]
    assert pretrain["val_loss"] < pretrain["unigram_baseline"] - 0.5
    assert Path(pretrain["loss_curve"]).is_file()
    samples = record["summaries"]["sample"]["samples"]
    assert samples and all(s["completion"] for s in samples)
    # post-training: synthetic data → SFT → DPO → accuracy of each model on held-out problems
    summaries = record["summaries"]
    assert summaries["synth"]["counts"] == {"math_train": 400, "math_test": 40, "identity": 40, "pairs": 100}
    assert summaries["sft"]["step"] == 20 and summaries["dpo"]["step"] == 6
    evaluation = summaries["evaluate"]
    assert set(evaluation["accuracy"]) == {"base", "sft", "dpo"} and evaluation["n"] == 40
    assert all(0.0 <= a <= 1.0 for a in evaluation["accuracy"].values()) and len(evaluation["chats"]) == 3
    assert "exact-answer accuracy" in proc.stdout

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(pretrain["checkpoint"])
    tokenizer = AutoTokenizer.from_pretrained(pretrain["checkpoint"])
    assert model.config.vocab_size >= len(tokenizer)
    aligned = AutoModelForCausalLM.from_pretrained(summaries["dpo"]["checkpoint"])
    assert AutoTokenizer.from_pretrained(summaries["dpo"]["checkpoint"]).chat_template and aligned.config.vocab_size == model.config.vocab_size

    _real_peers_accept_the_aligned_model(Path(summaries["dpo"]["checkpoint"]), tmp_path)

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    statuses = [s["status"] for s in json.loads((out / "run.json").read_text())["stages"]]
    assert statuses == ["cached"] * len(statuses)


def _real_peers_accept_the_aligned_model(checkpoint: Path, tmp_path: Path) -> None:
    """The trained chat model through other runtimes: llama.cpp (GGUF export, its embedded chat
    template, stopping at <|im_end|>) and the lmforge server with the openai client give the
    replies lmforge gives."""
    from lmforge.export.gguf_file import export_gguf
    from lmforge.infer import Engine, SamplingConfig

    engine = Engine.from_checkpoint(checkpoint, device="cpu", dtype="float32", overflow="error")
    chats = [[{"role": "user", "content": "Emma had 3 stickers and lost 2. How many stickers does Emma have now?"}],
             [{"role": "system", "content": "You are lmforge."}, {"role": "user", "content": "你是谁？"}]]
    want = [engine.chat(messages, SamplingConfig(max_new_tokens=48, temperature=0)) for messages in chats]
    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(model_path=str(export_gguf(checkpoint, tmp_path / "demo.gguf", outtype="f16")), n_ctx=512, n_threads=2, verbose=False)
    try:
        got = [llm.create_chat_completion(messages=m, temperature=0.0, top_k=1, max_tokens=48, repeat_penalty=1.0)["choices"][0]["message"]["content"]
               for m in chats]
    finally:
        llm.close()
    assert got == want
    openai = pytest.importorskip("openai")
    sys.path.insert(0, str(REPO / "tests" / "serve"))
    from serve_helpers import running_server

    from lmforge.serve.app import create_app

    with running_server(create_app(engine, "demo")) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
        served = [client.chat.completions.create(model="demo", messages=m, max_tokens=48, temperature=0).choices[0].message.content for m in chats]
    assert served == want


def test_reporting_settings_stay_out_of_cache_keys():
    from lmforge.run import STAGES, stage_key

    stages = {s.name: s for s in STAGES}
    base = Recipe()
    quiet = replace(base, train=replace(base.train, progress=False, log_every=5, keep_last=1), data=replace(base.data, workers=1))
    other_lr = replace(base, train=replace(base.train, lr=base.train.lr * 2))
    up = {"shards": "x", "tokenizer": "y", "corpus": "z", "clean": "w"}
    for name in ("shards", "pretrain"):
        inputs = {k: up[k] for k in stages[name].inputs}
        assert stage_key(stages[name], quiet, inputs) == stage_key(stages[name], base, inputs)
    inputs = {k: up[k] for k in stages["pretrain"].inputs}
    assert stage_key(stages["pretrain"], other_lr, inputs) != stage_key(stages["pretrain"], base, inputs)


def test_posttrain_stages_run_only_when_enabled_and_key_on_their_overrides():
    from lmforge.posttrain import stage_recipe
    from lmforge.run import STAGES, stage_key

    stages = {s.name: s for s in STAGES}
    off = load_recipe(None, [])
    on = load_recipe(None, ["posttrain.enabled=true", "posttrain.sft=[train.lr=0.001, train.max_steps=50]"])
    assert not stages["sft"].enabled(off) and stages["sft"].enabled(on) and stages["pretrain"].enabled(off)
    assert stage_recipe(on, on.posttrain.sft, "sft").train.max_steps == 50
    inputs = {"pretrain": "p", "synth": "s"}
    quiet = load_recipe(None, ["posttrain.enabled=true", "posttrain.sft=[train.lr=0.001, train.max_steps=50, train.progress=false]"])
    longer = load_recipe(None, ["posttrain.enabled=true", "posttrain.sft=[train.lr=0.001, train.max_steps=80]"])
    key = stage_key(stages["sft"], on, inputs)
    assert stage_key(stages["sft"], longer, inputs) != key
    assert stage_key(stages["sft"], quiet, inputs) == key  # how a stage reports is not what it makes
    assert stage_key(stages["pretrain"], on, {"shards": "x", "tokenizer": "y"}) == stage_key(stages["pretrain"], off, {"shards": "x", "tokenizer": "y"})
    with pytest.raises(ConfigError, match="posttrain.sft: .*unknown key 'train.lrr'"):
        stage_recipe(on, ["train.lrr=1"], "sft")
