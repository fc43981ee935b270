"""LangGraph helpers, taught in notebooks/04_langgraph.ipynb (seeds/004: "streaming response cutoff when scaling").

The app: every pattern of the article as a real FastAPI route around a real ``StateGraph``
whose nodes call ``langchain_openai.ChatOpenAI`` on the streamlab mock. A factory, so nothing
is built at import::

    uvicorn --factory streamlab.frameworks.langgraph:create_app
        env: STREAMLAB_MODEL_URL=http://127.0.0.1:PORT/v1   (the mock)
             STREAMLAB_LEDGER=<sqlite file>                 (side effects, shared by every worker)

    POST /run            the article's fixed endpoint as written: ``graph.astream(payload)`` sent as
                         ``data: {chunk}`` (a Python repr) in a StreamingResponse with its two headers
    POST /run/article    the same endpoint on the article's own example graph (StateGraph(dict), a lambda)
    POST /stream         that endpoint made to work on FastAPI 0.165: ``EventSourceResponse`` (JSON data,
                         keep-alive pings, the SSE headers), ``stream_mode="messages"``, a final ``done``
    POST /stream/plain   /stream's events in a hand-written StreamingResponse without X-Accel-Buffering
    POST /chat/sync      sync vs async (notebook section 3), as written: ``async def`` that yields
                         from the sync ``graph.stream()``
    POST /chat/async     ... fixed as written: ``graph.astream()`` in a ``text/plain`` StreamingResponse
    POST /report         a slow node (section 2): it sleeps 90 s, then the model; streamed like /run
    POST /jobs           ... fixed: a fast node enqueues the long work and returns its job id
    GET  /jobs/{id}      the job: {"status": "running|done|error", "answer": ...}
    POST /loop           growing state (section 4): the article's bad_node / good_node in a loop
                         (``?steps=&trim=1``), every state streamed as JSON (stream_mode="values")
    POST /agent          retries (section 5): a side effect (open a ticket), then the model; like /run
    POST /agent/safe     ... fixed: the side effect is keyed by ``Idempotency-Key`` in the shared
                         ledger, and the stream is /stream's (keep-alive pings)
    GET  /health

``?spec=`` picks the mock's behaviour for the model calls of one request (``?spec=ttft=45``).
Every route logs each event it emits and how its stream ended (``streamlab.app pid=N rid=R
<route> emit 3 ...``, ``... end after 4 events``, ``... STREAM CANCELLED ...``).

Notebook helpers (the plumbing; the notebook shows the graph code and the lesson):

    read_event(item)          ``understand=`` for ``sl.record``: the article's repr events, JSON Lines,
                              JSON SSE events, streamlab's token frames, job polls
    post(url, payload)        a POST stream (``HTTPStream``), read as SSE events or as lines (``Stream``,
                              ``Lines``)
    blind_retries(make)       the article's "retry on timeout": the same request again, on any worker
    follow_job(url, payload)  POST /jobs, then poll the job until it is done
    concurrently(makes, health_url)  run streams at once while timing a health endpoint
    settle(*servers)          wait until no exchange is open at the mock, a balancer or a proxy
    Ledger()                  the shared side-effect ledger (a temporary sqlite file)
    growth(node, steps)       bytes and serialization time per step of a looping graph, in-process
    show(obj)                 print the source of a route or a node
    quiet(line)               a log line without pids and dates
"""

import ast
import asyncio
import atexit
import concurrent.futures
import contextlib
import inspect
import itertools
import json
import os
import re
import shutil
import sqlite3
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, AsyncIterator, Callable, Iterable, Iterator, TypedDict

import httpx

from .._recorder import ChunkInfo
from ..apps._common import log
from .._timescale import to_real, to_scenario

__all__ = ["create_app", "State", "build_graph", "call_model", "slow_node", "fast_node", "open_ticket", "bad_node",
           "good_node", "loop_graph", "article_graph", "sse_as_in_article", "token_events", "read_event", "post",
           "Stream", "Lines", "blind_retries", "follow_job", "concurrently", "settle", "Ledger", "Step", "growth",
           "show", "quiet", "PING"]

PING = 15.0  # scenario seconds between keep-alive comments (FastAPI's EventSourceResponse default)


# --------------------------------------------------------------------------- the graphs (reader code)


