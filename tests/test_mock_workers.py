"""``sl.MockCluster`` / ``streamlab mock --workers N``: the mock on several processes, one port, one behaviour.

Over real loopback sockets: both workers serve (their pids differ), a script step and an
injected fault reach whichever worker takes the next request, the merged journal counts every
request in arrival order, and the workers die with the process that started them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import httpx
import psutil
import pytest

import streamlab as sl
from streamlab.faults import Cut, SpecError

BODY = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}


def _stream(url: str) -> tuple[str, int]:
    """One streaming request on a fresh connection: ("complete"|"cut", content chunks read)."""
    chunks = 0
    try:
        with httpx.Client(timeout=10) as client, client.stream("POST", url + "/chat/completions", json=BODY) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    choices = json.loads(line[6:]).get("choices") or [{}]
                    chunks += bool(choices[0].get("delta", {}).get("content"))
        return "complete", chunks
    except httpx.RemoteProtocolError:
        return "cut", chunks


def _settled(journal, count: int, timeout: float = 5.0) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entries = list(journal)
        if len(entries) >= count and all(e.t_end is not None for e in entries):
            return entries
        time.sleep(0.02)
    return list(journal)


@pytest.fixture
def cluster(clean_slate):
    with sl.MockCluster(workers=2, tokens=6) as mock:
        yield mock


def test_two_workers_both_serve_and_the_journal_counts_every_request(cluster):
    assert len(set(cluster.pids)) == 2 and os.getpid() not in cluster.pids
    results = [_stream(cluster.base_url) for _ in range(24)]   # 24 fresh connections: hashed over both
    assert results == [("complete", 6)] * 24
    entries = _settled(cluster.journal, 24)
    assert len(entries) == 24 and all(e.ended == "complete" and e.tokens_sent == 6 for e in entries)
    assert {e.worker for e in entries} == set(cluster.pids)         # both served (1 in 2**23 to fail)
    assert [e.t_start for e in entries] == sorted(e.t_start for e in entries)  # arrival order


def test_a_script_step_applies_to_the_next_request_whichever_worker_takes_it(cluster):
    with cluster.script(Cut(at=3), None, then=Cut(at=1)):
        results = [_stream(cluster.base_url) for _ in range(12)]
    assert results == [("cut", 3), ("complete", 6)] + [("cut", 1)] * 10
    entries = _settled(cluster.journal, 12)
    assert [e.ended for e in entries] == ["cut", "complete"] + ["cut"] * 10
    assert len({e.worker for e in entries}) == 2                     # steps crossed workers
    assert _stream(cluster.base_url) == ("complete", 6)              # script over on every worker


def test_inject_reaches_every_worker_and_ends_with_the_block(cluster):
    with cluster.inject(Cut(at=2)):
        inside = [_stream(cluster.base_url) for _ in range(12)]
    after = [_stream(cluster.base_url) for _ in range(4)]
    assert inside == [("cut", 2)] * 12 and after == [("complete", 6)] * 4
    entries = _settled(cluster.journal, 16)
    assert len({e.worker for e in entries[:12]}) == 2
    assert [e.spec for e in entries] == ["cut@2"] * 12 + [""] * 4


def test_spec_in_the_url_needs_no_channel(cluster):
    assert _stream(cluster.base_url_for(Cut(at=4))) == ("cut", 4)


def test_bad_settings_are_refused_before_any_process_starts(clean_slate):
    with pytest.raises(SpecError, match="workers"):
        sl.MockCluster(workers=0)
    with pytest.raises(SpecError):
        sl.MockCluster(workers=2, tokens=-1)
    with pytest.raises(SpecError):
        sl.MockCluster(workers=2).script("cut@nonsense")


def test_workers_die_with_the_process_that_started_them(clean_slate, tmp_path):
    """SIGKILL the owner (no atexit, no finally): its workers are gone within moments."""
    code = textwrap.dedent("""
        import sys, time, streamlab as sl
        m = sl.MockCluster(workers=2, tokens=4).start()
        print(" ".join(map(str, m.pids)), flush=True)
        time.sleep(60)
    """)
    owner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in owner.stdout.readline().split()]
        assert len(pids) == 2 and all(psutil.pid_exists(p) for p in pids)
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
        owner.stdout.close()
    deadline = time.monotonic() + 5
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        time.sleep(0.05)
    assert alive == []


def test_cli_workers_serves_from_two_processes(clean_slate):
    # Ctrl-C stops it. A shell's `cmd &` without job control starts its children with SIGINT ignored,
    # and an ignored signal stays ignored across exec (then Ctrl-C means nothing, by design); a handler
    # here is reset to the default in the child, so the child gets SIGINT as a terminal user's would.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = sl._lifetime.popen([sys.executable, "-m", "streamlab", "mock", "--workers", "2", "--tokens", "5"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        line = proc.stdout.readline()
        assert "2 worker processes" in line, line + proc.stderr.read()
        url = line.split()[4]
        assert _stream(url) == ("complete", 5)
        assert len(psutil.Process(proc.pid).children()) == 2
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(10)
        proc.stdout.close()
        proc.stderr.close()
    bad = subprocess.run([sys.executable, "-m", "streamlab", "mock", "--workers", "0"], capture_output=True,
                         text=True, timeout=30)
    assert bad.returncode == 2 and "--workers" in bad.stderr and "Traceback" not in bad.stderr
