"""LangGraph helpers, part 1: the article's graphs and nodes, the job pool, state growth in-process.

Re-exported by ``streamlab.frameworks.langgraph`` (taught in notebooks/04_langgraph.ipynb).
"""

import concurrent.futures
import itertools
import json
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, TypedDict

from ..apps._common import log
from .._timescale import to_real
from ._langgraph_ledger import _ledger_add


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


# --------------------------------------------------------------------------- jobs (app side)

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
