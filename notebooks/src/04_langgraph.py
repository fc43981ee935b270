# Source of notebooks/04_langgraph.ipynb (build: .venv/bin/python tools/nb.py build notebooks/src/04_langgraph.py)

# %% [markdown]
# # 04 · LangGraph: streaming response cutoff when scaling
#
# **The question.** Cyprian Aarons' article *How to Fix 'streaming response cutoff when scaling' in
# LangGraph (Python)* (updated 2026-04-21; cited below as *LangGraph scaling*) says a LangGraph stream
# that works on a laptop gets cut once it runs behind several workers, a buffering proxy or a platform
# timeout, and names five causes with a fix for each, plus four debugging steps. Which of those cutoffs
# happen with the pinned LangGraph 1.2.22, FastAPI 0.165, uvicorn 0.54, gunicorn 27 and nginx, what does
# the client actually see, and do the fixes as written work? Every run below is a real `StateGraph`
# whose nodes call `langchain_openai.ChatOpenAI` on streamlab's mock model, served by real uvicorn and
# gunicorn processes, behind real nginx (or streamlab's embedded proxy where nginx is not installed or
# has no such setting).
#
# 0. Setup
# 1. Sync multi-worker WSGI behind a buffering proxy vs an ASGI SSE endpoint
# 2. A slow node vs a fast node that enqueues the work
# 3. Sync `graph.stream()` in an async endpoint vs `astream()`
# 4. State that grows on every step vs trimmed state
# 5. Blind retries of a streamed request vs idempotent handling
# 6. The article's debugging steps
# 7. Summary
# 8. Exercises

# %% [markdown]
# ## 0. Setup
#
# The versions are pinned: the stored outputs were made with them. `sl.offline()` switches telemetry
# off (LangSmith tracing included) and refuses connections that would leave loopback; the demo app
# does the same in its own process. `sl.time_scale(1 / 30)` runs one scenario second in 1/30 s: a
# 30 s gunicorn timeout is exactly one wall-clock second (gunicorn only takes whole seconds), a 60 s
# nginx timeout two. Every duration below is in scenario seconds.

# %%
import ast
import asyncio
import json
from typing import TypedDict

import httpx
import httpx_sse
from langchain_openai import ChatOpenAI
from langgraph.graph import END, START, StateGraph

import streamlab as sl
from streamlab import hops
from streamlab.frameworks import langgraph as lg

print(sl.require(langgraph="1.2.22", langchain_openai="1.7.3", langchain_core="1.7.2", openai="2.54.0",
                 httpx="0.28.1", fastapi="0.165.0", uvicorn="0.54.0", gunicorn="27.0.1"))
sl.offline()
sl.time_scale(1 / 30)
print("one scenario second runs in", round(sl.current_time_scale(), 4), "wall-clock seconds")

# %% [markdown]
# The servers: the mock model (40 tokens, first token after 1 s, then one every 0.25 s: an 11 s answer),
# a shared side-effect ledger for section 5, and two uvicorn processes of the demo app
# `streamlab.frameworks.langgraph` (one route per pattern; section 5 puts a load balancer over both).
# A request picks the model's behaviour with `?spec=` (for example `stall@5=150`: after 5 tokens,
# nothing for 150 s).

# %%
mock = sl.MockLLM(tokens=40, ttft=1, itl=0.25).start()   # everything is stopped in the last cell
ledger = lg.Ledger()
env = {"STREAMLAB_MODEL_URL": mock.base_url, **ledger.env}
app = sl.Uvicorn("streamlab.frameworks.langgraph:create_app", extra_args=["--factory"], env=env).start()
app_b = sl.Uvicorn("streamlab.frameworks.langgraph:create_app", extra_args=["--factory"], env=env).start()
print("running:", sorted(type(s).__name__ for s in sl.running_servers()))

# %% [markdown]
# ## 1. Sync multi-worker WSGI behind a buffering proxy vs an ASGI SSE endpoint (Aarons, LangGraph scaling)
#
# **The claim.** The article's most common cause: a stream served by a generic multi-worker WSGI
# deployment behind a proxy with buffering on gets cut, because the stack does not keep one
# connection and one worker for the whole run. Its fix is an ASGI endpoint that returns a
# `StreamingResponse` of `text/event-stream` with `Cache-Control: no-cache` and `X-Accel-Buffering: no`,
# and nginx with `proxy_buffering off`.
#
# First, the article's example graph, exactly as written, on LangGraph 1.2.22:

