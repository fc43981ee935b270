# Source of notebooks/02_langchain.ipynb (build: .venv/bin/python tools/nb.py build notebooks/src/02_langchain.py)

# %% [markdown]
# # 02 · LangChain: why a `ChatOpenAI` stream gets cut when the app scales
#
# **The question.** Cyprian Aarons' article *How to Fix 'streaming response cutoff when scaling' in
# LangChain (Python)* (no date given; cited below as *LangChain scaling*) says a stream that works on
# one local worker gets cut "when scaling", and blames, in this order: a handler that buffers the
# answer, proxy buffering, gunicorn's worker timeout, sync calls in async code, clients that give up,
# and state shared between requests. This notebook runs each pattern for real: the article's FastAPI
# handlers with the real `langchain_openai.ChatOpenAI` inside, under real uvicorn and gunicorn
# processes, behind real nginx, talking over loopback to streamlab's mock model. For every pattern it
# shows the broken code failing, the fixed code working, what was measured, and whether the article's
# explanation holds on the pinned versions.
#
# 0. Setup
# 1. Buffered JSON vs an SSE endpoint (Aarons, LangChain scaling)
# 2. Proxy buffering on vs off (Aarons, LangChain scaling)
# 3. gunicorn --timeout 30 vs --timeout 180 (Aarons, LangChain scaling)
# 4. A sync invoke inside an async endpoint vs astream (Aarons, LangChain scaling)
# 5. A client that gives up early (Aarons, LangChain scaling)
# 6. A shared token buffer vs per-request state (Aarons, LangChain scaling)
# 7. The article's debugging steps (Aarons, LangChain scaling)
# 8. LangChain's own timeouts, and what a stall does to them
# 9. Summary
# 10. Exercises

# %% [markdown]
# ## 0. Setup
#
# The versions are pinned; the stored outputs were made with them. `sl.offline()` switches off
# LangSmith tracing and every other telemetry channel (also in the app-server subprocesses) and refuses
# connections that would leave loopback. `sl.time_scale(0.02)` runs one scenario second in 20 ms: every
# duration below (model timing, nginx and gunicorn timeouts, client timeouts) is written and printed in
# production seconds.

# %%
import asyncio
import re
import statistics
import time

import httpx
from langchain_core.callbacks import BaseCallbackHandler
from langchain_openai import ChatOpenAI

import streamlab as sl
from streamlab import Abort, Balancer, Gunicorn, HTTPStream, Uvicorn, hops, proxy_for
from streamlab.faults import Stall
from streamlab.frameworks.langchain import (TERMINATION, HealthProbe, chunk_timeouts, endpoint, first_bytes, quiet,
                                            record_json, record_sse, timeout_defaults, together)

print(sl.require(langchain_openai="1.7.3", langchain_core="1.7.2", openai="2.54.0", httpx="0.28.1",
                 fastapi="0.165.0", sse_starlette="3.7.0", uvicorn="0.54.0", gunicorn="27.0.1",
                 uvicorn_worker="0.4.0"))
sl.offline()
sl.time_scale(0.02)
print("one scenario second runs in", sl.current_time_scale(), "s of wall-clock time")

# %% [markdown]
# The pieces, from the client inwards: our client (httpx, like a browser's `fetch`), optionally nginx,
# an app server running a FastAPI app whose handlers call `ChatOpenAI(base_url=<mock>).astream(...)`,
# and the mock model. The app (`streamlab.frameworks.langchain:combined_app`) holds the routes of
# streamlab's demo apps for this article (`streamlab/apps/chat.py`, `blocking.py`, `shared_state.py`,
# `jobs.py`), so one server process serves every pattern. Each request picks the model's behaviour with
# `?spec=` (`tokens=40,itl=2` is a 40-token answer at one token every 2 s; see `streamlab.faults`).
# Two app servers run throughout: the article's `uvicorn app:app --workers 1 --timeout-keep-alive 75`,
# and its `gunicorn -k uvicorn.workers.UvicornWorker --workers 4`. That one gets `--timeout 600`:
# gunicorn's timeout is the subject of section 3 only, and at this time scale 180 s would be under 4 s of
# wall clock, close to gunicorn's own heartbeat period. (`--preload` only makes the four workers start
# faster here.)

# %%
mock = sl.MockLLM(tokens=20, ttft=1, itl=1).start()   # by default: 20 tokens, the first after 1 s, then 1 per s
ENV = {"STREAMLAB_MODEL_URL": mock.base_url}           # the apps build ChatOpenAI(base_url=<this>, ...)
APP = "streamlab.frameworks.langchain:combined_app"

one = Uvicorn(APP, workers=1, timeout_keep_alive=75, env=ENV, extra_args=["--factory"]).start()
four = Gunicorn(APP + "()", workers=4, timeout=600, env=ENV, extra_args=["--preload"]).start()
first_bytes(endpoint(one, "/chat/sse", spec="tokens=2"), clients=2)   # first requests warm each process up
first_bytes(endpoint(four, "/chat/sse", spec="tokens=2"), clients=8)


def nginx(upstream=one, **settings):
    """nginx in front of `upstream`, set like a `location` block: nginx(proxy_buffering=False, ...)."""
    return proxy_for(upstream=upstream, faults=hops.nginx(**settings))


print(f"uvicorn: {len(one.worker_pids())} worker process; gunicorn: {len(four.worker_pids())} worker processes")

# %% [markdown]
# Which proxy runs: real nginx when it is installed, else streamlab's embedded proxy, which reproduces
# what nginx 1.22.1 was measured to do (`streamlab/hops.py`). Every outcome below is the same with
# either; only this cell's output differs.

# %% tags=["nbval-ignore-output"]
with nginx() as proxy:
    print("proxy in front of the apps:", proxy.kind)

