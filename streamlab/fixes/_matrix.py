"""The fault x fix matrix: every fault against every fix that applies, each cell a real run.

    .venv/bin/python -m streamlab.fixes._matrix                  # the full run -> data/fix_matrix.csv (267 cells, ~2.5 min)
    .venv/bin/python -m streamlab.fixes._matrix --quick --out /tmp/slice.csv   # the fast slice (about 12 s)

    rows = run_matrix(only=QUICK)          # [Cell(fault, fix, client, outcome, ...), ...]

One row per (fault, fix, client); ``outcome`` is the recorder's outcome name (``sl.Outcome``).
Four groups of faults, each on the stack it needs (all on loopback, ``sl.time_scale(SCALE)``):

    model faults    every fault of ``streamlab.faults`` (at token 12) on the mock's first request,
                    at ``MODEL_SCALE`` with a ``READ_TIMEOUT`` of 5 s
                    (``mock.script(fault)``; a retry or continuation is clean), plus ``max_tokens=12``
                    (no mock fault: the request's own token budget cuts the answer, finish_reason
                    "length"), read by the raw openai SDK, LangChain ``ChatOpenAI``, a one-node
                    LangGraph graph, AutoGen and CrewAI
                    fixes: none, stream_off, guard (all clients); continue, background (openai SDK,
                    not on max_tokens=12)
    hop faults      a 30 s model stall after 3 tokens, relayed as SSE by the heartbeat demo app
                    (real uvicorn, no ``X-Accel-Buffering`` header) behind the embedded proxy
                    playing one hop or a chain (the hop next to the app speaks HTTP/1.0 upstream
                    like nginx's default, a balancer in front of it HTTP/1.1); read by httpx
                    fixes: none (no ping), heartbeat (a ``: ping`` every 5 s)
    process faults  the resumable demo app on 2 gunicorn replicas x 2 workers behind a round-robin
                    balancer, a real redis-server; read by httpx (``resume_stream`` with resume)
                    worker_kill (the worker serving the stream, SIGKILL after 8 tokens),
                    client_drop (the network cuts every connection after 600 bytes: 13 events),
                    client_abort (the client stops after 8 tokens and comes back later)
                    fixes: none (``/chat/sse``: the model call lives in the request), resume
    retries         lb_retry: a balancer retries a slow POST on the other worker (the idempotent demo
                    app on 2 uvicorn processes, Redis keys; read by httpx, time scale 1)
                    fixes: none (no key), idempotent (``Idempotency-Key``; 409 + Retry-After, then the kept answer)

The two agent frameworks are read the way notebooks/01_autogen and 03_crewai teach a user to stream:

    autogen run_stream    ``AssistantAgent(model_client_stream=True).run_stream(task=...)`` over
                          ``OpenAIChatCompletionClient`` (autogen-agentchat/-ext 0.7.5); stream_off is
                          ``model_client_stream=False`` and ``agent.run()``; guard is
                          ``AssistantAgent(model_client=guard_model_client(client))`` with
                          ``stream_options={"include_usage": True}`` on the model client, ``run_stream``
                          iterated as it is: no event of ``run_stream`` carries a finish_reason, so the
                          guard sits on the model client, where the ``CreateResult`` has it
    crewai Crew stream    ``Crew(stream=True).kickoff()`` (a ``CrewStreamingOutput`` of ``StreamChunk``s,
                          then ``.result``) with ``LLM(stream=True)``, one agent, one task (crewai 1.15.30);
                          stream_off is ``stream=False`` on both and ``kickoff()``'s ``CrewOutput``;
                          guard is ``guard(crew.kickoff())`` (the finish_reason of each LLM call, from
                          ``LLMCallCompletedEvent`` on CrewAI's event bus, then the crew's usage)

Both with ``max_retries=0`` on the openai client (as for every client here) and the framework's own
retries left as they are (CrewAI's agent retries a failed LLM call: its second attempt's tokens are
shown after the first's, counted as duplicates). Neither framework's stream carries a finish_reason,
so their guards read it where the framework keeps it, and a length cut (``max_tokens=12``) is
"truncated by length" under the guard too.
The recorder reads their end event (``TaskResult``, ``CrewOutput``) as the terminal marker, so a short
answer without the guard is named ``complete`` there: ``tokens_received`` tells. Their counts are
measured: ``tokens_received`` is the text chunks the caller got (``ModelClientStreamingChunkEvent``,
``StreamChunk``: one token each on the mock), a non-streamed answer's the prefix of the uncut answer
its text begins with, as for the other clients.

Counts: ``tokens_received`` answer tokens the client got (all attempts), ``tokens_expected`` the
uncut answer's, ``duplicate_tokens`` received tokens that are not a new position of the answer
(event indices seen twice; for text, tokens outside the in-order match with the uncut answer),
``model_runs`` the requests the mock got for the cell's own prompt. ``seconds`` is wall clock
(volatile: ``tests/test_fix_matrix.py`` compares every other column). Versions go to
``data/fix_matrix.versions.json`` beside the CSV. Taught in notebooks/06_fixes.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import difflib
import json
import platform
import time
import uuid
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

COLUMNS = ("fault", "fix", "client", "outcome", "tokens_received", "tokens_expected", "duplicate_tokens",
           "model_runs", "seconds")
TOKENS = 40
SCALE = 0.05                  # wall-clock seconds per scenario second
MODEL_SCALE = 0.1             # the model faults' own: a non-streamed answer (2.5 s) and the read timeout
READ_TIMEOUT = 5.0            # (5 s) must stay apart on a loaded machine; a stall (8 s) must outlast it
MODEL = dict(tokens=TOKENS, ttft=0.5, itl=0.05)
STALL = "stall@3=30"          # hop faults: 3 tokens, 30 s of silence, the rest
HOP_ITL = 0.2
KILL_STALL = "stall@8=10"     # process faults: the kill lands in a 10 s stall after 8 tokens
SDK, LANGCHAIN, LANGGRAPH, HTTPX = "openai SDK", "langchain ChatOpenAI", "langgraph", "httpx SSE"
HTTP_JSON = "httpx JSON"
AUTOGEN, CREWAI = "autogen run_stream", "crewai Crew stream"
LENGTH = "max_tokens=12"      # a length cut: the request's own token budget, finish_reason "length"
VERSIONS = ("streamlab", "openai", "httpx", "langchain-openai", "langchain-core", "langgraph", "autogen-agentchat",
            "autogen-ext", "crewai", "uvicorn", "gunicorn", "fastapi", "redis")
ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = ROOT / "data" / "fix_matrix.csv"


@dataclass(frozen=True)
class Cell:
    """One row of the matrix."""

    fault: str
    fix: str
    client: str
    outcome: str
    tokens_received: int
    tokens_expected: int
    duplicate_tokens: int
    model_runs: int
    seconds: float

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.fault, self.fix, self.client)

    def row(self) -> tuple[str, ...]:
        return tuple(f"{v:.2f}" if isinstance(v, float) else str(v) for v in astuple(self))


# The slice tests/test_fix_matrix.py and notebooks/06_fixes recompute (about 20 s).
QUICK = (("cut@12", "none", SDK), ("cut@12", "continue", SDK), ("cut@12", "background", SDK),
         ("silent@12", "none", SDK), ("silent@12", "guard", SDK),
         ("silent@12", "none", LANGCHAIN), ("silent@12", "guard", LANGCHAIN),
         ("context=4", "stream_off", SDK),
         ("silent@12", "guard", AUTOGEN), (LENGTH, "guard", AUTOGEN),  # (no CrewAI: its import takes ~5 s)
         ("lb_idle_timeout", "none", HTTPX), ("lb_idle_timeout", "heartbeat", HTTPX),
         ("gateway_deadline", "heartbeat", HTTPX))


# -- model faults ----------------------------------------------------------------------------------

def model_faults() -> list:
    """One instance of every registered model fault, at token 12 where it takes an index."""
    from .. import faults

    return faults.examples(at=12)


def _uncut(seed: int = 0) -> list[str]:
    from .._text import generate

    return generate(TOKENS, seed)


def _duplicates(received: list[str]) -> int:
    """Received tokens that are not a new position of the uncut answer (matched in order)."""
    matched = sum(b.size for b in difflib.SequenceMatcher(a=_uncut(), b=received, autojunk=False).get_matching_blocks())
    return len(received) - matched


def _prefix_tokens(text: str, seed: int = 0) -> int:
    """A non-streamed answer's token count: how many tokens of the uncut answer its text begins with."""
    n, joined = 0, ""
    for token in _uncut(seed):
        if not text.startswith(joined + token):
            break
        joined += token
        n += 1
    return n


