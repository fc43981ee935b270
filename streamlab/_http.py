"""HTTP/1.1 pieces of the embedded proxy: limits, the request body spool, dates, header names.

The limits have nginx's names and defaults, and were measured on nginx 1.22.1
(``tests/test_proxy_limits.py`` sends the same bytes to both):

    setting                       default   too much ->
    client_header_timeout         60 s      the whole request head (not each read) must arrive in
                                            time, counted from the accept (first request) or from
                                            the first byte (a later request on a kept-alive
                                            connection); then the connection is closed, no answer
    large_client_header_buffers   (4, 8k)   request line longer than 8k -> 414 "Request-URI Too
                                            Large"; a header line longer than 8k, or a head longer
                                            than 1k + 4 x 8k -> 400 "Request Header Or Cookie Too
                                            Large"; however the bytes arrive (one read or 1 byte each)
    client_max_body_size          1m        413 "Request Entity Too Large" (0: no limit), at once for
                                            a Content-Length, when crossed for a chunked body
    proxy_buffer_size             64k       an upstream response head larger -> 502 at once,
    (Buffering.buffer_size when             "upstream sent too big header" (nginx_conf() writes
     a Buffering fault applies)             64k when proxy_buffering is off)

nginx packs header lines into its buffers, so its exact total limit depends on
line lengths by a few hundred bytes; the embedded proxy uses 1k + 4 x 8k.
Request bodies are read whole before the upstream is contacted (nginx's
``proxy_request_buffering on``) but kept in memory only up to
``BODY_IN_MEMORY``; past that they are spooled to an unlinked temp file and
sent upstream from there in ``SEND_PIECE`` pieces.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import socket
import tempfile
import time
import warnings
from email.utils import formatdate
from typing import Any
from urllib.parse import urlsplit

__all__ = ["parse_size", "check_bind_host", "RequestBody", "MAX_QUEUED_ITEMS", "SEND_PIECE",
           "CLIENT_HEADER_BUFFER", "UNBUFFERED_RESPONSE_HEAD", "BODY_IN_MEMORY"]

MAX_QUEUED_ITEMS = 64             # upstream reads queued before we stop reading the upstream socket
SEND_PIECE = 64 * 1024            # request bodies go upstream in pieces of this size
CLIENT_HEADER_BUFFER = 1024       # nginx client_header_buffer_size: the first buffer of a request head
UNBUFFERED_RESPONSE_HEAD = 64 * 1024  # proxy_buffer_size nginx_conf() writes when buffering is off
BODY_IN_MEMORY = 64 * 1024        # a request body larger than this is spooled to a temp file
READ_SLACK = 256 * 1024           # asyncio reads at most this much at once (bounds a partial head line)


def parse_size(value: Any, what: str) -> int:
    """nginx size syntax: ``1048576``, ``"8k"``, ``"1m"``, ``"1g"`` -> bytes."""
    if isinstance(value, bool):
        raise ValueError(f"{what}: expected a size, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{what}: a size is >= 0, got {value}")
        return value
    match = re.fullmatch(r"\s*(\d+)\s*([kKmMgG]?)\s*", str(value))
    if not match:
        raise ValueError(f"{what}: expected a size like 8192, '8k' or '1m', got {value!r}")
    return int(match.group(1)) * {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}[match.group(2).lower()]


def check_bind_host(host: str, allow_non_loopback: bool, what: str) -> str:
    """Refuse an address outside 127.0.0.0/8 and ::1 unless the caller opted in (then warn)."""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if loopback:
        return "127.0.0.1" if host == "localhost" else host
    if not allow_non_loopback:
        raise ValueError(f"{what} binds loopback only; host={host!r} would expose it to the network "
                         f"(pass allow_non_loopback=True if you mean it)")
    warnings.warn(f"{what} listens on {host}, reachable from other machines: a fault-injecting test hop "
                  f"has no authentication", RuntimeWarning, stacklevel=3)
    return host


class RequestBody:
    """A request body as it arrives: in memory up to ``BODY_IN_MEMORY``, then in an unlinked temp file."""

    __slots__ = ("size", "_mem", "_file")

    def __init__(self) -> None:
        self.size = 0
        self._mem: list[bytes] = []
        self._file: Any = None

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self._file is None:
            self._mem.append(data)
            if self.size > BODY_IN_MEMORY:
                self._file = tempfile.TemporaryFile(prefix="streamlab-body-")
                self._file.write(b"".join(self._mem))
                self._mem = []
        else:
            self._file.write(data)

    def value(self) -> Any:
        """``bytes`` when small, else the (rewound) file."""
        if self._file is None:
            return b"".join(self._mem)
        self._file.flush()
        self._file.seek(0)
        return self._file

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
        self._mem = []


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


def _expire(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


_HOP_BY_HOP = {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding",
               b"upgrade", b"host", b"content-length", b"expect"}


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
    """One request as parsed; ``error`` (with ``status``, ``page``) when it must be refused instead."""

    __slots__ = ("method", "target", "version", "headers", "body", "keep_alive", "error", "status", "page",
                 "head_size", "upgrade")

    def __init__(self) -> None:
        self.method = ""
        self.target = b""
        self.version = "1.1"
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = RequestBody()
        self.keep_alive = True
        self.error: str | None = None
        self.status = 400
        self.page: bytes | None = None
        self.head_size = 0  # request line + header lines seen so far (nginx large_client_header_buffers)
        self.upgrade: bytes | None = None  # the Upgrade header of a request that asks to switch protocols


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



def _title(name: bytes) -> bytes:
    return b"-".join(part[:1].upper() + part[1:] for part in name.split(b"-"))


def _ignore(*args: Any, **kwargs: Any) -> None:
    return None