# %%
def build_graph():
    graph = StateGraph(dict)
    graph.add_node("step", lambda state: {"result": "ok"})
    graph.add_edge(START, "step")
    graph.add_edge("step", END)
    return graph.compile()


example = build_graph()
for chunk in example.stream({"input": "hello"}):
    print(chunk)
print("stream_mode='values':", list(example.stream({"input": "hello"}, stream_mode="values")))

# %% [markdown]
# It builds and runs unchanged. Two things to know before streaming it: the default `stream_mode` is
# `"updates"`, one item per finished node (here one item, and no token ever); and a `StateGraph(dict)`
# has no keys to merge into, so each node's return *replaces* the whole state (`input` is gone after
# the step).
#
# **Broken.** The graph of the demo apps (START → `ChatOpenAI` node → END) streamed in
# `stream_mode="messages"` by a plain WSGI app (`streamlab.apps.graph_wsgi`) under gunicorn's default
# sync workers, `-w 2 --timeout 30` (`--preload` only imports the app once, before the workers
# fork), behind nginx with its defaults (`proxy_buffering on`). The model
# pauses for 150 s after 5 of its 20 tokens, as a slow tool or a long reasoning step upstream would.
# nginx's `proxy_read_timeout` is raised to 300 s in this section so that the app server is the only
# hop that can end the stream (section 2 is about proxy timeouts).

# %%
SLOW_STEP = "stall@5=150,tokens=20"
wsgi = sl.Gunicorn("streamlab.apps.graph_wsgi:app", workers=2, worker_class="sync", timeout=30, env=env,
               extra_args=["--preload"]).start()
print("gunicorn streamlab.apps.graph_wsgi:app -k sync -w 2 --timeout 30 --preload")

with sl.proxy_for(upstream=wsgi.url, faults=hops.nginx(proxy_read_timeout=300)) as front:
    broken, direct = await asyncio.gather(   # one request through nginx, one straight to gunicorn
        *(sl.arecord(lg.post(url + "/graph?mode=messages&spec=" + SLOW_STEP), expected=20, understand=lg.read_event)
          for url in (front.url, wsgi.url)))
wsgi.stop()   # the WSGI deployment is not needed any more (stopping it also reads the rest of its log)
print("through nginx:       ", broken, "| end marker seen:", broken.terminal)
print("straight to gunicorn:", direct)
killed = wsgi.log_lines("WORKER TIMEOUT")
print(f"gunicorn: {lg.quiet(killed[0])} ({len(killed)} such lines)")

# %% [markdown]
# Both clients got 5 of 20 tokens. A sync worker only tells gunicorn's arbiter it is alive *between*
# requests, so `--timeout 30` is the longest any streamed response can last: the arbiter logs
# `WORKER TIMEOUT` and aborts the worker mid-stream. Straight from gunicorn the client sees the cut
# (an incomplete chunked body). Through nginx it sees **no error at all**, a silent truncation:
# nginx speaks HTTP/1.0 to its upstream by default (`proxy_http_version 1.0`), so gunicorn's body has
# no chunked framing and ends when the socket closes; nginx cannot tell a killed worker from a
# finished answer and ends the client's response properly. Only the missing end marker (`event:
# done`) gives the cut away.
#
# **Fixed.** The same graph and the same model pause, served by uvicorn (ASGI) from `/stream`: the
# article's endpoint made to work on FastAPI 0.165 (its own `EventSourceResponse`, which sends the
# article's two headers by itself, JSON data, a keep-alive comment every 15 s, tokens from
# `stream_mode="messages"` and a final `done` event), behind nginx with the article's `location`
# block (`proxy_buffering off; proxy_cache off; chunked_transfer_encoding on`).

# %%
lg.show(lg.token_events, "/stream")

# %%
with sl.proxy_for(upstream=app.url, faults=hops.nginx(proxy_read_timeout=300, proxy_buffering=False)) as front:
    fixed = sl.record(lg.post(front.url + "/stream?spec=" + SLOW_STEP), expected=20, understand=lg.read_event)
print(fixed, "| finish marker seen:", fixed.terminal)

# %% [markdown]
# **Measured.**

# %%
sl.compare(broken=broken, fixed=fixed, title="model pauses 150 s after 5 tokens: gunicorn sync vs uvicorn SSE")

