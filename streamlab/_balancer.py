"""A round-robin HTTP load balancer on a real socket, in a background thread.

    >>> with sl.Uvicorn(app) as a, sl.Uvicorn(app) as b, \\
    ...         sl.Balancer([a, b], sticky="cookie", retry=True, idle_timeout=60) as lb:
    ...     httpx.get(lb.url + "/chat/buffered")
    ...     lb.stats()        # {'requests': {'http://...:1': 1, ...}, 'retries': 0, ...}
    ...     lb.log            # HopLog: open / status / in / out / fault / close events

What a cloud load balancer in front of several app replicas does to a stream,
reduced to the settings that matter (keyword-only, durations in scenario seconds):

    sticky=None            every request goes to the next upstream in turn
    sticky="cookie"        the first answer sets ``streamlab_upstream=<i>``; a client that
                           sends it back (httpx.Client keeps cookies) stays on upstream i
    sticky="x-session-id"  any other string is a request header: one upstream per value
                           (requests without it: round robin)
    sticky="ip"            one upstream per client network (nginx ``ip_hash``: IPv4 /24;
                           every loopback client lands on the same upstream)
    retry=False            True: when the upstream refuses the connection, closes it, or
                           stays idle past ``idle_timeout`` before any byte reached the
                           client, send the same request to the next upstream (what nginx's
                           ``proxy_next_upstream error timeout`` does). The first run may
                           still be going: ``stats()['retries']`` counts the duplicates,
                           and the apps log both runs under one ``X-Request-ID``.
    non_idempotent=False   as nginx (since 1.9.13): a POST, PATCH or LOCK that has been *sent*
                           to an upstream is not retried (502/504 instead), only one whose
                           connection failed; True retries it too (``non_idempotent``), and
                           the model may run twice
    max_fails=1            as nginx's ``server ... max_fails=1 fail_timeout=10s``: an upstream
    fail_timeout=10        that failed max_fails times (refused, closed or timed out before the
                           response) within fail_timeout is skipped for fail_timeout, then
                           tried again; when all are skipped the answer is 502 at once
                           ("no live upstreams"). ``max_fails=0``: never skipped. With a
                           single upstream nothing is ever skipped (nginx does the same).
    idle_timeout=None      no byte in either direction for this long ends the exchange:
                           504 if the client has not had a byte yet (AWS ALB), else the
                           client connection is closed mid-body (its default is 60 s)
    connect_timeout=5      per upstream connection attempt

The same settings run on real nginx with ``balancer_for(upstreams, prefer="nginx", ...)``
(``NginxBalancer``: an ``upstream`` block, ``proxy_next_upstream``; ``Pool`` holds the
shared settings). ``tests/test_nginx_upstream.py`` holds both to the same outcomes; where
they differed nginx won (a sent POST is not retried, ``max_fails``/``fail_timeout``).
What still differs: ``sticky="X-Session-Id"`` on nginx is ``hash ... consistent`` (which
session lands where depends on the ports), not "first seen, next in turn"; nginx keeps
client connections alive and answers its own 502/504 with an HTML page; ``fail_timeout``
is whole seconds on nginx.

Once response bytes have reached the client nothing is retried: a worker that dies
mid-stream is a cut stream for the client (``httpx.RemoteProtocolError``, incomplete
chunked read). One request per client connection (the balancer answers with
``Connection: close``) and one upstream connection per attempt. Every request gets
an ``X-Request-ID`` (``lb-<n>``) unless it has one, and every answer says which
upstream served it in ``X-Streamlab-Upstream``.

HopLog events (``conn`` is the client connection number)::

    open     request head read from the client     note "GET /path"
    status   response head forwarded               note "200 from upstream 1"
    in/out   body bytes from upstream / to client  nbytes
    fault    retry or timeout                      note "retry: upstream 0 closed before the response -> upstream 1"
    close    the exchange ended                    note "complete", "upstream closed mid-response",
                                                   "idle timeout", "client closed", "502", "504"
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import threading
import time
from dataclasses import dataclass
from typing import Any, Sequence
from urllib.parse import urlsplit

from ._servers import LoopThread, Server, bound_socket
from ._timeline import HopLog
from ._timescale import to_real

__all__ = ["Balancer", "Pool", "balancer_for"]

COOKIE = "streamlab_upstream"
_READ = 65536
NON_IDEMPOTENT = frozenset({"POST", "PATCH", "LOCK"})  # nginx: NGX_HTTP_POST|NGX_HTTP_LOCK|NGX_HTTP_PATCH


@dataclass(frozen=True, kw_only=True)
class Pool:
    """The settings ``Balancer`` and nginx's ``upstream`` block share (``_nginx.nginx_upstream``)."""

    upstreams: tuple[str, ...]
    sticky: str | None = None
    retry: bool = False
    non_idempotent: bool = False
    max_fails: int = 1
    fail_timeout: float = 10.0
    idle_timeout: float | None = None
    connect_timeout: float = 5.0
    keepalive: int = 0

    def __post_init__(self) -> None:
        if not self.upstreams:
            raise ValueError("a balancer needs at least one upstream")
        if self.max_fails < 0 or self.fail_timeout <= 0 or self.connect_timeout <= 0 or self.keepalive < 0:
            raise ValueError("max_fails and keepalive are >= 0, fail_timeout and connect_timeout > 0")
        if self.idle_timeout is not None and self.idle_timeout <= 0:
            raise ValueError("idle_timeout is None or > 0")
        if self.non_idempotent and not self.retry:
            raise ValueError("non_idempotent=True only means something with retry=True")
        if self.sticky and not all(c.isalnum() or c == "-" for c in self.sticky):
            raise ValueError(f"sticky is None, 'cookie', 'ip' or a header name, got {self.sticky!r}")

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [(urlsplit(u).hostname or "127.0.0.1", urlsplit(u).port or 80) for u in self.upstreams]