class State(TypedDict, total=False):
    input: str
    notes: str
    ticket: str
    job_id: str
    answer: str


@lru_cache(maxsize=32)
def llm(spec: str | None = None):
    """``ChatOpenAI`` on the mock (one per spec and process; they share one pair of httpx clients)."""
    from langchain_openai import ChatOpenAI

    from ..apps._common import _http_clients, model_url

    sync_client, async_client = _http_clients()
    return ChatOpenAI(model="streamlab-mock", base_url=model_url(spec), api_key="unused", max_retries=0,
                      http_client=sync_client, http_async_client=async_client)


def _spec(config: dict) -> str | None:
    return (config.get("configurable") or {}).get("spec")


def call_model(state: State, config) -> State:
    return {"answer": llm(_spec(config)).invoke(state["input"], config).content}


def slow_node(state: State) -> State:
    time.sleep(to_real(90))  # may exceed proxy/server timeout (90 scenario seconds)
    return {"notes": "research done"}


def fast_node(state: State, config) -> State:
    return {"job_id": enqueue_long_task(state, config)}


def open_ticket(state: State, config) -> State:
    """A side effect before the model: open a support ticket (in the ledger every worker shares)."""
    options = config.get("configurable") or {}
    ticket, opened = _ledger_add(options.get("idempotency_key"), options.get("rid", "-"))
    log(options.get("rid", "-"), "open_ticket", f"SIDE EFFECT {ticket} opened" if opened else f"{ticket} exists: skipped")
    return {"ticket": ticket}


def bad_node(state):
    history = state.get("history", [])
    history.append({"role": "assistant", "content": "..."})
    return {"history": history}  # unbounded growth


def good_node(state):
    history = state.get("history", [])[-20:]
    history.append({"role": "assistant", "content": "..."})
    return {"history": history}


def build_graph(*nodes: Callable) -> Any:
    """START -> nodes[0] -> ... -> END, on ``State``."""
    from langgraph.graph import END, START, StateGraph

    graph = StateGraph(State)
    previous = START
    for node in nodes:
        graph.add_node(node.__name__, node)
        graph.add_edge(previous, node.__name__)
        previous = node.__name__
    graph.add_edge(previous, END)
    return graph.compile()


def loop_graph(node: Callable, steps: int, *, checkpointer: bool = True) -> Any:
    """``node`` run ``steps`` times on a ``StateGraph(dict)`` (with an in-memory checkpointer, as a
    persistent production graph has one); the step count travels in the state."""
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.graph import END, START, StateGraph

    def step(state):
        update = node(state)
        return {**update, "step": state.get("step", 0) + 1}

    step.__name__ = node.__name__
    graph = StateGraph(dict)
    graph.add_node(node.__name__, step)
    graph.add_edge(START, node.__name__)
    graph.add_conditional_edges(node.__name__, lambda s: node.__name__ if s["step"] < steps else END)
    return graph.compile(checkpointer=InMemorySaver() if checkpointer else None)


def article_graph() -> Any:
    """The article's example graph, as written."""
    from langgraph.graph import END, START, StateGraph

    graph = StateGraph(dict)
    graph.add_node("step", lambda state: {"result": "ok"})
    graph.add_edge(START, "step")
    graph.add_edge("step", END)
    return graph.compile()


# --------------------------------------------------------------------------- jobs and the ledger (app side)

_JOBS: dict[str, concurrent.futures.Future] = {}
_job_ids = itertools.count(1)
_graphs: dict[str, Any] = {}


@lru_cache(maxsize=1)
def _job_pool() -> concurrent.futures.ThreadPoolExecutor:
    return concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="streamlab-job")


def enqueue_long_task(state: State, config) -> str:
    """Run the slow graph in a worker thread of this process; return the job id at once."""
    job_id = f"job-{next(_job_ids)}"
    _JOBS[job_id] = _job_pool().submit(_graphs["report"].invoke, {"input": state["input"]},
                                       {"configurable": dict(config.get("configurable") or {})})
    return job_id