# %% [markdown]
# Is it the buffering? The article blames `proxy_buffering`. Here is one hand-written SSE route
# (`/stream/plain`: a `StreamingResponse` *without* `X-Accel-Buffering`, so nginx's setting applies)
# through nginx with `proxy_buffering on` and with `off`:

# %%
buffering = []
for on in (True, False):
    with sl.proxy_for(upstream=app.url, faults=hops.nginx(proxy_buffering=on)) as front:
        buffering.append(sl.record(lg.post(front.url + "/stream/plain"), expected=40, understand=lg.read_event,
                                   label=f"proxy_buffering {'on' if on else 'off'}"))
sl.table(buffering)

# %% [markdown]
# Both arrive token by token (the recorder would call a stream held back and released at the end
# *buffered*). nginx 1.22 with `proxy_buffering on` passes every read from the upstream on at once;
# what it buffers is data the *client* has not read yet, which a client reading an LLM stream never
# leaves behind. (What does hold an SSE stream back is `gzip on` for `text/event-stream`: see the
# measurements in `streamlab/hops.py`.)
#
# Finally the article's fixed endpoint **as written**: `async for chunk in graph.astream(payload):
# yield f"data: {chunk}\n\n"`, once on the article's own graph (`/run/article`) and once on the model
# graph (`/run`), read by `httpx-sse`, a standard SSE client:

# %%
lg.show(lg.sse_as_in_article)

# %%
with sl.proxy_for(upstream=app.url, faults=hops.nginx(proxy_buffering=False)) as front, httpx.Client() as client:
    for path in ("/run/article", "/run", "/stream"):
        with httpx_sse.connect_sse(client, "POST", front.url + path, json={"input": "hello"}) as source:
            events = list(source.iter_sse())
        try:
            events[-1].json()
            parsed = "JSON ok"
        except json.JSONDecodeError as exc:
            parsed = f"json.JSONDecodeError: {exc}"
        print(f"{path:13} {len(events):2} events; last data: {events[-1].data[:52]!r}...; {parsed}")

# %% [markdown]
# The framing is fine (a Python `dict` repr escapes newlines, so every chunk stays one SSE event), but
# the payload is a Python repr, not JSON: `JSON.parse` in a browser and `event.json()` here both fail
# on the single quotes. And with the default `stream_mode="updates"` the whole answer is *one* event
# after the model has finished: nothing streams, so a proxy's 60 s read timeout cuts any answer that
# takes longer than that to generate. In `"messages"` mode the chunk is a `(AIMessageChunk(...),
# metadata)` tuple, whose repr is not even a Python literal:

# %%
quick_llm = ChatOpenAI(model="streamlab-mock", base_url=mock.base_url_for(itl=0.01), api_key="unused")


class State(TypedDict, total=False):
    input: str
    answer: str


def call_model(state: State) -> State:
    return {"answer": quick_llm.invoke(state["input"]).content}


model_graph = StateGraph(State)
model_graph.add_node("call_model", call_model)
model_graph.add_edge(START, "call_model")
model_graph.add_edge("call_model", END)
model_graph = model_graph.compile()

item = list(model_graph.stream({"input": "hello"}, stream_mode="messages"))[1]
print(f"data: {item}"[:72] + " ...")
try:
    ast.literal_eval(f"{item}")
except ValueError as exc:
    print("ast.literal_eval:", type(exc).__name__, str(exc)[:40])

# %% [markdown]
# **Verdict:** partly — a sync WSGI worker cannot stream past gunicorn's `--timeout` and behind
# nginx the kill looks like a *complete* response (reproduced, cell *Broken*); `proxy_buffering on`
# does not hold SSE back on nginx 1.22 (not reproduced, the buffering table); the fixed endpoint as
# written streams no tokens and sends a Python repr no SSE client can JSON-parse (last two cells).

# %% [markdown]
# ## 2. A slow node vs a fast node that enqueues the work (Aarons, LangGraph scaling)
#
# **The claim.** A node that takes longer than a proxy's or platform's timeout makes the stream look
# cut off although the graph is fine; keep nodes short and push long work out of band: a fast node
# enqueues it and returns a job id.
#
# **Broken.** `/report` streams `slow_node` (the article's `time.sleep(90)`) then the model, with the
# article's endpoint, behind nginx with its default `proxy_read_timeout 60s`.

# %%
lg.show(lg.slow_node, lg.fast_node, lg.enqueue_long_task)