# %% [markdown]
# ## 1. Buffered JSON vs an SSE endpoint (Aarons, LangChain scaling)
#
# **The claim.** The article's "most common cause": a FastAPI handler that runs `llm.astream(...)`,
# collects every chunk and returns `{"text": ...}` is not streaming at all, so with the latency and
# restarts that scaling brings the client "sees truncated output or a timeout". Its fix is an
# `EventSourceResponse` (sse-starlette) that yields one `token` event per chunk and a `done` event. It
# also names "multiple app workers without sticky session handling" as the #1 cause.
#
# The two handlers are `/chat/buffered` and `/chat/sse` in `streamlab/apps/chat.py`, in short:
#
# ```python
# @app.get("/chat/buffered")                      # broken
# async def chat_buffered(q: str = PROMPT):
#     chunks = [chunk.content async for chunk in llm.astream(q)]
#     return {"text": "".join(chunks)}
#
# @app.get("/chat/sse")                           # fixed
# async def chat_sse(q: str = PROMPT):
#     async def events():
#         async for chunk in llm.astream(q):
#             if chunk.content:
#                 yield {"event": "token", "data": chunk.content}
#         yield {"event": "done", "data": "[DONE]"}
#     return EventSourceResponse(events())
# ```
#
# **Broken**: an answer that takes 81 s (40 tokens, one every 2 s), read through nginx with its default
# `proxy_read_timeout` of 60 s (the article's location block raises it to 300 s; many do not).

# %%
LONG = "tokens=40,ttft=1,itl=2"
with nginx() as proxy:                                  # nginx defaults: proxy_read_timeout 60 s
    broken, fixed = together(
        lambda: record_json(endpoint(proxy, "/chat/buffered", spec=LONG), expected=40, rid="p1-buffered"),
        lambda: record_sse(endpoint(proxy, "/chat/sse", spec=LONG), expected=40, itl=2, rid="p1-sse"))

print(broken)
print("the client got:", broken.error.response.status_code, broken.error.response.reason_phrase)
one.wait_for_log("rid=p1-buffered .*for nobody")
print("\n".join(quiet(line) for line in one.log_lines(r"rid=p1-buffered .*(DISCONNECT|done)")))

# %% [markdown]
# nginx gave up waiting for the response head after 60 s and answered `504`. The handler never
# noticed: it went on collecting all 40 tokens, and only when it was about to reply did it find the
# client gone. The model did the whole answer for nobody.
#
# **Fixed**: the SSE handler, through the same nginx, at the same time.

# %%
print(fixed)
print("\n".join(quiet(line) for line in one.log_lines(r"rid=p1-sse .*(DISCONNECT|done)")))

# %% [markdown]
# **Measured**: the two side by side.

# %%
sl.compare(broken=broken, fixed=fixed, title="an 81 s answer through nginx (proxy_read_timeout 60 s)")

# %% [markdown]
# Every token resets nginx's read timeout, so the SSE stream of the same 81 s answer passes; the
# buffered handler sends nothing for 81 s and is cut at 60 s.
#
# **Measured at scale**: time to first byte (TTFB) and to first token (TTFT) at the client for both
# handlers, with 1 and 4 workers, 1 and 10 concurrent clients, direct and through nginx. The answer is
# 8 tokens, the first after 4 s, the last after 18 s. "streams" is yes when, for every client, tokens
# kept arriving for more than 7 s after the first one (the model spends 14 s between its first and last).

# %%
SHORT = "tokens=8,ttft=4,itl=2"
SERVERS = {"uvicorn, 1 worker": one, "gunicorn, 4 workers": four}
rows = []
for server_name, server in SERVERS.items():
    with nginx(upstream=server) as proxy:
        for route in ("/chat/buffered", "/chat/sse"):
            for path_name, front in (("direct", server), ("nginx", proxy)):
                for clients in (1, 10):
                    rid = f"{'w4' if server is four else 'w1'}-{route.rsplit('/', 1)[1]}-{path_name}-{clients}"
                    hits = first_bytes(endpoint(front, route, spec=SHORT), clients=clients, rid=rid)
                    med = {k: statistics.median(getattr(h, k) for h in hits) for k in ("ttfb", "ttft", "e2e")}
                    rows.append((server_name, route, path_name, clients, med,
                                 sum(h.status == 200 and h.tokens == 8 for h in hits),
                                 all(h.e2e - h.ttft > 7 for h in hits)))

print(f"{'server':20} {'route':15} {'path':7} {'clients':>7} {'TTFB p50':>10} {'TTFT p50':>10} "
      f"{'E2E p50':>10}  complete  streams")
for server_name, route, path_name, clients, med, ok, streams in rows:
    print(f"{server_name:20} {route:15} {path_name:7} {clients:>7} {med['ttfb']:>8.3f} s {med['ttft']:>8.3f} s "
          f"{med['e2e']:>8.3f} s  {ok:>4}/{clients:<3}  {'yes' if streams else 'no'}")

# %% [markdown]
# The buffered handler's first byte is its last byte in every setting: workers, clients and nginx
# change nothing about that. The SSE handler's first token comes at the model's own TTFT (plus queueing
# with 10 clients on one worker). Does "sticky sessions" matter for one stream? The app logs its
# process id with every token; here is how many worker processes each request's tokens came from on the
# 4-worker server:

# %%
workers_per_request = {}
for line in four.log_lines(r"rid=w4-"):
    pid, rid = re.search(r"pid=(\d+) rid=(\S+)", line).groups()
    workers_per_request.setdefault(rid, set()).add(pid)
print(f"requests on the 4-worker server: {len(workers_per_request)}; "
      f"served by more than one worker process: {sum(len(p) > 1 for p in workers_per_request.values())}")

# %% [markdown]
# One HTTP request is one TCP connection, accepted by one worker, and it stays there until it ends:
# a load balancer never moves a live stream. Affinity matters only when a client makes *several*
# requests that depend on one worker's memory (section 7, step 4).
#
# **Verdict:** partly — the buffering handler is reproduced (first token = last byte at every scale,
# and a `504` from nginx's 60 s read timeout on an 81 s answer while the model works on for nobody), but
# more workers and more clients change nothing, and no stream ever left its worker, so "multiple
# workers without sticky sessions" is not what cuts a stream (the three cells above).

