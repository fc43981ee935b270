"""One model call per request, behind ``streamlab.fixes.Idempotent``: retries with a key never rerun it.

    uvicorn streamlab.apps.idempotent:app
        env: STREAMLAB_MODEL_URL=http://127.0.0.1:PORT/v1
             STREAMLAB_REDIS_URL=redis://127.0.0.1:PORT/0   (absent: in-process keys, one process only)

    POST /answer?q=...&spec=...   one non-streaming chat completion from the mock; 200
                                  {"text", "pid", "request_id"}. With ``Idempotency-Key`` a repeat
                                  gets the first answer (``Idempotent-Replayed: true``) or, while
                                  the first still runs, 409 with ``Retry-After``; without it every
                                  request is a new model run (the baseline).
    GET  /health                  {"ok", "pid", "store"}

Log lines: ``rid=<X-Request-ID> /answer model call`` and ``... model answered <n> chars``, so the
app-server logs show which worker ran the model for a request the balancer retried.
"""

from __future__ import annotations

import os
from functools import lru_cache

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from ..fixes._idempotent import Idempotent, InMemoryKeys, RedisKeys
from ._common import log, model_url, request_id, spec_of

PROMPT = "Summarise the incident report"


@lru_cache(maxsize=1)
def _client() -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=httpx.Timeout(600.0, connect=5.0))


def _store():
    url = os.environ.get("STREAMLAB_REDIS_URL")
    return RedisKeys(url) if url else InMemoryKeys()


inner = FastAPI(title="streamlab idempotent answers")


@inner.post("/answer")
async def answer(request: Request, q: str = PROMPT):
    rid, spec = request_id(request.headers), spec_of(request.query_params, request.headers)
    log(rid, "/answer", "model call")
    reply = await _client().post(model_url(spec) + "/chat/completions", json={
        "model": os.environ.get("STREAMLAB_MODEL", "streamlab-mock"),
        "messages": [{"role": "user", "content": q}]})
    if reply.status_code != 200:
        log(rid, "/answer", f"model error {reply.status_code}")
        return JSONResponse({"error": {"message": f"model answered {reply.status_code}", "type": "upstream_error",
                                       "param": None, "code": None}}, status_code=502)
    text = reply.json()["choices"][0]["message"]["content"]
    log(rid, "/answer", f"model answered {len(text)} chars")
    return JSONResponse({"text": text, "pid": os.getpid(), "request_id": rid},
                        headers={"X-Streamlab-Pid": str(os.getpid())})


@inner.get("/health")
async def health():
    return {"ok": True, "pid": os.getpid(), "store": "redis" if os.environ.get("STREAMLAB_REDIS_URL") else "memory"}


app = Idempotent(inner, store=_store(), lease=float(os.environ.get("STREAMLAB_IDEMPOTENCY_LEASE", "30")))
