"""``streamlab.RedisServer``: a real redis-server on loopback, nothing on disk, gone with its parent."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

import streamlab as sl
from streamlab import _redis

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.usefixtures("clean_slate"),
              pytest.mark.skipif(not sl.redis_available(), reason="redis-server is not installed")]


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_starts_on_loopback_without_persistence_and_stops_for_sure():
    t0 = time.perf_counter()
    with sl.RedisServer() as redis:
        took = time.perf_counter() - t0
        assert took < 3.0, f"redis-server took {took:.2f} s to answer PING"
        assert redis in sl.running_servers()
        assert redis.url == f"redis://127.0.0.1:{redis.port}/0"
        r = redis.client()
        assert r.ping() is True
        assert r.config_get("bind")["bind"] == "127.0.0.1"
        assert r.config_get("save")["save"] == "" and r.config_get("appendonly")["appendonly"] == "no"
        assert r.xadd("s", {"a": "1"}).endswith("-0")
        assert not os.path.exists(redis.workdir), "the temp dir is removed once the server is up"
        assert redis.command_calls()["xadd"] == 1
        pid, workdir = redis.pid, redis.workdir
        r.close()
    assert redis not in sl.running_servers() and redis.process is None
    assert _gone(pid) and not os.path.exists(workdir)


def test_stopped_on_an_error_inside_the_block():
    with pytest.raises(KeyboardInterrupt):
        with sl.RedisServer() as redis:
            pid = redis.pid
            raise KeyboardInterrupt
    assert _gone(pid) and sl.running_servers() == []


def test_missing_binary_says_how_to_install(monkeypatch):
    monkeypatch.setattr(_redis, "_binary", lambda: None)
    with pytest.raises(sl.RedisUnavailable, match=r"apt-get install -y redis-server"):
        sl.RedisServer().start()
    assert sl.running_servers() == []


KERNEL = textwrap.dedent("""
    import json, time
    import streamlab as sl
    redis = sl.RedisServer().start()
    print(json.dumps({"pid": redis.pid, "workdir": redis.workdir}), flush=True)
    time.sleep(600)
""")


def test_dies_within_two_seconds_of_a_parent_sigkill():
    kernel = subprocess.Popen([sys.executable, "-c", KERNEL], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        info = json.loads(kernel.stdout.readline())
        assert not _gone(info["pid"])
        kernel.send_signal(signal.SIGKILL)
        kernel.wait(5)
        deadline = time.monotonic() + 2.0
        while not _gone(info["pid"]) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _gone(info["pid"]), "redis-server outlived the process that started it by 2 s"
        assert not os.path.exists(info["workdir"]), "nothing is left on disk"
    finally:
        kernel.kill()
        kernel.wait(5)
        kernel.stdout.close()
