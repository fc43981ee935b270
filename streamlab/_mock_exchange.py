"""One chat completion exchange on the wire, with the actions a fault may take.

``Exchange`` implements ``streamlab._events.FaultContext``: a fault calls ``close`` (FIN or RST),
``end`` (silent truncation), ``pause`` (a stall), ``fail_midstream`` (an error event) or ``reject``
(an HTTP error before the stream). Each of these that ends the exchange raises ``Ended``, which
the pipeline catches; ``Truncated`` ends a non-streaming answer early.

Cut and reset reach for uvicorn's transport so the client sees a real FIN or RST; under any other
ASGI server they fall back to raising, which makes the server drop the connection.

How the body is framed (``set_transfer``, the ``transfer=`` item)::

    chunked   Transfer-Encoding: chunked, each chunk written as it is generated (streams' default)
    length    the whole answer is generated on its schedule first, then sent at once with a
              Content-Length (non-streaming answers' default): what a buffering upstream does, and
              what nginx buffers whole. Headers leave with the body, so a cut before the end is
              "no response at all" for the client.
    close     HTTP/1.0 style: status line and headers written to the transport by hand (uvicorn
              would frame chunked), no Content-Length, no chunked framing, chunks written as they
              are generated, the connection closed (FIN) at the end. A cut then looks like the end.

When the client leaves (design note). uvicorn sets ``disconnected`` on the object behind ``send``
when the socket closes (it keeps reading after the body); reading it costs nothing, so the token
loop checks it at every deadline. A wait of ``WATCH_MIN`` (50 ms real) or more (the TTFT wait, a
slow non-streaming answer, a long ITL) also wakes on uvicorn's ``message_event``, which the
same ``connection_lost`` sets, under an ``asyncio.timeout``: no task, so the disconnect is noticed
during the wait, not at the next deadline. Shorter waits keep a plain ``sleep`` (the benchmark's
20 ms ITL path is unchanged; detection lags by at most one such wait). Under another ASGI server
a ``receive()`` task (``watch``) sets ``disconnected`` instead. ``entry.disconnect`` says where it
was noticed; ``keep_generating`` (``ondisconnect=continue``) lets the backend go on generating,
and counting ``tokens_generated``, with nothing left to send.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any, Iterable

from ._mock_journal import MAX_ENTRY_EVENTS, JournalEntry
from ._servers import drop_connection
from ._text import count_tokens
from ._validate import content_text as _content_text
from ._validate import error_body as _error_body

if TYPE_CHECKING:  # pragma: no cover
    from ._mock import MockApp

__all__ = ["Exchange", "Ended", "Truncated", "TRANSFERS", "WATCH_MIN"]

TRANSFERS = ("chunked", "length", "close")
WATCH_MIN = 0.05  # real seconds: a wait this long or longer wakes on the client's disconnect


class Ended(Exception):
    """Internal: the exchange is over (closed, reset, ended or rejected)."""


class Truncated(Exception):
    """Internal: a non-streaming answer ends early (silent truncation)."""


_Ended, _Truncated = Ended, Truncated


class Exchange:
    """One chat completion request/response, with the actions a fault may take."""

    def __init__(self, app: "MockApp", send: Any, entry: JournalEntry, body: dict, stream: bool) -> None:
        self.app = app
        self._send = send
        self.entry = entry
        self.body = body
        self.stream = stream
        self.headers_sent = False
        self.malformed_body = False
        self.disconnected = asyncio.Event()
        self._receive: Any = None
        self._watcher: asyncio.Future | None = None
        # uvicorn keeps a ``disconnected`` flag on the object behind ``send``; reading it costs
        # nothing, where a task blocked on receive() per request would cost throughput.
        self._cycle = getattr(send, "__self__", None)
        self._raw = False  # set once the headers are out and uvicorn chose chunked framing
        self.events = app.record_events
        self._outs = 0  # "out" events logged so far
        self.offset = 0.0  # schedule shift caused by stalls
        self.prompt_tokens = sum(count_tokens(_content_text(m.get("content"))) for m in body["messages"])
        self.max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        self.planned_finish: str | None = None
        self.keep_generating = False  # ondisconnect=continue
        self.gone = False  # the client left and the backend goes on generating
        self.transfer: str | None = None  # None: chunked for a stream, length for a JSON answer
        self._headers: dict[bytes, bytes | None] = {}
        self._held: list[bytes] | None = None  # transfer=length: the body so far
        self._held_head: tuple[int, list[tuple[bytes, bytes]]] | None = None
        self._close_delimited = False  # transfer=close: head written by hand
        self.closed_by_us = False  # transfer=close ended the body by closing: not a client disconnect
        self._slow_write = False  # one check in write()'s fast path for gone / held / close-delimited

    # -- response shape (set by faults on the request event) -------------------
    def set_header(self, name: bytes, value: bytes | None) -> None:
        """Send the answer's header ``name`` with ``value`` (replacing the mock's), or not at all (None)."""
        self._headers[name.lower()] = value

    def set_transfer(self, transfer: str) -> None:
        """Frame the answer's body ``chunked``, with a Content-``length`` or ``close``-delimited."""
        if transfer not in TRANSFERS:
            raise ValueError(f"transfer is one of {', '.join(TRANSFERS)}, not {transfer!r}")
        self.transfer = transfer

    def _shaped(self, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        if not self._headers:
            return headers
        out, seen = [], set()
        for name, value in headers:
            if name in self._headers:
                seen.add(name)
                if self._headers[name] is None:
                    continue
                value = self._headers[name]  # type: ignore[assignment]
            out.append((name, value))
        out += [(n, v) for n, v in self._headers.items() if n not in seen and v is not None]
        return out

    # -- the client leaving --------------------------------------------------
    def notice(self, where: str) -> None:
        """Record, once, where the server noticed that the client had left."""
        if self.entry.disconnect is None:
            self.entry.disconnect = where
            self.entry.t_disconnect = time.perf_counter() - self.entry.t_start
            # (no log event: a hop log printed in a notebook keeps its rows; the entry says where)

    def left(self, where: str) -> None:
        """The client is gone: stop (raise ``Ended``) or, with ``keep_generating``, go on silently."""
        self.notice(where)
        if self.keep_generating:
            self.gone = self._slow_write = True
            return
        raise _Ended

    async def wait_until(self, due: float) -> bool:
        """Sleep until ``due`` (``perf_counter`` time); a long wait ends early when the client leaves.
        True if the client is gone (the caller then calls ``left``)."""
        delay = due - time.perf_counter()
        if delay > 0:
            if delay < WATCH_MIN or self.gone:
                await asyncio.sleep(delay)
            else:
                await self._watched_sleep(due, delay)
        return not self.gone and self.is_disconnected()

    async def _watched_sleep(self, due: float, delay: float) -> None:
        cycle = self._cycle
        wake = getattr(cycle, "message_event", None) if hasattr(cycle, "disconnected") else None
        if wake is None:
            self.watch()
            wake = self.disconnected
        try:
            async with asyncio.timeout(delay):
                await wake.wait()
                if not self.is_disconnected():  # woken for something else: sleep the rest plainly
                    await asyncio.sleep(max(0.0, due - time.perf_counter()))
        except TimeoutError:
            pass

    # -- bookkeeping -------------------------------------------------------
    def note(self, kind: str, detail: str = "", nbytes: int = 0) -> None:
        if kind == "out":
            if not self.events or self._outs >= MAX_ENTRY_EVENTS:  # a 100 000-token stream stays bounded
                return
            self._outs += 1
        self.entry.log.add(kind, nbytes, detail, conn=self.entry.id)

    def is_disconnected(self) -> bool:
        if not self.disconnected.is_set() and getattr(self._cycle, "disconnected", False):
            self.disconnected.set()
        return self.disconnected.is_set()

    def watch(self) -> None:
        """Start listening for the client's disconnect (needed only while we wait without sending)."""
        if self._watcher is not None or self._receive is None:
            return

        async def listen() -> None:
            while True:
                message = await self._receive()
                if message["type"] == "http.disconnect":
                    self.disconnected.set()
                    return

        self._watcher = asyncio.ensure_future(listen())

    # -- wire --------------------------------------------------------------
    async def start_response(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        base = [(b"x-request-id", str(self.entry.id).encode())]
        if status == 200:
            headers = self._shaped(headers)
            transfer = self.transfer or "chunked"
            if transfer == "length" and self.stream:  # held: the head leaves with the whole body
                self._held, self._held_head = [], (status, base + headers)
                self._slow_write = True
                self.entry.status = status
                return
            if transfer == "close" and getattr(self._cycle, "transport", None) is not None:
                await self._write_head_by_hand(status, base + headers)
                return
        await self._send({"type": "http.response.start", "status": status, "headers": base + headers})
        self.headers_sent = True
        cycle = self._cycle
        self._raw = bool(getattr(cycle, "chunked_encoding", False)) and hasattr(cycle, "flow") \
            and getattr(cycle, "transport", None) is not None
        self.entry.status = status
        self.note("status", str(status))

    async def _write_head_by_hand(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        """transfer=close: an HTTP/1.0 head, no length, no chunking; the body ends when we close."""
        lines = [b"HTTP/1.0 %d OK" % status] + [n + b": " + v for n, v in headers
                                                if n not in (b"content-length", b"transfer-encoding")]
        self._cycle.transport.write(b"\r\n".join(lines + [b"connection: close", b"", b""]))
        self._close_delimited = self._slow_write = True
        self.headers_sent = True
        self.entry.status = status
        self.note("status", f"{status} (close-delimited)")

    async def send_whole(self, status: int, headers: list[tuple[bytes, bytes]], data: bytes) -> None:
        """A non-streaming answer: ``data`` framed as ``transfer`` says (default: Content-Length)."""
        if (self.transfer or "length") == "length":
            await self.start_response(status, headers + [(b"content-length", str(len(data)).encode())])
            await self._send({"type": "http.response.body", "body": data, "more_body": False})
            return
        await self.start_response(status, headers)  # chunked: uvicorn frames a body without a length
        if self._close_delimited:
            self._cycle.transport.write(data)
        elif data:
            await self._send({"type": "http.response.body", "body": data, "more_body": True})
        await self.finish_body()

    async def write(self, data: bytes) -> None:
        if self._slow_write:  # the client is gone, or the body is held or close-delimited
            await self._write_special(data)
            return
        if self.is_disconnected():
            self.left(f"at token {self.entry.tokens_sent}" if self.stream else "non-streaming wait")
            return
        cycle = self._cycle
        if self._raw and not cycle.flow.write_paused:
            # Fast path under uvicorn: frame the chunk ourselves and write it to the transport,
            # skipping one ASGI send() per token (the mock's hottest line). Headers, the final
            # chunk, flow control (a paused transport) and every other server use send().
            cycle.transport.write(b"%x\r\n%s\r\n" % (len(data), data))
        else:
            await self._send({"type": "http.response.body", "body": data, "more_body": True})
        if self.events:
            self.note("out", nbytes=len(data))

    async def _write_special(self, data: bytes) -> None:
        if self.gone:
            return
        if self.is_disconnected():
            self.left(f"at token {self.entry.tokens_sent}" if self.stream else "non-streaming wait")
            return
        if self._held is not None:
            self._held.append(data)
            return
        await self._drain()  # close-delimited
        self._cycle.transport.write(data)
        if self.events:
            self.note("out", nbytes=len(data))

    async def finish_body(self) -> None:
        if self.gone:
            return
        if self._held is not None:  # transfer=length: now the head and the whole body
            body, (status, headers) = b"".join(self._held), self._held_head  # type: ignore[misc]
            self._held = None
            headers = [h for h in headers if h[0] not in (b"content-length", b"transfer-encoding")]
            await self._send({"type": "http.response.start", "status": status,
                              "headers": headers + [(b"content-length", str(len(body)).encode())]})
            self.headers_sent = True
            self.note("status", f"{status} (content-length {len(body)})")
            await self._send({"type": "http.response.body", "body": body, "more_body": False})
            return
        if self._close_delimited:  # the end of the body is the end of the connection
            await self._drain()
            self.closed_by_us = True
            drop_connection(self._cycle.transport, reset=False)
            for _ in range(3):  # let uvicorn see connection_lost (it then expects no response)
                await asyncio.sleep(0)
            cycle = self._cycle
            if not getattr(cycle, "disconnected", True):  # data still queued: tell uvicorn we are done
                cycle.response_started = cycle.response_complete = True
            self.note("close", "close-delimited end")
            return
        await self._send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _drain(self) -> None:
        flow = getattr(self._cycle, "flow", None)
        if flow is not None and flow.write_paused:
            await flow.drain()

    # -- actions for faults -------------------------------------------------
    async def close(self, *, reset: bool, why: str) -> None:
        """Drop the connection now: FIN (``reset=False``) or RST (``reset=True``)."""
        self.entry.ended = "reset" if reset else "cut"
        self.note("fault", why)
        transport = getattr(getattr(self._send, "__self__", None), "transport", None)
        if transport is None:  # pragma: no cover - not under uvicorn
            raise RuntimeError(f"streamlab mock: {why} (connection dropped by raising)")
        drop_connection(transport, reset=reset)
        for _ in range(3):  # let uvicorn see connection_lost, so it logs nothing
            await asyncio.sleep(0)
        self.note("close", "reset" if reset else "eof")
        raise _Ended

    async def end(self, *, why: str) -> None:
        """End cleanly now, as if the answer were complete (silent truncation)."""
        self.entry.ended = "silent"
        self.note("fault", why)
        if not self.stream:
            raise _Truncated
        await self.finish_body()
        self.note("close", "clean end")
        raise _Ended

    async def pause(self, seconds: float | None) -> None:
        """Send nothing for ``seconds`` of wall-clock time (None: until the client disconnects)."""
        started = time.perf_counter()
        self.watch()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.disconnected.wait(), seconds)
        self.offset += time.perf_counter() - started
        if self.is_disconnected():
            self.left("stall")

    async def fail_midstream(self, message: str, *, why: str) -> None:
        self.note("fault", why)
        if not self.stream:
            await self.reject(500, message, type="server_error")
        self.entry.ended = "error"
        await self.write(b"data: " + _error_body(message, "server_error") + b"\n\n")
        await self.finish_body()
        raise _Ended

    async def reject(self, status: int, message: str, *, type: str, code: str | None = None,
                     param: str | None = None, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
        """Answer with an OpenAI-style JSON error instead of a completion."""
        self.entry.ended = "rejected"
        self.note("fault", f"HTTP {status}")
        body = _error_body(message, type, param, code)
        await self.start_response(status, [(b"content-type", b"application/json"),
                                           (b"content-length", str(len(body)).encode()), *headers])
        await self._send({"type": "http.response.body", "body": body, "more_body": False})
        raise _Ended
