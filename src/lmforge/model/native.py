"""The native CPU decode step: ``native_decode.c``, compiled on first use and called through ctypes.

On a CPU, decoding one token of a small model is a few hundred small ATen calls, and each costs
5-25 µs once a weight stream has flushed the caches; for a 26.9M model that overhead is as large
as the matrix-vector products. ``native_decode.c`` runs the whole step (embedding to logits) as
plain C loops inside one OpenMP region, with matrix-vector products that stream each weight once.

- **What it covers:** dense fp32 and bf16 models on the CPU (Llama, Qwen2 biases, Qwen3 QK-norm),
  batches up to ``NativeDecoder.MAX_BATCH`` rows, the engine's ``KVCache`` and the server's slot cache
  (``write_pos``), with or without a key mask. Anything else (MoE, fp16, CUDA, autocast, autograd,
  larger batches, where the batched GEMMs of torch win) returns None from ``of``/``step`` and the
  caller uses the torch step.
- **Numerics:** the same operations in the same order as ``DecodePlan.step``, but not the same
  summation order, so fp32 logits agree to fp32 rounding (tests hold them to 1e-5 relative), not
  bitwise. With bf16 weights, activations stay fp32 where torch rounds them to bf16 after every
  op: closer to an fp32 forward of the same weights than torch's bf16 step (tested), not equal to
  it. ``LMFORGE_NATIVE_DECODE=0`` turns the kernel off for bitwise reproducibility with ``forward``.
- **Build:** ``$CC`` (else ``cc``) with ``-O3 -march=native -fopenmp`` (and ``-DLMF_BF16`` for the
  bf16 build) into ``cache_dir()/native/<hash of source, flags and CPU>/``, written atomically,
  about a second per build, once per machine. No compiler, a failed build or a second OpenMP runtime in the process gives one
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
from lmforge.model.transformer import KVCache

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


DTYPES = {torch.float32: [], torch.bfloat16: ["-DLMF_BF16"]}  # weight dtype -> the build's extra flags

_lock = threading.Lock()
_libraries: dict[torch.dtype, ctypes.CDLL] = {}
_unavailable: dict[torch.dtype, str] = {}  # why a build cannot be had in this process, once known


def library(dtype: torch.dtype = torch.float32) -> ctypes.CDLL | None:
    """The kernel for weights of ``dtype`` (built on first use), or None with one warning where it
    cannot be had (then never tried again in this process; each dtype's build on its own, so an
    older compiler that fails the bf16 build still gives the fp32 one)."""
    with _lock:
        if dtype not in _libraries and dtype not in _unavailable:
            try:
                _libraries[dtype] = _load(_build(DTYPES[dtype]))
            except (OSError, RuntimeError, subprocess.SubprocessError) as error:
                _unavailable[dtype] = str(error)
                name = str(dtype).removeprefix("torch.")
                warnings.warn(f"lmforge: native {name} decode kernel unavailable, decoding with torch ops instead: {error}",
                              RuntimeWarning, stacklevel=3)
        return _libraries.get(dtype)


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


def _build(extra_flags: list[str] | None = None) -> Path:
    if platform.system() != "Linux":
        raise RuntimeError(f"built only on Linux (this is {platform.system()})")
    compiler = os.environ.get("CC") or "cc"
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C compiler ({compiler!r} not on PATH; install gcc)")
    flags = _flags() + list(extra_flags or [])
    source = SOURCE.read_bytes()
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60).stdout.split("\n", 1)[0]
    key = hashlib.sha256(b"\0".join(x.encode() if isinstance(x, str) else x
                                      for x in (source, compiler, version, " ".join(flags), _cpu_fingerprint()))).hexdigest()[:16]
    out = cache_dir() / "native" / key / "liblmforge_decode.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        built = Path(tmp) / out.name
        result = subprocess.run([compiler, *flags, str(SOURCE), "-o", str(built), "-lm"], capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"{compiler} failed on {SOURCE}:\n{result.stderr.strip()[-2000:]}")
        os.replace(built, out)  # atomic: a concurrent build or a crash never leaves half a library
    return out


def _load(path: Path) -> ctypes.CDLL:
    before = _openmp_runtimes()
    lib = ctypes.CDLL(str(path))
    # The library must bind to an OpenMP runtime already in the process (torch's libgomp); one it
    # brought in would start a second thread pool on the same cores. Loaded but never called, the
    # extra runtime starts no threads. (Runtimes other extensions vendor do not count.)
    added = _openmp_runtimes() - before
    if added:
        raise RuntimeError(f"it would bring a second OpenMP runtime ({', '.join(sorted(added))}) next to torch's")
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


_INDEX = (torch.int64, torch.int32)


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _layer_tensors(layer) -> tuple[torch.Tensor | None, ...]:
    """A decode plan layer's tensors in ``_Layer``'s field order (None: no such bias or norm)."""
    gate, gate_bias, up, up_bias, down, down_bias = layer.swiglu
    return (layer.input_norm, layer.q, layer.q_bias, layer.k, layer.k_bias, layer.v, layer.v_bias, layer.o, layer.o_bias,
            layer.q_norm, layer.k_norm, layer.post_norm, gate, gate_bias, up, up_bias, down, down_bias)


def _plan_tensors(plan) -> list[torch.Tensor]:
    """Every tensor the kernel reads from a dense plan."""
    tensors = [t for layer in plan.layers for t in _layer_tensors(layer)]
    return [t for t in (*tensors, plan.embed, plan.final_norm, plan.lm_head, plan.lm_head_bias) if t is not None]


class NativeDecoder:
    """One model's weights as the C kernel's structs; ``step`` mirrors ``DecodePlan.step``."""

    # Rows per step, beyond which torch's batched GEMMs (reusing each weight tile; AMX for bf16)
    # win. Measured on 2 cores, 26.9M and 4.6M shapes: fp32 2.0-2.4x torch's step at 1 row,
    # 1.6-2.1x at 8, 1.2-1.35x at 32; bf16 4.3-6x at 1 row, 1.4-2x at 8, 1.2x at 16, slower at 32.
    MAX_BATCH = {torch.float32: 32, torch.bfloat16: 16}  # at most 64, the C side's MAX_BATCH

    def __init__(self, plan, lib: ctypes.CDLL) -> None:
        self._lib = lib
        self.dtype = plan.embed.dtype
        self.max_batch = self.MAX_BATCH[self.dtype]
        self.vocab_size, self.n_layers = plan.embed.shape[0], len(plan.layers)
        self.n_kv_heads, self.head_dim = plan.n_kv_heads, plan.head_dim
        self._layers = (_Layer * len(plan.layers))(*(_Layer(*map(_ptr, _layer_tensors(layer))) for layer in plan.layers))
        ffn = plan.layers[0].swiglu[0].shape[0]
        # A copy: the rotary module recomputes its inv_freq (the same values) on every model.to().
        self._inv_freq = plan.rotary.inv_freq.detach().float().clone()
        self._model = _Model(self.n_layers, plan.embed.shape[1], plan.n_heads, plan.n_kv_heads, plan.head_dim, ffn, self.vocab_size, plan.eps,
                             _ptr(plan.embed), _ptr(plan.final_norm), _ptr(plan.lm_head), _ptr(plan.lm_head_bias), _ptr(self._inv_freq),
                             self._layers)
        # The struct holds raw addresses: a Parameter whose storage is swapped (model.to(), .data =)
        # would leave them dangling, so each step checks them first (about 10 µs) and leaves such
        # a model to the torch step, which follows the Parameters.
        self._tensors = _plan_tensors(plan)
        self._addresses = [t.data_ptr() for t in self._tensors]

    @classmethod
    def of(cls, plan) -> NativeDecoder | None:
        """For a ``DecodePlan`` of a dense fp32 or bf16 CPU model, when the kernel is enabled and builds."""
        if not enabled() or any(layer.swiglu is None for layer in plan.layers):
            return None
        if len({layer.swiglu[0].shape for layer in plan.layers}) != 1:
            return None  # the kernel takes one feed-forward width for all layers
        dtype = plan.embed.dtype
        if dtype not in DTYPES or any(t.device.type != "cpu" or t.dtype is not dtype or not t.is_contiguous() for t in _plan_tensors(plan)):
            return None
        if plan.n_heads % plan.n_kv_heads or plan.rotary.inv_freq.numel() != plan.head_dim // 2:
            return None
        lib = library(dtype)
        return cls(plan, lib) if lib is not None else None

    def step(self, tokens: torch.Tensor, positions: torch.Tensor, kv_cache, mask: torch.Tensor | None) -> torch.Tensor | None:
        """Logits [B, V] as ``DecodePlan.step`` returns them (and the cache advanced), or None
        (nothing touched) where this call is not one the kernel covers."""
        if torch.is_grad_enabled() or torch.is_autocast_enabled("cpu"):
            return None  # autograd needs torch ops; under autocast forward rounds to bf16 where this would not
        # Only caches whose update() is exactly the write the kernel does itself: the engine's,
        # and classes that say so (the server's slot cache); a subclass may round or wrap.
        if type(kv_cache) is not KVCache and not type(kv_cache).__dict__.get("native_decode_layout", False):
            return None
        B = tokens.shape[0]
        k_cache, v_cache = kv_cache.k, kv_cache.v
        if B > self.max_batch or k_cache.dtype is not self.dtype or v_cache.dtype is not self.dtype:
            return None
        if not (k_cache.is_contiguous() and v_cache.is_contiguous() and k_cache.device.type == v_cache.device.type == "cpu"):
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
            if mask.dtype is not torch.bool or mask.shape != (B, 1, 1, length + 1) or mask.stride(-1) != 1 or mask.device.type != "cpu":
                return None
            mask_stride = mask.stride(0)
        else:
            mask_stride = 0
        if tokens.shape != (B,) or positions.shape != (B,) or tokens.dtype not in _INDEX or positions.dtype not in _INDEX:
            return None  # a float position is the torch step's to interpret, not ours to truncate
        if tokens.device.type != "cpu" or positions.device.type != "cpu":
            return None
        if any(t.data_ptr() != a or not t.is_contiguous() for t, a in zip(self._tensors, self._addresses)):
            return None  # weights moved or re-laid (model.to(), .data =): the torch step follows the Parameters
        tokens, positions = tokens.to(torch.int64).contiguous(), positions.to(torch.int64).contiguous()
        if write_pos is not None:
            if write_pos.shape != (B,) or write_pos.dtype not in _INDEX or write_pos.device.type != "cpu":
                return None
            write_pos = write_pos.to(torch.int64).contiguous()
            lowest, highest = torch.aminmax(write_pos)
            if int(lowest) < 0 or int(highest) > length:
                return None
        logits = torch.empty((B, self.vocab_size), dtype=torch.float32)
        step = _Step(B, length, slots, max_len, mask_stride, torch.get_num_threads(), tokens.data_ptr(), positions.data_ptr(),
                     _ptr(write_pos), _ptr(mask), k_cache.data_ptr(), v_cache.data_ptr(), logits.data_ptr())
        status = self._lib.lmf_decode_step(ctypes.byref(self._model), ctypes.byref(step))
        if status > 0:
            raise IndexError(f"token id {int(tokens[status - 1])} out of range for vocabulary size {self.vocab_size}")
        if status == -1:
            raise MemoryError("native decode step: out of memory for its scratch buffers")
        if status < 0:
            raise ValueError(f"native decode step: {B} rows, more than native_decode.c's MAX_BATCH")
        kv_cache.length = length + 1
        return logits if self.dtype is torch.float32 else logits.to(self.dtype)  # the torch step's dtype
