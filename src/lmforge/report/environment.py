"""The machine a report is built on, and the shape of the model a run trained.

Usage::

    from lmforge.report.environment import machine_environment, describe_checkpoint
    machine_environment()        # {"date", "python", "torch", "lmforge", "cpu", "gpu", ...}
    describe_checkpoint("runs/demo/pretrain-.../checkpoints/step_00000360")  # shape + parameters
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

from lmforge import __version__
from lmforge.train.flops import cpu_name


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine_environment() -> dict:
    """Versions and hardware of this machine, now (the report's, not necessarily the run's)."""
    import torch

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "lmforge": __version__,
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": ", ".join(gpus) if gpus else ("Apple MPS" if mps else None),
        "cuda": torch.version.cuda if gpus else None,
    }


def describe_checkpoint(checkpoint: str | Path) -> dict | None:
    """Architecture, shape and parameter counts from a checkpoint's ``config.json`` (None if it
    has none or lmforge cannot read it)."""
    from lmforge.model.cli import describe
    from lmforge.model.hf import from_hf_config

    config = Path(checkpoint) / "config.json"
    if not config.is_file():
        return None
    try:
        cfg = from_hf_config(json.loads(config.read_text(encoding="utf-8")), str(config))
    except ValueError:
        return None
    info = describe(cfg, cfg.max_seq_len)
    return {"hf_architecture": info["hf_architecture"], "shape": info["shape"], "parameters": info["parameters"]}