def _ledger_add(key: str | None, rid: str) -> tuple[str, bool]:
    """Record one side effect; with a key, at most once per key across every process. (ticket, done)."""
    path = os.environ.get("STREAMLAB_LEDGER")
    if not path:
        raise RuntimeError("STREAMLAB_LEDGER is not set: start the app with env=ledger.env")
    with contextlib.closing(sqlite3.connect(path, timeout=30, isolation_level=None)) as db:
        db.execute("CREATE TABLE IF NOT EXISTS effects (key TEXT UNIQUE, ticket TEXT, pid INTEGER, rid TEXT)")
        ticket = f"ticket-{key or rid}"
        try:
            db.execute("INSERT INTO effects VALUES (?, ?, ?, ?)", (key, ticket, os.getpid(), rid))
            return ticket, True
        except sqlite3.IntegrityError:
            row = db.execute("SELECT ticket FROM effects WHERE key = ?", (key,)).fetchone()
            return row[0], False


# --------------------------------------------------------------------------- the app


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
    async def gen():
        n = 0
        log(rid, route, "start")
        try:
            async for event in events:
                log(rid, route, f"emit {n} {str(getattr(event, 'data', event))[:70]!r}")
                n += 1
                yield event
        except asyncio.CancelledError:
            log(rid, route, f"STREAM CANCELLED (CancelledError) after {n} events")
            raise
        except GeneratorExit:
            log(rid, route, f"STREAM CLOSED (GeneratorExit) after {n} events")
            raise
        except Exception as exc:
            log(rid, route, f"ERROR {type(exc).__name__}: {exc} after {n} events")
            raise
        log(rid, route, f"end after {n} events")

    return gen()


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


# --------------------------------------------------------------------------- reading streams (notebook side)


