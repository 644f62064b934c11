"""Training throughput of lmforge's real training step on the MiniMind2-Small shape (26M), against this machine's matmul peak.

What is timed is ``Trainer.train_step`` itself — the loop every stage runs: the recipe's model
(``recipes/minimind2-small.yaml``), the ``LanguageModeling`` objective, autocast for
``train.dtype``, backward, gradient clipping, AdamW with the schedule's learning rate — fed by a
synthetic in-memory iterator of random ``{"input_ids", "labels"}`` batches of ``[batch, seq_len]``
(no disk, no loader cost). It runs for ``train.dtype=float32`` and ``bfloat16`` (and, with
``--compile``, ``train.compile=true`` too).

The peak is ``lmforge.train.flops.measure_matmul_flops`` for the same dtype — the measurement
the trainer's own MFU uses on CPU — taken in the same invocation and interleaved with the step
timings (one step of every variant, then one peak measurement per dtype, round after round),
because machines are noisy. Per variant it reports tokens/s, the median step time, the achieved
FLOP/s counted as 6 · params · tokens (the issue's definition) and as ``flops_per_token``
(PaLM's 6N + attention, what ``metrics.jsonl`` uses), the best measured peak, MFU = achieved /
peak both ways, and which dtype is faster.

On CPUs without native bf16 (no AVX512-BF16/AMX, e.g. AVX2-only EPYC) bf16 is emulated and
runs several times slower than fp32; the numbers say so as they are.

    python benchmarks/train_throughput.py                         # the full size: slow on a small CPU
    python benchmarks/train_throughput.py --steps 2 --batch-size 1 --seq-len 64     # a smoke run
    python benchmarks/train_throughput.py --threads 2 --json out.json --compile
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class RandomBatches:
    """An endless in-memory iterator of random token batches, with the trainer's iterator interface."""

    def __init__(self, vocab_size: int, batch_size: int, seq_len: int, seed: int = 0) -> None:
        self.vocab_size, self.batch_size, self.seq_len = vocab_size, batch_size, seq_len
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        tokens = torch.randint(0, self.vocab_size, (self.batch_size, self.seq_len + 1), generator=self.generator)
        return {"input_ids": tokens[:, :-1].contiguous(), "labels": tokens[:, 1:].contiguous()}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def build_trainer(recipe_path: Path, dtype: str, compiled: bool, args, run_dir: Path):
    """A ``Trainer`` exactly as a stage builds one, on random data."""
    from lmforge.model import Transformer
    from lmforge.recipe import load_recipe
    from lmforge.train.distributed import DistEnv, pick_device
    from lmforge.train.flops import flops_per_token
    from lmforge.train.objectives import LanguageModeling
    from lmforge.train.trainer import Trainer

    recipe = load_recipe(recipe_path, [
        f"train.dtype={dtype}", f"train.compile={str(compiled).lower()}", f"train.seq_len={args.seq_len}",
        f"train.batch_size={args.batch_size}", "train.grad_accum=1", f"train.device={args.device}",
        f"train.max_steps={args.warmup + args.steps + 1}", "train.warmup_steps=0",
        "train.progress=false", "train.tensorboard=false",
    ])
    cfg = recipe.train
    torch.manual_seed(0)
    model = Transformer(recipe.model)
    device = pick_device(cfg.device)
    trainer = Trainer(
        model, LanguageModeling(z_loss=cfg.z_loss), RandomBatches(recipe.model.vocab_size, cfg.batch_size, cfg.seq_len),
        cfg, run_dir=run_dir / f"{dtype}-{'compiled' if compiled else 'eager'}", env=DistEnv(device=device),
        flops_per_token=0.0,  # the trainer's cached peak is not used here; this script measures its own
    )
    return trainer, model.num_parameters(), flops_per_token(recipe.model, cfg.seq_len)


