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
(``_exchange.run``) writes what comes out of the last fault. A fault that holds items back must
release them when an ``Abort`` passes through it (nginx flushes what it holds
before closing), so the sink's rule stays simple:

    Abort, response head not yet written .. write the error response (504, 502 ...)
    Abort, head already written ........... close without the terminating chunk (a cut)
    Abort(reset=True) ..................... TCP RST (SO_LINGER 0)
    End from a timer (hops.Timer action) .. not seen by the sink: the timer's link passes the
                                            end's tail on and stops, so the body ends cleanly

Faults are ordered by ``stage`` (timers on the upstream read first, then
buffering, compression, framing, byte limits), whatever order they were added
in, because nginx's filters have a fixed order too; for each fault type the
rule added last wins (so ``inject(ReadTimeout(seconds=5))`` overrides the 60 s of
a profile). Rules (the wrapper holding what every fault shares: which request
paths) are snapshotted when a request starts.

Durations are scenario seconds, converted with ``to_real()`` when a fault acts.
What the hop saw is in ``proxy.log`` (a ``HopLog``, bounded). Concrete faults, profiles
and spec parsing live in ``streamlab.hops``; real nginx in ``_nginx.py``.

The proxy is split along its seams; every name that lived here is still importable from here:

    _hopbase.py    Marker, Head, Abort, error_page, Fault + REGISTRY, Rule, pace, Exchange (below hops)
    _rules.py      as_rules, chain_for, RuleSet, Configurable, profile_rules
    _http.py       limits (nginx names, measured defaults), RequestBody spool, dates, header names
    _exchange.py   _Upstream (response parser, head limit), _Source (connect, send), run() (the sink)
    _proxy_conn.py _ClientConn (request parser, head/body limits and timers, keep-alive, lingering close)
    _proxy.py      Proxy (settings, lifecycle)
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
from typing import Any, Callable, Iterable

from . import _exchange
from ._exchange import _Source, _Upstream, _head_bytes, _request_bytes
from ._hopbase import (CONNECTED, REASONS, REGISTRY, SENDING, SENT, SERVER_NAME, Abort, Exchange, Fault, Head,
                       Injection, Marker, Noop, Rule, _Paced, _REASONS, error_page, pace, register)
from ._http import (MAX_QUEUED_ITEMS, SEND_PIECE, UNBUFFERED_RESPONSE_HEAD, _DROP_FROM_UPSTREAM, _HOP_BY_HOP,
                    _FlowControlled, _http_date, _ignore, _parse_upstream, _Request, _title, check_bind_host,
                    parse_size)
from ._proxy_conn import _ClientConn
from ._rules import Configurable, RuleSet, as_rules, chain_for, profile_rules
from ._servers import LoopThread, Server, bound_socket
from ._timeline import HopLog

__all__ = [
    "Proxy", "Fault", "Noop", "Rule", "Injection", "Abort", "Head", "Marker", "Exchange",
    "CONNECTED", "SENDING", "SENT", "REGISTRY", "register", "pace", "error_page",
]

logger = logging.getLogger("streamlab.proxy")

