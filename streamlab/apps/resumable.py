"""Resumable SSE (``streamlab.fixes.ResumableRuns``) next to a plain SSE baseline.

    gunicorn streamlab.apps.resumable:app -w 4 -k uvicorn_worker.UvicornWorker
        env: STREAMLAB_MODEL_URL=http://127.0.0.1:PORT/v1
             STREAMLAB_REDIS_URL=redis://127.0.0.1:PORT/0   (absent: in-process store, one process only)
             STREAMLAB_RESUME_LEASE=10   wall-clock seconds until readers call a silent producer lost

    POST /runs?q=...&spec=...&run_id=...   start a run: the model call runs in the background of
                                           this worker and writes every token to the store.
                                           201 {"run_id", "stream", "started": true, "store", "pid"};
                                           an existing run_id: 200 with "started": false (nothing rerun).
    GET  /runs/{run_id}/stream             SSE, from any worker: ``id:`` + ``event: token`` +
                                           ``data: {"i": n, "t": text}`` per token, then ``event: done``
                                           ``data: {"tokens": n}``; first a ``retry:`` of 1 scenario s.
                                           ``Last-Event-ID`` (header or ``?last_event_id=``) replays
                                           only what came after it.
    GET  /chat/sse?q=...&spec=...          BASELINE: the same events without ids, the model call
                                           tied to the request: a cut connection ends the model run.
    GET  /health                           {"ok", "pid", "store"}.

Every response names its worker in ``X-Streamlab-Pid``. Log lines (``rid=<run_id>``):
``/runs produce token 3 'The'`` from the producer, ``/runs serve after <id>`` per reader
connection (``-``: from the start), so ``server.log_lines("rid=<run_id> /runs serve")`` shows
which worker served each (re)connection and what the client said it had.
"""

from __future__ import annotations

import json
import os
from contextlib import asynccontextmanager
from functools import lru_cache

import langchain_openai  # noqa: F401 - import at startup, not on the first request (it blocks the loop)
import redis.asyncio  # noqa: F401 - the same: ~0.3-0.8 s, longer than a 1 s proxy timeout under load
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.responses import StreamingResponse

from ..fixes import InMemoryStore, RedisStore, ResumableRuns, new_run_id
from ..fixes._resume import check_run_id
from ._common import SSE_HEADERS, DisconnectLog, llm_tokens, log, request_id, spec_of, traced, warm_start

PROMPT = "Explain RFC 9110 in 3 bullets"


@lru_cache(maxsize=1)
def runs() -> ResumableRuns:
    """One ``ResumableRuns`` per worker process, on Redis when ``STREAMLAB_REDIS_URL`` is set."""
    url = os.environ.get("STREAMLAB_REDIS_URL")
    store = RedisStore(url) if url else InMemoryStore()
    lease = float(os.environ.get("STREAMLAB_RESUME_LEASE", "10"))
    return ResumableRuns(store, lease=lease, retry=1.0, log=lambda run_id, message: log(run_id, "/runs", message))


def _store_name() -> str:
    return "redis" if isinstance(runs().store, RedisStore) else "memory"


@asynccontextmanager
async def lifespan(app: FastAPI):
    async with warm_start(app):
        try:
            await runs().store.ping()  # connect to Redis before the first request
        except Exception as exc:  # noqa: BLE001 - keep serving: requests answer 503 and say why
            log("-", "/runs", f"EVENT STORE UNAVAILABLE at startup: {type(exc).__name__}: {exc}")
        yield
    await runs().aclose()


app = FastAPI(title="streamlab resumable SSE", lifespan=lifespan)
app.add_middleware(DisconnectLog)


def _pid() -> dict[str, str]:
    return {"X-Streamlab-Pid": str(os.getpid())}  # per call: under gunicorn --preload the module is imported once


def _error(status: int, message: str, param: str | None = None) -> JSONResponse:
    kind = "service_unavailable" if status == 503 else "invalid_request_error"
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": None}},
                        status_code=status, headers=_pid())


async def _tokens(run_id: str, route: str, q: str, spec: str | None):
    n = 0
    async for text in traced(run_id, route, llm_tokens(q, spec)):
        yield "token", json.dumps({"i": n, "t": text})
        n += 1
    yield "done", json.dumps({"tokens": n})


@app.post("/runs")
async def create_run(request: Request, q: str = PROMPT, run_id: str | None = None):
    spec = spec_of(request.query_params, request.headers)
    run_id = run_id or new_run_id()
    try:
        check_run_id(run_id)
    except ValueError as exc:
        return _error(400, str(exc), "run_id")
    try:
        started = await runs().start(run_id, lambda: _tokens(run_id, "/runs produce", q, spec))
    except Exception as exc:  # noqa: BLE001 - Redis down or unreachable
        return _error(503, f"event store unavailable: {type(exc).__name__}: {exc}")
    body = {"run_id": run_id, "stream": f"/runs/{run_id}/stream", "started": started, "store": _store_name(),
            "pid": os.getpid()}
    return JSONResponse(body, status_code=201 if started else 200, headers=_pid())


@app.get("/runs/{run_id}/stream")
async def stream_run(request: Request, run_id: str):
    return await runs().response(request, run_id, headers=_pid())


@app.get("/chat/sse")
async def chat_sse(request: Request, q: str = PROMPT):
    rid, spec = request_id(request.headers), spec_of(request.query_params, request.headers)

    async def frames():
        async for kind, data in _tokens(rid, "/chat/sse", q, spec):
            yield f"event: {kind}\ndata: {data}\n\n".encode()

    return StreamingResponse(frames(), media_type="text/event-stream",
                             headers={**SSE_HEADERS, "X-Request-ID": rid, **_pid()})


@app.get("/health")
async def health():
    return JSONResponse({"ok": True, "pid": os.getpid(), "store": _store_name()}, headers=_pid())
