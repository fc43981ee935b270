"""Sync model calls inside ``async def``: one slow request freezes the whole worker (article "LangChain scaling", cause 3).

    uvicorn streamlab.apps.blocking:app      env: STREAMLAB_MODEL_URL=http://127.0.0.1:PORT/v1

    GET /stream/sync?q=&spec=    BROKEN: an async generator that iterates the *sync*
                                 ``ChatOpenAI.stream()``; every wait for the next token
                                 blocks the event loop
    GET /stream/async?q=&spec=   FIXED: ``ChatOpenAI.astream()``
    GET /invoke/sync?q=&spec=    BROKEN: ``llm.invoke()`` inside ``async def``
    GET /invoke/async?q=&spec=   FIXED: ``await llm.ainvoke()``
    GET /sleep?seconds=3         BROKEN in its plainest form: ``time.sleep`` inside ``async def``
    GET /health                  answers at once only while the loop is free: time it during
                                 a broken request to see the freeze

Under gunicorn with uvicorn workers, a blocked loop also stops the worker's
heartbeat, so a long enough block ends in ``WORKER TIMEOUT`` (see streamlab._appserver).
Both stream routes send SSE frames with ``StreamingResponse`` and the SSE headers.
"""

from __future__ import annotations

import os
import time

import langchain_openai  # noqa: F401 - import at startup, not on the first request (it blocks the loop)
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from .._timescale import to_real
from ._common import (SSE_HEADERS, DisconnectLog, chat_model, llm_tokens, llm_tokens_sync, log, request_id,
                      spec_of, sse_frame, traced, warm_start)

PROMPT = "Write a summary"

app = FastAPI(title="streamlab blocking vs async", lifespan=warm_start)
app.add_middleware(DisconnectLog)


def _sse(rid: str, route: str, tokens) -> StreamingResponse:
    async def frames():
        async for text in traced(rid, route, tokens):
            yield sse_frame(text, event="token")
        yield sse_frame("[DONE]", event="done")

    return StreamingResponse(frames(), media_type="text/event-stream", headers={**SSE_HEADERS, "X-Request-ID": rid})


@app.get("/stream/sync")
async def stream_sync(request: Request, q: str = PROMPT):
    spec = spec_of(request.query_params, request.headers)

    async def tokens():
        for text in llm_tokens_sync(q, spec):  # BROKEN: sync network reads on the event loop
            yield text

    return _sse(request_id(request.headers), "/stream/sync", tokens())


@app.get("/stream/async")
async def stream_async(request: Request, q: str = PROMPT):
    spec = spec_of(request.query_params, request.headers)
    return _sse(request_id(request.headers), "/stream/async", llm_tokens(q, spec))


@app.get("/invoke/sync")
async def invoke_sync(request: Request, q: str = PROMPT):
    rid, spec = request_id(request.headers), spec_of(request.query_params, request.headers)
    log(rid, "/invoke/sync", "start: llm.invoke() inside async def (event loop blocked)")
    answer = chat_model(spec).invoke(q).content  # BROKEN
    log(rid, "/invoke/sync", f"done {len(answer.split())} words")
    return {"text": answer, "rid": rid, "pid": os.getpid()}


@app.get("/invoke/async")
async def invoke_async(request: Request, q: str = PROMPT):
    rid, spec = request_id(request.headers), spec_of(request.query_params, request.headers)
    log(rid, "/invoke/async", "start: await llm.ainvoke()")
    answer = (await chat_model(spec).ainvoke(q)).content
    log(rid, "/invoke/async", f"done {len(answer.split())} words")
    return {"text": answer, "rid": rid, "pid": os.getpid()}


@app.get("/sleep")
async def sleep(request: Request, seconds: float = 1.0):
    rid = request_id(request.headers)
    log(rid, "/sleep", f"time.sleep({seconds}) inside async def: event loop blocked")
    time.sleep(to_real(seconds))  # BROKEN
    log(rid, "/sleep", "event loop free again")
    return {"slept": seconds, "pid": os.getpid()}


@app.get("/health")
async def health():
    return {"ok": True, "pid": os.getpid()}
