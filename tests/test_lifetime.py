"""Every process behind ``sl.Uvicorn`` / ``sl.Gunicorn`` dies with the Python process that started it.

Issue 10: SIGKILL (or SIGTERM) the notebook kernel / script that started
``sl.Uvicorn`` or ``sl.Gunicorn(workers=2)`` while an outside client is still
streaming, and the uvicorn process, a gunicorn worker and the workers of uvicorn's
``--workers`` supervisor lived on under init and kept serving (6 of 6 trials).
Fixed in ``streamlab/_lifetime.py`` (PR_SET_PDEATHSIG SIGKILL on the direct child,
forked from a thread that lives as long as the process), the gunicorn ``post_fork``
hook (workers tied to the arbiter) and ``streamlab.apps._uvicorn_main`` (spawned
uvicorn workers tied to the supervisor).

Each test starts the server from a separate Python process (the "kernel") that prints
the pids of all its descendants, streams ``/stream/async`` of ``streamlab.apps.blocking``
(a plain ``StreamingResponse``, which a graceful shutdown waits for; sse-starlette would
end its stream on SIGTERM by itself) against a ``MockLLM`` in this process with a
client that keeps reading, kills the kernel, and asserts with psutil that every
descendant is gone within 2 s.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

import streamlab
from streamlab import _lifetime

ROOT = Path(__file__).resolve().parent.parent
TICKER = "streamlab.apps.ticker:app"
DEADLINE = 2.0  # wall-clock seconds from the kernel's death to the last child gone (issue 10)

pytestmark = pytest.mark.usefixtures("clean_slate")

KERNEL = textwrap.dedent("""
    import json, sys, time
    import psutil
    import streamlab as sl

    kind, model_url = sys.argv[1], sys.argv[2]
    env = {"STREAMLAB_MODEL_URL": model_url}
    app = "streamlab.apps.blocking:app"
    slow = {"start_timeout": 120}  # importing langchain in two workers at once, on a busy machine
    if kind == "uvicorn":
        server = sl.Uvicorn(app, env=env, **slow)
    elif kind == "uvicorn-workers":
        server = sl.Uvicorn(app, workers=2, env=env, **slow)
    else:
        server = sl.Gunicorn(app, workers=2, env=env, **slow)
    server.start()
    family = [p.pid for p in psutil.Process().children(recursive=True)]
    print(json.dumps({"url": server.url, "pids": family, "workers": server.worker_pids()}), flush=True)
    shown = 0
    while True:  # the server's log on stderr, for a failing test to show
        lines = server.log_lines()
        sys.stderr.write("".join(line + "\\n" for line in lines[shown:]))
        sys.stderr.flush()
        shown = len(lines)
        time.sleep(0.1)
""")


@pytest.fixture
def mock():
    # a stream much longer than the test: the client is mid-stream whenever the kernel dies
    with streamlab.MockLLM(tokens=5000, ttft=0.01, itl=0.02) as server:
        yield server


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # exited; init has yet to reap it
    except psutil.NoSuchProcess:
        return True


def _start_kernel(kind: str, model_url: str, stderr) -> tuple[subprocess.Popen, dict]:
    kernel = subprocess.Popen([sys.executable, "-c", KERNEL, kind, model_url], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=stderr, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    line = kernel.stdout.readline()
    if not line:
        kernel.wait(5)
        pytest.fail(f"the kernel process exited with {kernel.returncode} before its server was up")
    return kernel, json.loads(line)


class _Client(threading.Thread):
    """Reads an SSE stream to the end, whatever happens to the server; counts the bytes it got."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.received, self.error = url, 0, None
        self.streaming = threading.Event()

    def run(self) -> None:
        try:
            with httpx.stream("GET", self.url, timeout=httpx.Timeout(30, read=30)) as response:
                for chunk in response.iter_raw():
                    self.received += len(chunk)
                    if self.received > 200:
                        self.streaming.set()
        except httpx.HTTPError as exc:
            self.error = exc


