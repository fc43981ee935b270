"""Suite-wide checks: nothing streamlab started may outlive a test or a notebook."""

import pytest

import streamlab


@pytest.fixture(autouse=True)
def _nothing_left_running():
    yield
    leaked = streamlab.running_servers()
    streamlab.stop_all()
    assert not leaked, f"servers left running after the test: {leaked}"
