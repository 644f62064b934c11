"""Pretraining text -> fixed-size memory-mapped token shards (recipe section ``data``).

Reads documents with ``lmforge.data.readers``, tokenizes them in worker processes, appends the
eos token (``<|endoftext|>``) after every document and writes ``train`` / ``val`` shards through
``lmforge.data.shards.ShardWriter``::

    from lmforge.data.tokenize import TokenizeConfig, tokenize_to_shards
    manifest = tokenize_to_shards(["corpus/"], "runs/tok", "runs/shards", TokenizeConfig(val_fraction=0.01))
    manifest["splits"]["train"]["tokens"], manifest["unigram_entropy_nats"]

How, and why:

* **Deterministic output.** The main process reads documents and cuts them into batches of about
  ``batch_chars`` characters; workers encode batches; results are written strictly in submission
  order. The same inputs give byte-identical shards whatever the worker count.
* **Flat memory.** At most ``2 x workers`` batches are in flight (``bounded_ordered_map``), so
  an input far larger than RAM streams through (``Pool.imap`` or ``Executor.map`` would read
  the whole input ahead).
* **Stable validation split.** A document goes to ``val`` when the crc32 of its UTF-8 text, as a
  fraction of 2^32, falls below ``val_fraction``: independent of order and worker count, and
  exact duplicates always land in the same split (no train/val leakage through copies).
* **Special-token strings in raw text are plain text.** A web page containing ``<|im_start|>``
  must not inject chat structure or fake document ends into pretraining data.
* **Unigram baseline.** The manifest records the entropy (nats) of the train split's token
  frequencies: a model that learned nothing but token frequencies reaches this loss, so held-out
  loss is judged against it.
* **All or nothing.** The manifest is written last and atomically by the shard writer; an
  interrupted or failed run closes its files and leaves no manifest, and ``ShardSet`` refuses
  such a directory.
* **Absolute paths in the manifest** (``tokenizer_dir``, ``sources``), so ``lmforge pretrain``
  finds the tokenizer from whatever directory it runs in.
"""

from __future__ import annotations

import os
import time
import zlib
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Literal, TypeVar

import numpy as np

from lmforge.data.document import DataError, Document
from lmforge.io import human
from lmforge.tokenizer.train import EOS_TOKEN, load_tokenizer, tokenizer_sha256

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class TokenizeConfig:
    text_key: str = "text"
    shard_tokens: int = 1 << 24  # tokens per shard file
    val_fraction: float = 0.0  # documents routed (by a hash of their text) to the held-out split
    workers: int = 0  # 0 = one per CPU core this process may run on (see available_cpus)
    skip_bad: bool = False
    txt_mode: Literal["paragraph", "line", "file", "chunk"] = "paragraph"  # how .txt files split into documents
    chunk_chars: int = 4000  # document size for txt_mode=chunk (cut at paragraph ends)
    batch_chars: int = 1 << 20  # characters of text per worker task; in-flight memory is ~4x this per worker

    def __post_init__(self) -> None:
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1); got {self.val_fraction}")
        if self.shard_tokens <= 0 or self.batch_chars <= 0 or self.workers < 0 or self.chunk_chars <= 0:
            raise ValueError("shard_tokens, batch_chars and chunk_chars must be positive, workers >= 0")


def available_cpus() -> int:
    """CPU cores this process may run on: its affinity mask, not every core of the host.

    ``os.cpu_count()`` counts the host's cores, so in a container or job limited to a few
    (taskset, Slurm, Kubernetes cpusets) it would start far more workers than can run.
    """
    if hasattr(os, "sched_getaffinity"):  # Linux; absent on macOS and Windows
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except OSError:
            pass
    return os.cpu_count() or 1


def is_val(text: str, val_fraction: float) -> bool:
    """True when ``text`` belongs to the held-out split (a stable hash, not a random draw)."""
    return val_fraction > 0 and zlib.crc32(text.encode("utf-8")) < val_fraction * 2**32


@dataclass
class _Batch:
    """A worker's answer for one batch of documents."""

    train: np.ndarray
    val: np.ndarray
    train_docs: int
    val_docs: int
    empty_docs: int
    train_counts: np.ndarray  # token id -> count in ``train``, for the unigram entropy


