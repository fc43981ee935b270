"""Real nginx vs the embedded proxy: same faults, same upstream, same client, same outcome.

Every scenario is run through ``NginxProxy`` (real nginx 1.22, configured from the
fault objects) and through ``Proxy`` (the embedded emulation), and the client-side
result must be the same for both *and* equal to the expected value written in
the scenario, which records what real nginx was measured to do (where it differs
from common belief, the comment says so). Compared: the outcome (complete / cut /
504 / 502 ...), the number of SSE events delivered, whether the response headers
were held back, and whether the events were held back (arrived in one burst).

Time runs at 1/50: nginx timers are lazy by up to 300 ms of wall-clock time, so
timeouts here are 50 scenario seconds = 1 s real, far above that slack.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from streamlab import hops
from streamlab._nginx import NginxProxy, nginx_available, nginx_version
from streamlab._proxy import Proxy
from streamlab._servers import ThreadedASGIServer, running_servers
from streamlab._timescale import time_scale, to_real
from test_proxy import DeafUpstream, RawSSEUpstream, Seen, SSEUpstream, leftover_nginx, observe

pytestmark = pytest.mark.skipif(
    not nginx_available(),
    reason="real nginx is not installed (CI: apt-get install nginx-light); the embedded proxy alone is "
           "tested in tests/test_proxy.py")

SCALE = 0.02
T = 50  # the timeout used in scenarios, scenario seconds (1 s real)


@dataclass(frozen=True)
class Scenario:
    name: str
    faults: list
    path: str
    expected: tuple  # (outcome, events, headers held, events held)
    upstream: str = "sse"  # sse | raw (not chunked) | deaf | down
    client: str = "httpx"  # httpx | slow (stops reading) | gzip (accepts gzip)
    method: str = "GET"
    body: bytes | None = None
    head_hold: float = 30  # scenario seconds: headers later than this count as held
    why: str = ""
    settings: dict = field(default_factory=dict)  # proxy settings for both engines


def nginx_defaults(**kw):
    return hops.nginx(proxy_read_timeout=T, **kw)


SCENARIOS = [
    Scenario("healthy stream, nginx defaults (proxy_buffering on)", nginx_defaults(), "/sse?n=6&interval=4",
             ("complete", 7, False, False),
             why="proxy_buffering on does NOT hold SSE events: each upstream read is sent on at once"),
    Scenario("stream longer than proxy_read_timeout, never idle", nginx_defaults(), "/sse?n=8&interval=10",
             ("complete", 9, False, False), why="proxy_read_timeout is idle time between reads, not total time"),
    Scenario("proxy_read_timeout before the headers", nginx_defaults(), "/sse?ttfb=300", ("http 504", 0, False, False)),
    Scenario("proxy_read_timeout mid-stream", nginx_defaults(), "/sse?n=6&interval=4&stall_at=3",
             ("cut", 3, False, False), why="no terminating chunk: httpx raises RemoteProtocolError"),
    Scenario("headers sent, first token never comes (buffering on)", nginx_defaults(), "/sse?n=3&stall_at=0",
             ("cut", 0, True, False),
             why="buffering holds the headers until the first body byte; the timeout gives 200 + cut, not 504"),
    Scenario("headers sent, first token never comes (proxy_buffering off)", nginx_defaults(proxy_buffering=False),
             "/sse?n=3&stall_at=0", ("cut", 0, False, False), why="unbuffered: the headers go out at once"),
    Scenario("close-delimited upstream body (HTTP/1.0 style), buffering on", nginx_defaults(),
             "/?mode=close&n=6&interval=4", ("complete", 7, True, True), upstream="raw", head_hold=10,
             why="not chunked: held until a 4k buffer fills or the stream ends, headers included"),
    Scenario("Content-Length upstream body, buffering on", nginx_defaults(), "/?mode=length&n=6&interval=4",
             ("complete", 7, True, True), upstream="raw", head_hold=10),
    Scenario("close-delimited upstream body, X-Accel-Buffering: no", nginx_defaults(),
             "/?mode=close&n=6&interval=4&accel=1", ("complete", 7, False, False), upstream="raw"),
    Scenario("close-delimited upstream body, proxy_buffering off", nginx_defaults(proxy_buffering=False),
             "/?mode=close&n=6&interval=4", ("complete", 7, False, False), upstream="raw"),
    Scenario("slow first token, buffering on", nginx_defaults(), "/sse?n=3&interval=4&stall_at=0&stall=40",
             ("complete", 4, True, False)),
    Scenario("slow first token, X-Accel-Buffering: no", nginx_defaults(), "/sse?n=3&interval=4&stall_at=0&stall=40&accel=1",
             ("complete", 4, False, False)),
    Scenario("gzip on text/event-stream, buffering on", nginx_defaults(gzip=True, gzip_types=("text/event-stream",)),
             "/sse?n=6&interval=4", ("complete", 7, True, True), client="gzip", head_hold=10,
             why="gzip buffers too: the whole stream (headers included) arrives at the end"),
    Scenario("gzip, but gzip_types left at nginx's default (text/html)", nginx_defaults(gzip=True),
             "/sse?n=6&interval=4", ("complete", 7, False, False), client="gzip"),
    Scenario("gzip with X-Accel-Buffering: no", nginx_defaults(gzip=True, gzip_types=("text/event-stream",)),
             "/sse?n=6&interval=4&accel=1", ("complete", 7, False, False), client="gzip",
             why="unbuffered responses are gzip-flushed on every read"),
    Scenario("gzip with proxy_buffering off",
             nginx_defaults(gzip=True, gzip_types=("text/event-stream",), proxy_buffering=False),
             "/sse?n=6&interval=4", ("complete", 7, False, False), client="gzip"),
    Scenario("gzip + proxy_read_timeout mid-stream", nginx_defaults(gzip=True, gzip_types=("text/event-stream",)),
             "/sse?n=6&interval=4&stall_at=3", ("cut", 3, True, True), client="gzip", head_hold=10,
             why="what gzip held is flushed when the timeout fires, then the connection is closed"),
    Scenario("upstream crashes mid-stream", nginx_defaults(), "/sse?n=6&interval=4&crash_at=3", ("cut", 3, False, False)),
    Scenario("upstream crashes, chunked_transfer_encoding off", nginx_defaults(chunked_transfer_encoding=False),
             "/sse?n=6&interval=4&crash_at=3", ("complete", 3, False, False),
             why="close-delimited body: the client cannot tell the cut from the end (silent truncation)"),
    Scenario("response header bigger than proxy_buffer_size", nginx_defaults(), "/sse?n=1&bighead=5000",
             ("http 502", 0, False, False), why="upstream sent too big header"),
    Scenario("upstream down", nginx_defaults(), "/sse", ("http 502", 0, False, False), upstream="down"),
    Scenario("POST body, content-length response (buffered)", nginx_defaults(), "/sse?n=3&interval=4&length=1",
             ("complete", 4, True, True), method="POST", body=b'{"stream": true}' * 1000, head_hold=6),
    Scenario("send_timeout: the client stops reading", nginx_defaults() + [hops.SendTimeout(seconds=T)],
             "/sse?n=12000&size=1000", ("cut", None, False, False), client="slow"),
    Scenario("proxy_send_timeout: the upstream does not read the request",
             nginx_defaults() + [hops.UpstreamSendTimeout(seconds=T)], "/upload", ("http 504", 0, False, False),
             upstream="deaf", method="POST", body=b"x" * (16 << 20), settings={"client_max_body_size": 0}),
]


@dataclass
class Outcome:
    outcome: str
    events: int | None
    head_held: bool
    events_held: bool
    detail: dict = field(default_factory=dict)

    def key(self) -> tuple:
        return (self.outcome, self.events, self.head_held, self.events_held)


def summarize(seen: Seen, scenario: Scenario) -> Outcome:
    outcome = seen.outcome if seen.status in (200, None) else f"http {seen.status}"
    if seen.status not in (200, None):
        events = 0
    else:
        events = len(seen.events)
    head_held = seen.status == 200 and seen.head_at is not None and seen.head_at > to_real(scenario.head_hold)
    events_held = len(seen.events) > 2 and seen.spread() < 0.25 * (seen.ended_at - (seen.head_at or 0) + 0.001) \
        and seen.spread() < to_real(4)
    return Outcome(outcome, events, head_held, events_held,
                   {"head_at": seen.head_at, "spread": seen.spread(), "ended_at": seen.ended_at,
                    "error": repr(seen.error)})


def slow_client(port: int, path: str) -> Outcome:
    """Read the head, stop reading for longer than send_timeout, then read the rest."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head = sock.recv(100)
    time.sleep(to_real(T) + 0.6)
    sock.settimeout(10)
    got = b""
    while chunk := sock.recv(1 << 20):
        got += chunk
    sock.close()
    complete = got.endswith(b"0\r\n\r\n")
    status = "cut" if head.startswith(b"HTTP/1.1 200") and not complete else "complete"
    return Outcome(status, None, False, False, {"bytes": len(got)})


