"""The types every proxy module and every hop fault shares, below all of them (imports run one way).

    _hopbase  (this)  markers, Head, Abort, error pages, Fault + REGISTRY, Rule, pace, Exchange
      ▲   ▲
      │   hops.py        the concrete faults and profiles
      │   _rules.py      rule sets, chain_for, Configurable (the API both engines share)
      │   _http.py       HTTP/1.1 pieces: limits, request body spool, dates, error responses
      │   _exchange.py   one request through the chain: upstream side (_Source) and the sink
      │   _proxy_conn.py one client connection (parser, head/body limits, keep-alive)
      └── _proxy.py      the Proxy server; re-exports every name that used to live there

Nothing here imports a module above it at import time. Two calls reach up lazily
because the grammar and the presets live with the concrete faults: ``Fault.spec()``
(``hops.to_spec``) and, in ``_rules``, spec strings and profiles (``hops.parse``,
``hops.PROFILES``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from typing import Any, AsyncIterator, Callable, ClassVar

__all__ = [
    "Marker", "CONNECTED", "SENDING", "SENT", "Head", "Abort", "End", "error_page", "SERVER_NAME", "REASONS",
    "REGISTRY", "register", "Fault", "Noop", "Rule", "Injection", "pace", "Exchange",
]

SERVER_NAME = "streamlab-proxy"

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



class End:
    """What a timer returns instead of an ``Abort`` when the body is to end *cleanly* where it is.

    The timer's link (``pace``) then passes ``tail`` on (it may be empty) and ends the
    stream as if the upstream had finished: every fault after it sees a normal end
    (buffers flush, gzip finishes its stream) and the client gets the terminating
    chunk, a silent truncation. ``sse=True`` (an injected SSE event): only for an
    ``text/event-stream`` response, which the tail is made to start on an event
    boundary of; any other response is cut instead. ``note`` goes to the hop log.
    """

    __slots__ = ("note", "tail", "sse", "fault")

    def __init__(self, note: str, *, tail: bytes = b"", sse: bool = False, fault: str = "") -> None:
        self.note = note
        self.tail = tail
        self.sse = sse
        self.fault = fault


REASONS = {400: "Bad Request", 408: "Request Time-out", 413: "Request Entity Too Large",
           414: "Request-URI Too Large", 499: "Client Closed Request", 502: "Bad Gateway",
           503: "Service Unavailable", 504: "Gateway Time-out", 524: "A Timeout Occurred"}
_REASONS = REASONS  # the old private name


def error_page(status: int, signature: str = SERVER_NAME, *, title: str | None = None,
               line: str | None = None) -> bytes:
    """An error body shaped like nginx's own pages.

    ``title`` replaces the ``<title>`` (nginx's "400 Request Header Or Cookie Too
    Large" page keeps ``<h1>400 Bad Request</h1>``), ``line`` adds a centred line under the heading.
    """
    heading = f"{status} {REASONS.get(status, 'Error')}"
    extra = f"<center>{line}</center>\r\n" if line else ""
    return (f"<html>\r\n<head><title>{title or heading}</title></head>\r\n<body>\r\n"
            f"<center><h1>{heading}</h1></center>\r\n{extra}"
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


# --------------------------------------------------------------------------- timing helper


def pace(items: AsyncIterator[Any], ex: "Exchange", *,
         deadline: Callable[[int, float], float | None],
         expire: Callable[[int], Abort]) -> AsyncIterator[Any]:
    """Pass items on, waiting for each at most until ``deadline(phase, now)`` (loop time, None: forever).

    ``phase`` is 0 while connecting, 1 while sending the request, 2 while waiting
    for the response head, 3 while reading the body. When a wait runs out,
    ``expire(phase)`` gives the ``Abort`` to raise, or an ``End``: then the link
    passes the end's tail on and stops, a clean end of the body. The shared core of every
    timer fault (read timeout, idle timeout, deadlines). Timers next to each
    other in the chain share one link (the earliest deadline wins), which keeps
    a chain of several timers as cheap as one.
    """
    if not isinstance(items, _Paced):
        items = _Paced(items, ex)
    items.timers.append((deadline, expire))
    return items


class _Paced:
    """The link behind ``pace``: an async iterator with a list of (deadline, expire) timers."""

    __slots__ = ("it", "ex", "timers", "phase", "loop", "next_until", "head", "last", "ended")

    def __init__(self, items: AsyncIterator[Any], ex: "Exchange") -> None:
        self.it = items.__aiter__()
        self.ex = ex
        self.head: Head | None = None
        self.last = b""     # the last two body bytes passed on (where an injected SSE event starts)
        self.ended = False  # an End fired: nothing more
        # the first link (_exchange._Source) can wait with a deadline itself: no task cancellation
        self.next_until = getattr(self.it, "next_until", None)
        self.timers: list[tuple[Callable[[int, float], float | None], Callable[[int], Abort]]] = []
        self.phase = 0
        self.loop = asyncio.get_running_loop()

    def __aiter__(self) -> "_Paced":
        return self

    async def __anext__(self) -> Any:
        if self.ended:
            raise StopAsyncIteration
        phase = self.phase
        now = self.loop.time()
        until = expire = None
        for deadline, on_expire in self.timers:
            when = deadline(phase, now)
            if when is not None and (until is None or when < until):
                until, expire = when, on_expire
        if until is None:
            item = await self.it.__anext__()
        elif self.next_until is not None:  # a timer handle, no task cancellation
            try:
                item = await self.next_until(until)
            except TimeoutError:
                return await self._expired(expire(phase))  # type: ignore[misc]
        else:
            try:
                async with asyncio.timeout_at(until):
                    item = await self.it.__anext__()
            except TimeoutError:
                return await self._expired(expire(phase))  # type: ignore[misc]
        if type(item) is bytes:
            if item:
                self.last = (self.last + item)[-2:]
            return item
        if item is CONNECTED:
            self.phase = 1
        elif item is SENT:
            self.phase = 2
        elif type(item) is Head:
            self.phase = 3
            self.head = item
        return item

    async def _expired(self, outcome: "Abort | End") -> Any:
        """Raise the timer's ``Abort``, or carry out its ``End`` (a clean end of the body)."""
        if isinstance(outcome, Abort):
            raise outcome
        tail = outcome.tail
        if outcome.sse:
            if self.head is None or self.head.content_type != "text/event-stream":
                raise Abort(f"{outcome.note} (not an SSE response: cut instead)", fault=outcome.fault)
            if self.last and not self.last.endswith(b"\n\n"):  # finish the event under way first
                tail = (b"\n" if self.last.endswith(b"\n") else b"\n\n") + tail
        self.ended = True
        self.ex.log("fault", 0, f"{outcome.fault}: {outcome.note}", self.ex.conn)
        await self.aclose()  # the upstream is done with: close it now
        if tail:
            return tail
        raise StopAsyncIteration

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
    client may block), ``max_response_head`` (the largest upstream response head
    accepted: nginx ``proxy_buffer_size``; ``Buffering`` sets it), and register
    ``cleanups`` (coroutines run at the end).

    ``body`` is the request body as read from the client: ``bytes``, or for a
    large body the temp file it was spooled to (``body_size`` bytes either way),
    so a big upload never sits in memory whole.
    """

    __slots__ = ("conn", "method", "path", "target", "version", "headers", "body", "body_size", "t_open",
                 "log", "buffered", "chunked", "send_timeout", "cleanups", "upstream", "proxy",
                 "max_response_head")

    def __init__(self, proxy: Any, conn: int, method: str, target: str, version: str,
                 headers: list[tuple[bytes, bytes]], body: Any = b"", body_size: int | None = None,
                 max_response_head: int | None = None) -> None:
        self.proxy = proxy
        self.conn = conn
        self.method = method
        self.target = target
        self.path = target.split("?", 1)[0]
        self.version = version
        self.headers = headers
        self.body = body
        self.body_size = len(body) if body_size is None else body_size
        self.max_response_head = max_response_head
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