MAX_REQUEST_HEAD = 1024 + 4 * 8192  # the default request head limit (large_client_header_buffers 4 8k)


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
    profile             a preset from ``hops.PROFILES`` ("nginx", "ingress_nginx", "cloudflare", "aws_alb",
                        "aws_api_gateway", "gcp_load_balancer", "heroku", "load_balancer", "api_gateway",
                        "serverless"); its faults come first, ``faults`` after (and override)
    proxy_http_version  HTTP version spoken to the upstream ("1.0" like nginx's default, or "1.1")
    keepalive_timeout   idle time before an idle client connection is closed (nginx: 75 s)
    client_header_timeout  the longest a request head may take to arrive, whole (nginx: 60 s; from the
                        accept for a connection's first request, from its first byte for later ones)
    client_body_timeout idle time between two reads of a request body (nginx: 60 s)
    large_client_header_buffers  (number, size): a request line over ``size`` gets 414, a header line
                        over it or a head over 1k + number x size gets 400 (nginx: (4, 8k))
    client_max_body_size  a larger request body gets 413 (nginx: 1m; 0: no limit); ``int`` or "1m"
    proxy_buffer_size   largest upstream response head, else 502 at once (64k, what ``nginx_conf``
                        writes with buffering off; a ``Buffering`` fault's ``buffer_size`` wins)
    x_accel             "strip" (default, what nginx does: X-Accel-* response headers are consumed,
                        never passed on) or "pass" (what a non-nginx hop does: they reach the next
                        hop, so an app's ``X-Accel-Buffering: no`` still reaches an nginx in front)
    websocket           always True: a ``101 Switching Protocols`` answer turns the exchange into a
                        raw tunnel both ways (accepted so ``proxy_for(..., websocket=True)`` works
                        with either engine; real nginx needs it to pass the upgrade headers)
    record              keep a ``HopLog`` of every read and write (off for benchmarks)
    name                the hop's name in logs and plots
    port                port to listen on (0: a free one)
    host                address to listen on; anything but loopback is refused unless
                        ``allow_non_loopback=True`` (then a RuntimeWarning says it is exposed)

    The request limits are in ``streamlab/_http.py`` with what nginx 1.22.1 was measured to do.

    The same settings drive real nginx: see ``streamlab.NginxProxy`` and ``proxy_for``.
    """

    kind = "embedded proxy"

    def __init__(self, *, upstream: Any, faults: Iterable[Any] = (), profile: str | None = None,
                 proxy_http_version: str = "1.0", keepalive_timeout: float = 75.0,
                 client_header_timeout: float = 60.0, client_body_timeout: float = 60.0,
                 large_client_header_buffers: tuple[int, Any] = (4, "8k"), client_max_body_size: Any = "1m",
                 proxy_buffer_size: Any = UNBUFFERED_RESPONSE_HEAD, record: bool = True, name: str = "proxy",
                 port: int = 0, host: str = "127.0.0.1", allow_non_loopback: bool = False,
                 x_accel: str = "strip", websocket: bool = True) -> None:
        super().__init__()
        if websocket is not True:
            raise ValueError("the embedded proxy always relays WebSocket upgrades; websocket=False (no "
                             "Upgrade/Connection headers passed on) is a setting of real nginx (NginxProxy)")
        if x_accel not in ("strip", "pass"):
            raise ValueError(f"x_accel is 'strip' (like nginx) or 'pass' (like a non-nginx hop), got {x_accel!r}")
        self.x_accel = x_accel
        self.host = check_bind_host(host, allow_non_loopback, "the streamlab proxy")
        if proxy_http_version not in ("1.0", "1.1"):
            raise ValueError(f"proxy_http_version is '1.0' or '1.1', got {proxy_http_version!r}")
        if not hasattr(upstream, "url"):
            _parse_upstream(upstream)  # a bad URL fails here, not at start()
        self.upstream = upstream
        self.name = name
        self.proxy_http_version = proxy_http_version
        self.keepalive_timeout = keepalive_timeout
        self.client_header_timeout = client_header_timeout
        self.client_body_timeout = client_body_timeout
        count, size = large_client_header_buffers
        if int(count) < 1:
            raise ValueError(f"large_client_header_buffers needs at least 1 buffer, got {count}")
        self.large_client_header_buffers = (int(count), parse_size(size, "large_client_header_buffers"))
        self.client_max_body_size = parse_size(client_max_body_size, "client_max_body_size")
        self.proxy_buffer_size = parse_size(proxy_buffer_size, "proxy_buffer_size")
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
        sock = bound_socket() if self._fixed_port == 0 and self.host == "127.0.0.1" else \
            _bind(self._fixed_port, self.host)
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

    # -- one exchange (``_exchange.run``: the chain and the sink)
    async def _exchange(self, conn: _ClientConn, req: _Request) -> bool:
        return await _exchange.run(self, conn, req)

    def __repr__(self) -> str:
        where = f"{self.host}:{self.port}" if self.port else "not started"
        return f"<Proxy {self.name} {where} -> {self._upstream or self.upstream} faults={self.faults}>"


def _bind(port: int, host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock

