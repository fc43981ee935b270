"""One request through the embedded proxy: the upstream side (``_Source``) and the sink (``run``).

    _Source ──► Noop ──► fault ... fault ──► run(): write head, body, end; Abort -> error page / cut / RST
      │ connect, send the request (head, then the body from memory or its spool file),
      │ then parse the response with httptools (``_Upstream``): CONNECTED, SENDING..., SENT, Head, bytes

The upstream's response head is limited to ``ex.max_response_head`` bytes while
it is being read (nginx ``proxy_buffer_size``): past it the exchange ends with
``502`` at once and the log note "upstream sent too big header", without
buffering the rest. An upstream that answers before it has read the whole
request (a ``413`` of its own) is relayed: the proxy stops sending the body and
passes the answer on.

A request asking to switch protocols (``Upgrade: websocket``) goes upstream with
``Connection: upgrade``; a ``101`` answer turns the exchange into a raw two-way
tunnel (``_tunnel``, design note above it), any other answer is relayed and the
connection closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Any, AsyncIterator

import httptools

from ._hopbase import CONNECTED, SENDING, SENT, SERVER_NAME, Abort, Exchange, Head
from ._http import (MAX_QUEUED_ITEMS, SEND_PIECE, _DROP_FROM_UPSTREAM, _HOP_BY_HOP, _FlowControlled, _expire,
                    _http_date, _title)
from ._timescale import to_real

logger = logging.getLogger("streamlab.proxy")

TOO_BIG_HEADER = "upstream sent too big header while reading response header from upstream"


class _Upstream(_FlowControlled):
    """Reads the upstream response with httptools; queues one item per socket read."""

    def __init__(self, ex: Exchange, head_only: bool) -> None:
        self.ex = ex
        self.head_only = head_only
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.items: deque[Any] = deque()
        self.waiter: asyncio.Future | None = None
        self.done = False
        self.error: Abort | None = None
        self.head_done = False
        self.close_delimited = True
        self.reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self.reading_paused = False
        self.head_seen = 0  # bytes received before the response head was complete
        self.head_limit = ex.max_response_head
        self.raw = False    # a 101 answer came: every later byte is the upgraded connection's, queued as is
        self.lost = False

    # protocol callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._take_transport(transport)

    def data_received(self, data: bytes) -> None:
        self.ex.log("in", len(data), "", self.ex.conn)
        if self.raw:
            self._raw(data)
            return
        if self.done or self.error is not None:
            return
        if not self.head_done:
            self.head_seen += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            # a 101 answer: the bytes after its head belong to the upgraded connection
            if self.head_done and self.parser.get_status_code() == 101:
                self.raw = True
                offset = exc.args[0] if exc.args and isinstance(exc.args[0], int) else len(data)
                if data[offset:]:
                    self.items.append(data[offset:])
        except httptools.HttpParserError as exc:
            self._fail(Abort(f"upstream sent invalid response: {exc}", status=502 if not self.head_done else None))
        if not self.head_done and self.head_limit is not None and self.head_seen > self.head_limit:
            self._too_big()  # nginx: 502 as soon as the buffer is full, the rest is never read
        if self._body:
            self.items.append(self._body[0] if len(self._body) == 1 else b"".join(self._body))
            self._body.clear()
        self._wake()
        if len(self.items) > MAX_QUEUED_ITEMS and not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()

    def eof_received(self) -> None:
        return None  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.raw:
            self._wake()
            self._release_drain()
            return
        if not self.done and self.error is None:
            if self.head_done and self.close_delimited:
                self._flush_body()
                self.done = True  # HTTP/1.0 style body: the close is the end
            elif self.head_done:
                self._fail(Abort("upstream prematurely closed connection while reading upstream"))
            else:
                self._fail(Abort("upstream prematurely closed connection while reading response header "
                                 "from upstream", status=502))
        self._wake()
        self._release_drain()


    # httptools callbacks
    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:  # interim answer: wait for the real one
            self._headers.clear()
            self.reason = b""
            return
        self.head_done = True
        names = {k for k, _ in self._headers}
        self.close_delimited = not (b"content-length" in names or b"transfer-encoding" in names
                                    or status in (204, 304))
        raw = (len(self.reason) + 15 + sum(len(k) + len(v) + 4 for k, v in self._headers) + 2)
        if self.head_limit is not None and raw > self.head_limit:
            self.head_done = False
            self._too_big()
            return
        self.items.append(Head(status=status, reason=self.reason, headers=tuple(self._headers), raw_size=raw))
        if self.head_only:
            self.done = True

    def on_body(self, body: bytes) -> None:
        if not self.done:
            self._body.append(body)

    def on_message_complete(self) -> None:
        self._flush_body()
        self.done = True

    # helpers
    def _raw(self, data: bytes) -> None:
        self.items.append(data)
        self._wake()
        if len(self.items) > MAX_QUEUED_ITEMS and not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()

    def _too_big(self) -> None:
        self._headers.clear()
        self._fail(Abort(TOO_BIG_HEADER, status=502, fault="proxy_buffer_size"))
        self.done = True
        if self.transport is not None:
            self.transport.close()

    def _flush_body(self) -> None:
        if self._body:
            self.items.append(b"".join(self._body))
            self._body.clear()

    def _fail(self, abort: Abort) -> None:
        if self.error is None and not self.done:
            self.error = abort
            if abort.note == TOO_BIG_HEADER:
                self.items.clear()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, until: float | None = None) -> None:
        """Wait for the next read (or the end); raise TimeoutError at loop time ``until``."""
        loop = asyncio.get_running_loop()
        self.waiter = waiter = loop.create_future()
        timer = loop.call_at(until, _expire, waiter) if until is not None else None
        try:
            await waiter
        finally:
            self.waiter = None
            if timer is not None:
                timer.cancel()

    async def drain(self, until: float | None = None) -> None:
        """Wait until the request can be written on; raise TimeoutError at loop time ``until``."""
        if self.write_paused and self.error is None:
            loop = asyncio.get_running_loop()
            self.drain_waiter = waiter = loop.create_future()
            timer = loop.call_at(until, _expire, waiter) if until is not None else None
            try:
                await waiter
            finally:
                self.drain_waiter = None
                if timer is not None:
                    timer.cancel()



def _request_bytes(ex: Exchange, host: str, port: int, base_path: str, http_version: str,
                   upgrade: bytes | None = None) -> bytes:
    """The request as nginx's proxy_pass sends it: own Host, Connection: close, body with Content-Length.

    An upgrade request (WebSocket) goes as nginx's ``proxy_set_header Upgrade $http_upgrade;
    proxy_set_header Connection "upgrade"`` sends it, over HTTP/1.1 (nginx needs
    ``proxy_http_version 1.1`` for it; the embedded proxy always relays upgrades).
    """
    if upgrade is not None:
        http_version = "1.1"
        connection = b"Connection: upgrade\r\nUpgrade: " + upgrade + b"\r\n"
    else:
        connection = b"Connection: close\r\n"
    lines = [f"{ex.method} {base_path}{ex.target} HTTP/{http_version}\r\nHost: {host}:{port}\r\n"
             .encode("latin-1") + connection]
    if ex.body_size or ex.method in ("POST", "PUT", "PATCH"):
        lines.append(b"Content-Length: %d\r\n" % ex.body_size)
    for name, value in ex.headers:
        if name not in _HOP_BY_HOP:
            lines.append(name + b": " + value + b"\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


class _Source:
    """The first link: connect, send the request, then hand out CONNECTED, SENDING..., SENT, Head, bytes.

    An async iterator rather than a generator so that a timer link right after
    it (``pace``) can wait with a deadline (``next_until``) at the cost of one
    timer handle, instead of cancelling the task (``asyncio.timeout``).
    """

    __slots__ = ("ex", "host", "port", "base", "http_version", "state", "up", "transport",
                 "request", "offset", "body", "body_left", "upgrade")

    def __init__(self, ex: Exchange, upstream: tuple[str, int, str], http_version: str,
                 upgrade: bytes | None = None) -> None:
        self.ex = ex
        self.upgrade = upgrade
        self.host, self.port, self.base = upstream
        self.http_version = http_version
        self.state = 0  # 0 connect, 1 send, 2 read, 3 ended
        self.up: _Upstream | None = None
        self.transport: asyncio.Transport | None = None
        self.request = b""
        self.offset = 0
        self.body: Any = None  # the spool file of a large body (else the body is in ``request``)
        self.body_left = 0

    def __aiter__(self) -> "_Source":
        return self

    def __anext__(self) -> Any:
        return self.next_until(None)

    async def next_until(self, until: float | None) -> Any:
        """The next item; raise TimeoutError if none came by loop time ``until`` (None: wait forever)."""
        if self.state == 2:
            up = self.up
            items = up.items  # type: ignore[union-attr]
            while True:
                if items:
                    item = items.popleft()
                    if up.reading_paused and len(items) < MAX_QUEUED_ITEMS // 2:  # type: ignore[union-attr]
                        up.reading_paused = False  # type: ignore[union-attr]
                        self.transport.resume_reading()  # type: ignore[union-attr]
                    return item
                if up.error is not None:  # type: ignore[union-attr]
                    self.state = 3
                    raise up.error  # type: ignore[union-attr]
                if up.done:  # type: ignore[union-attr]
                    self.state = 3
                    raise StopAsyncIteration
                await up.wait(until)  # type: ignore[union-attr]
        if self.state == 0:
            await self._connect(until)
            self.state = 1
            ex = self.ex
            self.request = _request_bytes(ex, self.host, self.port, self.base, self.http_version, self.upgrade)
            if type(ex.body) is bytes:
                self.request += ex.body
            else:  # spooled to a file: sent piece by piece, never whole in memory
                self.body, self.body_left = ex.body, ex.body_size
            return CONNECTED
        if self.state == 1:
            up = self.up
            piece = self.request[self.offset:self.offset + SEND_PIECE]
            self.offset += len(piece)
            if len(piece) < SEND_PIECE and self.body_left:
                more = self.body.read(min(SEND_PIECE - len(piece), self.body_left))
                self.body_left -= len(more)
                if not more:  # the spool file is shorter than it said: cannot happen, but never spin
                    self.body_left = 0
                piece += more
            self.transport.write(piece)  # type: ignore[union-attr]
            await up.drain(until)  # type: ignore[union-attr]
            if up.error is not None and not up.head_done:  # type: ignore[union-attr]
                self.state = 3
                raise up.error  # type: ignore[union-attr]
            if up.head_done or up.done or self.transport.is_closing():  # type: ignore[union-attr]
                # the upstream answered (or went) before reading the whole request, e.g. its own 413:
                # stop sending and pass its answer on (nginx does the same)
                self.request, self.body_left = b"", 0
                self.state = 2
                return SENT
            if self.offset < len(self.request) or self.body_left:
                return SENDING
            self.request = b""
            self.state = 2
            return SENT
        raise StopAsyncIteration

    async def _connect(self, until: float | None) -> None:
        ex = self.ex
        loop = asyncio.get_running_loop()
        protocol = _Upstream(ex, ex.method == "HEAD")
        limit = loop.time() + to_real(60.0)  # nginx proxy_connect_timeout default
        ours = until is None or limit <= until
        try:
            async with asyncio.timeout_at(limit if ours else until):
                transport, _ = await loop.create_connection(lambda: protocol, self.host, self.port)
        except TimeoutError:
            self.state = 3
            if not ours:
                raise  # a timer fault's deadline: it decides what the client gets
            raise Abort("upstream timed out (110: Connection timed out) while connecting to upstream",
                        status=504) from None
        except OSError as exc:
            self.state = 3
            raise Abort(f"connect() failed ({exc.errno}: {exc.strerror}) while connecting to upstream",
                        status=502) from None
        self.up = protocol
        self.transport = transport  # type: ignore[assignment]
        ex.upstream = transport  # type: ignore[assignment]

    async def aclose(self) -> None:
        self.state = 3
        if self.transport is not None:
            self.transport.close()



# --------------------------------------------------------------------------- the sink


async def run(proxy: Any, conn: Any, req: Any) -> bool:
    """Run one request through the chain; return True if the client connection stays open."""
    ex = Exchange(proxy, conn.id, req.method, req.target.decode("latin-1"), req.version, req.headers,
                  req.body.value(), req.body.size, max_response_head=proxy.proxy_buffer_size)
    record = proxy._record
    record("open", 0, f"{ex.method} {ex.target}", conn.id)
    faults = proxy.chain(ex.path)
    source = _Source(ex, proxy._upstream, proxy.proxy_http_version, req.upgrade)  # type: ignore[arg-type]
    items: AsyncIterator[Any] = source
    gens = [items]
    for fault in faults:
        items = fault.pipe(items, ex)
        gens.append(items)

    head_sent = False
    keep_alive = req.keep_alive
    framing = "length"
    body_allowed = True
    try:
        async for item in items:
            if type(item) is bytes:
                if not item or not body_allowed:
                    continue
                if framing == "chunked":
                    data = b"%x\r\n%b\r\n" % (len(item), item)
                else:
                    data = item
                conn.write(data)
                record("out", len(data), "", conn.id)
                if conn.write_paused:
                    await conn.drain(ex.send_timeout)
            elif type(item) is Head and item.status == 101 and req.upgrade is not None:
                data = _upgrade_head(item)
                conn.write(data)
                head_sent = True
                record("status", 0, "101", conn.id)
                record("out", len(data), "", conn.id)
                await _tunnel(proxy, conn, ex, source, faults)
                return False
            elif type(item) is Head:
                # an upstream that refused to switch protocols: the client's later bytes are not HTTP, close
                framing, keep_alive, data = _head_bytes(ex, item, keep_alive and req.upgrade is None)
                body_allowed = ex.method != "HEAD" and item.status not in (204, 304)
                conn.write(data)
                head_sent = True
                record("status", 0, str(item.status), conn.id)
                record("out", len(data), "", conn.id)
                if conn.write_paused:
                    await conn.drain(ex.send_timeout)
        if framing == "chunked" and body_allowed:
            conn.write(b"0\r\n\r\n")
            record("out", 5, "", conn.id)
        if not head_sent:  # a fault swallowed the head: nothing sensible to send
            raise Abort("no response head came through the chain", status=502)
        record("close", 0, "eof", conn.id)
        if framing == "close":
            keep_alive = False
        return keep_alive and not conn.closed
    except Abort as abort:
        record("fault", 0, f"{abort.fault or 'upstream'}: {abort.note}", conn.id)
        logger.info("streamlab proxy %s: conn %d %s %s: %s", proxy.name, conn.id, ex.method, ex.target,
                    abort.note)
        if abort.reset:
            conn.close(reset=True)
            record("close", 0, "reset", conn.id)
            return False
        if head_sent or abort.status is None:
            conn.close()
            record("close", 0, "cut" if head_sent else "closed", conn.id)
            return False
        conn._respond_error(abort.status, abort.note, keep_alive=keep_alive, body=abort.body,
                            content_type=abort.content_type)
        record("close", 0, str(abort.status), conn.id)
        return keep_alive and not conn.closed
    except asyncio.CancelledError:
        record("close", 0, "client closed", conn.id)  # nginx logs 499
        raise
    except Exception as exc:  # noqa: BLE001 - a bug in a fault: behave like a broken gateway
        logger.exception("streamlab proxy %s: exchange failed", proxy.name)
        record("fault", 0, f"internal error: {exc!r}", conn.id)
        if not head_sent:
            conn._respond_error(502, "internal error", keep_alive=False)
        conn.close()
        record("close", 0, "error", conn.id)
        return False
    finally:
        await _cleanup(ex, gens)
        req.body.close()

async def _cleanup(ex: Exchange, gens: list[Any]) -> None:
    for cleanup in ex.cleanups:
        with contextlib.suppress(BaseException):
            await cleanup()
    seen: set[int] = set()
    for gen in reversed(gens):  # outermost first, so none of them is running
        if id(gen) in seen or getattr(gen, "ag_frame", True) is None:  # already finished
            continue
        seen.add(id(gen))
        with contextlib.suppress(BaseException):
            await gen.aclose()
    if ex.upstream is not None:
        ex.upstream.close()

# --------------------------------------------------------------------------- upgraded connections
#
# After a ``101 Switching Protocols`` the proxy relays bytes both ways, raw, as nginx does
# (ngx_http_upstream_upgrade): no buffering, gzip, chunking or byte-count faults apply to
# a tunnel. The timer faults of the chain do, as the products apply them to WebSockets:
#
#     read_timeout, idle_timeout,         silence in *both* directions for ``seconds``: nginx re-arms
#     origin_read_timeout,                proxy_read_timeout after every read or write of the tunnel
#     router_timeout (its ``idle``)       (a ping from either side keeps it open); ALB, Cloudflare and
#                                         Heroku count data "sent or received"
#     deadline, kill_after,               the connection's whole life from the request (Google's backend
#     backend_timeout                     service timeout is "a timeout on the connection lifetime" for
#                                         WebSockets)
#
# When one fires the proxy closes both sides (``action="reset"``: RST toward the client, else
# FIN); there is no close frame, so a WebSocket client sees 1006 (abnormal closure). The hop
# log has ``status 101``, ``upgrade`` (note: the protocol), ``up`` bytes relayed client
# to upstream, ``in``/``out`` as for any response, and at the end a ``fault`` naming the timer
# with nginx's note "... while proxying upgraded connection" and ``close`` "cut" / "reset", or
# ``close`` "eof" when a side closed.

_IDLE_TIMERS = {"read_timeout", "idle_timeout", "origin_read_timeout"}
_LIFETIME_TIMERS = {"deadline", "kill_after", "backend_timeout"}


def _tunnel_timers(faults: list[Any], ex: Exchange) -> tuple[list[tuple[Any, float]], list[tuple[Any, float]]]:
    """(idle limits in real seconds, absolute loop-time deadlines) of the chain's timers."""
    idle: list[tuple[Any, float]] = []
    until: list[tuple[Any, float]] = []
    for fault in faults:
        name = getattr(fault, "name", "")
        if name in _IDLE_TIMERS:
            idle.append((fault, to_real(fault.seconds)))
        elif name == "router_timeout":
            idle.append((fault, to_real(fault.idle)))
        elif name in _LIFETIME_TIMERS:
            until.append((fault, ex.t_open + to_real(fault.seconds)))
    return idle, until


