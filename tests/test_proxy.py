"""The embedded reverse proxy: every hop fault, over real sockets, asserting what the client sees.

Time runs at 1/100 (``time_scale(0.01)``): a 30 s proxy timeout takes 0.3 s. The
upstream is a tiny plain-ASGI SSE app (``sse_upstream``) on a real loopback
socket; its query string scripts the stream, so faults fire at known moments.
``tests/test_nginx_conformance.py`` imports the app and the observer from here.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs

import httpx
import psutil
import pytest

from streamlab import hops
from streamlab._nginx import NginxUnsupported, nginx_conf, proxy_for
from streamlab._proxy import Proxy, Rule
from streamlab._servers import ThreadedASGIServer, running_servers
from streamlab._timescale import time_scale, to_real

ROOT = Path(__file__).resolve().parent.parent
SCALE = 0.01


# --------------------------------------------------------------------------- the test upstream


class SSEUpstream:
    """Plain-ASGI SSE server scripted by the query string (durations in scenario seconds).

    n=5           events ``data: <i> <pad>``, then ``data: [DONE]``
    interval=0    seconds between events
    ttfb=0        seconds before the response headers
    stall_at=-1   before event k, wait ``stall`` seconds (stall=-1: forever); k=0: after the headers
    crash_at=-1   before event k, raise (uvicorn drops the connection: no terminating chunk)
    accel=1       send ``X-Accel-Buffering: no``
    length=1      Content-Length instead of chunked
    size=0        padding bytes per event
    bighead=0     an extra header this long
    type=...      content type (default text/event-stream)
    id=...        remembered in ``finished`` with the time the last byte was sent
    The request body's size and sha1 come back in ``x-body-bytes`` / ``x-body-sha1``.
    """

    def __init__(self) -> None:
        self.finished: dict[str, float] = {}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return
        q = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        n, interval = int(q.get("n", 5)), float(q.get("interval", 0))
        stall_at, stall = int(q.get("stall_at", -1)), float(q.get("stall", -1))
        pad = b"x" * int(q.get("size", 0))
        events = [b"data: %d %b\n\n" % (i, pad) for i in range(n)] + [b"data: [DONE]\n\n"]
        headers = [(b"content-type", q.get("type", "text/event-stream").encode()), (b"cache-control", b"no-cache"),
                   (b"x-body-bytes", str(len(body)).encode()),
                   (b"x-body-sha1", hashlib.sha1(body).hexdigest().encode())]
        if q.get("accel") == "1":
            headers.append((b"x-accel-buffering", b"no"))
        if int(q.get("bighead", 0)):
            headers.append((b"x-big", b"y" * int(q["bighead"])))
        if q.get("length") == "1":
            headers.append((b"content-length", str(sum(map(len, events))).encode()))
        await asyncio.sleep(to_real(float(q.get("ttfb", 0))))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for i, event in enumerate(events):
            if i == stall_at:
                await asyncio.sleep(to_real(stall) if stall >= 0 else 3600)
            if i == int(q.get("crash_at", -1)):
                raise RuntimeError("test upstream crashes on purpose")
            if i and interval:
                await asyncio.sleep(to_real(interval))
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        if "id" in q:
            self.finished[q["id"]] = time.perf_counter()


class RawListener:
    """A loopback listening socket on raw sockets: each connection is kept (closed by ``close()``)
    and handed to ``_serve`` on a thread of its own. The raw-socket upstreams below build on it."""

    backlog = 16
    rcvbuf: int | None = None  # SO_RCVBUF of the listening socket (accepted sockets inherit it)

    def __init__(self) -> None:
        self.sock = socket.socket()
        if self.rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(self.backlog)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        """Handle one connection (the default: never read from it)."""

    def close(self) -> None:
        self.sock.close()
        for conn in self.conns:
            conn.close()


class DeafUpstream(RawListener):
    """Accepts connections and never reads from them (for proxy_send_timeout)."""

    rcvbuf = 4096


class RawSSEUpstream(RawListener):
    """An SSE server that does not use chunked encoding (as many do for nginx's HTTP/1.0 requests).

    Query: ``mode=close`` (HTTP/1.0, body ends when the connection closes) or ``mode=length``
    (Content-Length), ``n`` events every ``interval`` scenario seconds, ``accel=1``.
    """

    def _serve(self, conn: socket.socket) -> None:
        try:
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(65536)
            target = request.split(b" ", 2)[1].decode()
            q = {k: v[0] for k, v in parse_qs(target.partition("?")[2]).items()}
            events = [b"data: %d\n\n" % i for i in range(int(q.get("n", 5)))] + [b"data: [DONE]\n\n"]
            if q.get("mode") == "length":
                head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n" % sum(map(len, events))
            else:
                head = b"HTTP/1.0 200 OK\r\nConnection: close\r\n"
            head += b"Content-Type: text/event-stream\r\n"
            if q.get("accel") == "1":
                head += b"X-Accel-Buffering: no\r\n"
            conn.sendall(head + b"\r\n")
            for event in events:
                time.sleep(to_real(float(q.get("interval", 0))))
                conn.sendall(event)
            conn.close()
        except OSError:
            pass


# --------------------------------------------------------------------------- what the client sees


@dataclass
class Seen:
    """What one client request saw: status, when the head came, each SSE event with its arrival time."""

    status: int | None = None
    headers: dict = field(default_factory=dict)
    head_at: float | None = None
    events: list[tuple[float, bytes]] = field(default_factory=list)
    outcome: str = ""  # complete | cut | reset | stalled | no response | connect error
    error: BaseException | None = None
    body: bytes = b""
    ended_at: float = 0.0

    @property
    def data(self) -> list[bytes]:
        return [e for _, e in self.events]

    @property
    def done(self) -> bool:
        return bool(self.events) and self.events[-1][1] == b"data: [DONE]"

    def spread(self) -> float:
        """Seconds between the first and the last event (0: they came together)."""
        return self.events[-1][0] - self.events[0][0] if len(self.events) > 1 else 0.0


def observe(client: httpx.Client, url: str, *, method: str = "GET", content=None, headers=None,
            read_timeout: float = 5.0) -> Seen:
    seen = Seen()
    t0 = time.perf_counter()
    buf = b""
    try:
        with client.stream(method, url, content=content, headers=headers,
                           timeout=httpx.Timeout(10.0, read=read_timeout)) as response:
            seen.status = response.status_code
            seen.headers = dict(response.headers)
            seen.head_at = time.perf_counter() - t0
            for chunk in response.iter_bytes():
                now = time.perf_counter() - t0
                seen.body += chunk
                buf += chunk
                while b"\n\n" in buf:
                    event, buf = buf.split(b"\n\n", 1)
                    seen.events.append((now, event))
        seen.outcome = "complete"
    except httpx.RemoteProtocolError as exc:
        seen.error = exc
        seen.outcome = "no response" if seen.status is None else "cut"
    except httpx.ReadTimeout as exc:
        seen.error = exc
        seen.outcome = "stalled"
    except httpx.ReadError as exc:
        seen.error = exc
        seen.outcome = "reset" if "reset" in str(exc).lower() or "104" in str(exc) else "read error"
    except httpx.ConnectError as exc:
        seen.error = exc
        seen.outcome = "connect error"
    seen.ended_at = time.perf_counter() - t0
    return seen


def raw_exchange(port: int, data: bytes, timeout: float = 3.0) -> bytes:
    """Send raw bytes, read until the server closes (or ``timeout``)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        out = b""
        try:
            while chunk := sock.recv(65536):
                out += chunk
        except (socket.timeout, ConnectionResetError):
            out += b"<no close>"
    return out


def dechunk(raw: bytes) -> tuple[bytes, bool]:
    """Body of a raw chunked HTTP response, and whether the terminating chunk arrived."""
    rest = raw.split(b"\r\n\r\n", 1)[1]
    body = bytearray()
    while rest:
        size_line, sep, rest = rest.partition(b"\r\n")
        if not sep:
            return bytes(body), False
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return bytes(body), True
        body += rest[:size]
        if len(rest) < size + 2:
            return bytes(body), False
        rest = rest[size + 2:]
    return bytes(body), False


CLI_ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
CLI_PROXY = [sys.executable, "-m", "streamlab._cli_proxy"]


@contextlib.contextmanager
def cli_proxy(*args: str) -> Iterator[tuple[subprocess.Popen, str]]:
    """``python -m streamlab._cli_proxy ARGS`` for the block: yields the process (its stdout at the line
    after "listening on") and the URL it listens on; SIGTERMed after the block, it must exit with 0."""
    proc = subprocess.Popen([*CLI_PROXY, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=CLI_ENV)
    try:
        line = proc.stdout.readline()
        assert "listening on http://127.0.0.1:" in line, line + proc.stderr.read()
        yield proc, line.split("listening on ")[1].split()[0]
    finally:
        proc.terminate()
        code = proc.wait(10)
    assert code == 0


def leftover_nginx() -> list[psutil.Process]:
    """nginx processes started by this test process (masters are our children, workers theirs)."""
    out = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and "nginx" in proc.name():
                out.append(proc)
        except psutil.Error:
            pass
    return out


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def nothing_left_running():
    yield
    assert running_servers() == [], f"servers left running: {running_servers()}"
    assert leftover_nginx() == [], "an nginx process outlived its test"


@pytest.fixture(autouse=True)
def scaled():
    with time_scale(SCALE):
        yield


@pytest.fixture
def upstream():
    app = SSEUpstream()
    with ThreadedASGIServer(app, name="test-upstream") as server:
        server.app_ = app
        yield server


@pytest.fixture
def client():
    with httpx.Client() as c:
        yield c


def proxied(upstream, *faults, **settings) -> Proxy:
    return Proxy(upstream=upstream.url, faults=faults, **settings)


# --------------------------------------------------------------------------- plumbing


def test_passthrough_streams_every_event_as_it_comes(upstream, client):
    with proxied(upstream) as proxy:
        seen = observe(client, proxy.url + "/sse?n=8&interval=5")
    assert seen.outcome == "complete" and seen.status == 200 and seen.done
    assert seen.data[:2] == [b"data: 0 ", b"data: 1 "] and len(seen.events) == 9
    assert seen.spread() > 0.7 * to_real(8 * 5)  # not held back: they came 50 ms apart
    assert seen.headers["transfer-encoding"] == "chunked"


def test_keep_alive_post_bodies_and_hop_log(upstream, client):
    body = os.urandom(100_000)
    with proxied(upstream) as proxy:
        first = observe(client, proxy.url + "/sse?n=2", method="POST", content=body)
        second = observe(client, proxy.url + "/sse?n=2", method="POST", content=iter([b"chunked ", b"body"]))
        opens = proxy.log.of("open")
    assert first.outcome == second.outcome == "complete"
    assert first.headers["x-body-bytes"] == "100000"
    assert first.headers["x-body-sha1"] == hashlib.sha1(body).hexdigest()
    assert second.headers["x-body-bytes"] == "12"  # a chunked request body arrives whole
    assert [e.note.split()[0] for e in opens] == ["POST", "POST"]
    assert opens[0].conn == opens[1].conn  # one client connection, kept alive
    assert proxy.log.bytes("out") > len(first.body) + len(second.body)
    assert [e.note for e in proxy.log.of("close")] == ["eof", "eof"]


def test_content_length_body_and_base_path(upstream, client):
    with Proxy(upstream=upstream.url + "/base") as proxy:
        seen = observe(client, proxy.url + "/sse?n=3&length=1")
    assert seen.outcome == "complete" and seen.done
    assert "content-length" in seen.headers and "transfer-encoding" not in seen.headers


def test_pipelined_requests_http10_and_head(upstream):
    with proxied(upstream) as proxy:
        two = raw_exchange(proxy.port, b"GET /sse?n=1 HTTP/1.1\r\nHost: x\r\n\r\n"
                                       b"GET /sse?n=2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        old = raw_exchange(proxy.port, b"GET /sse?n=1 HTTP/1.0\r\n\r\n")
        head = raw_exchange(proxy.port, b"HEAD /sse?n=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert two.count(b"HTTP/1.1 200 OK") == 2 and two.index(b"data: 0") < two.index(b"data: 1")
    assert two.endswith(b"0\r\n\r\n")
    assert b"Connection: close" in old and b"Transfer-Encoding" not in old and old.endswith(b"data: [DONE]\n\n")
    assert head.startswith(b"HTTP/1.1 200") and b"data:" not in head


def test_upstream_down_is_502_like_nginx(client):
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{port.getsockname()[1]}"
    port.close()  # nothing listens there now
    with Proxy(upstream=url) as proxy:
        seen = observe(client, proxy.url + "/v1/chat/completions")
        faults = proxy.log.of("fault")
    assert seen.status == 502 and b"502 Bad Gateway" in seen.body
    assert "connect() failed (111: Connection refused)" in faults[0].note


@pytest.mark.parametrize("raw, reason", [
    (b"GARBAGE\r\n\r\n", b"malformed HTTP request"),
    (b"GET / HTTP/1.1\r\n\r\n", b"without \"Host\" header"),
    (b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", b"must start with '/'"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", b"malformed HTTP request"),
])
def test_bad_requests_get_400_with_a_reason_and_a_close(upstream, raw, reason):
    with proxied(upstream) as proxy:
        out = raw_exchange(proxy.port, raw)
        still_serving = raw_exchange(proxy.port, b"GET /sse?n=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400 Bad Request") and reason in out and b"Connection: close" in out
    assert not out.endswith(b"<no close>")  # answered and closed, never a hang
    assert still_serving.startswith(b"HTTP/1.1 200")


def test_client_leaving_closes_the_upstream(upstream):
    with proxied(upstream) as proxy:
        with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
            sock.sendall(b"GET /sse?n=3&stall_at=1 HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        deadline = time.monotonic() + 3
        while not proxy.log.of("close") and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [e.note for e in proxy.log.of("close")] == ["client closed"]


# --------------------------------------------------------------------------- nginx timeouts


def test_read_timeout_before_headers_is_504(upstream, client):
    with proxied(upstream, hops.ReadTimeout(seconds=30)) as proxy:
        seen = observe(client, proxy.url + "/sse?ttfb=200")
        fault = proxy.log.of("fault")[0].note
    assert seen.status == 504 and b"504 Gateway Time-out" in seen.body
    assert to_real(30) * 0.9 < seen.ended_at < to_real(30) + 1.0  # fires in scenario time: 0.3 s
    assert "while reading response header from upstream" in fault


def test_read_timeout_after_headers_cuts_the_stream(upstream, client):
    with proxied(upstream, hops.ReadTimeout(seconds=30)) as proxy:
        seen = observe(client, proxy.url + "/sse?n=8&interval=5&stall_at=3")
    assert seen.status == 200 and seen.outcome == "cut"
    assert seen.data == [b"data: 0 ", b"data: 1 ", b"data: 2 "]
    assert "incomplete chunked read" in str(seen.error)
    gap = seen.ended_at - seen.events[-1][0]
    assert to_real(30) * 0.9 < gap < to_real(30) + 1.0


def test_read_timeout_is_idle_time_not_total_time(upstream, client):
    with proxied(upstream, hops.ReadTimeout(seconds=30)) as proxy:
        seen = observe(client, proxy.url + "/sse?n=6&interval=10")  # 50 s in all, never 30 s idle
    assert seen.outcome == "complete" and len(seen.events) == 7


def test_read_timeout_after_headers_before_any_byte_is_200_then_cut_when_buffered(upstream, client):
    """Measured on nginx 1.22: buffering holds the headers, but a timeout still sends them, then cuts."""
    with proxied(upstream, hops.ReadTimeout(seconds=30), hops.Buffering()) as proxy:
        seen = observe(client, proxy.url + "/sse?n=3&stall_at=0")
    assert seen.status == 200 and seen.outcome == "cut" and seen.events == []
    assert seen.head_at > to_real(30) * 0.9  # the head waited for a first byte that never came


def test_upstream_send_timeout_on_an_upstream_that_does_not_read(client):
    deaf = DeafUpstream()
    try:
        with Proxy(upstream=deaf.url, faults=[hops.UpstreamSendTimeout(seconds=30)],
                   client_max_body_size=0) as proxy:
            seen = observe(client, proxy.url + "/upload", method="POST", content=b"x" * (16 << 20))
            fault = proxy.log.of("fault")[0].note
    finally:
        deaf.close()
    assert seen.status == 504
    assert "while sending request to upstream" in fault


def test_send_timeout_cuts_a_client_that_stops_reading(upstream):
    with proxied(upstream, hops.SendTimeout(seconds=30)) as proxy:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", proxy.port))
        sock.sendall(b"GET /sse?n=12000&size=1000 HTTP/1.1\r\nHost: x\r\n\r\n")  # 12 MB: more than socket buffers
        assert sock.recv(100).startswith(b"HTTP/1.1 200")
        time.sleep(to_real(30) + 0.5)  # the client does not read for longer than send_timeout
        sock.settimeout(5)
        got = b""
        while chunk := sock.recv(1 << 20):
            got += chunk
        sock.close()
        fault = proxy.log.of("fault")[0].note
    body, complete = dechunk(got)
    assert not complete and body.count(b"data: ") < 12001  # cut, not complete
    assert "client timed out" in fault


# --------------------------------------------------------------------------- buffering and gzip


def test_buffering_holds_only_the_headers_until_the_first_byte(upstream, client):
    with proxied(upstream, hops.Buffering()) as proxy:
        held = observe(client, proxy.url + "/sse?n=4&interval=5&stall_at=0&stall=40")
        flowing = observe(client, proxy.url + "/sse?n=8&interval=5")
    with proxied(upstream) as proxy:
        direct = observe(client, proxy.url + "/sse?n=4&interval=5&stall_at=0&stall=40")
    assert held.head_at > to_real(40) * 0.9  # headers held until the first event
    assert direct.head_at < to_real(40) * 0.5  # without buffering they come at once
    assert flowing.outcome == "complete" and flowing.spread() > 0.7 * to_real(8 * 5)  # events not held


def test_buffering_holds_a_body_that_is_not_chunked(client):
    """Measured on nginx 1.22: Content-Length or close-delimited bodies leave in full buffers or at the end."""
    raw = RawSSEUpstream()
    try:
        with Proxy(upstream=raw.url, faults=[hops.Buffering()]) as proxy:
            close = observe(client, proxy.url + "/?mode=close&n=6&interval=5")
            length = observe(client, proxy.url + "/?mode=length&n=6&interval=5")
            accel = observe(client, proxy.url + "/?mode=close&n=6&interval=5&accel=1")
        with Proxy(upstream=raw.url) as proxy:
            unbuffered = observe(client, proxy.url + "/?mode=close&n=6&interval=5")
    finally:
        raw.close()
    for held in (close, length):
        assert held.outcome == "complete" and held.done and len(held.events) == 7
        assert held.spread() < 0.05 and held.head_at > 0.8 * to_real(7 * 5)  # all at the end, headers too
    for flowing in (accel, unbuffered):
        assert flowing.done and flowing.spread() > 0.7 * to_real(6 * 5)


def test_x_accel_buffering_no_turns_buffering_off_per_response(upstream, client):
    with proxied(upstream, hops.Buffering()) as proxy:
        seen = observe(client, proxy.url + "/sse?n=2&stall_at=0&stall=40&accel=1")
    assert seen.head_at < to_real(40) * 0.5 and seen.outcome == "complete"
    assert "x-accel-buffering" not in seen.headers  # nginx hides X-Accel-* from the client


def test_buffering_reads_the_upstream_whatever_the_client_does(upstream):
    with proxied(upstream, hops.Buffering()) as proxy:
        with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
            sock.sendall(b"GET /sse?n=16000&size=1000&id=slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            deadline = time.monotonic() + 10
            while "slow" not in upstream.app_.finished and time.monotonic() < deadline:
                time.sleep(0.01)  # we read nothing meanwhile: 16 MB is more than the socket buffers hold
            assert "slow" in upstream.app_.finished  # the model finished while the client had not read
            got = bytearray()
            while chunk := sock.recv(1 << 20):
                got += chunk
        holds = proxy.log.of("hold")
    body, complete = dechunk(bytes(got))
    assert complete and body.count(b"data: ") == 16001
    assert holds and max(e.nbytes for e in holds) > 1_000_000  # what the proxy held for the slow client


def test_too_big_response_header_is_502(upstream, client):
    with proxied(upstream, hops.Buffering(buffer_size=4096)) as proxy:
        ok = observe(client, proxy.url + "/sse?n=1&bighead=3600")
        big = observe(client, proxy.url + "/sse?n=1&bighead=5000")
        fault = proxy.log.of("fault")[0].note
    assert ok.status == 200 and big.status == 502
    assert fault.endswith("upstream sent too big header while reading response header from upstream")


def test_gzip_with_buffering_holds_an_sse_stream_to_the_end(upstream, client):
    with proxied(upstream, hops.Buffering(), hops.Gzip()) as proxy:
        seen = observe(client, proxy.url + "/sse?n=8&interval=5", headers={"accept-encoding": "gzip"})
    assert seen.outcome == "complete" and seen.headers["content-encoding"] == "gzip" and seen.done
    assert seen.head_at > to_real(8 * 5) * 0.8  # even the headers waited
    assert seen.spread() < 0.05  # every event in one burst at the end


def test_gzip_flushes_every_read_when_not_buffered(upstream, client):
    with proxied(upstream, hops.Buffering(), hops.Gzip()) as proxy:
        accel = observe(client, proxy.url + "/sse?n=8&interval=5&accel=1", headers={"accept-encoding": "gzip"})
    with proxied(upstream, hops.Gzip()) as proxy:
        plain = observe(client, proxy.url + "/sse?n=8&interval=5", headers={"accept-encoding": "gzip"})
        identity = observe(client, proxy.url + "/sse?n=2", headers={"accept-encoding": "identity"})
        html = observe(client, proxy.url + "/sse?n=2&type=application/json", headers={"accept-encoding": "gzip"})
    for seen in (accel, plain):
        assert seen.headers["content-encoding"] == "gzip" and seen.done
        assert seen.spread() > 0.7 * to_real(8 * 5)
    assert "content-encoding" not in identity.headers and "content-encoding" not in html.headers


def test_gzip_flushes_what_it_holds_before_a_cut(upstream, client):
    with proxied(upstream, hops.ReadTimeout(seconds=30), hops.Buffering(), hops.Gzip()) as proxy:
        seen = observe(client, proxy.url + "/sse?n=8&interval=5&stall_at=3", headers={"accept-encoding": "gzip"})
    assert seen.outcome == "cut" and seen.data == [b"data: 0 ", b"data: 1 ", b"data: 2 "]
    assert seen.spread() < 0.05 and seen.head_at > to_real(30)  # all held until the timeout


def test_chunked_transfer_encoding_off_makes_a_cut_look_complete(upstream, client):
    with proxied(upstream, hops.ChunkedEncoding(on=False)) as proxy:
        hidden = observe(client, proxy.url + "/sse?n=6&crash_at=3")
        whole = observe(client, proxy.url + "/sse?n=2")
    with proxied(upstream) as proxy:
        visible = observe(client, proxy.url + "/sse?n=6&crash_at=3")
    assert hidden.outcome == "complete" and len(hidden.events) == 3 and not hidden.done  # silent truncation
    assert hidden.headers["connection"] == "close" and "transfer-encoding" not in hidden.headers
    assert whole.outcome == "complete" and whole.done
    assert visible.outcome == "cut" and len(visible.events) == 3


# --------------------------------------------------------------------------- balancer, gateway, serverless


def test_idle_timeout_of_a_load_balancer(upstream, client):
    with Proxy(upstream=upstream.url, profile="load_balancer") as proxy:  # 60 s idle
        before = observe(client, proxy.url + "/sse?ttfb=100")
        after = observe(client, proxy.url + "/sse?n=5&interval=10&stall_at=2")
        fine = observe(client, proxy.url + "/sse?n=5&interval=20")  # 80 s, never 60 s idle
    assert before.status == 504 and b"awselb" in before.body
    assert after.outcome == "cut" and len(after.events) == 2
    assert fine.outcome == "complete"


def test_gateway_deadline_counts_the_whole_request(upstream, client):
    with proxied(upstream, hops.Deadline(seconds=29)) as proxy:
        before = observe(client, proxy.url + "/sse?ttfb=60")
        flowing = observe(client, proxy.url + "/sse?n=30&interval=2")  # data all the time, 60 s long
    assert before.status == 504 and before.body == b'{"message": "Endpoint request timed out"}'
    assert before.headers["content-type"] == "application/json"
    assert flowing.outcome == "cut" and 10 <= len(flowing.events) <= 17  # about 29 s / 2 s
    assert to_real(29) * 0.9 < flowing.ended_at < to_real(29) + 1.0


def test_serverless_kill_after(upstream, client):
    with Proxy(upstream=upstream.url, profile="serverless") as proxy:  # 10 s
        before = observe(client, proxy.url + "/sse?ttfb=20")
        during = observe(client, proxy.url + "/sse?n=20&interval=1")
    assert before.status == 504 and b"FUNCTION_INVOCATION_TIMEOUT" in before.body
    assert during.outcome == "cut" and 5 <= len(during.events) <= 11


def test_time_scale_is_read_when_the_fault_acts(upstream, client):
    with proxied(upstream) as proxy, proxy.inject(hops.ReadTimeout(seconds=30)):
        with time_scale(0.02):  # set after the fault was made: 30 s -> 0.6 s
            seen = observe(client, proxy.url + "/sse?ttfb=100")
    assert seen.status == 504 and 0.5 < seen.ended_at < 1.5


# --------------------------------------------------------------------------- byte limits and resets


def test_cut_after_bytes(upstream, client):
    with proxied(upstream, hops.CutAfterBytes(nbytes=25)) as proxy:
        seen = observe(client, proxy.url + "/sse?n=10")
    assert seen.outcome == "cut" and seen.body == b"data: 0 \n\ndata: 1 \n\ndata: 2 "[:25]


def test_reset_after_bytes(upstream, client):
    with proxied(upstream, hops.ResetAfterBytes(nbytes=20)) as proxy:
        seen = observe(client, proxy.url + "/sse?n=10&interval=2")
        closes = [e.note for e in proxy.log.of("close")]
    with proxied(upstream, hops.ResetAfterBytes(nbytes=0)) as proxy:
        nothing = observe(client, proxy.url + "/sse?n=10")
    assert seen.outcome == "reset" and seen.status == 200 and seen.body == b"data: 0 \n\ndata: 1 \n\n"
    assert closes == ["reset"]
    assert nothing.status is None and nothing.outcome in ("reset", "no response")


# --------------------------------------------------------------------------- scope, rules, registry, profiles


def test_inject_is_scoped_and_removed_on_error(upstream, client):
    with proxied(upstream) as proxy:
        assert proxy.faults == []
        with pytest.raises(RuntimeError):
            with proxy.inject(hops.ReadTimeout(seconds=30)):
                assert observe(client, proxy.url + "/sse?ttfb=100").status == 504
                raise RuntimeError("the notebook cell failed")
        assert proxy.faults == []
        assert observe(client, proxy.url + "/sse?ttfb=40").status == 200


def test_rules_apply_by_path_prefix_and_the_last_added_wins(upstream, client):
    with proxied(upstream, hops.ReadTimeout(seconds=60)) as proxy:
        with proxy.inject(hops.ReadTimeout(seconds=10), path_prefix="/slow"):
            assert proxy.chain("/slow/x")[1] == hops.ReadTimeout(seconds=10)
            assert proxy.chain("/fast")[1] == hops.ReadTimeout(seconds=60)
            assert observe(client, proxy.url + "/slow/sse?ttfb=30").status == 504
            assert observe(client, proxy.url + "/fast/sse?ttfb=30").status == 200
        assert proxy.chain("/slow/x") == [hops.Noop(), hops.ReadTimeout(seconds=60)]


def test_chain_starts_with_a_noop_and_is_ordered_by_stage():
    proxy = Proxy(upstream="http://127.0.0.1:1", faults=[hops.Gzip(), hops.CutAfterBytes(nbytes=5),
                                                         hops.Buffering(), hops.ReadTimeout()])
    assert [type(f) for f in proxy.chain()] == [hops.Noop, hops.ReadTimeout, hops.Buffering, hops.Gzip,
                                                hops.CutAfterBytes]


def test_faults_are_frozen_and_keyword_only():
    fault = hops.ReadTimeout(seconds=30)
    with pytest.raises(Exception):
        fault.seconds = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        hops.ReadTimeout(30)  # type: ignore[misc]


def test_registry_names_and_specs():
    assert hops.names() == ["noop", "read_timeout", "upstream_send_timeout", "send_timeout", "idle_timeout",
                            "deadline", "kill_after", "origin_read_timeout", "backend_timeout", "router_timeout",
                            "buffering", "gzip", "chunked", "cut_after_bytes", "reset_after_bytes"]
    assert hops.from_spec("read_timeout=30") == hops.ReadTimeout(seconds=30)
    assert hops.from_spec("read-timeout=500ms") == hops.ReadTimeout(seconds=0.5)
    assert hops.from_spec("buffering=on:buffer_size=8k:buffers=4x8k") == hops.Buffering(
        buffer_size=8192, buffers=(4, 8192))
    assert hops.from_spec("gzip:types=text/event-stream") == hops.Gzip(types=("text/event-stream",))
    assert hops.parse("deadline=29;chunked=off") == [hops.Deadline(seconds=29), hops.ChunkedEncoding(on=False)]
    for fault in (hops.ReadTimeout(seconds=2.5), hops.Buffering(on=False, buffers=(4, 8192)), hops.Gzip(),
                  hops.ResetAfterBytes(nbytes=10), hops.ChunkedEncoding()):
        assert hops.from_spec(fault.spec()) == fault
    for bad in ("nosuch", "read_timeout=soon", "buffering=maybe", "gzip=1", "cut_after_bytes",
                "buffering:color=red"):
        with pytest.raises(hops.SpecError):
            hops.from_spec(bad)
    assert Proxy(upstream="http://127.0.0.1:1", faults=["read_timeout=30"]).faults == [hops.ReadTimeout(seconds=30)]


def test_profiles():
    assert hops.nginx() == [hops.ReadTimeout(seconds=60), hops.UpstreamSendTimeout(seconds=60),
                            hops.SendTimeout(seconds=60), hops.Buffering()]
    assert hops.Buffering().buffers == (8, 4096) and hops.Buffering().buffer_size == 4096
    assert hops.nginx(gzip=True, chunked_transfer_encoding=False)[-2:] == [hops.Gzip(types=("text/html",)),
                                                                          hops.ChunkedEncoding(on=False)]
    assert Proxy(upstream="http://127.0.0.1:1", profile="api_gateway").faults == [hops.Deadline(seconds=29)]
    assert Proxy(upstream="http://127.0.0.1:1", profile="load_balancer").faults == [hops.IdleTimeout(seconds=60)]
    with pytest.raises(ValueError):
        Proxy(upstream="http://127.0.0.1:1", profile="cdn")
    with pytest.raises(ValueError):
        Proxy(upstream="https://example.invalid")


# --------------------------------------------------------------------------- nginx config (no nginx needed)


def test_nginx_conf_from_the_same_rules():
    rules = [Rule(fault=f) for f in hops.nginx(proxy_read_timeout=30)] + [
        Rule(fault=hops.Gzip(types=("text/event-stream",)), path_prefix="/v1")]
    with time_scale(1.0):
        conf = nginx_conf(upstream="http://127.0.0.1:9/base", port=8080, rules=rules, workdir="/w")
    assert "listen 127.0.0.1:8080;" in conf and "proxy_pass http://127.0.0.1:9/base$request_uri;" in conf
    root, v1 = conf.split("location / {")[1], conf.split("location /v1 {")[1]
    assert "proxy_read_timeout 30000ms;" in root and "proxy_buffering on;" in root and "gzip off;" in root
    assert "proxy_buffers 8 4k;" in root and "proxy_buffer_size 4k;" in root
    assert "gzip on;" in v1.split("}")[0] and "gzip_types text/event-stream;" in v1
    assert "proxy_read_timeout 30000ms;" in v1  # a rule for "/" applies under /v1 too
    bare = nginx_conf(upstream="http://127.0.0.1:9", port=8080, rules=[], workdir="/w")
    assert "proxy_buffering off;" in bare and "proxy_read_timeout 1d;" in bare
    with pytest.raises(NginxUnsupported, match="idle_timeout"):
        nginx_conf(upstream="http://127.0.0.1:9", port=8080, rules=[Rule(fault=hops.IdleTimeout())])


def test_proxy_for_says_which_proxy_it_is(upstream, monkeypatch):
    import streamlab._nginx as nginx_module

    lb = proxy_for(upstream=upstream.url, faults=hops.load_balancer())
    assert isinstance(lb, Proxy) and lb.kind.startswith("embedded proxy (nginx has no directive for idle_timeout")
    monkeypatch.setattr(nginx_module, "nginx_available", lambda: False)
    fallback = proxy_for(upstream=upstream.url, profile="nginx")
    assert isinstance(fallback, Proxy) and fallback.kind == "embedded proxy (nginx not installed)"
    assert proxy_for(upstream=upstream.url, prefer="embedded").kind == "embedded proxy (asked for)"


# --------------------------------------------------------------------------- CLI and the mock model


def test_cli_in_front_of_an_arbitrary_server(upstream, client):
    with cli_proxy("--upstream", upstream.url, "--profile", "nginx", "--read-timeout", "30",
                   "--time-scale", "0.01") as (proc, url):
        assert "read_timeout=30," in proc.stdout.readline()
        ok = observe(client, url + "/sse?n=3&interval=5")
        cut = observe(client, url + "/sse?n=8&interval=5&stall_at=2")
    assert ok.outcome == "complete" and cut.outcome == "cut" and len(cut.events) == 2
    bad = subprocess.run([*CLI_PROXY, "--upstream", upstream.url, "--fault", "nosuch=1"], cwd=ROOT,
                         capture_output=True, text=True, env=CLI_ENV, timeout=30)
    assert bad.returncode == 2 and "unknown hop fault 'nosuch'" in bad.stderr


def test_mock_model_through_the_proxy(client):
    mock_module = pytest.importorskip("streamlab._mock")
    with mock_module.MockLLM(tokens=20, itl=1) as mock, \
            Proxy(upstream=mock.url, profile="nginx", faults=[hops.ReadTimeout(seconds=30)]) as proxy:
        body = b'{"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]}'
        ok = observe(client, proxy.url + "/v1/chat/completions", method="POST", content=body,
                     headers={"content-type": "application/json"})
        stalled = observe(client, proxy.url + "/s/stall@5=300/v1/chat/completions", method="POST", content=body,
                          headers={"content-type": "application/json"})
    assert ok.outcome == "complete" and ok.done
    assert stalled.outcome == "cut" and not stalled.done
    assert sum(b'"content"' in e for e in stalled.data) >= 5