# %% [markdown]
# ## 2. Proxy buffering on vs off (Aarons, LangChain scaling)
#
# **The claim.** "Nginx often buffers upstream responses unless you disable it": with `proxy_buffering`
# on (nginx's default) the client may see nothing until the response ends, and then think the stream was
# cut. The fix is `proxy_buffering off;` in the location block.
#
# sse-starlette's `EventSourceResponse` (the article's own fix for pattern 1) always sends the response
# header `X-Accel-Buffering: no`, which turns nginx's buffering off for that response whatever the
# config says. To see what the setting does, we use `/chat/plain`: the same stream written by hand as a
# `StreamingResponse(media_type="text/event-stream")` with only `Cache-Control: no-cache`, as many apps
# do (`?accel=no` adds the header).
#
# **Broken?** The article's broken config: nginx with `proxy_buffering on`.

# %%
with nginx() as proxy:                                  # proxy_buffering on, nginx's default
    as_article = record_sse(endpoint(proxy, "/chat/plain"), expected=20, itl=1)
print(as_article, f"- first token at {as_article.ttft:.3f} s of {as_article.e2e:.3f} s")

# %% [markdown]
# Not held back: nginx 1.22.1 with buffering on passes every read from the app to the client at once.
# (streamlab's nginx conformance measurements, summed up in `streamlab/hops.py`, add that it holds only
# the response *head* until the first body bytes, and reads ahead of a client that reads slowly.)
# What does hold an SSE stream back is compression: `gzip on` with `text/event-stream` in
# `gzip_types` (a common "compress everything" line) makes nginx collect output until a 4 KiB gzip
# buffer is full or the stream ends. Clients that accept gzip (browsers, httpx, the
# openai SDK) then get the whole answer at the end, headers included.
#
# **Broken** (for real): buffering on and gzip for `text/event-stream`.

# %%
GZIP_SSE = dict(gzip=True, gzip_types=("text/event-stream",))
with nginx(**GZIP_SSE) as proxy:
    broken = record_sse(endpoint(proxy, "/chat/plain"), expected=20, itl=1)
print(broken, f"- first token at {broken.ttft:.3f} s of {broken.e2e:.3f} s")

# %% [markdown]
# **Fixed**: the article's `proxy_buffering off;`, same gzip settings. (With buffering off, nginx flushes
# its gzip stream after every read.)

# %%
with nginx(proxy_buffering=False, **GZIP_SSE) as proxy:
    fixed = record_sse(endpoint(proxy, "/chat/plain"), expected=20, itl=1)
print(fixed, f"- first token at {fixed.ttft:.3f} s of {fixed.e2e:.3f} s")

# %% [markdown]
# **Measured**: broken beside fixed, then every combination of the buffering-related settings and
# response headers (a 10-token answer, one token per second).

# %%
sl.compare(broken=broken, fixed=fixed, title="nginx gzip on text/event-stream: proxy_buffering on vs off")

# %%
CONFIGS = {
    "proxy_buffering on (default)": {},
    "proxy_buffering off": dict(proxy_buffering=False),
    "gzip text/event-stream": GZIP_SSE,
    "gzip text/event-stream, buffering off": dict(proxy_buffering=False, **GZIP_SSE),
}
ROUTES = {"/chat/plain": {}, "/chat/plain + X-Accel-Buffering: no": {"accel": "no"},
          "/chat/sse (EventSourceResponse)": {}}
print(f"{'nginx config':38} {'route':38} {'outcome':9} {'TTFT':>9}")
for config_name, settings in CONFIGS.items():
    with nginx(**settings) as proxy:
        runs = together(*(lambda route=route, query=query: record_sse(
            endpoint(proxy, route.split(" ")[0], spec="tokens=10", **query), expected=10, itl=1)
            for route, query in ROUTES.items()))
    for route, run in zip(ROUTES, runs):
        print(f"{config_name:38} {route:38} {str(run.outcome):9} {run.ttft:>7.3f} s")

# %% [markdown]
# Only one combination holds tokens back: gzip on `text/event-stream` while buffering is on and the
# response does not say `X-Accel-Buffering: no`. Each of `proxy_buffering off`, the header, or leaving
# `text/event-stream` out of `gzip_types` fixes it; `EventSourceResponse` sends the header by itself.
#
# **Verdict:** partly — `proxy_buffering on` alone does not hold SSE events back on nginx 1.22.1
# (first cell); gzip on `text/event-stream` does, and the article's `proxy_buffering off` fixes that
# (the table above).

# %% [markdown]
# ## 3. gunicorn --timeout 30 vs --timeout 180 (Aarons, LangChain scaling)
#
# **The claim.** "Gunicorn and Uvicorn workers can kill long-lived requests": with
# `gunicorn -k uvicorn.workers.UvicornWorker --timeout 30` an LLM stream longer than 30 s is at risk;
# raise it to `--timeout 180`.
#
# gunicorn's `--timeout` is a heartbeat: each worker tells the arbiter "I am alive" every `timeout / 2`
# seconds, and a worker silent for longer than `timeout` is killed. A uvicorn worker sends that heartbeat
# from its event loop, once per wall-clock second at most. So the question is not how long the stream
# is, but whether something blocks the worker's event loop for longer than the timeout. We test both:
# `/stream/async` (`astream`, loop free) and `/stream/sync`, the same route iterating the *sync*
# `llm.stream()` inside the async handler, so the loop waits whenever the model pauses. The model pauses
# for 55 s after the 4th token, something a slow tool call or an overloaded backend does.
#
# gunicorn counts whole wall-clock seconds and checks once a second, so this section runs at a time
# scale of 0.1 (30 s take 3 s); the notebook's 0.02 would turn `--timeout 30` into 0.6 s.

