"""Data pipeline throughput per core, and MinHash deduplication against datasketch.

    .venv/bin/python benchmarks/data_pipeline.py                       # shared corpora if present
    .venv/bin/python benchmarks/data_pipeline.py --inputs corpus/ --pipeline recipes/data/default.yaml --json out.json

Part 1 runs the default pipeline in this process (one worker: figures are per core) on the
shared pretraining corpora (../shared/data/pretrain, ~2.3 MB of Chinese and English), falling
back to a corpus built from the Python standard library where they are absent. Beside it, in the
same invocation, runs the baseline: the same inputs read and written with no steps, so the ratio
says what the steps cost over I/O. It prints documents/s and MB/s per core overall and MB/s per
step (from the funnel's per-step timings).

Part 2 runs MinHash-LSH deduplication with lmforge's vectorized implementation and with
`datasketch` (MinHash.update_batch + MinHashLSH) on the same documents and shingles, side by
side (``benchmarks/minhash_vs_datasketch.py``). The issue's target: at least 20x datasketch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # per-core figures
sys.path.insert(0, str(Path(__file__).resolve().parent))

REPO = Path(__file__).resolve().parents[1]
SHARED_PRETRAIN = REPO.parent / "shared" / "data" / "pretrain"


def _fallback_inputs(tmp: Path) -> list[str]:
    from lmforge.data.corpus import CorpusConfig, build_corpus

    path = tmp / "stdlib.jsonl"
    build_corpus(CorpusConfig(max_bytes=3_000_000, sources={"stdlib": 0.5, "docstrings": 0.5}), path)
    return [str(path)]


def run_pipeline_once(inputs: list[str], pipeline: Path | None, out_dir: Path) -> dict:
    from lmforge.data.pipeline.config import load_pipeline
    from lmforge.data.pipeline.executor import run_pipeline

    overrides = [f"output.dir={out_dir}", "workers=1", "output.keep_dropped=false", "executor=local"]
    # The baseline reads and writes with the same reader and output settings and no steps.
    cfg, specs = load_pipeline(pipeline or REPO / "recipes" / "data" / "default.yaml", overrides)
    if pipeline is None:
        specs = []
    cfg.inputs = inputs
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    if specs:
        stats = run_pipeline(cfg, specs, force=True, show_progress=False)
    else:
        stats = _read_write_only(cfg)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    read_bytes = stats["read"]["bytes"] or 0
    return {
        "documents": stats["totals"]["read"],
        "kept": stats["totals"]["kept"],
        "mb": read_bytes / 1e6,
        "seconds": wall,
        "cpu_seconds": cpu,
        "docs_per_s": stats["totals"]["read"] / wall,
        "mb_per_s": read_bytes / 1e6 / wall,
        "steps": [
            {"name": s["name"], "mb_per_s": (s["bytes_in"] / 1e6 / s["seconds"]) if s["seconds"] else None, "seconds": s["seconds"]}
            for s in stats.get("steps", [])
        ],
    }


def _read_write_only(cfg) -> dict:
    from lmforge.data.readers import read_documents
    from lmforge.data.writers import DocumentWriter

    r = cfg.reader
    n = n_bytes = 0
    with DocumentWriter(Path(cfg.output.dir) / "data", "part-00000", cfg.output.format, cfg.output.docs_per_file) as w:
        for doc in read_documents(cfg.inputs, text_key=r.text_key, txt_mode=r.txt_mode, chunk_chars=r.chunk_chars):
            n += 1
            n_bytes += len(doc.text.encode("utf-8"))
            w.write(doc)
    return {"read": {"bytes": n_bytes}, "totals": {"read": n, "kept": n}, "steps": []}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inputs", nargs="*", help="input files/dirs (default: ../shared/data/pretrain, else stdlib)")
    ap.add_argument("--pipeline", type=Path, default=REPO / "recipes" / "data" / "default.yaml")
    ap.add_argument("--skip-minhash", action="store_true", help="only the pipeline part")
    ap.add_argument("--minhash-docs", type=int, default=None, help="documents for the MinHash part (default: all)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        inputs = args.inputs or ([str(SHARED_PRETRAIN)] if SHARED_PRETRAIN.is_dir() else _fallback_inputs(tmp))
        print(f"inputs: {', '.join(inputs)}")
        baseline = run_pipeline_once(inputs, None, tmp / "baseline")
        result = run_pipeline_once(inputs, args.pipeline, tmp / "pipeline")

        print(f"\n== pipeline {args.pipeline.name}, one worker (per core) ==")
        print(f"{'run':<28}{'docs':>8}{'MB':>8}{'s':>8}{'docs/s':>10}{'MB/s':>8}")
        for name, r in (("read+write only (baseline)", baseline), (f"{args.pipeline.stem} pipeline", result)):
            print(f"{name:<28}{r['documents']:>8,}{r['mb']:>8.2f}{r['seconds']:>8.2f}{r['docs_per_s']:>10,.0f}{r['mb_per_s']:>8.2f}")
        print(f"pipeline / baseline speed: {result['mb_per_s'] / baseline['mb_per_s']:.2f}x  "
              f"(kept {result['kept']:,} of {result['documents']:,} documents)")
        print("\nper step (MB/s over the bytes each step received):")
        for s in result["steps"]:
            speed = f"{s['mb_per_s']:.1f}" if s["mb_per_s"] else "-"
            print(f"  {s['name']:<24}{speed:>8} MB/s  {s['seconds']:.2f} s")
        figures = {"inputs": inputs, "baseline": baseline, "pipeline": result}

        if not args.skip_minhash:
            from minhash_vs_datasketch import load_benchmark_texts, run_minhash_benchmark

            texts = load_benchmark_texts(args.minhash_docs)
            print(f"\n== MinHash-LSH dedup, lmforge vs datasketch ({len(texts):,} documents) ==")
            figures["minhash"] = run_minhash_benchmark(texts)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
