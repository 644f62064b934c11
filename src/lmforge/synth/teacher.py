"""Black-box distillation data: a teacher answers the user turns of chat conversations.

``write_teacher_answers`` keeps each conversation up to its last user turn, has the teacher (a
local checkpoint or an OpenAI-compatible endpoint, ``lmforge.synth.backends``) write the reply,
and appends ``{"messages": [..., {"role": "assistant", "content": reply}], "source_index": i}``
records: SFT data in OpenAI format for the student (``lmforge distill`` with
``distill.mode=blackbox``). Like template synthesis it is resumable — rerun after a crash and it
continues, with the same final file — and the stats (``OUT.stats.json``) count answered,
skipped (no user turn), rejected (empty reply) and truncated (cut off at ``max_new_tokens``,
kept) conversations::

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
    fresh = {"conversations": len(conversations), "answered": 0, "skipped": {"no_user_turn": 0}, "rejected": {"empty": 0}, "truncated": 0}
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
                stats["truncated"] += reply.finish_reason == "length"
                stats["answered"] += 1
                records.append({"messages": [*prompt, {"role": "assistant", "content": text}], "source_index": i})
            output.commit(records, len(indices), stats)
            bar.update(output.done, stats["answered"], stats["rejected"]["empty"])
    finally:
        bar.close()
    output.finish(stats)
    return stats

