"""Client behaviours over a real httpx connection: abort, read slowly, time out.

    >>> stream = sl.HTTPStream(url, abort=sl.Abort(after_chunks=5))          # AbortController
    >>> stream = sl.HTTPStream(url, slow=sl.SlowReader(pause_at=1, pause=3))  # stops reading 3 s
    >>> stream = sl.HTTPStream(url, timeout=sl.ClientTimeout(read=10, total=60))
    >>> for chunk in stream: ...             # or `async for`, or stream.run() / await stream.arun()
    >>> stream.result.outcome, stream.result.times, stream.result.error
    >>> sl.record(sl.HTTPStream(url, unit="event"), understand=sl.app_event)   # with the recorder

Each behaviour is a small frozen dataclass; durations are scenario seconds
(``streamlab.time_scale``). ``HTTPStream`` is an iterable (sync and async) of what
it read, so the recorder and any other wrapper can consume it; the same numbers
are kept in ``stream.result`` (``StreamResult``): chunks, per-chunk
``time.perf_counter()`` times, status, headers, and the exception, if any.

The reading pace is the behaviour's, not the consumer's: the sync iterator reads
in a thread of its own and hands chunks over, so a slow ``for`` body does not slow
the socket (use ``SlowReader`` for that).

Exceptions a reader sees (httpx's own, plus one)::

    httpx.TimeoutException
     +-- httpx.ConnectTimeout, ReadTimeout, WriteTimeout, PoolTimeout   (ClientTimeout fields)
     +-- TotalTimeout          ClientTimeout(total=...) passed: httpx has no overall deadline
    httpx.RemoteProtocolError  the server (or a hop) closed mid-body: "incomplete chunked read"
    httpx.ReadError            the connection was reset
    httpx.ConnectError         nobody listening

An ``Abort`` is not an error: iteration just ends, ``result.aborted`` is True and the
connection is closed, which the server sees as a client disconnect. An HTTP error status
is not an exception here either (the body is read like any other, as a browser would):
``result.outcome`` is ``"http error"`` and ``result.status`` / ``result.body`` say which,
and ``sl.record`` of the stream names it ``Outcome.HTTP_ERROR``. The whole tree, through
every client, is in ``streamlab._errors``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import queue
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Iterator, Mapping

import httpx

from ._sse import SSEParser, parse_block, split_events
from ._timescale import to_real, to_scenario

__all__ = ["Abort", "SlowReader", "ClientTimeout", "TotalTimeout", "HTTPStream", "StreamResult", "read_stream",
           "app_event"]


@dataclass(frozen=True, kw_only=True)
class Abort:
    """Stop reading and close the connection, like a browser's ``AbortController``.

        Abort(after_chunks=5)     after the 5th chunk (or event, with unit="event")
        Abort(after=10)           10 scenario seconds after the request was sent
    """

    after_chunks: int | None = None
    after: float | None = None


@dataclass(frozen=True, kw_only=True)
class SlowReader:
    """Read slowly, so the server's writes back up (TCP backpressure).

        SlowReader(delay=0.5)             sleep 0.5 s after every read
        SlowReader(pause_at=1, pause=30)  after the first chunk, stop reading for 30 s
        rcvbuf=65536                      SO_RCVBUF of the client socket (Linux doubles it;
                                          None keeps the kernel's autotuning, up to 32 MB)

    Measured on loopback (tests/test_clients.py): the server's send buffer autotunes
    to 4 MB (``net.ipv4.tcp_wmem``), so the app's ``send`` only waits once ~4 MB are
    unread. A token stream (a few KB) never gets there: a slow reader delays nothing
    upstream, the bytes wait in kernel buffers. A tiny ``rcvbuf`` (4096) does not
    change that threshold much but makes loopback crawl (3 MB took 84 s).
    """

    delay: float = 0.0
    pause_at: int | None = None
    pause: float = 0.0
    rcvbuf: int | None = 65536


@dataclass(frozen=True, kw_only=True)
class ClientTimeout:
    """``httpx.Timeout`` in scenario seconds, plus the overall deadline httpx lacks.

    httpx's ``read`` timeout is per read: a stream that sends one byte every
    ``read - 1`` seconds never times out. ``total`` bounds the whole exchange and
    raises ``TotalTimeout``. None means no limit.
    """

    connect: float | None = 5.0
    read: float | None = None
    write: float | None = 5.0
    pool: float | None = 5.0
    total: float | None = None

    def to_httpx(self) -> httpx.Timeout:
        return httpx.Timeout(connect=to_real(self.connect), read=to_real(self.read),
                             write=to_real(self.write), pool=to_real(self.pool))


class TotalTimeout(httpx.TimeoutException):
    """``ClientTimeout(total=...)`` passed before the response ended."""


@dataclass
class StreamResult:
    """What one ``HTTPStream`` read, with ``time.perf_counter()`` times (wall clock)."""

    url: str
    method: str = "GET"
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    chunks: list[bytes] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    t_start: float | None = None
    t_headers: float | None = None
    t_end: float | None = None
    aborted: bool = False
    error: BaseException | None = None

    @property
    def nbytes(self) -> int:
        return sum(len(c) for c in self.chunks)

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    @property
    def events(self) -> list[dict[str, str]]:
        """SSE events of the body (``{"event": ..., "data": ..., "id": ...}``), complete ones only."""
        return [parse_block(block).as_dict() for block in split_events(self.text)[0]]

    @property
    def ttfb(self) -> float | None:
        """Scenario seconds from the request to the first body chunk."""
        return None if not self.times else to_scenario(self.times[0] - self.t_start)

    @property
    def elapsed(self) -> float | None:
        """Scenario seconds from the request to the end (or the error)."""
        return None if self.t_end is None else to_scenario(self.t_end - self.t_start)

    @property
    def outcome(self) -> str:
        """``complete``, ``aborted``, ``http error`` (a 4xx/5xx status: a gateway's 504 is never
        complete; ``status`` and ``body`` say which), ``timeout``, ``cut`` (error after the headers)
        or ``error`` (no HTTP response at all)."""
        if self.aborted:
            return "aborted"
        if self.status is not None and self.status >= 400:
            return "http error"
        if self.error is None:
            return "complete" if self.t_end is not None else "open"
        if isinstance(self.error, httpx.TimeoutException):
            return "timeout"
        return "cut" if self.status is not None else "error"

    def __repr__(self) -> str:
        error = f" {type(self.error).__name__}" if self.error else ""
        return (f"<StreamResult {self.outcome}{error} status={self.status} chunks={len(self.chunks)} "
                f"bytes={self.nbytes}>")


def _parse_event(block: str) -> dict[str, str]:
    """An SSE block as ``{"event", "data", "id", "retry"}`` (``streamlab._sse.parse_block``)."""
    return parse_block(block).as_dict()


def app_event(item: Any):
    """``understand=`` for ``streamlab.record``: one SSE block of a streamlab demo app.

    ``event: token`` carries one token as plain text; ``data: [DONE]`` (or ``event:
    done``) ends the stream. Comments (sse-starlette's pings) carry nothing.
    """
    from ._recorder import ChunkInfo, inspect_chunk

    raw = item.decode("utf-8", "replace") if isinstance(item, (bytes, bytearray)) else item
    if not isinstance(raw, str):
        return inspect_chunk(item)
    event = parse_block(raw)
    data = event.data
    if data == "[DONE]" or event.event == "done":
        return ChunkInfo(None, "stop", True, len(raw.encode()))
    if data is not None and data.startswith("{"):
        return inspect_chunk(item)  # an OpenAI-style chunk
    return ChunkInfo(data or None, None, False, len(raw.encode()))


class HTTPStream:
    """One streaming HTTP request over a real socket, read with a client behaviour.

    Args (keyword-only):
        method, headers, json, content: the request (GET without a body by default).
        abort: ``Abort(...)``: stop early and close, like a browser's AbortController.
        slow: ``SlowReader(...)``: read slowly / small receive buffer.
        timeout: ``ClientTimeout`` (scenario s), an ``httpx.Timeout`` (wall clock, as is),
            a number (scenario s for every phase) or None (no limit).
        unit: "chunk" yields each network read (bytes) as it arrived; "event" yields
            complete SSE event blocks (str, with the blank line), whatever the reads were.

    Single use: iterate it once (sync or async), or call ``run()`` / ``arun()``.
    """

    def __init__(
        self,
        url: str,
        *,
        method: str = "GET",
        headers: Mapping[str, str] | None = None,
        json: Any = None,
        content: bytes | str | None = None,
        abort: Abort | None = None,
        slow: SlowReader | None = None,
        timeout: "ClientTimeout | httpx.Timeout | float | None" = ClientTimeout(),
        unit: str = "chunk",
    ) -> None:
        if unit not in ("chunk", "event"):
            raise ValueError(f"unit must be 'chunk' or 'event', got {unit!r}")
        self.url = url
        self.method = method.upper()
        self.headers = dict(headers or {})
        self.json = json
        self.content = content
        self.abort = abort
        self.slow = slow
        self.timeout = timeout
        self.unit = unit
        self.result = StreamResult(url=url, method=self.method)
        self._used = False

    def __repr__(self) -> str:
        return f"<HTTPStream {self.method} {self.url} {self.result.outcome}>"

    # -- the one implementation --------------------------------------------------------

    def _httpx_timeout(self) -> tuple[httpx.Timeout, float | None]:
        t = self.timeout
        if isinstance(t, ClientTimeout):
            return t.to_httpx(), to_real(t.total)
        if isinstance(t, httpx.Timeout):
            return t, None
        if t is None:
            return httpx.Timeout(None), None
        return httpx.Timeout(to_real(float(t))), None

    async def _read(self) -> AsyncIterator[bytes | str]:
        if self._used:
            raise RuntimeError("an HTTPStream is single use; make a new one")
        self._used = True
        res = self.result
        timeout, total = self._httpx_timeout()
        abort_at = to_real(self.abort.after) if self.abort and self.abort.after is not None else None
        options = []
        if self.slow is not None and self.slow.rcvbuf:
            options.append((socket.SOL_SOCKET, socket.SO_RCVBUF, self.slow.rcvbuf))
        transport = httpx.AsyncHTTPTransport(socket_options=options, retries=0)

        def remaining() -> tuple[float | None, bool]:
            """Seconds left before the next deadline, and whether it is the abort."""
            now = time.perf_counter() - res.t_start
            limits = [(abort_at - now, True)] if abort_at is not None else []
            if total is not None:
                limits.append((total - now, False))
            if not limits:
                return None, False
            left, is_abort = min(limits)
            return max(left, 0.0), is_abort

        async def within(awaitable):
            left, is_abort = remaining()
            try:
                return await asyncio.wait_for(awaitable, left)
            except asyncio.TimeoutError:
                if is_abort:
                    res.aborted = True
                    return None
                raise TotalTimeout(f"no complete response within {self.timeout.total} s (total)") from None

        try:
            async with httpx.AsyncClient(transport=transport, timeout=timeout) as client:
                request = client.build_request(self.method, self.url, headers=self.headers, json=self.json,
                                               content=self.content)
                # the clock starts when the request is sent: building the client (SSL context,
                # pool) takes 20-100 ms and is setup, not time to first byte
                res.t_start = time.perf_counter()
                response = await within(client.send(request, stream=True))
                if response is None:
                    return
                try:
                    res.status, res.t_headers = response.status_code, time.perf_counter()
                    res.headers = dict(response.headers)
                    raw = response.aiter_raw()
                    parser = SSEParser()
                    reads = events = 0
                    while True:
                        chunk = await within(raw.__anext__())
                        if chunk is None:
                            return
                        now = time.perf_counter()
                        res.chunks.append(chunk)
                        res.times.append(now)
                        reads += 1
                        if self.unit == "chunk":
                            yield chunk
                            units = reads
                        else:
                            blocks = parser.feed(chunk)
                            for block in blocks:
                                yield block + "\n\n"
                            events += len(blocks)
                            units = events
                        if self.abort and self.abort.after_chunks is not None and units >= self.abort.after_chunks:
                            res.aborted = True
                            return
                        if self.slow is not None:
                            pause = self.slow.delay + (self.slow.pause if reads == self.slow.pause_at else 0.0)
                            if pause and await within(asyncio.sleep(to_real(pause), result=True)) is None:
                                return
                except StopAsyncIteration:
                    return
                finally:
                    await response.aclose()
        except (asyncio.CancelledError, GeneratorExit):
            res.aborted = True  # the consumer stopped reading: the connection closes like an abort
            raise
        except Exception as exc:
            res.error = exc
            raise
        finally:
            res.t_end = time.perf_counter()
            if res.t_start is None:  # failed before the send (a bad URL): nothing was measured
                res.t_start = res.t_end

    # -- four ways in ------------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[bytes | str]:
        return self._read()

    def __iter__(self) -> Iterator[bytes | str]:
        handoff: "queue.Queue[tuple[str, Any]]" = queue.Queue()
        started = threading.Event()
        box: dict[str, Any] = {}

        async def pump() -> None:
            box["loop"], box["task"] = asyncio.get_running_loop(), asyncio.current_task()
            started.set()
            try:
                async for item in self._read():
                    handoff.put(("item", item))
            except asyncio.CancelledError:
                pass
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                handoff.put(("error", exc))
            handoff.put(("end", None))

        # the reader thread runs in a copy of this context, so a recording active here (sl.record's
        # transport hook) sees the request being sent and the response's status
        context = contextvars.copy_context()
        thread = threading.Thread(target=context.run, args=(asyncio.run, pump()), name="streamlab-client",
                                  daemon=True)
        thread.start()
        started.wait()
        try:
            while True:
                kind, item = handoff.get()
                if kind == "item":
                    yield item
                elif kind == "error":
                    raise item
                else:
                    return
        finally:  # the consumer stopped early (break, recorder abort): close the connection now
            if thread.is_alive():
                # the reader thread may close its loop between the check and the call
                with contextlib.suppress(RuntimeError):
                    box["loop"].call_soon_threadsafe(box["task"].cancel)
            thread.join(10)

    def run(self) -> StreamResult:
        """Read to the end (or abort/error) and return the result; errors are kept, not raised."""
        try:
            for _ in self:
                pass
        except Exception:  # noqa: BLE001 - the error is the observation
            pass
        return self.result

    async def arun(self) -> StreamResult:
        """Async ``run()``."""
        try:
            async for _ in self:
                pass
        except Exception:  # noqa: BLE001
            pass
        return self.result


def read_stream(url: str, **options: Any) -> StreamResult:
    """``HTTPStream(url, **options).run()``: one call, one ``StreamResult``."""
    return HTTPStream(url, **options).run()
