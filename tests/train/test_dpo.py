"""``lmforge dpo``: a tiny checkpoint aligned with preference pairs through the one Trainer — the
loss starts at log 2, frozen and precomputed references agree, rewards separate, resume is exact,
checkpoints load in transformers."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch

from chat_helpers import CrashAt, save_chat_checkpoint

from lmforge.recipe import load_recipe

REFUSALS = ["I do not know.", "No idea, sorry.", "Ask someone else."]


def _pairs(n: int, seed: int = 0) -> list[dict]:
    """Questions answered right (chosen) or refused (rejected), in the three accepted layouts."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        question, answer, refusal = f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}.", rng.choice(REFUSALS)
        if i % 3 == 0:  # MiniMind: two whole conversations
            turns = [{"role": "system", "content": "You add numbers."}, {"role": "user", "content": question}]
            out.append({"chosen": turns + [{"role": "assistant", "content": answer}],
                        "rejected": turns + [{"role": "assistant", "content": refusal}]})
        elif i % 3 == 1:  # ShareGPT-style with strings, as MedicalGPT's
            out.append({"system": "You add numbers.", "conversations": [{"from": "human", "value": question}],
                        "chosen": answer, "rejected": refusal})
        else:  # with an earlier exchange in the prompt and replies as messages
            turns = [{"from": "human", "value": "Hello"}, {"from": "gpt", "value": "Hello! Ask me a sum."}, {"from": "human", "value": question}]
            out.append({"conversations": turns, "chosen": {"from": "gpt", "value": answer}, "rejected": {"from": "gpt", "value": refusal}})
    return out


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """A random tiny Qwen3-style checkpoint with a tokenizer trained on the pairs' text."""
    from lmforge.tokenizer.train import TokenizerConfig, train_tokenizer

    root = tmp_path_factory.mktemp("pretrained")
    texts = [f"What is {a} plus {b}? {a} plus {b} is {a + b}." for a in range(1, 21) for b in range(1, 21)]
    texts += REFUSALS * 20 + ["You add numbers. Hello! Ask me a sum."] * 20
    tok = train_tokenizer(texts, root / "tok", TokenizerConfig(vocab_size=300, num_reserved_tokens=4))
    return save_chat_checkpoint(root / "ckpt", tok, max_seq_len=256)


SETTINGS = [
    "dpo.val_fraction=0.2", "dpo.beta=0.1", "train.seq_len=128", "train.batch_size=4", "train.max_steps=30",
    "train.warmup_steps=2", "train.lr=3e-3", "train.weight_decay=0", "train.log_every=1", "train.eval_every=10",
    "train.eval_batches=4", "train.ckpt_every=10", "train.num_threads=1", "train.dtype=float32", "train.device=cpu",
    "train.progress=false", "train.tensorboard=false",
]  # fmt: skip


def _data(tmp_path: Path, n: int = 80) -> Path:
    path = tmp_path / "pairs.jsonl"
    if not path.exists():
        path.write_text("\n".join(json.dumps(p) for p in _pairs(n)) + "\n")
    return path


def _recipe(tmp_path: Path, ckpt: Path, *overrides: str):
    return load_recipe(None, [f"out_dir={tmp_path}", f"train.out_dir={tmp_path / 'dpo'}", f"train.init_from={ckpt}",
                              f"dpo.train=[{_data(tmp_path)}]", *SETTINGS, *overrides])  # fmt: skip


def _records(run_dir: Path, kind: str = "train") -> list[dict]:
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


