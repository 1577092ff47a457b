"""Shared test fixtures: the real data folder (../shared/data next to the repository)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()

torch.set_num_threads(min(2, torch.get_num_threads()))


def shared_data(sub: str) -> Path:
    """Path of a folder in ../shared/data; the test is skipped (with the reason) when it is absent."""
    path = SHARED_DATA / sub
    if not path.exists():
        pytest.skip(f"real data folder {path} is not present (expected ../shared/data next to the repository)")
    return path


@pytest.fixture
def davis2016() -> Path:
    return shared_data("davis2016")


@pytest.fixture
def jhmdb_sample() -> Path:
    return shared_data("jhmdb-sample")
