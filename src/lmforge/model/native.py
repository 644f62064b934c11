"""The native CPU decode step: ``native_decode.c``, compiled on first use and called through ctypes.

On a CPU, decoding one token of a small model is a few hundred small ATen calls, and each costs
5-25 µs once a weight stream has flushed the caches; for a 26.9M model that overhead is as large
as the matrix-vector products. ``native_decode.c`` runs the whole step (embedding to logits) as
plain C loops inside one OpenMP region, with matrix-vector products that stream each weight once.

- **What it covers:** dense fp32 models on the CPU (Llama, Qwen2 biases, Qwen3 QK-norm), batches up
  to ``MAX_BATCH`` rows, the engine's ``KVCache`` and the server's slot cache (``write_pos``), with or
  without a key mask. Anything else (MoE, bf16, CUDA, larger batches, where the batched GEMMs of
  torch win) returns None from ``of``/``step`` and the caller uses the torch step.
- **Numerics:** the same operations in the same order as ``DecodePlan.step``, but not the same
  summation order, so logits agree to fp32 rounding (tests hold them to 1e-5 relative), not bitwise.
  ``LMFORGE_NATIVE_DECODE=0`` turns the kernel off for bitwise reproducibility with ``forward``.
- **Build:** ``$CC`` (else ``cc``) with ``-O3 -march=native -fopenmp`` into
  ``cache_dir()/native/<hash of source, flags and CPU>/``, written atomically, about a second once
  per machine. No compiler, a failed build or a second OpenMP runtime in the process gives one
  warning and the torch step. The library links the ``libgomp`` torch already loaded, so its
  parallel region uses torch's thread pool (a second pool on the same cores would make both sleep
  and wake instead of spinning).

Usage (``DecodePlan`` does this itself)::

    native = NativeDecoder.of(plan)            # None: not applicable here
    logits = native.step(tokens, positions, kv_cache, mask) if native else None   # None: use torch
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import torch

from lmforge.io import cache_dir

SOURCE = Path(__file__).with_name("native_decode.c")
SWITCH = "LMFORGE_NATIVE_DECODE"  # "0": never use the native kernel

_LAYER_FIELDS = ("input_norm", "q", "q_bias", "k", "k_bias", "v", "v_bias", "o", "o_bias", "q_norm", "k_norm", "post_norm",
                 "gate", "gate_bias", "up", "up_bias", "down", "down_bias")


class _Layer(ctypes.Structure):
    _fields_ = [(name, ctypes.c_void_p) for name in _LAYER_FIELDS]


class _Model(ctypes.Structure):
    _fields_ = [*((name, ctypes.c_int64) for name in ("n_layers", "d_model", "n_heads", "n_kv_heads", "head_dim", "ffn_hidden", "vocab_size")),
                ("eps", ctypes.c_double),
                *((name, ctypes.c_void_p) for name in ("embed", "final_norm", "lm_head", "lm_head_bias", "inv_freq")),
                ("layers", ctypes.POINTER(_Layer))]


class _Step(ctypes.Structure):
    _fields_ = [*((name, ctypes.c_int64) for name in ("batch", "length", "slots", "max_len", "mask_stride", "threads")),
                *((name, ctypes.c_void_p) for name in ("tokens", "positions", "write_pos", "mask", "k_cache", "v_cache", "logits"))]


def enabled() -> bool:
    return os.environ.get(SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_unavailable: str | None = None  # why the library cannot be used in this process, once known


def library() -> ctypes.CDLL | None:
    """The compiled kernel (built on first use), or None with one warning where it cannot be had."""
    global _library, _unavailable
    with _lock:
        if _library is None and _unavailable is None:
            try:
                _library = _load(_build())
            except (OSError, RuntimeError, subprocess.SubprocessError) as error:
                _unavailable = str(error)
                warnings.warn(f"lmforge: native decode kernel unavailable, decoding with torch ops instead: {error}", RuntimeWarning, stacklevel=3)
        return _library


def _flags() -> list[str]:
    machine = platform.machine().lower()
    # gnu11, not c11: ISO mode would forbid contracting a * b + c into one fused multiply-add.
    flags = ["-O3", "-fPIC", "-shared", "-fopenmp", "-std=gnu11", "-ffp-contract=fast"]
    if machine in ("x86_64", "amd64"):
        # 512-bit vectors where the CPU has them: the products are memory-bound, but half as many
        # instructions leave more room for the hardware's prefetching.
        flags += ["-march=native", "-mprefer-vector-width=512"]
    elif machine in ("aarch64", "arm64"):
        flags += ["-mcpu=native"]
    return flags


def _cpu_fingerprint() -> str:
    """-march=native code runs only on the CPU it was built for: a home directory shared by
    different machines must not share the library."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "\n".join(sorted({line for line in lines if line.startswith(("model name", "flags", "Features", "CPU part"))}))
    except OSError:
        return platform.processor() or platform.machine()


