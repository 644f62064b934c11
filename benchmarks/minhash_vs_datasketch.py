"""MinHash near-duplicate detection throughput: lmforge's vectorized MinHash-LSH against ``datasketch``.

Both sides do the whole job, from raw text to duplicate clusters, on the same documents with the
same shingles (word 5-grams over ``text.words()``: a CJK character is a word), the same
``num_perm``, bands x rows and threshold, on one core:

- lmforge: ``MinHasher.signatures`` over batches of 1,000 documents, ``band_hashes``, then
  candidate pairs from sorted band keys, verification by estimated Jaccard and union-find — what
  the ``minhash_dedup`` step does across its collect and decide phases.
- datasketch, used the fast idiomatic way: per document ``words()``, shingle strings encoded to
  bytes, ``MinHash.update_batch``; then ``MinHashLSH(params=(bands, rows))`` query + insert, each
  candidate verified with ``MinHash.jaccard`` and linked in a union-find.

Documents: the real corpora in ``../shared/data/pretrain`` cut into ~2 KB (UTF-8) documents, plus
planted near-duplicates (copies with 1% of words edited: true Jaccard ~0.9), so both sides have
clusters to find; without the shared data, Python's own standard-library sources. It prints
documents/s and MB/s of each, the ratio (the issue's target: >= 20x datasketch), and the
clusters each found, with precision/recall against the planted copies. ``run_minhash_benchmark``
is the reusable part (``benchmarks/data_pipeline.py`` calls it)::

    python benchmarks/minhash_vs_datasketch.py                    # every chunk + 10% planted copies, ~5 s
    python benchmarks/minhash_vs_datasketch.py --docs 500 --num-perm 64 --bands 8 --rows 8 --json out.json

numpy's element-wise operations run on one thread anyway; the thread variables below only keep
a BLAS from spreading (nothing here calls one).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import sysconfig  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from lmforge.data.steps import minhash as mh  # noqa: E402
from lmforge.data.steps.text import CJK_CHARS, words  # noqa: E402

SHARED_PRETRAIN = Path(os.environ.get("LMFORGE_SHARED_DATA", REPO.parent / "shared" / "data")) / "pretrain"
TARGET_RATIO = 20.0
_WORD_SPAN_RE = re.compile(f"[{CJK_CHARS}]|[^\\W_{CJK_CHARS}]+")


# -- documents ----------------------------------------------------------------------------------
def _chunks(text: str, target_bytes: int = 2000) -> list[str]:
    """~``target_bytes`` UTF-8 documents cut at line ends (a CJK character is 3 bytes)."""
    chars = max(200, int(target_bytes * len(text) / max(1, len(text.encode("utf-8")))))
    out, start = [], 0
    while start < len(text):
        end = text.find("\n", start + chars)
        end = len(text) if end < 0 else end + 1
        if text[start:end].strip():
            out.append(text[start:end])
        start = end
    return out


def _edit(text: str, rate: float, vocab: list[str], rng: random.Random) -> str:
    """Delete, replace or insert before each word with probability ``rate`` (a third each)."""
    out, last = [], 0
    for match in _WORD_SPAN_RE.finditer(text):
        out.append(text[last : match.start()])
        last = match.end()
        if rng.random() >= rate:
            out.append(match.group())
        elif (action := rng.randrange(3)) == 1:
            out.append(rng.choice(vocab))
        elif action == 2:
            out.append(rng.choice(vocab) + " " + match.group())
    return "".join(out) + text[last:]


def load_documents(num_docs: int | None = None, planted_fraction: float = 0.1, seed: int = 0) -> tuple[list[str], set[int], str]:
    """``num_docs`` documents: real ~2 KB chunks, then planted near-duplicates of some of them.

    Returns the texts, the indices of the planted copies, and a description of the source.
    ``None``: every chunk once, plus the planted copies. When more documents are asked for than
    the corpus has chunks, the rest are 30%-edited variants (Jaccard ~0.1 to their source:
    distinct documents, not duplicates).
    """
    files = sorted(SHARED_PRETRAIN.glob("*.txt")) if SHARED_PRETRAIN.is_dir() else []
    source = f"{SHARED_PRETRAIN} ({', '.join(f.name for f in files)})"
    if not files:
        files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
        source = f"Python stdlib sources ({len(files)} files; {SHARED_PRETRAIN} not found)"
    chunks = [c for f in files for c in _chunks(f.read_text(encoding="utf-8", errors="replace"))]
    rng = random.Random(seed)
    rng.shuffle(chunks)
    vocab = sorted({w for c in chunks[:200] for w in words(c)})
    if num_docs is None:
        num_docs = int(round(len(chunks) / (1 - planted_fraction)))
    originals = int(round(num_docs * (1 - planted_fraction)))
    texts = chunks[:originals]
    real = len(texts)
    while len(texts) < originals:
        texts.append(_edit(rng.choice(chunks), 0.3, vocab, rng))
    planted = set()
    while len(texts) < num_docs:
        planted.add(len(texts))
        texts.append(_edit(texts[rng.randrange(originals)], 0.01, vocab, rng))
    source += f": {real:,} ~2 KB chunks"
    if originals > real:
        source += f" + {originals - real:,} 30%-edited variants of them (distinct documents)"
    return texts, planted, source + f" + {len(planted):,} planted near-duplicates (1% of words edited)"


def load_benchmark_texts(num_docs: int | None = None) -> list[str]:
    """The benchmark's documents alone (see ``load_documents`` for the planted indices too)."""
    return load_documents(num_docs)[0]


