"""A long request vs a background job the client can poll, stream and resume (article "LangGraph scaling", "push long work out of band").

    uvicorn streamlab.apps.jobs:app          env: STREAMLAB_MODEL_URL=http://127.0.0.1:PORT/v1

    GET  /report?q=&spec=        BROKEN: the whole answer in one long request; any hop with
                                 a shorter timeout ends it, and the work is lost
    POST /jobs {"q":..,"spec":..} FIXED: 202 {"id": ...}; the job runs in the worker,
                                 independent of any connection
    GET  /jobs/{id}              {"status": "running|done|error", "tokens": n, "text": ...}
    GET  /jobs/{id}/stream       SSE, one ``token`` event per token with ``id: <index>``, then
                                 ``done``. Reconnect with ``Last-Event-ID: <index>`` (what a
                                 browser's EventSource sends) or ``?after=<index>`` to resume.
    GET  /health

Jobs live in the memory of one worker process: with several workers (or a
restart) ``GET /jobs/{id}`` can land where the job is unknown (404, logged as
``job <id> unknown in this worker``). A real deployment keeps them in a shared store.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from dataclasses import dataclass, field

import langchain_openai  # noqa: F401 - import at startup, not on the first request (it blocks the loop)
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from ._common import SSE_HEADERS, DisconnectLog, warm_start, llm_tokens, log, log_token, request_id, spec_of, sse_frame

PROMPT = "Write the incident report"

app = FastAPI(title="streamlab long request vs background job", lifespan=warm_start)
app.add_middleware(DisconnectLog)


@dataclass
class Job:
    id: str
    q: str
    spec: str | None
    status: str = "running"
    tokens: list[str] = field(default_factory=list)
    error: str | None = None
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    task: "asyncio.Task | None" = None

    def view(self) -> dict:
        return {"id": self.id, "status": self.status, "tokens": len(self.tokens), "text": "".join(self.tokens),
                "error": self.error, "pid": os.getpid()}


JOBS: dict[str, Job] = {}
_ids = itertools.count(1)


async def _run(job: Job) -> None:
    route = f"/jobs/{job.id}"
    log(job.id, route, "job start")
    try:
        async for text in llm_tokens(job.q, job.spec):
            log_token(job.id, route, len(job.tokens), text)
            async with job.changed:
                job.tokens.append(text)
                job.changed.notify_all()
        job.status = "done"
        log(job.id, route, f"job done {len(job.tokens)} tokens")
    except Exception as exc:  # noqa: BLE001 - reported to the client through the job
        job.status, job.error = "error", f"{type(exc).__name__}: {exc}"
        log(job.id, route, f"job ERROR {job.error}")
    async with job.changed:
        job.changed.notify_all()


@app.get("/report")
async def report(request: Request, q: str = PROMPT):
    rid, spec = request_id(request.headers), spec_of(request.query_params, request.headers)
    tokens: list[str] = []
    log(rid, "/report", "start (long request, answer at the end)")
    async for text in llm_tokens(q, spec):
        log_token(rid, "/report", len(tokens), text)
        tokens.append(text)
    gone = await request.is_disconnected()
    log(rid, "/report", f"done {len(tokens)} tokens" + (" - CLIENT DISCONNECT: nobody to send them to" if gone else ""))
    return {"text": "".join(tokens), "tokens": len(tokens), "rid": rid, "pid": os.getpid()}


@app.post("/jobs", status_code=202)
async def create_job(request: Request):
    body = await request.json() if await request.body() else {}
    job = Job(id=f"job-{os.getpid()}-{next(_ids)}", q=body.get("q", PROMPT),
              spec=body.get("spec") or spec_of(request.query_params, request.headers))
    JOBS[job.id] = job
    job.task = asyncio.get_running_loop().create_task(_run(job))
    return {"id": job.id, "pid": os.getpid()}


def _unknown(job_id: str) -> JSONResponse:
    log(job_id, f"/jobs/{job_id}", f"job {job_id} unknown in this worker (pid {os.getpid()})")
    return JSONResponse({"error": f"job {job_id} unknown in worker {os.getpid()}"}, status_code=404)


@app.get("/jobs/{job_id}")
async def job_status(job_id: str):
    job = JOBS.get(job_id)
    return job.view() if job else _unknown(job_id)


@app.get("/jobs/{job_id}/stream")
async def job_stream(request: Request, job_id: str, after: int | None = None):
    job = JOBS.get(job_id)
    if job is None:
        return _unknown(job_id)
    rid = request_id(request.headers)
    last = request.headers.get("last-event-id")
    start = (int(last) + 1) if last is not None else (after + 1 if after is not None else 0)

    async def events():
        i = start
        route = f"/jobs/{job_id}/stream"
        log(rid, route, f"stream from token {start}")
        try:
            while True:
                async with job.changed:
                    await job.changed.wait_for(lambda: len(job.tokens) > i or job.status != "running")
                while i < len(job.tokens):
                    yield sse_frame(job.tokens[i], event="token", id=i)
                    i += 1
                if job.status != "running" and i >= len(job.tokens):
                    break
            yield sse_frame(job.error or "[DONE]", event="error" if job.error else "done")
            log(rid, route, f"stream done at token {i}")
        except asyncio.CancelledError:
            log(rid, route, f"CLIENT DISCONNECT (CancelledError) at token {i}; the job goes on")
            raise

    return StreamingResponse(events(), media_type="text/event-stream", headers={**SSE_HEADERS, "X-Request-ID": rid})


@app.get("/health")
async def health():
    return {"ok": True, "pid": os.getpid(), "jobs": len(JOBS)}
