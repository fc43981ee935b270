"""Shared fixtures of the unit tests (the suite-wide leak check is in the root conftest.py)."""

import psutil
import pytest

from streamlab._servers import running_servers
from streamlab._timescale import time_scale


@pytest.fixture
def clean_slate():
    """Real time (scale 1.0) for the test; afterwards no server and no child process may be left."""
    with time_scale(1.0):
        yield
    assert running_servers() == []
    assert psutil.Process().children(recursive=True) == []