# -- the two implementations --------------------------------------------------------------------
def _lmforge(texts: list[str], num_perm: int, bands: int, rows: int, ngram: int, threshold: float, seed: int) -> tuple[np.ndarray, dict]:
    hasher = mh.MinHasher(ngram, num_perm, seed)
    t0 = time.perf_counter()
    signatures = np.concatenate([hasher.signatures(texts[lo : lo + 1000]) for lo in range(0, len(texts), 1000)])
    keys = mh.band_hashes(signatures, bands, rows)
    t1 = time.perf_counter()
    valid = (signatures != np.uint32(0xFFFFFFFF)).any(axis=1)
    i, j = mh.candidate_pairs(keys, valid)
    linked = mh.verify_pairs(signatures, i, j, threshold)
    labels = mh.connected_components(len(texts), i[linked], j[linked])
    t2 = time.perf_counter()
    return labels, {"signatures_s": t1 - t0, "lsh_s": t2 - t1, "total_s": t2 - t0, "candidate_pairs": int(len(i))}


def _datasketch(texts: list[str], num_perm: int, bands: int, rows: int, ngram: int, threshold: float, seed: int) -> tuple[np.ndarray, dict]:
    from datasketch import MinHash, MinHashLSH

    t0 = time.perf_counter()
    shingle_lists = []
    for text in texts:
        w = words(text)
        shingle_lists.append([" ".join(w[k : k + ngram]).encode("utf-8") for k in range(max(len(w) - ngram + 1, 1))] if w else [])
    t1 = time.perf_counter()
    sketches = []
    for shingles in shingle_lists:
        m = MinHash(num_perm=num_perm, seed=seed)
        m.update_batch(shingles)
        sketches.append(m)
    t2 = time.perf_counter()
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, params=(bands, rows))
    parent = list(range(len(texts)))

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    candidates = 0
    for index, (m, shingles) in enumerate(zip(sketches, shingle_lists)):
        if not shingles:  # no words: nothing to compare (as lmforge's `valid`)
            continue
        for other in lsh.query(m):
            candidates += 1
            if sketches[other].jaccard(m) >= threshold:
                a, b = root(other), root(index)
                parent[max(a, b)] = min(a, b)
        lsh.insert(index, m)
    labels = np.array([root(x) for x in range(len(texts))])
    t3 = time.perf_counter()
    return labels, {"shingles_s": t1 - t0, "minhash_s": t2 - t1, "lsh_s": t3 - t2, "total_s": t3 - t0, "candidate_pairs": candidates}


def _clusters(labels: np.ndarray, planted: set[int] | None) -> dict:
    _, sizes = np.unique(labels, return_counts=True)
    duplicates = set(np.flatnonzero(labels != np.arange(len(labels))).tolist())  # all but each cluster's first
    out = {"clusters": int((sizes > 1).sum()), "duplicate_docs": len(duplicates), "largest_cluster": int(sizes.max(initial=0))}
    if planted is not None:
        out["precision"] = len(duplicates & planted) / max(1, len(duplicates))
        out["recall"] = len(duplicates & planted) / max(1, len(planted))
    return out, duplicates