def _upgrade_head(head: Head) -> bytes:
    """The 101 toward the client: the upstream's headers, with ``Upgrade`` and ``Connection: upgrade``."""
    out = [b"HTTP/1.1 101 %b\r\nServer: %b\r\nDate: %b\r\n" % (head.reason or b"Switching Protocols",
                                                                  SERVER_NAME.encode(), _http_date())]
    for name, value in head.headers:
        if name not in _DROP_FROM_UPSTREAM:
            out.append(b"%b: %b\r\n" % (_title(name), value))
    out.append(b"Upgrade: %b\r\nConnection: upgrade\r\n\r\n" % (head.get(b"upgrade") or b"websocket"))
    return b"".join(out)


async def _tunnel(proxy: Any, conn: Any, ex: Exchange, source: _Source, faults: list[Any]) -> None:
    """Relay raw bytes both ways until a side closes or a timer fault fires."""
    loop = asyncio.get_running_loop()
    record = proxy._record
    up = source.up
    assert up is not None and source.transport is not None
    upstream = source.transport
    conn.tunneling = True
    record("upgrade", 0, f"{(ex.header(b'upgrade') or b'?').decode('latin-1')}: relaying raw bytes",
           conn.id)
    idle, lifetime = _tunnel_timers(faults, ex)
    last = loop.time()
    while True:
        moved = False
        # each way only as fast as the other side takes it (a paused writer holds the reader back)
        while up.items and (not conn.write_paused or up.lost):
            item = up.items.popleft()
            if type(item) is bytes and item:
                conn.write(item)
                record("out", len(item), "", conn.id)
                moved = True
        if up.reading_paused and len(up.items) < MAX_QUEUED_ITEMS // 2:
            up.reading_paused = False
            upstream.resume_reading()
        while conn.tunnel_in and not up.write_paused:
            data = conn.tunnel_in.popleft()
            if not upstream.is_closing():
                upstream.write(data)
                record("up", len(data), "", conn.id)
            moved = True
        if conn.transport is not None and not conn.closed and len(conn.tunnel_in) <= 16:
            conn.transport.resume_reading()
        if moved:
            last = loop.time()
        if up.lost or conn.eof or conn.closed:  # one side closed: pass it on, as nginx does
            record("close", 0, "eof", conn.id)
            return
        due = [(fault, last + limit) for fault, limit in idle] + lifetime
        fault, until = min(due, key=lambda d: d[1]) if due else (None, None)
        if until is not None and until <= loop.time():
            what = "upstream timed out (110: Connection timed out) while proxying upgraded connection"
            record("fault", 0, f"{fault.name}: {what}", conn.id)
            reset = getattr(fault, "action", "cut") == "reset"
            conn.close(reset=reset)
            record("close", 0, "reset" if reset else "cut", conn.id)
            return
        waiter = loop.create_future()
        # either side's next read, close, or a paused writer resuming wakes us
        conn.waiter = up.waiter = conn.drain_waiter = up.drain_waiter = waiter
        timer = loop.call_at(until, _expire, waiter) if until is not None else None
        try:
            await waiter
        except TimeoutError:
            pass
        finally:
            conn.waiter = up.waiter = conn.drain_waiter = up.drain_waiter = None
            if timer is not None:
                timer.cancel()