def test_the_loss_is_the_dpo_formula(pretrained):
    # Hand-computed from the sequence log-probs, for arbitrary reference values: signs and β checked.
    from lmforge.data.preference import collate_pairs, fit_pair, parse_preference, PreferencePair, PreferenceStats
    from lmforge.model.hf import load_pretrained
    from lmforge.tokenizer.train import load_tokenizer
    from lmforge.train.dpo import DPO, sequence_logps

    tok, model = load_tokenizer(pretrained), load_pretrained(pretrained)
    encoded = [fit_pair(PreferencePair(*parse_preference(r)), tok, 128, "drop", PreferenceStats()) for r in _pairs(3)]
    for p, (c, r) in zip(encoded, [(-30.0, -20.0), (-10.0, -40.0), (-25.0, -25.0)]):
        p.reference_chosen, p.reference_rejected = c, r
    batch = collate_pairs(encoded)
    loss, metrics = DPO(beta=0.5)(model, batch)
    with torch.no_grad():
        logps, _ = sequence_logps(model, batch)
    pi_c, pi_r = logps[:3], logps[3:]
    ref_c, ref_r = torch.tensor([-30.0, -10.0, -25.0]), torch.tensor([-20.0, -40.0, -25.0])
    margin = 0.5 * ((pi_c - ref_c) - (pi_r - ref_r))
    assert loss.item() == pytest.approx(torch.log1p(torch.exp(-margin)).mean().item(), rel=1e-5)
    assert metrics["rewards_chosen"].item() == pytest.approx((0.5 * (pi_c - ref_c)).mean().item(), rel=1e-5)
    assert metrics["reward_margin"].item() == pytest.approx(margin.mean().item(), rel=1e-5)
    assert metrics["reward_accuracy"].item() == pytest.approx((margin > 0).float().mean().item())
    loss.backward()  # the policy gets a gradient through its log-probs
    assert model.lm_head.weight.grad is not None and model.lm_head.weight.grad.abs().sum() > 0
    # RPO: + sft_weight × the chosen replies' per-token NLL
    chosen_tokens = (batch["labels"][:3] != -100).sum(-1)
    nll = (-pi_c / chosen_tokens).mean()
    rpo, rpo_metrics = DPO(beta=0.5, sft_weight=0.7)(model, batch)
    assert rpo.item() == pytest.approx(loss.item() + 0.7 * nll.item(), rel=1e-5)
    assert rpo_metrics["chosen_nll"].item() == pytest.approx(nll.item(), rel=1e-5)