def timed_step(trainer) -> float:
    if trainer.device.type == "cuda":
        torch.cuda.synchronize(trainer.device)
    start = time.perf_counter()
    trainer.train_step()  # ends in .tolist() / float(): the step has finished on the device
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=REPO / "recipes" / "minimind2-small.yaml")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant (the median is reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first (compilation, allocator)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--device", choices=["cpu", "cuda", "auto"], default="cpu")
    parser.add_argument("--compile", action="store_true", help="also time train.compile=true (torch.compile)")
    parser.add_argument("--peak-seconds", type=float, default=0.3, help="seconds per matmul-peak measurement")
    parser.add_argument("--dtypes", default="float32,bfloat16",
                        help="comma-separated train.dtype values to time (bf16 is slow where the CPU emulates it)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    dtypes = {name: DTYPES[name] for name in args.dtypes.split(",") if name}
    if not dtypes or set(dtypes) - set(DTYPES):
        parser.error(f"--dtypes takes a comma-separated subset of {', '.join(DTYPES)}")

    from lmforge.train.distributed import cpu_has_fast_bf16
    from lmforge.train.flops import _cpu_name, measure_matmul_flops

    variants = [(d, c) for d in dtypes for c in ([False, True] if args.compile else [False])]
    with tempfile.TemporaryDirectory(prefix="lmforge-bench-") as tmp:
        trainers, info = {}, {}
        for dtype, compiled in variants:
            trainer, params, fpt = build_trainer(args.recipe, dtype, compiled, args, Path(tmp))
            trainers[dtype, compiled], info[dtype, compiled] = trainer, (params, fpt)
            for _ in range(args.warmup):
                trainer.train_step()
        device = next(iter(trainers.values())).device
        peak_size = 4096 if device.type == "cuda" else 512  # what peak_flops measures with
        times: dict[tuple, list[float]] = {v: [] for v in variants}
        peaks: dict[str, list[float]] = {d: [] for d in dtypes}
        # Interleaved: a noisy neighbour slows every variant and the peak alike, not one of them.
        for _ in range(args.steps):
            for variant in variants:
                times[variant].append(timed_step(trainers[variant]))
            for name, dtype in dtypes.items():
                peaks[name].append(measure_matmul_flops(device, dtype, seconds=args.peak_seconds, size=peak_size))

    tokens = args.batch_size * args.seq_len
    rows = []
    for dtype, compiled in variants:
        params, fpt = info[dtype, compiled]
        seconds = statistics.median(times[dtype, compiled])
        peak = max(peaks[dtype])
        achieved_6n = 6 * params * tokens / seconds
        achieved_fpt = fpt * tokens / seconds
        rows.append({
            "dtype": dtype, "compiled": compiled, "params": params, "tokens_per_step": tokens,
            "step_seconds": seconds, "step_seconds_all": times[dtype, compiled], "tokens_per_s": tokens / seconds,
            "flops_per_token_6N": 6 * params, "flops_per_token": fpt,
            "achieved_flops_6N": achieved_6n, "achieved_flops_with_attention": achieved_fpt,
            "peak_flops": peak, "peak_flops_all": peaks[dtype],
            "mfu_6N": achieved_6n / peak, "mfu_with_attention": achieved_fpt / peak,
        })

    by = {(r["dtype"], r["compiled"]): r for r in rows}
    verdict = ""
    if ("float32", False) in by and ("bfloat16", False) in by:
        ratio = by["bfloat16", False]["tokens_per_s"] / by["float32", False]["tokens_per_s"]
        faster = "bfloat16" if ratio > 1 else "float32"
        verdict = (f"{faster} is faster (eager): bf16 runs at {ratio:.2f}× the fp32 tokens/s"
                   + ("; this CPU has no native bf16 (AVX512-BF16/AMX), so bf16 matmuls are emulated"
                      if device.type == "cpu" and not cpu_has_fast_bf16() else ""))

    where = _cpu_name() if device.type == "cpu" else torch.cuda.get_device_name(device)
    print(f"\nlmforge Trainer.train_step: {args.recipe.name}, {rows[0]['params']:,} params, batch {args.batch_size} × seq_len "
          f"{args.seq_len} = {tokens:,} tokens/step, {args.steps} timed steps (median), on {where} "
          f"({torch.get_num_threads()} threads), torch {torch.__version__}")
    print(f"{'dtype':<10}{'compiled':>9}{'tokens/s':>11}{'step s':>9}{'6N GF/s':>10}{'+attn GF/s':>12}"
          f"{'peak GF/s':>11}{'MFU 6N':>8}{'MFU +attn':>10}")
    for r in rows:
        print(f"{r['dtype']:<10}{str(r['compiled']):>9}{r['tokens_per_s']:>11,.1f}{r['step_seconds']:>9.3f}"
              f"{r['achieved_flops_6N'] / 1e9:>10.2f}{r['achieved_flops_with_attention'] / 1e9:>12.2f}"
              f"{r['peak_flops'] / 1e9:>11.2f}{r['mfu_6N']:>8.1%}{r['mfu_with_attention']:>10.1%}")
    print(f"achieved = FLOPs per token × tokens/s, with FLOPs per token = 6 · params (issue) or flops_per_token "
          f"(6N + attention, as metrics.jsonl); peak = best measure_matmul_flops ({peak_size}² F.linear) of the same "
          f"dtype over {args.steps} rounds interleaved with the steps; MFU = achieved ÷ peak")
    if verdict:
        print(verdict)
    if args.json:
        args.json.write_text(json.dumps({
            "recipe": str(args.recipe), "batch_size": args.batch_size, "seq_len": args.seq_len, "steps": args.steps,
            "threads": torch.get_num_threads(), "device": where, "platform": platform.platform(),
            "torch": torch.__version__, "rows": rows, "verdict": verdict,
        }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
