"""One chat completion exchange on the wire, with the actions a fault may take.

``Exchange`` implements ``streamlab._events.FaultContext``: a fault calls ``close`` (FIN or RST),
``end`` (silent truncation), ``pause`` (a stall), ``fail_midstream`` (an error event) or ``reject``
(an HTTP error before the stream). Each of these that ends the exchange raises ``Ended``, which
the pipeline catches; ``Truncated`` ends a non-streaming answer early.

Cut and reset reach for uvicorn's transport so the client sees a real FIN or RST; under any other
ASGI server they fall back to raising, which makes the server drop the connection.
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

__all__ = ["Exchange", "Ended", "Truncated"]


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
        await self._send({"type": "http.response.start", "status": status, "headers": base + headers})
        self.headers_sent = True
        cycle = self._cycle
        self._raw = bool(getattr(cycle, "chunked_encoding", False)) and hasattr(cycle, "flow") \
            and getattr(cycle, "transport", None) is not None
        self.entry.status = status
        self.note("status", str(status))

    async def write(self, data: bytes) -> None:
        if self.is_disconnected():
            raise _Ended
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

    async def finish_body(self) -> None:
        await self._send({"type": "http.response.body", "body": b"", "more_body": False})

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
            raise _Ended

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
