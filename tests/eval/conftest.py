"""Fixtures for the evaluation tests: one thread for torch, and a tiny checkpoint (helpers in
``eval_helpers.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from eval_helpers import make_checkpoint


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


@pytest.fixture(scope="session")
def eval_checkpoint(tmp_path_factory) -> Path:
    """A tiny random checkpoint with larger weights (init_std 0.2), so its choices are decided by
    clear margins rather than rounding noise."""
    return make_checkpoint(tmp_path_factory.mktemp("eval-ckpt"), init_std=0.2)