# %%
with sl.proxy_for(upstream=app.url, faults=hops.nginx()) as front:
    slow = sl.record(lg.post(front.url + "/report"), expected=40, understand=lg.read_event)
cut_by = [e.note.split(": ", 1)[-1] for e in front.log.events if e.kind == "fault"]   # read once it stopped
print(slow)
print("hop:", cut_by)

# %% [markdown]
# uvicorn sent `200 OK` and the SSE headers at once, nginx passed them on (`X-Accel-Buffering: no`),
# then nothing came for 60 s: nginx logged `upstream timed out ... while reading upstream` and closed
# the response without its last chunk. The client has a `200`, zero events and
# `httpx.RemoteProtocolError`. The graph was fine: it would have answered at 101 s.
#
# **Fixed.** `POST /jobs` runs the fast node, which enqueues the slow graph in a worker thread and
# returns `{"job_id": ...}`; the client polls `GET /jobs/{id}` every 10 s through the same nginx. Every
# request is short, so no hop sees a long silence.

# %%
with sl.proxy_for(upstream=app.url, faults=hops.nginx()) as front:
    job = sl.record(lambda: lg.follow_job(front.url, every=10), expected=40, understand=lg.read_event)
print(job)

# %% [markdown]
# **Measured.**

# %%
sl.compare(broken=slow, fixed=job, title="a 90 s node behind nginx proxy_read_timeout 60 s")

# %% [markdown]
# One catch the article's table hints at ("multiple workers"): the job lives in the memory of the
# worker that created it. Behind a round-robin load balancer over two app processes, the first poll
# lands on the other one:

# %%
with sl.Balancer([app, app_b]) as lb:
    polls = list(lg.follow_job(lb.url, every=10))
print("polls:", len(polls), "| status seen by the client:", polls[-1]["status"])

# %% [markdown]
# A real deployment keeps jobs in a shared store, or routes a client to the same worker (exercise 1).
#
# **Verdict:** reproduced — a 90 s node is cut by nginx's 60 s `proxy_read_timeout` after a `200`
# with no event; the fast node plus polling completes through the same hop (see *Measured*).

# %% [markdown]
# ## 3. Sync `graph.stream()` in an async endpoint vs `astream()` (Aarons, LangGraph scaling)
#
# **The claim.** `graph.stream()` inside an `async def` endpoint blocks the event loop and causes
# blocking and partial delivery under load; use `astream()` in async routes.
#
# **Broken** and **fixed**, as the article writes them (plus the demo's config and event log). On
# FastAPI 0.165 the broken one is valid code: an `async def` route that `yield`s is streamed as JSON
# Lines.

# %%
lg.show("/chat/sync", "/chat/async")

# %% [markdown]
# Three clients at once while a load balancer's health check asks `GET /health` every second. One
# uvicorn worker, no proxy.

# %%
def three_clients(path):
    return [lambda: lg.post(app.url + path, lines=True)] * 3


sync_runs, sync_health = await lg.concurrently(three_clients("/chat/sync"), app.url + "/health", expected=40)
async_runs, async_health = await lg.concurrently(three_clients("/chat/async"), app.url + "/health", expected=40)
for name, runs, health in (("graph.stream()", sync_runs, sync_health), ("graph.astream()", async_runs, async_health)):
    print(f"{name}: slowest health answer {max(health):.3f} s; every one within 10 s: {max(health) < 10}")
    display(sl.table(runs))

# %% [markdown]
# **Measured.** The slowest of the three requests of each kind:

# %%
sl.compare(broken=max(sync_runs, key=lambda r: r.e2e), fixed=max(async_runs, key=lambda r: r.e2e),
           title="3 concurrent requests: sync graph.stream() vs astream()")

# %% [markdown]
# With `graph.stream()` on the event loop the three requests are served one after another: the
# whole loop waits for each model answer, and the health check goes unanswered for a whole answer or
# more (a load balancer whose health check times out after 5 s would take the worker out). Every
# answer still arrives complete, only late; it becomes a cutoff when a hop's timeout is shorter than
# the wait.
# `astream()` runs the sync node in a thread pool, so the three answers overlap and the health check
# answers at once. Note that the fixed route, as written, still streams `"updates"`: one line per
# request, at the end.
#
# **Verdict:** partly — the sync stream blocks the loop: the requests are served one after another
# and the health check waits (tables above); "partial delivery" was not seen: every answer arrived
# complete, late. `astream()` fixes the blocking.