# %%
sl.time_scale(0.1)
timeout_30 = Gunicorn(APP + "()", workers=1, timeout=30, env=ENV).start()
timeout_180 = Gunicorn(APP + "()", workers=1, timeout=180, env=ENV).start()
print("gunicorn -k uvicorn_worker.UvicornWorker --workers 1 --timeout 30, and the same with --timeout 180")

# %% [markdown]
# **Broken** and **Fixed** run at the same time: the sync stream with the 55 s pause under
# `--timeout 30`, and under `--timeout 180`. Before the broken run, the `--timeout 30` server also serves
# a steady 40 s `astream` stream.

# %%
STALL_55 = "tokens=12,itl=1,stall@4=55"     # 12 tokens, one per second, a 55 s pause after the 4th
STEADY_40 = "tokens=40,itl=1"               # 40 s of tokens, longer than --timeout 30


def on_timeout_30():
    steady = record_sse(endpoint(timeout_30, "/stream/async", spec=STEADY_40), expected=40, itl=1, rid="p3-async")
    blocked = record_sse(endpoint(timeout_30, "/stream/sync", spec=STALL_55), expected=12, itl=1, rid="p3-sync-30")
    return steady, blocked


(steady, broken), fixed = together(on_timeout_30, lambda: record_sse(
    endpoint(timeout_180, "/stream/sync", spec=STALL_55), expected=12, itl=1, rid="p3-sync-180"))

print("--timeout 30: ", broken, "-", broken.error)
timeout_30.wait_for_log("SIGABRT")  # gunicorn logs the kill a moment after the timeout line
print("\n".join(quiet(line) for line in timeout_30.log_lines(r"rid=p3-sync-30 .*(start|done)|WORKER TIMEOUT|SIGABRT")))

# %% [markdown]
# gunicorn's arbiter logged `WORKER TIMEOUT`, sent `SIGABRT`, and the worker died in the middle of the
# pause; the client got a cut HTTP body (`httpx.RemoteProtocolError`, "incomplete chunked read") after
# 4 tokens, and the app logged no end at all. The arbiter then booted a fresh worker.
#
# **Fixed**: `--timeout 180`, same stream, same pause.

# %%
print("--timeout 180:", fixed)
print("\n".join(quiet(line) for line in timeout_180.log_lines(r"rid=p3-sync-180 .*(start|done)|WORKER TIMEOUT")))

# %% [markdown]
# **Measured**:

# %%
sl.compare(broken=broken, fixed=fixed, title="sync stream with a 55 s model pause: --timeout 30 vs 180")

# %% [markdown]
# And when gunicorn does *not* kill: the steady 40 s `astream` stream on the `--timeout 30` server.

# %%
print("astream, 40 s, --timeout 30:", steady)
print("\n".join(quiet(line) for line in timeout_30.log_lines(r"rid=p3-async .*(start|done)")))
print("WORKER TIMEOUT lines in the --timeout 30 log:", len(timeout_30.log_lines("WORKER TIMEOUT")))

# %%
timeout_30.stop()
timeout_180.stop()
sl.time_scale(0.02)
print("gunicorn servers stopped (their logs are kept for section 7); time scale back to", sl.current_time_scale())

# %% [markdown]
# A stream longer than `--timeout` is safe on a uvicorn worker whose loop is free, however long it runs.
# What the timeout kills is a *blocked* worker, and with it every stream that worker was serving. Raising
# it to 180 s let this 55 s block pass, but a longer one would not be safe: with heartbeats every 90 s,
# a block of more than 90 s may be killed (depending on when the last heartbeat was) and one of more than
# 180 s always is; and while it lasts, every other request on that worker waits (section 4).
#
# **Verdict:** partly — `--timeout 30` did kill the stream and `--timeout 180` saved it, but only
# because sync code blocked the event loop; a 40 s `astream` stream under `--timeout 30` was never
# touched (the cells above). The lasting fix is `astream`, not a bigger timeout.

# %% [markdown]
# ## 4. A sync invoke inside an async endpoint vs astream (Aarons, LangChain scaling)
#
# **The claim.** Calling `llm.invoke()` in an `async def` endpoint blocks the event loop and stalls
# token delivery; use `astream` (or `ainvoke`).
#
# What does it stall? One uvicorn worker serves a streaming request (the *victim*, `/stream/async`, 20
# tokens) while a second request arrives 3 s later whose handler waits 41 s for a 40-token answer, with
# `llm.invoke()` (**broken**, `/invoke/sync`) or `await llm.ainvoke()` (**fixed**, `/invoke/async`). A
# health check polls `/health` every 2 s meanwhile.

# %%
def victim_and_culprit(culprit_route):
    with HealthProbe(endpoint(one, "/health"), every=2) as health:
        victim, _ = together(
            lambda: record_sse(endpoint(one, "/stream/async"), expected=20, itl=1, rid=f"p4-victim{culprit_route}"),
            lambda: record_json(endpoint(one, culprit_route, spec="tokens=40"), expected=40),
            stagger=3)
    return victim, health.worst


broken, broken_health = victim_and_culprit("/invoke/sync")
print("victim:", broken, f"- longest silence {max(broken.itls):.3f} s")
print(f"slowest /health answer: {broken_health:.3f} s - over 20 s: {broken_health > 20}")

# %% [markdown]
# **Fixed**: the same two requests with `await llm.ainvoke()`.

# %%
fixed, fixed_health = victim_and_culprit("/invoke/async")
print("victim:", fixed, f"- longest silence {max(fixed.itls):.3f} s")
print(f"slowest /health answer: {fixed_health:.3f} s - over 20 s: {fixed_health > 20}")

# %% [markdown]
# **Measured**:

# %%
comparison = sl.compare(broken=broken, fixed=fixed, title="a stream sharing its worker with invoke() vs ainvoke()")
print(comparison)
print("longest silence in the victim's stream over 20 s:", {"broken": max(broken.itls) > 20,
                                                            "fixed": max(fixed.itls) > 20})

