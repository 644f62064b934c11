"""Generative math: GSM8K-format problems and lmforge's synthetic set, scored by exact answers.

A problem file is jsonl, one problem per line: GSM8K's ``{"question", "answer": "... #### N"}`` or
lmforge's synthetic records (``lmforge synth math``: ``messages`` + ``answer``). The model is
asked in one of two ways:

* ``prompt="chat"``: the question as the user turn of the checkpoint's chat template — for
  models that were fine-tuned to answer;
* ``prompt="fewshot"``: plain text, ``k_shot`` solved examples then the question, the way base
  models are usually measured (lm-eval's GSM8K layout)::

      Question: Natalia sold clips to 48 of her friends ...
      Answer: Natalia sold 48/2 = 24 clips in May. ... #### 72

      Question: <the problem>
      Answer:

  The examples are the file's first ``k_shot`` problems (or those of ``shots_path``); problems
  with an example's question are left out of the evaluation; GSM8K's calculator annotations (``<<48/2=24>>``) are removed from them.
  Generation stops at the next ``Question:``.

Replies are greedy unless ``temperature`` > 0 (seeded). The answer is what the reply states
(``#### N``, ``Answer: N``, ``\\boxed{N}``, "the answer is N") or else its last number;
``strict`` accepts only a stated answer. Accuracy is exact match as numbers
(``lmforge.synth.answers``).

Usage::

    engine = Engine.from_checkpoint("runs/demo/dpo-.../checkpoints/step_000060")
    evaluate_math(engine, "../shared/data/eval/gsm8k_train.jsonl", prompt="fewshot", k_shot=4, limit=100)
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from lmforge.synth.math import math_accuracy, problem_prompt

PROMPTS = ("chat", "fewshot")
_CALCULATOR = re.compile(r"<<[^<>]*>>")
_STOP = ["\nQuestion:", "Question:"]


def read_problems(path: str | Path, skip_bad: bool = False, stats=None) -> list[dict]:
    """Every problem of a jsonl file, each checked to have a question and a gold answer; a bad
    line is a ``DataError`` naming file:line (or skipped and counted with ``skip_bad``)."""
    from lmforge.data.chat import read_jsonl_records

    def check(record: dict) -> dict:
        if not isinstance(record, dict):
            raise ValueError(f"a problem must be a JSON object, not {type(record).__name__}")
        problem_prompt(record)  # raises ValueError naming what is missing
        return record

    return [record for _, _, _, record in read_jsonl_records(path, check, "math problems", skip_bad, stats)]


def _solution(record: dict) -> str:
    """The worked solution of a problem, for a few-shot example."""
    if "messages" in record:
        messages = record["messages"]
        last_user = max(i for i, m in enumerate(messages) if m.get("role") == "user")
        if last_user + 1 >= len(messages):
            raise ValueError("a few-shot example needs its solution (an assistant turn after the question)")
        return messages[last_user + 1]["content"].strip()
    return _CALCULATOR.sub("", str(record["answer"])).strip()


def fewshot_prompt(shots: list[dict], record: dict) -> str:
    """``Question: ...\\nAnswer: <solution>\\n\\n`` for each shot, then the question and ``Answer:``."""
    parts = [f"Question: {problem_prompt(s)[0][-1]['content'].strip()}\nAnswer: {_solution(s)}\n\n" for s in shots]
    return "".join(parts) + f"Question: {problem_prompt(record)[0][-1]['content'].strip()}\nAnswer:"


def evaluate_math(
    engine,
    problems: str | Path | list[dict],
    *,
    prompt: str = "chat",
    k_shot: int = 0,
    shots_path: str | Path | None = None,
    limit: int | None = None,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    seed: int = 0,
    strict: bool = False,
    batch_size: int = 32,
    skip_bad: bool = False,
) -> dict:
    """Exact-answer accuracy on a problem file (or a list of records); a results entry (see
    ``lmforge.eval.tasks``) with the by-level/language breakdown and example replies."""
    from lmforge.data.readers import ReadStats
    from lmforge.infer.sampling import SamplingConfig

    if prompt not in PROMPTS:
        raise ValueError(f"prompt must be one of {', '.join(PROMPTS)}; got {prompt!r}")
    if k_shot < 0:
        raise ValueError(f"k_shot must be >= 0, got {k_shot}")
    start = time.perf_counter()
    stats = ReadStats()
    records = problems if isinstance(problems, list) else read_problems(problems, skip_bad, stats)
    shots: list[dict] = []
    if prompt == "chat" and k_shot:
        raise ValueError(f"k_shot={k_shot} needs prompt=fewshot (chat prompts ask the question alone)")
    if prompt == "fewshot" and k_shot:
        if shots_path is not None:
            shots = read_problems(shots_path)[:k_shot]
        else:  # the file's first problems are the examples
            shots = records[:k_shot]
        if len(shots) < k_shot:
            raise ValueError(f"{k_shot}-shot needs {k_shot} solved examples; found {len(shots)}")
        # An example is never asked: the answer would be in its own prompt.
        asked_in_shots = {problem_prompt(s)[0][-1]["content"].strip() for s in shots}
        records = [r for r in records if problem_prompt(r)[0][-1]["content"].strip() not in asked_in_shots]
    if limit is not None:
        records = records[:limit]
    if not records:
        raise ValueError("no problems to evaluate")
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                              stop=_STOP if prompt == "fewshot" else [])
    prompt_ids = [engine.encode(fewshot_prompt(shots, r)) for r in records] if prompt == "fewshot" else None
    result = math_accuracy(engine, records, batch_size=batch_size, strict=strict, sampling=sampling, prompt_ids=prompt_ids)
    details = {k: v for k, v in result.items() if k not in ("accuracy", "n")}
    details.update(prompt=prompt, k_shot=len(shots), skipped=stats.bad_lines)
    return {"kind": "math", "metric": "accuracy", "value": result["accuracy"], "chance": None, "n": result["n"],
            "seconds": time.perf_counter() - start, "details": details}
