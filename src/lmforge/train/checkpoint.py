"""Self-describing, atomically written checkpoints, and finding the latest one.

A run directory holds ``checkpoints/step_{N:08d}/``; each checkpoint is everything needed to
evaluate, serve or continue the run, given only its path:

==========================  ===================================================================
``config.json``             HF config (Llama/Qwen…), with bos/eos/pad ids from the tokenizer
``model.safetensors``       weights (fp32: resuming must be exact), HF parameter names
``generation_config.json``  eos/pad ids for ``generate``
tokenizer files             copied from the run's tokenizer directory
``trainer_state.pt``        optimizer, grad scaler, data-loader position, RNG states, step,
                            tokens seen (``torch.load(..., weights_only=True)`` reads it)
``lmforge.json``            the whole recipe, step, tokens seen, parent checkpoint, metrics at
                            save time, lmforge version — written last
==========================  ===================================================================

Atomicity: everything is written into a hidden temporary sibling (``.tmp-step_…``), each file
and the directory are fsynced, and only then is it renamed to ``step_…`` (a rename within one
directory is atomic on POSIX). A crash at any point leaves the previous checkpoints intact and
no partial directory under a ``step_`` name; ``list_checkpoints`` additionally requires
``lmforge.json`` and ignores hidden directories, which the next save sweeps away. Deleting is
atomic too: a checkpoint that is pruned (``keep_last``) or replaced (the same step saved again)
is first renamed to a hidden ``.old-step_…`` name, and its ``lmforge.json`` removed before the
rest; should a kill leave ``step_N`` missing and a complete ``.old-step_N-…``, the sweep (which
resuming also runs) renames it back.

Usage::

    path = save_checkpoint(run_dir, step, write_model=lambda d: save_pretrained(model, d),
                           trainer_state={...}, meta={...}, tokenizer_dir="tok/", keep_last=3)
    latest_checkpoint(run_dir)            # Path | None
    resolve_checkpoint("runs/demo")       # a checkpoint dir, a run dir, or its checkpoints/ dir
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Callable

import torch

CHECKPOINTS_DIR = "checkpoints"
TRAINER_STATE = "trainer_state.pt"
META = "lmforge.json"
META_FORMAT = "lmforge-checkpoint/1"
_STEP_DIR = re.compile(r"^step_(\d{8,})$")
# Files that make up a tokenizer directory (HF and ours); anything else there is not copied.
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "merges.txt", "vocab.txt", "tokenizer.model", "chat_template.jinja",
    "chat_template.json", "lmforge_tokenizer.json",
)


def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS_DIR / f"step_{step:08d}"


def checkpoint_step(path: str | Path) -> int | None:
    match = _STEP_DIR.match(Path(path).name)
    return int(match.group(1)) if match else None


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [(checkpoint_step(p), p) for p in root.iterdir() if p.is_dir() and (p / META).is_file()]
    return [p for step, p in sorted((s, p) for s, p in found if s is not None)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run directory, or None."""
    checkpoints = list_checkpoints(run_dir)
    return checkpoints[-1] if checkpoints else None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory for ``path``: itself, or the latest checkpoint of a run directory."""
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    run_dir = path.parent if path.name == CHECKPOINTS_DIR else path
    latest = path if (path / "adapter_config.json").is_file() else latest_checkpoint(run_dir)
    if latest is not None:
        if not (latest / "config.json").is_file() and (latest / "adapter_config.json").is_file():
            raise FileNotFoundError(
                f"{latest}: a LoRA adapter (adapter_config.json), not a full checkpoint; "
                f"fold it into its base first: lmforge lora merge {latest} --out DIR"
            )
        return latest
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint or run directory")
    raise FileNotFoundError(f"{path}: neither a checkpoint (no config.json) nor a run directory with checkpoints/step_*")


def read_meta(checkpoint: str | Path) -> dict:
    path = Path(checkpoint) / META
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def load_trainer_state(checkpoint: str | Path) -> dict:
    path = Path(checkpoint) / TRAINER_STATE
    if not path.is_file():
        raise FileNotFoundError(f"{checkpoint}: no {TRAINER_STATE}; it can be evaluated or fine-tuned, not resumed")
    return torch.load(path, map_location="cpu", weights_only=True)


def copy_tokenizer_files(src: str | Path, dst: str | Path) -> list[str]:
    """Copy a tokenizer directory's files (see ``TOKENIZER_FILES``) into ``dst``."""
    src, copied = Path(src), []
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, Path(dst) / name)
            copied.append(name)
    if "tokenizer.json" not in copied and "tokenizer.model" not in copied:
        raise FileNotFoundError(f"{src}: not a tokenizer directory (no tokenizer.json)")
    return copied


