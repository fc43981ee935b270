"""A LangGraph graph served two ways: sync ``graph.stream()`` in ``async def`` vs ``astream()`` (article "LangGraph scaling").

    uvicorn streamlab.apps.graph:app         env: STREAMLAB_MODEL_URL=http://127.0.0.1:PORT/v1

    POST /graph/sync?mode=messages   BROKEN: the article's shape, an ``async def`` path
         {"input": "..."}            operation that ``yield``s from the sync
                                     ``graph.stream()``. FastAPI (>= 0.120) accepts a
                                     generator route and streams JSON Lines; every step of
                                     the sync graph blocks the event loop.
    POST /graph/async?mode=messages  FIXED: ``graph.astream()`` in a ``StreamingResponse``
                                     with ``text/event-stream`` and the SSE headers.
    GET  /health

The graph: START -> model -> END, where ``model`` calls ``ChatOpenAI`` (the sync
graph's node calls ``invoke``, the async graph's ``ainvoke``).

``mode`` is LangGraph's ``stream_mode``: ``messages`` yields one item per LLM token
(text), ``updates`` (LangGraph's default, what the article's code uses) yields one
item per finished node, so the whole answer arrives as one chunk at the end.
"""

from __future__ import annotations

import json
import os
from typing import TypedDict

import langchain_openai  # noqa: F401 - import at startup, not on the first request (it blocks the loop)
from fastapi import Body, FastAPI, Request
from fastapi.responses import StreamingResponse
from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph

from ._common import (SSE_HEADERS, DisconnectLog, chat_model, request_id, spec_of, sse_frame, traced, traced_sync,
                      warm_start)

app = FastAPI(title="streamlab LangGraph sync vs async streaming", lifespan=warm_start)
app.add_middleware(DisconnectLog)


class State(TypedDict, total=False):
    input: str
    answer: str


def _spec(config: RunnableConfig) -> str | None:
    return (config.get("configurable") or {}).get("spec")


def call_model(state: State, config: RunnableConfig) -> State:
    return {"answer": chat_model(_spec(config)).invoke(state["input"], config).content}


async def acall_model(state: State, config: RunnableConfig) -> State:
    return {"answer": (await chat_model(_spec(config)).ainvoke(state["input"], config)).content}


def build_graph(node):
    graph = StateGraph(State)
    graph.add_node("model", node)
    graph.add_edge(START, "model")
    graph.add_edge("model", END)
    return graph.compile()


sync_graph = build_graph(call_model)
async_graph = build_graph(acall_model)


def item_text(item, mode: str) -> str:
    """A streamed item as text: the token for ``messages``, JSON for anything else."""
    if mode == "messages":
        message, _metadata = item
        return message.content
    return json.dumps(item, default=str)


def _payload(payload: dict) -> State:
    return {"input": payload.get("input") or payload.get("q") or "Explain LangGraph streaming"}


@app.post("/graph/sync")
async def graph_sync(request: Request, payload: dict = Body(default={}), mode: str = "messages"):
    rid = request_id(request.headers)
    config = {"configurable": {"spec": spec_of(request.query_params, request.headers)}}
    items = (item_text(item, mode) for item in sync_graph.stream(_payload(payload), config, stream_mode=mode))
    for text in traced_sync(rid, "/graph/sync", (t for t in items if t)):  # BROKEN: blocks the loop
        yield text


@app.post("/graph/async")
async def graph_async(request: Request, payload: dict = Body(default={}), mode: str = "messages"):
    rid = request_id(request.headers)
    config = {"configurable": {"spec": spec_of(request.query_params, request.headers)}}

    async def texts():
        async for item in async_graph.astream(_payload(payload), config, stream_mode=mode):
            text = item_text(item, mode)
            if text:
                yield text

    async def frames():
        async for text in traced(rid, "/graph/async", texts()):
            yield sse_frame(text, event="token")
        yield sse_frame("[DONE]", event="done")

    return StreamingResponse(frames(), media_type="text/event-stream", headers={**SSE_HEADERS, "X-Request-ID": rid})


@app.get("/health")
async def health():
    return {"ok": True, "pid": os.getpid()}