def run(proxy_cls, scenario: Scenario, upstream_url: str) -> Outcome:
    with proxy_cls(upstream=upstream_url, faults=scenario.faults, **scenario.settings) as proxy:
        if scenario.client == "slow":
            return slow_client(proxy.port, scenario.path)
        headers = {"accept-encoding": "gzip"} if scenario.client == "gzip" else {"accept-encoding": "identity"}
        with httpx.Client() as client:
            seen = observe(client, proxy.url + scenario.path, method=scenario.method, content=scenario.body,
                           headers=headers, read_timeout=to_real(10 * T))
        return summarize(seen, scenario)


@pytest.fixture(autouse=True)
def nothing_left_running():
    with time_scale(SCALE):
        yield
    assert running_servers() == [], f"servers left running: {running_servers()}"
    assert leftover_nginx() == [], "an nginx process outlived its test"


@contextlib.contextmanager
def upstream_for(scenario: Scenario) -> Iterator[str]:
    """The upstream ``scenario`` names, running for the block: yields its URL (tools/data.py uses it too)."""
    if scenario.upstream == "down":
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()  # nobody listens there now
        yield f"http://127.0.0.1:{port}"
    elif scenario.upstream in ("deaf", "raw"):
        other = DeafUpstream() if scenario.upstream == "deaf" else RawSSEUpstream()
        try:
            yield other.url
        finally:
            other.close()
    else:
        with ThreadedASGIServer(SSEUpstream(), name="conformance-upstream") as server:
            yield server.url


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_embedded_proxy_matches_real_nginx(scenario: Scenario):
    with upstream_for(scenario) as url:
        real = run(NginxProxy, scenario, url)
        ours = run(Proxy, scenario, url)
    assert real.key() == scenario.expected, f"real nginx {nginx_version()} did {real}; {scenario.why}"
    assert ours.key() == real.key(), f"embedded proxy {ours} differs from real nginx {real}"


