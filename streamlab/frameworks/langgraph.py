"""LangGraph helpers, taught in notebooks/04_langgraph.ipynb (article "LangGraph scaling": "streaming response cutoff when scaling").

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

The code lives in four modules along its seams, all re-exported here (notebooks import from
this module; ``uvicorn --factory streamlab.frameworks.langgraph:create_app`` serves the app)::

    _langgraph_graphs   the graphs and nodes, the job pool, ``growth``
    _langgraph_ledger   the side-effect ledger (sqlite, shared by every worker)
    _langgraph_app      the FastAPI app and ``show``
    _langgraph_client   ``read_event``, ``post``, ``blind_retries``, ``follow_job``, ``concurrently``, ``settle``
"""

from ._langgraph_app import PING, _logged, _logged_sync, _route_source, create_app, show, sse_as_in_article, token_events
from ._langgraph_client import (Lines, Stream, _payload, blind_retries, concurrently, follow_job, post, quiet,
                                read_event, settle)
from ._langgraph_graphs import (_JOBS, State, Step, _graphs, _job_pool, _spec, article_graph, bad_node, build_graph,
                                call_model, enqueue_long_task, fast_node, good_node, growth, llm, loop_graph,
                                open_ticket, slow_node)
from ._langgraph_ledger import Ledger, _ledger_add

__all__ = ["create_app", "State", "build_graph", "call_model", "slow_node", "fast_node", "open_ticket", "bad_node",
           "good_node", "loop_graph", "article_graph", "sse_as_in_article", "token_events", "read_event", "post",
           "Stream", "Lines", "blind_retries", "follow_job", "concurrently", "settle", "Ledger", "Step", "growth",
           "show", "quiet", "PING"]
