"""Log-likelihood scoring throughput: lmforge's ``LoglikScorer`` against lm-eval's HF backend.

Both score the same ``(context, continuation)`` requests on the same exported checkpoint
directory, in one invocation, round after round alternately (a noisy neighbour slows both, not
one), and the medians are compared. Target: lmforge at least 1× lm-eval's requests/s.

* requests: the CMMLU dev task (``../shared/data/eval/cmmlu_dev``, 67 subjects × 5 questions)
  with lmforge's multiple-choice prompts (``multiple_choice.mc_prompt``: the same strings as
  lm-eval's ``cmmlu`` task) and the letter continuations ``" A"`` … ``" D"``: 4 requests per
  question. Where the shared data is absent, a generated arithmetic task in the same layout.
* lmforge: ``LoglikScorer.loglikelihood_text`` (what ``--model lmforge`` runs inside lm-eval),
  and, as a third row, the path ``lmforge eval`` takes for letter scoring:
  ``next_token_logprobs``, one forward per question answering its 4 requests.
* lm-eval: ``HFLM.loglikelihood`` (``--model hf``), which also runs a context shared by one-token
  continuations only once (its ``logits_cache``), with the same batch size and dtype.
* model: by default a randomly initialised model of the MiniMind2-Small shape
  (``recipes/minimind2-small.yaml``, 26M parameters, vocab 6400) saved with ``save_pretrained``,
  with a trained tokenizer from ``runs/*/tokenizer-*/`` when one fits its vocabulary, else a
  tokenizer trained here on the task's text. Random weights score as fast as trained ones.

It also checks that both backends compute the same thing: the largest per-request difference in
log-likelihood and how many ``is_greedy`` flags agree.

    .venv/bin/python benchmarks/eval_throughput.py                          # 120 questions, 3 rounds (~5 min on 2 cores)
    .venv/bin/python benchmarks/eval_throughput.py --limit 0                # the whole task
    .venv/bin/python benchmarks/eval_throughput.py --limit 40 --rounds 1    # a smoke run
    .venv/bin/python benchmarks/eval_throughput.py --checkpoint runs/demo --device cuda --batch-size 64
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_CMMLU = Path(os.environ.get("LMFORGE_SHARED_DATA", REPO.parent / "shared" / "data")) / "eval" / "cmmlu_dev"


def task_prompts(data: Path | None, k_shot: int, limit: int | None) -> tuple[list[tuple[str, str]], int, str]:
    """(requests, questions, description): every question's prompt with each option letter."""
    from lmforge.eval import multiple_choice as mc

    if data is not None and data.is_dir():
        files = [mc.read_mc_csv(p) for _, p in sorted(mc.locate_splits(data)[0].items())]
        source = f"CMMLU dev ({data}), {len(files)} subjects"
    else:
        files = [generated_subject(name, seed) for seed, name in enumerate(["addition", "subtraction", "multiplication"])]
        source = "a generated arithmetic task (no CMMLU dev data found), 3 subjects"
    prompts = []
    for file in files:
        lang = mc.subject_lang(file.layout, [i.question for i in file.items])
        name = mc.subject_display_name(file.subject, file.layout, lang)
        for item in file.items:
            shots = mc.few_shot_examples(item, file.items, k_shot)
            prompts.append((mc.mc_prompt(item, shots, lang, name, file.layout), item.letters))
    if limit:
        prompts = prompts[:limit]
    requests = [(prompt, " " + letter) for prompt, letters in prompts for letter in letters]
    return requests, len(prompts), f"{source}, {k_shot}-shot"


def generated_subject(name: str, seed: int, n: int = 40):
    """A subject of n arithmetic questions in lmforge's MC item form (the mmlu layout, English)."""
    from lmforge.eval.multiple_choice import LETTERS, MCFile, MCItem

    rng = random.Random(seed)
    op = {"addition": "+", "subtraction": "-", "multiplication": "×"}[name]
    file = MCFile(Path(f"{name}.csv"), name, "mmlu")
    for row in range(n):
        a, b = rng.randint(10, 99), rng.randint(2, 99)
        right = {"+": a + b, "-": a - b, "×": a * b}[op]
        options = [right, right + rng.randint(1, 9), right - rng.randint(1, 9), right + 10 * rng.randint(1, 5)]
        rng.shuffle(options)
        answer = LETTERS[options.index(right)]
        file.items.append(MCItem(name, f"What is {a} {op} {b}?", tuple(map(str, options)), answer, f"{name}.csv:{row + 1}"))
    return file


