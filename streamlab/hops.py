"""Faults of the hops between a client and the model: proxies, load balancers, gateways.

One fault is one frozen dataclass of settings plus one method, ``pipe``, that
sees the response stream of an exchange and passes on what it is not meant to
change (see ``_proxy.py`` and ``_hopbase.py`` for the stream it sees). Each is registered by name,
so the CLI flags (``streamlab proxy --read-timeout 30``), the spec strings
(``from_spec("read_timeout=30")``) and a widget's dropdown (``names()``) all
come from ``REGISTRY``. Durations are scenario seconds (``streamlab.time_scale``).

    name               setting it emulates                      the client sees
    read_timeout       nginx proxy_read_timeout                 504 before headers, a cut after
    upstream_send_timeout  nginx proxy_send_timeout             504 (upstream not reading the request)
    send_timeout       nginx send_timeout                       a cut (the client stopped reading)
    buffering          nginx proxy_buffering, proxy_buffer_size,  headers held until the first body
                       proxy_buffers, X-Accel-Buffering          bytes; events held if the upstream
                                                                 body is not chunked; 502 big header
    gzip               nginx gzip, gzip_types, gzip_buffers      a buffered SSE stream held to the end
    chunked            nginx chunked_transfer_encoding           close-delimited body: a cut looks complete
    idle_timeout       cloud load balancer idle timeout (60 s)  504 before headers, a cut after
    deadline           API gateway integration timeout (29 s)   504 before headers, a cut after
    kill_after         serverless max duration                  504 before headers, a cut after
    origin_read_timeout  Cloudflare Proxy Read Timeout (100 s)  524 "error code: 524" before headers, a cut after
    backend_timeout    Google Cloud backend service timeout     502 before headers, a cut at 30 s (a total)
                       (30 s, a total for HTTP)
    router_timeout     Heroku router (30 s to the first byte,   503 H12 before the first byte, a cut after
                       then 55 s between bytes)                 55 s of silence (H15)
    cut_after_bytes    a byte limit (toxiproxy limit_data)      a cut after N body bytes
    reset_after_bytes  a TCP reset (toxiproxy reset_peer)       ECONNRESET after N body bytes

What real nginx 1.22.1 does with an SSE stream was measured, not assumed
(tests/test_nginx_conformance.py runs every scenario through both):

* ``proxy_buffering on`` (the default) holds SSE events back only when the
  upstream's body is not chunked (Content-Length, or close-delimited as many
  servers answer nginx's default HTTP/1.0 requests): then they leave in 4 KiB
  buffers or at the end. A chunked body (uvicorn and most ASGI servers) is
  sent on read by read. Buffering always holds the response *headers* until
  the first body bytes leave, and reads the upstream as fast as it can
  whatever the client's pace (a slow client does not slow the model down).
* ``gzip`` on ``text/event-stream`` with buffering on holds the whole stream
  (headers too) until its 4 KiB output buffer fills or the stream ends. With
  ``X-Accel-Buffering: no`` or ``proxy_buffering off`` gzip flushes every read.
* ``proxy_read_timeout`` counts from the last read, but nginx timers are lazy by
  up to 300 ms (a re-armed timer is not moved if it would move by less), so
  real nginx may fire up to 0.3 s early; below 0.3 s it acts like a deadline.
  The embedded proxy implements the documented idle semantics exactly.
* A read timeout after the upstream sent headers but before any body byte
  gives the client ``200`` and then a cut, not a ``504``.

Every timer fault is a ``Timer``: its ``action`` says what it does to a response
already streaming when it fires: ``cut`` (the default), ``end`` (a clean end: a
silent truncation), ``error-event`` (an SSE error object, then a clean end) or
``reset`` (TCP RST); before the response head the client gets the product's error
response whatever the action.

Profiles (``PROFILES``) bundle the documented defaults of one product, each
docstring citing the documentation it was checked against: ``nginx()``,
``ingress_nginx()``, ``cloudflare()``, ``aws_alb()``, ``aws_api_gateway()``,
``gcp_load_balancer()``, ``heroku()``, and the generic ``load_balancer()``,
``api_gateway()``, ``serverless()``.

A fault of your own is one more small class (it gets a CLI flag too)::

    @hops.register
    @dataclass(frozen=True, kw_only=True)
    class DropComments(hops.Fault):  # a hop that strips SSE heartbeats (": keep-alive")
        name: ClassVar[str] = "drop_comments"
        async def pipe(self, items, ex):
            async for item in items:
                yield re.sub(rb"(?m)^:.*\\n", b"", item) if type(item) is bytes else item
"""

from __future__ import annotations

import asyncio
import json
import re
import zlib
from collections import deque
from dataclasses import MISSING, dataclass, fields, replace
from typing import Any, AsyncIterator, Callable, ClassVar

from ._hopbase import (REGISTRY, Abort, End, Exchange, Fault, Head, Noop, Rule, error_page, pace, register)
from ._timescale import to_real
from .faults import SpecError

__all__ = [
    "Fault", "Noop", "Rule", "Abort", "End", "Head", "Exchange", "register", "pace",
    "Timer", "ACTIONS", "with_action", "sse_error_event",
    "ReadTimeout", "UpstreamSendTimeout", "SendTimeout", "Buffering", "Gzip", "ChunkedEncoding",
    "IdleTimeout", "Deadline", "KillAfter", "OriginReadTimeout", "BackendTimeout", "RouterTimeout",
    "CutAfterBytes", "ResetAfterBytes",
    "REGISTRY", "names", "from_spec", "parse", "to_spec", "SpecError", "to_real",
    "PROFILES", "nginx", "load_balancer", "api_gateway", "serverless",
    "cloudflare", "aws_alb", "aws_api_gateway", "gcp_load_balancer", "heroku", "ingress_nginx",
]

