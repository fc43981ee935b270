"""streamlab.Balancer over real uvicorn / gunicorn upstreams.

Pins: round robin vs sticky routing, retry on a refused or dropped upstream
(a second run of the same request, counted), no retry once the client has
bytes (a worker killed mid-stream is a cut), and the idle timeout (504 before
the response, a cut during it).
"""

from __future__ import annotations

import collections
import threading

import httpx
import pytest

import streamlab
from streamlab._appserver import Gunicorn, Uvicorn
from streamlab._balancer import Balancer
from streamlab._clients import Abort, HTTPStream, read_stream
from streamlab._servers import free_port
from streamlab._timescale import time_scale

TICKER = "streamlab.apps.ticker:app"


pytestmark = pytest.mark.usefixtures("clean_slate")  # tests/conftest.py: no server or child left


@pytest.fixture
def pair():
    """Two single-process uvicorn replicas of the ticker (conftest.py forbids sharing them across tests)."""
    with Uvicorn(TICKER) as a, Uvicorn(TICKER) as b:
        yield a, b


def _pids(url: str, n: int, client: httpx.Client | None = None, **kw) -> list[int]:
    get = client.get if client else httpx.get
    return [get(url + "/whoami", **kw).json()["pid"] for _ in range(n)]


def test_round_robin_alternates_and_counts(pair):
    a, b = pair
    with Balancer(pair) as lb:
        assert _pids(lb.url, 6) == [a.pid, b.pid] * 3
        stats = lb.stats()
        assert list(stats["requests"].values()) == [3, 3] and stats["retries"] == 0
        response = httpx.get(lb.url + "/whoami")
        assert response.headers["x-streamlab-upstream"] == "0" and response.headers["connection"] == "close"
        assert response.json()["rid"].startswith("lb-")  # the balancer names every request
        assert [e.kind for e in lb.log.events if e.conn == 1] == ["open", "status", "in", "out", "close"]


def test_sticky_cookie_pins_a_client_and_plain_requests_still_alternate(pair):
    a, b = pair
    with Balancer(pair, sticky="cookie") as lb:
        with httpx.Client() as browser:  # keeps the streamlab_upstream cookie
            assert len(set(_pids(lb.url, 5, browser))) == 1
        assert len(set(_pids(lb.url, 4))) == 2  # no cookie sent back: round robin


def test_sticky_header_gives_each_session_one_upstream(pair):
    with Balancer(pair, sticky="X-Session-Id") as lb:
        seen = collections.defaultdict(set)
        for session in "abcdabcd":
            seen[session].add(_pids(lb.url, 1, headers={"X-Session-Id": session})[0])
        assert all(len(pids) == 1 for pids in seen.values())
        assert len(set().union(*seen.values())) == 2  # sessions are spread over both


def test_retry_skips_a_refused_upstream(pair):
    a, _ = pair
    dead = f"http://127.0.0.1:{free_port()}"
    with Balancer([dead, a], retry=True) as lb:
        assert httpx.get(lb.url + "/whoami").json()["pid"] == a.pid
        assert lb.stats()["retries"] == 1
        assert "retry: upstream 0 refused the connection" in lb.log.of("fault")[0].note
    with Balancer([dead, a]) as lb:
        assert httpx.get(lb.url + "/whoami").status_code == 502


def test_retry_after_a_worker_dies_runs_the_request_twice():
    """The buffered /json request: its worker is killed before any byte is sent, the balancer
    re-sends it to the other replica, and the same request id runs on both."""
    with Gunicorn(TICKER) as first, Uvicorn(TICKER) as second, Balancer([first, second], retry=True) as lb:
        holder: dict = {}
        thread = threading.Thread(target=lambda: holder.update(r=httpx.get(
            lb.url + "/json?n=10&every=0.05", headers={"X-Request-ID": "dup-1"}, timeout=10)))
        thread.start()
        first.wait_for_log("rid=dup-1 /json start")
        first.kill_worker(0)
        thread.join(10)
        assert holder["r"].status_code == 200 and holder["r"].json()["pid"] == second.pid
        assert second.log_lines("rid=dup-1 /json start")  # the duplicate run
        assert lb.stats()["retries"] == 1
        assert list(lb.stats()["requests"].values()) == [1, 1]
        assert "upstream 0 closed before the response -> upstream 1" in lb.log.of("fault")[0].note
        assert len(first.wait_workers()) == 1  # gunicorn forked a new worker meanwhile


