"""Generative math tasks (GSM8K and lmforge's synthetic set) and the task layer: spec parsing,
running several tasks, saving and merging results.

Scoring is checked with a scripted engine (a random tiny model almost never answers right); the
real engine runs the GSM8K sample end to end for the plumbing: prompts, shots, limits."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from lmforge.config import ConfigError
from lmforge.data.document import DataError
from lmforge.eval.math_tasks import evaluate_math, fewshot_prompt, read_problems
from lmforge.eval.tasks import KINDS, OPTIONS, EvalModel, TaskSpec, parse_task, results_table, run_tasks, save_results
from lmforge.infer.sampling import SamplingConfig
from lmforge.synth.math import generate_problems, math_accuracy

GSM8K = [
    {"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether in April and May?",
     "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72"},
    {"question": "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. How much did she earn?",
     "answer": "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\nWorking 50 minutes, she earned 0.2 x 50 = $<<0.2*50=10>>10.\n#### 10"},
    {"question": "  Betty has 3 apples and buys 1,000 more. How many apples does she have?  ",
     "answer": "3 + 1000 = <<3+1000=1003>>1003\n#### 1,003"},
]  # fmt: skip


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in records), encoding="utf-8")
    return path


# ---- a scripted engine -----------------------------------------------------------------------------


@dataclass
class Reply:
    text: str


class ScriptedEngine:
    """What math_accuracy asks of an engine: encode / encode_chat / generate / max_context.
    Token ids are characters; ``replies(prompt_text)`` answers; every call is recorded."""

    def __init__(self, replies, max_context: int = 4096) -> None:
        self.replies, self.max_context = replies, max_context
        self.calls: list[tuple[list[str], SamplingConfig]] = []

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def encode_chat(self, messages: list[dict]) -> list[int]:
        return self.encode("".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>")

    def generate(self, prompts, sampling):
        texts = ["".join(map(chr, p)) for p in prompts]
        self.calls.append((texts, sampling))
        return [Reply(self.replies(t)) for t in texts]


def answer_from_prompt(correct: dict[str, str]):
    """A reply function: the scripted reply of the problem whose question ends the prompt."""

    def reply(prompt: str) -> str:
        for question, text in correct.items():
            if question.strip() in prompt[-len(question) - 40 :]:
                return text
        raise AssertionError(f"unexpected prompt {prompt[-80:]!r}")

    return reply


def test_math_accuracy_scores_scripted_replies():
    records = generate_problems(12, levels=[1, 2], langs=["en", "zh"], seed=3, split="test")
    golds = [r["answer"] for r in records]
    wrong = {1, 4, 5, 9}  # these get a wrong number; 7 states nothing, only a last number
    script = {}
    for i, r in enumerate(records):
        q = r["messages"][0]["content"]
        if i in wrong:
            script[q] = f"Let me think. Answer: {golds[i]}1"
        elif i == 7:
            script[q] = f"I get {golds[i]} in the end"
        else:
            script[q] = f"steps...\nAnswer: {golds[i]}"
    engine = ScriptedEngine(answer_from_prompt(script))
    result = math_accuracy(engine, records, batch_size=5, n_examples=3)
    assert result["n"] == 12 and result["correct"] == 8 and result["accuracy"] == pytest.approx(8 / 12)
    strict = math_accuracy(engine, records, batch_size=5, strict=True)
    assert strict["correct"] == 7 and strict["strict"]  # the unstated answer no longer counts
    # batches of at most 5, prompts sorted by length (short first), every prompt asked once
    sizes = [len(texts) for texts, _ in engine.calls[:3]]
    assert sizes == [5, 5, 2]
    asked = [t for texts, _ in engine.calls[:3] for t in texts]
    assert [len(t) for t in asked] == sorted(len(t) for t in asked) and len(set(asked)) == 12
    # greedy by default, reply budget as asked
    _, sampling = engine.calls[0]
    assert sampling.temperature == 0 and sampling.max_new_tokens == 128
    # breakdowns
    for group, key in (("by_level", "level"), ("by_lang", "lang"), ("by_kind", "kind")):
        cells = result[group]
        assert sum(c["n"] for c in cells.values()) == 12 and sum(c["correct"] for c in cells.values()) == 8
        for value, cell in cells.items():
            members = [i for i, r in enumerate(records) if str(r[key]) == value]
            assert cell["n"] == len(members) and cell["correct"] == sum(i not in wrong for i in members)
            assert cell["accuracy"] == cell["correct"] / cell["n"]
    examples = result["examples"]
    assert len(examples) == 3 and examples[1]["correct"] is False and examples[0]["correct"] is True
    assert examples[1]["pred"] == golds[1] + "1" and examples[1]["gold"] == golds[1]
    assert examples[0]["prompt"] == records[0]["messages"][0]["content"] and examples[0]["reply"] == script[examples[0]["prompt"]]


def test_math_accuracy_passes_sampling_and_prompt_ids_through():
    records = GSM8K
    engine = ScriptedEngine(lambda prompt: "#### 72" if "Natalia" in prompt else "I don't know", max_context=100)
    sampling = SamplingConfig(max_new_tokens=300, temperature=0.7, top_p=0.9, top_k=20, seed=11, stop=["\n\n"])
    result = math_accuracy(engine, records, sampling=sampling, prompt_ids=[engine.encode(f"Q: {r['question']}") for r in records])
    (texts, used), = engine.calls
    assert sorted(texts) == sorted(f"Q: {r['question']}" for r in records)  # the given prompts, not the chat template
    # everything but the reply budget as given; the budget leaves room for the prompt (max_context / 2)
    assert (used.temperature, used.top_p, used.top_k, used.seed, used.stop) == (0.7, 0.9, 20, 11, ["\n\n"])
    assert used.max_new_tokens == 50
    assert result["sampling"] == {"temperature": 0.7, "max_new_tokens": 50}
    assert result["correct"] == 1 and [e["gold"] for e in result["examples"]] == ["72", "10", "1003"]
    with pytest.raises(ValueError, match="2 prompts for 3 problems"):
        math_accuracy(engine, records, prompt_ids=[[1], [2]])
    with pytest.raises(ValueError, match="no problems"):
        math_accuracy(engine, [])


# ---- prompts and files -----------------------------------------------------------------------------


def test_fewshot_prompt_for_gsm8k_records():
    prompt = fewshot_prompt(GSM8K[:2], GSM8K[2])
    assert prompt == (
        "Question: Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
        "How many clips did Natalia sell altogether in April and May?\n"
        "Answer: Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether in April and May.\n#### 72\n\n"
        "Question: Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. How much did she earn?\n"
        "Answer: Weng earns 12/60 = $0.2 per minute.\nWorking 50 minutes, she earned 0.2 x 50 = $10.\n#### 10\n\n"
        "Question: Betty has 3 apples and buys 1,000 more. How many apples does she have?\nAnswer:"
    )
    assert fewshot_prompt([], GSM8K[0]) == f"Question: {GSM8K[0]['question']}\nAnswer:"


def test_fewshot_prompt_for_synthetic_records():
    shot, other, item = generate_problems(3, levels=[1], langs=["en"], seed=2)
    solution = shot["messages"][1]["content"]
    assert "Answer:" in solution
    expected = (f"Question: {shot['messages'][0]['content']}\nAnswer: {solution}\n\n"
                f"Question: {other['messages'][0]['content']}\nAnswer: {other['messages'][1]['content']}\n\n"
                f"Question: {item['messages'][0]['content']}\nAnswer:")
    assert fewshot_prompt([shot, other], item) == expected
    # the last user turn is the question; a system turn is not part of it
    with_system = {**item, "messages": [{"role": "system", "content": "be brief"}, *item["messages"]]}
    assert fewshot_prompt([shot], with_system) == f"Question: {shot['messages'][0]['content']}\nAnswer: {solution}\n\n" \
                                                  f"Question: {item['messages'][0]['content']}\nAnswer:"
    unsolved = {"messages": [{"role": "user", "content": "1 + 1?"}], "answer": "2"}
    with pytest.raises(ValueError, match="needs its solution"):
        fewshot_prompt([unsolved], item)


@pytest.mark.parametrize("line, message", [
    ("not json at all", ""),
    ('{"answer": "#### 3"}', "needs 'messages' or 'question'"),
    ('{"question": "How many?"}', "no gold answer"),
    ('{"question": "How many?", "answer": "none given"}', "no gold answer"),
    ('[1, 2]', "must be a JSON object"),
])
def test_bad_problem_lines_name_file_and_line(tmp_path, line, message):
    path = write_jsonl(tmp_path / "problems.jsonl", [GSM8K[0], line, GSM8K[1]])
    with pytest.raises(DataError, match=rf"problems\.jsonl:2: .*{message}"):
        read_problems(path)
    from lmforge.data.readers import ReadStats

    stats = ReadStats()
    assert read_problems(path, skip_bad=True, stats=stats) == [GSM8K[0], GSM8K[1]]
    assert stats.bad_lines == 1 and stats.bad_examples[0].startswith(f"{path}:2:")
    # evaluate_math reports it in details["skipped"]
    engine = ScriptedEngine(lambda prompt: "#### 72")
    result = evaluate_math(engine, path, skip_bad=True)
    assert result["n"] == 2 and result["details"]["skipped"] == 1 and result["value"] == 0.5


def test_evaluate_math_prompts_shots_and_limits(tmp_path):
    path = write_jsonl(tmp_path / "gsm.jsonl", GSM8K)
    engine = ScriptedEngine(answer_from_prompt({r["question"]: "The answer is 1003." for r in GSM8K}))
    result = evaluate_math(engine, path, prompt="fewshot", k_shot=2, max_new_tokens=7)
    assert result["n"] == 1 and result["value"] == 1.0  # the first two are the examples, not asked
    assert (result["kind"], result["metric"], result["chance"]) == ("math", "accuracy", None)
    assert result["details"]["k_shot"] == 2 and result["details"]["prompt"] == "fewshot" and result["details"]["skipped"] == 0
    (texts, sampling), = engine.calls
    assert texts == [fewshot_prompt(GSM8K[:2], GSM8K[2])]
    assert sampling.stop == ["\nQuestion:", "Question:"] and sampling.max_new_tokens == 7 and sampling.temperature == 0
    # chat: the question as the user turn; limit; no stop strings
    engine.calls.clear()
    chat = evaluate_math(engine, path, prompt="chat", limit=2, temperature=0.5, seed=4)
    (texts, sampling), = engine.calls
    asked = sorted("".join(map(chr, engine.encode_chat([{"role": "user", "content": r["question"]}]))) for r in GSM8K[:2])
    assert chat["n"] == 2 and sorted(texts) == asked
    assert sampling.stop == [] and (sampling.temperature, sampling.seed) == (0.5, 4)
    assert chat["details"]["sampling"]["temperature"] == 0.5
    # shots from another file: this file's problems are asked, except one that is a shot
    shots = write_jsonl(tmp_path / "shots.jsonl", GSM8K[1:])
    engine.calls.clear()
    assert evaluate_math(engine, path, prompt="fewshot", k_shot=1, shots_path=shots)["n"] == 2
    (texts, _), = engine.calls
    assert sorted(texts) == sorted(fewshot_prompt([GSM8K[1]], r) for r in (GSM8K[0], GSM8K[2]))
    other = write_jsonl(tmp_path / "other.jsonl", [GSM8K[2]])  # no overlap: every problem is asked
    engine.calls.clear()
    assert evaluate_math(engine, write_jsonl(tmp_path / "two.jsonl", GSM8K[:2]), prompt="fewshot", k_shot=1, shots_path=other)["n"] == 2
    assert all(t.startswith(f"Question: {GSM8K[2]['question'].strip()}") for t in engine.calls[0][0])
    # records given directly
    assert evaluate_math(engine, list(GSM8K), limit=1)["n"] == 1
    with pytest.raises(ValueError, match="3-shot needs 3 solved examples; found 2"):
        evaluate_math(engine, path, prompt="fewshot", k_shot=3, shots_path=shots)
    with pytest.raises(ValueError, match="prompt must be one of chat, fewshot"):
        evaluate_math(engine, path, prompt="zero")
    with pytest.raises(ValueError, match="k_shot must be >= 0"):
        evaluate_math(engine, path, prompt="fewshot", k_shot=-1)
    with pytest.raises(ValueError, match="no problems to evaluate"):
        evaluate_math(engine, path, prompt="fewshot", k_shot=3)
    with pytest.raises(ValueError, match="k_shot=2 needs prompt=fewshot"):  # chat prompts take no examples
        evaluate_math(engine, path, prompt="chat", k_shot=2)


def test_a_shot_is_never_asked(tmp_path):
    """With shots_path the file itself, its first k problems are the shots and are not asked; a
    problem repeating a shot's question (whitespace aside) is not asked either."""
    path = write_jsonl(tmp_path / "gsm.jsonl", GSM8K)
    engine = ScriptedEngine(answer_from_prompt({r["question"]: "#### 1,003" for r in GSM8K}))
    same = evaluate_math(engine, path, prompt="fewshot", k_shot=2, shots_path=path)
    assert same["n"] == len(GSM8K) - 2 and same["value"] == 1.0 and same["details"]["k_shot"] == 2
    assert engine.calls[-1][0] == [fewshot_prompt(GSM8K[:2], GSM8K[2])]
    # the same result as shots taken from the file by default
    assert evaluate_math(engine, path, prompt="fewshot", k_shot=2)["n"] == len(GSM8K) - 2
    # a duplicate of the first problem later in the file is left out with it
    duplicate = {**GSM8K[0], "question": f"  {GSM8K[0]['question']}\n"}
    with_duplicate = write_jsonl(tmp_path / "dup.jsonl", [*GSM8K, duplicate])
    engine.calls.clear()
    result = evaluate_math(engine, with_duplicate, prompt="fewshot", k_shot=1)
    assert result["n"] == 2
    (texts, _), = engine.calls
    assert sorted(texts) == sorted(fewshot_prompt(GSM8K[:1], r) for r in GSM8K[1:])
    # synthetic records (messages): the question is the last user turn
    records = generate_problems(6, levels=[1], langs=["en"], seed=8)
    records.append({**records[1], "messages": [{"role": "system", "content": "be brief"}, *records[1]["messages"]]})
    synth = evaluate_math(ScriptedEngine(lambda prompt: "Answer: 0"), records, prompt="fewshot", k_shot=2)
    assert synth["n"] == len(records) - 3  # the two shots and the copy of the second