def find_tokenizer(vocab_size: int) -> Path | None:
    """The largest trained tokenizer under runs/ that fits a model of ``vocab_size``."""
    from transformers import AutoTokenizer

    best = None
    for directory in sorted(REPO.glob("runs/*/tokenizer-*/tokenizer")):
        if (directory / "tokenizer.json").is_file():
            size = len(AutoTokenizer.from_pretrained(directory))
            if size <= vocab_size and (best is None or size > best[0]):
                best = (size, directory)
    return best[1] if best else None


def build_checkpoint(recipe_path: Path, out: Path, requests: list[tuple[str, str]]) -> tuple[Path, str]:
    """A random model of the recipe's shape, saved as an HF checkpoint dir with a tokenizer."""
    import shutil

    from lmforge.model import Transformer
    from lmforge.model.hf import save_pretrained
    from lmforge.recipe import load_recipe
    from lmforge.tokenizer.train import TokenizerConfig, train_tokenizer

    config = load_recipe(recipe_path).model
    torch.manual_seed(0)
    model = Transformer(config)
    ckpt = save_pretrained(model, out / "ckpt")
    tokenizer = find_tokenizer(config.vocab_size)
    if tokenizer is None:
        texts = sorted({context for context, _ in requests})
        tokenizer = train_tokenizer(texts, out / "tokenizer", TokenizerConfig(vocab_size=config.vocab_size), show_progress=False)
        origin = "trained here on the task's prompts"
    else:
        origin = str(tokenizer.relative_to(REPO))
    for f in Path(tokenizer).iterdir():
        if f.is_file():
            shutil.copy(f, ckpt / f.name)
    return ckpt, f"random {recipe_path.stem} shape ({model.num_parameters():,} params), tokenizer {origin}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=None, help="time an existing checkpoint or run dir instead")
    parser.add_argument("--recipe", type=Path, default=REPO / "recipes" / "minimind2-small.yaml",
                        help="model shape for the random checkpoint")
    parser.add_argument("--data", type=Path, default=SHARED_CMMLU, help="a CMMLU-layout CSV directory")
    parser.add_argument("--k-shot", type=int, default=0)
    parser.add_argument("--limit", type=int, default=120, help="questions to score (4 requests each); 0 = all 335 (~15 min on 2 cores)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per backend, alternating (medians reported)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.rounds < 1 or args.batch_size < 1 or args.k_shot < 0:
        parser.error("--rounds and --batch-size must be >= 1, --k-shot >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("lm_eval").setLevel(logging.ERROR)  # its per-call info lines would bury the table
    logging.getLogger("lm-eval").setLevel(logging.ERROR)

    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from lmforge.eval.scorer import LoglikScorer
    from lmforge.train.checkpoint import resolve_checkpoint
    from lmforge.train.flops import _cpu_name

    requests, questions, task = task_prompts(args.data, args.k_shot, args.limit)
    with tempfile.TemporaryDirectory(prefix="lmforge-eval-bench-") as tmp:
        if args.checkpoint:
            ckpt, model_desc = resolve_checkpoint(args.checkpoint), f"checkpoint {args.checkpoint}"
        else:
            ckpt, model_desc = build_checkpoint(args.recipe, Path(tmp), requests)
        scorer = LoglikScorer.from_checkpoint(ckpt, device=args.device, dtype=args.dtype, batch_size=args.batch_size)
        hflm = HFLM(pretrained=str(ckpt), device=args.device, dtype=args.dtype, batch_size=args.batch_size)
        instances = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(requests)]
        letters = sorted({cont for _, cont in requests})
        letter_ids = [scorer.encode(x) for x in letters]
        contexts = [scorer.encode(c) for c in dict.fromkeys(c for c, _ in requests)]

        def lmforge_text():
            return scorer.loglikelihood_text(requests)

        def lmforge_letters():  # one forward per question: `lmforge eval`'s letter scoring
            return scorer.next_token_logprobs(contexts, [i[0] for i in letter_ids])

        def lm_eval_hf():
            return hflm.loglikelihood(instances, disable_tqdm=True)

        runs = {"lmforge LoglikScorer.loglikelihood_text": lmforge_text, "lm-eval HFLM.loglikelihood": lm_eval_hf}
        if all(len(i) == 1 for i in letter_ids):
            runs["lmforge next_token_logprobs (lmforge eval)"] = lmforge_letters
        warm = requests[: 4 * args.batch_size]
        scorer.loglikelihood_text(warm)  # allocator, kernels, first-call costs: untimed
        hflm.loglikelihood(instances[: len(warm)], disable_tqdm=True)
        times: dict[str, list[float]] = {name: [] for name in runs}
        outputs = {}
        for _ in range(args.rounds):
            for name, fn in runs.items():
                start = time.perf_counter()
                outputs[name] = fn()
                if torch.cuda.is_available() and args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                times[name].append(time.perf_counter() - start)

    ours, theirs = outputs["lmforge LoglikScorer.loglikelihood_text"], outputs["lm-eval HFLM.loglikelihood"]
    max_diff = max(abs(a[0] - b[0]) for a, b in zip(ours, theirs))
    greedy_agree = sum(a[1] == b[1] for a, b in zip(ours, theirs))
    where = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else _cpu_name()
    rows = []
    for name, seconds in times.items():
        median = statistics.median(seconds)
        rows.append({"backend": name, "requests": len(requests), "median_s": median,
                     "requests_per_s": len(requests) / median, "all_s": seconds})
    by = {r["backend"]: r for r in rows}
    ratio = by["lmforge LoglikScorer.loglikelihood_text"]["requests_per_s"] / by["lm-eval HFLM.loglikelihood"]["requests_per_s"]

    print(f"\nlog-likelihood throughput: {task}: {questions} questions, {len(requests)} requests; model: {model_desc}; "
          f"{args.dtype} on {args.device} ({where}, {torch.get_num_threads()} threads), batch size {args.batch_size}, "
          f"{args.rounds} alternating rounds (median)")
    width = max(len(r["backend"]) for r in rows)
    print(f"{'backend':<{width}}  {'requests':>8}  {'median s':>9}  {'requests/s':>10}  rounds (s)")
    for r in rows:
        print(f"{r['backend']:<{width}}  {r['requests']:>8}  {r['median_s']:>9.3f}  {r['requests_per_s']:>10.1f}  "
              + " ".join(f"{s:.3f}" for s in r["all_s"]))
    verdict = "met" if ratio >= 1 else "NOT met"
    print(f"lmforge / lm-eval HF: {ratio:.2f}× (target >= 1×: {verdict})")
    print(f"same numbers: max |log-likelihood difference| {max_diff:.2e} nats over {len(requests)} requests; "
          f"is_greedy agrees on {greedy_agree}/{len(requests)}")
    if "lmforge next_token_logprobs (lmforge eval)" in outputs:
        table = outputs["lmforge next_token_logprobs (lmforge eval)"]
        index = {c: i for i, c in enumerate(dict.fromkeys(c for c, _ in requests))}
        column = {x: j for j, x in enumerate(letters)}
        letter_diff = max(abs(float(table[index[c], column[x]]) - ll) for (c, x), (ll, _) in zip(requests, ours))
        print(f"next_token_logprobs vs loglikelihood_text: max difference {letter_diff:.2e} nats")
    if args.json:
        args.json.write_text(json.dumps({
            "task": task, "questions": questions, "model": model_desc, "device": args.device, "where": where,
            "dtype": args.dtype, "batch_size": args.batch_size, "threads": torch.get_num_threads(),
            "torch": torch.__version__, "platform": platform.platform(), "rows": rows, "ratio": ratio,
            "max_loglik_diff": max_diff, "greedy_agree": greedy_agree,
        }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
