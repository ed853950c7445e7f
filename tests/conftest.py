import pytest

from corelm import _C


@pytest.fixture(params=_C.supported_isas())
def isa(request):
    """Runs the test once per kernel path this CPU supports."""
    previous = _C.isa()
    assert _C.set_isa(request.param) == ""
    yield request.param
    _C.set_isa(previous)
