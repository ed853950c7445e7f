"""Shared test helpers: where the real data files are."""

import os
from pathlib import Path

import pytest

DATA = Path(os.environ.get("CORELM_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def data_file(*parts: str) -> Path:
    """A file in ../shared/data, or skip the test with the reason."""
    path = DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"test data not found: {path} (set CORELM_DATA to the shared data folder)")
    return path