# ---- the real engine on the GSM8K sample -------------------------------------------------------------


@pytest.fixture(scope="module")
def eval_model(eval_checkpoint):
    return EvalModel.from_checkpoint(eval_checkpoint, device="cpu", dtype="float32", batch_size=8)


@pytest.mark.parametrize("prompt, k_shot", [("fewshot", 2), ("chat", 0)])
def test_gsm8k_sample_end_to_end(eval_model, shared_data, prompt, k_shot):
    path = shared_data / "eval" / "gsm8k_train.jsonl"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    first = [json.loads(line) for line in path.open(encoding="utf-8").readlines()[:8]]
    result = evaluate_math(eval_model.engine, path, prompt=prompt, k_shot=k_shot, limit=5, max_new_tokens=6, batch_size=3)
    assert result["n"] == 5 and 0.0 <= result["value"] <= 1.0
    d = result["details"]
    assert d["k_shot"] == k_shot and d["prompt"] == prompt and d["skipped"] == 0
    asked = first[k_shot : k_shot + 5]  # the shots are not among the evaluated problems
    assert [e["prompt"] for e in d["examples"]] == [r["question"] for r in asked]
    assert [e["gold"] for e in d["examples"]] == [r["answer"].rsplit("#### ", 1)[1].strip() for r in asked]
    assert d["sampling"] == {"temperature": 0.0, "max_new_tokens": 6}
    again = evaluate_math(eval_model.engine, path, prompt=prompt, k_shot=k_shot, limit=5, max_new_tokens=6, batch_size=5)
    assert [e["reply"] for e in again["details"]["examples"]] == [e["reply"] for e in d["examples"]]  # greedy: batching changes nothing