# %% [markdown]
# ## 4. State that grows on every step vs trimmed state (Aarons, LangGraph scaling)
#
# **The claim.** If the state grows on every step, serializing it can get slow enough that upstream
# systems cut the response; trim it. The article's two nodes, run in a loop of a `StateGraph(dict)`
# with an in-memory checkpointer (as a persistent graph has), every state streamed as JSON
# (`stream_mode="values"`, what a UI that shows the history would use):

# %%
lg.show(lg.bad_node, lg.good_node)

# %% [markdown]
# Bytes and serialization time per step, measured in this process (wall-clock time: CPU time is
# not scaled):

# %%
grown = {node.__name__: lg.growth(node, 1000) for node in (lg.bad_node, lg.good_node)}
print("step  node       history  bytes/state   json.dumps    step time")
for k in (1, 10, 100, 1000):
    for name, steps in grown.items():
        s = steps[k]
        print(f"{k:4}  {name:9}  {s.history:7}  {s.nbytes:11}  {s.serialize * 1000:8.3f} ms  {s.elapsed * 1000:8.3f} ms")
for name, steps in grown.items():
    print(f"{name}: {sum(s.nbytes for s in steps) / 1e6:.1f} MB streamed over 1000 steps, "
          f"{sum(s.serialize for s in steps):.3f} s of json.dumps in all")

# %% [markdown]
# **Broken** and **fixed** through real hops: the client, a hop that limits the response size to
# 10 MB (API gateways and serverless platforms have such a limit), and nginx with its default 60 s
# `proxy_read_timeout`, in front of the app's `/loop` route (1000 steps). The size hop has no nginx
# directive, so it is always streamlab's embedded proxy.

# %%
with sl.proxy_for(upstream=app.url, faults=hops.nginx()) as front, \
        sl.Proxy(upstream=front.url, faults=[hops.CutAfterBytes(nbytes=10 * 1024 * 1024)]) as limit:
    grows = sl.record(lg.post(limit.url + "/loop?steps=1000&trim=0"), expected=1000, understand=lg.read_event)
    trimmed = sl.record(lg.post(limit.url + "/loop?steps=1000&trim=1"), expected=1000, understand=lg.read_event)
timeouts = [e for e in front.log.events if e.kind == "fault"]
print(f"growing: {grows.tokens} of 1000 states, {grows.nbytes / 1e6:.1f} MB, {grows.error_class}")
print(f"trimmed: {trimmed.tokens} of 1000 states, {trimmed.nbytes / 1e6:.1f} MB, {trimmed.error_class}")
print("nginx timeouts fired:", len(timeouts))

# %% [markdown]
# **Measured.**

# %%
sl.compare(broken=grows, fixed=trimmed, title="1000 steps, every state streamed: growing vs trimmed history")

# %% [markdown]
# The growth is real and quadratic on the wire: each streamed state holds the whole history, so the
# run sends 20.5 MB instead of 0.9 MB, and the size limit cuts the growing run at a fixed step. What
# does *not* happen at this scale is a timeout: serializing the 1000-item state takes well under a
# millisecond and a whole step a few milliseconds, so nginx's 60 s timeout never fires. For
# `json.dumps` alone to take 60 s, the state would have to reach gigabytes; even a loop left to run to
# LangGraph's default recursion limit stops with a 410 kB state (exercise 3), although a `"values"`
# stream of it would carry 2 GB.
#
# **Verdict:** partly — state growth multiplies the bytes streamed (a size limit cuts the run at a
# fixed step), but serialization stays in milliseconds and no timeout hop fires at 1000 steps (the
# tables above).

# %% [markdown]
# ## 5. Blind retries of a streamed request vs idempotent handling (Aarons, LangGraph scaling)
#
# **The claim.** An orchestration layer that retries a streamed request on timeout, without
# idempotency, starts a second run on another worker while the first is still going, which looks like
# a cutoff from the client. Don't retry streams blindly; handle failures explicitly.
#
# The graph: `open_ticket` (a side effect, recorded in a ledger shared by both processes) then the
# model, whose first token takes 45 s (`?spec=ttft=45`). A round-robin load balancer spreads
# requests over the two app processes.
#
# **Broken.** `/agent` (the article's endpoint: nothing is sent while the model thinks), a client with a
# 30 s read timeout, and a retry policy that sends the same request again on a timeout, up to three
# times.

# %%
lg.show(lg.open_ticket)

