"""One client connection of the embedded proxy: parse requests, enforce the request limits, run exchanges.

    bytes ──► httptools request parser ──► _Request queue ──► _run(): one exchange at a time (pipelining
                │ limits while parsing (see ``_http``):          keeps order), keep-alive, 400 on garbage
                │   head size  -> 414 / 400 "Request Header Or Cookie Too Large"
                │   body size  -> 413 (client_max_body_size)
                └ timers: client_header_timeout for the whole head (not per read),
                          client_body_timeout between body reads, keepalive_timeout between requests

A refused request is answered with nginx's page and ``Connection: close``; the
proxy then keeps reading (and dropping) what the client still sends for a while
(nginx's lingering close), so the client reads the answer instead of an RST.

An ``Upgrade`` request (WebSocket) stops the parser: every later byte is queued
raw in ``tunnel_in`` for ``_exchange._tunnel``, which relays it after the
upstream's ``101``. Once tunneling, a client FIN ends the tunnel (after what came
before it is relayed) instead of cancelling the exchange.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any
from urllib.parse import urlsplit

import httptools

from . import _exchange
from ._hopbase import REASONS, SERVER_NAME, error_page
from ._http import CLIENT_HEADER_BUFFER, READ_SLACK, _expire, _FlowControlled, _http_date, _Request
from ._servers import drop_connection
from ._timescale import to_real

__all__ = ["_ClientConn"]

logger = logging.getLogger("streamlab.proxy")

LINGERING_TIME = 30.0     # nginx lingering_time: the longest a refused client's upload is read and dropped
LINGERING_TIMEOUT = 5.0   # nginx lingering_timeout: ... or until it pauses this long
HEADER_TOO_LARGE = "Request Header Or Cookie Too Large"


class _Refuse(Exception):
    """Raised from a parser callback: stop parsing, answer ``status`` and close."""

    def __init__(self, status: int, note: str, page: bytes | None = None) -> None:
        super().__init__(note)
        self.status = status
        self.note = note
        self.page = error_page(status) if page is None else page


class _ClientConn(_FlowControlled):
    """One client connection: parse requests, run each exchange, write the response."""

    def __init__(self, proxy: Any, conn_id: int) -> None:
        self.proxy = proxy
        self.id = conn_id
        self.loop = proxy._loop
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.requests: deque[_Request] = deque()
        self.current: _Request | None = None
        self.closed = False
        self.busy = False
        self.refused = False        # a limit was hit: what still comes is read and dropped
        self.eof = False
        self.waiter: asyncio.Future | None = None
        self.task: asyncio.Task | None = None
        now = self.loop.time()
        self.accepted = now
        self.head_started = now     # loop time the current request's first byte came (accept for the first)
        self.last_read = now
        self.raw_head = 0           # bytes read while a head was incomplete (bounds a huge partial line)
        buffers, size = proxy.large_client_header_buffers
        self.line_limit = size
        self.head_limit = CLIENT_HEADER_BUFFER + buffers * size
        self.body_limit = proxy.client_max_body_size
        self.requests_started = 0
        self.upgraded = False       # an Upgrade request was parsed: later bytes are the tunnel's, not HTTP
        self.tunnel_in: deque[bytes] = deque()  # client bytes waiting to be relayed upstream
        self.tunneling = False      # the upstream answered 101: _exchange._tunnel relays both ways

    # -- protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._take_transport(transport)
        self.proxy._conns.add(self)
        self.task = self.loop.create_task(self._run())

    def data_received(self, data: bytes) -> None:
        self.last_read = self.loop.time()
        if self.refused:
            return  # lingering: drop what a refused client still sends
        if self.upgraded:  # raw bytes for the upgraded connection (see _exchange._tunnel)
            self._tunnel_data(data)
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._upgrade(data[exc.args[0]:] if exc.args and isinstance(exc.args[0], int) else b"")
        except httptools.HttpParserError as exc:
            refusal = exc.__context__ if isinstance(exc.__context__, _Refuse) else None
            if refusal is not None:
                self._refuse(refusal)
            else:
                self._bad(f"malformed HTTP request: {exc}")
        else:
            current = self.current
            if current is not None and not current.method:  # a head still incomplete after this read
                self.raw_head += len(data)
                if self.raw_head > self.head_limit + READ_SLACK:  # a huge line httptools is still collecting
                    self._refuse(_Refuse(400, "client sent too long header line",
                                         _header_too_large_page()))
        if len(self.requests) > 16 and self.transport is not None:
            self.transport.pause_reading()  # a pipelining client waits for us
        self._wake()

    def eof_received(self) -> None:
        # nginx treats a client's FIN during a response as an abort (499) and closes the upstream
        self.eof = True
        if self.tunneling:  # an upgraded connection: the tunnel relays what came, then closes both
            self._wake()
            return True  # keep our side open until the tunnel is done
        self._lost()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self._lost()
        self._release_drain()

    # -- httptools callbacks
    def on_message_begin(self) -> None:
        self.current = _Request()
        self.raw_head = 0
        self.requests_started += 1
        if self.requests_started > 1:
            self.head_started = self.loop.time()

    def on_url(self, url: bytes) -> None:
        req = self.current
        if req is not None:
            req.target += url
            if len(req.target) + 14 > self.line_limit:  # "GET " + target + " HTTP/1.1\r\n"
                raise _Refuse(414, "client sent too long URI while reading client request line")

    def on_header(self, name: bytes, value: bytes) -> None:
        req = self.current
        if req is None:
            return
        line = len(name) + len(value) + 4
        if line > self.line_limit:
            raise _Refuse(400, "client sent too long header line while reading client request headers",
                          _header_too_large_page())
        req.head_size += line
        if req.head_size + len(req.target) + 14 + 2 > self.head_limit:
            raise _Refuse(400, "client sent too large request header while reading client request headers",
                          _header_too_large_page())
        req.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        req = self.current
        if req is None:
            return
        req.method = self.parser.get_method().decode("latin-1")
        req.version = self.parser.get_http_version()
        req.keep_alive = self.parser.should_keep_alive()
        self.raw_head = 0
        if self.body_limit:
            length = next((v for k, v in req.headers if k == b"content-length"), None)
            if length is not None and length.strip().isdigit() and int(length) > self.body_limit:
                raise _Refuse(413, f"client intended to send too large body: {int(length)} bytes")
        if (b"expect", b"100-continue") in ((k, v.lower()) for k, v in req.headers) and req.version == "1.1":
            self.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # like nginx: the client may send its body

    def on_body(self, body: bytes) -> None:
        req = self.current
        if req is not None:
            req.body.write(body)
            if self.body_limit and req.body.size > self.body_limit:  # chunked: found out while reading
                raise _Refuse(413, f"client intended to send too large body: more than {self.body_limit} bytes")

    def on_message_complete(self) -> None:
        if self.current is not None:
            self.requests.append(self.current)
            self.current = None

    # -- helpers
    def _upgrade(self, tail: bytes) -> None:
        """httptools stopped at a request asking to switch protocols: later bytes are raw tunnel bytes."""
        req = self.requests[-1] if self.requests else None
        upgrade = None if req is None else next((v for k, v in req.headers if k == b"upgrade"), None)
        if req is None or upgrade is None or self.current is not None:
            self._bad("malformed upgrade request")
            return
        req.upgrade = upgrade
        self.upgraded = True
        if tail:
            self._tunnel_data(tail)

    def _tunnel_data(self, data: bytes) -> None:
        self.tunnel_in.append(data)
        if len(self.tunnel_in) > 64 and self.transport is not None:
            self.transport.pause_reading()  # the tunnel resumes it once it has relayed
        self._wake()

    def _bad(self, why: str) -> None:
        req = _Request()
        req.error = why
        self.requests.append(req)
        if self.transport is not None:
            self.transport.pause_reading()

    def _refuse(self, refusal: _Refuse) -> None:
        """A limit was hit: answer it once the requests before it are done, drop the rest of the input."""
        if self.current is not None:
            self.current.body.close()
        req = _Request()
        req.error, req.status, req.page = refusal.note, refusal.status, refusal.page
        self.current = None
        self.requests.append(req)
        self.refused = True

    def _lost(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._wake()
        if self.busy and self.task is not None and not self.tunneling:
            self.task.cancel()  # stop the exchange: the upstream gets closed in its cleanup

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def _deadline(self, first: bool, idle_since: float) -> tuple[float, str | None]:
        """When the wait for the next request runs out, and the log note then (None: a quiet close)."""
        proxy = self.proxy
        req = self.current
        if req is None and not first:  # between requests: nginx keepalive_timeout
            return idle_since + to_real(proxy.keepalive_timeout), None
        if req is None or not req.method:  # the head, whole: nginx client_header_timeout
            note = None if req is None else "client timed out (110: Connection timed out) while reading " \
                                            "client request headers"
            return self.head_started + to_real(proxy.client_header_timeout), note
        return self.last_read + to_real(proxy.client_body_timeout), \
            "client timed out (110: Connection timed out) while reading client request body"

    async def _next_request(self, first: bool) -> _Request | None:
        idle_since = self.loop.time()
        while not self.requests:
            if self.closed:
                return None
            until, note = self._deadline(first, idle_since)
            if until <= self.loop.time():
                if note is not None:
                    self.proxy._record("fault", 0, note, self.id)
                    self.proxy._record("close", 0, "timeout", self.id)
                if self.current is not None:
                    self.current.body.close()
                return None  # nginx closes without an answer
            self.waiter = waiter = self.loop.create_future()
            timer = self.loop.call_at(until, _expire, waiter)
            try:
                await waiter
            except TimeoutError:
                pass  # the loop above decides
            finally:
                self.waiter = None
                timer.cancel()
        req = self.requests.popleft()
        if self.transport is not None and len(self.requests) <= 4 and req.error is None and not self.refused:
            self.transport.resume_reading()
        return req

    async def drain(self, timeout: float | None) -> None:
        if not self.write_paused or self.closed:
            return
        self.drain_waiter = self.loop.create_future()
        try:
            async with asyncio.timeout(timeout):
                await self.drain_waiter
        except TimeoutError:
            from ._hopbase import Abort

            raise Abort("client timed out (110: Connection timed out) while sending to client",
                        fault="send_timeout") from None
        finally:
            self.drain_waiter = None

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def close(self, *, reset: bool = False) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            self.closed = True
            return
        drop_connection(transport, reset=reset)
        self.closed = True

    async def _linger(self) -> None:
        """nginx's lingering close: send FIN, read and drop until the client is done (or a while passed)."""
        transport = self.transport
        if transport is None or self.eof or transport.is_closing():
            return
        if transport.can_write_eof():
            transport.write_eof()
        transport.resume_reading()
        end = self.loop.time() + to_real(LINGERING_TIME)
        while not self.eof and not transport.is_closing():
            now = self.loop.time()
            until = min(end, self.last_read + to_real(LINGERING_TIMEOUT))
            if until <= now:
                return
            self.waiter = waiter = self.loop.create_future()
            timer = self.loop.call_at(until, _expire, waiter)
            try:
                await waiter
            except TimeoutError:
                pass
            finally:
                self.waiter = None
                timer.cancel()

    # -- the connection's life
    async def _run(self) -> None:
        proxy = self.proxy
        try:
            first = True
            while not self.closed:
                req = await self._next_request(first)
                first = False
                if req is None:
                    break
                if req.page is not None:  # a limit was hit: nginx's own page, then linger
                    self._respond_error(req.status, req.error or "", keep_alive=False, body=req.page,
                                        limit=True)
                    await self._linger()
                    break
                if req.error is not None or not self._valid(req):
                    self._respond_error(400, req.error or "bad request", keep_alive=False)
                    break
                self.busy = True
                try:
                    keep = await _exchange.run(proxy, self, req)
                finally:
                    self.busy = False
                if not keep:
                    break
        except asyncio.CancelledError:
            pass
        except Exception:  # noqa: BLE001 - a bug must not take the proxy down
            logger.exception("streamlab proxy: connection %d failed", self.id)
        finally:
            self.close()
            if self.current is not None:
                self.current.body.close()
            for req in self.requests:
                req.body.close()
            proxy._conns.discard(self)

    def _valid(self, req: _Request) -> bool:
        target = req.target.decode("latin-1")
        if target.startswith(("http://", "https://")):  # absolute form: keep the path
            parts = urlsplit(target)
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            req.target = target.encode("latin-1")
        if not target.startswith("/"):
            req.error = f"request target must start with '/', got {target[:60]!r}"
            return False
        if req.version == "1.1" and not any(k == b"host" for k, _ in req.headers):
            req.error = "client sent HTTP/1.1 request without \"Host\" header"
            return False
        if req.method == "CONNECT":
            req.error = "CONNECT is not supported by the streamlab proxy"
            return False
        return True

    def _respond_error(self, status: int, detail: str, *, keep_alive: bool, body: bytes | None = None,
                       content_type: str = "text/html", limit: bool = False) -> None:
        if body is None:
            body = error_page(status)
            if status == 400:  # say what was wrong: a notebook reader sees it
                body = body.replace(b"</h1></center>", b"</h1></center>\r\n<p>" + detail.encode() + b"</p>", 1)
        head = (f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\nServer: {SERVER_NAME}\r\n"
                f"Date: ").encode() + _http_date() + (
                f"\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n").encode()
        self.write(head + body)
        self.proxy._record("status", 0, str(status), self.id)
        self.proxy._record("out", len(head) + len(body), "", self.id)
        if limit:
            self.proxy._record("fault", 0, detail, self.id)
            self.proxy._record("close", 0, str(status), self.id)
        elif status == 400:
            self.proxy._record("fault", 0, f"bad request: {detail}", self.id)
            self.proxy._record("close", 0, "400", self.id)


def _header_too_large_page() -> bytes:
    """nginx's page for a request head over large_client_header_buffers (its internal status 494)."""
    return error_page(400, title=f"400 {HEADER_TOO_LARGE}", line=HEADER_TOO_LARGE)