# ---- task specs ------------------------------------------------------------------------------------------


def make_path(path: str) -> None:
    """An empty directory (``.../``) or file at ``path``, relative to the current directory."""
    p = Path(path)
    if path.endswith("/"):
        p.mkdir(parents=True, exist_ok=True)
    else:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.touch()


@pytest.mark.parametrize("spec, kind, path, options, name", [
    ("bpb:data/wiki.txt", "bpb", "data/wiki.txt", {}, "bpb:wiki"),
    ("bpb:data/a.jsonl.zst?max_bytes=1000&stride=64&txt_mode=paragraph&text_key=body", "bpb", "data/a.jsonl.zst",
     {"max_bytes": 1000, "stride": 64, "txt_mode": "paragraph", "text_key": "body"}, "bpb:a"),
    ("mc:evals/cmmlu_dev/?k_shot=5&lang=zh&scoring=text&limit=10&dev=evals/dev", "mc", "evals/cmmlu_dev/",
     {"k_shot": 5, "lang": "zh", "scoring": "text", "limit": 10, "dev": "evals/dev"}, "mc:cmmlu_dev"),
    ("CMMLU:x/y", "cmmlu", "x/y", {}, "cmmlu:y"),
    ("ceval:val?name=ceval-val", "ceval", "val", {}, "ceval-val"),
    ("mmlu:test.csv?k_shot=0", "mmlu", "test.csv", {"k_shot": 0}, "mmlu:test"),
    ("gsm8k:gsm.jsonl?prompt=chat&k_shot=0&shots=s.jsonl&limit=3&max_new_tokens=64&temperature=0.5&seed=7&strict=yes",
     "gsm8k", "gsm.jsonl", {"prompt": "chat", "k_shot": 0, "shots": "s.jsonl", "limit": 3, "max_new_tokens": 64,
                            "temperature": 0.5, "seed": 7, "strict": True}, "gsm8k:gsm"),
    ("math", "math", None, {}, "math"),
    ("math?n=4&max_new_tokens=8&levels=1,2&langs=en&strict=0", "math", None,
     {"n": 4, "max_new_tokens": 8, "levels": "1,2", "langs": "en", "strict": False}, "math"),
    ("math:held_out.jsonl?temperature=1", "math", "held_out.jsonl", {"temperature": 1.0}, "math:held_out"),
])  # fmt: skip
def test_parse_task_every_kind(spec, kind, path, options, name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the spec's relative paths must exist
    for given in filter(None, [path, options.get("dev"), options.get("shots")]):
        make_path(given)
    task = parse_task(spec)
    assert (task.kind, task.path, task.options, task.name, str(task)) == (kind, path, options, name, name)
    for key, value in task.options.items():
        assert type(value) is OPTIONS[kind][key]  # typed, not strings


def test_parse_task_defaults_fill_only_options_the_kind_has(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_path("d/")
    make_path("f.txt")
    defaults = {"limit": 7, "k_shot": 0, "max_bytes": None}
    assert parse_task("mc:d", defaults).options == {"limit": 7, "k_shot": 0}
    assert parse_task("mc:d?limit=2", defaults).options == {"limit": 2, "k_shot": 0}  # the spec wins
    assert parse_task("bpb:f.txt", defaults).options == {}  # bpb has neither option; None is unset
    assert parse_task("bpb:f.txt", {"max_bytes": 10}).options == {"max_bytes": 10}
    assert parse_task("math", defaults).options == {"limit": 7, "k_shot": 0}
    assert set(KINDS) == {"bpb", "mc", "cmmlu", "ceval", "mmlu", "gsm8k", "math"}


@pytest.mark.parametrize("spec, missing", [
    ("bpb:nowhere.txt", "nowhere.txt does not exist"),
    ("mc:data/?dev=no_dev", "dev=no_dev does not exist"),
    ("gsm8k:gsm.jsonl?shots=no_shots.jsonl", "shots=no_shots.jsonl does not exist"),
    ("math:held_out/missing.jsonl?n=3", "held_out/missing.jsonl does not exist"),
    ("mc:gone/?dev=data/", "gone/ does not exist"),
])  # fmt: skip
def test_parse_task_paths_must_exist(spec, missing, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_path("data/")
    make_path("gsm.jsonl")
    with pytest.raises(ConfigError) as info:
        parse_task(spec)
    assert str(info.value) == f"task {spec!r}: {missing}"
    # an absolute path is checked as given, not against the current directory
    assert parse_task(f"bpb:{tmp_path / 'gsm.jsonl'}").path == str(tmp_path / "gsm.jsonl")
    monkeypatch.chdir(tmp_path / "data")
    with pytest.raises(ConfigError, match="gsm.jsonl does not exist"):
        parse_task("gsm8k:gsm.jsonl")


@pytest.mark.parametrize("spec, message", [
    ("hellaswag:x", "unknown kind 'hellaswag'"),
    ("bpb", "bpb needs a path"),
    ("mc?k_shot=1", "mc needs a path"),
    ("gsm8k:", "gsm8k needs a path"),
    ("bpb:f.txt?k_shot=1", "unknown option 'k_shot' for bpb"),
    ("mc:d?k_shot=five", "option k_shot='five' is not a valid int"),
    ("math?temperature=hot", "option temperature='hot' is not a valid float"),
    ("math?strict=maybe", "option strict='maybe' is not a valid bool"),
    ("math?n=", "option n='' is not a valid int"),
])  # fmt: skip
def test_parse_task_errors_name_the_spec(spec, message):
    with pytest.raises(ConfigError) as info:
        parse_task(spec)
    assert f"task {spec!r}" in str(info.value) and message in str(info.value)


def test_run_tasks_rejects_duplicate_names_before_running(tmp_path, monkeypatch):
    class NoModel:  # nothing may run
        def __getattr__(self, name):
            raise AssertionError("a task ran")

    monkeypatch.chdir(tmp_path)
    make_path("x/a.txt")
    make_path("y/a.txt")
    with pytest.raises(ConfigError, match=r"two tasks share a name \(bpb:a, bpb:a\)"):
        run_tasks(NoModel(), ["bpb:x/a.txt", "bpb:y/a.txt"])
    with pytest.raises(ConfigError, match="unknown kind"):
        run_tasks(NoModel(), ["bpb:x/a.txt", "nope:z"])


def test_run_tasks_runs_every_kind_on_one_model(eval_model, tmp_path):
    from eval_helpers import MC_ROWS, write_mc_csv

    text = write_jsonl(tmp_path / "t.jsonl", [{"text": "The capital of France is Paris."}, {"text": "苹果是水果。"}])
    write_mc_csv(tmp_path / "mc" / "test" / "facts.csv", MC_ROWS)
    gsm = write_jsonl(tmp_path / "gsm.jsonl", GSM8K)
    seen = []
    results = run_tasks(eval_model, [f"bpb:{text}", f"mc:{tmp_path / 'mc'}?name=facts", f"gsm8k:{gsm}?k_shot=1&limit=1&max_new_tokens=4",
                                     "math?n=3&max_new_tokens=4&langs=en"], on_result=lambda name, entry: seen.append(name))
    assert list(results) == seen == ["bpb:t", "facts", "gsm8k:gsm", "math"]
    assert results["bpb:t"]["n"] == len("The capital of France is Paris.") + len("苹果是水果。".encode())
    assert results["facts"]["chance"] == 0.25 and results["facts"]["n"] == len(MC_ROWS)
    gsm8k = results["gsm8k:gsm"]["details"]
    assert (gsm8k["prompt"], gsm8k["k_shot"], results["gsm8k:gsm"]["n"]) == ("fewshot", 1, 1)  # gsm8k: few-shot by default
    assert results["math"]["n"] == 3 and results["math"]["details"]["strict"] is True
    assert [e["spec"]["kind"] for e in results.values()] == ["bpb", "mc", "gsm8k", "math"]
    assert all(e["seconds"] > 0 for e in results.values())
    table = results_table(results)
    assert [c.header for c in table.columns] == ["task", "metric", "value", "chance", "n", "seconds"]
    assert table.row_count == 4


# ---- results files -------------------------------------------------------------------------------


def _entry(value: float, kind: str = "multiple_choice", metric: str = "accuracy") -> dict:
    return {"kind": kind, "metric": metric, "value": value, "chance": 0.25 if kind == "multiple_choice" else None, "n": 10, "seconds": 1.0, "details": {}}


def test_save_results_merges_into_an_existing_file(tmp_path):
    path = tmp_path / "ckpt" / "eval_results.json"
    path.parent.mkdir()
    save_results(path, {"mc:a": _entry(0.3), "bpb:b": _entry(2.5, "bpb", "bpb")}, checkpoint=path.parent)
    first = json.loads(path.read_text())
    assert first["checkpoint"] == str(path.parent) and first["lmforge_version"] and first["created"]
    assert set(first["tasks"]) == {"mc:a", "bpb:b"}
    save_results(path, {"mc:a": _entry(0.6), "math": _entry(0.1, "math")})  # no checkpoint given: the old one stays
    data = json.loads(path.read_text())
    assert data["checkpoint"] == str(path.parent)
    assert data["tasks"]["mc:a"]["value"] == 0.6 and data["tasks"]["bpb:b"]["value"] == 2.5 and data["tasks"]["math"]["value"] == 0.1
    assert sorted(p.name for p in path.parent.iterdir()) == ["eval_results.json"]  # no temp file left behind


def test_save_results_writes_atomically(tmp_path, monkeypatch):
    import lmforge.io

    path = save_results(tmp_path / "eval_results.json", {"mc:a": _entry(0.3)})
    before = path.read_text()

    def crash(*args, **kwargs):  # the process dies between writing the new file and renaming it
        raise OSError("killed")

    monkeypatch.setattr(lmforge.io.os, "replace", crash)
    with pytest.raises(OSError, match="killed"):
        save_results(path, {"mc:a": _entry(0.9)})
    monkeypatch.undo()
    assert path.read_text() == before  # the old file is whole
    save_results(path, {"mc:a": _entry(0.9)})
    assert json.loads(path.read_text())["tasks"]["mc:a"]["value"] == 0.9


@pytest.mark.parametrize("content", ['{"tasks": {"mc:a": ', "[1, 2]", '{"tasks": [1]}', '"text"', "\xff\xfe"])
def test_a_corrupt_results_file_is_an_error_not_overwritten(tmp_path, content):
    path = tmp_path / "eval_results.json"
    path.write_bytes(content.encode("latin-1"))
    with pytest.raises(DataError, match=r"eval_results\.json: not a results file .*move it away"):
        save_results(path, {"mc:b": _entry(0.5)})
    assert path.read_bytes() == content.encode("latin-1")


def test_task_spec_objects_run_as_given(eval_model, tmp_path):
    text = tmp_path / "x.txt"
    text.write_text("hello world, hello world")
    spec = TaskSpec("bpb", str(text), {"max_bytes": 5}, "tiny")
    results = run_tasks(eval_model, [spec])
    assert list(results) == ["tiny"] and results["tiny"]["n"] == 5
    assert results["tiny"]["spec"] == {"kind": "bpb", "path": str(text), "max_bytes": 5}