# %%
workers = {app.pid: "worker A", app_b.pid: "worker B"}
ledger.clear()
with sl.Balancer([app, app_b]) as lb:
    before = len(mock.journal.chat())
    retrying = lg.blind_retries(lambda: lg.post(lb.url + "/agent?spec=ttft=45", read_timeout=30), attempts=3)
    blind = sl.record(retrying, expected=40, understand=lg.read_event)
    calls = mock.journal.chat()[before:]
    lg.settle(lb, mock)   # let the abandoned exchanges end
print(blind)
print("requests sent:", retrying.attempts, "| client errors:", retrying.errors)
print("graph runs that called the model:", len(calls), "| model answers completed anyway:",
      sum(c.ended == "complete" for c in calls))
print("tickets opened:", [(rid, workers[pid]) for _, pid, rid in ledger.effects()])

# %% [markdown]
# Three runs, three tickets, on both workers, and no answer. The runs the client gave up on were
# cancelled when their connection closed (the app logs `STREAM CANCELLED`), but only after
# `open_ticket` had done its work; and their model calls, made from a sync node in a worker thread
# that cancellation cannot reach, ran to the end: three full answers paid for, none delivered.
#
# **Fixed.** `/agent/safe`: the same graph; the client sends an `Idempotency-Key` and does not retry;
# the endpoint is `/stream`'s (a keep-alive comment every 15 s, so the 30 s read timeout never sees a
# silence); `open_ticket` checks the key in the shared ledger. To test the key, the same request is
# sent twice at once (a double click, or a retry that did happen), so both workers run it.

# %%
ledger.clear()
with sl.Balancer([app, app_b]) as lb:
    before = len(mock.journal.chat())
    key = {"Idempotency-Key": "order-42"}
    safe, duplicate = await asyncio.gather(
        *(sl.arecord(lg.post(lb.url + "/agent/safe?spec=ttft=45", read_timeout=30, headers=key), expected=40,
                     understand=lg.read_event) for _ in range(2)))
    model_runs = len(mock.journal.chat()) - before
print(safe, "|", duplicate)
print("graph runs that called the model:", model_runs)
print("tickets opened:", len(ledger.effects()), "for keys", sorted({k for k, _, _ in ledger.effects()}))

# %% [markdown]
# **Measured.**

# %%
sl.compare(broken=blind, fixed=safe, title="model needs 45 s to its first token, client read timeout 30 s")

# %% [markdown]
# The key protects the side effect: one ticket whichever worker got there first. It does not save
# the second model run: to attach a duplicate request to the run already going, the run has to live
# outside the request (the job of section 2).
#
# **Verdict:** reproduced — blind retries on timeout made three runs and three tickets on two workers
# and no answer; no retry, keep-alive and an idempotency key gave a complete answer and one ticket.

# %% [markdown]
# ## 6. The article's debugging steps (Aarons, LangGraph scaling)
#
# **Step 1: check where the stream stops; log every emitted event.** First, what each `stream_mode`
# emits for the one-node model graph, and whether the model request was streamed at all:

# %%
rows = []
for mode in ("values", "updates", "messages", "custom", "debug", "tasks", "checkpoints"):
    before = len(mock.journal.chat())
    items = list(model_graph.stream({"input": "hello"}, stream_mode=mode))
    tokens = sum(1 for i in items if isinstance(i, tuple) and getattr(i[0], "content", ""))
    rows.append((mode, len(items), tokens, mock.journal.chat()[before].stream))
events = {}
async for event in model_graph.astream_events({"input": "hello"}, version="v2"):
    events[event["event"]] = events.get(event["event"], 0) + 1
print("stream_mode   items  LLM tokens  model request streamed")
for mode, n, tokens, streamed in rows:
    print(f"{mode:12} {n:6}  {tokens:10}  {streamed}")
print("astream_events(version='v2'):", events)

# %% [markdown]
# Only `"messages"` (and `astream_events`, whose `on_chat_model_stream` events carry the tokens)
# yields tokens at all; in every other mode LangChain does not even ask the model to stream, and
# `"custom"` and `"checkpoints"` yield nothing for this graph. A stream that "stops before the final
# output" in `"updates"` mode has sent nothing yet.
#
# Then the app's own log beside the client: `/stream/plain` with a 75 s pause after 10 tokens, once
# straight to the single uvicorn worker, once through a load balancer (idle timeout 100 s) and nginx
# (`proxy_read_timeout 60s`). Each request carries an `X-Request-ID`, so its log lines can be found.

