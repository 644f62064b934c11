"""Shared fixtures: seeded RNGs, few threads, and the optional real-data samples in ../shared/data."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

SHARED_DATA = Path(os.environ.get("LMFORGE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(autouse=True)
def _seed_everything():
    import numpy as np
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture
def one_thread():
    """torch on one thread for the test: tiny models run fastest so, and the CI machine's 2 cores
    are shared. Directories of tiny-model tests make it autouse in their conftest."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def shared_data() -> Path:
    """Real data samples (../shared/data); tests that use them skip where they are absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data samples not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def show(capsys):
    """``print`` that reaches the terminal even under pytest's output capture: for the figures a
    test exists to report (precision and recall of planted duplicates and leaks)."""

    def _show(*args, **kwargs) -> None:
        with capsys.disabled():
            print(*args, **kwargs)

    return _show
