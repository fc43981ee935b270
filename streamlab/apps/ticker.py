"""A model-free streaming app in plain ASGI: the hop tests' workhorse.

    uvicorn streamlab.apps.ticker:app

Routes (durations are scenario seconds, see ``streamlab.time_scale``):

    GET /stream?n=40&every=0.05   n SSE events ``data: tick <i>``, one every ``every`` s, then
                                  ``event: done`` / ``data: [DONE]``
               &size=0            pad each event to at least ``size`` bytes (backpressure tests)
               &block_at=5&block=3  after event 5, block the event loop with time.sleep(3)
    GET /json?n=40&every=0.05     the same ticks, buffered, returned as one JSON body at the end
    GET /block?seconds=3          time.sleep inside ``async def``: the whole worker freezes
    GET /health                   {"ok": true, "pid": ..., "time_scale": ...} at once (if the loop is free)
    GET /whoami                   the same: which worker answered
    GET /env?name=X               {"name": "X", "value": os.environ.get("X")}

Plain ASGI on purpose (STYLE.md 9): every ``send`` is one chunk on the wire, and the
disconnect is seen the way Starlette sees it, by a task waiting on ``receive()``
for ``http.disconnect`` that cancels the producer. Log lines (``_common.log``)::

    streamlab.app pid=4242 rid=4242-3 /stream CLIENT DISCONNECT (http.disconnect) after 5 chunks
    streamlab.app pid=4242 rid=4242-3 /stream send blocked 0.84 s at chunk 12 (client not reading)
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from urllib.parse import parse_qs

from .._timescale import current_time_scale, to_real
from ._common import log, log_token, request_id

SLOW_SEND = 0.1  # wall-clock seconds: a send that waits longer is logged as blocked


def _query(scope) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(scope.get("query_string", b"").decode()).items()}


async def _json(send, status: int, body: dict, rid: str) -> None:
    data = json.dumps(body).encode()
    await send({
        "type": "http.response.start", "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                    (b"x-request-id", rid.encode())],
    })
    await send({"type": "http.response.body", "body": data})


async def _stream(scope, receive, send, rid: str, q: dict[str, str]) -> None:
    n, every, size = int(q.get("n", 40)), float(q.get("every", 0.05)), int(q.get("size", 0))
    block_at = int(q["block_at"]) if "block_at" in q else None
    block = float(q.get("block", 0))
    await send({
        "type": "http.response.start", "status": 200,
        "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"),
                    (b"x-accel-buffering", b"no"), (b"x-request-id", rid.encode())],
    })
    log(rid, "/stream", f"start n={n} every={every}")
    sent = 0

    async def produce() -> None:
        nonlocal sent
        try:
            for i in range(n):
                await asyncio.sleep(to_real(every))
                event = f"data: tick {i}\n\n"
                if size > len(event):
                    event = f": {'x' * (size - len(event) - 3)}\n" + event
                t0 = time.perf_counter()
                await send({"type": "http.response.body", "body": event.encode(), "more_body": True})
                waited = time.perf_counter() - t0
                if waited > SLOW_SEND:
                    log(rid, "/stream", f"send blocked {waited:.2f} s at chunk {i} (client not reading)")
                log_token(rid, "/stream", i, f"tick {i}")
                sent += 1
                if block_at is not None and i + 1 == block_at:
                    log(rid, "/stream", f"blocking the event loop for {block} s (time.sleep)")
                    time.sleep(to_real(block))
            await send({"type": "http.response.body", "body": b"event: done\ndata: [DONE]\n\n", "more_body": False})
            log(rid, "/stream", f"done {sent} chunks")
        except asyncio.CancelledError:
            log(rid, "/stream", f"CLIENT DISCONNECT (http.disconnect) after {sent} chunks")
            raise

    producer = asyncio.ensure_future(produce())

    async def watch() -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                producer.cancel()
                return

    watcher = asyncio.ensure_future(watch())
    try:
        await producer
    except asyncio.CancelledError:
        if not watcher.done():
            raise  # the server cancelled us (shutdown), not the client
    finally:
        watcher.cancel()


async def app(scope, receive, send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    rid = request_id(scope["headers"])
    q = _query(scope)
    path = scope["path"]
    if path == "/stream":
        await _stream(scope, receive, send, rid, q)
    elif path == "/json":
        n, every = int(q.get("n", 40)), float(q.get("every", 0.05))
        log(rid, "/json", f"start n={n} every={every} (buffering the whole answer)")
        ticks = []
        for i in range(n):
            await asyncio.sleep(to_real(every))
            ticks.append(f"tick {i}")
        log(rid, "/json", f"done {n} chunks, sending one JSON body")
        await _json(send, 200, {"ticks": ticks, "pid": os.getpid(), "rid": rid}, rid)
    elif path == "/block":
        seconds = float(q.get("seconds", 1))
        log(rid, "/block", f"time.sleep({seconds}) inside async def: event loop blocked")
        time.sleep(to_real(seconds))
        log(rid, "/block", "event loop free again")
        await _json(send, 200, {"slept": seconds, "pid": os.getpid()}, rid)
    elif path in ("/health", "/whoami"):
        await _json(send, 200, {"ok": True, "pid": os.getpid(), "rid": rid, "time_scale": current_time_scale()}, rid)
    elif path == "/env":
        name = q.get("name", "")
        await _json(send, 200, {"name": name, "value": os.environ.get(name)}, rid)
    else:
        await _json(send, 404, {"error": f"no route {path}"}, rid)