def _sse_fields(block: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    data = []
    for line in block.replace("\r\n", "\n").split("\n"):
        if not line or line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            data.append(value)
        elif name in ("event", "id"):
            fields[name] = value
    if data:
        fields["data"] = "\n".join(data)
    return fields


def _payload(text: str) -> Any:
    """JSON if it is JSON, else a Python literal (the article's ``f"{chunk}"``), else the text."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def read_event(item: Any) -> ChunkInfo:
    """What one streamed item carries, for ``sl.record(..., understand=read_event)``.

    Understands: an SSE block (``data: {...}`` as JSON or as the article's Python repr,
    ``event: token`` / ``event: done`` frames, keep-alive comments), a JSON or repr line, and a
    job poll (a dict). A graph update that carries the final ``answer`` ends the run (the last
    node's update is the only end marker the article's endpoint sends); so do ``done`` events
    and a finished job.
    """
    nbytes = len(item.encode()) if isinstance(item, str) else len(item) if isinstance(item, bytes) else 0
    if isinstance(item, bytes):
        item = item.decode("utf-8", "replace")
    if isinstance(item, dict):
        payload, event = item, None
    else:
        text = item.strip("\n")
        if not text.strip() or text.lstrip().startswith(":") and "data:" not in text:
            return ChunkInfo(None, None, False, nbytes)  # a keep-alive comment
        if "data:" in text or "event:" in text:
            fields = _sse_fields(text)
            event = fields.get("event")
            if "data" not in fields:
                return ChunkInfo(None, "stop" if event == "done" else None, event == "done", nbytes)
            payload = _payload(fields["data"])
        else:
            payload, event = _payload(text), None
    if event == "done" or payload == "[DONE]":
        return ChunkInfo(None, "stop", True, nbytes)
    if isinstance(payload, str):  # streamlab's "event: token / data: <text>" frames
        return ChunkInfo(payload or None, None, False, nbytes)
    if isinstance(payload, dict):
        if "token" in payload:
            return ChunkInfo(payload["token"] or None, None, False, nbytes)
        if payload.get("status") in ("done", "error"):  # a job poll
            return ChunkInfo(payload.get("answer"), "stop" if payload["status"] == "done" else None,
                             payload["status"] == "done", nbytes, payload.get("error"))
        if "history" in payload:  # a state of the looping graph: one unit per step
            return ChunkInfo(" step" if payload.get("step") else None, None, False, nbytes)
        for update in payload.values():  # {node: update}: the answer ends the run
            if isinstance(update, dict) and update.get("answer"):
                return ChunkInfo(update["answer"], "stop", True, nbytes)
    return ChunkInfo(None, None, False, nbytes)


class Stream:
    """An ``HTTPStream`` whose sync iteration always ends the way the stream ended.

    ``HTTPStream.__iter__`` reads in a thread with its own event loop; when that loop has just
    closed, its cleanup can raise ``RuntimeError('Event loop is closed')``, which then replaces
    the stream's own exception (or its normal end). This wrapper restores what really happened,
    from ``result``. Async iteration is passed through unchanged.
    """

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.result = stream.result

    def __iter__(self) -> Iterator[Any]:
        try:
            yield from self.stream
        except RuntimeError as exc:
            if "Event loop is closed" not in str(exc):
                raise
            if self.result.error is not None:
                raise self.result.error from None
            # otherwise the stream had ended normally

    def __aiter__(self) -> AsyncIterator[Any]:
        return self.stream.__aiter__()


class Lines:
    """An ``HTTPStream`` read as lines (JSON Lines, text/plain): sync and async iterable."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.result = stream.result

    def __iter__(self) -> Iterator[str]:
        pending = ""
        for chunk in self.stream:
            pending += chunk.decode("utf-8", "replace")
            *lines, pending = pending.split("\n")
            yield from (line + "\n" for line in lines if line.strip())
        if pending.strip():
            yield pending

    async def __aiter__(self) -> AsyncIterator[str]:
        pending = ""
        async for chunk in self.stream:
            pending += chunk.decode("utf-8", "replace")
            *lines, pending = pending.split("\n")
            for line in lines:
                if line.strip():
                    yield line + "\n"
        if pending.strip():
            yield pending


def post(url: str, payload: dict | None = None, *, lines: bool = False, read_timeout: float | None = None,
         headers: dict[str, str] | None = None) -> Any:
    """A POST stream over a real socket: SSE event blocks, or lines with ``lines=True``.

    ``read_timeout`` is the client's read timeout in scenario seconds (None: wait forever).
    """
    from .._clients import ClientTimeout, HTTPStream

    stream = Stream(HTTPStream(url, method="POST", json=payload if payload is not None else {"input": "hello"},
                               headers=headers, timeout=ClientTimeout(read=read_timeout),
                               unit="chunk" if lines else "event"))
    return Lines(stream) if lines else stream


class blind_retries:  # noqa: N801 - used like a function
    """The article's broken retry policy: on a timeout, send the same request again (a new run,
    on whichever worker the balancer picks). ``attempts`` counts the requests sent."""

    def __init__(self, make_stream: Callable[[], Iterable[Any]], *, attempts: int = 3,
                 on: tuple[type[BaseException], ...] = (httpx.TimeoutException,)) -> None:
        self.make_stream = make_stream
        self.max_attempts = attempts
        self.on = on
        self.attempts = 0
        self.errors: list[str] = []

    def __iter__(self) -> Iterator[Any]:
        while True:
            self.attempts += 1
            try:
                yield from self.make_stream()
                return
            except self.on as exc:
                self.errors.append(type(exc).__name__)
                if self.attempts >= self.max_attempts:
                    raise


def follow_job(url: str, payload: dict | None = None, *, every: float = 10.0, headers: dict | None = None,
               timeout: float = 30.0) -> Iterator[dict]:
    """POST ``url + "/jobs"``, then GET the job every ``every`` scenario seconds; yield each poll.

    Every request is short, so no hop timeout ever sees a long silence. ``timeout`` is the
    read timeout of each request (scenario seconds).
    """
    t = httpx.Timeout(to_real(timeout), connect=5.0)
    with httpx.Client(timeout=t, headers=headers) as client:
        created = client.post(url + "/jobs", json=payload or {"input": "hello"})
        created.raise_for_status()
        job_id = created.json()["job_id"]
        while True:
            poll = client.get(f"{url}/jobs/{job_id}")
            poll.raise_for_status()
            state = poll.json()
            yield state
            if state["status"] != "running":
                return
            time.sleep(to_real(every))


async def concurrently(makes: list[Callable[[], Any]], health_url: str, *, expected: int | None = None,
                       every: float = 1.0, understand: Callable[[Any], ChunkInfo] = read_event):
    """Record the streams of ``makes`` at once while GETting ``health_url`` every ``every`` s.

    Returns ``(runs, health)``: the ``Run`` of each stream and the health answers' latencies
    (scenario seconds). The health check runs in a thread of its own, so what it measures is
    the server, not this event loop. Await it from a notebook cell.
    """
    from .._recorder import arecord

    done = threading.Event()
    latencies: list[float] = []

    def probe() -> None:
        with httpx.Client(timeout=None) as client:
            while not done.wait(to_real(every)):
                t0 = time.perf_counter()
                client.get(health_url)
                latencies.append(to_scenario(time.perf_counter() - t0))

    prober = threading.Thread(target=probe, name="streamlab-health", daemon=True)
    prober.start()
    try:
        runs = await asyncio.gather(*(arecord(make, label=f"request {i + 1}", expected=expected,
                                              understand=understand) for i, make in enumerate(makes)))
    finally:
        done.set()
        await asyncio.get_running_loop().run_in_executor(None, prober.join)
    return list(runs), latencies


def settle(*servers: Any, timeout: float = 10.0) -> None:
    """Wait (wall clock, at most ``timeout``) until no exchange is still open at these servers:
    the mock's journal has no open request, a balancer's or proxy's log closed every exchange it
    opened. Streams a client gave up on can outlive the client; stopping a server under them
    makes it log their cancellation."""
    deadline = time.monotonic() + timeout

    def busy(server: Any) -> bool:
        journal = getattr(server, "journal", None)
        if journal is not None:
            return any(entry.ended == "open" for entry in journal)
        log = getattr(server, "log", None)
        if log is not None and hasattr(log, "of"):
            return bool({e.conn for e in log.of("open")} - {e.conn for e in log.of("close")})
        return False

    while any(busy(s) for s in servers) and time.monotonic() < deadline:
        time.sleep(0.02)


class Ledger:
    """The side-effect ledger the app's ``open_ticket`` node writes: a sqlite file in a temporary
    directory, shared by every worker process (``env`` goes to the app servers)."""

    def __init__(self) -> None:
        self._dir = tempfile.mkdtemp(prefix="streamlab-ledger-")
        atexit.register(shutil.rmtree, self._dir, True)  # also when a notebook stops halfway
        self.path = os.path.join(self._dir, "ledger.sqlite")
        with contextlib.closing(sqlite3.connect(self.path)) as db:
            db.execute("CREATE TABLE IF NOT EXISTS effects (key TEXT UNIQUE, ticket TEXT, pid INTEGER, rid TEXT)")
            db.commit()

    @property
    def env(self) -> dict[str, str]:
        return {"STREAMLAB_LEDGER": self.path}

    def effects(self) -> list[tuple[str | None, int, str]]:
        """(key, pid, request id) of every side effect performed so far."""
        with contextlib.closing(sqlite3.connect(self.path, timeout=30)) as db:
            return db.execute("SELECT key, pid, rid FROM effects ORDER BY rowid").fetchall()

    def clear(self) -> None:
        with contextlib.closing(sqlite3.connect(self.path, timeout=30)) as db:
            db.execute("DELETE FROM effects")
            db.commit()

    def close(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- state growth (in-process)


@dataclass
class Step:
    """One step of a looping graph: the streamed state's size and what it cost (wall clock)."""

    step: int
    history: int        # items in the state's history
    nbytes: int         # bytes of the state as streamed JSON
    serialize: float    # seconds to json.dumps the state (what the endpoint does per event)
    elapsed: float      # seconds from the previous state to this one (LangGraph + checkpoint)


def growth(node: Callable, steps: int, *, checkpointer: bool = True) -> list[Step]:
    """Run ``node`` ``steps`` times in a loop graph and measure every streamed state (no HTTP)."""
    graph = loop_graph(node, steps, checkpointer=checkpointer)
    config = {"recursion_limit": steps + 10, "configurable": {"thread_id": "growth"}}
    out: list[Step] = []
    last = time.perf_counter()
    for state in graph.stream({"input": "hello"}, config, stream_mode="values"):
        now = time.perf_counter()
        t0 = time.perf_counter()
        data = json.dumps(state)
        serialize = time.perf_counter() - t0
        out.append(Step(state.get("step", 0), len(state.get("history", [])), len(data), serialize, now - last))
        last = time.perf_counter()
    return out


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


_STAMP = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4}\] \[\d+\] ")


def quiet(line: str) -> str:
    """A log line without gunicorn's ``[date] [pid]`` prefix (``pid=N`` is left to the sanitizer)."""
    return _STAMP.sub("", str(line))
