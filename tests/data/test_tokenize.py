"""Text -> token shards: content, determinism across workers, val routing, manifest, errors."""

from __future__ import annotations

import json
import random
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from lmforge.data.document import DataError, Document
from lmforge.data.shards import MANIFEST, ShardSet, ShardWriter
from lmforge.data.tokenize import (
    TokenizeConfig,
    available_cpus,
    batch_texts,
    bounded_ordered_map,
    is_val,
    tokenize_to_shards,
    unigram_entropy,
)
from lmforge.tokenizer.train import TokenizerConfig, load_tokenizer, train_tokenizer


def _docs(n: int = 300) -> list[str]:
    rng = random.Random(1)
    words = ["alpha", "beta", "gamma", "数据", "模型", "训练", "δ", "🙂", "x=1", "def f():", "\n"]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(1, 60))) + f" #{i}" for i in range(n)]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok") / "tok"
    return train_tokenizer(_docs(), out, TokenizerConfig(vocab_size=300, num_reserved_tokens=4), show_progress=False)


def _write_jsonl(path, texts, extra_lines=()):
    lines = [json.dumps({"text": t, "i": i}, ensure_ascii=False) for i, t in enumerate(texts)] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _decode_split(out_dir, tok_dir, split) -> list[str]:
    shards = ShardSet(out_dir)
    tokens = np.concatenate(shards.arrays(split)) if shards.num_tokens(split) else np.zeros(0, dtype=np.uint16)
    tok = load_tokenizer(tok_dir)
    assert tokens.size == 0 or tokens[-1] == 0, "every document ends with eos"
    docs, start = [], 0
    for end in np.flatnonzero(tokens == 0):
        docs.append(tok.decode(tokens[start:end].tolist(), skip_special_tokens=False))
        start = end + 1
    return docs


def test_shards_hold_documents_plus_eos(tmp_path, tok_dir):
    texts = _docs(200) + ["literal <|endoftext|> and <|im_start|> are text here"]
    src = _write_jsonl(tmp_path / "in.jsonl", texts)
    cfg = TokenizeConfig(workers=1, shard_tokens=1000, val_fraction=0.2, batch_chars=500)
    m = tokenize_to_shards([src], tok_dir, tmp_path / "out", cfg, show_progress=False)

    want_val = [t for t in texts if is_val(t, 0.2)]
    want_train = [t for t in texts if not is_val(t, 0.2)]
    assert 10 < len(want_val) < 80  # the hash routes roughly val_fraction of the documents
    assert _decode_split(tmp_path / "out", tok_dir, "train") == want_train
    assert _decode_split(tmp_path / "out", tok_dir, "val") == want_val
    assert m["documents"] == {"train": len(want_train), "val": len(want_val)}
    assert m["dtype"] == "uint16" and m["eos_id"] == 0 and m["vocab_size"] == 300
    shards = m["splits"]["train"]["shards"]
    assert all(s["tokens"] == 1000 for s in shards[:-1]) and 0 < shards[-1]["tokens"] <= 1000
    assert m["sources"] == [{"path": str(src.resolve()), "bytes": src.stat().st_size}]
    assert m["bad_lines"] == 0 and m["config"]["val_fraction"] == 0.2
    from lmforge.tokenizer.train import tokenizer_sha256

    assert m["tokenizer_sha256"] == tokenizer_sha256(tok_dir)
    assert json.loads((tmp_path / "out" / "manifest.json").read_text()) == m


def test_unigram_entropy_of_train_split(tmp_path, tok_dir):
    src = _write_jsonl(tmp_path / "in.jsonl", _docs(100))
    m = tokenize_to_shards([src], tok_dir, tmp_path / "out", TokenizeConfig(workers=1), show_progress=False)
    tokens = np.concatenate(ShardSet(tmp_path / "out").arrays("train"))
    assert m["unigram_entropy_nats"] == pytest.approx(unigram_entropy(np.bincount(tokens)))
    assert 0 < m["unigram_entropy_nats"] < np.log(300)
    assert unigram_entropy(np.array([5, 5])) == pytest.approx(np.log(2))
    assert unigram_entropy(np.zeros(3, dtype=np.int64)) == 0.0
    assert "val" not in m["splits"] and m["documents"]["val"] == 0