# %%
PAUSE = "/stream/plain?spec=stall@10=75,tokens=20"
with sl.proxy_for(upstream=app.url, faults=hops.nginx(proxy_read_timeout=60)) as front, \
        sl.Balancer([front], idle_timeout=100) as lb:
    direct, chain = await asyncio.gather(
        sl.arecord(lg.post(app.url + PAUSE, headers={"X-Request-ID": "direct"}), expected=20, understand=lg.read_event),
        sl.arecord(lg.post(lb.url + PAUSE, headers={"X-Request-ID": "chain"}, read_timeout=120), expected=20,
                   understand=lg.read_event))
    lg.settle(lb)
fired = {"nginx proxy_read_timeout 60 s": any(e.kind == "fault" for e in front.log.events),
         "load balancer idle timeout 100 s": any(e.kind == "fault" for e in lb.log.events)}
print("direct:", direct)
print("chain: ", chain)
for rid in ("direct", "chain"):
    lines = app.log_lines(rf"rid={rid} .*(start|end after|CANCELLED)")
    print(f"app log for {rid}:", [line.split(" /stream/plain ", 1)[-1] for line in lines])

# %% [markdown]
# Through the chain the app's log stops with `STREAM CANCELLED after 10 events`: the app was still
# producing when the connection was taken away, so the cut is in the infrastructure, not in the
# graph. Had the graph failed, the log would end with `ERROR ...` instead (exercise 2).
#
# **Step 2: run it with one worker.** That is the `direct` run above: one uvicorn process, no hop, and
# the same request completes. Behind the hops it does not, so the hops are the suspects.
#
# **Step 3: inspect the timeouts at every hop.** The ones this notebook configures, and which one
# fired in the chain run:

# %%
hop_timeouts = [
    ("client (httpx in this notebook)", "read timeout", "120 s (httpx's own default: 5 s)"),
    ("load balancer", "idle timeout", "100 s (AWS ALB default: 60 s)"),
    ("nginx", "proxy_read_timeout", "60 s (nginx default)"),
    ("gunicorn, sync workers", "--timeout", "30 s: caps every streamed response (section 1)"),
    ("uvicorn", "none for a response", "--timeout-keep-alive 5 s only idles out *between* requests"),
    ("ChatOpenAI in the app", "openai SDK timeout", "600 s, max_retries=0"),
]
for hop, setting, value in hop_timeouts:
    print(f"{hop:32} {setting:20} {value}")
print("\nfired in the chain run:", [name for name, hit in fired.items() if hit])

# %% [markdown]
# **Step 4: reduce the graph to one node.** `/report` (the slow node, then the model) against `/run`
# (the model alone), through nginx with its default 60 s timeout:

# %%
with sl.proxy_for(upstream=app.url, faults=hops.nginx()) as front:
    full = sl.record(lg.post(front.url + "/report"), expected=40, understand=lg.read_event, label="slow_node -> model")
    one = sl.record(lg.post(front.url + "/run"), expected=40, understand=lg.read_event, label="model only")
sl.table([full, one])

# %% [markdown]
# Without the slow node the cutoff is gone; adding it back brings it back.
#
# **Verdict:** partly — steps 1, 2 and 4 locate a proxy timeout as the article says, once step 1
# uses `stream_mode="messages"` (in the default `"updates"` there is no token to log); step 3's list
# names the right settings, but uvicorn has no response timeout at all, and the one that cut section
# 1 (gunicorn's sync `--timeout`) stops the app's log and gives the client no error, so step 1's rule
# would blame the app.