_TIMED_OUT = "upstream timed out (110: Connection timed out)"


ACTIONS = ("cut", "end", "error-event", "reset")


def sse_error_event(message: str, *, type: str = "hop_timeout", code: str | None = None) -> bytes:
    """An SSE event carrying an OpenAI-style error object (the openai SDK raises ``APIError`` on it)."""
    error = {"message": message, "type": type, "param": None, "code": code}
    return b"data: " + json.dumps({"error": error}).encode() + b"\n\n"


@dataclass(frozen=True, kw_only=True)
class Timer(Fault):
    """Base of every timer fault: what the hop does when its timer fires, ``action``.

    Before the response head the client always gets the hop's own error response
    (504, 524, 503 ... the product's page); the action decides what happens to a
    response that is already streaming:

        cut          close without the terminating chunk (what nginx, ALB, Cloudflare do);
                     httpx raises RemoteProtocolError ("incomplete chunked read")
        end          end the body cleanly with the terminating chunk: a silent truncation,
                     as some L7 proxies and serverless runtimes do (no [DONE], no error)
        error-event  inject ``data: {"error": {...}}`` (an SSE event on an event boundary),
                     then end cleanly; the openai SDK raises ``openai.APIError``. A response
                     that is not text/event-stream is cut instead
        reset        TCP RST (SO_LINGER 0); httpx raises ReadError (ECONNRESET)

    A clean end needs chunked framing toward the client: a response the upstream
    sent with Content-Length, or a close-delimited one (an HTTP/1.0 client,
    ``ChunkedEncoding(on=False)``), ends short, which the client cannot tell from a
    cut (with Content-Length it sees the body short; close-delimited it sees an end).
    ``SendTimeout`` is not a Timer: it fires on a client that stopped reading, which
    can be sent nothing more.

    Why a field on the timers and not on ``Rule`` (STYLE item 2 puts settings every
    fault shares on the wrapper): ``action`` is shared by every *timer*, not by every
    fault (a byte limit, buffering, gzip have no timer to fire), and it describes
    what this product does at its limit, so it travels with the fault: in its spec
    (``read_timeout=30:action=end``), in "the last rule of a type wins", in a
    profile (``hops.cloudflare(action="end")``), and real nginx can see it (it can
    only cut). ``with_action(faults, "end")`` re-arms a whole chain.
    """

    action: str = "cut"

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"{self.name}: action is one of {', '.join(ACTIONS)}, got {self.action!r}")

    def expired(self, phase: int, before: str, after: str, *, status: int = 504,
                **response: Any) -> "Abort | End":
        """What this timer does when it runs out in ``phase`` (see ``pace``)."""
        if phase < 3:
            return Abort(before, status=status, fault=self.name, **response)
        if self.action == "end":
            return End(f"{after}: body ended cleanly (silent truncation)", fault=self.name)
        if self.action == "error-event":
            return End(f"{after}: error event injected", sse=True, fault=self.name,
                       tail=sse_error_event(f"{self.setting}: {after}", code=self.name))
        return Abort(after, reset=self.action == "reset", fault=self.name)

    def _idle_timer(self, items: AsyncIterator[Any], ex: Exchange, before: str, after: str, *,
                    phases: Callable[[int], bool] = lambda phase: True, **response: Any) -> AsyncIterator[Any]:
        """``seconds`` of silence allowed, counted afresh at every read in the ``phases`` it watches."""
        limit = to_real(self.seconds)
        return pace(items, ex, deadline=lambda phase, now: now + limit if phases(phase) else None,
                    expire=lambda phase: self.expired(phase, before, after, **response))

    def _total_timer(self, items: AsyncIterator[Any], ex: Exchange, before: str, after: str,
                     **response: Any) -> AsyncIterator[Any]:
        """``seconds`` in all, counted from the connection's opening."""
        until = ex.t_open + to_real(self.seconds)
        return pace(items, ex, deadline=lambda phase, now: until,
                    expire=lambda phase: self.expired(phase, before, after, **response))


def with_action(faults: Any, action: str) -> list[Any]:
    """The same faults (or Rules) with every timer's ``action`` set to ``action``."""
    if action not in ACTIONS:
        raise ValueError(f"action is one of {', '.join(ACTIONS)}, got {action!r}")
    out = []
    for item in faults:
        if isinstance(item, Rule) and isinstance(item.fault, Timer):
            item = replace(item, fault=replace(item.fault, action=action))
        elif isinstance(item, Timer):
            item = replace(item, action=action)
        out.append(item)
    return out


def _expired(fault: Fault, phase: int, before: str, after: str, **response: Any) -> "Abort | End":
    """What a timer does when it runs out (kept for faults written against the old helper)."""
    if isinstance(fault, Timer):
        return fault.expired(phase, before, after, **response)
    if phase < 3:
        return Abort(before, status=504, fault=fault.name, **response)
    return Abort(after, fault=fault.name)


# --------------------------------------------------------------------------- timers (stage 10)


@register
@dataclass(frozen=True, kw_only=True)
class ReadTimeout(Timer):
    """nginx ``proxy_read_timeout``: the longest silence between two reads from the upstream.

    Before the response headers the client gets ``504 Gateway Time-out``; after
    them the connection is closed without the terminating chunk (a cut).
    nginx's default is 60 s.
    """

    seconds: float = 60.0
    name: ClassVar[str] = "read_timeout"
    setting: ClassVar[str] = "nginx proxy_read_timeout"
    value_arg: ClassVar[str] = "seconds"
    stage: ClassVar[int] = 10

    def pipe(self, items: AsyncIterator[Any], ex: Exchange) -> AsyncIterator[Any]:
        return self._idle_timer(items, ex, f"{_TIMED_OUT} while reading response header from upstream",
                                f"{_TIMED_OUT} while reading upstream", phases=lambda phase: phase >= 2)


