"""A token buffer shared by every request vs one per request (article "LangChain scaling", "Keep streaming handlers stateless").

    uvicorn streamlab.apps.shared_state:app  env: STREAMLAB_MODEL_URL=http://127.0.0.1:PORT/v1

    GET /stream/shared?q=&spec=       BROKEN: tokens go through a module-level list that
                                      each new request clears. Two requests in one worker
                                      at once: each stream skips tokens and carries the
                                      other's; the final ``answer`` event mixes both.
    GET /stream/per_request?q=&spec=  FIXED: the same code with a local list.
    GET /health

Run the mock with ``echo`` (``?spec=echo``) and two different prompts: every
token then says which request it came from. With one request at a time, or one
request per worker, both routes look right; the bug needs concurrency in one process.
"""

from __future__ import annotations

import os

import langchain_openai  # noqa: F401 - import at startup, not on the first request (it blocks the loop)
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from ._common import SSE_HEADERS, DisconnectLog, warm_start, llm_tokens, log, log_token, request_id, spec_of, sse_frame

PROMPT = "alpha bravo charlie"

app = FastAPI(title="streamlab shared state vs per-request state", lifespan=warm_start)
app.add_middleware(DisconnectLog)

_tokens: list[str] = []  # BROKEN: one buffer for every request this worker serves


async def _relay(rid: str, route: str, q: str, spec: str | None, buffer: list[str]):
    """Append model tokens to ``buffer`` and stream what this request has not sent yet."""
    buffer.clear()
    sent = 0
    log(rid, route, "start")
    async for text in llm_tokens(q, spec):
        buffer.append(text)
        while sent < len(buffer):
            log_token(rid, route, sent, buffer[sent])
            yield sse_frame(buffer[sent], event="token")
            sent += 1
    answer = "".join(buffer)
    log(rid, route, f"done {sent} tokens sent, answer has {len(buffer)} tokens")
    yield sse_frame(answer, event="answer")
    yield sse_frame("[DONE]", event="done")


def _response(rid: str, body) -> StreamingResponse:
    return StreamingResponse(body, media_type="text/event-stream", headers={**SSE_HEADERS, "X-Request-ID": rid})


@app.get("/stream/shared")
async def stream_shared(request: Request, q: str = PROMPT):
    rid = request_id(request.headers)
    return _response(rid, _relay(rid, "/stream/shared", q, spec_of(request.query_params, request.headers), _tokens))


@app.get("/stream/per_request")
async def stream_per_request(request: Request, q: str = PROMPT):
    rid = request_id(request.headers)
    mine: list[str] = []
    return _response(rid, _relay(rid, "/stream/per_request", q, spec_of(request.query_params, request.headers), mine))


@app.get("/health")
async def health():
    return {"ok": True, "pid": os.getpid()}