def test_deterministic_across_worker_counts(tmp_path, tok_dir):
    texts = _docs(300)
    srcs = [_write_jsonl(tmp_path / "a.jsonl", texts[:150]), _write_jsonl(tmp_path / "b.jsonl", texts[150:])]
    runs = {}
    for workers in (1, 2):
        cfg = TokenizeConfig(workers=workers, shard_tokens=2000, val_fraction=0.1, batch_chars=300)
        runs[workers] = tokenize_to_shards(srcs, tok_dir, tmp_path / f"w{workers}", cfg, show_progress=False)
    one, two = runs[1], runs[2]
    assert one["config"].pop("workers") == 1 and two["config"].pop("workers") == 2
    assert one == two
    for split, info in one["splits"].items():
        for shard in info["shards"]:
            assert (tmp_path / "w1" / shard["file"]).read_bytes() == (tmp_path / "w2" / shard["file"]).read_bytes()


def test_bad_lines_error_or_counted(tmp_path, tok_dir):
    src = _write_jsonl(tmp_path / "in.jsonl", ["good one", "good two"], ['{"text": null}', '{"text": "after", "x": 1}'])
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"in\.jsonl:3: 'text' must be a string"):
        tokenize_to_shards([src], tok_dir, out, TokenizeConfig(workers=1), show_progress=False)
    assert not (out / "manifest.json").exists()
    m = tokenize_to_shards([src], tok_dir, out, TokenizeConfig(workers=1, skip_bad=True), show_progress=False)
    assert m["bad_lines"] == 1 and m["bad_examples"][0].startswith(f"{src}:3:")
    assert _decode_split(out, tok_dir, "train") == ["good one", "good two", "after"]
    # A failed rerun into the same directory withdraws the old manifest: readers never mix runs.
    with pytest.raises(DataError):
        tokenize_to_shards([src], tok_dir, out, TokenizeConfig(workers=1), show_progress=False)
    with pytest.raises(FileNotFoundError, match="no shard manifest"):
        ShardSet(out)


def test_empty_documents_are_skipped_and_counted(tmp_path, tok_dir):
    src = _write_jsonl(tmp_path / "in.jsonl", ["a", "", "b"])
    m = tokenize_to_shards([src], tok_dir, tmp_path / "out", TokenizeConfig(workers=1), show_progress=False)
    assert m["empty_documents"] == 1 and m["documents"]["train"] == 2
    with pytest.raises(DataError, match="no text"):
        tokenize_to_shards([_write_jsonl(tmp_path / "e.jsonl", [""])], tok_dir, tmp_path / "o2", show_progress=False)


def test_in_flight_work_is_bounded():
    taken = []

    def items():
        for i in range(50):
            taken.append(i)
            yield i

    with ThreadPoolExecutor(2) as ex:
        for n_done, result in enumerate(bounded_ordered_map(lambda x: x * x, items(), ex, max_pending=3), 1):
            assert result == (n_done - 1) ** 2  # in order
            assert len(taken) - n_done <= 3  # never more than max_pending read ahead
    assert list(bounded_ordered_map(str, [1, 2])) == ["1", "2"]


def test_batch_texts_groups_by_characters():
    docs = [Document(str(i), "x" * n) for i, n in enumerate([3, 3, 3, 10, 1])]
    assert [[len(t) for t in b] for b in batch_texts(docs, batch_chars=5)] == [[3, 3], [3, 10], [1]]


def test_config_checks():
    with pytest.raises(ValueError, match="val_fraction"):
        TokenizeConfig(val_fraction=1.0)


def test_cli_tokenize(tmp_path, tok_dir):
    from typer.testing import CliRunner

    from lmforge.data.cli import app

    src = _write_jsonl(tmp_path / "in.jsonl", _docs(50))
    out = tmp_path / "shards"
    args = ["tokenize", str(src), "--tokenizer", str(tok_dir), "--out", str(out), "--workers", "1", "-q"]
    res = CliRunner().invoke(app, args + ["--shard-tokens", "500", "--set", "data.val_fraction=0.1"])
    assert res.exit_code == 0, res.output
    m = ShardSet(out).manifest
    assert m["config"]["shard_tokens"] == 500 and m["config"]["val_fraction"] == 0.1
    assert sum(m["documents"].values()) == 50
    res = CliRunner().invoke(app, args + ["--val-fraction", "2"])
    assert res.exit_code != 0 and "val_fraction" in res.output