class _Encoder:
    """Encodes a batch of texts into per-split token arrays (in a worker, or in-process)."""

    def __init__(self, tokenizer_file: str, val_fraction: float, dtype: str) -> None:
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(tokenizer_file)
        self.tok.encode_special_tokens = True  # "<|endoftext|>" in raw text is text, not eos
        eos = self.tok.token_to_id(EOS_TOKEN)
        if eos is None:
            raise DataError(f"{tokenizer_file}: the tokenizer has no {EOS_TOKEN} token")
        self.eos, self.val_fraction, self.dtype = eos, val_fraction, np.dtype(dtype)
        self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)

    def __call__(self, texts: list[str]) -> _Batch:
        kept = [t for t in texts if t]  # an empty document would be a lone eos: noise, not data
        ids = [e.ids for e in self.tok.encode_batch_fast(kept, add_special_tokens=False)]
        splits: dict[bool, list[list[int]]] = {False: [], True: []}
        for text, doc_ids in zip(kept, ids):
            splits[is_val(text, self.val_fraction)].append(doc_ids)
        train, val = (self._join(splits[False]), self._join(splits[True]))
        counts = np.bincount(train, minlength=self.vocab_size)
        return _Batch(train, val, len(splits[False]), len(splits[True]), len(texts) - len(kept), counts)

    def _join(self, docs: list[list[int]]) -> np.ndarray:
        out = np.empty(sum(len(d) + 1 for d in docs), dtype=self.dtype)
        pos = 0
        for d in docs:  # slice assignment from a list runs in C; no per-token Python work
            out[pos : pos + len(d)] = d
            out[pos + len(d)] = self.eos
            pos += len(d) + 1
        return out


_WORKER_ENCODER: _Encoder | None = None


def _init_worker(tokenizer_file: str, val_fraction: float, dtype: str) -> None:
    global _WORKER_ENCODER
    # Each worker encodes single-threaded: parallelism comes from the processes, and a rayon
    # pool per worker would oversubscribe the cores.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _WORKER_ENCODER = _Encoder(tokenizer_file, val_fraction, dtype)


def _encode_in_worker(texts: list[str]) -> _Batch:
    assert _WORKER_ENCODER is not None, "worker was not initialised"
    return _WORKER_ENCODER(texts)


def bounded_ordered_map(fn: Callable[[T], R], items: Iterable[T], executor=None, max_pending: int = 4) -> Iterator[R]:
    """``map(fn, items)`` through a ``concurrent.futures`` executor, in order, at most ``max_pending`` in flight.

    ``items`` is pulled lazily: a new item is read only when an earlier result has been taken,
    which is what keeps memory flat. ``executor=None`` maps in this process.
    """
    if executor is None:
        yield from map(fn, items)
        return
    pending: deque = deque()
    try:
        for item in items:
            pending.append(executor.submit(fn, item))
            if len(pending) >= max_pending:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:  # on error or early exit, drop work nobody will read
            future.cancel()


def batch_texts(docs: Iterable[Document], batch_chars: int, max_docs: int = 8192) -> Iterator[list[str]]:
    """Group document texts into lists of about ``batch_chars`` characters (at least one text each)."""
    batch: list[str] = []
    chars = 0
    for doc in docs:
        batch.append(doc.text)
        chars += len(doc.text)
        if chars >= batch_chars or len(batch) >= max_docs:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def unigram_entropy(counts: np.ndarray) -> float:
    """Entropy in nats of the token distribution given by ``counts`` (0.0 when empty)."""
    total = counts.sum()
    if total == 0:
        return 0.0
    p = counts[counts > 0].astype(np.float64) / total
    return float(-(p * np.log(p)).sum())


