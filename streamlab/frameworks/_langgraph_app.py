"""LangGraph helpers, part 3: the demo app (``create_app``, a FastAPI factory) and ``show``.

Re-exported by ``streamlab.frameworks.langgraph``; ``uvicorn --factory
streamlab.frameworks.langgraph:create_app`` serves it (the routes are listed there).
"""

import inspect
import json
import os
import re
import textwrap
from typing import Any, AsyncIterator, Iterable, Iterator

from ..apps._common import log, traced
from .._timescale import to_real
from ._langgraph_graphs import (_JOBS, _graphs, article_graph, bad_node, build_graph, call_model, fast_node,
                                good_node, llm, loop_graph, open_ticket, slow_node)

PING = 15.0  # scenario seconds between keep-alive comments (FastAPI's EventSourceResponse default)


def sse_as_in_article(graph, payload: dict, config: dict, route: str):
    """The article's fixed endpoint body, as written (+ ``config`` for the mock, + the event log)."""
    from fastapi.responses import StreamingResponse

    async def event_stream():
        async for chunk in graph.astream(payload, config):
            yield f"data: {chunk}\n\n"

    return StreamingResponse(
        _logged(config["configurable"]["rid"], route, event_stream()),
        media_type="text/event-stream",
        headers={
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",  # important for nginx
        },
    )


async def token_events(graph, payload: dict, config: dict):
    """The fix made to work: one JSON event per LLM token (stream_mode="messages"), then ``done``."""
    from fastapi.sse import ServerSentEvent

    answer = []
    async for message, meta in graph.astream(payload, config, stream_mode="messages"):
        if message.content:
            answer.append(message.content)
            yield ServerSentEvent(data={"token": message.content, "node": meta["langgraph_node"]}, event="token")
    yield ServerSentEvent(data={"answer": "".join(answer)}, event="done")