# %% [markdown]
# With `invoke()` the whole worker froze for the 41 s of the other answer: the victim's tokens piled up
# and arrived in one burst at the end, and `/health` did not answer for the same time (a load balancer
# probing it would mark the worker dead). Under gunicorn the same freeze stops the heartbeat (section 3).
# The article also warns about callback handlers doing blocking I/O per token; on langchain-core 1.7.2 a
# sync handler in an async run is called in a thread pool, so it slows only its own stream (exercise 1).
#
# **Verdict:** reproduced — `invoke()` inside `async def` froze every other stream and the health check
# on that worker for the whole answer; `ainvoke()` froze nothing (the cells above).

# %% [markdown]
# ## 5. A client that gives up early (Aarons, LangChain scaling)
#
# **The claim.** Browsers and fetch wrappers abort streams (navigation, retries, an `AbortController`
# timer); then "LangChain will look like it cut off even though the server was still producing tokens".
#
# **Broken**: a client that aborts after 5 tokens, and one that aborts 18.5 s after sending the request
# (like `setTimeout(() => controller.abort(), 18500)`), through nginx, on a 56 s answer (a token every
# 5 s). At the same time, for comparison, a reader of the full answer (**fixed**) and a stream the
# *server* side cuts: the model connection drops after 8 tokens. (`seed` only tags the requests, so the
# model's log can tell them apart.)

# %%
SLOW = "tokens=12,ttft=1,itl=5"
with nginx() as proxy:
    broken, timed_out, fixed, cut = together(
        lambda: record_sse(endpoint(proxy, "/chat/sse", spec=SLOW + ",seed=1"), expected=12, itl=5,
                           rid="p5-abort-5", abort_after=5),
        lambda: HTTPStream(endpoint(proxy, "/chat/sse", spec=SLOW + ",seed=2"), unit="event",
                           headers={"X-Request-ID": "p5-abort-18s"}, abort=Abort(after=18.5)).run(),
        lambda: record_sse(endpoint(proxy, "/chat/sse", spec=SLOW + ",seed=3"), expected=12, itl=5, rid="p5-full"),
        lambda: record_sse(endpoint(proxy, "/chat/sse", spec=SLOW + ",seed=4,cut@8"), expected=12, itl=5,
                           rid="p5-cut"))
print("abort after 5 tokens:", broken)
print("abort after 18.5 s:   ", timed_out.outcome, "after", sum(e.get("event") == "token" for e in timed_out.events),
      "tokens")

# %% [markdown]
# **Fixed**: the client that reads to the end (its only fix is not to abort: a longer timer, or a
# reconnect that resumes, see `04_langgraph`).

# %%
print(fixed)

# %% [markdown]
# **Measured**:

# %%
sl.compare(broken=broken, fixed=fixed, title="the client aborts after 5 tokens vs reads to the end")

# %% [markdown]
# What each side saw. The app logs how each stream ended; the mock model journals how each model
# request ended.

# %%
for rid in ("p5-abort-5", "p5-abort-18s", "p5-full", "p5-cut"):
    for line in one.log_lines(rf"rid={rid} .*(DISCONNECT|CANCELLED|ERROR|done)"):
        print(re.sub(r"after \d+ body bytes", "after N body bytes", quiet(line)))
print()
for seed, rid in ((1, "p5-abort-5"), (2, "p5-abort-18s"), (3, "p5-full"), (4, "p5-cut")):
    entry = next(e for e in mock.journal.chat() if f"seed={seed}" in e.spec and "itl=5" in e.spec)
    print(f"model request of {rid:13}: {entry.tokens_sent:>2}/{entry.tokens_planned} tokens sent, ended: {entry.ended}")

# %% [markdown]
# How to tell a client abort from a server cut:
#
# | | client abort | server-side cut |
# |---|---|---|
# | the client | stopped by its own code (no exception); no `done` event | `httpx.RemoteProtocolError` (incomplete chunked read); no `done` event |
# | the app log | `CLIENT DISCONNECT (http.disconnect)`, then `STREAM CANCELLED (CancelledError)` | `ERROR RemoteProtocolError ...` and uvicorn's `Exception in ASGI application` traceback |
# | the model | the request ends `client disconnected` right after the abort | the request ends where it was cut |
#
# The article's "the server was still producing tokens" does not hold for the SSE handler on these
# versions: the disconnect cancels the handler's task, `astream` closes its HTTP response, and the model
# stops before its next token (5 of 12 sent). It does hold for the buffered handler of section 1, which
# produced all 40 tokens for a client that had received a `504` long before.
#
# **Verdict:** reproduced — an abort after 5 tokens or 18.5 s looks like a cutoff to the user, while the
# server logs a client disconnect, not an error (the cells above); but LangChain stops the model as soon
# as the client leaves, rather than producing on.

# %% [markdown]
# ## 6. A shared token buffer vs per-request state (Aarons, LangChain scaling)
#
# **The claim.** Streaming handlers must be stateless: "no shared mutable buffers across requests, no
# global token accumulators unless they're keyed per request".
#
# `streamlab/apps/shared_state.py` relays tokens through a list: a module-level one that each request
# clears when it starts (`/stream/shared`, **broken**), or a local one (`/stream/per_request`,
# **fixed**). The model echoes each prompt word by word (one word every 5 s), so every token says whose
# it is. Alice asks first; Bob asks 12.5 s later, on the same worker.

# %%
ALICE = "alpha bravo charlie delta echo foxtrot golf hotel"
BOB = "one two three four five six seven eight"
ECHO = "echo,tokens=8,ttft=0,itl=5"


def two_users(route):
    return together(
        lambda: record_sse(endpoint(one, route, q=ALICE, spec=ECHO), expected=8, itl=5, rid="alice"),
        lambda: record_sse(endpoint(one, route, q=BOB, spec=ECHO), expected=8, itl=5, rid="bob"),
        stagger=12.5)


def report(name, run, own, other):
    words = run.text.split()
    print(f"{name}: {run.outcome}, {run.tokens}/8 tokens: {run.text.strip()!r}")
    print(f"    other user's words: {sum(w in other.split() for w in words)}, "
          f"own words missing: {[w for w in own.split() if w not in words]}")


alone = record_sse(endpoint(one, "/stream/shared", q=ALICE, spec=ECHO), expected=8, itl=5)
report("alice alone, shared buffer", alone, ALICE, BOB)

# %% [markdown]
# Alone, the shared buffer is harmless. **Broken**: two users at once.

# %%
alice, bob = two_users("/stream/shared")
report("alice", alice, ALICE, BOB)
report("bob  ", bob, BOB, ALICE)

# %% [markdown]
# **Fixed**: per-request state.

# %%
alice_fixed, bob_fixed = two_users("/stream/per_request")
report("alice", alice_fixed, ALICE, BOB)
report("bob  ", bob_fixed, BOB, ALICE)

# %% [markdown]
# **Measured**: Alice's stream, shared buffer vs her own. Both end normally, with `done`: nothing but
# the words shows the damage.

# %%
sl.compare(broken=alice, fixed=alice_fixed, title="alice's stream: shared buffer vs per-request buffer")

# %% [markdown]
# Nothing is cut here in the HTTP sense: both streams end with their `done` event and no error. Bob's
# `clear()` made Alice's relay lose words and carry his; a reader would call it "truncated" or "garbled".
# The bug needs two requests in one process at once, so it shows with a single worker under load;
# spreading requests over more workers can only make such overlaps rarer, not remove them.
#
# **Verdict:** reproduced — a module-level token buffer mixes concurrent users' tokens in one worker and
# drops some of each user's own; a per-request buffer does not (the cells above).

# %% [markdown]
# ## 7. The article's debugging steps (Aarons, LangChain scaling)
#
# The article's steps, each as a runnable check.
#
# **Step 1: "add logging around token emission"; "if you only see output at the end, your code is
# buffering."** A callback handler that timestamps `on_llm_new_token` is the LangChain way to watch
# tokens arrive (the article names `StreamingStdOutCallbackHandler`, which prints them).

# %%
class TokenTimes(BaseCallbackHandler):
    def __init__(self):
        self.times = []

    def on_llm_new_token(self, token, **kwargs):
        if token:
            self.times.append(time.perf_counter())


token_log = TokenTimes()
llm = ChatOpenAI(model="streamlab-mock", base_url=mock.base_url, api_key="unused", streaming=True,
                 callbacks=[token_log])
t0 = time.perf_counter()
answer = llm.invoke("Explain RFC 9110 in 3 bullets")
scale = sl.current_time_scale()
print(f"{len(token_log.times)} tokens logged, the first at {(token_log.times[0] - t0) / scale:.3f} s, "
      f"the last at {(token_log.times[-1] - t0) / scale:.3f} s; answer: {len(answer.content.split())} words")

# %% [markdown]
# Now the same logging inside the app (the demo apps log every token they get from `astream`), for the
# buffered and the SSE handler at once, against what the client saw:

# %%
buffered, streamed = together(
    lambda: record_json(endpoint(one, "/chat/buffered", spec="tokens=10"), expected=10, rid="d1-buffered"),
    lambda: record_sse(endpoint(one, "/chat/sse", spec="tokens=10"), expected=10, itl=1, rid="d1-sse"))
for run, rid in ((buffered, "d1-buffered"), (streamed, "d1-sse")):
    logged = [(line.t - run.t_start) / scale for line in one.logs
              if f"rid={rid} " in line.text and " token " in line.text]
    print(f"{rid:12} app logged {len(logged)} tokens from {logged[0]:.3f} s to {logged[-1]:.3f} s; "
          f"the client's first token came at {run.ttft:.3f} s, spread over time: {run.chunks > 1}")

# %% [markdown]
# Token logs show whether the *model* streams to the app: here it does, in both handlers. They cannot
# show whether the *handler* streams to the client; only the client side (or a log of what the handler
# sends) shows that the buffered handler releases everything at once.
#
# **Step 2: "bypass your proxy/load balancer; hit uvicorn directly."** The hand-written SSE route through
# the gzip config of section 2, and directly:

# %%
with nginx(**GZIP_SSE) as proxy:
    via_proxy, direct = together(
        lambda: record_sse(endpoint(proxy, "/chat/plain", spec="tokens=10"), expected=10, itl=1),
        lambda: record_sse(endpoint(one, "/chat/plain", spec="tokens=10"), expected=10, itl=1))
print("through nginx:", via_proxy.outcome, f"(first token at {via_proxy.ttft:.3f} s)")
print("direct:       ", direct.outcome, f"(first token at {direct.ttft:.3f} s)")

# %% [markdown]
# The problem disappears without the proxy, so it is in the proxy: the step works as the article says.
#
# **Step 3: "inspect server termination logs"** for the four messages the article lists. Every app server
# of this notebook kept its log; here is where each message (or what the pinned servers print instead)
# appeared, with one example:

# %%
LOGS = {"uvicorn": one, "gunicorn 4 workers": four, "gunicorn --timeout 30": timeout_30,
        "gunicorn --timeout 180": timeout_180}
for message, pattern in TERMINATION.items():
    found = {name: server.log_lines(pattern) for name, server in LOGS.items()}
    where = [name for name, lines in found.items() if lines]
    example = next((sorted(map(quiet, lines))[0] for lines in found.values() if lines), None)
    print(f"{message:27} seen in: {', '.join(where) or 'none'}")
    if example:
        print(" " * 27, "e.g.", re.sub(r"after \d+ body bytes", "after N body bytes", example))
print(f"{'(server-side failure)':27} 'Exception in ASGI application' in uvicorn's log: "
      f"{bool(one.log_lines('Exception in ASGI application'))}")

# %% [markdown]
# What each tells: `WORKER TIMEOUT` (gunicorn 27 writes it in capitals, `(pid:N)`) means the server
# killed a worker whose event loop was blocked (section 3). A client disconnect and `CancelledError` mean
# the client left first (section 5). `BrokenPipeError` appeared in no log here: a uvicorn worker notes
# the closed socket itself, tells the app with `http.disconnect`, and silently drops whatever the app
# sends after that (uvicorn 0.54's `send()` returns without writing), so nothing ever writes into the
# broken pipe. An `ERROR` from the app with uvicorn's `Exception in ASGI application` means the server
# side failed (here, the model connection was cut).
#
# **Step 4: "reduce moving parts": one worker (`uvicorn app:app --workers 1 --timeout-keep-alive 75`),
# then reintroduce scaling; "if it only fails at >1 worker, suspect load balancing affinity or shared
# state".** Section 1 already ran every handler on 1 and on 4 workers:

# %%
outcome = {(r[1], r[2], r[3], r[0]): r[6] for r in rows}
print("same outcome with 1 and 4 workers, for every route, path and client count:",
      all(outcome[(route, path, n, "uvicorn, 1 worker")] == outcome[(route, path, n, "gunicorn, 4 workers")]
          for route, path, n, _ in outcome))

# %% [markdown]
# What does fail only with more than one worker is affinity: a client that makes two requests about one
# piece of in-memory state. The jobs routes (`streamlab/apps/jobs.py`) start a model run with
# `POST /jobs` and read it with `GET /jobs/{id}`; the job lives in the memory of the worker that created
# it. Behind a round-robin load balancer over two replicas, and with cookie affinity:

# %%
for sticky in (None, "cookie"):
    with Balancer([one, four], sticky=sticky) as balancer, httpx.Client() as client:
        job = client.post(balancer.url + "/jobs", json={"q": "Write the incident report", "spec": "tokens=4"}).json()
        status = client.get(balancer.url + f"/jobs/{job['id']}")
        print(f"sticky={sticky}: POST /jobs -> GET /jobs/<id> answered {status.status_code}",
              "(job found)" if status.status_code == 200 else "(job unknown in this worker)")

# %% [markdown]
# And shared state (section 6) failed with *one* worker as soon as two requests overlapped. So the
# article's rule is half right: "fails only with several workers" points at affinity; shared in-process
# state fails with one worker under concurrency, and more workers hide it.
#
# **Verdict:** partly — bypassing the proxy and reading termination logs find the right layer (steps 2
# and 3), but token-emission logs cannot see a buffering handler (step 1), the article's messages are
# spelled differently or never appear (`WORKER TIMEOUT`, no `BrokenPipeError` under uvicorn), and shared
# state fails with one worker (step 4).

# %% [markdown]
# ## 8. LangChain's own timeouts, and what a stall does to them
#
# The article treats `ChatOpenAI` as the innocent layer. Which timeouts does it run with? Read from the
# objects the installed version builds:

# %%
plain_llm = ChatOpenAI(model="streamlab-mock", base_url=mock.base_url, api_key="unused")
defaults = timeout_defaults(plain_llm)
for name, value in defaults.items():
    print(f"{name:22} {value}")

# %% [markdown]
# - `ChatOpenAI` passes `timeout=None` to the openai clients it builds, and the SDK takes `None` as "no
#   timeout": unlike the bare openai SDK (600 s read timeout), a `ChatOpenAI` left at its defaults waits
#   forever for the next byte.
# - On the async path LangChain adds its own bound, `stream_chunk_timeout`: 120 s without a parsed chunk
#   raises `StreamChunkTimeoutError`. The sync `stream()` has none.
# - `max_retries` is the SDK's 2; as notebook 00 shows, retries stop at the first byte of a stream.
# - The TCP options (keepalive, `TCP_USER_TIMEOUT` 120 s) bound only a *dead* peer; a live server that
#   sends nothing keeps acknowledging and never trips them.
#
# A model that stalls for 130 s after 5 tokens, read four ways at once (the chunk timeout is a
# wall-clock number, so we pass it the default's 120 s on our clock):

# %%
stalled = mock.base_url_for(Stall(at=5, seconds=130))
defaults_llm = ChatOpenAI(model="streamlab-mock", base_url=stalled, api_key="unused")
chunk_timeout_llm = ChatOpenAI(model="streamlab-mock", base_url=stalled, api_key="unused",
                               stream_chunk_timeout=120 * sl.current_time_scale())
timeout_30_llm = ChatOpenAI(model="streamlab-mock", base_url=stalled, api_key="unused",
                            timeout=30 * sl.current_time_scale(), max_retries=0)
PROMPT = "Summarize the claim"
with chunk_timeouts() as fired:  # langchain_openai's own warning, as a line here instead of bare stderr
    runs = await asyncio.gather(
        asyncio.to_thread(sl.record, lambda: defaults_llm.stream(PROMPT), expected=20, label="stream(), defaults"),
        sl.arecord(lambda: chunk_timeout_llm.astream(PROMPT), expected=20, label="astream(), chunk timeout 120 s"),
        asyncio.to_thread(sl.record, lambda: timeout_30_llm.stream(PROMPT), expected=20,
                          label="stream(), timeout=30"),
        sl.arecord(lambda: timeout_30_llm.astream(PROMPT), expected=20, label="astream(), timeout=30"))
for run in runs[1:]:
    print(f"{run.label}: {run.error_text}")
print(*fired, sep="\n")
sl.table(runs)

# %% [markdown]
# - **Defaults, sync `stream()`**: waited out the whole 130 s silence and then finished. Nothing in
#   `ChatOpenAI`'s defaults would have stopped it had the model never resumed.
# - **`astream()` with the default 120 s chunk timeout**: `stream_chunk_timeout` fired after 120 s without a
#   chunk: `StreamChunkTimeoutError` (a `TimeoutError`), with a message that names the setting. Inside a
#   FastAPI handler that is what turns a stalled model into an error instead of an open stream forever;
#   the app's own SSE pings do not reset it (they travel the other way).
# - **`timeout=30`**: both paths raise the transport's `httpx.ReadTimeout` after 30 s of silence. Like the
#   raw openai SDK (notebook 00), LangChain does not wrap a timeout that happens mid-stream.
#
# The mock journal shows the model side: the requests that timed out were closed by the client, so the
# model stopped; the one that waited got everything.

