"""Suite-wide checks: nothing streamlab started may outlive the test (or fixture scope) that started it."""

import psutil
import pytest

import streamlab


@pytest.fixture(autouse=True)
def _nothing_left_running():
    before = {id(server) for server in streamlab.running_servers()}  # module-scoped fixtures may own some
    yield
    leaked = [server for server in streamlab.running_servers() if id(server) not in before]
    for server in leaked:
        server.stop()
    assert not leaked, f"servers left running after the test: {leaked}"


def pytest_sessionfinish(session, exitstatus):
    """At the end of the run: no streamlab server and no child process (nginx, gunicorn, uvicorn) remains."""
    leftovers = [repr(server) for server in streamlab.running_servers()]
    streamlab.stop_all()
    children = [p for p in psutil.Process().children(recursive=True) if p.is_running()
                and p.status() != psutil.STATUS_ZOMBIE]
    leftovers += [f"child process {p.pid}: {' '.join(p.cmdline()[:3])}" for p in children]
    if leftovers:
        print("\nleft running at the end of the test session:\n  " + "\n  ".join(leftovers))
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
