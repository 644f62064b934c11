"""The lm-evaluation-harness bridge: lm-eval's numbers equal lmforge's on the same data and model.

Three ways to the same multiple-choice accuracy, per subject and overall: lmforge's own
``evaluate_multiple_choice``, lm-eval with its Hugging Face backend (``hf``) on the checkpoint
directory, and lm-eval with lmforge's backend (``lmforge``: the scorer and the engine). Also:
the task's prompts are lmforge's prompts string for string, rolling log-likelihoods and greedy
generations agree with the ``hf`` backend, and bad input is reported clearly.
"""

from __future__ import annotations

import json
import shutil

import pytest

pytest.importorskip("lm_eval")

from eval_helpers import MC_ROWS, write_mc_csv  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402

from lmforge.config import ConfigError  # noqa: E402
from lmforge.data.document import DataError  # noqa: E402
from lmforge.eval import harness  # noqa: E402
from lmforge.eval import multiple_choice as mc  # noqa: E402
from lmforge.eval.harness import LmforgeLM, run_harness, write_mc_task  # noqa: E402

# Rows 0 and 1 are the same question: leaving "the item itself" out of its own examples must
# drop that row only (lmforge), not every equal row (lm-eval's rule, unless rows differ).
DUPLICATED = [MC_ROWS[1], MC_ROWS[1], *MC_ROWS[2:], MC_ROWS[0]]


@pytest.fixture(scope="module")
def mc_data(tmp_path_factory):
    """Two subjects in different layouts; and a test/ + dev/ pair of directories."""
    root = tmp_path_factory.mktemp("mc-data")
    write_mc_csv(root / "flat" / "alpha.csv", MC_ROWS)
    write_mc_csv(root / "flat" / "beta.csv", DUPLICATED, layout="ceval")
    write_mc_csv(root / "split" / "test" / "alpha.csv", MC_ROWS[3:] + MC_ROWS[:2])
    write_mc_csv(root / "split" / "test" / "gamma.csv", MC_ROWS[::-1])
    write_mc_csv(root / "split" / "dev" / "alpha.csv", MC_ROWS[:3])
    write_mc_csv(root / "split" / "dev" / "gamma.csv", MC_ROWS[2:5])
    return root


@pytest.fixture(scope="module")
def backends(eval_checkpoint):
    """lmforge's lm-eval model and lm-eval's HF model on the same checkpoint, both in float32."""
    from lm_eval.models.huggingface import HFLM

    ours = LmforgeLM(pretrained=str(eval_checkpoint), device="cpu", dtype="float32", batch_size=4)
    theirs = HFLM(pretrained=str(eval_checkpoint), device="cpu", dtype="float32", batch_size=4)
    return ours, theirs


def _instances(kind: str, args_list) -> list[Instance]:
    return [Instance(kind, {}, args, i) for i, args in enumerate(args_list)]


def _task_requests(task_dir, name):
    """{task: [(context, continuation), ...]} as lm-eval builds them, in document order."""
    from lm_eval.tasks import TaskManager

    loaded = TaskManager(include_path=str(task_dir), include_defaults=False).load([name])
    requests = {}
    for task_name, task in loaded["tasks"].items():
        task.build_all_requests(limit=None, rank=0, world_size=1)
        requests[task_name] = [i.args for i in sorted(task.instances, key=lambda i: (i.doc_id, i.idx))]
    return requests


def _accuracies(checkpoint, data, task_dir, name, *, k_shot, scoring="letter", limit=None, num_fewshot=None):
    """Per-subject and overall accuracy three ways: lmforge, lm-eval hf, lm-eval lmforge
    (``num_fewshot``: run_harness's override of the task's own k)."""
    from lmforge.eval.scorer import LoglikScorer

    scorer = LoglikScorer.from_checkpoint(checkpoint, device="cpu", dtype="float32", batch_size=4)
    own = mc.evaluate_multiple_choice(scorer, data, k_shot=k_shot, scoring=scoring, limit=limit)
    ours = {s: r["accuracy"] for s, r in own["details"]["subjects"].items()} | {"overall": own["value"]}
    out = {"lmforge eval": ours}
    for backend in ("hf", "lmforge"):
        summary = run_harness(checkpoint, [name], backend=backend, include_path=task_dir, limit=limit, batch_size=4,
                              num_fewshot=num_fewshot)["summary"]
        got = {s: summary[f"{name}_{s}"]["acc"] for s in ours if s != "overall"} | {"overall": summary[name]["acc"]}
        if scoring == "text":
            got["acc_norm"] = summary[name]["acc_norm"]
        out[f"lm-eval {backend}"] = got
    if scoring == "text":
        out["lmforge eval"]["acc_norm"] = own["details"]["acc_norm"]
    return out