# %%
print(sorted(f"{e.tokens_sent}/{e.tokens_planned} tokens sent, {e.ended}" for e in mock.journal.chat()
             if e.spec == "stall@5=130"))

# %% [markdown]
# ## 9. Summary
#
# | # | pattern (Aarons, LangChain scaling) | verdict | lesson |
# |---|---|---|---|
# | 1 | buffered JSON vs SSE | partly | a handler that collects `astream()` sends its first byte last; behind a 60 s proxy timeout a long answer becomes a `504` while the model works on for nobody. Workers, clients and sticky sessions change nothing: a stream never leaves its worker |
# | 2 | proxy buffering on vs off | partly | nginx 1.22.1 `proxy_buffering on` passes SSE events at once; gzip on `text/event-stream` holds the whole answer. `proxy_buffering off`, `X-Accel-Buffering: no` (sent by `EventSourceResponse`) or no gzip for SSE fixes it |
# | 3 | gunicorn `--timeout 30` vs `180` | partly | `--timeout` is a heartbeat: it kills a worker whose event loop is blocked longer than the timeout, never a long `astream` stream; the real fix is not blocking the loop |
# | 4 | sync `invoke` in `async def` vs `astream` | reproduced | `invoke()` freezes every stream and the health check on its worker for the whole answer; `ainvoke`/`astream` do not |
# | 5 | a client that gives up early | reproduced | an abort looks like a cutoff to the user; the server logs `CLIENT DISCONNECT` + `CancelledError` (a cut logs an `ERROR`), and LangChain stops the model at once |
# | 6 | shared token buffer vs per-request state | reproduced | a module-level buffer mixes and drops concurrent users' tokens in one worker, with no error; keep state per request |
# | 7 | the debugging steps | partly | bypassing the proxy and reading termination logs work; token logs cannot see handler buffering, the messages are `WORKER TIMEOUT` / `http.disconnect` (no `BrokenPipeError` under uvicorn), and shared state fails with one worker |
# | 8 | LangChain's own timeouts | (not in the article) | `ChatOpenAI` defaults to no read timeout: sync `stream()` waits forever on a silent model; `astream()` has a 120 s chunk timeout; set `timeout=` yourself |
#
# Cutoffs "when scaling" came from the layers around LangChain, as the article says, but not always the
# ones it names: a proxy timeout meeting a buffering handler, gzip rather than `proxy_buffering`, and a
# blocked event loop rather than a short `--timeout`.

# %% [markdown]
# ## 10. Exercises
#
# 1. The article warns that a `StreamingStdOutCallbackHandler` doing blocking I/O on every token can
#    stall delivery. Attach a sync callback handler that sleeps 3 s (scenario) per token to
#    `ChatOpenAI.astream()` and measure (a) how long that stream takes and (b) whether a second
#    `astream()` running on the same event loop at the same time is slowed down too.
# 2. A model pauses for 90 s in the middle of an answer. Behind nginx's default 60 s
#    `proxy_read_timeout`, does `/chat/sse` (sse-starlette, which sends a keep-alive comment every 15 s)
#    survive? Does `/chat/plain`?
# 3. Using only the app server's log, write `how_it_ended(rid)` that says "client left", "server-side
#    error" or "complete" for each request of section 5.

# %% tags=["solution"]
# Solution 1: a sync handler runs in a thread pool during astream(): its stream slows, the loop does not.
class SlowHandler(BaseCallbackHandler):
    def on_llm_new_token(self, token, **kwargs):
        time.sleep(3 * sl.current_time_scale())          # 3 s of blocking I/O per token


slow_llm = ChatOpenAI(model="streamlab-mock", base_url=mock.base_url, api_key="unused", callbacks=[SlowHandler()])
slowed, other = await asyncio.gather(sl.arecord(lambda: slow_llm.astream("Summarize the claim"), expected=20),
                                     sl.arecord(lambda: plain_llm.astream("Summarize the claim"), expected=20))
print("with the slow handler:", slowed, f"- took {slowed.e2e:.3f} s")
print("the other stream:     ", other, f"- took {other.e2e:.3f} s")
print("the other stream finished within 40 s (it would take over 60 s if the loop were blocked):", other.e2e < 40)

# %% tags=["solution"]
# Solution 2: sse-starlette's keep-alive comments reset nginx's read timeout; the hand-written route has none.
PAUSE_90 = "tokens=10,itl=1,stall@5=90"
with nginx() as proxy:
    pinged, silent = together(
        lambda: record_sse(endpoint(proxy, "/chat/sse", spec=PAUSE_90), expected=10, itl=1),
        lambda: record_sse(endpoint(proxy, "/chat/plain", spec=PAUSE_90), expected=10, itl=1))
print("/chat/sse:  ", pinged)
print("/chat/plain:", silent)

# %% tags=["solution"]
# Solution 3: the app's own words for how a stream ended.
def how_it_ended(rid):
    lines = one.log_lines(rf"rid={rid} ")
    if any("CLIENT DISCONNECT" in line or "CANCELLED" in line for line in lines):
        return "client left"
    if any(" ERROR " in line for line in lines):
        return "server-side error"
    return "complete" if any(" done " in line for line in lines) else "unknown"


for rid in ("p5-abort-5", "p5-abort-18s", "p5-full", "p5-cut"):
    print(f"{rid:13} {how_it_ended(rid)}")

# %%
for model in (llm, plain_llm, defaults_llm, chunk_timeout_llm, timeout_30_llm, slow_llm):
    model.root_client.close()
    await model.root_async_client.close()
four.stop()
one.stop()
mock.stop()
print("running servers:", sl.running_servers())
