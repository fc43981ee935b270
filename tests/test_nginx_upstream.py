"""Conformance: real nginx ``upstream`` (``NginxBalancer``) vs ``streamlab.Balancer``, same settings.

Every scenario runs on both engines over real sockets (two uvicorn replicas, a ``MockLLM``
behind the model-calling app) and asserts the same client-side outcomes and the same
duplicate counts (the mock's journal, ``stats()['retries']``). Where the two differed, nginx
was measured and the Balancer was changed to follow it (see ``streamlab/_balancer.py``):

* a POST that reached an upstream is not retried by nginx (``proxy_next_upstream error
  timeout`` without ``non_idempotent``): 504/502 and one model run; with ``non_idempotent``
  it is retried and the model runs twice;
* an upstream that failed once (``max_fails=1``) is skipped for ``fail_timeout`` (10 s):
  after one refused connection, later requests go straight to the live upstream.
"""

from __future__ import annotations

import collections
import threading
import time

import httpx
import pytest

import streamlab as sl
from streamlab._balancer import Balancer, Pool, balancer_for
from streamlab._nginx import NginxBalancer, nginx_available, nginx_conf, nginx_upstream
from streamlab._servers import free_port

TICKER = "streamlab.apps.ticker:app"
ANSWER = "streamlab.apps.idempotent:app"

pytestmark = [pytest.mark.usefixtures("clean_slate"),
              pytest.mark.skipif(not nginx_available(), reason="nginx is not installed")]

ENGINES = ("nginx", "embedded")


@pytest.fixture
def pair():
    with sl.Uvicorn(TICKER) as a, sl.Uvicorn(TICKER) as b:
        yield a, b


def _lb(engine: str, upstreams, **settings):
    lb = balancer_for(upstreams, prefer=engine, **settings)
    assert isinstance(lb, NginxBalancer if engine == "nginx" else Balancer)
    return lb


def _whoami(url: str, client: httpx.Client | None = None, method: str = "GET", **kw):
    """(status, pid or None, X-Streamlab-Upstream)."""
    response = (client or httpx).request(method, url + "/whoami", **kw)
    pid = response.json()["pid"] if response.status_code == 200 else None
    return response.status_code, pid, response.headers.get("x-streamlab-upstream")


def _routing(engine: str, a, b) -> dict:
    """What a client sees of each routing setting, on one engine."""
    seen: dict = {}
    with _lb(engine, [a, b]) as lb:
        seen["round robin"] = [_whoami(lb.url) for _ in range(6)]
        seen["round robin stats"] = (list(lb.stats()["requests"].values()), lb.stats()["retries"])
        seen["request id"] = (httpx.get(lb.url + "/whoami").json()["rid"][:3],
                              httpx.get(lb.url + "/whoami", headers={"X-Request-ID": "mine"}).json()["rid"])
    with _lb(engine, [a, b], sticky="X-Session-Id") as lb:
        sessions = collections.defaultdict(set)
        for session in [f"s{i}" for i in range(14)] * 2:
            sessions[session].add(_whoami(lb.url, headers={"X-Session-Id": session})[1])
        seen["header: one backend per session"] = all(len(pids) == 1 for pids in sessions.values())
        seen["header: both backends used"] = len(set().union(*sessions.values())) == 2  # 14 sessions
        seen["header: none sent"] = len({_whoami(lb.url)[1] for _ in range(4)})  # round robin (nginx too)
    with _lb(engine, [a, b], sticky="cookie") as lb:
        with httpx.Client() as browser:  # keeps the streamlab_upstream cookie
            seen["cookie: kept"] = len({_whoami(lb.url, browser)[1] for _ in range(5)})
        seen["cookie: not sent"] = len({_whoami(lb.url)[1] for _ in range(4)})
    with _lb(engine, [a, b], sticky="ip") as lb:  # every loopback client is one /24: one backend
        seen["ip"] = len({_whoami(lb.url)[1] for _ in range(5)})
    dead = f"http://127.0.0.1:{free_port()}"
    with _lb(engine, [dead, a], retry=True) as lb:
        seen["down, retry"] = [_whoami(lb.url) for _ in range(4)]
        seen["down, retry stats"] = (list(lb.stats()["requests"].values()), lb.stats()["retries"])
    with _lb(engine, [dead, a]) as lb:
        seen["down, no retry"] = [_whoami(lb.url)[0] for _ in range(4)]
    with _lb(engine, [dead, a], max_fails=0) as lb:
        seen["down, max_fails=0"] = [_whoami(lb.url)[0] for _ in range(4)]
    with _lb(engine, [dead, a], retry=True) as lb:  # nothing was sent: a POST is retried too
        seen["down, POST"] = (_whoami(lb.url, method="POST"), lb.stats()["retries"])
    return seen


