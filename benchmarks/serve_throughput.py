"""Serving throughput: lmforge's engine against ``transformers``' ``generate``, and the server
under 1, 8 and 32 concurrent clients, in one invocation.

1. **Single-stream decode**: one prompt, ``--new-tokens`` greedy tokens (eos ignored, so both
   produce exactly that many), lmforge's ``Engine.generate`` against ``model.generate`` of
   ``transformers`` on the same checkpoint directory, same dtype and threads, rounds alternated
   so a noisy neighbour slows both. Target: lmforge ≥ 2× transformers. Also timed: the floor,
   every weight matrix times one vector per token and nothing else (``F.linear``, the kernels
   both sides use), and the speedup a decoder that cost only that would reach.
2. **Server**: ``lmforge serve`` in a subprocess on 127.0.0.1; C concurrent ``openai``
   clients (C = 1, 8, 32) each send ``--requests`` streamed chat requests back to back
   (``--max-tokens`` tokens each, ``ignore_eos``). Reported: aggregate completion tokens/s over
   the wall time, time to first token (first content chunk; mean and p90), and per-request
   decode tokens/s. Target: 8 clients ≥ 3× the aggregate tokens/s of 1 (continuous batching).

The model is by default a randomly initialised MiniMind2-Small-shaped checkpoint (26.9M
parameters, ``recipes/minimind2-small.yaml``) with a tokenizer trained here on the Python
standard library's docstrings; random weights decode as fast as trained ones.

    .venv/bin/python benchmarks/serve_throughput.py                      # ~4 min on 2 cores
    .venv/bin/python benchmarks/serve_throughput.py --checkpoint runs/demo --json serve.json
    .venv/bin/python benchmarks/serve_throughput.py --clients 1,8 --requests 2   # a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch

REPO = Path(__file__).resolve().parents[1]


def corpus_texts(limit_chars: int = 3_000_000) -> list[str]:
    """Docstrings of the standard library: text every machine with Python has."""
    import ast
    import sysconfig

    texts, total = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)) and (doc := ast.get_docstring(node)):
                texts.append(doc)
                total += len(doc)
        if total > limit_chars:
            break
    return texts


def build_checkpoint(recipe: Path, out: Path) -> tuple[Path, str]:
    from lmforge.model import Transformer
    from lmforge.model.hf import save_pretrained
    from lmforge.recipe import load_recipe
    from lmforge.tokenizer.train import TokenizerConfig, train_tokenizer

    config = load_recipe(recipe).model
    torch.manual_seed(0)
    model = Transformer(config)
    ckpt = save_pretrained(model, out / "ckpt")
    tokenizer = train_tokenizer(corpus_texts(), out / "tokenizer", TokenizerConfig(vocab_size=config.vocab_size), show_progress=False)
    for f in Path(tokenizer).iterdir():
        if f.is_file():
            shutil.copy(f, ckpt / f.name)
    return ckpt, f"random {recipe.stem} shape ({model.num_parameters():,} params, context {config.max_seq_len})"


# ---- 1. single stream -----------------------------------------------------------------------


def single_stream(ckpt: Path, dtype: torch.dtype, new_tokens: int, rounds: int) -> dict:
    from transformers import AutoModelForCausalLM

    from lmforge.infer import Engine, SamplingConfig
    from lmforge.model.native import SWITCH

    engine = Engine.from_checkpoint(ckpt, device="cpu", dtype=dtype)
    hf = AutoModelForCausalLM.from_pretrained(ckpt, dtype=dtype).eval()
    prompt = engine.encode("Return the number of items in a container, counting each distinct element once.")
    sampling = SamplingConfig(max_new_tokens=new_tokens, temperature=0, ignore_eos=True)
    ids = torch.tensor([prompt])

    def run_lmforge():
        return engine.generate([prompt], sampling)[0].token_ids

    def run_lmforge_torch():  # the same engine with the native kernel switched off
        with mock.patch.dict(os.environ, {SWITCH: "0"}):
            return engine.generate([prompt], sampling)[0].token_ids

    def run_hf():
        with torch.inference_mode():
            out = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new_tokens,
                              min_new_tokens=new_tokens, pad_token_id=0)
        return out[0, len(prompt):].tolist()

    # The floor of a decoder built on these kernels: every weight matrix times one vector per
    # token, nothing else (a better matrix-vector kernel could go below it, not much: it already
    # streams the weights at most of the memory bandwidth).
    linears = decode_weights(engine.model)
    vectors = {w.shape[1]: torch.randn(1, w.shape[1], dtype=w.dtype) for w in linears}

    def run_weights_only():
        with torch.inference_mode():
            for _ in range(new_tokens):
                for w in linears:
                    torch.nn.functional.linear(vectors[w.shape[1]], w)

    runs = (("lmforge", run_lmforge), ("lmforge_torch", run_lmforge_torch), ("transformers", run_hf), ("weights_only", run_weights_only))
    for _, fn in runs:
        fn()  # warm-up: allocator, kernels, the native kernel's build, HF's lazy imports
    times = {name: [] for name, _ in runs}
    outputs = {}
    for _ in range(rounds):
        for name, fn in runs:
            start = time.perf_counter()
            outputs[name] = fn()
            times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    same = outputs["lmforge"] == outputs["transformers"]
    return {"prompt_tokens": len(prompt), "new_tokens": new_tokens, "rounds": rounds,
            "lmforge_tokens_per_s": new_tokens / med["lmforge"], "transformers_tokens_per_s": new_tokens / med["transformers"],
            "speedup": med["transformers"] / med["lmforge"], "same_tokens": same,
            "lmforge_torch_tokens_per_s": new_tokens / med["lmforge_torch"], "torch_step_speedup": med["transformers"] / med["lmforge_torch"],
            "weights_only_ms_per_token": med["weights_only"] / new_tokens * 1000,
            "weights_only_ceiling": med["transformers"] / med["weights_only"]}


def decode_weights(model) -> list[torch.Tensor]:
    """The weight matrices one token's decode step multiplies: every Linear's (a tied head is
    one module), but of a mixture of experts only top-k experts per layer, as a token uses."""
    top_k = model.config.num_experts_per_tok if model.config.is_moe else 0
    weights = []
    for name, module in model.named_modules():
        expert = re.search(r"\.experts\.(\d+)\.", name)
        if isinstance(module, torch.nn.Linear) and not (expert and int(expert[1]) >= top_k):
            weights.append(module.weight)
    return weights


# ---- 2. the server --------------------------------------------------------------------------


def start_server(ckpt: Path, dtype: str, threads: int) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.Popen([sys.executable, "-m", "lmforge.cli", "serve", str(ckpt), "--port", "0", "--model-name", "bench",
                             "--dtype", dtype, "--max-batch-size", "32", "--log-level", "warning"],
                            stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        if match := re.search(r"API: (http://127\.0\.0\.1:\d+/v1)", line):
            return proc, match.group(1)
    proc.kill()
    raise RuntimeError("the server did not start")


async def one_client(client, worker: int, requests: int, max_tokens: int, records: list) -> None:
    for i in range(requests):
        start = time.perf_counter()
        first = None
        tokens = 0
        stream = await client.chat.completions.create(
            model="bench", messages=[{"role": "user", "content": f"Client {worker}, request {i}: describe a list."}],
            max_tokens=max_tokens, temperature=0.8, seed=worker * 1000 + i, stream=True,
            stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
        async for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter()
            if chunk.usage:
                tokens = chunk.usage.completion_tokens
        end = time.perf_counter()
        records.append({"ttft": (first or end) - start, "tokens": tokens, "seconds": end - start,
                        "decode_tokens_per_s": (tokens - 1) / max(end - (first or end), 1e-9)})


async def load(base: str, clients: int, requests: int, max_tokens: int) -> dict:
    import openai

    client = openai.AsyncOpenAI(base_url=base, api_key="none", max_retries=0, timeout=600)
    records: list[dict] = []
    try:
        start = time.perf_counter()
        await asyncio.gather(*(one_client(client, w, requests, max_tokens, records) for w in range(clients)))
        wall = time.perf_counter() - start
    finally:
        await client.close()
    ttft = sorted(r["ttft"] for r in records)
    tokens = sum(r["tokens"] for r in records)
    return {"clients": clients, "requests": len(records), "tokens": tokens, "seconds": wall,
            "tokens_per_s": tokens / wall, "ttft_mean_s": statistics.mean(ttft), "ttft_p90_s": ttft[int(0.9 * (len(ttft) - 1))],
            "per_request_decode_tokens_per_s": statistics.mean(r["decode_tokens_per_s"] for r in records)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=None, help="an existing checkpoint or run dir instead of a random one")
    parser.add_argument("--recipe", type=Path, default=REPO / "recipes" / "minimind2-small.yaml", help="shape of the random model")
    parser.add_argument("--dtype", default="float32", help="float32 or bfloat16, for both lmforge and transformers")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (both sides)")
    parser.add_argument("--new-tokens", type=int, default=128, help="single-stream tokens per round")
    parser.add_argument("--rounds", type=int, default=3, help="single-stream rounds (medians are compared)")
    parser.add_argument("--clients", default="1,8,32", help="concurrency levels")
    parser.add_argument("--requests", type=int, default=3, help="requests per client")
    parser.add_argument("--max-tokens", type=int, default=64, help="completion tokens per server request")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]

    with tempfile.TemporaryDirectory() as tmp:
        if args.checkpoint is not None:
            from lmforge.infer import resolve_checkpoint

            ckpt, model = resolve_checkpoint(args.checkpoint), str(args.checkpoint)
        else:
            ckpt, model = build_checkpoint(args.recipe, Path(tmp))
        print(f"model: {model}; {args.dtype}, {args.threads} threads, {platform.processor() or platform.machine()}, torch {torch.__version__}")

        single = single_stream(ckpt, dtype, args.new_tokens, args.rounds)
        print(f"\nsingle stream, {single['new_tokens']} greedy tokens after a {single['prompt_tokens']}-token prompt "
              f"(median of {single['rounds']} alternating rounds):")
        print(f"  lmforge Engine.generate         {single['lmforge_tokens_per_s']:8.1f} tokens/s")
        print(f"  transformers generate           {single['transformers_tokens_per_s']:8.1f} tokens/s")
        print(f"  speedup {single['speedup']:.2f}x (target >= 2x: {'met' if single['speedup'] >= 2 else 'NOT met'}); "
              f"same tokens: {single['same_tokens']}")
        print(f"  lmforge, torch ops only         {single['lmforge_torch_tokens_per_s']:8.1f} tokens/s "
              f"({single['torch_step_speedup']:.2f}x; LMFORGE_NATIVE_DECODE=0, the bitwise path)")
        print(f"  floor of torch's kernels: F.linear of every weight matrix alone takes {single['weights_only_ms_per_token']:.2f} ms "
              f"a token; a torch decoder adding nothing to it would reach {single['weights_only_ceiling']:.2f}x")

        proc, base = start_server(ckpt, args.dtype, args.threads)
        try:
            levels = []
            asyncio.run(load(base, 2, 1, 8))  # warm-up
            for clients in [int(c) for c in args.clients.split(",")]:
                levels.append(asyncio.run(load(base, clients, args.requests, args.max_tokens)))
        finally:
            proc.terminate()
            proc.wait(30)

    print(f"\nserver (lmforge serve, streamed chat, {args.max_tokens} tokens per request, {args.requests} requests per client):")
    print(f"  {'clients':>7} {'requests':>8} {'tokens/s':>9} {'x of 1':>7} {'TTFT mean':>10} {'TTFT p90':>9} {'per-request tok/s':>18}")
    base_rate = levels[0]["tokens_per_s"] if levels and levels[0]["clients"] == 1 else None
    for level in levels:
        level["vs_one_client"] = level["tokens_per_s"] / base_rate if base_rate else None
        ratio = f"{level['vs_one_client']:.2f}" if base_rate else "-"
        print(f"  {level['clients']:>7} {level['requests']:>8} {level['tokens_per_s']:>9.1f} {ratio:>7} "
              f"{level['ttft_mean_s'] * 1000:>8.0f}ms {level['ttft_p90_s'] * 1000:>7.0f}ms {level['per_request_decode_tokens_per_s']:>18.1f}")
    eight = next((lv for lv in levels if lv["clients"] == 8), None)
    if eight and base_rate:
        print(f"  8 clients: {eight['vs_one_client']:.2f}x the aggregate tokens/s of 1 (target >= 3x: "
              f"{'met' if eight['vs_one_client'] >= 3 else 'NOT met'})")
    if args.json:
        args.json.write_text(json.dumps({"model": model, "dtype": args.dtype, "threads": args.threads,
                                         "single_stream": single, "server": levels}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