def test_nginx_error_log_is_captured():
    with time_scale(SCALE), ThreadedASGIServer(SSEUpstream()) as upstream, \
            NginxProxy(upstream=upstream.url, faults=nginx_defaults()) as nginx, httpx.Client() as client:
        assert nginx.kind == f"real nginx {nginx_version()}"
        seen = observe(client, nginx.url + "/sse?n=4&interval=2&stall_at=2")
        deadline = time.monotonic() + 5
        while not nginx.log_lines("upstream timed out") and time.monotonic() < deadline:
            time.sleep(0.02)
        lines = nginx.log_lines("upstream timed out")
        log = nginx.log
    assert seen.outcome == "cut"
    assert "upstream timed out (110: Connection timed out) while reading upstream" in lines[0]
    assert [e.note for e in log.of("fault")][0].startswith("nginx: upstream timed out")
    assert log.of("close") and log.of("status")[0].note == "200"


def test_inject_reloads_nginx_without_dropping_a_stream_in_flight():
    with time_scale(SCALE), ThreadedASGIServer(SSEUpstream()) as upstream, \
            NginxProxy(upstream=upstream.url) as nginx, httpx.Client() as client:
        assert "proxy_buffering off;" in nginx.config
        with client.stream("GET", nginx.url + "/sse?n=6&interval=10") as response:
            lines = response.iter_bytes()
            first = next(lines)
            with nginx.inject(hops.ReadTimeout(seconds=T)):
                assert f"proxy_read_timeout {int(to_real(T) * 1000)}ms;" in nginx.config
                timed = observe(client, nginx.url + "/sse?ttfb=300")
                rest = b"".join(lines)
        assert first.startswith(b"data: 0") and rest.endswith(b"data: [DONE]\n\n")
        assert timed.status == 504
        assert "proxy_read_timeout 1d;" in nginx.config  # removed again on exit
