"""Black-box distillation data: a teacher answers the user turns of chat conversations.

``write_teacher_answers`` keeps each conversation up to its last user turn, has the teacher (a
local checkpoint or an OpenAI-compatible endpoint, ``lmforge.synth.backends``) write the reply,
and appends ``{"messages": [..., {"role": "assistant", "content": reply}], "source_index": i}``
records: SFT data in OpenAI format for the student (``lmforge distill`` with
``distill.mode=blackbox``). Like template synthesis it is resumable — rerun after a crash and it
continues, with the same final file — and the stats (``OUT.stats.json``) count answered,
skipped (no user turn) and rejected conversations: an empty reply, or one cut off at
``max_new_tokens`` (the student would learn to stop mid-answer)::

    conversations = [c.messages for c in read_conversations(["prompts.jsonl"])]
    stats = write_teacher_answers("http://127.0.0.1:8000/v1", conversations, "runs/distill/teacher.jsonl", model="qwen")
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

from lmforge.synth.backends import ChatBackend, is_endpoint, open_backend
from lmforge.synth.resumable import Progress, ResumableJsonl, request_seed


def prompt_turns(messages: Sequence[dict]) -> list[dict] | None:
    """The messages up to and including the last user turn (None when there is none)."""
    last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=None)
    return None if last_user is None else [{"role": m["role"], "content": m["content"]} for m in messages[: last_user + 1]]


def write_teacher_answers(
    teacher: str,
    conversations: Sequence[Sequence[dict]],
    out_path: str | os.PathLike,
    *,
    model: str = "",
    api_key_env: str = "OPENAI_API_KEY",
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    seed: int = 0,
    resume: bool = True,
    batch_size: int = 8,
    concurrency: int = 8,
    progress: bool = False,
    backend: ChatBackend | None = None,
) -> dict:
    """Teacher replies to every conversation's last user turn, written to ``out_path``; the stats."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    digest = hashlib.sha256(json.dumps(list(map(list, conversations)), ensure_ascii=False, sort_keys=True).encode()).hexdigest()
    inputs = {
        "task": "teacher", "teacher": teacher if is_endpoint(teacher) else str(Path(teacher).resolve()), "model": model,
        "max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed,
        "conversations": len(conversations), "conversations_sha256": digest,
    }  # fmt: skip
    fresh = {"conversations": len(conversations), "answered": 0, "skipped": {"no_user_turn": 0}, "rejected": {"empty": 0, "truncated": 0}}
    output = ResumableJsonl(out_path, inputs, fresh, resume=resume)
    stats = output.stats
    if output.done < len(conversations):
        backend = backend or open_backend(teacher, model=model, api_key_env=api_key_env, concurrency=concurrency)
        stats["teacher"] = backend.description
    bar = Progress("teacher answers", len(conversations), output.done, progress)
    try:
        for start in range(output.done, len(conversations), batch_size):
            indices = range(start, min(start + batch_size, len(conversations)))
            asked = []
            for i in indices:
                prompt = prompt_turns(conversations[i])
                if prompt is None:
                    stats["skipped"]["no_user_turn"] += 1
                else:
                    asked.append((i, prompt))
            replies = backend.chat([p for _, p in asked], max_new_tokens=max_new_tokens, temperature=temperature, seeds=[request_seed(seed, i) for i, _ in asked]) if asked else []
            records = []
            for (i, prompt), reply in zip(asked, replies):
                text = reply.text.strip()
                if not text:
                    stats["rejected"]["empty"] += 1
                    continue
                if reply.finish_reason == "length":
                    stats["rejected"]["truncated"] += 1
                    continue
                stats["answered"] += 1
                records.append({"messages": [*prompt, {"role": "assistant", "content": text}], "source_index": i})
            output.commit(records, len(indices), stats)
            bar.update(output.done, stats["answered"], sum(stats["rejected"].values()))
    finally:
        bar.close()
    output.finish(stats)
    return stats



def train_blackbox(recipe, resume: bool = False, hooks=()):
    """Black-box distillation (``distill.mode=blackbox``): the teacher answers the user turns of
    ``distill.prompts`` into ``{run_dir}/teacher_sft.jsonl`` (resumable), then the student
    (``train.init_from``) is fine-tuned on those answers by the ordinary SFT stage.

    The teacher may be any checkpoint (its own tokenizer: nothing is shared with the student
    but text) or an OpenAI-compatible endpoint (``distill.teacher=http://host/v1``,
    ``distill.teacher_model``, the key in ``$distill.api_key_env``).
    """
    import dataclasses

    from lmforge.config import ConfigError
    from lmforge.data.chat import read_conversations
    from lmforge.data.readers import ReadStats
    from lmforge.io import write_json_atomic
    from lmforge.train.metrics import say
    from lmforge.train.sft import train_sft

    cfg, train = recipe.distill, recipe.train
    if not cfg.teacher:
        raise ConfigError("distill.teacher is not set: a checkpoint directory or an OpenAI-compatible endpoint (http://host/v1)")
    if not cfg.prompts:
        raise ConfigError("distill.prompts is not set: chat jsonl files whose user turns the teacher answers")
    if not train.init_from:
        raise ConfigError("train.init_from is not set: the student checkpoint to fine-tune on the teacher's answers")
    run_dir = Path(train.out_dir or Path(recipe.out_dir) / "distill")
    data_file = run_dir / "teacher_sft.jsonl"
    # Under torchrun rank 0 alone asks the teacher; the other ranks wait for its finished file.
    if int(os.environ.get("RANK", "0")) != 0:
        _wait_for_teacher_data(data_file)
    else:
        read_stats = ReadStats()
        conversations = [c.messages for c in read_conversations(cfg.prompts, skip_bad=recipe.sft.skip_bad, stats=read_stats, prompts=True)]
        if not conversations:
            raise ConfigError(f"distill.prompts: no conversations in {cfg.prompts}")
        run_dir.mkdir(parents=True, exist_ok=True)
        say(f"distill (blackbox): {cfg.teacher} answers {len(conversations):,} prompts → {data_file}")
        stats = write_teacher_answers(
            cfg.teacher, conversations, data_file, model=cfg.teacher_model, api_key_env=cfg.api_key_env,
            max_new_tokens=cfg.max_new_tokens, temperature=cfg.teacher_temperature, seed=train.seed, resume=True,
            progress=train.progress,
        )  # fmt: skip
        stats["bad_prompt_records"] = read_stats.bad_lines
        write_json_atomic(run_dir / "distill_data.json", {"mode": "blackbox", "teacher": cfg.teacher, "prompts": cfg.prompts, "teacher_answers": stats})
        if not stats["answered"]:
            raise ConfigError(f"distill: the teacher answered none of the {len(conversations)} prompts; see {data_file}.stats.json")
    sft_recipe = dataclasses.replace(
        recipe,
        train=dataclasses.replace(train, out_dir=str(run_dir)),
        sft=dataclasses.replace(recipe.sft, train=[str(data_file)]),
    )
    return train_sft(sft_recipe, resume=resume, hooks=hooks)


def _wait_for_teacher_data(data_file: Path, timeout_s: float = 6 * 3600, poll_s: float = 5.0) -> None:
    import time

    from lmforge.config import ConfigError

    state_path = data_file.with_name(data_file.name + ".stats.json")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if json.loads(state_path.read_text(encoding="utf-8")).get("finished"):
                return
        except (FileNotFoundError, ValueError):
            pass  # not written yet, or being replaced
        time.sleep(poll_s)
    raise ConfigError(f"{state_path}: rank 0 did not finish the teacher's answers within {timeout_s / 3600:.0f} h")