# %% [markdown]
# ## 7. Summary
#
# | # | pattern (article's claim) | verdict | lesson |
# |---|---|---|---|
# | 1 | sync multi-worker WSGI + buffering proxy cuts streams; ASGI `StreamingResponse` SSE fixes it | partly | gunicorn sync workers cut any stream at `--timeout`, and behind nginx the cut looks complete; `proxy_buffering on` does not hold SSE; the fixed endpoint as written sends one Python-repr event, not tokens and not JSON |
# | 2 | a slow node outlives a proxy timeout; enqueue the work | reproduced | a 90 s node is cut by nginx's 60 s after a `200` with no event; a job plus short polls gets through (keep jobs in a shared store) |
# | 3 | `graph.stream()` in `async def` blocks and delivers partially; use `astream()` | partly | requests are served one after another and health checks wait a whole answer; answers arrive complete but late, cut only by a shorter timeout |
# | 4 | growing state slows serialization until a hop cuts | partly | bytes grow quadratically in `"values"` streams and a size limit cuts; serialization stays in milliseconds, no timeout fires |
# | 5 | blind retries on timeout duplicate runs | reproduced | three runs, three tickets on two workers, three model answers paid for and none delivered; keep-alive, no blind retry and an idempotency key give one ticket |
# | 6 | debugging: log events, one worker, timeouts, one node | partly | log in `stream_mode="messages"`; read the app server's log too: a sync worker killed at `--timeout` stops the app's log and gives the client no error |
#
# LangGraph streaming is as good as the weakest hop, as the article says; but on these versions the
# weakest hops are the app server's worker timeout and a stream with no tokens and no end marker, not
# proxy buffering.

# %% [markdown]
# ## 8. Exercises
#
# 1. Section 2's job polling failed behind a round-robin balancer. Make it work with the balancer's
#    cookie stickiness (`sl.Balancer(..., sticky="cookie")`; `httpx.Client` keeps cookies).
# 2. Step 1 says: if the app's log stops before the final output, the problem is inside the app. Make
#    the *model* cut its stream after 10 tokens (`?spec=cut@10,tokens=20`) and read the app's log line
#    for that request: how does it end, and what does the client see?
# 3. LangGraph 1.2's default `recursion_limit` is 10007. Loop the article's `bad_node` with no limit set:
#    what stops it, and how many bytes would a `"values"` stream of that run have carried?
# 4. `/stream` sends a keep-alive comment every 15 s, which keeps nginx's 60 s idle timeout away. Does
#    it survive an API gateway's 29 s *deadline* (`hops.api_gateway()`) when the model needs 45 s to
#    its first token?

# %% tags=["solution"]
# Solution 1: the first answer sets a cookie naming the worker; the polls carry it back.
with sl.Balancer([app, app_b], sticky="cookie") as lb:
    sticky = sl.record(lambda: lg.follow_job(lb.url, every=10), expected=40, understand=lg.read_event)
print(sticky)

# %% tags=["solution"]
# Solution 2: the app's log ends with the error it raised; the client sees a cut, not a clean end.
cut = sl.record(lg.post(app.url + "/stream/plain?spec=cut@10,tokens=20", headers={"X-Request-ID": "model-cut"}),
                expected=20, understand=lg.read_event)
print("client:", cut)
print("app log:", [line.split(" /stream/plain ", 1)[-1][:60] for line in app.log_lines(r"rid=model-cut .*ERROR")])

# %% tags=["solution"]
# Solution 3: LangGraph stops the loop with GraphRecursionError after 10007 steps; the bytes follow
# from the size of one history item (the state holds k items at step k).
loop = StateGraph(dict)
loop.add_node("bad_node", lg.bad_node)
loop.add_edge(START, "bad_node")
loop.add_edge("bad_node", "bad_node")
try:
    final = loop.compile().invoke({"input": "hello"})
except Exception as exc:
    print(f"{type(exc).__module__}.{type(exc).__name__}: {str(exc).splitlines()[0]}")
# After the first step the state is {"history": [k items]} (StateGraph(dict) replaces it), so its JSON
# size is that of the empty history plus k items and k - 1 separators.
item = len(json.dumps({"role": "assistant", "content": "..."}))
sizes = [len(json.dumps({"input": "hello"}))] + [len(json.dumps({"history": []})) + k * item + 2 * (k - 1)
                                                 for k in range(1, 10008)]
print(f"a values stream of that run: {len(sizes)} states, the last {sizes[-1] / 1e3:.0f} kB, "
      f"{sum(sizes) / 1e9:.2f} GB in all")

# %% tags=["solution"]
# Solution 4: no: a deadline counts the whole request, however many bytes (or pings) flow.
with sl.proxy_for(upstream=app.url, faults=hops.api_gateway(timeout=29)) as gateway:
    gated = sl.record(lg.post(gateway.url + "/stream?spec=ttft=45"), expected=40, understand=lg.read_event)
print(gated)

# %%
lg.settle(mock)   # model calls of runs whose client left (a sync node cannot be cancelled) finish first
for server in (app, app_b, mock):
    server.stop()
quick_llm.root_client.close()
await quick_llm.root_async_client.close()
ledger.close()
print("running servers:", sl.running_servers())
