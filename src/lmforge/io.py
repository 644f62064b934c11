"""Small file and formatting helpers every stage shares.

- ``write_text_atomic`` / ``write_json_atomic``: write to a temporary file beside the target,
  fsync, then rename, so a reader (or a crash) never sees half a file.
- ``human``: 1234567 -> "1.23M", for progress lines and tables.
- ``cache_dir``: where lmforge keeps what it measures or builds once per machine
  (``$LMFORGE_CACHE_DIR``, else ``$XDG_CACHE_HOME/lmforge``, else ``~/.cache/lmforge``).

Usage::

    write_json_atomic("out/manifest.json", {"tokens": 10})
    print(human(3_213_088))   # 3.21M
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def replace_dir(tmp: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Move a finished directory ``tmp`` to ``out``; an old ``out`` is set aside first and
    removed only after the rename, so ``out`` is never half old and half new."""
    import shutil

    tmp, out = Path(tmp), Path(out)
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out


def cache_dir() -> Path:
    root = os.environ.get("LMFORGE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "lmforge"
    )
    return Path(root)


def write_json_atomic(path: str | os.PathLike, data) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def human(n: float) -> str:
    """Short human form of a count: 950, 12.3k, 4.56M, 1.20G."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}" if n == math.floor(n) else f"{n:.1f}"