def test_batches_group_lengths_split_like_one_batch_and_resume():
    from lmforge.data.preference import EncodedPair
    from lmforge.train.dpo import PreferenceBatches

    rng = random.Random(0)
    prompts = [rng.randint(3, 60) for _ in range(50)]  # chosen and rejected share the prompt, replies differ
    lengths = [(p + rng.randint(1, 10), p + rng.randint(1, 10)) for p in prompts]
    pairs = [EncodedPair([i] * c, [-100] * c, [i] * r, [-100] * r) for i, (c, r) in enumerate(lengths)]
    first = lambda batch: batch["input_ids"][: batch["input_ids"].shape[0] // 2, 0].tolist()  # noqa: E731 (pair ids)
    one = PreferenceBatches(pairs, 4, 0, seed=3)
    steps = [sorted(first(next(one))) for _ in range(30)]  # 30 steps of 4 pairs: 12 per epoch, so 3 epochs
    assert all(len(set(s)) == 4 for s in steps) and sorted(x for s in steps[:12] for x in s) == sorted(set(x for s in steps[:12] for x in s))
    assert steps[:12] != steps[12:24]  # every epoch reshuffles
    # Two ranks × two micro-batches of one pair each see exactly the pairs of the one-process steps.
    split = [PreferenceBatches(pairs, 1, 0, seed=3, rank=r, world_size=2, grad_accum=2) for r in range(2)]
    assert [sorted(x for b in split for _ in range(2) for x in first(next(b))) for _ in range(30)] == steps
    # Length grouping keeps padding far below that of batches in random order.
    unsorted = PreferenceBatches(pairs, 4, 0, seed=3, bucket_batches=1)
    assert one.padding_fraction() < 0.5 * unsorted.padding_fraction()
    resumed = PreferenceBatches(pairs, 4, 0, seed=3)
    resumed.load_state_dict(one.state_dict())
    assert [first(next(resumed)) for _ in range(5)] == [first(next(one)) for _ in range(5)]


def test_frozen_and_precomputed_references_agree_from_log_2(pretrained, tmp_path):
    from lmforge.train.dpo import train_dpo

    runs = {}
    for mode in ("frozen", "precomputed"):
        (tmp_path / mode).mkdir()
        train_dpo(_recipe(tmp_path / mode, pretrained, f"dpo.reference={mode}", "train.max_steps=6", "train.eval_every=3"))
        runs[mode] = _records(tmp_path / mode / "dpo")
    frozen, pre = runs["frozen"], runs["precomputed"]
    # Step 1 is scored before any update: policy == reference, so every margin is 0 and the loss log 2.
    assert frozen[0]["loss"] == pytest.approx(math.log(2), abs=1e-7)
    assert frozen[0]["reward_margin"] == 0.0 and frozen[0]["reward_accuracy"] == 0.0
    assert pre[0]["loss"] == pytest.approx(math.log(2), abs=1e-6) and abs(pre[0]["reward_margin"]) < 1e-6
    for f, p in zip(frozen, pre):
        for key in ("loss", "logps_chosen", "logps_rejected", "reward_margin", "grad_norm"):
            assert p[key] == pytest.approx(f[key], rel=1e-4, abs=1e-6), (f["step"], key)
    assert 0 < frozen[-1]["padding_fraction"] < 0.5
    f_eval, p_eval = _records(tmp_path / "frozen" / "dpo", "eval"), _records(tmp_path / "precomputed" / "dpo", "eval")
    assert [r["step"] for r in f_eval] == [3, 6]
    assert p_eval[-1]["eval_loss"] == pytest.approx(f_eval[-1]["eval_loss"], rel=1e-4)
    assert (tmp_path / "precomputed" / "dpo" / "reference_logps.pt").is_file()
    assert not (tmp_path / "frozen" / "dpo" / "reference_logps.pt").exists()


def test_rewards_separate_with_training(pretrained, tmp_path):
    from transformers import AutoModelForCausalLM

    from lmforge.train.dpo import train_dpo

    result = train_dpo(_recipe(tmp_path, pretrained))
    records = _records(tmp_path / "dpo")
    early, late = records[:3], records[-5:]
    mean = lambda rs, k: sum(r[k] for r in rs) / len(rs)  # noqa: E731
    assert mean(late, "loss") < 0.5 * math.log(2), [r["loss"] for r in records]
    assert mean(late, "reward_margin") > mean(early, "reward_margin") + 1.0
    assert mean(late, "reward_accuracy") >= 0.95 and mean(late, "rewards_chosen") > mean(late, "rewards_rejected")
    evals = _records(tmp_path / "dpo", "eval")
    assert [r["step"] for r in evals] == [10, 20, 30]
    assert evals[-1]["eval_reward_margin"] > evals[0]["eval_reward_margin"] > 0 and evals[-1]["eval_reward_accuracy"] >= 0.9
    assert evals[-1]["eval_tokens"] == json.loads((tmp_path / "dpo" / "dpo_data.json").read_text())["eval_pairs"] > 0
    report = json.loads((tmp_path / "dpo" / "dpo_data.json").read_text())
    assert report["train_read"]["records"] == 80 and report["train_read"]["bad_records"] == 0
    assert report["train_pairs"]["kept"] + report["val_pairs"]["kept"] == 80 and report["reference"] == "precomputed"
    assert result.metrics["eval_reward_accuracy"] == evals[-1]["eval_reward_accuracy"]
    meta = json.loads((result.checkpoint / "lmforge.json").read_text())
    assert meta["stage"] == "dpo" and meta["objective"] == "dpo" and meta["parent_checkpoint"] == str(pretrained)
    assert meta["recipe"]["dpo"]["reference_from"] == str(pretrained)
    model = AutoModelForCausalLM.from_pretrained(result.checkpoint)
    assert model.config.vocab_size == 300


def test_resume_is_exact_and_reuses_the_reference_scores(pretrained, tmp_path, monkeypatch):
    import lmforge.train.dpo as dpo

    overrides = ("train.max_steps=16", "train.ckpt_every=5", "train.eval_every=8")
    for name in ("full", "cut"):
        (tmp_path / name).mkdir()
    dpo.train_dpo(_recipe(tmp_path / "full", pretrained, *overrides))
    with pytest.raises(KeyboardInterrupt):
        dpo.train_dpo(_recipe(tmp_path / "cut", pretrained, *overrides), hooks=[CrashAt(12)])

    def _no_recompute(*args, **kwargs):
        raise AssertionError("the cached reference log-probs should have been used")

    monkeypatch.setattr(dpo, "compute_reference_logps", _no_recompute)
    dpo.train_dpo(_recipe(tmp_path / "cut", pretrained, *overrides), resume=True)
    full, cut = _records(tmp_path / "full" / "dpo"), _records(tmp_path / "cut" / "dpo")
    keys = ("step", "loss", "reward_margin", "reward_accuracy", "grad_norm")
    assert [[r[k] for k in keys] for r in cut] == [[r[k] for k in keys] for r in full]  # every step, exactly
    assert _records(tmp_path / "cut" / "dpo", "eval") == _records(tmp_path / "full" / "dpo", "eval")


def test_cli_trains_skips_bad_records_and_writes_a_transformers_checkpoint(pretrained, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from typer.testing import CliRunner

    from lmforge.cli import app
    from lmforge.model.hf import load_pretrained
    from lmforge.train.checkpoint import resolve_checkpoint

    data = _data(tmp_path)
    data.write_text(data.read_text() + '{"conversations": [{"from": "human", "value": "q"}], "chosen": "a"}\n')
    recipe = tmp_path / "dpo.yaml"
    recipe.write_text(f"name: dpo-test\nout_dir: {tmp_path}\ndpo:\n  train: [{data}]\n  reference: frozen\ntrain:\n  init_from: {pretrained}\n")
    args = ["dpo", str(recipe), *[x for s in SETTINGS + ["train.max_steps=4", "train.eval_every=2"] for x in ("--set", s)]]
    failed = CliRunner().invoke(app, args)
    assert failed.exit_code != 0 and "pairs.jsonl:81" in str(failed.exception or failed.output)
    result = CliRunner().invoke(app, [*args, "--skip-bad"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "reward accuracy" in result.output and "done:" in result.output
    report = json.loads((tmp_path / "dpo" / "dpo_data.json").read_text())
    assert report["train_read"]["bad_records"] == 1 and "pairs.jsonl:81: no 'rejected' field" in report["train_read"]["bad_examples"][0]
    checkpoint = resolve_checkpoint(tmp_path / "dpo")
    assert json.loads((checkpoint / "lmforge.json").read_text())["step"] == 4
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    question = [{"role": "user", "content": "What is 2 plus 3?"}]
    ids = tokenizer.apply_chat_template(question, add_generation_prompt=True, return_tensors="pt", return_dict=False)
    ours = load_pretrained(checkpoint)
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, ours(ids).logits, atol=1e-5)


def test_config_mistakes_are_one_line_errors(pretrained, tmp_path):
    from lmforge.config import ConfigError
    from lmforge.train.dpo import train_dpo

    with pytest.raises(ConfigError, match="train.init_from is not set"):
        train_dpo(load_recipe(None, [f"out_dir={tmp_path}"]))
    with pytest.raises(ConfigError, match="dpo.train is not set"):
        train_dpo(load_recipe(None, [f"out_dir={tmp_path}", f"train.init_from={pretrained}", "train.seq_len=128", "train.device=cpu"]))
    with pytest.raises(ConfigError, match="cannot fill one global batch"):
        train_dpo(_recipe(tmp_path, pretrained, "train.batch_size=100"))
    with pytest.raises(ConfigError, match="dpo.reference_from=.*no such checkpoint"):
        train_dpo(_recipe(tmp_path, pretrained, f"dpo.reference_from={tmp_path / 'missing'}"))