def test_lmforge_is_registered_beside_lm_evals_own_models():
    from lm_eval.api.registry import get_model
    from lm_eval.models.huggingface import HFLM

    assert get_model("lmforge") is LmforgeLM
    assert get_model("hf") is HFLM  # registering ours must not hide lm-eval's lazily loaded backends


def _lmforge_requests(data, k_shot, task_prefix):
    """{task: [(prompt, " X"), ...]} as lmforge's multiple_choice builds them."""
    evaluated, dev_files, _ = mc.locate_splits(data)
    out = {}
    for subject, path in evaluated.items():
        file = mc.read_mc_csv(path)
        pool = mc.read_mc_csv(dev_files[subject]).items if dev_files else file.items
        lang = mc.subject_lang(file.layout, [i.question for i in file.items])
        name = mc.subject_display_name(subject, file.layout, lang)
        out[f"{task_prefix}_{subject}"] = [
            (mc.mc_prompt(item, mc.few_shot_examples(item, pool, k_shot), lang, name, file.layout), " " + letter)
            for item in file.items for letter in item.letters
        ]
    return out


@pytest.mark.parametrize("k_shot, layout", [(0, "flat"), (2, "flat"), (2, "split")])
def test_task_prompts_are_lmforges_prompts(mc_data, tmp_path, k_shot, layout):
    data = mc_data / layout / ("test" if layout == "split" else "")
    task_dir = write_mc_task(data, tmp_path, name="mc", k_shot=k_shot)
    assert _task_requests(task_dir, "mc") == _lmforge_requests(data, k_shot, "mc")


def test_text_scoring_prompts_score_option_texts_with_letter_examples(mc_data, tmp_path):
    task_dir = write_mc_task(mc_data / "split" / "test", tmp_path, name="mct", k_shot=1, scoring="text")
    requests = _task_requests(task_dir, "mct")["mct_alpha"]
    file = mc.read_mc_csv(mc_data / "split" / "test" / "alpha.csv")
    first, shot = file.items[0], mc.read_mc_csv(mc_data / "split" / "dev" / "alpha.csv").items[0]
    prompt = mc.mc_prompt(first, [shot], "zh", "alpha", file.layout)
    assert requests[:4] == [(prompt, " " + option) for option in first.options]
    assert prompt.count(f"答案： {shot.answer}\n\n") == 1  # the example is answered with its letter


@pytest.mark.parametrize("k_shot, layout, scoring, limit, num_fewshot", [
    (0, "flat", "letter", None, None),
    (2, "flat", "letter", 5, None),     # examples from the evaluated split, the item itself left out
    (1, "split", "letter", None, None),  # examples from dev/
    (1, "split", "text", None, None),
    (0, "split", "letter", None, 2),     # a 0-shot task run 2-shot: the same examples lmforge takes
])
def test_accuracy_equals_lm_eval_with_both_backends(eval_checkpoint, mc_data, tmp_path, k_shot, layout, scoring, limit, num_fewshot):
    data = mc_data / layout / ("test" if layout == "split" else "")
    task_dir = write_mc_task(data, tmp_path, name="mc", k_shot=k_shot, scoring=scoring)
    results = _accuracies(eval_checkpoint, data, task_dir, "mc", k_shot=num_fewshot if num_fewshot is not None else k_shot,
                          scoring=scoring, limit=limit, num_fewshot=num_fewshot)
    assert results["lm-eval hf"] == results["lmforge eval"], results
    assert results["lm-eval lmforge"] == results["lmforge eval"], results


def test_summary_and_its_table(eval_checkpoint, mc_data, tmp_path):
    task_dir = write_mc_task(mc_data / "flat", tmp_path, name="mc")
    out = run_harness(eval_checkpoint, ["mc"], include_path=task_dir, limit=2)
    json.dumps(out)  # JSON-safe as returned
    assert out["summary"]["mc_alpha"]["n"] == 2 and out["summary"]["mc"]["n"] == 4
    assert set(out["summary"]["mc"]) == {"acc", "acc_stderr", "n"}
    lines = harness.format_summary(out["summary"])
    assert lines[0].split() == ["task", "metric", "value", "±", "stderr", "n"]
    assert [line.split()[:2] for line in lines[1:]] == [["mc_alpha", "acc"], ["mc_beta", "acc"], ["mc", "acc"]]