def _sdk(url: str, timeout: float | None = READ_TIMEOUT):
    import httpx
    import openai

    from .._timescale import to_real

    real = to_real(timeout) if timeout is not None else None
    return openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=httpx.Timeout(real, connect=5.0))


def _chat_openai(url: str, **settings: Any):
    from langchain_openai import ChatOpenAI

    from .._timescale import to_real

    return ChatOpenAI(base_url=url, api_key="unused", model="streamlab-mock", max_retries=0,
                      timeout=to_real(READ_TIMEOUT), stream_usage=True, **settings)


def _graph(llm: Any):
    from langgraph.graph import END, START, MessagesState, StateGraph

    def call_model(state: MessagesState):
        return {"messages": [llm.invoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("model", call_model)
    graph.add_edge(START, "model")
    graph.add_edge("model", END)
    return graph.compile()


class _End:
    """The marker a fix's own iterator ends on once it says the answer is whole."""

    def __init__(self, finish: str | None):
        self.finish = finish


def _understand_pieces(item: Any):
    from .._recorder import ChunkInfo

    if isinstance(item, _End):
        return ChunkInfo(None, item.finish, item.finish is not None, 0)
    return ChunkInfo(item or None, None, False, len(str(item).encode()))


def _understand_responses(event: Any):
    from .._recorder import ChunkInfo

    kind = getattr(event, "type", "")
    if kind == "response.output_text.delta":
        return ChunkInfo(event.delta or None, None, False, len(event.delta or ""))
    if kind == "response.completed":
        return ChunkInfo(None, "stop", True, 0)
    if kind in ("response.failed", "error"):
        return ChunkInfo(None, None, True, 0, error=kind)
    return ChunkInfo(None, None, False, 0)


MODEL_FIXES = {SDK: ("none", "stream_off", "guard", "continue", "background"),
               LANGCHAIN: ("none", "stream_off", "guard"), LANGGRAPH: ("none", "stream_off", "guard"),
               AUTOGEN: ("none", "stream_off", "guard"), CREWAI: ("none", "stream_off", "guard")}
LENGTH_FIXES = ("none", "stream_off", "guard")
AUTOGEN_INFO = {"vision": False, "function_calling": False, "json_output": False, "family": "unknown",
                "structured_output": False}


def _autogen_run(mock: Any, fix: str, prompt: str, budget: dict) -> tuple[Any, list[str] | None]:
    """AutoGen's cell: an ``AssistantAgent`` on ``OpenAIChatCompletionClient``, in a thread of its own
    (``asyncio.run`` cannot nest in a running loop, which a notebook kernel has)."""
    import asyncio
    import concurrent.futures

    from autogen_agentchat.agents import AssistantAgent
    from autogen_ext.models.openai import OpenAIChatCompletionClient

    from .._recorder import arecord
    from .._timescale import to_real
    from . import guard_model_client

    settings = dict(budget)
    if fix == "guard":
        settings["stream_options"] = {"include_usage": True}
    pieces: list[str] = []

    async def run() -> Any:
        client = OpenAIChatCompletionClient(model="streamlab-mock", base_url=mock.base_url, api_key="unused",
                                            max_retries=0, timeout=to_real(READ_TIMEOUT), model_info=AUTOGEN_INFO,
                                            **settings)
        try:
            model_client = guard_model_client(client) if fix == "guard" else client
            agent = AssistantAgent("writer", model_client=model_client, model_client_stream=fix != "stream_off")
            if fix == "stream_off":
                return await arecord(lambda: agent.run(task=prompt, output_task_messages=False), expected=TOKENS)

            async def events() -> Any:
                stream = agent.run_stream(task=prompt, output_task_messages=False)
                async for event in stream:
                    if type(event).__name__ == "ModelClientStreamingChunkEvent" and event.content:
                        pieces.append(event.content)
                    yield event
            return await arecord(events, expected=TOKENS)
        finally:
            await client.close()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        result = pool.submit(asyncio.run, run()).result()
    return result, None if fix == "stream_off" else pieces


def _crewai_run(mock: Any, fix: str, prompt: str, budget: dict) -> tuple[Any, list[str] | None]:
    """CrewAI's cell: one agent, one task (the prompt), ``Crew(stream=True)``; stream_off: no stream."""
    import crewai

    from .._recorder import record
    from .._timescale import to_real
    from ..frameworks.crewai import quiet, understand
    from . import guard

    quiet()  # CrewAI's error log lines and event-pairing warnings go to a LogBook, not stderr
    stream = fix != "stream_off"
    llm = crewai.LLM(model="gpt-4o-mini", base_url=mock.base_url, api_key="unused", stream=stream,
                     max_retries=0, timeout=to_real(READ_TIMEOUT), max_tokens=budget.get("max_tokens"))
    agent = crewai.Agent(role="Writer", goal="Answer the request", backstory="A writer.", llm=llm)
    task = crewai.Task(description=prompt, expected_output="The answer.", agent=agent)
    crew = crewai.Crew(agents=[agent], tasks=[task], stream=stream)
    if not stream:
        return record(crew.kickoff, expected=TOKENS), None
    pieces: list[str] = []

    def chunks() -> Iterator[Any]:
        streaming = crew.kickoff()
        for chunk in guard(streaming) if fix == "guard" else streaming:
            if chunk.content and chunk.tool_call is None:
                pieces.append(chunk.content)
            yield chunk
        yield streaming.result
    return record(chunks, expected=TOKENS, understand=understand), pieces


def _model_run(mock: Any, fault: Any, fix: str, client: str, prompt: str,
               max_tokens: int | None = None) -> tuple[Any, list[str] | None]:
    """One model-fault cell: the recorder's Run, and the text pieces received where they are counted."""
    from .._recorder import record
    from . import BackgroundRun, ContinuedStream, guard

    messages = [{"role": "user", "content": prompt}]
    pieces: list[str] = []
    budget = {"max_tokens": max_tokens} if max_tokens is not None else {}
    with mock.script(fault):
        if client == AUTOGEN:
            return _autogen_run(mock, fix, prompt, budget)
        if client == CREWAI:
            return _crewai_run(mock, fix, prompt, budget)
        if client == SDK:
            sdk = _sdk(mock.base_url)
            create = dict(model="streamlab-mock", messages=messages, **budget)
            if fix == "none":
                return record(lambda: sdk.chat.completions.create(**create, stream=True), expected=TOKENS), None
            if fix == "stream_off":
                return record(lambda: sdk.chat.completions.create(**create), expected=TOKENS), None
            if fix == "guard":
                return record(lambda: guard(sdk.chat.completions.create(
                    **create, stream=True, stream_options={"include_usage": True})), expected=TOKENS), None
            if fix == "continue":
                answer = ContinuedStream(sdk, max_attempts=3, **create)

                def pieces_then_end() -> Iterator[Any]:
                    for piece in answer:
                        pieces.append(piece)
                        yield piece
                    yield _End(answer.finish_reason)
                return record(pieces_then_end, expected=TOKENS, understand=_understand_pieces), pieces
            if fix == "background":
                run = BackgroundRun(sdk, max_resumes=3, model="streamlab-mock", input=prompt)

                def events() -> Iterator[Any]:
                    for event in run:
                        if getattr(event, "type", "") == "response.output_text.delta":
                            pieces.append(event.delta)
                        yield event
                return record(events, expected=TOKENS, understand=_understand_responses), pieces
        llm = _chat_openai(mock.base_url, **budget)
        if client == LANGCHAIN:
            if fix == "none":
                return record(lambda: llm.stream(messages), expected=TOKENS), None
            if fix == "stream_off":
                return record(lambda: llm.invoke(messages), expected=TOKENS), None
            if fix == "guard":
                return record(lambda: guard(llm.stream(messages)), expected=TOKENS), None
        if client == LANGGRAPH:
            graph = _graph(llm)
            state = {"messages": messages}
            if fix == "none":
                return record(lambda: graph.stream(state, stream_mode="messages"), expected=TOKENS), None
            if fix == "stream_off":
                return record(lambda: _graph(llm.bind(stream=False)).invoke(state)["messages"][-1],
                              expected=TOKENS), None
            if fix == "guard":
                return record(lambda: guard(graph.stream(state, stream_mode="messages")), expected=TOKENS), None
    raise ValueError(f"no model cell for fix={fix!r}, client={client!r}")


def _model_runs(mock: Any, prompt: str) -> int:
    """Requests for the cell's prompt (unique per cell; CrewAI wraps it in its own task text)."""
    chats = sum(1 for e in mock.journal.chat() if prompt in (e.last_user_message or ""))
    responses = sum(1 for e in mock.journal if e.method == "POST" and e.path.endswith("/responses")
                    and (e.body or {}).get("input") == prompt)
    return chats + responses


def _cell(fault: str, fix: str, client: str, run: Any, pieces: list[str] | None, runs: int, t0: float,
          *, stream_off: bool = False) -> Cell:
    text = getattr(run, "text", "") or ""
    if stream_off:
        tokens = _prefix_tokens(text)
    elif pieces is not None:
        tokens = len(pieces)
    else:
        tokens = run.tokens
    duplicates = _duplicates(pieces) if pieces else 0
    return Cell(fault, fix, client, str(run.outcome), tokens, TOKENS, duplicates, runs, time.monotonic() - t0)


def _model_cells(wanted: set | None) -> Iterator[Cell]:
    from .._mock import MockLLM

    from .._timescale import time_scale

    rows = [(fault.spec(), fault, None) for fault in model_faults()] + [(LENGTH, None, 12)]
    with time_scale(MODEL_SCALE), MockLLM(**MODEL) as mock:
        for name, fault, max_tokens in rows:
            for client, fixes in MODEL_FIXES.items():
                for fix in fixes:
                    if wanted is not None and (name, fix, client) not in wanted:
                        continue
                    if max_tokens is not None and fix not in LENGTH_FIXES:
                        continue
                    prompt = f"fix matrix {name} {fix} {client} {uuid.uuid4().hex[:8]}"
                    t0 = time.monotonic()
                    run, pieces = _model_run(mock, fault, fix, client, prompt, max_tokens)
                    yield _cell(name, fix, client, run, pieces, _model_runs(mock, prompt), t0,
                                stream_off=fix == "stream_off")


# -- hop faults ------------------------------------------------------------------------------------

def hop_faults() -> dict[str, list]:
    """The hops, named for what they are: one fault each, two chains (the app's side first), then
    every profile with its defaults. A value is a list of faults (one proxy) or a tuple of such
    lists (one proxy each, chained: ``nginx_gzip>lb_idle_timeout`` is an LB in front of gzip)."""
    from .. import hops

    out: dict[str, Any] = {
        "nginx_read_timeout": [hops.ReadTimeout(seconds=10)],
        "nginx_buffering": [hops.Buffering()],
        "nginx_gzip": [hops.Gzip()],
        "lb_idle_timeout": [hops.IdleTimeout(seconds=10)],
        "gateway_deadline": [hops.Deadline(seconds=20)],
        "serverless_kill": [hops.KillAfter(seconds=20)],
        "nginx_buffering+gzip": [hops.Buffering(), hops.Gzip()],
        "nginx_gzip>lb_idle_timeout": ([hops.Gzip()], [hops.IdleTimeout(seconds=10)]),
        "nginx_buffering>lb_idle_timeout": ([hops.Buffering()], [hops.IdleTimeout(seconds=10)]),
        "nginx_buffering+gzip>lb_idle_timeout": ([hops.Buffering(), hops.Gzip()], [hops.IdleTimeout(seconds=10)]),
    }
    for name, profile in hops.PROFILES.items():
        out[f"{name}_profile"] = list(profile())
    return out


HOP_FIXES = ("none", "heartbeat")


def _hop_cells(wanted: set | None) -> Iterator[Cell]:
    from urllib.parse import urlencode

    from .._appserver import Uvicorn
    from .._mock import MockLLM
    from .._proxy import Proxy
    from ..frameworks.langchain import record_sse

    todo = [(name, faults, fix) for name, faults in hop_faults().items() for fix in HOP_FIXES
            if wanted is None or (name, fix, HTTPX) in wanted]
    if not todo:
        return
    with MockLLM(**MODEL) as mock, Uvicorn("streamlab.apps.heartbeat:app",
                                           env={"STREAMLAB_MODEL_URL": mock.base_url}) as app:
        for name, faults, fix in todo:
            prompt = f"fix matrix {name} {fix} {uuid.uuid4().hex[:8]}"
            # accel "": the app sends no X-Accel-Buffering (that header is a fix of its own), so a
            # buffering hop really buffers
            query = urlencode({"q": prompt, "spec": STALL, "every": 5 if fix == "heartbeat" else 0, "accel": ""})
            t0 = time.monotonic()
            with contextlib.ExitStack() as chain:
                url = app.url
                for i, hop in enumerate(faults if isinstance(faults, tuple) else (faults,)):
                    # the hop next to the app speaks nginx's default HTTP/1.0 upstream; a balancer in
                    # front of it speaks HTTP/1.1 (as ALB and the cloud LBs do), so nginx's gzip,
                    # which compresses only HTTP/1.1 requests, applies behind it
                    version = "1.0" if i == 0 else "1.1"
                    url = chain.enter_context(Proxy(upstream=url, faults=hop, proxy_http_version=version)).url
                run = record_sse(f"{url}/sse?{query}", expected=TOKENS, itl=MODEL["itl"], timeout=None)
            yield _cell(name, fix, HTTPX, run, None, _model_runs(mock, prompt), t0)


# -- process faults --------------------------------------------------------------------------------

PROCESS_FAULTS = ("worker_kill", "client_drop", "client_abort")
PROCESS_FIXES = ("none", "resume")
KILL_AFTER = 8
DROP_BYTES = 600


def _understand_resumed(event: Any):
    from .._recorder import ChunkInfo

    if event.event == "token":
        return ChunkInfo(json.loads(event.data)["t"] or None, None, False, len(event.data))
    if event.event == "done":
        return ChunkInfo(None, "stop", True, 0)
    if event.event == "error":
        return ChunkInfo(None, None, True, 0, error=event.data)
    return ChunkInfo(None, None, False, 0)


def _understand_block(block: Any):
    """``understand=`` for the resumable app's raw SSE blocks (``event: token`` / ``data: {"i", "t"}``)."""
    from .._sse import parse_block

    event = parse_block(str(block))
    if event.event is None and not event.data:
        from .._recorder import ChunkInfo

        return ChunkInfo(None, None, False, len(str(block)))
    return _understand_resumed(event)


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met within {timeout} s")
        time.sleep(0.01)


def _settled(server: Any) -> None:
    _wait(lambda: len(server.log_lines("Application startup complete")) >= len(server.log_lines("Booting worker")),
          30, "replacement worker startup")


def _owner(replicas: list, pid: int) -> Any:
    for server in replicas:
        if pid in server.worker_pids():
            return server
    raise RuntimeError(f"pid {pid} is no worker of the replicas")


def _process_cells(wanted: set | None) -> Iterator[Cell]:
    from urllib.parse import urlencode

    import httpx

    from .._appserver import Gunicorn
    from .._balancer import Balancer
    from .._mock import MockLLM
    from .._proxy import Proxy
    from .._recorder import record
    from .._redis import RedisServer
    from .._sse import iter_blocks
    from ..frameworks.langchain import record_sse
    from ..hops import CutAfterBytes
    from . import ResumableStream, resume_stream

    todo = [(f, fix) for f in PROCESS_FAULTS for fix in PROCESS_FIXES
            if wanted is None or (f, fix, HTTPX) in wanted]
    if not todo:
        return
    with RedisServer() as redis, MockLLM(tokens=TOKENS, itl=0.2) as mock:
        env = {"STREAMLAB_MODEL_URL": mock.base_url, "STREAMLAB_REDIS_URL": redis.url, "STREAMLAB_RESUME_LEASE": "2"}
        options = dict(workers=2, env=env, timeout=300, extra_args=["--preload"])
        with Gunicorn("streamlab.apps.resumable:app", **options) as a, \
                Gunicorn("streamlab.apps.resumable:app", **options) as b, Balancer([a, b]) as lb:
            replicas = [a, b]
            for replica in replicas:
                _wait(lambda: len(replica.log_lines("Application startup complete")) >= 2, 30, "app startup")
            for fault, fix in todo:
                prompt = f"fix matrix {fault} {fix} {uuid.uuid4().hex[:8]}"
                t0 = time.monotonic()
                indices: list[int] = []
                killed: list[Any] = []
                if fix == "none":
                    url = lb.url + "/chat/sse?" + urlencode({"q": prompt})
                    headers = {"X-Streamlab": KILL_STALL}
                    if fault == "worker_kill":
                        def killing() -> Iterator[str]:
                            with httpx.Client(timeout=httpx.Timeout(30.0)) as client, \
                                    client.stream("GET", url, headers=headers) as response:
                                pid = int(response.headers["x-streamlab-pid"])
                                for block in iter_blocks(response.iter_text()):
                                    yield block + "\n\n"
                                    if "event: token" in block and not killed and \
                                            json.loads(block.split("data: ", 1)[1])["i"] == KILL_AFTER - 1:
                                        server = _owner(replicas, pid)
                                        server.kill_worker(pid)
                                        killed.append(server)
                        run = record(killing, expected=TOKENS, understand=_understand_block)
                    elif fault == "client_drop":
                        with Proxy(upstream=lb.url, faults=[CutAfterBytes(nbytes=DROP_BYTES)]) as proxy:
                            run = record_sse(proxy.url + url[len(lb.url):], expected=TOKENS, timeout=30,
                                             understand=_understand_block)
                    else:
                        run = record_sse(url, expected=TOKENS, timeout=30, abort_after=KILL_AFTER,
                                         understand=_understand_block)
                else:
                    reply = httpx.post(lb.url + "/runs", params={"q": prompt, "spec": KILL_STALL}, timeout=30)
                    reply.raise_for_status()
                    started = reply.json()
                    if fault == "worker_kill":
                        def resumed() -> Iterator[Any]:
                            result = ResumableStream(started["stream"])
                            for event in resume_stream(lb.url + started["stream"], result=result):
                                yield event
                                if event.event == "token":
                                    indices.append(json.loads(event.data)["i"])
                                    if len(indices) == KILL_AFTER and not killed:
                                        pid = int(result.connections[0]["pid"])
                                        if pid == started["pid"]:
                                            raise RuntimeError("stream and producer on one worker: not this cell")
                                        server = _owner(replicas, pid)
                                        server.kill_worker(pid)
                                        killed.append(server)
                    elif fault == "client_drop":
                        def resumed() -> Iterator[Any]:
                            with Proxy(upstream=lb.url, faults=[CutAfterBytes(nbytes=DROP_BYTES)]) as proxy:
                                for event in resume_stream(proxy.url + started["stream"], max_reconnects=20):
                                    if event.event == "token":
                                        indices.append(json.loads(event.data)["i"])
                                    yield event
                    else:
                        def resumed() -> Iterator[Any]:
                            last = None
                            for event in resume_stream(lb.url + started["stream"]):  # the client stops...
                                yield event
                                if event.event == "token":
                                    indices.append(json.loads(event.data)["i"])
                                    last = event.id
                                    if len(indices) == KILL_AFTER:
                                        break
                            for event in resume_stream(lb.url + started["stream"], last_event_id=last):  # back
                                if event.event == "token":
                                    indices.append(json.loads(event.data)["i"])
                                yield event
                    run = record(resumed, expected=TOKENS, understand=_understand_resumed)
                for server in killed:
                    _settled(server)
                duplicates = len(indices) - len(set(indices))
                yield Cell(fault, fix, HTTPX, str(run.outcome), indices and len(indices) or run.tokens, TOKENS,
                           duplicates, _model_runs(mock, prompt), time.monotonic() - t0)


# -- retried requests ------------------------------------------------------------------------------

RETRY_STALL = 2.5   # wall-clock seconds the first model call of a cell stalls (time scale 1 in this group)
RETRY_IDLE = 1.0    # the balancer gives up on a worker after this long without a byte, and retries


def _retry_cells(wanted: set | None) -> Iterator[Cell]:
    """lb_retry: a balancer that retries a slow POST on the other worker (nginx ``proxy_next_upstream
    timeout non_idempotent``), against the idempotent demo app on two uvicorn processes and Redis.
    none: no key (both runs answer, the model runs twice); idempotent: an ``Idempotency-Key``, the
    client retries after the 409's ``Retry-After`` and gets the kept answer."""
    import httpx

    from .._appserver import Uvicorn
    from .._balancer import Balancer
    from .._mock import MockLLM
    from .._recorder import record
    from .._redis import RedisServer
    from .._timescale import time_scale

    todo = [fix for fix in ("none", "idempotent") if wanted is None or ("lb_retry", fix, HTTP_JSON) in wanted]
    if not todo:
        return
    with time_scale(1.0), RedisServer() as redis, MockLLM(tokens=TOKENS) as mock:
        env = {"STREAMLAB_MODEL_URL": mock.base_url, "STREAMLAB_REDIS_URL": redis.url}
        app = "streamlab.apps.idempotent:app"
        with Uvicorn(app, env=env) as a, Uvicorn(app, env=env) as b, \
                Balancer([a, b], retry=True, non_idempotent=True, max_fails=0, idle_timeout=RETRY_IDLE) as lb:
            for worker in (a, b):  # warm each worker's first model call: the retry must be quick
                httpx.post(worker.url + "/answer", params={"q": "warm up", "spec": "tokens=1"},
                           timeout=30).raise_for_status()
            for fix in todo:
                seed = 100 + todo.index(fix)
                prompt = f"fix matrix lb_retry {fix} {uuid.uuid4().hex[:8]}"
                params = {"q": prompt, "spec": f"stall@0={RETRY_STALL},first=1,seed={seed}"}
                headers = {"Idempotency-Key": uuid.uuid4().hex} if fix == "idempotent" else {}
                t0 = time.monotonic()

                def answer() -> str:
                    reply = httpx.post(lb.url + "/answer", params=params, headers=headers, timeout=30)
                    for _ in range(15):
                        if reply.status_code != 409:
                            break
                        time.sleep(float(reply.headers.get("retry-after", "1")))
                        reply = httpx.post(lb.url + "/answer", params=params, headers=headers, timeout=30)
                    reply.raise_for_status()
                    return reply.json()["text"]
                run = record(answer, expected=TOKENS)
                yield Cell("lb_retry", fix, HTTP_JSON, str(run.outcome), _prefix_tokens(run.text or "", seed),
                           TOKENS, 0, _model_runs(mock, prompt), time.monotonic() - t0)


# -- the whole matrix ------------------------------------------------------------------------------

def run_matrix(*, only: Iterable[tuple[str, str, str]] | None = None, scale: float = SCALE) -> list[Cell]:
    """Run every cell (or those keyed in ``only``: (fault, fix, client)); the cells in matrix order."""
    from .._offline import offline
    from .._timescale import time_scale

    wanted = set(only) if only is not None else None
    offline()
    cells: list[Cell] = []
    with time_scale(scale):
        for group in (_model_cells, _hop_cells, _process_cells, _retry_cells):
            cells.extend(group(wanted))
    return cells


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in VERSIONS:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    try:
        from .._redis import redis_version  # type: ignore[attr-defined]
        out["redis-server"] = redis_version()
    except Exception:  # noqa: BLE001 - optional
        pass
    return out


def write(cells: list[Cell], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows(c.row() for c in cells)
    meta = {"command": "python -m streamlab.fixes._matrix", "time_scale": SCALE, "model_time_scale": MODEL_SCALE,
            "read_timeout": READ_TIMEOUT, "tokens": TOKENS,
            "versions": versions()}
    out.with_suffix(".versions.json").write_text(json.dumps(meta, indent=2) + "\n")


def read(path: Path | str = DEFAULT_OUT) -> list[dict[str, str]]:
    with Path(path).open(newline="") as f:
        return list(csv.DictReader(f))


# -- reading it -------------------------------------------------------------------------------------

FIX_ORDER = ("none", "stream_off", "guard", "continue", "background", "heartbeat", "resume", "idempotent")
CLIENT_ORDER = (SDK, HTTPX, HTTP_JSON, LANGCHAIN, LANGGRAPH, AUTOGEN, CREWAI)
COLOURS = {"complete": "#2e7d32", "truncation detected": "#1565c0", "truncated by length": "#64b5f6",
           "client aborted": "#fbc02d", "buffered": "#a1887f", "http error": "#9e9e9e",
           "error before stream": "#bdbdbd", "stalled / timed out": "#ef6c00", "cut mid-stream": "#c62828",
           "silent truncation": "#6a1b9a"}


def grid(rows: Iterable[dict[str, str]], *, client: str | None = None) -> tuple[list[str], list[str], dict]:
    """(faults, fixes, {(fault, fix): row}): one row per cell, for ``client`` or, by default, the first
    client of ``CLIENT_ORDER`` that has the cell (the raw openai SDK where it applies)."""
    rows = list(rows)
    faults = list(dict.fromkeys(r["fault"] for r in rows))
    fixes = [f for f in FIX_ORDER if any(r["fix"] == f for r in rows)]
    cells: dict[tuple[str, str], dict[str, str]] = {}
    for r in sorted(rows, key=lambda r: CLIENT_ORDER.index(r["client"]) if r["client"] in CLIENT_ORDER else 99):
        if client is None or r["client"] == client:
            cells.setdefault((r["fault"], r["fix"]), r)
    faults = [f for f in faults if any((f, x) in cells for x in fixes)]
    return faults, fixes, cells


def _draw(ax: Any, faults: list[str], fixes: list[str], cells: dict, *, ylabels: bool = True) -> list[str]:
    """One fault x fix grid on ``ax``; the outcome names it used (plus ``SHORT``: a cell named complete
    with fewer distinct tokens than the answer has, hatched)."""
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Rectangle

    names = list(COLOURS)
    values = [[names.index(cells[(f, x)]["outcome"]) if (f, x) in cells else float("nan") for x in fixes]
              for f in faults]
    ax.imshow(values, cmap=ListedColormap([COLOURS[n] for n in names]), vmin=-0.5, vmax=len(names) - 0.5,
              aspect="auto")
    for i, f in enumerate(faults):
        for j, x in enumerate(fixes):
            if (f, x) in cells:
                row = cells[(f, x)]
                dup = f"+{row['duplicate_tokens']}d" if row["duplicate_tokens"] != "0" else ""
                ax.text(j, i, f"{row['tokens_received']}{dup}", ha="center", va="center", fontsize=7, color="white")
                if _short(row):
                    ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", edgecolor="white",
                                           linewidth=0))
    ax.set_xticks(range(len(fixes)), fixes, fontsize=8)
    if ylabels:
        ax.set_yticks(range(len(faults)), faults, fontsize=8)
    else:
        ax.tick_params(labelleft=False)
    ax.xaxis.tick_top()
    used = [n for n in names if any(cells.get((f, x), {}).get("outcome") == n for f in faults for x in fixes)]
    return used + [SHORT] * any(_short(c) for c in cells.values() if (c["fault"], c["fix"]) in
                                {(f, x) for f in faults for x in fixes})


SHORT = "complete, but short"


def _short(row: dict[str, str]) -> bool:
    """Named complete with fewer answer positions than the uncut answer (duplicates not counted)."""
    return row["outcome"] == "complete" and \
        int(row["tokens_received"]) - int(row["duplicate_tokens"]) < int(row["tokens_expected"])


def _legend(fig: Any, ax: Any, used: list[str]) -> None:
    from matplotlib.patches import Patch

    handles = [Patch(color=COLOURS[n], label=n) for n in COLOURS if n in used]
    if SHORT in used:
        handles.append(Patch(facecolor=COLOURS["complete"], hatch="///", edgecolor="white", label=SHORT))
    ax.legend(handles=handles, loc="upper left",
              bbox_to_anchor=(1.01, 1), fontsize=8, title="outcome (text: tokens, +Nd duplicates)")


def heatmap(rows: Iterable[dict[str, str]], *, client: str | None = None, title: str = "fault x fix"):
    """The matrix as a heat map (fault x fix, colour = outcome, text = tokens received); the figure."""
    import matplotlib.pyplot as plt

    faults, fixes, cells = grid(rows, client=client)
    fig, ax = plt.subplots(figsize=(1.1 * len(fixes) + 4.5, 0.32 * len(faults) + 1.6))
    _legend(fig, ax, _draw(ax, faults, fixes, cells))
    ax.set_title(title + " (blank: not run on that fault's stack)", fontsize=10)
    fig.tight_layout()
    return fig


MODEL_CLIENTS = (SDK, LANGCHAIN, LANGGRAPH, AUTOGEN, CREWAI)


def heatmap_by_client(rows: Iterable[dict[str, str]], *, clients: Iterable[str] = MODEL_CLIENTS,
                      fixes: Iterable[str] = LENGTH_FIXES, title: str = "model faults, by client"):
    """The model faults once per client, side by side (one panel each, the same fault rows and fixes):
    where the frameworks part ways with the SDK under them. The figure."""
    import matplotlib.pyplot as plt

    rows = list(rows)
    clients, fixes = list(clients), list(fixes)
    faults = list(dict.fromkeys(r["fault"] for r in rows if r["client"] == clients[0] and r["fix"] in fixes))
    fig, axes = plt.subplots(1, len(clients), sharey=True,
                             figsize=(0.62 * len(fixes) * len(clients) + 4.6, 0.3 * len(faults) + 1.9))
    used: set[str] = set()
    for k, (ax, client) in enumerate(zip(axes, clients)):
        cells = {(r["fault"], r["fix"]): r for r in rows if r["client"] == client}
        used.update(_draw(ax, faults, fixes, cells, ylabels=k == 0))
        ax.set_xlabel(client, fontsize=9)
    _legend(fig, axes[-1], sorted(used))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streamlab.fixes._matrix", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="only the fast slice (QUICK)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    t0 = time.monotonic()
    cells = run_matrix(only=QUICK if args.quick else None)
    write(cells, args.out)
    print(f"{len(cells)} cells -> {args.out} in {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