class _Failed(Exception):
    """An attempt ended before any byte reached the client; ``why`` says how, ``sent`` whether
    the request had been written to the upstream (nginx's ``request_sent``)."""

    def __init__(self, why: str, *, timeout: bool = False, sent: bool = True) -> None:
        super().__init__(why)
        self.why = why
        self.timeout = timeout
        self.sent = sent


class _Chunked:
    """Tracks where a chunked body ends, without changing a byte of it."""

    def __init__(self) -> None:
        self.buf = b""
        self.state = "size"
        self.left = 0
        self.done = False

    def feed(self, data: bytes) -> None:
        self.buf += data
        while not self.done:
            if self.state == "size":
                end = self.buf.find(b"\r\n")
                if end < 0:
                    return
                size = int(self.buf[:end].split(b";")[0].strip() or b"0", 16)
                self.buf = self.buf[end + 2:]
                self.state, self.left = ("trailer", 0) if size == 0 else ("data", size)
            elif self.state == "data":
                take = min(self.left, len(self.buf))
                self.buf, self.left = self.buf[take:], self.left - take
                if self.left:
                    return
                self.state = "crlf"
            elif self.state == "crlf":
                if len(self.buf) < 2:
                    return
                self.buf, self.state = self.buf[2:], "size"
            else:  # trailer lines until an empty one
                end = self.buf.find(b"\r\n")
                if end < 0:
                    return
                line, self.buf = self.buf[:end], self.buf[end + 2:]
                self.done = line == b""


def _hung_up(reading: asyncio.Future) -> bool:
    """A finished ``client_reader.read(1)``: True if the client closed (EOF or error)."""
    return reading.cancelled() or reading.exception() is not None or not reading.result()


def _parse_head(head: bytes) -> tuple[str, list[tuple[str, str]]]:
    lines = head.decode("latin-1").split("\r\n")
    headers = []
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers.append((name.strip(), value.strip()))
    return lines[0], headers


def _get(headers: list[tuple[str, str]], name: str) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def _build_head(first: str, headers: list[tuple[str, str]]) -> bytes:
    return (first + "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n").encode("latin-1")