@register
@dataclass(frozen=True, kw_only=True)
class UpstreamSendTimeout(Timer):
    """nginx ``proxy_send_timeout``: the longest the upstream may go without reading our request.

    Only a large request body to an upstream that does not read it can trip it;
    the client gets ``504``. nginx's default is 60 s.
    """

    seconds: float = 60.0
    name: ClassVar[str] = "upstream_send_timeout"
    setting: ClassVar[str] = "nginx proxy_send_timeout"
    value_arg: ClassVar[str] = "seconds"
    stage: ClassVar[int] = 10

    def pipe(self, items: AsyncIterator[Any], ex: Exchange) -> AsyncIterator[Any]:
        return self._idle_timer(items, ex, f"{_TIMED_OUT} while sending request to upstream",
                                f"{_TIMED_OUT} while sending request to upstream", phases=lambda phase: phase == 1)


@register
@dataclass(frozen=True, kw_only=True)
class SendTimeout(Fault):
    """nginx ``send_timeout``: the longest a write to the client may stay blocked.

    A client that stops reading (a stuck UI, a paused consumer) fills the socket
    buffers; after ``seconds`` without progress the proxy closes the connection:
    the client sees a cut once it reads again. nginx's default is 60 s.
    """

    seconds: float = 60.0
    name: ClassVar[str] = "send_timeout"
    setting: ClassVar[str] = "nginx send_timeout"
    value_arg: ClassVar[str] = "seconds"
    stage: ClassVar[int] = 70

    def pipe(self, items: AsyncIterator[Any], ex: Exchange) -> AsyncIterator[Any]:
        ex.send_timeout = to_real(self.seconds)  # the sink applies it to every blocked write
        return items


@register
@dataclass(frozen=True, kw_only=True)
class IdleTimeout(Timer):
    """A cloud load balancer's idle timeout (AWS ALB ``idle_timeout.timeout_seconds``, default 60 s).

    No byte from the backend for ``seconds``: ``504`` before the response
    headers, a closed connection (cut) after. SSE keep-alive comments reset it.
    """

    seconds: float = 60.0
    name: ClassVar[str] = "idle_timeout"
    setting: ClassVar[str] = "load balancer idle timeout (AWS ALB idle_timeout.timeout_seconds)"
    value_arg: ClassVar[str] = "seconds"
    stage: ClassVar[int] = 10

    def pipe(self, items: AsyncIterator[Any], ex: Exchange) -> AsyncIterator[Any]:
        return self._idle_timer(items, ex, "load balancer idle timeout",
                                "load balancer idle timeout: connection closed", body=error_page(504, "awselb/2.0"))


@register
@dataclass(frozen=True, kw_only=True)
class Deadline(Timer):
    """An API gateway's hard limit on the whole request (AWS API Gateway: 29 s integration timeout).

    Counted from the request's arrival, however much data flows. Before the
    response headers the client gets ``504 {"message": "Endpoint request timed
    out"}``; a response already streaming is cut.
    """

    seconds: float = 29.0
    name: ClassVar[str] = "deadline"
    setting: ClassVar[str] = "API gateway integration timeout (AWS API Gateway: 29 s)"
    value_arg: ClassVar[str] = "seconds"
    stage: ClassVar[int] = 10

    def pipe(self, items: AsyncIterator[Any], ex: Exchange) -> AsyncIterator[Any]:
        return self._total_timer(items, ex, "gateway deadline: endpoint request timed out",
                                 "gateway deadline: response cut", body=b'{"message": "Endpoint request timed out"}',
                                 content_type="application/json")


@register
@dataclass(frozen=True, kw_only=True)
class KillAfter(Timer):
    """A serverless platform killing the function after ``seconds`` (Vercel ``maxDuration``, Lambda timeout).

    Before the response headers the client gets ``504 FUNCTION_INVOCATION_TIMEOUT``;
    a stream already under way is cut where it is.
    """

    seconds: float = 10.0
    name: ClassVar[str] = "kill_after"
    setting: ClassVar[str] = "serverless max duration (Vercel maxDuration, AWS Lambda timeout)"
    value_arg: ClassVar[str] = "seconds"
    stage: ClassVar[int] = 10

    def pipe(self, items: AsyncIterator[Any], ex: Exchange) -> AsyncIterator[Any]:
        return self._total_timer(items, ex, "function killed at max duration",
                                 "function killed at max duration: stream cut",
                                 body=b"An error occurred with your deployment\n\nFUNCTION_INVOCATION_TIMEOUT\n",
                                 content_type="text/plain; charset=utf-8")