def test_real_cmmlu_subjects_equal_three_ways(eval_checkpoint, shared_data, tmp_path):
    source = shared_data / "eval" / "cmmlu_dev"
    subjects = ["agronomy", "anatomy", "college_law"]
    if not all((source / f"{s}.csv").is_file() for s in subjects):
        pytest.skip(f"CMMLU dev files not found in {source}")
    for subject in subjects:
        shutil.copy(source / f"{subject}.csv", tmp_path / f"{subject}.csv")
    for k_shot in (0, 1, 4):  # 4-shot prompts overflow the 512-token context: both truncate alike
        task_dir = write_mc_task(tmp_path, tmp_path / f"tasks{k_shot}", name="cmmlu_local", k_shot=k_shot)
        assert "以下是关于农学的单项选择题" in (task_dir / "cmmlu_local_agronomy.yaml").read_text(encoding="utf-8")
        assert _task_requests(task_dir, "cmmlu_local") == _lmforge_requests(tmp_path, k_shot, "cmmlu_local")
        results = _accuracies(eval_checkpoint, tmp_path, task_dir, "cmmlu_local", k_shot=k_shot)
        assert results["lm-eval hf"] == results["lmforge eval"] == results["lm-eval lmforge"], (k_shot, results)


def test_loglikelihoods_match_the_hf_backend(backends):
    ours, theirs = backends
    long_text = " ".join(f"{q} {a} {b} {c} {d} {ans}." for q, a, b, c, d, ans in MC_ROWS * 8)
    texts = ["1 + 1 = 2. The capital of France is Paris.", "下列哪个是水果？苹果。", long_text]
    assert len(ours.scorer.encode(long_text)) > ours.max_length  # several windows
    rolling = _instances("loglikelihood_rolling", [(t,) for t in texts])
    for mine, hf in zip(ours.loglikelihood_rolling(rolling), theirs.loglikelihood_rolling(rolling)):
        assert mine == pytest.approx(hf, rel=1e-3)
    pairs = _instances("loglikelihood", [("", "Answer: A"), ("1 + 1 = ", "2"), ("2 × 3 =", " 6")])
    for (mine, mine_greedy), (hf, hf_greedy) in zip(ours.loglikelihood(pairs), theirs.loglikelihood(pairs)):
        assert mine == pytest.approx(hf, rel=1e-4) and mine_greedy == hf_greedy


def test_greedy_generation_matches_the_hf_backend(backends):
    ours, theirs = backends
    prompts = ["1 + 1 = ?\nA. 1", "The following are multiple choice questions", "下列"]
    free = _instances("generate_until", [(p, {"until": [], "max_gen_toks": 20, "do_sample": False}) for p in prompts])
    long = ours.generate_until(free)
    assert long == theirs.generate_until(free)
    # A stop string taken from inside each output must cut it there; max_gen_toks must stop it early.
    stops = [text[6:8] for text in long]
    stopped = _instances("generate_until", [(p, {"until": [s], "max_gen_toks": 20}) for p, s in zip(prompts, stops)])
    cut = ours.generate_until(stopped)
    assert cut == theirs.generate_until(stopped)
    assert cut == [text[: text.index(stop)] for text, stop in zip(long, stops)]
    short = _instances("generate_until", [(p, {"until": ["\n\n"], "max_gen_toks": 3}) for p in prompts])
    assert ours.generate_until(short) == theirs.generate_until(short)
    # Sampling is seeded: the same request gives the same text.
    sampled = _instances("generate_until", [(prompts[0], {"until": [], "max_gen_toks": 8, "do_sample": True, "temperature": 1.0})])
    assert ours.generate_until(sampled) == ours.generate_until(sampled)


