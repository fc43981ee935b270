"""The embedded reverse proxy: an asyncio HTTP/1.1 hop built from small faults.

    client ──► _ClientConn ──► Exchange ──► _Source ──► upstream (the model, an app)
                  ▲                            │
                  │   sink ◄── fault N ◄ ... ◄─ fault 1 ◄── Noop ◄──┘
                  └── writes head, body, end ── (async generators, pulled by the sink)

Every request becomes an ``Exchange``. ``_Source`` connects to the upstream,
sends the request and yields, in order: ``CONNECTED``, ``SENT``, one ``Head``,
then the body as ``bytes`` (one item per read from the upstream socket, already
de-chunked, as nginx does). Each fault's ``pipe(items, ex)`` returns the stream
toward the client, usually as an async generator: it passes on every item it is
not meant to change, and ends the exchange early by raising ``Abort``. Timer
faults share one link (``pace``), and a fault that only sets a knob on the
exchange adds no link at all, so a long chain stays cheap. The sink
(``Proxy._exchange``) writes what comes out of the last fault. A fault that holds items back must
release them when an ``Abort`` passes through it (nginx flushes what it holds
before closing), so the sink's rule stays simple:

    Abort, response head not yet written .. write the error response (504, 502 ...)
    Abort, head already written ........... close without the terminating chunk (a cut)
    Abort(reset=True) ..................... TCP RST (SO_LINGER 0)

Faults are ordered by ``stage`` (timers on the upstream read first, then
buffering, compression, framing, byte limits), whatever order they were added
in, because nginx's filters have a fixed order too; for each fault type the
rule added last wins (so ``inject(ReadTimeout(seconds=5))`` overrides the 60 s of
a profile). Rules (the wrapper holding what every fault shares: which request
paths) are snapshotted when a request starts.

Durations are scenario seconds, converted with ``to_real()`` when a fault acts.
What the hop saw is in ``proxy.log`` (a ``HopLog``). Concrete faults, profiles
and spec parsing live in ``streamlab.hops``; real nginx in ``_nginx.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from email.utils import formatdate
from typing import Any, AsyncIterator, Callable, ClassVar, Iterable
from urllib.parse import urlsplit

import httptools

from ._servers import LoopThread, Server, bound_socket, drop_connection
from ._timeline import HopLog
from ._timescale import to_real

__all__ = [
    "Proxy", "Fault", "Noop", "Rule", "Injection", "Abort", "Head", "Marker", "Exchange",
    "CONNECTED", "SENDING", "SENT", "REGISTRY", "register", "pace", "error_page",
]

logger = logging.getLogger("streamlab.proxy")

SERVER_NAME = "streamlab-proxy"
MAX_REQUEST_HEAD = 64 * 1024      # a bigger request head gets 400 (nginx: large_client_header_buffers)
MAX_QUEUED_ITEMS = 64             # upstream reads queued before we stop reading the upstream socket
SEND_PIECE = 64 * 1024            # request bodies go upstream in pieces of this size


# --------------------------------------------------------------------------- stream items


class Marker:
    """A phase of the exchange, passed down the chain before the response head."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}>"


CONNECTED = Marker("connected")   # the upstream accepted the TCP connection
SENDING = Marker("sending")       # a piece of a large request body went out (send progress)
SENT = Marker("sent")             # the whole request is written: now we read