def _logged(rid: str, route: str, events: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """Pass events through, logging each one and how the stream ended (debugging step 1)."""
    def each(n: int, event: Any) -> None:
        log(rid, route, f"emit {n} {str(getattr(event, 'data', event))[:70]!r}")

    return traced(rid, route, events, unit="events", each=each, end="end after {n} events")


def _logged_sync(rid: str, route: str, events: Iterable[Any]) -> Iterator[Any]:
    n = 0
    log(rid, route, "start")
    try:
        for event in events:
            log(rid, route, f"emit {n} {str(event)[:70]!r}")
            n += 1
            yield event
    except GeneratorExit:
        log(rid, route, f"STREAM CLOSED (GeneratorExit) after {n} events")
        raise
    log(rid, route, f"end after {n} events")


def create_app():
    """The FastAPI app of the module docstring (an app factory: ``uvicorn --factory``)."""
    import fastapi.routing
    from fastapi import Body, FastAPI, Request
    from fastapi.responses import StreamingResponse
    from fastapi.sse import EventSourceResponse

    from .._offline import offline
    from ..apps._common import DisconnectLog, request_id, spec_of

    offline()  # the app process refuses any connection that would leave loopback
    # FastAPI sends a keep-alive comment after 15 s without an event; at the notebook's time scale
    fastapi.routing._PING_INTERVAL = to_real(PING)

    graph = build_graph(call_model)
    _graphs["report"] = slow_graph = build_graph(slow_node, call_model)
    fast_graph = build_graph(fast_node)
    agent_graph = build_graph(open_ticket, call_model)
    example = article_graph()
    llm()  # build the model client before the first request (it blocks the loop ~0.3 s)

    app = FastAPI(title="streamlab: the LangGraph article's patterns")
    app.add_middleware(DisconnectLog)

    def config_of(request: Request, **extra: Any) -> dict:
        return {"configurable": {"spec": spec_of(request.query_params, request.headers),
                                 "rid": request_id(request.headers), **extra}}

    @app.post("/run")
    async def run(request: Request, payload: dict = Body(...)):
        return sse_as_in_article(graph, payload, config_of(request), "/run")

    @app.post("/run/article")
    async def run_article(request: Request, payload: dict = Body(...)):
        return sse_as_in_article(example, payload, config_of(request), "/run/article")

    @app.post("/stream", response_class=EventSourceResponse)
    async def stream(request: Request, payload: dict = Body(...)):
        config = config_of(request)
        async for event in _logged(config["configurable"]["rid"], "/stream", token_events(graph, payload, config)):
            yield event

    @app.post("/stream/plain")
    async def stream_plain(request: Request, payload: dict = Body(...)):
        """/stream's events in a hand-written StreamingResponse *without* X-Accel-Buffering."""
        config = config_of(request)

        async def frames():
            async for event in token_events(graph, payload, config):
                yield f"event: {event.event}\ndata: {json.dumps(event.data)}\n\n"

        return StreamingResponse(_logged(config["configurable"]["rid"], "/stream/plain", frames()),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    # -- cause 2: sync graph.stream() inside async def, vs astream()
    @app.post("/chat/sync")
    async def chat_sync(request: Request, payload: dict = Body(...)):
        config = config_of(request)
        for chunk in _logged_sync(config["configurable"]["rid"], "/chat/sync",
                                  graph.stream(payload, config)):  # blocks event loop
            yield chunk

    @app.post("/chat/async")
    async def chat_async(request: Request, payload: dict = Body(...)):
        config = config_of(request)

        async def gen():
            async for chunk in graph.astream(payload, config):
                yield f"{chunk}\n"

        return StreamingResponse(_logged(config["configurable"]["rid"], "/chat/async", gen()),
                                 media_type="text/plain")

    # -- cause 1: a slow node vs a fast node that enqueues the work
    @app.post("/report")
    async def report(request: Request, payload: dict = Body(...)):
        return sse_as_in_article(slow_graph, payload, config_of(request), "/report")

    @app.post("/jobs")
    async def create_job(request: Request, payload: dict = Body(...)):
        state = await fast_graph.ainvoke(payload, config_of(request))
        return {"job_id": state["job_id"]}

    @app.get("/jobs/{job_id}")
    async def job(job_id: str):
        future = _JOBS.get(job_id)
        if future is None:
            return {"status": "unknown", "pid": os.getpid()}
        if not future.done():
            return {"status": "running"}
        if future.exception() is not None:
            return {"status": "error", "error": f"{type(future.exception()).__name__}: {future.exception()}"}
        return {"status": "done", "answer": future.result()["answer"]}

    # -- cause 3: growing vs trimmed state, every state streamed
    @app.post("/loop")
    async def loop(request: Request, steps: int = 100, trim: int = 0, payload: dict = Body(default={})):
        looping = loop_graph(good_node if trim else bad_node, steps)
        config = {**config_of(request), "recursion_limit": steps + 10}
        config["configurable"]["thread_id"] = config["configurable"]["rid"]

        async def states():
            async for state in looping.astream(payload, config, stream_mode="values"):
                yield f"data: {json.dumps(state)}\n\n"
            yield "event: done\ndata: {}\n\n"

        return StreamingResponse(states(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # -- cause 4: a side effect before the model; blind retries vs an idempotency key
    @app.post("/agent")
    async def agent(request: Request, payload: dict = Body(...)):
        return sse_as_in_article(agent_graph, payload, config_of(request), "/agent")

    @app.post("/agent/safe", response_class=EventSourceResponse)
    async def agent_safe(request: Request, payload: dict = Body(...)):
        config = config_of(request, idempotency_key=request.headers.get("idempotency-key"))
        async for event in _logged(config["configurable"]["rid"], "/agent/safe",
                                   token_events(agent_graph, payload, config)):
            yield event

    @app.get("/health")
    async def health():
        return {"ok": True}

    return app


# --------------------------------------------------------------------------- display


def show(*objects: Any) -> None:
    """Print the source of nodes and functions, or of a route of ``create_app`` given as its path
    (``show("/chat/sync")``): the code a reader would write in their own app."""
    for obj in objects:
        print(_route_source(obj) if isinstance(obj, str) else textwrap.dedent(inspect.getsource(obj)).rstrip())
        print()


def _route_source(path: str) -> str:
    lines = inspect.getsource(create_app).splitlines()
    start = next(i for i, line in enumerate(lines) if re.search(rf'@app\.(get|post)\("{re.escape(path)}"', line))
    indent = len(lines[start]) - len(lines[start].lstrip())
    end = start + 1
    while end < len(lines) and (not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip()) > indent
                                or lines[end].lstrip().startswith(("async def", "def "))):
        end += 1
    return textwrap.dedent("\n".join(lines[start:end])).rstrip()
