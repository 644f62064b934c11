"""The pipeline run as users run it: the CLI killed mid-run and resumed, parallel workers, Ray,
and the default pipeline on the real corpora."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lmforge.data.pipeline.config import load_pipeline
from lmforge.data.pipeline.executor import run_pipeline
from lmforge.data.readers import read_documents

REPO = Path(__file__).resolve().parents[2]
LMFORGE = [sys.executable, "-m", "lmforge.cli"]

PIPELINE = """
name: exec-test
output: {{dir: {out}, docs_per_file: 40}}
workers: {workers}
batch_size: 32
steps:
  - type: normalize
  - type: length_filter
    min_chars: 200
  - type: exact_dedup
  - type: minhash_dedup
  - type: line_dedup
"""


def _corpus(root: Path, files: int = 8, docs: int = 150) -> Path:
    """Seeded synthetic jsonl shards with exact and near duplicates across files, and short docs."""
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(3000)] + list("的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动")
    bases = [" ".join(rng.choice(vocab) for _ in range(rng.randint(60, 400))) for _ in range(files * docs // 3)]
    root.mkdir(parents=True, exist_ok=True)
    for f in range(files):
        lines = []
        for i in range(docs):
            r = rng.random()
            if r < 0.1:
                text = "too short"
            elif r < 0.3:  # a copy of an earlier base, sometimes with an edit: exact and near duplicates
                words = rng.choice(bases).split()
                if rng.random() < 0.5:
                    words[rng.randrange(len(words))] = "edited"
                text = " ".join(words)
            else:
                text = bases[(f * docs + i) % len(bases)] + f" unique {f} {i}"
            lines.append(json.dumps({"text": text, "n": i}))
        (root / f"shard{f}.jsonl").write_text("\n".join(lines) + "\n")
    return root


def _write_pipeline(tmp_path: Path, out: Path, workers: int = 1) -> Path:
    path = tmp_path / f"pipeline-{out.name}.yaml"
    path.write_text(PIPELINE.format(out=out, workers=workers))
    return path


def _kept(out: Path) -> list[tuple[str, str]]:
    return [(d.id, d.text) for d in read_documents(out / "data")]


def _run(tmp_path: Path, inputs: Path, out: Path, workers: int = 1, executor: str = "local") -> dict:
    cfg, specs = load_pipeline(_write_pipeline(tmp_path, out, workers), [f"executor={executor}"])
    cfg.inputs = [str(inputs)]
    return run_pipeline(cfg, specs, show_progress=False)


def test_killed_run_resumes_without_loss_or_duplication(tmp_path):
    inputs = _corpus(tmp_path / "in")
    reference = _run(tmp_path, inputs, tmp_path / "reference")
    expected = _kept(tmp_path / "reference")
    assert reference["checks"]["adds_up"] and 0 < len(expected) < reference["totals"]["read"]

    out = tmp_path / "killed"
    cmd = [*LMFORGE, "data", "run", str(_write_pipeline(tmp_path, out)), str(inputs), "--quiet"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    # Kill it (SIGKILL: no clean-up of any kind) once a few shards of the first segment are done.
    deadline = time.monotonic() + 120
    while len(list((out / "stats" / "seg-0").glob("*.json"))) < 3:
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
        assert time.monotonic() < deadline, "no shard finished within 120 s"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (out / "manifest.json").exists(), "killed before the end"

    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    got = _kept(out)
    assert got == expected  # same documents, same order: nothing lost, nothing twice
    stats = json.loads((out / "stats.json").read_text())
    assert stats["totals"] == reference["totals"] and stats["checks"]["adds_up"]
    assert not list(out.rglob(".*.tmp*")), "no temporary files left behind"


def test_parallel_workers_give_the_same_output(tmp_path):
    inputs = _corpus(tmp_path / "in", files=4, docs=60)
    one = _run(tmp_path, inputs, tmp_path / "one", workers=1)
    two = _run(tmp_path, inputs, tmp_path / "two", workers=2)
    assert _kept(tmp_path / "one") == _kept(tmp_path / "two")
    assert one["totals"] == two["totals"]
    assert [s["dropped"] for s in one["steps"]] == [s["dropped"] for s in two["steps"]]


@pytest.mark.slow
def test_ray_executor_on_a_local_ray_instance(tmp_path):
    pytest.importorskip("ray")
    inputs = _corpus(tmp_path / "in", files=3, docs=60)
    local = _run(tmp_path, inputs, tmp_path / "local", workers=1)
    on_ray = _run(tmp_path, inputs, tmp_path / "ray", workers=2, executor="ray")
    assert _kept(tmp_path / "ray") == _kept(tmp_path / "local")
    assert on_ray["totals"] == local["totals"] and on_ray["checks"]["adds_up"]


def test_default_pipeline_on_the_shared_corpora(shared_data, tmp_path):
    """The issue's "done when": clean shards and a funnel report whose numbers add up."""
    out = tmp_path / "clean"
    result = subprocess.run(
        [*LMFORGE, "data", "run", "recipes/data/default.yaml", str(shared_data / "pretrain"), "--out", str(out), "--quiet"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "✓ read" in result.stdout + result.stderr
    stats = json.loads((out / "stats.json").read_text())
    assert stats["checks"] == {"adds_up": True, "problems": []}
    totals = stats["totals"]
    print(f"\ndefault pipeline on shared/data/pretrain: read {totals['read']}, kept {totals['kept']}, dropped {totals['dropped']}")
    for step in stats["steps"]:
        print(f"  {step['name']:<20} {step['docs_in']:>5} -> {step['docs_out']:>5}  {step['dropped']}")
    docs = list(read_documents(out / "data"))
    assert len(docs) == totals["kept"] and 0.5 * totals["read"] < totals["kept"] < totals["read"]
    assert {d.metadata["lang"] for d in docs} == {"zh", "en"}
    assert not any("崐" in d.text for d in docs)  # the novel's scanning artefacts are gone
    assert all("topic" in d.metadata for d in docs)
    report = (out / "report.md").read_text()
    assert f"✓ documents read = kept + dropped: {totals['read']:,} = {totals['kept']:,} + {totals['dropped']:,}" in report
    assert (out / "funnel.png").stat().st_size > 10_000


def test_a_big_jsonl_file_is_cut_into_shards_with_the_same_result(tmp_path):
    inputs = _corpus(tmp_path / "in", files=2, docs=120)
    whole = _run(tmp_path, inputs, tmp_path / "whole", workers=1)
    cfg, specs = load_pipeline(_write_pipeline(tmp_path, tmp_path / "cut", workers=2), ["shard_bytes=20000"])
    cfg.inputs = [str(inputs)]
    cut = run_pipeline(cfg, specs, show_progress=False)
    assert cut["read"]["files"] == 2 and cut["read"]["shards"] > 4  # each file became several shards
    assert _kept(tmp_path / "cut") == _kept(tmp_path / "whole")
    assert cut["totals"] == whole["totals"] and cut["checks"]["adds_up"]
