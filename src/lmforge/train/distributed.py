"""Process-group setup for DDP, read from the environment ``torchrun`` sets.

The same command runs on one process or under ``torchrun --nproc_per_node N``: when
``WORLD_SIZE`` > 1 the process group is initialized from ``RANK`` / ``WORLD_SIZE`` /
``LOCAL_RANK`` (nccl on CUDA, gloo on CPU), each rank gets ``cuda:LOCAL_RANK`` when on GPU, and
only rank 0 (``is_main``) writes logs and checkpoints.

Usage::

    env = init_distributed("auto")        # DistEnv(rank=0, world_size=1, device=cpu, ...)
    total = env.all_reduce_sum([loss_sum, tokens])
    env.close()
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist


def pick_device(preference: str, local_rank: int = 0) -> torch.device:
    """``auto`` → cuda (this rank's GPU), else mps, else cpu; explicit choices are checked."""
    if preference == "auto":
        if torch.cuda.is_available():
            preference = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            preference = "mps"
        else:
            preference = "cpu"
    if preference == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("train.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if preference == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError("train.device is 'mps' but MPS is not available; use 'auto' or 'cpu'")
    return torch.device(preference)


def cpu_has_fast_bf16() -> bool:
    """True where the CPU multiplies bf16 natively (x86 AVX512-BF16 / AMX, Arm BF16)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = set()
            for line in f:
                if line.startswith(("flags", "Features")):
                    flags.update(line.split(":", 1)[1].split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The autocast dtype for ``train.dtype`` on ``device`` (``auto`` picks the fast one)."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
        if device.type == "cpu" and cpu_has_fast_bf16():
            return torch.bfloat16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialized_here: bool = False  # we created the process group, so we destroy it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Sum Python floats over ranks (one collective); identity on a single process."""
        if not self.is_distributed:
            return [float(v) for v in values]
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def barrier(self) -> None:
        if self.is_distributed:
            dist.barrier()

    def broadcast_object(self, obj):
        """Rank 0's ``obj`` on every rank (e.g. the decision to stop)."""
        if not self.is_distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self.initialized_here and dist.is_initialized():
            dist.destroy_process_group()
            self.initialized_here = False


def init_distributed(device_preference: str = "auto") -> DistEnv:
    """Read torchrun's environment and join the process group when there is more than one rank."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_preference, local_rank)
    if world_size <= 1:
        return DistEnv(device=device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    created = False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {"device_id": device} if backend == "nccl" else {}
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size, **kwargs)
        created = True
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank, device=device, initialized_here=created)


@contextmanager
def training_session(device_preference: str = "auto", num_threads: int = 0) -> Iterator[DistEnv]:
    """A training stage's surroundings: the process group (joined under torchrun) and the CPU
    thread count (``num_threads`` > 0 pins it), both put back as they were afterwards."""
    env = init_distributed(device_preference)
    previous_threads = torch.get_num_threads()
    if num_threads > 0:
        torch.set_num_threads(num_threads)
    try:
        yield env
    finally:
        torch.set_num_threads(previous_threads)
        env.close()


def wrap_ddp(model: torch.nn.Module, env: DistEnv, find_unused_parameters: bool = False) -> torch.nn.Module:
    """DistributedDataParallel around ``model`` (already on ``env.device``); identity on one rank.

    MoE models need ``find_unused_parameters``: an expert that no token of a micro-batch was
    routed to gets no gradient, which DDP otherwise reports as an error.
    """
    if not env.is_distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [env.device.index] if env.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=find_unused_parameters)
