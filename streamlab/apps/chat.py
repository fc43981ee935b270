"""Buffered JSON vs real SSE, with LangChain's ``ChatOpenAI`` (article "LangChain scaling", "The Most Common Cause").

    uvicorn streamlab.apps.chat:app          env: STREAMLAB_MODEL_URL=http://127.0.0.1:PORT/v1

    GET /chat/buffered?q=...&spec=...   BROKEN: collects every ``astream()`` chunk, then
                                        returns one JSON body. The client sees nothing until
                                        the end; if a hop gives up first, it sees nothing at all,
                                        and the model run goes on without anyone to read it.
    GET /chat/sse?q=...&spec=...        FIXED: sse-starlette ``EventSourceResponse``, one
                                        ``token`` event per chunk, then ``done``; headers
                                        ``Cache-Control: no-cache`` and ``X-Accel-Buffering: no``.
    GET /health                         answers at once while the event loop is free.

``spec`` selects the mock's behaviour for this request (``stall@5=30``, ``cut@12``, ...).
"""

from __future__ import annotations

import asyncio
import os

import langchain_openai  # noqa: F401 - import at startup, not on the first request (it blocks the loop)
from fastapi import FastAPI, Request
from sse_starlette import EventSourceResponse

from ._common import (SSE_HEADERS, DisconnectLog, llm_tokens, log, log_token, request_id, spec_of, sse_ping, traced,
                      warm_start)

PROMPT = "Explain RFC 9110 in 3 bullets"

app = FastAPI(title="streamlab chat: buffered vs SSE", lifespan=warm_start)
app.add_middleware(DisconnectLog)


@app.get("/chat/buffered")
async def chat_buffered(request: Request, q: str = PROMPT):
    rid, spec, route = request_id(request.headers), spec_of(request.query_params, request.headers), "/chat/buffered"
    chunks: list[str] = []
    log(rid, route, "start (buffering the whole answer before replying)")
    try:
        async for text in llm_tokens(q, spec):
            log_token(rid, route, len(chunks), text)
            chunks.append(text)
    except asyncio.CancelledError:
        log(rid, route, f"CLIENT DISCONNECT (CancelledError) after {len(chunks)} tokens")
        raise
    if await request.is_disconnected():
        log(rid, route, f"CLIENT DISCONNECT before the reply: {len(chunks)} tokens generated for nobody")
    else:
        log(rid, route, f"done {len(chunks)} tokens, sending one JSON body")
    return {"text": "".join(chunks), "tokens": len(chunks), "rid": rid, "pid": os.getpid()}


@app.get("/chat/sse")
async def chat_sse(request: Request, q: str = PROMPT):
    rid, spec = request_id(request.headers), spec_of(request.query_params, request.headers)

    async def events():
        async for text in traced(rid, "/chat/sse", llm_tokens(q, spec)):
            yield {"event": "token", "data": text}
        yield {"event": "done", "data": "[DONE]"}

    return EventSourceResponse(events(), headers={**SSE_HEADERS, "X-Request-ID": rid}, ping=sse_ping())


@app.get("/health")
async def health():
    return {"ok": True, "pid": os.getpid()}
