"""Training: the one trainer loop, its objectives, schedules, checkpoints and metrics.

    from lmforge.train import train, Trainer, LanguageModeling, latest_checkpoint
    result = train(recipe, resume=True)          # the pretraining stage, in-process

Names are imported lazily: ``lmforge.recipe`` imports ``lmforge.train.config`` and must not
pull in torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "TrainConfig": "lmforge.train.config",
    "Trainer": "lmforge.train.trainer",
    "TrainResult": "lmforge.train.trainer",
    "TrainingDiverged": "lmforge.train.trainer",
    "train": "lmforge.train.pretrain",
    "LanguageModeling": "lmforge.train.objectives",
    "Objective": "lmforge.train.objectives",
    "LRSchedule": "lmforge.train.schedules",
    "build_optimizer": "lmforge.train.optim",
    "param_groups": "lmforge.train.optim",
    "latest_checkpoint": "lmforge.train.checkpoint",
    "list_checkpoints": "lmforge.train.checkpoint",
    "resolve_checkpoint": "lmforge.train.checkpoint",
    "save_checkpoint": "lmforge.train.checkpoint",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lmforge.train' has no attribute {name!r}")
