import os
from pathlib import Path

import pytest

from corelm import _C

DATA = Path(os.environ.get("CORELM_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def data_file(*parts: str) -> Path:
    """A file in ../shared/data, or skip the test with the reason."""
    path = DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"test data not found: {path} (set CORELM_DATA to the shared data folder)")
    return path


@pytest.fixture(params=_C.supported_isas())
def isa(request):
    """Runs the test once per kernel path this CPU supports."""
    previous = _C.isa()
    assert _C.set_isa(request.param) == ""
    yield request.param
    _C.set_isa(previous)