@register
@dataclass(frozen=True, kw_only=True)
class OriginReadTimeout(Timer):
    """Cloudflare's Proxy Read Timeout: the longest silence between two reads from the origin (100 s).

    Documented in Cloudflare's "Connection limits" (developers.cloudflare.com/
    fundamentals/reference/connection-limits, copies of 2024): "Proxy Read Timeout |
    100 | 524 | Configurable: Yes" (Enterprise, up to 6,000 s per the 524 page); the
    API calls it "Maximum time between two read operations from origin". So it is an
    idle timer, like nginx's proxy_read_timeout, counted from the request sent: no
    response head in time gets ``524``; a stream that goes silent that long after
    its head is closed (a cut). The body ``error code: 524`` (text/plain) is what
    Cloudflare serves to non-browser clients; browsers get an HTML page ("Error 524
    A timeout occurred"). That body text is not in Cloudflare's docs as stored here;
    it is what API clients get (client code and tests that match ``error code: 524``
    bodies, e.g. OpenAI-compatible gateways behind Cloudflare). One later copy of the
    limits page lists 120 s and a third-party note of 2026 cites 125 s: the 100 s of
    the 2024 copies (and of the issue) is the default here.
    """

    seconds: float = 100.0
    name: ClassVar[str] = "origin_read_timeout"
    setting: ClassVar[str] = "Cloudflare Proxy Read Timeout (100 s, HTTP 524)"
    value_arg: ClassVar[str] = "seconds"
    stage: ClassVar[int] = 10

    def pipe(self, items: AsyncIterator[Any], ex: Exchange) -> AsyncIterator[Any]:
        return self._idle_timer(items, ex, "origin did not answer within the proxy read timeout (Cloudflare 524)",
                                "origin went silent: proxy read timeout", phases=lambda phase: phase >= 2,
                                status=524, body=b"error code: 524", content_type="text/plain; charset=UTF-8")


_GFE_502 = (b"<!DOCTYPE html>\n<html lang=en>\n  <meta charset=utf-8>\n  <title>Error 502 (Server Error)!!1</title>\n"
            b"  <p><b>502.</b> <ins>That\xe2\x80\x99s an error.</ins>\n  <p>The server encountered a temporary error "
            b"and could not complete your request.<p>Please try again in 30 seconds. "
            b"<ins>That\xe2\x80\x99s all we know.</ins>\n")


@register
@dataclass(frozen=True, kw_only=True)
class BackendTimeout(Timer):
    """Google Cloud external Application Load Balancer: the backend service timeout (``timeoutSec``, 30 s).

    Documented (Compute API reference, ``BackendService.timeoutSec``): "The backend
    service timeout has a different meaning depending on the type of load balancer
    ... The default is 30 seconds"; for WebSockets it is the longest a connection
    may stay open ("this timeout is not an idle timeout - it's a timeout on the
    connection lifetime", ingress-gce's WebSocket example). For HTTP(S) the
    load-balancing docs call it a request/response timeout: the time to wait for the
    backend's *full* response (that sentence is from Google's backend-service page
    as remembered; the stored copies only have "request/response timeout"). So it is
    a total deadline counted from the request sent to the backend, however steadily
    the response streams: a model streaming for longer than 30 s is cut at 30 s. No
    head in time: ``502`` (logged as ``statusDetails: backend_timeout``) with Google's
    "502 Server Error" page; status and page are not in the stored docs (unverified).
    """

    seconds: float = 30.0
    name: ClassVar[str] = "backend_timeout"
    setting: ClassVar[str] = "Google Cloud backend service timeout (timeoutSec, 30 s)"
    value_arg: ClassVar[str] = "seconds"
    stage: ClassVar[int] = 10

    def pipe(self, items: AsyncIterator[Any], ex: Exchange) -> AsyncIterator[Any]:
        limit = to_real(self.seconds)
        sent: list[float] = []  # when the request was out (phase 2 is entered once)

        def deadline(phase: int, now: float) -> float | None:
            if phase < 2:
                return None
            if not sent:
                sent.append(now)
            return sent[0] + limit

        return pace(items, ex, deadline=deadline,
                    expire=lambda phase: self.expired(phase, "backend_timeout: no response within the backend "
                                                      "service timeout", "backend_timeout: response cut at the "
                                                      "backend service timeout", status=502, body=_GFE_502,
                                                      content_type="text/html; charset=UTF-8"))


_HEROKU_503 = (b'<!DOCTYPE html>\n<html>\n  <head>\n    <meta name="viewport" content="width=device-width, '
               b'initial-scale=1">\n    <meta charset="utf-8">\n    <title>Application Error</title>\n  </head>\n'
               b'  <body>\n    <iframe src="//www.herokucdn.com/error-pages/application-error.html"></iframe>\n'
               b'  </body>\n</html>')


@register
@dataclass(frozen=True, kw_only=True)
class RouterTimeout(Timer):
    """Heroku's router: 30 s to the first byte of the response, then a rolling 55 s window between bytes.

    Documented in Heroku Dev Center, "Request Timeout": "the router will terminate
    the request if it takes longer than 30 seconds"; "The countdown for this 30
    second timeout begins after the entire request ... has been sent from the router
    to the dyno"; "An application has an initial 30 second window to respond with a
    single byte back to the client. However, each byte transmitted thereafter ...
    resets a rolling 55 second window. If no data is sent during the 55 second
    window, the connection will be terminated" (logged as H15 "Idle connection").
    The 30 s is not configurable. No first byte in time: ``503`` and error H12
    "Request timeout" (router log ``status=503``) with the app's error page (by
    default Heroku's "Application Error" page, shortened here: its exact HTML was
    not in the stored docs). Counting bytes from the client too is not modelled: the
    window is reset by bytes from the app.
    """

    seconds: float = 30.0
    idle: float = 55.0
    name: ClassVar[str] = "router_timeout"
    setting: ClassVar[str] = "Heroku router timeout (30 s to the first byte, H12; 55 s rolling window, H15)"
    value_arg: ClassVar[str] = "seconds"
    stage: ClassVar[int] = 10

    def pipe(self, items: AsyncIterator[Any], ex: Exchange) -> AsyncIterator[Any]:
        first, idle = to_real(self.seconds), to_real(self.idle)
        return pace(items, ex, deadline=lambda phase, now: None if phase < 2 else now + (first if phase == 2 else idle),
                    expire=lambda phase: self.expired(phase, "H12 Request timeout", "H15 Idle connection",
                                                      status=503, body=_HEROKU_503,
                                                      content_type="text/html; charset=utf-8"))


