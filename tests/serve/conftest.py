"""Serving tests: the tiny checkpoints, and a real uvicorn server on 127.0.0.1 in a thread."""

from __future__ import annotations

import pytest

from serve_helpers import running_server
from tiny_checkpoints import dense_ckpt, moe_ckpt, tokenizer_dir  # noqa: F401  (fixtures)


@pytest.fixture(scope="module")
def engine(dense_ckpt):
    from lmforge.infer import Engine

    return Engine.from_checkpoint(dense_ckpt, device="cpu", dtype="float32", overflow="error")


@pytest.fixture(scope="module")
def server(engine):
    """Base URL of a server for the dense checkpoint, model name 'tiny'."""
    from lmforge.serve.app import create_app

    with running_server(create_app(engine, "tiny", max_batch_size=8)) as url:
        yield url
