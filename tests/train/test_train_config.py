"""TrainConfig validation: impossible settings fail at load time, naming the key, not deep in the loop."""

import pytest

from lmforge.config import ConfigError
from lmforge.recipe import load_recipe
from lmforge.train.config import TrainConfig


@pytest.mark.parametrize("override, message", [
    ("train.log_every=0", "log_every must be >= 1"),
    ("train.seq_len=0", "seq_len must be >= 1"),
    ("train.batch_size=0", "batch_size must be >= 1"),
    ("train.grad_accum=0", "grad_accum must be >= 1"),
    ("train.max_steps=0", "max_steps must be >= 1"),
    ("train.eval_every=-1", "eval_every must be >= 0"),
    ("train.ckpt_every=-5", "ckpt_every must be >= 0"),
    ("train.keep_last=-1", "keep_last must be >= 0"),
    ("train.eval_batches=-1", "eval_batches must be >= 0"),
    ("train.warmup_steps=-1", "warmup_steps must be >= 0"),
    ("train.lr=0", "lr must be > 0"),
    ("train.lr=-1e-3", "lr must be > 0"),
    ("train.min_lr_ratio=1.5", r"min_lr_ratio must be in \[0, 1\]"),
    ("train.decay_fraction=-0.1", r"decay_fraction must be in \[0, 1\]"),
    ("train.grad_clip=-1", "grad_clip must be >= 0"),
])
def test_bad_values_are_config_errors_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_recipe(None, [override])
    assert override in str(info.value)  # the loader points at the --set that did it


def test_boundary_values_are_accepted():
    TrainConfig(log_every=1, eval_every=0, ckpt_every=0, keep_last=0, eval_batches=0, warmup_steps=0,
                min_lr_ratio=0.0, decay_fraction=1.0, grad_clip=0.0, lr=1e-9)
    TrainConfig(min_lr_ratio=1.0, decay_fraction=0.0)
    with pytest.raises(ValueError, match="lr must be > 0"):
        TrainConfig(lr=float("nan"))