def tokenize_to_shards(
    inputs: Iterable[str | os.PathLike],
    tokenizer_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    cfg: TokenizeConfig | None = None,
    *,
    show_progress: bool = True,
) -> dict:
    """Tokenize every document in ``inputs`` (files or directories) into shards under ``out_dir``.

    Returns the manifest (also written to ``out_dir/manifest.json``, last). Raises ``DataError``
    naming ``file:line`` for a malformed record unless ``cfg.skip_bad``.
    """
    from lmforge.data.readers import ReadStats, read_documents
    from lmforge.data.shards import ShardWriter, dtype_for_vocab

    cfg = cfg or TokenizeConfig()
    inputs = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    tokenizer_dir = Path(tokenizer_dir)
    tokenizer_file = str(tokenizer_dir / "tokenizer.json")
    probe = load_tokenizer(tokenizer_dir)  # fails early, with a clear message, before any worker starts
    vocab_size = probe.get_vocab_size(with_added_tokens=True)
    eos_id = probe.token_to_id(EOS_TOKEN)
    if eos_id is None:
        raise DataError(f"{tokenizer_file}: the tokenizer has no {EOS_TOKEN} token to end documents with")
    dtype = dtype_for_vocab(vocab_size)
    workers = cfg.workers or available_cpus()

    stats = ReadStats()
    docs = read_documents(
        inputs, text_key=cfg.text_key, skip_bad=cfg.skip_bad, stats=stats, txt_mode=cfg.txt_mode, chunk_chars=cfg.chunk_chars
    )
    batches = batch_texts(docs, cfg.batch_chars)
    counts = np.zeros(vocab_size, dtype=np.int64)
    totals = {"train_docs": 0, "val_docs": 0, "empty_docs": 0, "tokens": 0}
    progress = _Progress(show_progress)

    def consume(results: Iterable[_Batch]) -> None:
        for b in results:
            for split, arr in (("train", b.train), ("val", b.val)):
                if arr.size:
                    writer.add(split, arr)
            counts[: b.train_counts.size] += b.train_counts
            totals["train_docs"] += b.train_docs
            totals["val_docs"] += b.val_docs
            totals["empty_docs"] += b.empty_docs
            totals["tokens"] += b.train.size + b.val.size
            progress.update(b.train_docs + b.val_docs + b.empty_docs, b.train.size + b.val.size)

    # The writer closes its files on any error and then writes no manifest (all or nothing).
    with ShardWriter(out_dir, dtype=dtype, shard_tokens=cfg.shard_tokens) as writer, progress:
        if workers <= 1:
            consume(bounded_ordered_map(_Encoder(tokenizer_file, cfg.val_fraction, dtype), batches))
        else:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            # spawn, not fork: the parent may hold torch / tokenizers thread pools, which fork
            # breaks. A ProcessPoolExecutor (unlike multiprocessing.Pool) raises
            # BrokenProcessPool when a worker dies instead of waiting forever.
            executor = ProcessPoolExecutor(
                workers,
                mp_context=mp.get_context("spawn"),
                initializer=_init_worker,
                initargs=(tokenizer_file, cfg.val_fraction, dtype),
            )
            try:
                consume(bounded_ordered_map(_encode_in_worker, batches, executor, max_pending=2 * workers))
            finally:
                executor.shutdown(wait=True, cancel_futures=True)

        if totals["tokens"] == 0:
            raise DataError(f"{', '.join(map(str, inputs))}: no text to tokenize (every document was empty)")
        # Absolute paths: `lmforge pretrain` may run from another directory than this command.
        return writer.close(
            {
                "tokenizer_dir": str(tokenizer_dir.resolve()),
                "tokenizer_sha256": tokenizer_sha256(tokenizer_dir),
                "vocab_size": vocab_size,
                "eos_id": eos_id,
                "documents": {"train": totals["train_docs"], "val": totals["val_docs"]},
                "empty_documents": totals["empty_docs"],
                "bad_lines": stats.bad_lines,
                "bad_examples": stats.bad_examples,
                "sources": [{**f, "path": str(Path(f["path"]).resolve())} for f in stats.files],
                "unigram_entropy_nats": unigram_entropy(counts),
                "config": asdict(cfg),
            }
        )


class _Progress:
    """A one-line live display: documents and tokens so far, and their rates."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.docs = self.tokens = 0

    def __enter__(self) -> "_Progress":
        if self.enabled:
            from rich.console import Console
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self._bar = Progress(
                SpinnerColumn(),
                TextColumn("tokenizing  {task.fields[line]}"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task("tokenize", total=None, line="starting workers...")
        self.start = time.perf_counter()
        return self

    def update(self, docs: int, tokens: int) -> None:
        self.docs += docs
        self.tokens += tokens
        if self.enabled:
            dt = max(time.perf_counter() - self.start, 1e-9)
            line = (
                f"{self.docs:,} docs ({self.docs / dt:,.0f}/s)  "
                f"{human(self.tokens)} tokens ({human(self.tokens / dt)}/s)"
            )
            self._bar.update(self._task, line=line)

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self._bar.__exit__(*exc)