def _kill_kernel_mid_stream(kind: str, sig: int, model_url: str, log) -> tuple[dict, float, list[int]]:
    kernel, info = _start_kernel(kind, model_url, log)
    family = list(info["pids"])
    try:
        client = _Client(info["url"] + "/stream/async")
        client.start()
        assert client.streaming.wait(20), f"no stream from {kind} (error: {client.error})"
        with contextlib.suppress(psutil.Error):  # and any process started since (a replaced worker)
            family += [p.pid for p in psutil.Process(kernel.pid).children(recursive=True) if p.pid not in family]
        t0 = time.monotonic()
        kernel.send_signal(sig)
        kernel.wait(5)
        while not all(_gone(pid) for pid in family) and time.monotonic() - t0 < DEADLINE + 3:
            time.sleep(0.005)
        elapsed = time.monotonic() - t0
        survivors = [pid for pid in family if not _gone(pid)]
        client.join(5)
        return info, elapsed, survivors
    finally:
        for pid in family:  # never leave a server behind, even when the test fails
            try:
                psutil.Process(pid).kill()
            except psutil.Error:
                pass
        if kernel.poll() is None:
            kernel.kill()
            kernel.wait(5)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
@pytest.mark.parametrize("kind, expected_family", [("uvicorn", 1), ("gunicorn", 3),
                                                   ("uvicorn-workers", 3)])
def test_every_server_process_dies_within_2s_of_the_kernel_while_a_client_streams(mock, kind, expected_family,
                                                                                    sig, tmp_path):
    with open(tmp_path / "kernel.log", "w+") as log:
        try:
            info, elapsed, survivors = _kill_kernel_mid_stream(kind, sig, mock.base_url, log)
        finally:
            log.seek(0)
            server_log = log.read()[-3000:]
    assert len(info["pids"]) >= expected_family, info  # uvicorn --workers: + multiprocessing's resource tracker
    assert not survivors, f"{kind}: {len(survivors)} of {len(info['pids'])} processes alive {elapsed:.1f} s " \
                          f"after {signal.Signals(sig).name} of their kernel: {survivors}\n{server_log}"
    assert elapsed < DEADLINE, f"{kind}: last process gone {elapsed:.2f} s after the kernel's death\n{server_log}"
    print(f"{kind} {signal.Signals(sig).name}: {len(info['pids'])} processes gone in {elapsed * 1000:.0f} ms")


@pytest.mark.parametrize("kind", ["uvicorn", "gunicorn"])
def test_workers_die_with_their_supervisor_or_arbiter(kind):
    """The tie of each worker itself: SIGKILL only the uvicorn supervisor / gunicorn arbiter."""
    server = streamlab.Uvicorn(TICKER, workers=2) if kind == "uvicorn" else streamlab.Gunicorn(TICKER, workers=2)
    with server:
        workers = server.worker_pids()
        assert len(workers) == 2
        t0 = time.monotonic()
        os.kill(server.pid, signal.SIGKILL)
        while not all(_gone(pid) for pid in workers) and time.monotonic() - t0 < DEADLINE + 3:
            time.sleep(0.005)
        elapsed = time.monotonic() - t0
        assert all(_gone(pid) for pid in workers), f"{kind} workers alive {elapsed:.1f} s after their parent died"
        assert elapsed < DEADLINE


def test_a_server_started_from_a_short_lived_thread_outlives_that_thread():
    """PR_SET_PDEATHSIG fires when the forking *thread* exits: popen() forks from a long-lived thread."""
    started: list[subprocess.Popen] = []
    thread = threading.Thread(target=lambda: started.append(_lifetime.popen(["sleep", "30"])))
    thread.start()
    thread.join()
    child = started[0]
    try:
        time.sleep(0.3)
        assert child.poll() is None, f"the child died with the thread that asked for it (rc {child.returncode})"
    finally:
        child.kill()
        child.wait(5)


def test_die_with_parent_kills_a_child_whose_parent_died_before_the_tie():
    """The race: parent gone between fork and prctl -> the child must not live on under init."""
    code = textwrap.dedent("""
        import os, sys, time
        from streamlab import _lifetime
        # pretend the parent that forked us is a pid that is not our parent (it "already died")
        _lifetime.die_with_parent(parent_pid=os.getppid() + 1 if os.getppid() != 1 else 2)
        print("survived", flush=True)
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=20,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == -signal.SIGKILL and "survived" not in proc.stdout


def test_popen_rejects_a_preexec_fn_of_its_own():
    with pytest.raises(TypeError, match="preexec_fn"):
        _lifetime.popen(["true"], preexec_fn=lambda: None)