def _fsync_tree(directory: Path) -> None:
    for path in directory.iterdir():
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _discard(path: Path) -> None:
    """Delete a checkpoint directory so that no kill midway leaves a complete-looking ``step_`` dir.

    It is first renamed to a hidden ``.old-`` name (atomic), and its ``lmforge.json`` removed
    before anything else: an ``.old-`` directory that still has ``lmforge.json`` is therefore
    whole, which is what lets ``remove_stale_temp_dirs`` restore one (see there).
    """
    hidden = _aside_name(path)
    path.rename(hidden)
    _remove_aside(hidden)


def _aside_name(path: Path) -> Path:
    """A free hidden ``.old-{name}-{pid}[_{n}]`` sibling for ``path``."""
    base = f".old-{path.name}-{os.getpid()}"
    candidate, n = path.parent / base, 0
    while candidate.exists():
        n += 1
        candidate = path.parent / f"{base}_{n}"
    return candidate


def _remove_aside(hidden: Path) -> None:
    (hidden / META).unlink(missing_ok=True)  # first: from now on it is not a complete checkpoint
    shutil.rmtree(hidden, ignore_errors=True)


def remove_stale_temp_dirs(run_dir: str | Path) -> None:
    """Clean up after a save or prune that was killed midway.

    ``.tmp-*`` (a save that did not finish) is deleted. ``.old-step_N-*`` is a checkpoint that
    was being replaced or pruned. If ``step_N`` is missing and it is still complete
    (``lmforge.json`` present: deleting removes that first), it is renamed back: after a kill
    between the two renames that replace a checkpoint it is the only complete step N (and a
    prune killed right after its rename merely brings back an old checkpoint, which the next
    save prunes again). Otherwise it is deleted.
    """
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return
    for p in sorted(root.iterdir()):
        if not p.is_dir():
            continue
        if p.name.startswith(".old-"):
            name = p.name[len(".old-"):].rsplit("-", 1)[0]
            final = root / name
            if _STEP_DIR.match(name) and (p / META).is_file() and not final.exists():
                p.rename(final)
                _fsync_dir(root)
                continue
            shutil.rmtree(p, ignore_errors=True)
        elif p.name.startswith(".tmp-"):
            shutil.rmtree(p, ignore_errors=True)


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    write_model: Callable[[Path], None],
    trainer_state: dict,
    meta: dict,
    tokenizer_dir: str | Path | None = None,
    keep_last: int = 0,
) -> Path:
    """Write ``checkpoints/step_{step}`` atomically; then keep only the newest ``keep_last`` (0 = all)."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_dirs(run_dir)
    final = checkpoint_dir(run_dir, step)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    tmp.mkdir()
    try:
        write_model(tmp)
        if tokenizer_dir:
            copy_tokenizer_files(tokenizer_dir, tmp)
        torch.save(trainer_state, tmp / TRAINER_STATE)
        full_meta = {"format": META_FORMAT, **meta}
        (tmp / META).write_text(json.dumps(full_meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        _fsync_tree(tmp)
        if final.exists():
            # The same step saved again: set the old one aside, put the new one in place, then
            # delete the old one. A kill between the two renames leaves the old one as the only
            # complete step N; the next sweep (remove_stale_temp_dirs) renames it back.
            old = _aside_name(final)
            final.rename(old)
            tmp.rename(final)
            _fsync_dir(root)
            _remove_aside(old)
        else:
            tmp.rename(final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep_last > 0:
        for old in list_checkpoints(run_dir)[:-keep_last]:
            _discard(old)
        _fsync_dir(root)
    return final
