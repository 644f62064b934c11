"""Learning-rate schedules: warmup, then cosine decay, warmup-stable-decay (WSD), or constant.

A schedule is a pure function of the optimizer step, so resuming needs no scheduler state
beyond the step itself and a resumed run gets exactly the learning rates it would have had.
Steps are counted from 1: ``lr(n)`` is the rate used by the n-th optimizer step, so warmup
reaches the peak on step ``warmup_steps`` and cosine/WSD reach ``peak · min_lr_ratio`` on the
last step ``max_steps``.

* ``cosine``: ``min + (peak - min) · ½(1 + cos(π·p))`` with ``p`` the post-warmup progress.
* ``wsd``: constant at the peak, then over the last ``decay_fraction · max_steps`` steps down to
  the minimum with shape ``linear`` (1-p), ``cosine`` (½(1+cos πp)) or ``sqrt`` (1-√p, YuLan-Mini's
  annealing). A stable-phase checkpoint can start several different annealing runs.
* ``constant``: warmup then the peak forever (min_lr_ratio unused).

A warmup longer than the run allows is shortened to fit (see ``LRSchedule.warmup``), so a quick
``--set train.max_steps=20`` of a long recipe still runs.

Usage::

    sched = LRSchedule.from_config(train_cfg)      # or LRSchedule("wsd", 1e-3, 1000, warmup_steps=50)
    for param_group in optimizer.param_groups:
        param_group["lr"] = sched(step)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SCHEDULES = ("cosine", "wsd", "constant")
DECAY_SHAPES = ("linear", "cosine", "sqrt")


def decay_factor(shape: str, progress: float) -> float:
    """1 at progress 0, 0 at progress 1, in the given shape."""
    progress = min(max(progress, 0.0), 1.0)
    if shape == "linear":
        return 1.0 - progress
    if shape == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if shape == "sqrt":
        return 1.0 - math.sqrt(progress)
    raise ValueError(f"unknown decay shape {shape!r}; choose one of {', '.join(DECAY_SHAPES)}")


@dataclass(frozen=True)
class LRSchedule:
    kind: str
    peak_lr: float
    max_steps: int
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    decay_fraction: float = 0.2  # WSD only
    decay_shape: str = "sqrt"  # WSD only

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.kind!r}; choose one of {', '.join(SCHEDULES)}")
        if self.decay_shape not in DECAY_SHAPES:
            raise ValueError(f"unknown decay shape {self.decay_shape!r}; choose one of {', '.join(DECAY_SHAPES)}")
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.kind == "wsd":
            if not 0.0 <= self.decay_fraction <= 1.0:
                raise ValueError(f"decay_fraction must be in [0, 1], got {self.decay_fraction}")

    @classmethod
    def from_config(cls, cfg) -> "LRSchedule":
        """From a ``TrainConfig`` (or anything with the same field names)."""
        return cls(
            kind=cfg.schedule,
            peak_lr=cfg.lr,
            max_steps=cfg.max_steps,
            warmup_steps=cfg.warmup_steps,
            min_lr_ratio=cfg.min_lr_ratio,
            decay_fraction=cfg.decay_fraction,
            decay_shape=cfg.decay_shape,
        )

    @property
    def min_lr(self) -> float:
        return self.peak_lr * self.min_lr_ratio

    @property
    def warmup(self) -> int:
        """Warmup steps actually used: a warmup longer than the run (a quick ``--set
        train.max_steps=20`` of a long recipe) is shortened to leave the decay its steps."""
        room = self.max_steps - (self.decay_steps if self.kind == "wsd" else 0)
        return min(self.warmup_steps, max(room, 0))

    @property
    def decay_steps(self) -> int:
        """WSD: the number of steps in the final decay."""
        return int(round(self.decay_fraction * self.max_steps))

    def __call__(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (1-based; clamped to 1..max_steps)."""
        n = min(max(step, 1), self.max_steps)
        warmup = self.warmup
        if n <= warmup:
            return self.peak_lr * n / warmup
        if self.kind == "constant":
            return self.peak_lr
        if self.kind == "cosine":
            progress = (n - warmup) / (self.max_steps - warmup)
            return self.min_lr + (self.peak_lr - self.min_lr) * decay_factor("cosine", progress)
        # WSD: stable until the decay window opens; the window's last step reaches min_lr.
        decay_start = self.max_steps - self.decay_steps
        if n <= decay_start or self.decay_steps == 0:
            return self.peak_lr
        progress = (n - decay_start) / self.decay_steps
        return self.min_lr + (self.peak_lr - self.min_lr) * decay_factor(self.decay_shape, progress)

    def state_dict(self) -> dict:
        """For the checkpoint's record only: the schedule is a function of the step."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}
