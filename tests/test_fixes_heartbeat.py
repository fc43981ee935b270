"""``streamlab.fixes.heartbeat``: what a heartbeat cures and what it cannot (issue 12).

Over real sockets: the mock model stalls mid-stream, a demo app under real
uvicorn relays it as SSE with or without ``: ping`` comments, and the embedded
proxy in front plays a load balancer's idle timeout or a gateway's deadline.
"""

from __future__ import annotations

import asyncio

import pytest

import streamlab as sl
from streamlab.fixes import PING, Heartbeat, heartbeat

pytestmark = pytest.mark.usefixtures("clean_slate")

APP = "streamlab.apps.heartbeat:app"
STALL = "stall@3=30"          # 3 tokens, then 30 scenario seconds of silence, then the rest


@pytest.fixture
def stack():
    """mock -> uvicorn(heartbeat demo app); scenario seconds at 1/20 of wall-clock time."""
    with sl.time_scale(0.05), sl.MockLLM(tokens=8, ttft=0.2, itl=0.2) as mock, \
            sl.Uvicorn(APP, env={"STREAMLAB_MODEL_URL": mock.base_url}) as app:
        yield app


def _through(app, fault, *, every: float):
    with sl.Proxy(upstream=app.url, faults=[fault]) as proxy:
        result = sl.read_stream(f"{proxy.url}/sse?spec={STALL}&every={every}", timeout=None)
    data = [e["data"] for e in result.events if e.get("data")]
    return result, data


def test_heartbeat_keeps_a_stalled_stream_alive_through_an_lb_idle_timeout(stack):
    broken, broken_data = _through(stack, sl.hops.IdleTimeout(seconds=10), every=0)
    fixed, fixed_data = _through(stack, sl.hops.IdleTimeout(seconds=10), every=5)
    assert broken.outcome == "cut" and len(broken_data) == 3
    assert fixed.outcome == "complete" and fixed_data[-1] == "[DONE]" and len(fixed_data) == 9
    assert fixed.text.count(PING.decode()) >= 4           # 30 s of silence, a ping every 5 s


def test_heartbeat_does_not_beat_a_gateway_deadline(stack):
    result, data = _through(stack, sl.hops.Deadline(seconds=20), every=5)
    assert result.outcome == "cut"
    assert "[DONE]" not in data and PING.decode() in result.text


def test_heartbeat_pings_are_held_with_the_stream_by_nginx_gzip_behind_buffering(stack):
    """Real nginx (proxy_buffering on, gzip on for SSE) next to an app that sends no X-Accel-Buffering,
    a balancer with an idle timeout in front speaking HTTP/1.1: the pings never reach the balancer."""
    if not sl.nginx_available():
        pytest.skip("nginx is not installed")
    idle = [sl.hops.IdleTimeout(seconds=10)]
    with sl.proxy_for(upstream=stack.url, faults=[sl.hops.Buffering(), sl.hops.Gzip()]) as nginx, \
            sl.Proxy(upstream=nginx.url, faults=idle, proxy_http_version="1.1") as lb:
        assert nginx.kind.startswith("real nginx")
        held = sl.read_stream(f"{lb.url}/sse?spec={STALL}&every=5&accel=", timeout=None)
    with sl.proxy_for(upstream=stack.url, faults=[sl.hops.Buffering()]) as nginx, \
            sl.Proxy(upstream=nginx.url, faults=idle, proxy_http_version="1.1") as lb:
        flowing = sl.read_stream(f"{lb.url}/sse?spec={STALL}&every=5&accel=", timeout=None)
    assert held.status == 504 and not held.events
    assert flowing.outcome == "complete" and flowing.events[-1]["data"] == "[DONE]"


def test_the_heartbeat_app_sends_the_x_accel_buffering_it_is_asked_for(stack):
    import httpx

    def accel(value):
        with httpx.stream("GET", f"{stack.url}/sse", params={"accel": value}, timeout=30) as r:
            r.read()
            return r.status_code, r.headers.get("x-accel-buffering"), r.headers["content-type"]

    assert accel("no")[:2] == (200, "no")
    assert accel("")[:2] == (200, None)
    status, _, ctype = accel("maybe")
    assert status == 400 and ctype.startswith("application/json")


def test_heartbeat_wrapper_never_cancels_the_pending_read():
    async def slow():
        for i in range(3):
            await asyncio.sleep(0.05)
            yield i

    async def collect():
        return [item async for item in heartbeat(slow(), every=0.012, frame="beat")]

    with sl.time_scale(1.0):
        items = asyncio.run(collect())
    assert [i for i in items if i != "beat"] == [0, 1, 2]
    assert items.count("beat") >= 3


def test_heartbeat_middleware_pings_only_event_streams():
    async def app(scope, receive, send):
        kind = b"text/event-stream" if scope["path"] == "/sse" else b"application/json"
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", kind)]})
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        await asyncio.sleep(0.1)
        await send({"type": "http.response.body", "body": b"data: 2\n\n", "more_body": False})

    async def call(path):
        sent = []

        async def send(message):
            sent.append(message)

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        await Heartbeat(app, every=0.02)({"type": "http", "path": path}, receive, send)
        return [m.get("body") for m in sent if m["type"] == "http.response.body"]

    with sl.time_scale(1.0):
        sse, plain = asyncio.run(call("/sse")), asyncio.run(call("/json"))
    assert sse[0] == b"data: 1\n\n" and sse[-1] == b"data: 2\n\n" and sse.count(PING) >= 2
    assert plain == [b"data: 1\n\n", b"data: 2\n\n"]


@pytest.mark.parametrize("every", [0, -1, float("nan"), float("inf")])
def test_heartbeat_interval_must_be_a_positive_finite_number(every):
    with pytest.raises(ValueError, match="heartbeat interval"):
        Heartbeat(lambda *a: None, every=every)