# --------------------------------------------------------------------------- buffering (stage 20)


@register
@dataclass(frozen=True, kw_only=True)
class Buffering(Fault):
    """nginx ``proxy_buffering`` (default on) with ``proxy_buffer_size`` and ``proxy_buffers``.

    Measured on nginx 1.22.1: whether buffering holds an SSE stream depends on
    how the *upstream* frames its body. A chunked body (uvicorn, most ASGI
    servers) is passed on read by read: events flow. A body with Content-Length,
    or one delimited by closing the connection (what many servers send to
    nginx's default ``proxy_http_version 1.0``), leaves only in full
    ``buffers[1]``-byte buffers or at the end: events are held. Either way the
    response headers wait for the first body bytes leaving (or the end, or an
    error), and the upstream is read whatever the client's pace, up to
    ``buffers`` in memory plus ``max_temp_file_size`` on disk (a slow client
    does not slow the model down). A response head larger than ``buffer_size``
    gets ``502`` ("upstream sent too big header"). The response header
    ``X-Accel-Buffering: no`` (or ``yes``) overrides ``on`` per response.
    """

    on: bool = True
    buffer_size: int = 4096
    buffers: tuple[int, int] = (8, 4096)
    max_temp_file_size: int = 1024 * 1024 * 1024
    name: ClassVar[str] = "buffering"
    setting: ClassVar[str] = "nginx proxy_buffering, proxy_buffer_size, proxy_buffers"
    value_arg: ClassVar[str] = "on"
    stage: ClassVar[int] = 20

    def pipe(self, items: AsyncIterator[Any], ex: Exchange) -> AsyncIterator[Any]:
        ex.max_response_head = self.buffer_size  # the upstream parser stops at it (502 at once)
        return self._held(items, ex)

    async def _held(self, items: AsyncIterator[Any], ex: Exchange) -> AsyncIterator[Any]:
        it = items.__aiter__()
        head = None
        async for item in it:  # markers pass; the Head stops the loop (``it`` goes on below)
            if type(item) is Head:
                head = item
                break
            yield item
        if head is None:
            return
        if head.raw_size > self.buffer_size:
            raise Abort("upstream sent too big header while reading response header from upstream",
                        status=502, fault=self.name)
        accel = (head.get(b"x-accel-buffering") or b"").lower()
        if not (accel == b"yes" or (self.on and accel != b"no")):
            yield head
            async for item in it:
                yield item
            return

        ex.buffered = True
        held: deque[bytes] = deque()
        state: dict[str, Any] = {"bytes": 0, "error": None, "done": False, "head_out": False}
        more, room = asyncio.Event(), asyncio.Event()
        limit = self.buffers[0] * self.buffers[1] + self.max_temp_file_size

        # nginx passes a partly filled buffer on only if it holds a whole chunk of a chunked
        # body; a Content-Length or close-delimited body leaves in full buffers (or at the end)
        chunked = b"chunked" in (head.get(b"transfer-encoding") or b"").lower()
        size = self.buffers[1]
        partial = bytearray()

        def release(data: bytes) -> None:
            held.append(data)
            state["bytes"] += len(data)
            more.set()

        async def read_upstream() -> None:  # nginx's event pipe: read whatever the client does
            try:
                async for item in it:
                    if type(item) is not bytes or not item:
                        continue
                    if chunked:
                        release(item)
                    else:
                        partial.extend(item)
                        if len(partial) >= size:
                            full = len(partial) - len(partial) % size
                            release(bytes(partial[:full]))
                            del partial[:full]
                    if len(held) > 1 or partial or not state["head_out"]:
                        ex.note("hold", "buffering", state["bytes"] + len(partial))
                    while state["bytes"] > limit:
                        room.clear()
                        await room.wait()
            except Abort as abort:
                state["error"] = abort
            except Exception as exc:  # noqa: BLE001 - hand it to the consumer
                state["error"] = exc
            finally:
                if partial:  # the end (or an error) flushes what is held
                    release(bytes(partial))
                state["done"] = True
                more.set()

        reader = asyncio.get_running_loop().create_task(read_upstream())

        async def stop_reader() -> None:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

        ex.cleanups.append(stop_reader)
        while not held and not state["done"]:  # the head waits for the first body bytes
            more.clear()
            await more.wait()
        state["head_out"] = True
        yield head
        while True:
            while held:
                chunk = held.popleft()
                state["bytes"] -= len(chunk)
                room.set()
                yield chunk
            if state["done"]:
                if state["error"] is not None:
                    raise state["error"]
                return
            more.clear()
            await more.wait()


# --------------------------------------------------------------------------- compression (stage 30)


