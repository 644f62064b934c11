"""``lmforge distill`` (whitebox): a tiny student learns a quickly trained, bigger teacher's token
distributions on chat data — held-out KL falls, α=1 is plain SFT, the KL direction and T² are
right, an MoE teacher teaches a dense student, only the student trains, the teacher must share
the tokenizer, and the CLI and transformers take the result."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from chat_helpers import CHAT_SYSTEM, CrashAt, addition_chats, save_chat_checkpoint

from lmforge.recipe import load_recipe

def _write_chats(path: Path, n: int, seed: int) -> Path:
    path.write_text("\n".join(json.dumps(c) for c in addition_chats(n, seed)) + "\n")
    return path


def _checkpoint(directory: Path, tok_dir: Path, seed: int, **shape) -> Path:
    return save_chat_checkpoint(directory, tok_dir, seed, **{"d_model": 32, **shape})


def _recipe(tmp_path: Path, student: Path, teacher: Path, data: Path, *overrides: str):
    return load_recipe(None, [
        f"out_dir={tmp_path}", f"train.init_from={student}", f"distill.teacher={teacher}", f"sft.train=[{data}]",
        "sft.val_fraction=0.1", "train.seq_len=256", "train.batch_size=2", "train.max_steps=30", "train.warmup_steps=2",
        "train.lr=5e-3", "train.log_every=1", "train.eval_every=10", "train.ckpt_every=0", "train.num_threads=1",
        "train.dtype=float32", "train.device=cpu", "train.progress=false", "train.tensorboard=false", *overrides,
    ])  # fmt: skip


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    """One tokenizer; a random tiny student; a wider teacher SFT-trained for a few seconds on the
    same chats (so its distributions really differ from the student's); a random MoE teacher; and
    a teacher with another tokenizer."""
    from lmforge.tokenizer.train import TokenizerConfig, train_tokenizer
    from lmforge.train.sft import train_sft

    root = tmp_path_factory.mktemp("distill")
    texts = [t["value"] for c in addition_chats(200, seed=9) for t in c["conversations"]] + [CHAT_SYSTEM] * 20
    tok = train_tokenizer(texts, root / "tok", TokenizerConfig(vocab_size=300, num_reserved_tokens=4))
    data = _write_chats(root / "chat.jsonl", 160, seed=0)
    student = _checkpoint(root / "student", tok, seed=0)
    teacher_init = _checkpoint(root / "teacher_init", tok, seed=1, d_model=64, n_heads=4, n_kv_heads=2)
    sft = load_recipe(None, [
        f"out_dir={root}", f"train.out_dir={root / 'teacher'}", f"train.init_from={teacher_init}", f"sft.train=[{data}]",
        "sft.val_fraction=0", "train.seq_len=256", "train.batch_size=2", "train.max_steps=40", "train.warmup_steps=2",
        "train.lr=1e-2", "train.log_every=10", "train.eval_every=0", "train.ckpt_every=0", "train.num_threads=1",
        "train.dtype=float32", "train.device=cpu", "train.progress=false", "train.tensorboard=false",
    ])  # fmt: skip
    train_sft(sft)
    moe = _checkpoint(root / "moe_teacher", tok, seed=2, num_experts=4, num_experts_per_tok=2, moe_ffn_hidden=32)
    other_tok = train_tokenizer([w[::-1] for w in texts], root / "other_tok", TokenizerConfig(vocab_size=300, num_reserved_tokens=4))
    foreign = _checkpoint(root / "foreign_teacher", other_tok, seed=1)
    wide_vocab = _checkpoint(root / "wide_vocab_teacher", tok, seed=1, vocab_size=320)
    return {"tok": tok, "data": data, "student": student, "teacher": root / "teacher", "moe": moe, "foreign": foreign,
            "wide_vocab": wide_vocab}  # fmt: skip


class _FixedLogits(nn.Module):
    """A 'model' whose logits are given: for hand-checked losses."""

    def __init__(self, logits: list[list[float]]) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.tensor([logits], dtype=torch.float32))

    def forward(self, input_ids, position_ids=None, attention_mask=None):
        from lmforge.model.transformer import ModelOutput

        return ModelOutput(logits=self.logits, aux_loss=torch.zeros(()))


def _softmax(xs: list[float], T: float) -> list[float]:
    e = [math.exp(x / T) for x in xs]
    return [v / sum(e) for v in e]


def test_kl_direction_and_temperature_scaling_by_hand():
    from lmforge.train.distill import Distillation

    student_rows = [[2.0, 0.0, -1.0], [0.5, 0.5, 0.0], [9.0, -9.0, 9.0]]  # the last row is not labelled
    teacher_rows = [[0.0, 3.0, 0.0], [1.0, -2.0, 2.0], [0.0, 0.0, 0.0]]
    batch = {"input_ids": torch.zeros(1, 3, dtype=torch.long), "labels": torch.tensor([[1, 2, -100]])}
    T, alpha = 2.0, 0.25

    def kl(p, q):
        return sum(a * math.log(a / b) for a, b in zip(p, q))

    forward = [kl(_softmax(t, T), _softmax(s, T)) for t, s in zip(teacher_rows[:2], student_rows[:2])]
    reverse = [kl(_softmax(s, T), _softmax(t, T)) for t, s in zip(teacher_rows[:2], student_rows[:2])]
    at_one = [kl(_softmax(t, 1.0), _softmax(s, 1.0)) for t, s in zip(teacher_rows[:2], student_rows[:2])]
    ce = [-math.log(_softmax(s, 1.0)[y]) for s, y in zip(student_rows[:2], [1, 2])]
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    expected = alpha * mean(ce) + (1 - alpha) * T * T * mean(forward)
    reverse_expected = alpha * mean(ce) + (1 - alpha) * T * T * mean(reverse)

    objective = Distillation(_FixedLogits(teacher_rows), alpha=alpha, temperature=T)
    student = _FixedLogits(student_rows)
    loss, metrics = objective(student, batch)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert loss.item() != pytest.approx(reverse_expected, rel=1e-2)  # KL(teacher ‖ student), not the reverse
    assert metrics["kl"].item() == pytest.approx(mean(forward), rel=1e-6)
    assert metrics["kl_t1"].item() == pytest.approx(mean(at_one), rel=1e-6)
    assert metrics["ce"].item() == pytest.approx(mean(ce), rel=1e-6)
    assert objective.loss_tokens(batch) == 2
    loss.backward()
    assert student.logits.grad[0, 2].abs().sum() == 0  # the unlabelled position gets no gradient
    ce_sum, tokens, sums = objective.evaluate(student, batch)
    assert tokens == 2 and ce_sum == pytest.approx(sum(ce), rel=1e-6)
    assert sums["kl"] == pytest.approx(sum(forward), rel=1e-6) and sums["kl_t1"] == pytest.approx(sum(at_one), rel=1e-6)
    # T² keeps the KL term's gradient at the scale of T = 1 as T grows (Hinton et al.): without it,
    # the gradient would shrink by ~1/T².
    grads = []
    for temperature in (1.0, 8.0, 32.0):
        s = _FixedLogits(student_rows)
        Distillation(_FixedLogits(teacher_rows), alpha=0.0, temperature=temperature)(s, batch)[0].backward()
        grads.append(s.logits.grad.norm().item())
    assert grads[2] == pytest.approx(grads[1], rel=0.1) and grads[2] > 0.05 * grads[0]


def _packed_batch(tok_dir: Path, n: int = 12, seq_len: int = 256) -> dict:
    from lmforge.data.chat import read_conversations
    from lmforge.data.packing import Packer, collate
    from lmforge.tokenizer.train import load_tokenizer

    tokenizer = load_tokenizer(tok_dir)
    path = _write_chats(tok_dir.parent / "batch.jsonl", n, seed=5)
    rows = list(Packer(seq_len).pack_messages([c.messages for c in read_conversations([str(path)])], tokenizer))
    return collate(rows, 0, seq_len)


@pytest.mark.parametrize("moe_student", [False, True])
def test_alpha_one_is_language_modeling(models, moe_student):
    from lmforge.model.hf import load_pretrained
    from lmforge.train.checkpoint import resolve_checkpoint
    from lmforge.train.distill import Distillation
    from lmforge.train.objectives import LanguageModeling

    student = load_pretrained(models["moe"] if moe_student else models["student"]).train()
    teacher = load_pretrained(resolve_checkpoint(models["teacher"]))
    batch = _packed_batch(models["tok"])
    assert batch["attention_mask"].shape[-1] == 256 and int(batch["labels"].ne(-100).sum()) > 50
    torch.manual_seed(0)
    distilled, metrics = Distillation(teacher, alpha=1.0, temperature=2.0)(student, batch)
    torch.manual_seed(0)
    lm, lm_metrics = LanguageModeling()(student, batch)
    assert distilled.item() == pytest.approx(lm.item(), rel=1e-6, abs=1e-6)
    assert metrics["ce"].item() == pytest.approx(lm_metrics["ce"].item(), rel=1e-6)
    assert ("aux_loss" in metrics) == moe_student and metrics["kl"].item() > 0
    if moe_student:
        assert metrics["aux_loss"].item() == pytest.approx(lm_metrics["aux_loss"].item()) and metrics["aux_loss"].item() > 0
    student.eval()
    ce_sum, tokens, _ = Distillation(teacher).evaluate(student, batch)
    assert (ce_sum, tokens) == pytest.approx(LanguageModeling().evaluate(student, batch), rel=1e-6)


def test_packed_rows_give_both_models_their_positions_and_mask(models):
    """The KL of a packed batch equals the sum over its conversations scored one by one — which
    holds only if both teacher and student get each conversation's positions and mask."""
    from lmforge.model.hf import load_pretrained
    from lmforge.train.checkpoint import resolve_checkpoint
    from lmforge.train.distill import Distillation

    student, teacher = load_pretrained(models["student"]), load_pretrained(resolve_checkpoint(models["teacher"]))
    objective = Distillation(teacher, temperature=2.0)
    packed = _packed_batch(models["tok"])
    _, tokens, sums = objective.evaluate(student, packed)
    one_by_one = {"kl": 0.0, "kl_t1": 0.0, "teacher_ce": 0.0}
    for b in range(packed["input_ids"].shape[0]):
        segments = packed["position_ids"][b].eq(0).nonzero().flatten().tolist() + [None]
        for start, end in zip(segments[:-1], segments[1:]):
            ids, labels = packed["input_ids"][b, start:end], packed["labels"][b, start:end]
            if labels.ne(-100).any():
                alone = {"input_ids": ids[None], "labels": labels[None]}
                for k, v in objective.evaluate(student, alone)[2].items():
                    one_by_one[k] += v
    for key, value in one_by_one.items():
        assert sums[key] == pytest.approx(value, rel=1e-4), key
    # Without the teacher seeing the mask, its distributions (and the KL) would change.
    objective.teacher = _MaskBlind(teacher)
    assert objective.evaluate(student, packed)[2]["kl"] != pytest.approx(sums["kl"], rel=1e-3)
    assert tokens == int(packed["labels"].ne(-100).sum())


class _MaskBlind(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, position_ids=None, attention_mask=None):
        return self.model(input_ids)


def test_held_out_kl_to_the_teacher_falls_and_the_student_loads_in_transformers(models, tmp_path):
    from transformers import AutoModelForCausalLM

    from lmforge.model.hf import load_pretrained
    from lmforge.tokenizer.train import load_tokenizer
    from lmforge.train.checkpoint import resolve_checkpoint
    from lmforge.train.distill import Distillation, train_distill
    from lmforge.train.distributed import DistEnv
    from lmforge.train.sft import prepare_chat_data

    val = _write_chats(tmp_path / "val.jsonl", 16, seed=77)
    recipe = _recipe(tmp_path, models["student"], models["teacher"], models["data"], f"sft.val=[{val}]", "distill.alpha=0.2")
    result = train_distill(recipe)

    teacher = load_pretrained(resolve_checkpoint(models["teacher"]))
    held_out = prepare_chat_data(recipe.sft, recipe.train, load_tokenizer(models["tok"]), DistEnv()).eval

    def held_out_kl(student_dir) -> float:
        student, objective = load_pretrained(student_dir), Distillation(teacher, temperature=2.0)
        sums = [objective.evaluate(student, b) for b in held_out]
        return sum(s[2]["kl_t1"] for s in sums) / sum(s[1] for s in sums)

    before, after = held_out_kl(models["student"]), held_out_kl(result.checkpoint)
    assert before > 1.0, before  # the teacher really differs from the student
    assert after < 0.5 * before, (before, after)  # 4.99 -> 1.76 nats when written
    records = [json.loads(line) for line in (tmp_path / "distill" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [10, 20, 30] and evals[-1]["eval_kl_t1"] < evals[0]["eval_kl_t1"]
    assert evals[-1]["eval_kl_t1"] == pytest.approx(after, rel=1e-4)  # the logged figure is this one
    assert evals[-1]["eval_teacher_ce"] < evals[-1]["eval_loss"]
    train = [r for r in records if r["kind"] == "train"]
    assert all({"ce", "kl", "kl_t1"} <= set(r) and "aux_loss" not in r for r in train)

    report = json.loads((tmp_path / "distill" / "distill_data.json").read_text())
    assert report["teacher"] == str(resolve_checkpoint(models["teacher"])) and report["student"] == str(models["student"])
    assert report["alpha"] == 0.2 and report["temperature"] == 2.0 and report["teacher_parameters"] > report["student_parameters"]
    assert report["val_conversations"] == 16 and report["train_conversations"] == 160
    meta = json.loads((result.checkpoint / "lmforge.json").read_text())
    assert meta["stage"] == "distill" and meta["objective"] == "distillation" and meta["parent_checkpoint"] == str(models["student"])
    hf = AutoModelForCausalLM.from_pretrained(result.checkpoint).eval()
    ids = held_out[0]["input_ids"][:1, :64]
    with torch.no_grad():
        assert torch.allclose(hf(ids).logits, load_pretrained(result.checkpoint)(ids).logits, atol=1e-4)


class _Inspect:
    """Keeps the trainer, to look at its teacher and optimizer after the run."""

    def on_step_end(self, trainer, step, record):
        self.trainer = trainer


def test_moe_teacher_teaches_a_dense_student_and_only_the_student_trains(models, tmp_path):
    from lmforge.model.hf import load_pretrained
    from lmforge.train.distill import train_distill

    hook = _Inspect()
    result = train_distill(_recipe(tmp_path, models["student"], models["moe"], models["data"], "train.max_steps=4"), hooks=[hook])
    assert result.step == 4 and math.isfinite(result.metrics["kl_t1"]) and "eval_kl" in result.metrics
    trainer, teacher = hook.trainer, hook.trainer.objective.teacher
    assert teacher.config.is_moe and not trainer.raw_model.config.is_moe
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert not {id(p) for p in teacher.parameters()} & {id(p) for p in trainer.params}
    on_disk = load_pretrained(models["moe"]).state_dict()
    for name, value in teacher.state_dict().items():
        assert torch.equal(value, on_disk[name]), name
    start = load_pretrained(models["student"]).state_dict()
    assert any(not torch.equal(v, start[k]) for k, v in trainer.raw_model.state_dict().items())


def test_distill_resume_is_exact(models, tmp_path):
    from lmforge.train.distill import train_distill

    def run(where: Path, **kw):
        where.mkdir(exist_ok=True)
        recipe = _recipe(where, models["student"], models["teacher"], models["data"], "train.max_steps=8", "train.ckpt_every=4")
        return train_distill(recipe, **kw)

    def logged(where: Path):
        return [(r["loss"], r["kl"]) for r in map(json.loads, (where / "distill" / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "train"]

    run(tmp_path / "full")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut", hooks=[CrashAt(6)])
    run(tmp_path / "cut", resume=True)
    assert logged(tmp_path / "cut") == logged(tmp_path / "full") and len(logged(tmp_path / "full")) == 8


def test_teacher_needs_the_students_tokenizer_and_vocabulary(models, tmp_path):
    from lmforge.config import ConfigError
    from lmforge.train.distill import train_distill

    student = models["student"]
    for teacher, says in ((models["foreign"], "different tokenizers"), (models["wide_vocab"], "vocab_size 320")):
        with pytest.raises(ConfigError, match=says) as err:
            train_distill(_recipe(tmp_path, student, teacher, models["data"]))
        assert str(teacher) in str(err.value) and str(student) in str(err.value)
    with pytest.raises(ConfigError, match="distill.teacher is not set"):
        train_distill(_recipe(tmp_path, student, "", models["data"]))
    with pytest.raises(ConfigError, match="distill.teacher=.*nowhere"):
        train_distill(_recipe(tmp_path, student, tmp_path / "nowhere", models["data"]))
    assert not (tmp_path / "distill").exists()


def test_distill_cli(models, tmp_path):
    from typer.testing import CliRunner

    from lmforge.cli import app

    recipe = tmp_path / "distill.yaml"
    recipe.write_text(
        f"out_dir: {tmp_path}\nsft: {{train: [{models['data']}], val_fraction: 0.1}}\n"
        f"distill: {{teacher: {models['teacher']}, alpha: 0.5, temperature: 1.5}}\n"
        f"train: {{seq_len: 256, batch_size: 2, max_steps: 2, num_threads: 1, device: cpu, dtype: float32, "
        f"progress: false, tensorboard: false}}\n"
    )
    result = CliRunner().invoke(app, ["distill", str(recipe), "--set", f"train.init_from={models['student']}", "--set", "distill.alpha=0.7"])
    assert result.exit_code == 0, result.output
    assert "done:" in result.output and "step 2" in result.output
    report = json.loads((tmp_path / "distill" / "distill_data.json").read_text())
    assert report["alpha"] == 0.7 and report["temperature"] == 1.5
    assert len(list((tmp_path / "distill" / "checkpoints").glob("step_*/model.safetensors"))) == 1
