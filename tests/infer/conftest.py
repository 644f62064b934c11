"""The inference tests run on the tiny checkpoints of ``tests/tiny_checkpoints.py``."""

from tiny_checkpoints import dense_ckpt, moe_ckpt, tokenizer_dir  # noqa: F401  (fixtures)