def _build() -> Path:
    if platform.system() != "Linux":
        raise RuntimeError(f"built only on Linux (this is {platform.system()})")
    compiler = os.environ.get("CC") or "cc"
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C compiler ({compiler!r} not on PATH; install gcc)")
    flags = _flags()
    source = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([source, compiler.encode(), " ".join(flags).encode(), _cpu_fingerprint().encode()])).hexdigest()[:16]
    out = cache_dir() / "native" / key / "liblmforge_decode.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        built = Path(tmp) / out.name
        result = subprocess.run([compiler, *flags, str(SOURCE), "-o", str(built), "-lm"], capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            raise RuntimeError(f"{compiler} failed on {SOURCE}:\n{result.stderr.strip()[-2000:]}")
        os.replace(built, out)  # atomic: a concurrent build or a crash never leaves half a library
    return out


def _load(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    runtimes = _openmp_runtimes()
    if len(runtimes) > 1:
        raise RuntimeError(f"two OpenMP runtimes would share these cores ({', '.join(sorted(runtimes))}); torch's is not libgomp")
    lib.lmf_decode_step.argtypes = [ctypes.POINTER(_Model), ctypes.POINTER(_Step)]
    lib.lmf_decode_step.restype = ctypes.c_int
    return lib


def _openmp_runtimes() -> set[str]:
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return set()
    names = ("libgomp", "libiomp", "libomp.so")
    return {line.split()[-1] for line in maps.splitlines() if any(n in line.rsplit("/", 1)[-1] for n in names)}


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


class NativeDecoder:
    """One model's weights as the C kernel's structs; ``step`` mirrors ``DecodePlan.step``."""

    # Measured on 2 cores (fp32, 26.9M and 4.6M shapes): 2.0-2.4x torch's step at 1 row, 1.6-2.1x at
    # 8, 1.2-1.35x at 32; beyond that torch's batched GEMMs, which reuse each weight tile, take over.
    MAX_BATCH = 32

    def __init__(self, plan, lib: ctypes.CDLL) -> None:
        self._lib = lib
        self.vocab_size, self.n_layers = plan.embed.shape[0], len(plan.layers)
        self.n_kv_heads, self.head_dim = plan.n_kv_heads, plan.head_dim
        layers = []
        tensors = [plan.embed, plan.final_norm, plan.lm_head, plan.lm_head_bias]
        for layer in plan.layers:
            gate, gate_bias, up, up_bias, down, down_bias = layer.swiglu
            values = (layer.input_norm, layer.q, layer.q_bias, layer.k, layer.k_bias, layer.v, layer.v_bias, layer.o, layer.o_bias,
                      layer.q_norm, layer.k_norm, layer.post_norm, gate, gate_bias, up, up_bias, down, down_bias)
            layers.append(_Layer(*map(_ptr, values)))
            tensors += values
        self._layers = (_Layer * len(layers))(*layers)
        ffn = plan.layers[0].swiglu[0].shape[0]
        self._inv_freq = plan.rotary.inv_freq.float().contiguous()
        self._model = _Model(self.n_layers, plan.embed.shape[1], plan.n_heads, plan.n_kv_heads, plan.head_dim, ffn, self.vocab_size, plan.eps,
                             _ptr(plan.embed), _ptr(plan.final_norm), _ptr(plan.lm_head), _ptr(plan.lm_head_bias), _ptr(self._inv_freq),
                             self._layers)
        # The struct holds raw addresses: a Parameter whose storage is swapped (model.to(), .data =)
        # would leave them dangling, so each step checks them first (about 10 µs) and leaves such
        # a model to the torch step, which follows the Parameters.
        self._tensors = [t for t in tensors if t is not None]
        self._addresses = [t.data_ptr() for t in self._tensors]
        self._rotary, self._rotary_freq = plan.rotary, plan.rotary.inv_freq

    @classmethod
    def of(cls, plan) -> NativeDecoder | None:
        """For a ``DecodePlan`` of a dense fp32 CPU model, when the kernel is enabled and builds."""
        if not enabled() or any(layer.swiglu is None for layer in plan.layers):
            return None
        tensors = [t for layer in plan.layers for t in (layer.input_norm, layer.q, layer.k, layer.v, layer.o, layer.post_norm, *layer.swiglu,
                                                         layer.q_bias, layer.k_bias, layer.v_bias, layer.o_bias, layer.q_norm, layer.k_norm)
                   if t is not None]
        tensors += [t for t in (plan.embed, plan.final_norm, plan.lm_head, plan.lm_head_bias) if t is not None]
        if any(t.device.type != "cpu" or t.dtype is not torch.float32 or not t.is_contiguous() for t in tensors):
            return None
        if plan.n_heads % plan.n_kv_heads or plan.rotary.inv_freq.numel() != plan.head_dim // 2:
            return None
        lib = library()
        return cls(plan, lib) if lib is not None else None

    def step(self, tokens: torch.Tensor, positions: torch.Tensor, kv_cache, mask: torch.Tensor | None) -> torch.Tensor | None:
        """Logits [B, V] as ``DecodePlan.step`` returns them (and the cache advanced), or None
        (nothing touched) where this call is not one the kernel covers."""
        if torch.is_grad_enabled() or torch.is_autocast_enabled("cpu"):
            return None  # autograd needs torch ops; under autocast forward rounds to bf16 where this would not
        B = tokens.shape[0]
        k_cache, v_cache = kv_cache.k, kv_cache.v
        if B > self.MAX_BATCH or k_cache.dtype is not torch.float32 or v_cache.dtype is not torch.float32:
            return None
        if not (k_cache.is_contiguous() and v_cache.is_contiguous() and k_cache.device.type == "cpu"):
            return None
        L, slots, KV, max_len, d = k_cache.shape
        if (L, KV, d) != (self.n_layers, self.n_kv_heads, self.head_dim) or v_cache.shape != k_cache.shape or slots < B:
            return None
        length = kv_cache.length
        if length + 1 > max_len:
            raise ValueError(f"KV cache overflow: {length + 1} tokens > max_len {max_len}")
        write_pos = getattr(kv_cache, "write_pos", None)  # the server's slot cache: a column per row
        if write_pos is None and slots != B:
            return None
        if mask is not None:
            if mask.dtype is not torch.bool or mask.shape != (B, 1, 1, length + 1) or mask.stride(-1) != 1:
                return None
            mask_stride = mask.stride(0)
        else:
            mask_stride = 0
        if tokens.shape != (B,) or positions.shape != (B,):
            return None
        if self._rotary.inv_freq is not self._rotary_freq or any(t.data_ptr() != a for t, a in zip(self._tensors, self._addresses)):
            return None  # weights moved (model.to(), .data =): the torch step follows the Parameters
        tokens, positions = tokens.to(torch.int64).contiguous(), positions.to(torch.int64).contiguous()
        if write_pos is not None:
            write_pos = write_pos.to(torch.int64).contiguous()
            if write_pos.shape != (B,):
                return None
            lowest, highest = torch.aminmax(write_pos)
            if int(lowest) < 0 or int(highest) > length:
                return None
        logits = torch.empty((B, self.vocab_size), dtype=torch.float32)
        step = _Step(B, length, slots, max_len, mask_stride, torch.get_num_threads(), tokens.data_ptr(), positions.data_ptr(),
                     _ptr(write_pos), _ptr(mask), k_cache.data_ptr(), v_cache.data_ptr(), logits.data_ptr())
        status = self._lib.lmf_decode_step(ctypes.byref(self._model), ctypes.byref(step))
        if status > 0:
            raise IndexError(f"token id {int(tokens[status - 1])} out of range for vocabulary size {self.vocab_size}")
        if status < 0:
            raise MemoryError("native decode step: out of memory for its scratch buffers") if status == -1 else ValueError(f"native decode step: {B} rows > its limit")
        kv_cache.length = length + 1
        return logits