def _head_bytes(ex: Exchange, head: Head, keep_alive: bool) -> tuple[str, bool, bytes]:
    """Status line and headers toward the client, and how the body will be framed."""
    strip_accel = getattr(ex.proxy, "x_accel", "strip") == "strip"  # nginx consumes X-Accel-*; others pass it
    headers = [(k, v) for k, v in head.headers
               if k not in _DROP_FROM_UPSTREAM and not (strip_accel and k.startswith(b"x-accel-"))]
    no_body = ex.method == "HEAD" or head.status in (204, 304) or 100 <= head.status < 200
    if no_body or head.get(b"content-length") is not None:
        framing = "length"
    elif ex.version == "1.1" and ex.chunked:
        framing = "chunked"
        headers.append((b"transfer-encoding", b"chunked"))
    else:
        framing = "close"  # the end of the body is the end of the connection
        keep_alive = False
    reason = head.reason or b"OK"
    out = [b"HTTP/1.1 %d %b\r\nServer: %b\r\nDate: %b\r\n" % (head.status, reason, SERVER_NAME.encode(),
                                                                _http_date())]
    for name, value in headers:
        out.append(b"%b: %b\r\n" % (_title(name), value))
    out.append(b"Connection: keep-alive\r\n\r\n" if keep_alive else b"Connection: close\r\n\r\n")
    return framing, keep_alive, b"".join(out)