def run_minhash_benchmark(texts: list[str], num_perm: int = 128, bands: int = 16, rows: int = 8, ngram: int = 5,
                          threshold: float = 0.8, seed: int = 0, repeats: int = 3, planted: set[int] | None = None,
                          source: str = "the given texts", show: bool = True) -> dict:
    """Time both implementations on ``texts`` (best of ``repeats``) and compare what they found.

    ``planted``: indices of known near-duplicate copies, for precision/recall. Prints the
    side-by-side table (unless ``show`` is false) and returns it as a JSON-able dict: per
    implementation seconds, docs/s, MB/s and clusters; ``ratio`` (lmforge's docs/s over
    datasketch's) and ``meets_target`` (ratio >= 20).
    """
    import datasketch

    mh.MinHasher(ngram, num_perm, seed).signatures(["warm up"])  # the one-time char table (~0.5 s/process)
    megabytes = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    result = {"docs": len(texts), "megabytes": megabytes, "num_perm": num_perm, "bands": bands, "rows": rows,
              "ngram": ngram, "threshold": threshold, "repeats": repeats}
    found = {}
    for name, run in (("lmforge", _lmforge), ("datasketch", _datasketch)):
        best = None
        for _ in range(repeats):
            labels, timing = run(texts, num_perm, bands, rows, ngram, threshold, seed)
            best = timing if best is None or timing["total_s"] < best["total_s"] else best
        clusters, found[name] = _clusters(labels, planted)
        result[name] = {**best, "docs_per_s": len(texts) / best["total_s"], "mb_per_s": megabytes / best["total_s"], **clusters}
    result["datasketch"]["version"] = datasketch.__version__
    result["ratio"] = result["lmforge"]["docs_per_s"] / result["datasketch"]["docs_per_s"]
    # The same comparison if datasketch got its shingles for free (only MinHash + LSH timed).
    ds = result["datasketch"]
    result["ratio_without_datasketch_shingling"] = (ds["total_s"] - ds["shingles_s"]) / result["lmforge"]["total_s"]
    result["meets_target"] = result["ratio"] >= TARGET_RATIO
    union = found["lmforge"] | found["datasketch"]
    result["duplicate_agreement"] = len(found["lmforge"] & found["datasketch"]) / len(union) if union else 1.0
    result["source"] = source
    if show:
        print(report(result))
    return result


def report(r: dict) -> str:
    lines = [
        f"MinHash dedup: {r['docs']:,} documents, {r['megabytes']:.2f} MB",
        f"from {r['source']}",
        f"word {r['ngram']}-gram shingles, num_perm {r['num_perm']}, {r['bands']} bands x {r['rows']} rows, "
        f"threshold {r['threshold']}, candidates verified by estimated Jaccard; one core, best of {r['repeats']}",
        "",
        f"{'':24s}{'docs/s':>10s}{'MB/s':>9s}{'seconds':>9s}{'candidates':>12s}{'clusters':>10s}{'dup docs':>10s}{'precision':>11s}{'recall':>8s}",
    ]
    for name, label in (("lmforge", "lmforge (numpy)"), ("datasketch", f"datasketch {r['datasketch']['version']}")):
        x = r[name]
        quality = f"{x['precision']:>11.3f}{x['recall']:>8.3f}" if "precision" in x else f"{'-':>11s}{'-':>8s}"
        lines.append(f"{label:24s}{x['docs_per_s']:>10,.0f}{x['mb_per_s']:>9.2f}{x['total_s']:>9.3f}{x['candidate_pairs']:>12,}"
                     f"{x['clusters']:>10,}{x['duplicate_docs']:>10,}{quality}")
    lm, ds = r["lmforge"], r["datasketch"]
    lines += [
        "",
        f"lmforge stages: signatures {lm['signatures_s']:.3f} s, LSH + verify + union-find {lm['lsh_s']:.3f} s",
        f"datasketch stages: words + shingle bytes {ds['shingles_s']:.3f} s, MinHash.update_batch {ds['minhash_s']:.3f} s, "
        f"LSH query/insert + verify {ds['lsh_s']:.3f} s",
        f"ratio: {r['ratio']:.1f}x datasketch (target >= {TARGET_RATIO:.0f}x: {'met' if r['meets_target'] else 'NOT met'}); "
        f"{r['ratio_without_datasketch_shingling']:.1f}x against datasketch's MinHash + LSH alone",
        f"duplicate documents found by both / by either: {r['duplicate_agreement']:.3f}",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=None,
                        help="documents, 10%% of them planted near-duplicates (default: every ~2 KB chunk of the corpora once)")
    parser.add_argument("--num-perm", type=int, default=128)
    parser.add_argument("--bands", type=int, default=None, help="default: num_perm / rows")
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--ngram", type=int, default=5)
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per implementation; the best counts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    bands = args.bands or args.num_perm // args.rows
    texts, planted, source = load_documents(args.docs, seed=args.seed)
    result = run_minhash_benchmark(texts, args.num_perm, bands, args.rows, args.ngram, args.threshold, args.seed,
                                   args.repeats, planted, source)
    result.update(python=platform.python_version(), numpy=np.__version__, machine=platform.processor() or platform.machine())
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