@dataclass(frozen=True, slots=True)
class Head:
    """The response status line and headers (lower-case names, upstream order)."""

    status: int
    reason: bytes = b""
    headers: tuple[tuple[bytes, bytes], ...] = ()
    raw_size: int = 0  # bytes of status line + headers as received (nginx proxy_buffer_size)

    def get(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def without(self, *names: bytes) -> "Head":
        return replace(self, headers=tuple(h for h in self.headers if h[0] not in names))

    def with_header(self, name: bytes, value: bytes) -> "Head":
        return replace(self, headers=self.without(name).headers + ((name, value),))

    @property
    def content_type(self) -> str:
        raw = self.get(b"content-type") or b""
        return raw.split(b";", 1)[0].strip().lower().decode("latin-1")


class Abort(Exception):
    """A hop ends the exchange early.

    ``status`` is the response the client gets when nothing was sent yet (None:
    just close); once the head is out the client sees a cut. ``reset`` closes
    with RST instead of FIN. ``note`` is the log line (nginx wording where nginx
    has one); ``fault`` names who fired.
    """

    def __init__(self, note: str, *, status: int | None = None, body: bytes | None = None,
                 content_type: str = "text/html", reset: bool = False, fault: str = "") -> None:
        super().__init__(note)
        self.note = note
        self.status = status
        self.body = body
        self.content_type = content_type
        self.reset = reset
        self.fault = fault


_REASONS = {400: "Bad Request", 413: "Request Entity Too Large", 499: "Client Closed Request",
            502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Time-out"}


def error_page(status: int, signature: str = SERVER_NAME) -> bytes:
    """An error body shaped like nginx's own pages."""
    title = f"{status} {_REASONS.get(status, 'Error')}"
    return (f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>{title}</h1></center>\r\n"
            f"<hr><center>{signature}</center>\r\n</body>\r\n</html>\r\n").encode()


# --------------------------------------------------------------------------- faults


REGISTRY: "dict[str, type[Fault]]" = {}


def register(cls: "type[Fault]") -> "type[Fault]":
    """Class decorator: make a fault known by its ``name`` (CLI flags, dropdowns, specs)."""
    if not cls.name or cls.name in REGISTRY and REGISTRY[cls.name] is not cls:
        raise ValueError(f"fault name {cls.name!r} is empty or taken")
    REGISTRY[cls.name] = cls
    return cls


@dataclass(frozen=True, kw_only=True)
class Fault:
    """Base of the proxy faults: frozen settings plus ``pipe``, an async generator.

    ``pipe(items, ex)`` gets the stream of items from the upstream side (markers,
    one ``Head``, body ``bytes``) and returns what goes on toward the client:
    usually it is an async generator that yields item by item; a fault that
    only sets a knob on the exchange returns ``items`` itself (no extra link). It
    must pass every item it is not meant to drop, never change its own settings,
    and release anything it holds when an ``Abort`` passes through it.

    Class attributes: ``name`` (registry key), ``setting`` (what the real product
    calls it), ``value_arg`` (the field set by ``name=value`` in a spec and by the
    CLI flag), ``stage`` (position in the chain, small = near the upstream).
    """

    name: ClassVar[str] = ""
    setting: ClassVar[str] = ""
    value_arg: ClassVar[str | None] = None
    stage: ClassVar[int] = 50

    def pipe(self, items: AsyncIterator[Any], ex: "Exchange") -> AsyncIterator[Any]:
        return items  # pass everything on (a subclass yields from an async generator instead)

    def spec(self) -> str:
        """This fault in the spec grammar of ``hops.from_spec`` (e.g. ``read_timeout=30``)."""
        from .hops import to_spec  # the grammar lives with the concrete faults

        return to_spec(self)

    def __str__(self) -> str:
        return self.spec()


@register
@dataclass(frozen=True, kw_only=True)
class Noop(Fault):
    """Pass everything on: the first link of every chain."""

    name: ClassVar[str] = "noop"
    stage: ClassVar[int] = 0


@dataclass(frozen=True, kw_only=True)
class Rule:
    """A fault plus the settings every fault shares: which requests it applies to.

    ``path_prefix`` selects requests by path (``"/"``: all). Like toxiproxy's
    ``ToxicWrapper``: the fault itself knows nothing about where it is used.
    """

    fault: Fault
    path_prefix: str = "/"

    def applies(self, path: str) -> bool:
        return path.startswith(self.path_prefix)


class Injection:
    """Handle returned by ``proxy.inject(...)``: a context manager that removes the rules on exit."""

    def __init__(self, owner: Any, rules: tuple[Rule, ...]) -> None:
        self._owner = owner
        self.rules = rules

    def remove(self) -> None:
        self._owner._remove_rules(self.rules)

    def __enter__(self) -> "Injection":
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"<Injection {', '.join(f'{r.fault} @ {r.path_prefix}' for r in self.rules)}>"


def as_rules(faults: Iterable[Any], path_prefix: str = "/") -> tuple[Rule, ...]:
    """Faults, Rules or spec strings -> Rules (``path_prefix`` for those that are not Rules yet)."""
    if isinstance(faults, (Fault, Rule, str)):
        faults = [faults]
    out: list[Rule] = []
    for item in faults:
        if isinstance(item, Rule):
            out.append(item)
        elif isinstance(item, Fault):
            out.append(Rule(fault=item, path_prefix=path_prefix))
        elif isinstance(item, str):
            from .hops import parse

            out.extend(Rule(fault=f, path_prefix=path_prefix) for f in parse(item))
        else:
            raise TypeError(f"expected a Fault, a Rule or a spec string, got {item!r}")
    return tuple(out)


def chain_for(rules: Iterable[Rule], path: str) -> list[Fault]:
    """The faults that apply to ``path``: one per type (the last added wins), sorted by stage."""
    chosen: dict[type, Fault] = {}
    for rule in rules:
        if rule.applies(path):
            chosen.pop(type(rule.fault), None)
            chosen[type(rule.fault)] = rule.fault
    return sorted(chosen.values(), key=lambda f: f.stage)


class RuleSet:
    """The rules of one hop, shared by the embedded proxy and the nginx runner."""

    def __init__(self, rules: Iterable[Rule] = ()) -> None:
        self._lock = threading.Lock()
        self._rules: tuple[Rule, ...] = tuple(rules)

    @property
    def rules(self) -> tuple[Rule, ...]:
        return self._rules

    def add(self, rules: tuple[Rule, ...]) -> None:
        with self._lock:
            self._rules = self._rules + rules

    def remove(self, rules: tuple[Rule, ...]) -> None:
        with self._lock:
            current = list(self._rules)
            for rule in rules:
                for i in range(len(current) - 1, -1, -1):  # the most recent equal rule
                    if current[i] is rule:
                        del current[i]
                        break
            self._rules = tuple(current)


# --------------------------------------------------------------------------- timing helper


def pace(items: AsyncIterator[Any], ex: "Exchange", *,
         deadline: Callable[[int, float], float | None],
         expire: Callable[[int], Abort]) -> AsyncIterator[Any]:
    """Pass items on, waiting for each at most until ``deadline(phase, now)`` (loop time, None: forever).

    ``phase`` is 0 while connecting, 1 while sending the request, 2 while waiting
    for the response head, 3 while reading the body. When a wait runs out,
    ``expire(phase)`` gives the ``Abort`` to raise. The shared core of every
    timer fault (read timeout, idle timeout, deadlines). Timers next to each
    other in the chain share one link (the earliest deadline wins), which keeps
    a chain of several timers as cheap as one.
    """
    if not isinstance(items, _Paced):
        items = _Paced(items)
    items.timers.append((deadline, expire))
    return items


class _Paced:
    """The link behind ``pace``: an async iterator with a list of (deadline, expire) timers."""

    __slots__ = ("it", "timers", "phase", "loop")

    def __init__(self, items: AsyncIterator[Any]) -> None:
        self.it = items.__aiter__()
        self.timers: list[tuple[Callable[[int, float], float | None], Callable[[int], Abort]]] = []
        self.phase = 0
        self.loop = asyncio.get_running_loop()

    def __aiter__(self) -> "_Paced":
        return self

    async def __anext__(self) -> Any:
        phase = self.phase
        now = self.loop.time()
        until = expire = None
        for deadline, on_expire in self.timers:
            when = deadline(phase, now)
            if when is not None and (until is None or when < until):
                until, expire = when, on_expire
        if until is None:
            item = await self.it.__anext__()
        elif type(self.it) is _Source:  # a timer handle, no task cancellation
            try:
                item = await self.it.next_until(until)
            except TimeoutError:
                raise expire(phase) from None  # type: ignore[misc]
        else:
            try:
                async with asyncio.timeout_at(until):
                    item = await self.it.__anext__()
            except TimeoutError:
                raise expire(phase) from None  # type: ignore[misc]
        if item is CONNECTED:
            self.phase = 1
        elif item is SENT:
            self.phase = 2
        elif type(item) is Head:
            self.phase = 3
        return item

    async def aclose(self) -> None:
        close = getattr(self.it, "aclose", None)
        if close is not None:
            await close()


# --------------------------------------------------------------------------- exchange


class Exchange:
    """One request through the proxy: what faults may read, and the few knobs they may set.

    Faults read ``method``, ``path``, ``version``, ``headers``, ``t_open`` (loop
    time). They may set ``buffered`` (the response is being held by a buffer:
    nginx then does not flush compressed output), ``chunked`` (False: no chunked
    encoding toward the client) and ``send_timeout`` (real seconds a write to the
    client may block), and register ``cleanups`` (coroutines run at the end).
    """

    __slots__ = ("conn", "method", "path", "target", "version", "headers", "body", "t_open", "log",
                 "buffered", "chunked", "send_timeout", "cleanups", "upstream", "proxy")

    def __init__(self, proxy: "Proxy", conn: int, method: str, target: str, version: str,
                 headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.proxy = proxy
        self.conn = conn
        self.method = method
        self.target = target
        self.path = target.split("?", 1)[0]
        self.version = version
        self.headers = headers
        self.body = body
        self.t_open = asyncio.get_running_loop().time()
        self.log = proxy._record
        self.buffered = False
        self.chunked = True
        self.send_timeout: float | None = None
        self.cleanups: list[Callable[[], Any]] = []
        self.upstream: asyncio.Transport | None = None

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def note(self, kind: str, note: str = "", nbytes: int = 0) -> None:
        self.log(kind, nbytes, note, self.conn)


# --------------------------------------------------------------------------- upstream side


class _FlowControlled(asyncio.Protocol):
    """Write-side flow control shared by both ends of the proxy: a writer that finds the transport
    paused awaits ``drain_waiter``; resuming, or losing the connection, releases it."""

    write_paused: bool = False
    drain_waiter: "asyncio.Future | None" = None
    transport: Any = None

    def _take_transport(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport and send small writes at once (every SSE event is a small write)."""
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _release_drain(self) -> None:
        if self.drain_waiter is not None and not self.drain_waiter.done():
            self.drain_waiter.set_result(None)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._release_drain()


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

    # protocol callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._take_transport(transport)

    def data_received(self, data: bytes) -> None:
        self.ex.log("in", len(data), "", self.ex.conn)
        if self.done:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # a 101 answer: nothing after the head is ours to parse
        except httptools.HttpParserError as exc:
            self._fail(Abort(f"upstream sent invalid response: {exc}", status=502 if not self.head_done else None))
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
    def _flush_body(self) -> None:
        if self._body:
            self.items.append(b"".join(self._body))
            self._body.clear()

    def _fail(self, abort: Abort) -> None:
        if self.error is None and not self.done:
            self.error = abort

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


def _expire(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


_HOP_BY_HOP = {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding",
               b"upgrade", b"host", b"content-length", b"expect"}


def _request_bytes(ex: Exchange, host: str, port: int, base_path: str, http_version: str) -> bytes:
    """The request as nginx's proxy_pass sends it: own Host, Connection: close, body with Content-Length."""
    lines = [f"{ex.method} {base_path}{ex.target} HTTP/{http_version}\r\nHost: {host}:{port}\r\n"
             f"Connection: close\r\n".encode("latin-1")]
    if ex.body or ex.method in ("POST", "PUT", "PATCH"):
        lines.append(b"Content-Length: %d\r\n" % len(ex.body))
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
                 "request", "offset")

    def __init__(self, ex: Exchange, upstream: tuple[str, int, str], http_version: str) -> None:
        self.ex = ex
        self.host, self.port, self.base = upstream
        self.http_version = http_version
        self.state = 0  # 0 connect, 1 send, 2 read, 3 ended
        self.up: _Upstream | None = None
        self.transport: asyncio.Transport | None = None
        self.request = b""
        self.offset = 0

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
            self.request = _request_bytes(self.ex, self.host, self.port, self.base, self.http_version) + self.ex.body
            return CONNECTED
        if self.state == 1:
            up = self.up
            piece = self.request[self.offset:self.offset + SEND_PIECE]
            self.offset += len(piece)
            self.transport.write(piece)  # type: ignore[union-attr]
            await up.drain(until)  # type: ignore[union-attr]
            if up.error is not None and not up.head_done:  # type: ignore[union-attr]
                self.state = 3
                raise up.error  # type: ignore[union-attr]
            if self.offset < len(self.request):
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


# --------------------------------------------------------------------------- client side


_date_cache = [0, b""]


def _http_date() -> bytes:
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[0] = now
        _date_cache[1] = formatdate(now, usegmt=True).encode()
    return _date_cache[1]  # type: ignore[return-value]


_DROP_FROM_UPSTREAM = {b"connection", b"keep-alive", b"transfer-encoding", b"date", b"server", b"x-pad",
                       b"proxy-connection", b"trailer", b"upgrade"}


class _Request:
    __slots__ = ("method", "target", "version", "headers", "body", "keep_alive", "error")

    def __init__(self) -> None:
        self.method = ""
        self.target = b""
        self.version = "1.1"
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.keep_alive = True
        self.error: str | None = None


class _ClientConn(_FlowControlled):
    """One client connection: parse requests, run each exchange, write the response."""

    def __init__(self, proxy: "Proxy", conn_id: int) -> None:
        self.proxy = proxy
        self.id = conn_id
        self.loop = proxy._loop
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.requests: deque[_Request] = deque()
        self.current: _Request | None = None
        self.head_bytes = 0
        self.closed = False
        self.busy = False
        self.waiter: asyncio.Future | None = None
        self.task: asyncio.Task | None = None

    # -- protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._take_transport(transport)
        self.proxy._conns.add(self)
        self.task = self.loop.create_task(self._run())

    def data_received(self, data: bytes) -> None:
        if self.current is None or not self.current.method:
            self.head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._bad("upgrade requests are not supported by the streamlab proxy")
        except httptools.HttpParserError as exc:
            self._bad(f"malformed HTTP request: {exc}")
        if self.head_bytes > MAX_REQUEST_HEAD:
            self._bad(f"request head larger than {MAX_REQUEST_HEAD} bytes")
        if len(self.requests) > 16 and self.transport is not None:
            self.transport.pause_reading()  # a pipelining client waits for us
        self._wake()

    def eof_received(self) -> None:
        # nginx treats a client's FIN during a response as an abort (499) and closes the upstream
        self._lost()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost()
        self._release_drain()


    # -- httptools callbacks
    def on_message_begin(self) -> None:
        self.current = _Request()

    def on_url(self, url: bytes) -> None:
        if self.current is not None:
            self.current.target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.current is not None:
            self.current.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        req = self.current
        if req is None:
            return
        req.method = self.parser.get_method().decode("latin-1")
        req.version = self.parser.get_http_version()
        req.keep_alive = self.parser.should_keep_alive()
        self.head_bytes = 0
        if (b"expect", b"100-continue") in ((k, v.lower()) for k, v in req.headers) and req.version == "1.1":
            self.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # like nginx: the client may send its body

    def on_body(self, body: bytes) -> None:
        if self.current is not None:
            self.current.body.append(body)

    def on_message_complete(self) -> None:
        if self.current is not None:
            self.requests.append(self.current)
            self.current = None

    # -- helpers
    def _bad(self, why: str) -> None:
        req = _Request()
        req.error = why
        self.requests.append(req)
        if self.transport is not None:
            self.transport.pause_reading()

    def _lost(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._wake()
        if self.busy and self.task is not None:
            self.task.cancel()  # stop the exchange: the upstream gets closed in its cleanup

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def _next_request(self, idle: float | None) -> _Request | None:
        while not self.requests:
            if self.closed:
                return None
            self.waiter = self.loop.create_future()
            try:
                async with asyncio.timeout(idle):
                    await self.waiter
            except TimeoutError:
                return None  # keepalive_timeout: close quietly, like nginx
            finally:
                self.waiter = None
        req = self.requests.popleft()
        if self.transport is not None and len(self.requests) <= 4 and req.error is None:
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

    # -- the connection's life
    async def _run(self) -> None:
        proxy = self.proxy
        try:
            first = True
            while not self.closed:
                idle = to_real(proxy.client_header_timeout if first else proxy.keepalive_timeout)
                req = await self._next_request(idle)
                first = False
                if req is None:
                    break
                if req.error is not None or not self._valid(req):
                    self._respond_error(400, req.error or "bad request", keep_alive=False)
                    break
                self.busy = True
                try:
                    keep = await proxy._exchange(self, req)
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
                       content_type: str = "text/html") -> None:
        if body is None:
            body = error_page(status)
            if status == 400:  # say what was wrong: a notebook reader sees it
                body = body.replace(b"</h1></center>", b"</h1></center>\r\n<p>" + detail.encode() + b"</p>", 1)
        head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\nServer: {SERVER_NAME}\r\n"
                f"Date: ").encode() + _http_date() + (
                f"\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n").encode()
        self.write(head + body)
        self.proxy._record("status", 0, str(status), self.id)
        self.proxy._record("out", len(head) + len(body), "", self.id)
        if status == 400:
            self.proxy._record("fault", 0, f"bad request: {detail}", self.id)
            self.proxy._record("close", 0, "400", self.id)


# --------------------------------------------------------------------------- the proxy


def _parse_upstream(upstream: Any) -> tuple[str, int, str]:
    url = upstream.url if hasattr(upstream, "url") else str(upstream)
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise ValueError(f"upstream must be an http:// URL, got {url!r}")
    host = parts.hostname or "127.0.0.1"
    if host == "localhost":
        host = "127.0.0.1"
    return host, parts.port or 80, parts.path.rstrip("/")


class Configurable:
    """The configuration API every proxy engine shares (the embedded proxy and real nginx).

    Needs ``self._ruleset``; an engine that must act on a change (nginx reloads) overrides
    ``_apply_rules``.
    """

    _ruleset: RuleSet

    @property
    def rules(self) -> tuple[Rule, ...]:
        """Every rule in force, in the order added (profile first)."""
        return self._ruleset.rules

    @property
    def faults(self) -> list[Fault]:
        """The chain a request to ``/`` gets (after the Noop), in stage order."""
        return chain_for(self.rules, "/")

    def chain(self, path: str = "/") -> list[Fault]:
        """The faults a request to ``path`` runs through, Noop first."""
        return [Noop(), *chain_for(self.rules, path)]

    def inject(self, *faults: Any, path_prefix: str = "/") -> Injection:
        """Add faults now; use ``with proxy.inject(...):`` to remove them on exit (also on error)."""
        rules = as_rules(faults, path_prefix)
        self._check_rules(rules)
        self._ruleset.add(rules)
        try:
            self._apply_rules()
        except BaseException:
            self._ruleset.remove(rules)
            raise
        return Injection(self, rules)

    def _remove_rules(self, rules: tuple[Rule, ...]) -> None:
        self._ruleset.remove(rules)
        self._apply_rules()

    def _check_rules(self, rules: tuple[Rule, ...]) -> None:
        """Refuse rules this engine cannot carry out (the embedded proxy takes them all)."""

    def _apply_rules(self) -> None:
        """Make a change of rules take effect (the embedded proxy reads them per request)."""


class Proxy(Configurable, Server):
    """An HTTP/1.1 reverse proxy on 127.0.0.1 that can be told to misbehave like a real hop.

        >>> from streamlab.hops import ReadTimeout, Buffering
        >>> with Proxy(upstream=mock.url, profile="nginx") as proxy:          # nginx's defaults
        ...     with proxy.inject(ReadTimeout(seconds=30)):                 # for this block only
        ...         client = openai.OpenAI(base_url=proxy.url + "/v1", ...)
        ...     proxy.log.of("fault")                                        # what fired, when

    Keyword-only settings (durations in scenario seconds):

    upstream            URL (or a started ``Server``) to forward to; a path is prepended to requests
    faults              faults, ``Rule``s or spec strings applied to every request from the start
    profile             a preset from ``hops.PROFILES`` ("nginx", "load_balancer", "api_gateway",
                        "serverless"); its faults come first, ``faults`` after (and override)
    proxy_http_version  HTTP version spoken to the upstream ("1.0" like nginx's default, or "1.1")
    keepalive_timeout   idle time before an idle client connection is closed (nginx: 75 s)
    client_header_timeout  time a new connection may take to send its request head (nginx: 60 s)
    record              keep a ``HopLog`` of every read and write (off for benchmarks)
    name                the hop's name in logs and plots
    port                port to listen on (0: a free one)

    The same settings drive real nginx: see ``streamlab.NginxProxy`` and ``proxy_for``.
    """

    kind = "embedded proxy"

    def __init__(self, *, upstream: Any, faults: Iterable[Any] = (), profile: str | None = None,
                 proxy_http_version: str = "1.0", keepalive_timeout: float = 75.0,
                 client_header_timeout: float = 60.0, record: bool = True, name: str = "proxy",
                 port: int = 0) -> None:
        super().__init__()
        if proxy_http_version not in ("1.0", "1.1"):
            raise ValueError(f"proxy_http_version is '1.0' or '1.1', got {proxy_http_version!r}")
        if not hasattr(upstream, "url"):
            _parse_upstream(upstream)  # a bad URL fails here, not at start()
        self.upstream = upstream
        self.name = name
        self.proxy_http_version = proxy_http_version
        self.keepalive_timeout = keepalive_timeout
        self.client_header_timeout = client_header_timeout
        self.profile = profile
        self._ruleset = RuleSet(profile_rules(profile) + as_rules(faults))
        self.log = HopLog(name)
        self._record: Callable[..., Any] = self.log.add if record else _ignore
        self._loop_thread: LoopThread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[_ClientConn] = set()
        self._ids = itertools.count(1)
        self._upstream: tuple[str, int, str] | None = None
        self._fixed_port = port

    # -- configuration: rules, faults, chain(), inject() come from Configurable

    # -- lifecycle
    def _start(self) -> None:
        self._upstream = _parse_upstream(self.upstream)
        self._loop_thread = LoopThread(f"streamlab-{self.name}")
        self._loop = self._loop_thread.loop
        sock = bound_socket() if not self._fixed_port else _bind(self._fixed_port)
        self.port = sock.getsockname()[1]

        async def serve() -> None:
            self._server = await self._loop.create_server(  # type: ignore[union-attr]
                lambda: _ClientConn(self, next(self._ids)), sock=sock, backlog=1024)

        self._loop_thread.submit(serve()).result(10)

    def _stop(self) -> None:
        thread, self._loop_thread = self._loop_thread, None
        if thread is None:
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            tasks = []
            for conn in list(self._conns):
                conn.close()
                if conn.task is not None:
                    conn.task.cancel()
                    tasks.append(conn.task)
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            thread.submit(shutdown()).result(5)
        thread.stop()
        self._server = None
        self._conns.clear()

    # -- one exchange
    async def _exchange(self, conn: _ClientConn, req: _Request) -> bool:
        """Run one request through the chain; return True if the client connection stays open."""
        ex = Exchange(self, conn.id, req.method, req.target.decode("latin-1"), req.version, req.headers,
                      b"".join(req.body))
        record = self._record
        record("open", 0, f"{ex.method} {ex.target}", conn.id)
        faults = self.chain(ex.path)
        items: AsyncIterator[Any] = _Source(ex, self._upstream, self.proxy_http_version)  # type: ignore[arg-type]
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
                elif type(item) is Head:
                    framing, keep_alive, data = self._head_bytes(ex, item, keep_alive)
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
            logger.info("streamlab proxy %s: conn %d %s %s: %s", self.name, conn.id, ex.method, ex.target,
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
            logger.exception("streamlab proxy %s: exchange failed", self.name)
            record("fault", 0, f"internal error: {exc!r}", conn.id)
            if not head_sent:
                conn._respond_error(502, "internal error", keep_alive=False)
            conn.close()
            record("close", 0, "error", conn.id)
            return False
        finally:
            await self._cleanup(ex, gens)

    async def _cleanup(self, ex: Exchange, gens: list[Any]) -> None:
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

    def _head_bytes(self, ex: Exchange, head: Head, keep_alive: bool) -> tuple[str, bool, bytes]:
        """Status line and headers toward the client, and how the body will be framed."""
        headers = [(k, v) for k, v in head.headers if k not in _DROP_FROM_UPSTREAM and not k.startswith(b"x-accel-")]
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

    def __repr__(self) -> str:
        where = f"{self.host}:{self.port}" if self.port else "not started"
        return f"<Proxy {self.name} {where} -> {self._upstream or self.upstream} faults={self.faults}>"


def _bind(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def _title(name: bytes) -> bytes:
    return b"-".join(part[:1].upper() + part[1:] for part in name.split(b"-"))


def _ignore(*args: Any, **kwargs: Any) -> None:
    return None


def profile_rules(profile: str | None) -> tuple[Rule, ...]:
    if profile is None:
        return ()
    from .hops import PROFILES

    try:
        preset = PROFILES[profile]
    except KeyError:
        raise ValueError(f"unknown profile {profile!r}; known: {', '.join(PROFILES)}") from None
    return as_rules(preset())