def test_retry_on_idle_timeout_doubles_the_model_runs():
    """A stalled model behind the buffered handler: the balancer gives up on replica 0 after its
    idle timeout and asks replica 1; replica 0 keeps generating for nobody."""
    with streamlab.MockLLM(tokens=10, itl=0.01) as mock:
        env = {"STREAMLAB_MODEL_URL": mock.base_url}
        with Uvicorn("streamlab.apps.chat:app", env=env) as a, Uvicorn("streamlab.apps.chat:app", env=env) as b, \
                Balancer([a, b], retry=True, idle_timeout=0.5) as lb:
            with mock.script("stall@2=1.0", None):
                response = httpx.get(lb.url + "/chat/buffered", headers={"X-Request-ID": "dup-2"}, timeout=10)
            assert response.status_code == 200 and response.json()["tokens"] == 10
            assert lb.stats()["retries"] == 1
            assert "idle timeout before the response" in lb.log.of("fault")[0].note
            line = a.wait_for_log("rid=dup-2 /chat/buffered CLIENT DISCONNECT before the reply", timeout=5)
            assert "10 tokens generated for nobody" in line.text
            assert sum(e.path.endswith("/chat/completions") for e in mock.journal) == 2


def test_no_retry_once_the_client_has_bytes_a_killed_worker_is_a_cut(pair):
    a, b = pair
    with Balancer(pair, retry=True) as lb:
        stream = HTTPStream(lb.url + "/stream?n=40&every=0.05", headers={"X-Request-ID": "cut-1"}, timeout=10)
        thread = threading.Thread(target=stream.run)
        thread.start()
        a.wait_for_log("rid=cut-1 /stream token 3 ")
        a.kill_worker(0)  # single-process uvicorn: the worker is the server
        thread.join(10)
        assert stream.result.outcome == "cut" and isinstance(stream.result.error, httpx.RemoteProtocolError)
        assert lb.stats()["retries"] == 0
        assert lb.log.of("close")[-1].note == "upstream closed mid-response"


def test_idle_timeout_is_504_before_the_response_and_a_cut_during_it(pair):
    # max_fails=0: replica 0's 504 would otherwise take it out for fail_timeout (nginx's max_fails=1),
    # and the last request would land on replica 1 while its event loop is still blocked
    with Balancer(pair, idle_timeout=0.3, max_fails=0) as lb:
        slow_json = httpx.get(lb.url + "/json?n=3&every=0.5", timeout=10)
        assert slow_json.status_code == 504
        assert lb.log.of("close")[-1].note == "504"
        stalled = read_stream(lb.url + "/stream?n=5&every=0.2&block_at=2&block=1", timeout=10)
        assert stalled.outcome == "cut" and len(stalled.events) == 2
        assert lb.log.of("close")[-1].note == "idle timeout"
        steady = read_stream(lb.url + "/stream?n=10&every=0.1", timeout=10)
        assert steady.outcome == "complete"  # never idle for 0.3 s


def test_idle_timeout_in_scenario_seconds(pair):
    with time_scale(0.01), Balancer(pair, idle_timeout=30) as lb:  # 30 scenario s = 0.3 s
        # the replicas started at scale 1: one tick every 1 s is 100 scenario s for the balancer
        assert httpx.get(lb.url + "/json?n=1&every=1", timeout=10).status_code == 504
        elapsed = lb.log.of("close")[-1].t - lb.log.of("open")[-1].t
        assert 0.25 < elapsed < 1.0


def test_a_client_abort_passes_through_to_the_app(pair):
    a, b = pair
    with Balancer(pair) as lb:
        read_stream(lb.url + "/stream?n=40&every=0.02", headers={"X-Request-ID": "lb-abort"},
                    abort=Abort(after_chunks=3))
        line = a.wait_for_log("rid=lb-abort /stream CLIENT DISCONNECT")
        assert "(http.disconnect)" in line.text
        # the client left while the buffered answer was still being made: the balancer drops the upstream too
        with pytest.raises(httpx.ReadTimeout):
            httpx.get(lb.url + "/json?n=10&every=0.05", headers={"X-Request-ID": "lb-gone"}, timeout=0.2)
        assert b.wait_for_log("rid=lb-gone /json done")
        notes = [e.note for e in lb.log.of("close")]
        assert notes.count("client closed") == 2, notes


def test_stopping_mid_stream_is_quiet(pair, capfd):
    """stop() with an exchange open ends it without asyncio's 'Exception in callback' noise."""
    lb = Balancer(pair).start()
    stream = HTTPStream(lb.url + "/stream?n=40&every=0.05", headers={"X-Request-ID": "quiet-1"}, timeout=10)
    thread = threading.Thread(target=stream.run)
    thread.start()
    pair[0].wait_for_log("rid=quiet-1 /stream token 1 ")
    lb.stop()
    thread.join(10)
    assert stream.result.outcome == "cut"
    assert lb.log.of("close")[-1].note == "balancer stopped"
    assert "Exception in callback" not in capfd.readouterr().err