def test_real_text_into_shards(tmp_path, shared_data, tok_dir):
    src = shared_data / "pretrain" / "en_history.txt"
    cfg = TokenizeConfig(workers=1, shard_tokens=4096, val_fraction=0.05)
    m = tokenize_to_shards([src], tok_dir, tmp_path / "out", cfg, show_progress=False)
    from lmforge.data.readers import read_documents

    texts = [d.text for d in read_documents(src)]
    assert _decode_split(tmp_path / "out", tok_dir, "train") + _decode_split(tmp_path / "out", tok_dir, "val") == [
        t for t in texts if not is_val(t, 0.05)
    ] + [t for t in texts if is_val(t, 0.05)]
    assert m["splits"]["train"]["tokens"] > 10_000


def test_manifest_paths_are_absolute(tmp_path, tok_dir, monkeypatch):
    import os

    _write_jsonl(tmp_path / "in.jsonl", _docs(20))
    monkeypatch.chdir(tmp_path)  # relative paths as typed on a command line, resolved here
    m = tokenize_to_shards(["in.jsonl"], os.path.relpath(tok_dir), "out", TokenizeConfig(workers=1), show_progress=False)
    assert m["tokenizer_dir"] == str(tok_dir.resolve())
    assert m["sources"][0]["path"] == str((tmp_path / "in.jsonl").resolve())
    monkeypatch.chdir(tmp_path.parent)  # what `lmforge pretrain` from elsewhere sees
    manifest = ShardSet(tmp_path / "out").manifest
    assert load_tokenizer(manifest["tokenizer_dir"]).get_vocab_size() == 300


def test_available_cpus_follows_the_affinity_mask(monkeypatch):
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert available_cpus() == 2
    monkeypatch.delattr(os, "sched_getaffinity")  # macOS, Windows
    assert available_cpus() == 64


def test_shard_writer_aborts_on_error(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with ShardWriter(tmp_path / "s", shard_tokens=4) as writer:
            writer.add("train", np.arange(6, dtype=np.uint16))
            open_file = writer._files["train"]
            raise RuntimeError("boom")
    assert open_file.closed and not writer._files
    assert not (tmp_path / "s" / MANIFEST).exists()
    # Success: `close(extra)` inside the block writes the manifest, the exit does not rewrite it ...
    with ShardWriter(tmp_path / "s", shard_tokens=4) as writer:
        writer.add("train", np.arange(6, dtype=np.uint16))
        m = writer.close({"eos_id": 0})
    assert ShardSet(tmp_path / "s").manifest == m and m["eos_id"] == 0
    # ... and a block that never called close() is closed (with a manifest) on exit.
    with ShardWriter(tmp_path / "t") as writer:
        writer.add("val", np.arange(3, dtype=np.uint16))
    assert ShardSet(tmp_path / "t").num_tokens("val") == 3


def test_failed_tokenize_closes_its_shard_files(tmp_path, tok_dir, monkeypatch):
    import lmforge.data.shards as shards

    opened = []
    real_open_next = shards.ShardWriter._open_next

    def spy(self, split):
        real_open_next(self, split)
        opened.append(self._files[split])

    monkeypatch.setattr(shards.ShardWriter, "_open_next", spy)
    src = _write_jsonl(tmp_path / "in.jsonl", _docs(100), ["not json"])
    cfg = TokenizeConfig(workers=1, batch_chars=200, shard_tokens=100)
    with pytest.raises(DataError, match=r"in\.jsonl:101"):
        tokenize_to_shards([src], tok_dir, tmp_path / "out", cfg, show_progress=False)
    assert opened and all(f.closed for f in opened)
    assert not (tmp_path / "out" / MANIFEST).exists()