def test_routing_is_the_same_on_nginx_and_the_balancer(pair):
    a, b = pair
    expected = {
        "round robin": [(200, a.pid, "0"), (200, b.pid, "1")] * 3,
        "round robin stats": ([3, 3], 0),
        "request id": ("lb-", "mine"),  # both name a request that has no X-Request-ID
        "header: one backend per session": True, "header: both backends used": True, "header: none sent": 2,
        "cookie: kept": 1, "cookie: not sent": 2,
        "ip": 1,
        # one retry only: after its failure the dead backend is skipped for fail_timeout (max_fails=1)
        "down, retry": [(200, a.pid, "1")] * 4, "down, retry stats": ([1, 4], 1),
        "down, no retry": [502, 200, 200, 200],  # the failed request takes the dead one out
        "down, max_fails=0": [502, 200, 502, 200],  # never taken out: round robin keeps choosing it
        "down, POST": ((200, a.pid, "1"), 1),
    }
    seen = {engine: _routing(engine, a, b) for engine in ENGINES}
    for key, want in expected.items():
        assert (key, seen["nginx"][key]) == (key, want)
        assert (key, seen["embedded"][key]) == (key, want)


def _post_once(engine: str, a, b, mock, *, non_idempotent: bool, cause: str) -> tuple:
    """One POST /answer whose first attempt on backend 0 dies after it was sent: the model stalls past
    the idle timeout (``timeout``), or the gunicorn worker is killed while it waits (``killed``).
    Returns (status, model runs, retries, pid that answered or None)."""
    rid = f"post-{engine}-{cause}-{non_idempotent}"
    idle = 1.0 if cause == "timeout" else None
    with _lb(engine, [a, b], retry=True, non_idempotent=non_idempotent, idle_timeout=idle) as lb:
        before = len(mock.journal.chat())
        holder: dict = {}
        with mock.script("stall@2=2", None):
            thread = threading.Thread(target=lambda: holder.update(r=httpx.post(
                lb.url + "/answer", headers={"X-Request-ID": rid}, timeout=10)))
            thread.start()
            if cause == "killed":  # once the model has the first call (the app logs just before it)
                a.wait_for_log(f"rid={rid} /answer model call")
                deadline = time.monotonic() + 5
                while len(mock.journal.chat()) == before and time.monotonic() < deadline:
                    time.sleep(0.005)
                a.kill_worker(0)
            thread.join(10)
        response = holder["r"]
        runs = len(mock.journal.chat()) - before
        retries = lb.stats()["retries"]
    if cause == "killed":
        a.wait_workers()  # gunicorn forks a new worker for the next round
    return response.status_code, runs, retries, response.json()["pid"] if response.status_code == 200 else None


def test_a_sent_post_is_retried_only_with_non_idempotent_on_both():
    """nginx does not resend a POST it has sent (``proxy_next_upstream error timeout``): a timeout is
    a 504, a worker killed mid-request a 502, and the model ran once. With ``non_idempotent`` it is
    resent: 200 from backend 1, and the model ran twice. The Balancer does the same (it used to
    resend every request). A GET is retried either way (tests/test_balancer.py)."""
    with sl.MockLLM(tokens=10, itl=0.01) as mock:
        env = {"STREAMLAB_MODEL_URL": mock.base_url}
        with sl.Gunicorn(ANSWER, env=env) as a, sl.Uvicorn(ANSWER, env=env) as b:
            outcomes = {(engine, cause, non_idempotent): _post_once(engine, a, b, mock, non_idempotent=non_idempotent,
                                                                     cause=cause)
                        for cause in ("timeout", "killed") for engine in ENGINES for non_idempotent in (False, True)}
            answered_by = b.pid
    for engine in ENGINES:
        assert outcomes[engine, "timeout", False] == (504, 1, 0, None), outcomes
        assert outcomes[engine, "killed", False] == (502, 1, 0, None), outcomes
        for cause in ("timeout", "killed"):
            assert outcomes[engine, cause, True] == (200, 2, 1, answered_by), outcomes


def test_the_upstream_block_says_what_the_pool_says():
    pool = Pool(upstreams=("http://127.0.0.1:1001", "http://127.0.0.1:1002"), sticky="X-Session-Id",
                retry=True, non_idempotent=True, max_fails=3, fail_timeout=30, idle_timeout=2.5, keepalive=4)
    http, target, location = nginx_upstream(pool)
    assert target == "http://streamlab_pool"
    assert "        hash $http_x_session_id consistent;" in http
    assert "        server 127.0.0.1:1001 max_fails=3 fail_timeout=30s;" in http
    assert "        keepalive 4;" in http
    assert "proxy_next_upstream error timeout non_idempotent;" in location
    assert "proxy_read_timeout 2500ms;" in location and 'proxy_set_header Connection "";' in location
    assert "ip_hash;" in "\n".join(nginx_upstream(Pool(upstreams=pool.upstreams, sticky="ip"))[0])
    assert "proxy_next_upstream off;" in nginx_upstream(Pool(upstreams=pool.upstreams))[2]
    conf = nginx_conf(upstream=pool, port=5, proxy_http_version="1.1")
    assert conf.count("proxy_read_timeout") == 1  # the pool's timeout, not the one-day default
    with pytest.raises(ValueError, match="non_idempotent=True only means something with retry=True"):
        Balancer(["http://127.0.0.1:1"], non_idempotent=True)
    with pytest.raises(ValueError, match="sticky is None"):
        NginxBalancer(["http://127.0.0.1:1"], sticky="$bad")
    with pytest.raises(ValueError, match="keepalive= is an nginx setting"):
        balancer_for(["http://127.0.0.1:1"], prefer="embedded", keepalive=2)
