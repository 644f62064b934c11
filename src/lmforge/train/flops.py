"""Training FLOPs per token and the device's peak, for a model-FLOPs-utilization (MFU) estimate.

``flops_per_token`` follows PaLM's accounting (appendix B): ``6·N + 12·L·H·Q·T`` where N counts
the weights that take part in a matmul for each token (all of them except the embedding
lookup, but including the output projection even when it is tied; for MoE only the routed
top-k experts, the shared expert and the router), L layers, H heads of size Q, context T. The
attention term counts the full T×T score matrix, as PaLM does, although causal kernels skip
half of it; MFU figures are therefore comparable with published ones.

``peak_flops(device, dtype)`` is the dense peak of one device: a table for common GPUs, and on
CPU a short measured matmul (under a second) cached in ``~/.cache/lmforge/peak_flops.json``, keyed
by CPU, thread count, dtype and torch version. ``LMFORGE_PEAK_FLOPS`` overrides both.

Usage::

    fpt = flops_per_token(model.config, seq_len=512)
    mfu = tokens_per_second * fpt / (peak_flops(torch.device("cpu"), torch.bfloat16) * world_size)
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

from lmforge.io import cache_dir, write_text_atomic

# Dense bf16/fp16 tensor-core peaks (no sparsity), FLOP/s, by a substring of the device name.
_GPU_PEAKS = [
    ("H200", 989e12),
    ("H100", 989e12),
    ("H800", 989e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10", 125e12),
    ("4090", 165e12),
    ("3090", 71e12),
    ("V100", 125e12),
    ("T4", 65e12),
]


def matmul_params(cfg) -> int:
    """Weights multiplied per token (see the module docstring) for a ``ModelConfig``."""
    d, L = cfg.d_model, cfg.n_layers
    q_out, kv_out = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    attention = d * q_out + 2 * d * kv_out + q_out * d
    if cfg.is_moe:
        expert = 3 * d * cfg.moe_ffn_hidden
        ffn = cfg.num_experts_per_tok * expert + d * cfg.num_experts  # active experts + router
        if cfg.num_shared_experts:
            ffn += 3 * d * cfg.num_shared_experts * cfg.moe_ffn_hidden + d  # shared expert + its gate
    else:
        ffn = 3 * d * cfg.ffn_hidden
    return L * (attention + ffn) + d * cfg.vocab_size  # + the output projection


def flops_per_token(cfg, seq_len: int) -> float:
    """Forward + backward FLOPs per trained token (PaLM's 6N + 12·L·H·Q·T)."""
    return 6.0 * matmul_params(cfg) + 12.0 * cfg.n_layers * cfg.n_heads * cfg.head_dim * seq_len


def _cache_file() -> Path:
    return cache_dir() / "peak_flops.json"


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure_matmul_flops(device: torch.device, dtype: torch.dtype, seconds: float = 0.3, size: int = 512) -> float:
    """Best FLOP/s of one square ``size`` matmul (``F.linear``) on ``device``, over about ``seconds``.

    One matmul per timing keeps the cost bounded where a dtype is emulated (bf16 on CPUs
    without AVX512-BF16/AMX runs near 1 GFLOP/s).
    """
    # A private generator: measuring must not advance the global RNG that training reproduces.
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, generator=gen).to(dtype)
    b = torch.randn(size, size, device=device, generator=gen).to(dtype)
    # F.linear, not matmul: it is what the model's layers call, and on CPU it reaches oneDNN's
    # bf16 kernels where a plain bf16 matmul takes a path several times slower.
    linear = torch.nn.functional.linear
    linear(a, b)  # warm up kernels and thread pools
    best, deadline = 0.0, time.perf_counter() + seconds
    while True:
        start = time.perf_counter()
        linear(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        end = time.perf_counter()
        best = max(best, 2 * size**3 / (end - start))
        if end >= deadline:
            return best


def peak_flops(device: torch.device, dtype: torch.dtype) -> float:
    """Peak dense matmul FLOP/s of one device in ``dtype`` (see the module docstring)."""
    override = os.environ.get("LMFORGE_PEAK_FLOPS")
    if override:
        return float(override)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peak in _GPU_PEAKS:
            if key in name:
                return peak if dtype != torch.float32 else peak / 2  # TF32 runs at about half
    key = f"{device.type}|{cpu_name() if device.type == 'cpu' else device}|{torch.get_num_threads()}|{dtype}|{torch.__version__}"
    path = _cache_file()
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    if key in cache:
        return float(cache[key])
    value = measure_matmul_flops(device, dtype, size=4096 if device.type == "cuda" else 512)
    cache[key] = value
    try:  # a read-only home only costs a re-measurement next time
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(cache, indent=1))
    except OSError:
        pass
    return value
