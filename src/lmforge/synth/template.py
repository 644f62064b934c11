"""Model-based synthesis: a prompt template over seed snippets, run by a teacher model
(``lmforge synth template``), as in Llama-3-SynE's synthetic scientific QA.

Each seed snippet (read with ``lmforge.data.readers.read_documents``: jsonl, txt, csv, parquet,
...) fills the template's ``{text}`` placeholder; the teacher (a local checkpoint through the
``Engine``, or an OpenAI-compatible endpoint: ``lmforge.synth.backends``) answers, and the answer
is parsed into ``[Problem]`` and ``[Solution]`` sections. Accepted generations become chat
records ``{"messages": [user: problem, assistant: solution], "seed_id": ..., "lang": ...}``.

Rejected generations are counted by reason: ``truncated`` (cut off by max_new_tokens),
``no_problem`` / ``no_solution`` (a section marker missing), ``empty`` (a section with no text),
``too_short``, ``copied_seed`` (the problem repeats the seed: it is inside the seed, or 80% of
its 8-character pieces are), ``duplicate`` (the same problem as an earlier accepted one).
Seeds shorter than ``min_seed_chars`` are skipped unasked; longer than ``max_seed_chars`` are cut.

Builtin templates: ``problem`` (English or Chinese by the seed's script), ``problem-en``,
``problem-zh``; or a text file with a ``{text}`` placeholder. The run is resumable
(``lmforge.synth.resumable``): rerun the same command after a crash, or a ``--limit`` run with
a larger limit, and it continues; requests are seeded per seed, so the output equals an
uninterrupted run's. Stats go to ``OUT.stats.json``::

    lmforge synth template --seeds web.jsonl --teacher http://127.0.0.1:8000/v1 --model qwen --out qa.jsonl
    stats = synthesize_from_template(["web.jsonl"], "qa.jsonl", teacher="runs/teacher", limit=100)
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Sequence

from lmforge.config import ConfigError
from lmforge.synth.backends import ChatBackend, Reply, is_endpoint, open_backend
from lmforge.synth.resumable import Progress, ResumableJsonl, request_seed

_FORMAT_EN = "[Problem]\n<the problem>\n\n[Solution]\n<the step-by-step solution, ending with the final answer>"
BUILTIN_TEMPLATES = {
    "problem-en": (
        "Here is a text snippet:\n\n{text}\n\n"
        "Based on this text, create a self-contained problem that can be solved without seeing the text, "
        "and write a step-by-step solution that ends with the final answer. Use exactly this format:\n\n" + _FORMAT_EN
    ),
    "problem-zh": (
        "下面是一段文本：\n\n{text}\n\n"
        "请根据这段文本，编写一道不看原文也能独立解答的题目，并给出逐步的解答过程，最后写出答案。"
        "严格按照以下格式输出：\n\n[Problem]\n<题目>\n\n[Solution]\n<逐步解答，最后给出答案>"
    ),
}
REJECT_REASONS = ("truncated", "no_problem", "no_solution", "empty", "too_short", "copied_seed", "duplicate")

_PROBLEM_RE = re.compile(r"\[\s*(?:problem|question|问题|题目)\s*\]", re.IGNORECASE)
_SOLUTION_RE = re.compile(r"\[\s*(?:solution|解答|解析|答案)\s*\]", re.IGNORECASE)
_CJK_RE = re.compile(r"[\u4e00-\u9fff]")
_WORD_RE = re.compile(r"[A-Za-z]")


def seed_language(text: str) -> str:
    """'zh' when Chinese characters are at least a third of the letters, else 'en'."""
    cjk, latin = len(_CJK_RE.findall(text)), len(_WORD_RE.findall(text))
    return "zh" if cjk and cjk * 3 >= cjk + latin else "en"


def load_template(spec: str) -> dict[str, str]:
    """Templates by language ('*' = any) from a builtin name or a text file with ``{text}``."""
    if spec == "problem":
        return {"en": BUILTIN_TEMPLATES["problem-en"], "zh": BUILTIN_TEMPLATES["problem-zh"]}
    if spec in BUILTIN_TEMPLATES:
        return {"*": BUILTIN_TEMPLATES[spec]}
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(f"--template {spec!r}: no such file, and not a builtin ({', '.join(['problem', *BUILTIN_TEMPLATES])})")
    text = path.read_text(encoding="utf-8")
    if "{text}" not in text:
        raise ConfigError(f"{path}: a template needs a {{text}} placeholder where the seed snippet goes")
    return {"*": text}


def parse_sections(text: str) -> tuple[str, str] | str:
    """(problem, solution) from a generation, or the reason it has none."""
    problem_mark = _PROBLEM_RE.search(text)
    if problem_mark is None:
        return "no_problem"
    solution_mark = _SOLUTION_RE.search(text, problem_mark.end())
    if solution_mark is None:
        return "no_solution"
    strip = " \t\r\n*#:："  # markdown bold / headings around the markers
    problem = text[problem_mark.end() : solution_mark.start()].strip(strip)
    solution = text[solution_mark.end() :].strip(strip)
    if not problem or not solution:
        return "empty"
    return problem, solution


def _normalized(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def copies_seed(problem: str, seed: str, piece: int = 8, share: float = 0.8) -> bool:
    """Whether the problem repeats the seed instead of asking something of its own."""
    problem, seed = _normalized(problem), _normalized(seed)
    if problem in seed:
        return True
    pieces = {problem[i : i + piece] for i in range(len(problem) - piece + 1)}
    return bool(pieces) and sum(p in seed for p in pieces) >= share * len(pieces)


def judge(reply: Reply, seed_text: str, seen: set[str], min_problem_chars: int, min_solution_chars: int) -> tuple[str, str] | str:
    """(problem, solution) of an acceptable generation, or the reason it is rejected."""
    if reply.finish_reason == "length":
        return "truncated"
    parsed = parse_sections(reply.text)
    if isinstance(parsed, str):
        return parsed
    problem, solution = parsed
    if len(problem) < min_problem_chars or len(solution) < min_solution_chars:
        return "too_short"
    if copies_seed(problem, seed_text):
        return "copied_seed"
    if _problem_key(problem) in seen:
        return "duplicate"
    return problem, solution


def _problem_key(problem: str) -> str:
    return hashlib.sha256(_normalized(problem).encode()).hexdigest()[:20]


def _seed_files(seeds: Sequence[str | Path]) -> list[dict]:
    from lmforge.data.readers import expand_paths

    return [{"path": str(p.resolve()), "bytes": p.stat().st_size} for p in expand_paths(seeds)]


def synthesize_from_template(
    seeds: Sequence[str | Path],
    out: str | Path,
    *,
    teacher: str,
    template: str = "problem",
    model: str = "",
    api_key_env: str = "OPENAI_API_KEY",
    max_new_tokens: int = 512,
    temperature: float = 0.0,
    seed: int = 0,
    limit: int | None = None,
    batch_size: int = 8,
    concurrency: int = 8,
    text_key: str = "text",
    txt_mode: str = "paragraph",
    min_seed_chars: int = 20,
    max_seed_chars: int = 2000,
    min_problem_chars: int = 10,
    min_solution_chars: int = 20,
    resume: bool = True,
    progress: bool = False,
    device: str = "auto",
    backend: ChatBackend | None = None,
) -> dict:
    """Run the template over the seeds (see the module docstring); returns the stats.

    ``limit`` caps the seeds read in total, over this and earlier runs; ``backend`` replaces
    the one ``teacher`` names (tests, custom clients) — ``teacher`` still identifies the run.
    """
    from lmforge.data.readers import TXT_MODES, read_documents

    seeds = [seeds] if isinstance(seeds, (str, Path)) else list(seeds)
    if txt_mode not in TXT_MODES:
        raise ConfigError(f"txt_mode must be one of {', '.join(TXT_MODES)}; got {txt_mode!r}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if limit is not None and limit < 0:
        raise ConfigError(f"limit must be >= 0, got {limit}")
    templates = load_template(template)
    inputs = {
        "task": "template", "template": {k: hashlib.sha256(v.encode()).hexdigest()[:16] for k, v in templates.items()},
        "teacher": teacher if is_endpoint(teacher) else str(Path(teacher).resolve()), "model": model,
        "max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed, "seeds": _seed_files(seeds),
        "text_key": text_key, "txt_mode": txt_mode, "seed_chars": [min_seed_chars, max_seed_chars],
        "section_chars": [min_problem_chars, min_solution_chars],
    }  # fmt: skip
    fresh = {"seeds_read": 0, "seeds_skipped": {"too_short": 0}, "generated": 0, "accepted": 0, "rejected": dict.fromkeys(REJECT_REASONS, 0)}
    output = ResumableJsonl(out, inputs, fresh, resume=resume)
    stats = output.stats
    seen = {_problem_key(r["messages"][0]["content"]) for r in output.records()}
    if limit is not None and output.done >= limit:
        return stats
    backend = backend or open_backend(teacher, model=model, api_key_env=api_key_env, concurrency=concurrency, device=device)
    stats["teacher"] = backend.description
    bar = Progress("synth template", limit, output.done, progress)
    batch: list[tuple[int, object, str, str]] = []  # (seed index, document, text, language)
    consumed = 0  # seeds read since the last commit, skipped ones included

    def flush() -> None:
        nonlocal batch, consumed
        prompts, seeds_for_requests = [], []
        for index, doc, text, lang in batch:
            prompt = (templates.get(lang) or templates["*"]).replace("{text}", text)
            prompts.append([{"role": "user", "content": prompt}])
            seeds_for_requests.append(request_seed(seed, index, doc.id))
        replies = backend.chat(prompts, max_new_tokens=max_new_tokens, temperature=temperature, seeds=seeds_for_requests) if batch else []
        records = []
        for (index, doc, text, lang), reply in zip(batch, replies):
            stats["generated"] += 1
            verdict = judge(reply, text, seen, min_problem_chars, min_solution_chars)
            if isinstance(verdict, str):
                stats["rejected"][verdict] += 1
                continue
            problem, solution = verdict
            seen.add(_problem_key(problem))
            stats["accepted"] += 1
            messages = [{"role": "user", "content": problem}, {"role": "assistant", "content": solution}]
            records.append({"messages": messages, "seed_id": doc.id, "lang": lang, "template": template})
        stats["seeds_read"] += consumed
        output.commit(records, consumed, stats)
        bar.update(output.done, stats["accepted"], sum(stats["rejected"].values()))
        batch, consumed = [], 0

    exhausted = True  # every seed read (not stopped by the limit)
    try:
        documents = read_documents(seeds, text_key=text_key, txt_mode=txt_mode)  # type: ignore[arg-type]
        for index, doc in enumerate(documents):
            if index < output.done:
                continue
            if limit is not None and index >= limit:
                exhausted = False
                break
            consumed += 1
            text = doc.text.strip()
            if len(text) < min_seed_chars:
                stats["seeds_skipped"]["too_short"] += 1
            else:
                text = text[:max_seed_chars]
                batch.append((index, doc, text, seed_language(text)))
            if len(batch) >= batch_size:
                flush()
        if consumed:
            flush()
    finally:
        bar.close()
    if exhausted:
        output.finish(stats)
    return stats
