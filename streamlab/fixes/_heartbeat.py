"""Heartbeats: an SSE comment frame whenever a stream has been silent for a while.

    from streamlab.fixes import Heartbeat, heartbeat

    app.add_middleware(Heartbeat, every=15)            # any ASGI app that answers text/event-stream

    async def events():                                 # or around one generator of SSE frames
        async for frame in heartbeat(frames(), every=15):
            yield frame

A heartbeat is a transport comment (``: ping``), never data: an ``EventSource``,
the ``httpx-sse`` parser, the openai SDK's SSE decoder and sse-starlette's own
client all skip lines that start with a colon. A hand-written parser that treats
every line as ``data:`` does not, and that is the one place a ping can break a
client; say so where you add one.

What it cures: a hop that gives up on *silence* (a proxy's read timeout, a load
balancer's idle timeout, a browser or client read timeout) while the model is
thinking. What it cannot cure: a hop that limits
the *whole* request (an API gateway's deadline, a serverless time limit), a hop
that holds the bytes back (buffering of a non-chunked body, gzip on
``text/event-stream``: the pings are held with the rest), and a model that
stops. Taught in notebooks/06_fixes.

Intervals are scenario seconds (``streamlab.time_scale``). 15 s is sse-starlette's
default; pick one below the smallest idle limit on the path (60 s nginx and ALB,
100 s Cloudflare).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, AsyncIterable, AsyncIterator, Awaitable, Callable, TypeVar

from .._timescale import to_real

__all__ = ["heartbeat", "Heartbeat", "PING"]

T = TypeVar("T")
PING = b": ping\n\n"


def _interval(every: float) -> float:
    every = float(every)
    if not every > 0 or every != every or every == float("inf"):
        raise ValueError(f"a heartbeat interval must be a finite number of seconds > 0, got {every!r}")
    return every


async def heartbeat(source: AsyncIterable[T], *, every: float = 15.0,
                    frame: Any = PING) -> AsyncIterator[T | Any]:
    """Yield what ``source`` yields, and ``frame`` after every ``every`` scenario seconds of silence.

    The pending read of ``source`` is never cancelled by a beat (a cancelled
    ``__anext__`` would end most generators); it is cancelled only when the
    consumer stops early, and then ``source`` is closed.
    """
    limit = to_real(_interval(every))
    iterator = source.__aiter__()
    pending: asyncio.Task | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(iterator.__anext__())
            done, _ = await asyncio.wait({pending}, timeout=limit)
            if not done:
                yield frame
                continue
            task, pending = pending, None
            try:
                item = task.result()
            except StopAsyncIteration:
                return
            yield item
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
        closer = getattr(iterator, "aclose", None)
        if closer is not None:
            with contextlib.suppress(Exception):
                await closer()


class Heartbeat:
    """Plain ASGI middleware: ``: ping`` into every ``text/event-stream`` response that goes quiet.

    Args (keyword-only):
        every: scenario seconds of silence before a ping (sse-starlette's default is 15).
        frame: the bytes of one beat (an SSE comment; keep the leading ``:``).

    Only responses whose ``content-type`` is ``text/event-stream`` get beats, and
    only between the response head and the last body part. Writes from the app
    and from the beat never interleave. Plain ASGI on purpose: Starlette's
    ``BaseHTTPMiddleware`` would buffer the body and hide the client's disconnect.
    """

    def __init__(self, app: Callable[..., Awaitable[None]], *, every: float = 15.0, frame: bytes = PING) -> None:
        self.app = app
        self.every = _interval(every)
        if not (isinstance(frame, bytes) and frame.startswith(b":") and frame.endswith(b"\n\n")):
            raise ValueError(f"a heartbeat frame must be an SSE comment like b': ping\\n\\n', got {frame!r}")
        self.frame = frame

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]],
                       send: Callable[[dict], Awaitable[None]]) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        lock = asyncio.Lock()
        state = {"beating": False, "last": 0.0, "ended": False}
        loop = asyncio.get_running_loop()
        limit = to_real(self.every)
        beater: asyncio.Task | None = None

        async def beat() -> None:
            while not state["ended"]:
                wait = state["last"] + limit - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                    continue
                async with lock:
                    if state["ended"]:
                        return
                    try:
                        await send({"type": "http.response.body", "body": self.frame, "more_body": True})
                    except Exception:  # the client is gone: the app learns it from its own send
                        return
                    state["last"] = loop.time()

        async def guarded_send(message: dict) -> None:
            nonlocal beater
            async with lock:
                if message["type"] == "http.response.start":
                    headers = dict((k.lower(), v) for k, v in message.get("headers", []))
                    state["beating"] = headers.get(b"content-type", b"").startswith(b"text/event-stream")
                elif message["type"] == "http.response.body" and not message.get("more_body", False):
                    state["ended"] = True
                await send(message)
                state["last"] = loop.time()
            if state["beating"] and beater is None and not state["ended"]:
                beater = asyncio.ensure_future(beat())

        try:
            await self.app(scope, receive, guarded_send)
        finally:
            state["ended"] = True
            if beater is not None:
                beater.cancel()
                with contextlib.suppress(BaseException):
                    await beater