class Balancer(Server):
    """Round-robin HTTP/1.1 balancer over ``upstreams`` (URLs or streamlab servers); see the module docstring."""

    kind = "balancer"

    def __init__(
        self,
        upstreams: Sequence["str | Server"],
        *,
        sticky: str | None = None,
        retry: bool = False,
        non_idempotent: bool = False,
        max_fails: int = 1,
        fail_timeout: float = 10.0,
        idle_timeout: float | None = None,
        connect_timeout: float = 5.0,
        name: str = "balancer",
    ) -> None:
        super().__init__()
        if not upstreams:
            raise ValueError("a balancer needs at least one upstream")
        self.upstreams = list(upstreams)
        self.sticky = sticky.lower() if sticky else None
        self.retry = retry
        self.non_idempotent = non_idempotent
        self.max_fails = max_fails
        self.fail_timeout = fail_timeout
        Pool(upstreams=("x",), sticky=self.sticky, retry=retry, non_idempotent=non_idempotent, max_fails=max_fails,
             fail_timeout=fail_timeout, idle_timeout=idle_timeout, connect_timeout=connect_timeout)  # checks
        self._fails: dict[int, tuple[int, float]] = {}  # upstream -> (failures, when the last one was)
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        self.log = HopLog(name)
        self.requests: collections.Counter[int] = collections.Counter()
        self.served: collections.Counter[int] = collections.Counter()
        self.retries = 0
        self._lock = threading.Lock()
        self._rr = itertools.count()
        self._conns = itertools.count(1)
        self._affinity: dict[str, int] = {}
        self._loop: LoopThread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task] = set()

    # -- what a notebook reads -------------------------------------------------------

    @property
    def upstream_urls(self) -> list[str]:
        return [u.url if isinstance(u, Server) else str(u).rstrip("/") for u in self.upstreams]

    @property
    def pool(self) -> Pool:
        """These settings as a ``Pool`` (what ``NginxBalancer`` writes as an ``upstream`` block)."""
        return Pool(upstreams=tuple(self.upstream_urls), sticky=self.sticky, retry=self.retry,
                    non_idempotent=self.non_idempotent, max_fails=self.max_fails, fail_timeout=self.fail_timeout,
                    idle_timeout=self.idle_timeout, connect_timeout=self.connect_timeout)

    def stats(self) -> dict:
        """Requests sent to each upstream (attempts, retries included), answers served, retries."""
        urls = self.upstream_urls
        with self._lock:
            return {
                "requests": {urls[i]: self.requests[i] for i in range(len(urls))},
                "served": {urls[i]: self.served[i] for i in range(len(urls))},
                "retries": self.retries,
            }

    def reset_stats(self) -> None:
        with self._lock:
            self.requests.clear()
            self.served.clear()
            self.retries = 0
            self._affinity.clear()
            self._fails.clear()
        self.log.clear()

    # -- lifecycle -------------------------------------------------------------------

    def _start(self) -> None:
        sock = bound_socket()
        self.port = sock.getsockname()[1]
        self._addresses = [(urlsplit(u).hostname, urlsplit(u).port or 80) for u in self.upstream_urls]
        self._loop = LoopThread(f"streamlab-{self.log.name}")
        self._server = self._loop.submit(asyncio.start_server(self._accept, sock=sock, limit=_READ)).result(5)

    def _stop(self) -> None:
        if self._loop is None:
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            self._loop.submit(shutdown()).result(5)
        self._loop.stop()
        self._loop = None
        self._server = None

    # -- one client connection -------------------------------------------------------

    def _idle(self) -> float | None:
        return to_real(self.idle_timeout)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        conn = next(self._conns)
        try:
            await self._exchange(conn, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            self.log.add("close", note="client closed", conn=conn)
        except asyncio.CancelledError:
            # stop() cancels open exchanges; end the task quietly (asyncio's stream callback
            # would otherwise print "Exception in callback ... CancelledError" on Python 3.11)
            self.log.add("close", note="balancer stopped", conn=conn)
        except Exception as exc:  # noqa: BLE001 - a malformed request or response: drop the connection
            self.log.add("close", note=f"error: {type(exc).__name__}: {exc}", conn=conn)
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _exchange(self, conn: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            return
        first, headers = _parse_head(head)
        method = first.split(" ", 1)[0].upper()
        self.log.add("open", note=first.rsplit(" ", 1)[0], conn=conn)
        if (_get(headers, "transfer-encoding") or "").lower() == "chunked":
            await self._reply(writer, conn, 501, "chunked request bodies are not supported by streamlab.Balancer")
            return
        body = await reader.readexactly(int(_get(headers, "content-length") or 0))
        if _get(headers, "x-request-id") is None:
            headers.append(("X-Request-ID", f"lb-{conn}"))
        keep = [(k, v) for k, v in headers if k.lower() not in ("connection", "keep-alive")]
        request = _build_head(first, keep + [("Connection", "close")]) + body

        start = self._pick(headers, writer)
        order = [(start + k) % len(self._addresses) for k in range(len(self._addresses))]
        order = [i for i in order if self._live(i)]
        if not order:  # every upstream failed max_fails times within fail_timeout
            self.log.add("fault", note="no live upstreams", conn=conn)
            await self._reply(writer, conn, 502, "no live upstreams")
            return
        if not self.retry:
            order = order[:1]
        client_gone = asyncio.ensure_future(reader.read(1))  # b"" when the client hangs up
        try:
            failure: _Failed | None = None
            for attempt, index in enumerate(order):
                if attempt:
                    if failure.sent and method in NON_IDEMPOTENT and not self.non_idempotent:
                        self.log.add("fault", conn=conn, note=f"no retry: a {method} was sent to upstream "
                                     f"{order[attempt - 1]} (nginx: non_idempotent not set)")
                        break
                    with self._lock:
                        self.retries += 1
                    self.log.add("fault", conn=conn,
                                 note=f"retry: upstream {order[attempt - 1]} {failure.why} -> upstream {index}")
                try:
                    await self._forward(conn, index, method, request, reader, writer, headers, client_gone)
                    self._succeeded(index)
                    return
                except _Failed as exc:
                    if exc.why == "client closed":
                        self.log.add("close", note="client closed", conn=conn)
                        return
                    self._failed(index)
                    failure = exc
                    last = index
            assert failure is not None
            order = [last]
            self.log.add("fault", note=f"upstream {order[-1]} {failure.why}", conn=conn)
            await self._reply(writer, conn, 504 if failure.timeout else 502, f"upstream {failure.why}")
        finally:
            client_gone.cancel()

    def _live(self, index: int) -> bool:
        """nginx's peer check: not max_fails failures within the last fail_timeout."""
        if not self.max_fails or len(self.upstreams) == 1:
            return True
        with self._lock:
            fails, when = self._fails.get(index, (0, 0.0))
        return fails < self.max_fails or time.monotonic() - when > to_real(self.fail_timeout)

    def _failed(self, index: int) -> None:
        with self._lock:
            fails, when = self._fails.get(index, (0, 0.0))
            now = time.monotonic()
            if now - when > to_real(self.fail_timeout):
                fails = 0  # the earlier failures are older than fail_timeout: a new window
            self._fails[index] = (fails + 1, now)

    def _succeeded(self, index: int) -> None:
        with self._lock:
            self._fails.pop(index, None)

    def _pick(self, headers: list[tuple[str, str]], writer: Any = None) -> int:
        n = len(self.upstreams)
        if self.sticky == "ip":
            peer = writer.get_extra_info("peername") if writer is not None else None
            key = ".".join(str(peer[0]).split(".")[:3]) if peer else ""
            with self._lock:
                if key not in self._affinity:
                    self._affinity[key] = next(self._rr) % n
                return self._affinity[key]
        if self.sticky == "cookie":
            for part in (_get(headers, "cookie") or "").split(";"):
                name, _, value = part.strip().partition("=")
                if name == COOKIE and value.isdigit() and int(value) < n:
                    return int(value)
        elif self.sticky:
            key = _get(headers, self.sticky)
            if key is not None:
                with self._lock:
                    if key not in self._affinity:
                        self._affinity[key] = next(self._rr) % n
                    return self._affinity[key]
        return next(self._rr) % n

    async def _reply(self, writer: asyncio.StreamWriter, conn: int, status: int, text: str) -> None:
        reason = {501: "Not Implemented", 502: "Bad Gateway", 504: "Gateway Timeout"}[status]
        data = f"{text}\n".encode()
        writer.write(f"HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain\r\ncontent-length: {len(data)}\r\n"
                     f"connection: close\r\n\r\n".encode() + data)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        self.log.add("status", note=str(status), conn=conn)
        self.log.add("close", note=str(status), conn=conn)

    async def _head(self, up_reader: asyncio.StreamReader, client_gone: asyncio.Future) -> bytes:
        """The upstream's response head, unless the idle timeout passes or the client leaves first."""
        head = asyncio.ensure_future(up_reader.readuntil(b"\r\n\r\n"))
        done, _ = await asyncio.wait({head, client_gone}, timeout=self._idle(), return_when=asyncio.FIRST_COMPLETED)
        if head not in done:
            head.cancel()
            if client_gone in done and _hung_up(client_gone):
                raise _Failed("client closed")
            if client_gone in done:  # pipelined bytes, not a hang-up: keep waiting for the head
                return await self._head(up_reader, asyncio.get_running_loop().create_future())
            raise _Failed("idle timeout before the response", timeout=True)
        try:
            return head.result()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            raise _Failed("closed before the response") from None

    async def _forward(self, conn: int, index: int, method: str, request: bytes, client_reader: asyncio.StreamReader,
                       client: asyncio.StreamWriter, request_headers: list[tuple[str, str]],
                       client_gone: asyncio.Future) -> None:
        """One attempt on upstream ``index``. Raises ``_Failed`` while the client has had no byte."""
        with self._lock:
            self.requests[index] += 1
        host, port = self._addresses[index]
        try:
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(host, port, limit=_READ),
                                                          to_real(self.connect_timeout))
        except asyncio.TimeoutError:
            raise _Failed("connect timed out", timeout=True, sent=False) from None
        except OSError as exc:
            raise _Failed(f"refused the connection ({type(exc).__name__})", sent=False) from None
        try:
            up_writer.write(request)
            await up_writer.drain()
            head = await self._head(up_reader, client_gone)
            await self._relay(conn, index, method, head, up_reader, client_reader, client, request_headers,
                              client_gone)
        finally:
            up_writer.close()

    async def _relay(self, conn: int, index: int, method: str, head: bytes, up_reader: asyncio.StreamReader,
                     client_reader: asyncio.StreamReader, client: asyncio.StreamWriter,
                     request_headers: list[tuple[str, str]], client_gone: asyncio.Future) -> None:
        first, headers = _parse_head(head)
        status = first.split(" ")[1] if " " in first else "?"
        length = _get(headers, "content-length")
        chunked = (_get(headers, "transfer-encoding") or "").lower() == "chunked"
        no_body = method == "HEAD" or status in ("204", "304") or status.startswith("1")
        headers = [(k, v) for k, v in headers if k.lower() not in ("connection", "keep-alive")]
        headers += [("Connection", "close"), ("X-Streamlab-Upstream", str(index))]
        if self.sticky == "cookie":
            headers.append(("Set-Cookie", f"{COOKIE}={index}; Path=/"))
        elif self.sticky and _get(request_headers, self.sticky) is not None:
            with self._lock:
                self._affinity[_get(request_headers, self.sticky)] = index  # re-pin after a retry
        client.write(_build_head(first, headers))
        await client.drain()
        with self._lock:
            self.served[index] += 1
        self.log.add("status", note=f"{status} from upstream {index}", conn=conn)

        left = None if length is None else int(length)
        tracker = _Chunked() if chunked and not no_body else None
        complete = no_body or left == 0
        why = "complete"
        while not complete:
            read = asyncio.ensure_future(up_reader.read(_READ))
            done, _ = await asyncio.wait({read, client_gone}, timeout=self._idle(),
                                         return_when=asyncio.FIRST_COMPLETED)
            if not done:
                read.cancel()
                why = "idle timeout"
                self.log.add("fault", note=f"idle timeout ({self.idle_timeout} s) mid-response", conn=conn)
                break
            if client_gone in done:
                if _hung_up(client_gone):
                    read.cancel()
                    why = "client closed"
                    break
                client_gone = asyncio.get_running_loop().create_future()  # pipelined bytes: stop watching
                if read not in done:
                    read.cancel()
                    continue
            try:
                data = read.result()
            except ConnectionError:
                data = b""
            if not data:
                complete = left is None and tracker is None  # body delimited by the close
                why = "complete" if complete else "upstream closed mid-response"
                break
            self.log.add("in", nbytes=len(data), conn=conn)
            client.write(data)
            try:
                await asyncio.wait_for(client.drain(), self._idle())
            except asyncio.TimeoutError:
                why = "idle timeout"
                self.log.add("fault", note=f"idle timeout ({self.idle_timeout} s): client not reading", conn=conn)
                break
            self.log.add("out", nbytes=len(data), conn=conn)
            if tracker is not None:
                tracker.feed(data)
                complete = tracker.done
            elif left is not None:
                left -= len(data)
                complete = left <= 0
        self.log.add("close", note=why, conn=conn)


def balancer_for(upstreams: Sequence["str | Server"], *, prefer: str = "nginx", **settings: Any) -> Server:
    """Real nginx (``NginxBalancer``, an ``upstream`` block) when it is installed, else ``Balancer``;
    the same settings either way (see the module docstring). ``prefer="embedded"`` always gives
    the Balancer. Not started (use ``with``); ``.kind`` says which one you got."""
    from ._nginx import NginxBalancer, nginx_available

    if prefer not in ("nginx", "embedded"):
        raise ValueError(f"prefer is 'nginx' or 'embedded', got {prefer!r}")
    if prefer == "nginx" and nginx_available():
        return NginxBalancer(upstreams, **settings)
    if settings.pop("keepalive", 0):
        raise ValueError("keepalive= is an nginx setting (the Balancer opens one upstream connection per attempt)")
    balancer = Balancer(upstreams, **settings)
    balancer.kind = f"balancer ({'nginx not installed' if prefer == 'nginx' else 'asked for'})"
    return balancer
