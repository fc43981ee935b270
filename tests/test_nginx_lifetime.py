"""Real nginx never outlives the Python process that started it, and leaves no temp dir (issue 10).

What a user found before the fix: ``streamlab-nginx-*`` temp dirs survived a
parent killed with SIGTERM or SIGKILL, and nginx's workers kept running: the
death signal (``PR_SET_PDEATHSIG``) reached the master only, and nginx 1.22.1
workers do not notice a dead master (measured: still serving 3 s after
``kill -9`` of the master). Now a watchdog outside the process kills nginx's
process group and removes the dir, and the next start sweeps what a dead
owner left behind.

Each test starts a real Python parent in a subprocess (its own TMPDIR), kills it
and checks within 2 s that no nginx process and no temp dir remain.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from streamlab._nginx import OWNER_FILE, TEMP_PREFIX, nginx_available, sweep_stale_workdirs

pytestmark = pytest.mark.skipif(not nginx_available(), reason="nginx is not installed (apt-get install nginx-light)")

ROOT = Path(__file__).resolve().parent.parent
PARENT = """
import json, sys, time
from streamlab._nginx import NginxProxy
proxy = NginxProxy(upstream="http://127.0.0.1:9").start()
print(json.dumps({"master": proxy.pid, "workdir": proxy.workdir}), flush=True)
time.sleep(60)
"""


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # dead, only not reaped (by pid 1)
    except psutil.NoSuchProcess:
        return True


def start_parent(tmp_path: Path) -> tuple[subprocess.Popen, int, list[int], Path]:
    env = dict(os.environ, TMPDIR=str(tmp_path), PYTHONPATH=str(ROOT))
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, env=env, cwd=ROOT, text=True)
    info = json.loads(parent.stdout.readline())
    master = info["master"]
    workers = [p.pid for p in psutil.Process(master).children()]
    workdir = Path(info["workdir"])
    assert workers and workdir.is_dir() and workdir.parent == tmp_path
    assert (workdir / OWNER_FILE).read_text().split() == [str(parent.pid), str(master)]
    return parent, master, workers, workdir


def wait_until(check, seconds: float) -> float | None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        if check():
            return time.monotonic() - t0
        time.sleep(0.02)
    return None


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_nginx_tempdir_removed_after_parent_sigkill(tmp_path, sig):
    """Parent killed (no atexit, no finally): master, workers and the temp dir are gone within 2 s."""
    parent, master, workers, workdir = start_parent(tmp_path)
    try:
        parent.send_signal(sig)
        parent.wait(5)
        took = wait_until(lambda: all(gone(p) for p in [master, *workers]) and not workdir.exists(), 2.0)
    finally:
        for pid in [master, *workers]:
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)
    assert took is not None, (f"after {sig.name}: alive {[p for p in [master, *workers] if not gone(p)]}, "
                              f"dir left: {workdir.exists()}")
    assert list(tmp_path.glob(TEMP_PREFIX + "*")) == []


def test_nginx_of_a_dead_owner_is_swept_at_next_start(tmp_path):
    """Watchdog and parent both killed: the master dies with its parent (PDEATHSIG), the orphaned
    worker and the dir are removed by the next start's sweep."""
    parent, master, workers, workdir = start_parent(tmp_path)
    try:
        dogs = [p for p in psutil.process_iter(["cmdline"]) if "streamlab-nginx-watchdog" in (p.info["cmdline"] or [])
                and str(workdir) in p.info["cmdline"]]
        assert len(dogs) == 1
        dogs[0].kill()
        assert wait_until(lambda: gone(dogs[0].pid), 2.0) is not None
        parent.kill()
        parent.wait(5)
        assert wait_until(lambda: gone(master), 2.0) is not None, "the master outlived its parent (PDEATHSIG)"
        time.sleep(0.3)
        assert workdir.exists() and not all(gone(p) for p in workers)  # what the sweep is for
        assert sweep_stale_workdirs(str(tmp_path)) == [str(workdir)]
        assert wait_until(lambda: all(gone(p) for p in workers), 2.0) is not None
        assert not workdir.exists()
    finally:
        for pid in [master, *workers]:
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)


def test_sweep_keeps_dirs_of_live_owners(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale, live = tmp_path / (TEMP_PREFIX + "stale"), tmp_path / (TEMP_PREFIX + "live")
    for path, owner in ((stale, dead.pid), (live, os.getpid())):
        path.mkdir()
        (path / OWNER_FILE).write_text(f"{owner} 0\n")
    assert sweep_stale_workdirs(str(tmp_path)) == [str(stale)]
    assert live.is_dir() and not stale.exists()
