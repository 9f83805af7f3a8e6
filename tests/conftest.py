"""Shared fixtures: the offline data beside the repository and small deterministic models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
# One intra-op thread: the test models are tiny, and on a busy 2-core machine OpenMP threads that
# spin against other processes make small ops orders of magnitude slower. Deterministic too.
torch.set_num_threads(1)

SHARED_DATA = Path(os.environ.get("BITSWITCH_TEST_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"offline data not found at {SHARED_DATA} (set BITSWITCH_TEST_DATA)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """Run a test on one intra-op thread: tiny models on shared cores are far faster that way."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