@register
@dataclass(frozen=True, kw_only=True)
class Gzip(Fault):
    """nginx ``gzip on`` with ``gzip_types``, ``gzip_comp_level``, ``gzip_buffers``.

    Compresses responses of the listed types for clients that accept gzip. When
    the response is buffered (``Buffering`` on and no ``X-Accel-Buffering: no``)
    output leaves only in full ``buffers[1]``-byte buffers, so a short SSE
    stream, headers included, arrives in one piece at the end: gzip buffers too.
    Unbuffered, every read is flushed (Z_SYNC_FLUSH) and events flow. On an
    error what is held is flushed before the cut. nginx's own default
    ``gzip_types`` is ``text/html`` only; this fault's default adds SSE.
    """

    types: tuple[str, ...] = ("text/html", "text/event-stream")
    comp_level: int = 1
    buffers: tuple[int, int] = (32, 4096)
    min_length: int = 20
    name: ClassVar[str] = "gzip"
    setting: ClassVar[str] = "nginx gzip, gzip_types, gzip_comp_level, gzip_buffers"
    value_arg: ClassVar[str | None] = None
    stage: ClassVar[int] = 30

    def _applies(self, head: Head, ex: Exchange) -> bool:
        length = head.get(b"content-length")
        return (ex.version == "1.1" and ex.method != "HEAD" and head.status in (200, 403, 404)
                and b"gzip" in (ex.header(b"accept-encoding") or b"").lower()
                and ex.header(b"via") is None  # gzip_proxied off
                and head.get(b"content-encoding") is None
                and ("*" in self.types or head.content_type in self.types)
                and (length is None or int(length) >= self.min_length))

    async def pipe(self, items: AsyncIterator[Any], ex: Exchange) -> AsyncIterator[Any]:
        it = items.__aiter__()
        head = None
        async for item in it:  # markers pass; the Head stops the loop (``it`` goes on below)
            if type(item) is Head:
                head = item
                break
            yield item
        if head is None:
            return
        if not self._applies(head, ex):
            yield head
            async for item in it:
                yield item
            return
        head = head.without(b"content-length").with_header(b"content-encoding", b"gzip")
        z = zlib.compressobj(self.comp_level, zlib.DEFLATED, 31)  # gzip wrapper, as nginx writes it
        if not ex.buffered:  # each upstream read arrives flagged "flush": sync-flush it
            yield head
            async for item in it:
                yield z.compress(item) + z.flush(zlib.Z_SYNC_FLUSH) if type(item) is bytes else item
            yield z.flush()
            return
        size = self.buffers[1]
        pending = bytearray()
        head_out = False
        try:
            async for item in it:
                if type(item) is not bytes:
                    yield item
                    continue
                pending += z.compress(item)
                if len(pending) >= size:  # full output buffers leave, the rest waits
                    cut = len(pending) - len(pending) % size
                    if not head_out:
                        head_out = True
                        yield head
                    ex.note("hold", "gzip", len(pending) - cut)
                    yield bytes(pending[:cut])
                    del pending[:cut]
                elif pending:
                    ex.note("hold", "gzip", len(pending))
        except Abort:
            pending += z.flush(zlib.Z_SYNC_FLUSH)  # nginx sends what it holds, then closes
            if not head_out:
                yield head
            yield bytes(pending)
            raise
        pending += z.flush()
        if not head_out:
            yield head
        yield bytes(pending)


# --------------------------------------------------------------------------- framing (stage 40)


@register
@dataclass(frozen=True, kw_only=True)
class ChunkedEncoding(Fault):
    """nginx ``chunked_transfer_encoding off``: a body of unknown length ends when the connection closes.

    The client then cannot tell a cut from the end: a stream cut upstream looks
    complete (no incomplete-chunked-read error). ``on=True`` is nginx's default.
    """

    on: bool = False
    name: ClassVar[str] = "chunked"
    setting: ClassVar[str] = "nginx chunked_transfer_encoding"
    value_arg: ClassVar[str] = "on"
    stage: ClassVar[int] = 40

    def pipe(self, items: AsyncIterator[Any], ex: Exchange) -> AsyncIterator[Any]:
        ex.chunked = self.on  # the sink frames the body
        return items


# --------------------------------------------------------------------------- byte limits (stage 60)


@register
@dataclass(frozen=True, kw_only=True)
class CutAfterBytes(Fault):
    """Close the client connection (FIN) after ``nbytes`` body bytes, without the terminating chunk."""

    nbytes: int
    name: ClassVar[str] = "cut_after_bytes"
    setting: ClassVar[str] = "a byte limit (toxiproxy limit_data)"
    value_arg: ClassVar[str] = "nbytes"
    stage: ClassVar[int] = 60

    async def pipe(self, items: AsyncIterator[Any], ex: Exchange) -> AsyncIterator[Any]:
        left = self.nbytes
        async for item in items:
            if type(item) is bytes and item:
                if len(item) >= left:
                    if left:
                        yield item[:left]
                    raise Abort(f"cut after {self.nbytes} body bytes", fault=self.name)
                left -= len(item)
            yield item


@register
@dataclass(frozen=True, kw_only=True)
class ResetAfterBytes(Fault):
    """Abort the client connection with a TCP RST (SO_LINGER 0) after ``nbytes`` body bytes.

    ``nbytes=0`` resets as soon as the response head arrives, before anything is sent.
    """

    nbytes: int = 0
    name: ClassVar[str] = "reset_after_bytes"
    setting: ClassVar[str] = "a TCP reset (toxiproxy reset_peer)"
    value_arg: ClassVar[str] = "nbytes"
    stage: ClassVar[int] = 60

    async def pipe(self, items: AsyncIterator[Any], ex: Exchange) -> AsyncIterator[Any]:
        left = self.nbytes
        async for item in items:
            if type(item) is Head and left == 0:
                raise Abort("reset before the response head", reset=True, fault=self.name)
            if type(item) is bytes and item:
                if len(item) >= left:
                    if left:
                        yield item[:left]
                    raise Abort(f"reset after {self.nbytes} body bytes", reset=True, fault=self.name)
                left -= len(item)
            yield item


# --------------------------------------------------------------------------- registry and specs


def names() -> list[str]:
    """Registered fault names, in registry order (for dropdowns and CLI flags)."""
    return list(REGISTRY)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d)?\s*$")
_SIZE = re.compile(r"^\s*(\d+)\s*([kKmMgG])?\s*$")
_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _duration(raw: str) -> float:
    match = _DURATION.match(raw)
    if not match:
        raise ValueError(f"{raw!r} is not a duration (like 30, 30s, 500ms, 2m)")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _size(raw: str) -> int:
    match = _SIZE.match(raw)
    if not match:
        raise ValueError(f"{raw!r} is not a size (like 4096, 4k, 1m)")
    return int(match.group(1)) * {None: 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}[
        (match.group(2) or "").lower() or None]


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("", "on", "true", "yes", "1"):
        return True
    if value in ("off", "false", "no", "0"):
        return False
    raise ValueError(f"{raw!r} is not on or off")


