"""Token shards on disk: fixed-size raw arrays plus one ``manifest.json`` that describes them.

Layout of a shard directory::

    manifest.json            written last, atomically: its presence means the set is complete
    train_00000.bin ...      raw little-endian uint16 (vocab ≤ 65,535) or uint32 token ids
    val_00000.bin ...        the held-out split, when there is one

Shards hold ``shard_tokens`` tokens each (the last of a split holds the rest); documents run
across shard boundaries, separated by the eos token. Reading memory-maps the files, so a
training run touches only the pages it samples.

Usage::

    with ShardWriter("shards/", dtype="uint16", shard_tokens=1 << 24) as writer:
        writer.add("train", np.array([5, 6, 0], dtype=np.uint16))
        manifest = writer.close({"eos_id": 0})  # an exception before this: files closed, no manifest
    shards = ShardSet("shards/")
    shards.num_tokens("train"), shards.arrays("train")[0][:3]
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from lmforge.io import write_json_atomic

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def dtype_for_vocab(vocab_size: int) -> str:
    return "uint16" if vocab_size <= np.iinfo(np.uint16).max + 1 else "uint32"


class ShardWriter:
    """Append token arrays per split; cut a new file every ``shard_tokens`` tokens."""

    def __init__(self, out_dir: str | Path, dtype: str = "uint16", shard_tokens: int = 1 << 24, extra_manifest: dict | None = None) -> None:
        if dtype not in ("uint16", "uint32"):
            raise ValueError(f"shard dtype must be uint16 or uint32, got {dtype!r}")
        if shard_tokens <= 0:
            raise ValueError("shard_tokens must be positive")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        # A stale manifest would describe shards we are about to overwrite.
        (self.out_dir / MANIFEST).unlink(missing_ok=True)
        self.dtype = np.dtype(dtype)
        self.shard_tokens = shard_tokens
        self.extra = dict(extra_manifest or {})
        self._files: dict[str, object] = {}
        self._filled: dict[str, int] = {}
        self._shards: dict[str, list[dict]] = {}
        self._closed = False

    def _open_next(self, split: str) -> None:
        index = len(self._shards.setdefault(split, []))
        name = f"{split}_{index:05d}.bin"
        self._files[split] = open(self.out_dir / name, "wb")
        self._filled[split] = 0
        self._shards[split].append({"file": name, "tokens": 0})

    def add(self, split: str, tokens: np.ndarray) -> None:
        tokens = np.asarray(tokens)
        if tokens.size and int(tokens.max()) > np.iinfo(self.dtype).max:
            raise ValueError(f"token id {int(tokens.max())} does not fit in {self.dtype}")
        tokens = tokens.astype(self.dtype, copy=False)
        offset = 0
        while offset < tokens.size:
            if split not in self._files or self._filled[split] >= self.shard_tokens:
                self._close_file(split)
                self._open_next(split)
            room = self.shard_tokens - self._filled[split]
            chunk = tokens[offset : offset + room]
            chunk.tofile(self._files[split])
            self._filled[split] += chunk.size
            self._shards[split][-1]["tokens"] += int(chunk.size)
            offset += chunk.size

    def _close_file(self, split: str) -> None:
        f = self._files.pop(split, None)
        if f is not None:
            f.flush()
            os.fsync(f.fileno())
            f.close()

    def close(self, extra: dict | None = None) -> dict:
        """Finish every shard file, then write the manifest (last, atomically); returns it."""
        for split in list(self._files):
            self._close_file(split)
        manifest = {
            "format_version": FORMAT_VERSION,
            "dtype": self.dtype.name,
            "shard_tokens": self.shard_tokens,
            **self.extra,
            **(extra or {}),
            "splits": {
                split: {"tokens": sum(s["tokens"] for s in shards), "shards": shards}
                for split, shards in self._shards.items()
            },
        }
        write_json_atomic(self.out_dir / MANIFEST, manifest)
        self._closed = True
        return manifest

    def abort(self) -> None:
        """Close the open files and write no manifest: the directory stays marked incomplete."""
        for split in list(self._files):
            f = self._files.pop(split)
            try:
                f.close()
            except OSError:
                pass  # already failing; the missing manifest is what tells readers
        self._closed = True

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """On an exception, ``abort``; otherwise ``close`` unless the caller already closed with its manifest."""
        if exc_type is not None:
            self.abort()
        elif not self._closed:
            self.close()


class ShardSet:
    """Read-only view of a complete shard directory (one with a manifest)."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        path = self.dir / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: no shard manifest (run `lmforge data tokenize`, or it was interrupted before finishing)"
            )
        self.manifest = json.loads(path.read_text(encoding="utf-8"))
        if self.manifest.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path}: unsupported shard format version {self.manifest.get('format_version')!r}")
        self.dtype = np.dtype(self.manifest["dtype"])

    @property
    def splits(self) -> list[str]:
        return list(self.manifest["splits"])

    def num_tokens(self, split: str = "train") -> int:
        return self.manifest["splits"].get(split, {}).get("tokens", 0)

    def arrays(self, split: str = "train") -> list[np.memmap]:
        if split not in self.manifest["splits"]:
            raise KeyError(f"{self.dir}: no split {split!r}; splits: {', '.join(self.splits)}")
        out = []
        for shard in self.manifest["splits"][split]["shards"]:
            path = self.dir / shard["file"]
            expected = shard["tokens"] * self.dtype.itemsize
            if not path.is_file() or path.stat().st_size != expected:
                raise ValueError(f"{path}: missing or wrong size (expected {expected} bytes); re-run tokenize")
            if shard["tokens"]:
                out.append(np.memmap(path, dtype=self.dtype, mode="r", shape=(shard["tokens"],)))
        return out
