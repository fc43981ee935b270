"""One SSE endpoint whose app-side choices are switches, for rebuilding an incident's app.

    uvicorn streamlab.apps.switches:app     env: STREAMLAB_MODEL_URL=http://127.0.0.1:PORT/v1

Switches (environment variables, read at startup; the app runs in an app-server subprocess):

    STREAMLAB_HEARTBEAT        scenario seconds between ``: ping`` comments while the model is
                               silent (``streamlab.fixes.heartbeat``); "0" (default): none
    STREAMLAB_BASE_MIDDLEWARE  "1": a do-nothing Starlette ``BaseHTTPMiddleware`` wraps the app,
                               as many apps have one for logging or auth (default "0")
    STREAMLAB_ON_DISCONNECT    "cancel" (default): when the client leaves, the model call is
                               cancelled; "continue": it runs on to the end, every token paid
                               for and read by nobody (a backend that keeps generating)

    GET /chat/sse?q=...&spec=...   one ``data:`` frame per model token, then ``data: [DONE]``
    GET /chat/json?q=...&spec=...  one JSON body at the end; stops the model call when
                                   ``request.is_disconnected()`` says the client left
    GET /health                    answers at once; says which switches are on

The model is a producer task that reads ``ChatOpenAI.astream`` into a queue, the
response reads the queue: so "cancel" and "continue" differ only in what happens to
the producer when the response ends early. ``log_lines("MODEL CALL")`` shows which.
"""

from __future__ import annotations

import asyncio
import json
import os

import langchain_openai  # noqa: F401 - import at startup, not on the first request (it blocks the loop)
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from ..fixes import heartbeat
from ._common import SSE_HEADERS, DisconnectLog, llm_tokens, log, request_id, spec_of, traced, warm_start

PROMPT = "Explain RFC 9110 in 3 bullets"


def _switches() -> dict:
    every = float(os.environ.get("STREAMLAB_HEARTBEAT", "0") or 0)
    if not (0 <= every < 86400):
        raise ValueError(f"STREAMLAB_HEARTBEAT must be 0 to 86400 scenario seconds, got {every}")
    middleware = os.environ.get("STREAMLAB_BASE_MIDDLEWARE", "0")
    if middleware not in ("0", "1"):
        raise ValueError(f"STREAMLAB_BASE_MIDDLEWARE must be 0 or 1, got {middleware!r}")
    on_disconnect = os.environ.get("STREAMLAB_ON_DISCONNECT", "cancel")
    if on_disconnect not in ("cancel", "continue"):
        raise ValueError(f"STREAMLAB_ON_DISCONNECT must be 'cancel' or 'continue', got {on_disconnect!r}")
    return {"heartbeat": every, "base_middleware": middleware == "1", "on_disconnect": on_disconnect}


SWITCHES = _switches()
app = FastAPI(title="streamlab app with switches", lifespan=warm_start)
_background: set[asyncio.Task] = set()


async def _produce(rid: str, q: str, spec: str | None, queue: asyncio.Queue) -> None:
    n = 0
    try:
        async for text in llm_tokens(q, spec):
            n += 1
            await queue.put(text)
        log(rid, "/chat/sse", f"MODEL CALL done after {n} tokens")
    except asyncio.CancelledError:
        log(rid, "/chat/sse", f"MODEL CALL cancelled after {n} tokens")
        raise
    except Exception as exc:  # the response side reports it to the client
        await queue.put(exc)
        return
    await queue.put(None)


@app.get("/chat/sse")
async def chat_sse(request: Request, q: str = PROMPT):
    rid, spec = request_id(request.headers), spec_of(request.query_params, request.headers)
    queue: asyncio.Queue = asyncio.Queue()
    producer = asyncio.ensure_future(_produce(rid, q, spec, queue))
    _background.add(producer)
    producer.add_done_callback(_background.discard)

    async def tokens():
        while True:
            item = await queue.get()
            if item is None:
                return
            if isinstance(item, Exception):
                raise item
            yield item

    async def frames():
        try:
            async for text in traced(rid, "/chat/sse", tokens()):
                yield f"data: {json.dumps(text)}\n\n".encode()
            yield b"data: [DONE]\n\n"
        finally:
            if not producer.done():
                if SWITCHES["on_disconnect"] == "cancel":
                    producer.cancel()
                else:
                    log(rid, "/chat/sse", "MODEL CALL continues for nobody (STREAMLAB_ON_DISCONNECT=continue)")

    body = frames()
    if SWITCHES["heartbeat"] > 0:
        body = heartbeat(body, every=SWITCHES["heartbeat"])
    return StreamingResponse(body, media_type="text/event-stream", headers={**SSE_HEADERS, "X-Request-ID": rid})


@app.get("/chat/json")
async def chat_json(request: Request, q: str = PROMPT):
    """One JSON body at the end; between tokens the handler asks ``request.is_disconnected()``
    and stops the model call when the client has gone (the usual way to stop paying)."""
    rid, spec = request_id(request.headers), spec_of(request.query_params, request.headers)
    parts: list[str] = []
    async for text in llm_tokens(q, spec):
        parts.append(text)
        if await request.is_disconnected():
            log(rid, "/chat/json", f"MODEL CALL stopped: is_disconnected() after {len(parts)} tokens")
            return JSONResponse({"text": "".join(parts), "tokens": len(parts)})
    log(rid, "/chat/json", f"MODEL CALL done after {len(parts)} tokens")
    return JSONResponse({"text": "".join(parts), "tokens": len(parts)})


@app.get("/health")
async def health():
    return JSONResponse({"ok": True, **SWITCHES})


if SWITCHES["base_middleware"]:
    from starlette.middleware.base import BaseHTTPMiddleware

    async def _passthrough(request, call_next):
        return await call_next(request)

    app.add_middleware(BaseHTTPMiddleware, dispatch=_passthrough)
app.add_middleware(DisconnectLog)  # outermost: logs what the server saw, whatever is inside