def _type_name(annotation: Any) -> str:
    """A field's type as its annotation text, whether the module that defined the fault used
    ``from __future__ import annotations`` (a string) or not (a real type such as ``float``)."""
    if isinstance(annotation, str):
        return annotation
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _convert(type_name: str, raw: str) -> Any:
    if type_name.startswith("float"):
        return _duration(raw)
    if type_name == "int":
        return _size(raw)
    if type_name == "bool":
        return _bool(raw)
    if type_name == "tuple[int, int]":
        count, _, size = raw.lower().partition("x")
        if not size:
            raise ValueError(f"{raw!r} is not a buffer spec (like 8x4k)")
        return (_size(count), _size(size))
    if type_name == "tuple[str, ...]":
        return tuple(part.strip() for part in raw.split("|") if part.strip())
    if type_name == "str":
        return raw.strip().lower().replace("_", "-")
    raise ValueError(f"cannot parse a {type_name}")


def from_spec(spec: str) -> Fault:
    """One fault from ``name[=value][:key=value...]``, e.g. ``read_timeout=30``, ``buffering=on:buffer_size=8k``.

    Durations take nginx units (``30``, ``30s``, ``500ms``, ``2m``), sizes ``4096``/``4k``/``1m``,
    switches ``on``/``off``, buffer sets ``8x4k``, type lists ``text/html|text/event-stream``,
    a timer's action ``action=cut|end|error-event|reset`` (``read_timeout=30:action=end``).
    """
    first, *extra = spec.strip().split(":")
    name, has_value, value = first.partition("=")
    name = name.strip().lower().replace("-", "_")
    cls = REGISTRY.get(name)
    if cls is None:
        raise SpecError(f"unknown hop fault {name!r} in {spec!r}; known: {', '.join(REGISTRY)}")
    types = {f.name: _type_name(f.type) for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    pairs = [(cls.value_arg, value)] if has_value else []
    if has_value and cls.value_arg is None:
        raise SpecError(f"{spec!r}: {name} takes no =value (use {name}:key=value)")
    for part in extra:
        key, eq, raw = part.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or key not in types:
            raise SpecError(f"{spec!r}: {part!r} is not key=value with a key of {sorted(types)}")
        pairs.append((key, raw))
    for key, raw in pairs:
        try:
            kwargs[key] = _convert(types[key], raw)
        except ValueError as exc:
            raise SpecError(f"{spec!r}: {key}: {exc}") from None
    try:
        return cls(**kwargs)
    except TypeError:
        raise SpecError(f"{spec!r}: {name} needs a value, like {name}=1") from None
    except ValueError as exc:  # a setting the fault refuses (e.g. an unknown timer action)
        raise SpecError(f"{spec!r}: {exc}") from None


def parse(spec: str) -> list[Fault]:
    """Several faults from a spec separated by ``,`` or ``;``: ``read_timeout=30,buffering=off``."""
    return [from_spec(item) for item in re.split(r"[,;]", spec) if item.strip()]


def _fmt(type_name: str, value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if type_name == "tuple[int, int]":
        return f"{value[0]}x{value[1]}"
    if type_name == "tuple[str, ...]":
        return "|".join(value)
    return str(value)


def to_spec(fault: Fault) -> str:
    """The spec string of a fault (the inverse of ``from_spec``); default settings are left out."""
    text = fault.name
    extra = []
    for f in fields(fault):
        value = getattr(fault, f.name)
        if f.name == fault.value_arg:
            text += f"={_fmt(str(f.type), value)}"
        elif f.default is MISSING or value != f.default:
            extra.append(f"{f.name}={_fmt(str(f.type), value)}")
    return ":".join([text, *extra])


# --------------------------------------------------------------------------- profiles
#
# A profile is a function returning the faults of one product at its documented defaults,
# each setting named as the product names it; ``action`` is what its timers do to a response
# already streaming (``Timer``). ``Proxy(profile="cloudflare")`` / ``streamlab proxy --profile
# cloudflare`` use the defaults; every duration is scenario seconds (``time_scale``).


def nginx(*, proxy_read_timeout: float = 60.0, proxy_send_timeout: float = 60.0, send_timeout: float = 60.0,
          proxy_buffering: bool = True, proxy_buffer_size: int = 4096, proxy_buffers: tuple[int, int] = (8, 4096),
          gzip: bool = False, gzip_types: tuple[str, ...] = ("text/html",),
          chunked_transfer_encoding: bool = True, action: str = "cut") -> list[Fault]:
    """nginx 1.22's defaults for a ``location`` with ``proxy_pass``, each setting named as in nginx.

    ``Proxy(upstream=..., faults=hops.nginx(proxy_read_timeout=30))`` or ``profile="nginx"``.
    (Real nginx can only ``cut``; another ``action`` needs the embedded proxy.)
    """
    out: list[Fault] = [
        ReadTimeout(seconds=proxy_read_timeout, action=action),
        UpstreamSendTimeout(seconds=proxy_send_timeout, action=action),
        SendTimeout(seconds=send_timeout),
        Buffering(on=proxy_buffering, buffer_size=proxy_buffer_size, buffers=tuple(proxy_buffers)),
    ]
    if gzip:
        out.append(Gzip(types=tuple(gzip_types)))
    if not chunked_transfer_encoding:
        out.append(ChunkedEncoding(on=False))
    return out


def ingress_nginx(*, proxy_read_timeout: float = 60.0, proxy_send_timeout: float = 60.0,
                  proxy_buffering: bool = False, proxy_buffer_size: int = 4096, proxy_buffers_number: int = 4,
                  use_gzip: bool = False, action: str = "cut") -> list[Fault]:
    """The Kubernetes ingress-nginx controller's ConfigMap defaults (its own, not nginx's).

    From kubernetes/ingress-nginx ``docs/user-guide/nginx-configuration/configmap.md``:
    ``proxy-read-timeout`` 60, ``proxy-send-timeout`` 60, ``proxy-buffering "off"``
    (nginx's own default is on: an SSE stream is *not* buffered behind ingress-nginx,
    whatever the app sends), ``proxy-buffer-size "4k"``, ``proxy-buffers-number`` 4,
    ``use-gzip "false"``, ``proxy-body-size "1m"`` (the proxy's ``client_max_body_size``
    default already), ``keep-alive`` 75 (``keepalive_timeout`` default already).
    Not faults, so not in this list: ``proxy-connect-timeout`` 5 s (the proxies use
    nginx's 60 s), ``upstream-keepalive-connections`` 320 and ``proxy-http-version``
    1.1 (pass ``proxy_http_version="1.1"`` to the proxy). Every fault here has an nginx
    directive, so ``proxy_for(..., faults=hops.ingress_nginx())`` runs real nginx.
    """
    return nginx(proxy_read_timeout=proxy_read_timeout, proxy_send_timeout=proxy_send_timeout,
                 proxy_buffering=proxy_buffering, proxy_buffer_size=proxy_buffer_size,
                 proxy_buffers=(proxy_buffers_number, proxy_buffer_size), gzip=use_gzip, action=action)


def cloudflare(*, proxy_read_timeout: float = 100.0, action: str = "cut") -> list[Fault]:
    """Cloudflare's proxy in front of an origin: 100 s between reads, ``524`` ``error code: 524``.

    See ``OriginReadTimeout`` for the documentation it was checked against. Cloudflare
    does not buffer SSE (``text/event-stream`` is streamed), so there is no buffering
    fault; its Proxy Write Timeout (30 s, 524, for sending a request body) is not modelled.
    """
    return [OriginReadTimeout(seconds=proxy_read_timeout, action=action)]


def aws_alb(*, idle_timeout: float = 60.0, action: str = "cut") -> list[Fault]:
    """AWS Application Load Balancer: ``idle_timeout.timeout_seconds`` 60 s, ``504`` before the head.

    AWS: "By default, the idle timeout for the Classic Load Balancer and Application
    Load Balancer is 60 seconds"; a 504 when "the target didn't respond before the idle
    timeout period elapsed"; "If no data has been sent or received by the time that the
    idle timeout period elapses, the load balancer closes the connection" (so after the
    head: a cut). The 504 page body (nginx-like, ``awselb/2.0``) is not in AWS's docs.
    """
    return [IdleTimeout(seconds=idle_timeout, action=action)]


def aws_api_gateway(*, integration_timeout: float = 29.0, action: str = "cut") -> list[Fault]:
    """AWS API Gateway (REST API): 29 s integration timeout, ``504 {"message": "Endpoint request timed out"}``.

    AWS: "If an integration request takes longer than your API Gateway REST API maximum
    integration timeout parameter, API Gateway returns an HTTP 504"; the default and the
    edge-optimized maximum is 29 s (since June 2024 Regional and private REST APIs can
    raise it: "the maximum amount of time API Gateway will wait for a response from the
    integration to complete" - a total, not an idle time). HTTP APIs allow up to 30 s
    (``api_gateway(timeout=30)``); the body they answer with was not verified.
    """
    return [Deadline(seconds=integration_timeout, action=action)]


def gcp_load_balancer(*, timeout_sec: float = 30.0, action: str = "cut") -> list[Fault]:
    """Google Cloud external Application Load Balancer: backend service ``timeoutSec`` 30 s, a total.

    See ``BackendTimeout``: for HTTP it bounds the whole response, so a stream longer
    than 30 s is cut at 30 s however steadily it flows (raise ``timeoutSec`` for LLMs).
    """
    return [BackendTimeout(seconds=timeout_sec, action=action)]


def heroku(*, first_byte: float = 30.0, idle: float = 55.0, action: str = "cut") -> list[Fault]:
    """Heroku's router: 30 s to the first byte (``503``, H12), then 55 s between bytes (H15). See ``RouterTimeout``."""
    return [RouterTimeout(seconds=first_byte, idle=idle, action=action)]


def load_balancer(*, idle_timeout: float = 60.0, action: str = "cut") -> list[Fault]:
    """A cloud load balancer: an idle timeout (AWS ALB default 60 s; ``aws_alb`` is the same)."""
    return [IdleTimeout(seconds=idle_timeout, action=action)]


def api_gateway(*, timeout: float = 29.0, action: str = "cut") -> list[Fault]:
    """An API gateway: a hard deadline on the whole request (AWS API Gateway: 29 s; ``aws_api_gateway``)."""
    return [Deadline(seconds=timeout, action=action)]


def serverless(*, max_duration: float = 10.0, action: str = "cut") -> list[Fault]:
    """A serverless platform that kills the function after ``max_duration`` seconds."""
    return [KillAfter(seconds=max_duration, action=action)]


PROFILES = {"nginx": nginx, "load_balancer": load_balancer, "api_gateway": api_gateway, "serverless": serverless,
            "ingress_nginx": ingress_nginx, "cloudflare": cloudflare, "aws_alb": aws_alb,
            "aws_api_gateway": aws_api_gateway, "gcp_load_balancer": gcp_load_balancer, "heroku": heroku}
