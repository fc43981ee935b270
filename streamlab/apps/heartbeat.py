"""An SSE endpoint with and without a heartbeat (``streamlab.fixes.heartbeat``).

    uvicorn streamlab.apps.heartbeat:app        env: STREAMLAB_MODEL_URL=http://127.0.0.1:PORT/v1

    GET /sse?spec=stall@3=30&every=15    one ``data:`` frame per model token, then ``data: [DONE]``;
                                         ``every`` > 0 adds a ``: ping`` comment after that many
                                         scenario seconds of silence (0, the default: none).
                                         Plain Starlette ``StreamingResponse`` (no built-in ping).
                                         ``accel`` is the ``X-Accel-Buffering`` value sent ("no",
                                         the default; "yes"; "" sends none, as most apps do, so a
                                         buffering nginx in front really buffers).
    GET /health                          answers at once.

The model is reached with ``ChatOpenAI.astream`` like the other demo apps.
"""

from __future__ import annotations

import json

import langchain_openai  # noqa: F401 - import at startup, not on the first request (it blocks the loop)
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from ..fixes import heartbeat
from ._common import SSE_HEADERS, DisconnectLog, llm_tokens, request_id, spec_of, traced, warm_start

PROMPT = "Explain RFC 9110 in 3 bullets"

app = FastAPI(title="streamlab heartbeat demo", lifespan=warm_start)
app.add_middleware(DisconnectLog)


@app.get("/sse")
async def sse(request: Request, q: str = PROMPT, every: float = 0.0, accel: str = "no"):
    rid, spec = request_id(request.headers), spec_of(request.query_params, request.headers)
    if not (every >= 0 and every < 86400):
        return JSONResponse({"error": f"every must be between 0 and 86400 scenario seconds, got {every}"},
                            status_code=400)
    if accel not in ("no", "yes", ""):
        return JSONResponse({"error": f"accel is 'no', 'yes' or '' (no X-Accel-Buffering header), got {accel!r}"},
                            status_code=400)
    headers = {**SSE_HEADERS, "X-Accel-Buffering": accel, "X-Request-ID": rid}
    if not accel:
        del headers["X-Accel-Buffering"]

    async def frames():
        async for text in traced(rid, "/sse", llm_tokens(q, spec)):
            yield f"data: {json.dumps(text)}\n\n".encode()
        yield b"data: [DONE]\n\n"

    body = heartbeat(frames(), every=every) if every > 0 else frames()
    return StreamingResponse(body, media_type="text/event-stream", headers=headers)


@app.get("/health")
async def health():
    return {"ok": True}