def test_bad_input_is_reported_clearly(mc_data, tmp_path, eval_checkpoint, monkeypatch):
    with pytest.raises(ConfigError, match="only 5 examples"):  # 6 rows, the item itself left out
        write_mc_task(mc_data / "flat" / "alpha.csv", tmp_path, name="mc", k_shot=6)
    bad = tmp_path / "bad" / "delta.csv"
    write_mc_csv(bad, [MC_ROWS[0], ("q?", "a", "b", "c", "d", "E")])
    with pytest.raises(DataError, match="delta.csv:3"):
        write_mc_task(bad, tmp_path, name="bad", k_shot=0)
    task_dir = write_mc_task(bad, tmp_path, name="bad", k_shot=0, skip_bad=True)
    assert len((task_dir / "data" / "delta_test.jsonl").read_text(encoding="utf-8").splitlines()) == 1
    with pytest.raises(ValueError, match="unknown lm-eval task"):
        run_harness(eval_checkpoint, ["no_such_task"], include_path=task_dir)
    with pytest.raises(ValueError, match="backend"):
        run_harness(eval_checkpoint, ["bad"], include_path=task_dir, backend="vllm")
    monkeypatch.setattr(harness, "_LM_EVAL_MISSING", ImportError("No module named 'lm_eval'"))
    with pytest.raises(ImportError, match="pip install lm_eval"):
        run_harness(eval_checkpoint, ["bad"], include_path=task_dir)


def test_rewriting_a_task_leaves_no_stale_subjects(mc_data, tmp_path):
    task_dir = write_mc_task(mc_data / "flat", tmp_path, name="mc")
    assert sorted(p.name for p in task_dir.glob("*.yaml")) == ["mc.yaml", "mc_alpha.yaml", "mc_beta.yaml"]
    write_mc_task(mc_data / "flat" / "alpha.csv", tmp_path, name="mc")
    assert sorted(p.name for p in task_dir.glob("*.yaml")) == ["mc.yaml"]  # one subject: the task is the name
    assert sorted(p.name for p in (task_dir / "data").iterdir()) == ["alpha_test.jsonl"]


def test_the_eval_command_runs_local_tasks_through_lm_eval(eval_checkpoint, mc_data, tmp_path, monkeypatch, capsys):
    """``lmforge eval CKPT --harness mc:PATH``: lm-eval gets the device and dtype asked for, the
    results file holds the task, and ``--details`` shows lm-eval's subjects (no counts of correct
    answers there) with a chance column."""
    import sys

    from lmforge.cli import main

    calls = []
    real_run_harness = harness.run_harness

    def recorded(*args, **kwargs):
        calls.append(kwargs)
        return real_run_harness(*args, **kwargs)

    monkeypatch.setattr(harness, "run_harness", recorded)
    monkeypatch.setenv("COLUMNS", "250")
    out_file = tmp_path / "results.json"
    monkeypatch.setattr(sys, "argv", ["lmforge", "eval", str(eval_checkpoint), "--harness", f"mc:{mc_data / 'flat'}?name=local",
                                      "--limit", "2", "--details", "--out", str(out_file), "--device", "cpu", "--dtype", "float32"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code in (0, None)
    err = capsys.readouterr().err
    (kwargs,) = calls
    assert (kwargs["device"], kwargs["dtype"], kwargs["limit"]) == ("cpu", "float32", 2)
    entry = json.loads(out_file.read_text())["tasks"]["harness:local"]
    assert entry["kind"] == "harness" and entry["metric"] == "acc" and entry["n"] == 4
    assert {s: c["n"] for s, c in entry["details"]["subjects"].items()} == {"alpha": 2, "beta": 2}
    table = err[err.index("harness:local: subjects"):].splitlines()
    assert [c.strip() for c in table[2].split("┃")[1:-1]] == ["", "n", "correct", "accuracy", "chance"]
    rows = {cells[0]: cells[1:] for cells in ([c.strip() for c in line.split("│")[1:-1]] for line in table if line.startswith("│"))}
    for subject in ("alpha", "beta"):
        n, correct, accuracy, chance = rows[subject]
        assert (n, correct, chance) == ("2", "—", "—")  # lm-eval gives no count of correct answers
        assert accuracy == f"{entry['details']['subjects'][subject]['accuracy']:.1%}"


def test_harness_placement_follows_device_and_dtype():
    import torch

    from lmforge.eval.cli import _harness_placement
    from lmforge.infer.engine import cpu_has_fast_bf16

    assert _harness_placement("cpu", "float32") == {"device": "cpu", "dtype": "float32"}
    assert _harness_placement("cpu", "bfloat16") == {"device": "cpu", "dtype": "bfloat16"}
    auto = _harness_placement("auto", "auto")
    if torch.cuda.is_available():
        assert auto["device"].startswith("cuda") and auto["dtype"] in ("bfloat16", "float32")
    else:  # no GPU: the CPU, in bf16 only where it multiplies bf16 natively
        assert auto == {"device": "cpu", "dtype": "bfloat16" if cpu_has_fast_bf16() else "float32"}
