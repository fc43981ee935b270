# Source of notebooks/01_autogen.ipynb (build: .venv/bin/python tools/nb.py build notebooks/src/01_autogen.py)

# %% [markdown]
# # 01 · AutoGen: the two "streaming response cutoff" articles, pattern by pattern
#
# **The question.** Two articles by Cyprian Aarons, *How to Fix 'streaming response cutoff when scaling'
# in AutoGen (Python)* and *How to Fix 'streaming response cutoff' in AutoGen (Python)* (neither gives a
# date; cited below as *AutoGen scaling* and *AutoGen cutoff*), explain why an AutoGen agent's answer
# stops early and how to fix it. Which of their claims hold on the AutoGen we have pinned (AgentChat,
# Core and Ext 0.7.5, openai 2.54.0)? Each pattern below runs the real `AssistantAgent` and the real
# `OpenAIChatCompletionClient` against streamlab's mock model over loopback, through a real proxy hop
# where the pattern needs one, first the way the article calls broken, then the way it calls fixed, and
# records what the caller sees: an exception (which one), a shorter answer with no error, or a wait.
#
# 0. Setup
# 1. Streaming on a path that gets cut vs streaming off (Aarons, AutoGen scaling)
# 2. `max_tokens` 256 vs 2048 on a long answer (Aarons, AutoGen scaling)
# 3. Proxy idle timeout 30 s vs 300 s vs 3600 s (Aarons, AutoGen scaling; AutoGen cutoff)
# 4. One model client shared by several agents vs one client per agent (Aarons, AutoGen scaling)
# 5. Heavy synchronous work while consuming deltas vs `asyncio.to_thread` (Aarons, AutoGen scaling)
# 6. A backend that does not follow OpenAI streaming semantics vs a conforming one (Aarons, AutoGen cutoff)
# 7. Breaking out of `run_stream` early vs consuming it fully (Aarons, AutoGen cutoff)
# 8. Mixing old and new AutoGen APIs vs one API path (Aarons, AutoGen cutoff)
# 9. A tool that raises during a streamed run vs a tool that returns a structured error (Aarons, AutoGen cutoff)
# 10. An oversized history vs a trimmed one (Aarons, AutoGen cutoff)
# 11. The debugging steps of both articles, and the symptom table rebuilt from this notebook's runs (Aarons, AutoGen scaling; AutoGen cutoff)
# 12. Summary
# 13. Exercises

# %% [markdown]
# ## 0. Setup
#
# The versions are pinned: the stored outputs were made with them. `sl.offline()` switches telemetry
# off and refuses connections that would leave loopback; it runs before AutoGen is imported.
# `sl.time_scale(0.02)` runs one scenario second in 20 ms, so the articles' production numbers
# (a 30 s proxy timeout, a 29 s gateway deadline) take a fraction of a second; every duration below is
# printed in scenario seconds. `sdk_backoff_in_scenario_time()` makes the openai SDK's pause between
# retries (0.5 s, then 1 s, jittered) follow the same clock.
#
# The mock model answers 40 words (one word is one token here), the first after 0.5 s, then one every
# 0.25 s. The proxy is streamlab's embedded HTTP/1.1 reverse proxy: it passes every byte on until a
# section injects a fault that emulates an nginx, load balancer or gateway setting. (Real nginx is
# not used here: its timers fire up to 0.3 s early, which the time scale would turn into 15 scenario
# seconds.)
#
# Nothing here needs the network. AutoGen would reach for it in one place: counting tokens with
# tiktoken, which downloads its encoding on first use. Section 10 shows where and how we avoid it; the
# last cell checks that tiktoken never loaded an encoding.

# %%
import asyncio
import base64
import contextlib
import importlib.metadata
import re

import openai

from IPython.display import Markdown

import streamlab as sl

print(sl.require(autogen_agentchat="0.7.5", autogen_core="0.7.5", autogen_ext="0.7.5", openai="2.54.0",
                 httpx="0.28.1"))
sl.offline()

from autogen_agentchat.agents import AssistantAgent  # noqa: E402  (after sl.offline)
from autogen_agentchat.conditions import MaxMessageTermination  # noqa: E402
from autogen_agentchat.messages import ModelClientStreamingChunkEvent  # noqa: E402
from autogen_agentchat.teams import RoundRobinGroupChat  # noqa: E402
from autogen_ext.models.openai import OpenAIChatCompletionClient  # noqa: E402

from streamlab import hops  # noqa: E402
from streamlab.faults import BrokenFraming, Cut, MalformedChunk, NoDone, SilentEnd, Stall  # noqa: E402
from streamlab.frameworks import autogen as slag  # noqa: E402

sl.time_scale(0.02)
slag.sdk_backoff_in_scenario_time()

mock = sl.MockLLM(tokens=40, ttft=0.5, itl=0.25).start()      # stopped in the last cell, or at kernel exit
proxy = sl.Proxy(upstream=mock.url, name="proxy").start()          # one hop; faults are injected per section

MODEL_INFO = {"vision": False, "function_calling": True, "json_output": False, "family": "unknown",
              "structured_output": False}
TASK = "Summarize this 20-page insurance claim."


def model_client(base_url, **settings):
    """The model client an app builds, pointed at a local base URL (the mock, or the proxy before it)."""
    return OpenAIChatCompletionClient(model="streamlab-mock", base_url=base_url, api_key="unused",
                                      model_info=MODEL_INFO, **settings)


async def streamed(base_url, *, expected=40, task=TASK, **settings):
    """One agent run with streaming on, recorded event by event; the client is closed afterwards."""
    client = model_client(base_url, **settings)
    agent = AssistantAgent("support_agent", model_client=client, model_client_stream=True)
    try:
        return await sl.arecord(lambda: agent.run_stream(task=task, output_task_messages=False), expected=expected)
    finally:
        await client.close()


async def not_streamed(base_url, *, expected=40, task=TASK, **settings):
    """The same run with streaming off: one request, one answer."""
    client = model_client(base_url, **settings)
    agent = AssistantAgent("support_agent", model_client=client, model_client_stream=False)
    try:
        return await sl.arecord(lambda: agent.run(task=task), expected=expected)
    finally:
        await client.close()


print("scenario seconds run at", sl.current_time_scale(), "wall-clock seconds each")

# %% [markdown]
# `sl.arecord` timestamps every event the agent yields and names the outcome. `run_stream` is called with
# `output_task_messages=False` in these recordings: by default its first event is the task itself,
# echoed back, which the recorder would count as the stream having started.

# %% [markdown]
# ## 1. Streaming on a path that gets cut vs streaming off (Aarons, AutoGen scaling)
#
# **The claim.** The most common cause of a cut-off AutoGen answer is streaming on a path (client,
# proxy, deployment) that cannot keep the connection open under load; the article's fix is to build the
# model client with `stream=False` and keep token streaming for the user-facing edge only.
#
# First, the article's two client constructors, as written, on autogen-ext 0.7.5:

# %%
for stream in (True, False):
    try:
        OpenAIChatCompletionClient(model="gpt-4o-mini", api_key="unused", stream=stream)
    except ValueError as exc:
        print(f"OpenAIChatCompletionClient(..., stream={stream}) -> {type(exc).__name__}: {exc}")

# %% [markdown]
# Both raise. In the installed source (`autogen_ext/models/openai/_openai_client.py`) `stream` is in
# `disallowed_create_args`: the client decides per call instead. `create()` always sends
# `stream=False`; `create_stream()` always sends `stream=True` (and then yields `str` deltas and one
# final `CreateResult`). `AssistantAgent` calls `create_stream()` only when it is built with
# `model_client_stream=True`, and the default is `False`: the article's "broken" agent was never
# streaming. Nor does `run()` vs `run_stream()` decide it: `run()` goes through the same
# `on_messages_stream`, so with `model_client_stream=True` it streams from the model too and just
# drops the deltas. What each combination sends to the model:

# %%
client = model_client(slag.url(mock))
for flag in (False, True):
    for method in ("run", "run_stream"):
        agent = AssistantAgent("support_agent", model_client=client, model_client_stream=flag)
        with slag.model_requests(mock) as made:
            if method == "run":
                await agent.run(task=TASK)
            else:
                events = [type(e).__name__ async for e in agent.run_stream(task=TASK)]
        deltas = events.count("ModelClientStreamingChunkEvent") if method == "run_stream" else "-"
        print(f"model_client_stream={flag!s:5}  agent.{method + '()':12}  HTTP stream: "
              f"{'yes' if made[0].stream else 'no '}  delta events yielded: {deltas}")
await client.close()

# %% [markdown]
# So "streaming on" below means `model_client_stream=True` (run with `run_stream`), and "streaming off"
# means `model_client_stream=False` (run with `run`). Both keep the SDK's defaults, as the article's
# code does: `max_retries=2` and a 600 s read timeout. Each runs under three conditions:
#
# - **a cut that happens once**: the model's connection closes after 12 tokens, the next request is clean;
# - **a proxy idle timeout shorter than the generation**: a load balancer that closes a connection after
#   30 s without a byte, in front of a slow model (a word every 4 s, 39 s for 10 words);
# - **a hard gateway deadline**: an API gateway that ends every request at 29 s, in front of the same model.
#
# **Broken** and **Fixed** are the article's two settings; which one survives is the finding.

# %%
SLOW = slag.url(proxy, tokens=10, ttft=3, itl=4)        # 10 words: at 3 s, 7 s, ... 39 s


async def both_ways(base_url, expected, *, hop=None, script=()):
    """Run streaming on and off under the same condition; count the requests that reached the model."""
    runs, requests = {}, {}
    for name, run in (("streaming on", streamed), ("streaming off", not_streamed)):
        with contextlib.ExitStack() as stack:
            if hop is not None:
                stack.enter_context(proxy.inject(hop))
            if script:
                stack.enter_context(mock.script(*script))
            made = stack.enter_context(slag.model_requests(mock))
            runs[name] = await run(base_url, expected=expected)
        requests[name] = len(made)
    return runs, requests


conditions = {
    "cut once": await both_ways(slag.url(proxy), 40, script=(Cut(at=12), None)),
    "idle timeout 30 s": await both_ways(SLOW, 10, hop=hops.IdleTimeout(seconds=30)),
    "gateway deadline 29 s": await both_ways(SLOW, 10, hop=hops.Deadline(seconds=29)),
}
for condition, (runs, requests) in conditions.items():
    for name, run in runs.items():
        status = getattr(run.error, "status_code", "")
        print(f"{condition:22} {name:14} {str(run.outcome):20} {run.tokens:2}/{run.expected} tokens  "
              f"{run.error_class} {status}  model requests: {requests[name]}")

# %% [markdown]
# **Measured.** The same runs side by side, one pair per condition (the plots show when each token
# arrived; the retries of "streaming off" are the gaps).

# %%
for condition, (runs, _) in conditions.items():
    display(sl.compare(**runs, title=condition))

# %% [markdown]
# What the runs show:
#
# - **Cut once: turning streaming off helps.** The dropped connection happens before the non-streaming
#   response has started (the proxy answers `502`), inside the SDK's retry loop, so the SDK quietly
#   sends the request again and the second one succeeds (two model requests). With streaming the drop
#   comes after `create()` returned the stream: nothing retries it, and AutoGen lets the transport's
#   `httpx.RemoteProtocolError` through, not an `openai` error.
# - **Idle timeout: turning streaming off makes it worse.** A stream sends a byte every 4 s and never
#   looks idle; a non-streaming request is silent until the whole answer is ready, so the load
#   balancer answers `504` at 30 s, the SDK retries twice, and the caller gets
#   `openai.InternalServerError` after three model requests and some 90 s.
# - **Gateway deadline: it changes nothing.** The stream is cut at 29 s after 7 of 10 words; without
#   streaming the caller gets three `504`s instead. Only a shorter answer or a longer deadline helps.
#
# **Verdict:** partly — turning streaming off survives a one-off drop (the SDK retries the whole
# request), changes nothing against a hard deadline and turns an idle timeout into a failure; and the
# article's switch, `stream=` on the client, raises `ValueError` on 0.7.5 (`model_client_stream` is the
# real one). Evidence: the two cells above.

# %% [markdown]
# ## 2. `max_tokens` 256 vs 2048 on a long answer (Aarons, AutoGen scaling)
#
# **The claim.** A token limit that is too low (`max_tokens=256`) truncates answers in multi-turn and
# document workflows; 2048 is the fix. Here the model wants to write 600 words.
#
# **Broken:** `max_tokens=256`. **Fixed:** `max_tokens=2048`. Both stream. `slag.finish_reasons()`
# reads AutoGen's own event log (below), which is where the finish reason turns out to live.

# %%
LONG = slag.url(proxy, tokens=600, itl=0.02)

with slag.finish_reasons() as calls_256:
    short = await streamed(LONG, expected=600, max_tokens=256)
with slag.finish_reasons() as calls_2048:
    full = await streamed(LONG, expected=600, max_tokens=2048)
print("max_tokens=256 :", short, "| finish reasons in the event log:", calls_256.reasons)
print("max_tokens=2048:", full, "| finish reasons in the event log:", calls_2048.reasons)

# %% [markdown]
# No exception: the recorder calls the 256 run "complete" because the stream ended with AutoGen's
# `TaskResult`, its end marker, and it got 256 of 600 words. Where could the caller see that the
# answer was cut? The `TaskResult` and its last message, streaming and not:

# %%
for flag in (True, False):
    client = model_client(LONG, max_tokens=256)
    agent = AssistantAgent("support_agent", model_client=client, model_client_stream=flag)
    result = await agent.run(task=TASK)
    last = result.messages[-1]
    print(f"model_client_stream={flag!s:5}: stop_reason={result.stop_reason}, last message "
          f"{type(last).__name__} with {len(last.content.split())} words, fields: {sorted(type(last).model_fields)}, "
          f"usage: {last.models_usage}")
    await client.close()

# %% [markdown]
# `TextMessage` has no finish reason, and `TaskResult.stop_reason` is about the team's termination, not
# the model. When streaming, even the usage is zero (AutoGen does not ask for `include_usage`). The
# `"length"` survives in two places only: the `CreateResult` that `model_client.create()` /
# `create_stream()` return to code that calls the client directly, and the `LLMCallEvent` /
# `LLMStreamEndEvent` records AutoGen logs at INFO level on the `autogen_core.events` logger, which is
# what `slag.finish_reasons()` listens to.
#
# **Measured.**

# %%
sl.compare(broken=short, fixed=full, title="a 600-word answer: max_tokens 256 vs 2048")

# %% [markdown]
# **Verdict:** reproduced — 256 ends the answer at 256 of 600 words with no error and a normal-looking
# `TaskResult`; AgentChat drops the finish reason, so check `"length"` in the `autogen_core.events` log
# (or call the client yourself). Evidence: the first cell of this section.

# %% [markdown]
# ## 3. Proxy idle timeout 30 s vs 300 s vs 3600 s (Aarons, AutoGen scaling; AutoGen cutoff)
#
# **The claim.** Reverse proxies (nginx, load balancers, gateways) close long-lived streams; raise
# nginx's `proxy_read_timeout` from 30 s to 300 s (AutoGen scaling) or to 3600 s (AutoGen cutoff).
# `proxy_read_timeout` bounds the silence between two reads from the upstream, so it only fires when the
# model pauses. Here the model stops for 120 s after 10 words (a queue, a slow upstream tool), then
# finishes. This section runs at `sl.time_scale(0.002)` so the 3600 s case fits.
#
# **Broken:** `proxy_read_timeout 30s`. **Fixed:** `300s`, and *AutoGen cutoff*'s `3600`.

# %%
with sl.time_scale(0.002):
    PAUSE = slag.url(proxy, Stall(at=10, seconds=120))
    timeouts = {}
    for seconds in (30, 300, 3600):
        with proxy.inject(hops.ReadTimeout(seconds=seconds)):
            timeouts[f"read timeout {seconds} s"] = await streamed(PAUSE)
    for name, run in timeouts.items():
        print(f"{name:20} {run}")

# %% [markdown]
# **Measured.**

# %%
with sl.time_scale(0.002):
    display(sl.compare(**timeouts, title="a 120 s pause after 10 words, behind proxy_read_timeout 30 / 300 / 3600 s"))

# %% [markdown]
# 300 s and 3600 s carry this answer alike. What 3600 s changes is what happens when the upstream hangs
# for good (`Stall(at=10)` with no end): the proxy no longer ends the request, so whatever timeout
# the client has decides. AutoGen passes the openai SDK's default through: a 600 s read timeout
# (given here in scenario seconds, like everything else).

# %%
with sl.time_scale(0.002):
    HANG = slag.url(proxy, Stall(at=10))
    hung = {}
    for seconds in (300, 3600):
        with proxy.inject(hops.ReadTimeout(seconds=seconds)):
            hung[f"hang, proxy {seconds} s"] = await streamed(HANG, timeout=600 * sl.current_time_scale())
    for name, run in hung.items():
        print(f"{name:18} {run}, ended after about {round(run.e2e / 100) * 100} s")

# %% [markdown]
# With 300 s the proxy cuts the hung stream at 300 s (`RemoteProtocolError`); with 3600 s the client's
# own read timeout ends it at 600 s (`httpx.ReadTimeout`, again not wrapped by the SDK or AutoGen), and a
# client without one would wait the full hour. (*AutoGen cutoff*'s third directive, `chunked_transfer_encoding
# on`, is nginx's default already.)
#
# **Verdict:** reproduced — `proxy_read_timeout 30s` cuts a stream that pauses longer than 30 s, after 10
# of 40 words; 300 s carries it; 3600 s adds only pauses between 5 minutes and an hour, and leaves a hung
# upstream to the client's own timeout. Evidence: the first cell of this section and the hang cell.

# %% [markdown]
# ## 4. One model client shared by several agents vs one client per agent (Aarons, AutoGen scaling)
#
# **The claim.** Several `AssistantAgent`s sharing one model client can race under scale and cause
# intermittent cutoffs; build one client per agent. We run 20 agents at once on one shared client and
# 20 agents with a client each, every run with its own 60 s timeout. The mock runs in echo mode: each
# answer repeats the words of its own task (`ticket-07 ...`), so an answer carrying another ticket's
# number is cross-talk. A third variant shares what really is stateful: one *agent* for 20 concurrent runs.
#
# **Broken:** one client shared by 20 agents. **Fixed:** one client per agent.

# %%
ECHO = slag.url(proxy, echo=True)
N = 20


async def ask(agent, i):
    """One run with a per-run timeout; returns the recorded run, or None if it hung."""
    try:
        async with asyncio.timeout(60 * sl.current_time_scale()):
            return await sl.arecord(lambda: agent.run_stream(task=f"ticket-{i:02d} needs a summary",
                                                             output_task_messages=False), expected=40)
    except TimeoutError:
        return None


def mixed_requests(made):
    """Requests whose messages hold more than one ticket number."""
    tickets = lambda entry: {t for m in entry.body["messages"]  # noqa: E731
                             for t in re.findall(r"ticket-[0-9][0-9]", str(m.get("content")))}
    return sum(len(tickets(e)) > 1 for e in made)


def tally(runs, made):
    hangs = sum(r is None for r in runs)
    done = [r for r in runs if r is not None]
    errors = sorted({r.error_class for r in done if r.error is not None})
    complete = sum(r.outcome is sl.Outcome.COMPLETE for r in done)
    wrong_answer = sum(set(re.findall(r"ticket-[0-9][0-9]", r.text)) != {f"ticket-{i:02d}"}
                       for i, r in enumerate(runs) if r is not None and r.error is None)
    return (f"{complete}/{len(runs)} complete, {len(done) - complete} failed {errors or ''}, {hangs} hung; "
            f"answers about another ticket: {wrong_answer}; requests carrying other tickets: {mixed_requests(made)}")


with slag.model_requests(mock) as made_shared:
    shared_client = model_client(ECHO)
    shared = await asyncio.gather(*(ask(AssistantAgent(f"agent_{i}", model_client=shared_client,
                                                       model_client_stream=True), i) for i in range(N)))
    await shared_client.close()

with slag.model_requests(mock) as made_per_agent:
    own_clients = [model_client(ECHO) for _ in range(N)]
    per_agent = await asyncio.gather(*(ask(AssistantAgent(f"agent_{i}", model_client=c, model_client_stream=True), i)
                                       for i, c in enumerate(own_clients)))
    for c in own_clients:
        await c.close()

with slag.model_requests(mock) as made_same_agent:
    one_client = model_client(ECHO)
    one_agent = AssistantAgent("agent", model_client=one_client, model_client_stream=True)
    same_agent = await asyncio.gather(*(ask(one_agent, i) for i in range(N)))
    await one_client.close()

print("one client shared by 20 agents:", tally(shared, made_shared))
print("one client per agent          :", tally(per_agent, made_per_agent))
print("one agent for 20 runs         :", tally(same_agent, made_same_agent))

# %% [markdown]
# **Measured.** The slowest run of each variant side by side:

# %%
slowest = lambda runs: max((r for r in runs if r is not None), key=lambda r: r.e2e)  # noqa: E731
sl.compare(**{"shared client": slowest(shared), "client per agent": slowest(per_agent)},
           title="the slowest of 20 concurrent runs")

# %% [markdown]
# (The timings of 20 concurrent runs in one Python process are mostly CPU scheduling: real
# milliseconds, which this time axis multiplies by 50, so they differ from run to run. What this section
# measures is the counts above.)
#
# Sharing one `OpenAIChatCompletionClient` is safe here: it wraps one `openai.AsyncOpenAI` with one
# httpx connection pool (up to 1000 connections), each request gets its own connection, and no
# answer went to the wrong agent. What is not safe to share is the agent: an `AssistantAgent` keeps its
# conversation in its `model_context`, and concurrent runs append their tasks to the same list, so
# every request after the first carries the other users' tickets in its history (here each answer still
# echoes its own ticket, because the mock repeats only the last user message; a real model reads them
# all). Nothing fails; the prompts are mixed.
#
# **Verdict:** not reproduced on these versions — 20 concurrent runs on one shared client gave no
# exception, no hang and no cross-talk, the same as a client per agent; sharing one *agent* across
# concurrent runs mixes their histories. Evidence: the first cell of this section.

# %% [markdown]
# ## 5. Heavy synchronous work while consuming deltas vs `asyncio.to_thread` (Aarons, AutoGen scaling)
#
# **The claim.** CPU-heavy work in the loop that consumes the deltas (`heavy_pdf_parse(chunk)`) blocks
# the event loop; the reader falls behind and the connection may drop. Fix: `await
# asyncio.to_thread(heavy_pdf_parse, chunk)`.
#
# Our parser does 5 s of CPU work per delta (`slag.busy`: hashing, which like most C parsers releases
# the GIL). While one agent's deltas are parsed, a second agent streams on the same event loop, and
# `slag.LoopLag` measures how late a 0.1 s ticker wakes up. The stream goes through the proxy with
# nginx's `send_timeout 60s`, the hop setting that punishes a reader who stops reading.
#
# **Broken:** `heavy_pdf_parse(delta)` in the loop. **Fixed:** `await asyncio.to_thread(heavy_pdf_parse, delta)`.

# %%
def heavy_pdf_parse(delta):
    slag.busy(5.0)


async def parse_in_loop(delta):
    heavy_pdf_parse(delta)


async def parse_in_thread(delta):
    await asyncio.to_thread(heavy_pdf_parse, delta)


async def handled(events, handler):
    """The app's consumer: handle every delta, then pass the event on (to the recorder)."""
    async for event in events:
        if isinstance(event, ModelClientStreamingChunkEvent):
            await handler(event.content)
        yield event


async def reader_and_neighbour(handler):
    SHORT = slag.url(proxy, tokens=10)
    client_a, client_b = model_client(SHORT), model_client(SHORT)
    reader = AssistantAgent("reader", model_client=client_a, model_client_stream=True)
    neighbour = AssistantAgent("neighbour", model_client=client_b, model_client_stream=True)
    async with slag.LoopLag() as lag:
        mine, theirs = await asyncio.gather(
            sl.arecord(lambda: handled(reader.run_stream(task=TASK, output_task_messages=False), handler),
                       expected=10),
            sl.arecord(lambda: neighbour.run_stream(task=TASK, output_task_messages=False), expected=10))
    await client_a.close()
    await client_b.close()
    return mine, theirs, lag


with proxy.inject(hops.SendTimeout(seconds=60)):
    blocked = await reader_and_neighbour(parse_in_loop)
    threaded = await reader_and_neighbour(parse_in_thread)
for name, (mine, theirs, lag) in (("in the loop", blocked), ("to_thread", threaded)):
    print(f"parse {name:11}: reader {mine}, neighbour {theirs}")
    print(f"{'':18}loop stalled longer than 2.5 s: {lag.max > 2.5}; neighbour's longest gap over 2.5 s: "
          f"{max(theirs.itls) > 2.5}; reader took 50 s or more (10 parses of 5 s): {mine.e2e >= 50}")

# %% [markdown]
# **Measured.** The neighbour's stream, beside a blocking parser and beside a threaded one:

# %%
sl.compare(broken=blocked[1], fixed=threaded[1], title="another agent's stream on the same event loop")

# %% [markdown]
# `to_thread` frees the loop: the ticker and the neighbour run on time. It does not make this reader
# faster: the loop still awaits each parse before it asks for the next delta, so the reader ends after
# 10 × 5 s either way, and nothing was cut. Why not, with a reader 45 s behind the model? Because
# the bytes it has not read wait in socket buffers, and a hop only punishes a reader when its own
# writes stay blocked: nginx's `send_timeout` fires when the client has taken *nothing* for 60 s while
# the buffers in between (client receive, proxy send: several MB on Linux) are full. So: when does a
# slow reader become a cutoff? Two answers, a 40-word one and one of 600 deltas of 16 KB each (the
# model quotes a base64 attachment back: 10 MB in 60 s), each read by a handler that stops for 120 s on
# the first delta (with the article's `to_thread` fix: the handler runs in a thread and the loop is
# free, but this stream is not read meanwhile). Then the big answer again, with reading decoupled from
# handling: a task drains `run_stream` into a queue, the handler works from the queue. (This cell runs
# at `sl.time_scale(0.01)`.)

# %%
ATTACHMENT = base64.b64encode(bytes(range(256)) * 48).decode()         # one 16,384-character "word"


def parse_attachment(delta):
    slag.busy(120.0)


async def handle_first_delta_slowly(events):
    first = True
    async for event in events:
        if first and isinstance(event, ModelClientStreamingChunkEvent):
            first = False
            await asyncio.to_thread(parse_attachment, event.content)
        yield event


async def drained(events):
    """Read the stream as fast as it comes into a queue; hand it on at the handler's pace."""
    queue = asyncio.Queue()

    async def read():
        try:
            async for event in events:
                await queue.put(event)
        finally:
            await queue.put(None)

    reader = asyncio.create_task(read())
    try:
        while (event := await queue.get()) is not None:
            yield event
    finally:
        await reader


async def big_answer(wrap, *, tokens, task):
    client = model_client(slag.url(proxy, tokens=tokens, itl=0.1, echo=True))
    agent = AssistantAgent("reader", model_client=client, model_client_stream=True)
    try:
        return await sl.arecord(lambda: wrap(agent.run_stream(task=task, output_task_messages=False)),
                                expected=tokens)
    finally:
        await client.close()


with sl.time_scale(0.01), proxy.inject(hops.SendTimeout(seconds=60)):
    stalls = {
        "40 words, stop 120 s": await big_answer(handle_first_delta_slowly, tokens=40, task=TASK),
        "10 MB, stop 120 s": await big_answer(handle_first_delta_slowly, tokens=600, task=ATTACHMENT),
        "10 MB, drained, stop 120 s": await big_answer(lambda ev: handle_first_delta_slowly(drained(ev)),
                                                       tokens=600, task=ATTACHMENT),
    }
    for name, run in stalls.items():
        print(f"{name:26} {str(run.outcome):16} all {run.expected} deltas read: {run.tokens == run.expected!s:5}  "
              f"{run.error_class}")
    print([e.note for e in proxy.log.of("fault")][-1])

# %% [markdown]
# A reader that stops for 120 s loses nothing on a 40-word answer. On a 10 MB answer the buffers fill,
# the proxy's write stays blocked for 60 s, and nginx's `send_timeout` closes the connection: the reader
# finds `httpx.RemoteProtocolError` when it comes back, after reading what the buffers held. The same
# handler behind a queue that keeps reading gets all 600 deltas.
#
# **Verdict:** partly — a blocking handler does stall the whole event loop (other agents' streams wait as
# long as each parse), and `to_thread` fixes that; but a slow reader becomes a cutoff only when it stops
# reading for longer than a hop's send timeout with more unread bytes than the socket buffers hold
# (megabytes), which `to_thread` alone does not prevent and a draining reader does. Evidence: the first
# and the last cell of this section.

# %% [markdown]
# ## 6. A backend that does not follow OpenAI streaming semantics vs a conforming one (Aarons, AutoGen cutoff)
#
# **The claim.** The #1 cause of a cutoff is streaming from an endpoint that does not fully support
# OpenAI-style streaming; the fix is a backend known to stream correctly. A conforming stream ends
# with a chunk carrying `finish_reason`, then `data: [DONE]`, and every event is `data: ...` plus a
# blank line. The mock breaks each rule in turn: no `[DONE]`; the body ends cleanly after 12 words with
# no `finish_reason` and no `[DONE]`; event 12 without its `data:` field name and blank line; event 12 as
# invalid JSON. The client asks for usage (`stream_options={"include_usage": True}`), so the server's own
# token count can be compared with what arrived.
#
# **Broken:** the four non-conforming backends. **Fixed:** the conforming one.

# %%
backends = {"conforming": None, "no [DONE]": NoDone(), "no finish_reason": SilentEnd(at=12),
            "bad framing": BrokenFraming(at=12), "invalid JSON": MalformedChunk(at=12)}
semantics = {}
for name, fault in backends.items():
    with slag.finish_reasons() as calls:
        run = await streamed(slag.url(proxy, *([fault] if fault else [])),
                             stream_options={"include_usage": True})
    semantics[name] = run
    reason = calls[0].finish_reason if calls else "-"
    usage = calls[0].completion_tokens if calls else "-"
    print(f"{name:17} {str(run.outcome):16} {run.tokens:2}/40 words  finish_reason={reason!s:8} "
          f"server counted {usage!s:2}  {run.error_class}")

# %% [markdown]
# **Measured.**

# %%
sl.compare(**{"conforming": semantics["conforming"], "no finish_reason": semantics["no finish_reason"],
              "bad framing": semantics["bad framing"]}, title="what AutoGen delivers from non-conforming streams")

# %% [markdown]
# None of these is reported as a cutoff. A missing `[DONE]` is harmless (the openai SDK ends at the end
# of the body). A body that ends early without a `finish_reason` gives a 12-word answer and a normal
# `TaskResult`; only the event log's normalised finish reason, `"unknown"`, and the missing usage betray
# it. A broken event is dropped without a word (39 of 40), visible only against the server's usage count
# of 40. Invalid JSON is the one that raises, and as `json.JSONDecodeError`, not an openai error.
#
# **Verdict:** partly — non-conforming streams do lose text, but silently (no `[DONE]`: nothing lost; no
# `finish_reason` or bad framing: a shorter answer, no error) or as a JSON error, never as a cutoff error;
# check the finish reason and the usage count to catch it. Evidence: the first cell of this section.

# %% [markdown]
# ## 7. Breaking out of `run_stream` early vs consuming it fully (Aarons, AutoGen cutoff)
#
# **The claim.** Stopping the iteration of `run_stream` early (`break` after the first event) cuts the
# stream before completion and makes AutoGen report a cutoff; consume the full stream, or use `run()`.
#
# First the article's code as written: `print(event)` and `break` on the first event.

# %%
client = model_client(slag.url(mock))
agent = AssistantAgent("assistant", model_client=client, model_client_stream=True)
with slag.model_requests(mock) as made, slag.capture_logs("opentelemetry") as logged:
    async for event in agent.run_stream(task="Write a short summary of this document"):
        print(type(event).__name__, "from", event.source, ":", event.content)
        break
    await asyncio.sleep(0.2)
print("model requests made:", len(made), "| agent context:", await agent.model_context.get_messages())
print("logged:", [f"{r.name}: {r.getMessage()}" for r in logged])
await client.close()

# %% [markdown]
# The first event of `run_stream` is the task itself, echoed back as a `TextMessage`; breaking there
# stops before the model is called. Nothing reports a cutoff; the only trace is an error that
# OpenTelemetry logs when the abandoned generator is closed later from another context ("Failed to
# detach context"). The realistic case is a reader that stops after some deltas. **Broken:** `break`
# after 5 deltas (and, for comparison, AutoGen's own way to stop: `CancellationToken.cancel()`).
# **Fixed:** consume the stream to its `TaskResult`. After each: is the model request still running,
# what is in the agent's context, and what does the next run send?

# %%
from autogen_core import CancellationToken  # noqa: E402


async def after_stopping(how):
    client = model_client(slag.url(mock))
    agent = AssistantAgent("assistant", model_client=client, model_client_stream=True)
    token = CancellationToken()
    first_answer = "tokens=40" if how == "consume" else "tokens=400"   # a 100 s answer when we stop early
    with mock.script(first_answer), slag.capture_logs("opentelemetry") as logged:
        deltas = 0
        try:
            async for event in agent.run_stream(task="Write a short summary of this document",
                                                cancellation_token=token):
                if isinstance(event, ModelClientStreamingChunkEvent):
                    deltas += 1
                    if deltas == 5 and how == "break":
                        break
                    if deltas == 5 and how == "cancel":
                        token.cancel()
        except asyncio.CancelledError:
            print("  run_stream raised CancelledError")
        sent_at_stop = mock.journal.last.tokens_sent
        await asyncio.sleep(5 * sl.current_time_scale())          # 5 scenario seconds later
        first = mock.journal.last
        context = [type(m).__name__ for m in await agent.model_context.get_messages()]
        print(f"  read {deltas} deltas; the model request is {first.ended}, still sending: "
              f"{first.tokens_sent > sent_at_stop}")
        print(f"  agent context: {context}")
        await agent.run(task="And the claim number?")
        print(f"  next request carries roles: {[m['role'] for m in mock.journal.last.body['messages']]}")
        await client.close()
        await asyncio.sleep(0.05)
        print(f"  after client.close() the first request is: {first.ended}")
    print(f"  logged: {sorted({f'{r.name}: {r.getMessage()}' for r in logged})}")


for how in ("break", "cancel", "consume"):
    print({"break": "break after 5 deltas:", "cancel": "token.cancel() after 5 deltas:",
           "consume": "consume fully:"}[how])
    await after_stopping(how)

# %% [markdown]
# (The first answer is 400 words long here, so that it is still being written when we look.) After the
# `break` the request is not cancelled: the model keeps generating into a connection nobody
# reads (you pay for the whole answer), until the model client is closed (or the garbage collector
# finalises the abandoned generators, at a time you do not control). The agent keeps the question
# without an answer, so the next request carries two user turns in a row. Closing the model client is
# the only way AutoGen 0.7.5 offers to end that request; a `CancellationToken` stops the agent (with
# `CancelledError`) but leaves the HTTP response open too: AutoGen's `_create_stream_chunks` never
# closes the openai stream it iterates.
#
# A team is worse off: it keeps running after the reader leaves.

# %%
client = model_client(slag.url(mock))
team = RoundRobinGroupChat([AssistantAgent("writer", model_client=client, model_client_stream=True),
                            AssistantAgent("reviewer", model_client=client, model_client_stream=True)],
                           termination_condition=MaxMessageTermination(3))
with slag.model_requests(mock) as made, slag.capture_logs("opentelemetry"):
    stream = team.run_stream(task="Summarize the claim, then review the summary.")
    deltas = 0
    async for event in stream:
        if isinstance(event, ModelClientStreamingChunkEvent):
            deltas += 1
            if deltas == 5:
                break
    try:
        await team.run(task="Another claim.")
    except ValueError as exc:
        print(f"next team.run() right after the break: {type(exc).__name__}: {exc}")
    await stream.aclose()                  # waits until the team has finished its turns in the background
print(f"after the break the abandoned run made {len(made)} model requests; answered in full: "
      f"{sum(e.ended == 'complete' for e in made)}")
result = await team.run(task="Another claim.")
print(f"after stream.aclose() the next run works: {len(result.messages)} messages")
await client.close()

# %% [markdown]
# **Measured.** The agent's stream read to the end vs stopped after 5 deltas (`sl.arecord(...,
# abort_after=5)` stops reading and closes the `run_stream` generator):

# %%
client = model_client(slag.url(mock))
agent = AssistantAgent("assistant", model_client=client, model_client_stream=True)
with slag.capture_logs("opentelemetry"):
    early = await sl.arecord(lambda: agent.run_stream(task=TASK, output_task_messages=False), expected=40,
                             abort_after=5)
    whole = await sl.arecord(lambda: agent.run_stream(task=TASK, output_task_messages=False), expected=40)
await client.close()
sl.compare(broken=early, fixed=whole, title="run_stream: stopped after 5 deltas vs read to the end")

# %% [markdown]
# **Verdict:** partly — breaking out early raises no cutoff error at all; what it really does is leave the
# model request running to the end, the agent's context with an unanswered question, and a team marked
# running (the next run raises `ValueError`) while it keeps calling the model; the article's literal
# `break` on the first event stops before the model is called. Evidence: the three cells above.

# %% [markdown]
# ## 8. Mixing old and new AutoGen APIs vs one API path (Aarons, AutoGen cutoff)
#
# **The claim.** The cutoff often comes from out-of-sync `autogen`, `autogen-agentchat` and `autogen-ext`
# versions, whose streaming interfaces changed; check with `pip show`, keep one API generation, do not mix
# `ConversableAgent` with `AssistantAgent` / `OpenAIChatCompletionClient`.
#
# What is installed (the article's `pip show autogen autogen-agentchat autogen-ext`):

# %%
for dist in ("autogen", "pyautogen", "ag2", "autogen-agentchat", "autogen-core", "autogen-ext", "openai",
             "tiktoken"):
    try:
        print(f"{dist:18} {importlib.metadata.version(dist)}")
    except importlib.metadata.PackageNotFoundError:
        print(f"{dist:18} not installed")

# %% [markdown]
# **Broken:** the articles' own snippets, which come from other API generations (or another library).
# Each one, run on the installed packages (`result` is the `TaskResult` of the team run above):

# %%
snippets = {
    "import autogen  (the 0.2 API)": "import autogen",
    "ConversableAgent from agentchat": "from autogen_agentchat.agents import ConversableAgent",
    "client(stream=True)  (AutoGen scaling)": "OpenAIChatCompletionClient(model='gpt-4o-mini', api_key='k', stream=True)",
    "@function_tool  (AutoGen cutoff)": "function_tool",
    "function_tool from autogen_core": "from autogen_core.tools import function_tool",
    "result.stream  (AutoGen scaling)": "result.stream",
}
for label, code in snippets.items():
    try:
        exec(code, {"OpenAIChatCompletionClient": OpenAIChatCompletionClient, "result": result})
        print(f"{label:36} -> runs")
    except Exception as exc:  # noqa: BLE001 - the error is the observation
        print(f"{label:36} -> {type(exc).__name__}: {str(exc).split(' (/')[0]}")

# %% [markdown]
# `function_tool` is the OpenAI Agents SDK's decorator, not AutoGen's; AutoGen 0.7 takes plain
# functions (or `autogen_core.tools.FunctionTool`). And the message the articles are named after does
# not exist in AutoGen: the installed sources never say "streaming response cutoff".

# %%
import pathlib  # noqa: E402

sources = [p for pkg in ("autogen_agentchat", "autogen_core", "autogen_ext")
           for p in pathlib.Path(importlib.import_module(pkg).__file__).parent.rglob("*.py")]
hits = [p.name for p in sources if re.search(r"stream\w*\s+response\s+cut\s*-?off", p.read_text(errors="replace"), re.I)]
print(f"{len(sources)} source files of autogen_agentchat/core/ext scanned; files mentioning "
      f"'streaming response cutoff': {len(hits)}")

# %% [markdown]
# **Fixed:** one API path — `autogen_agentchat.agents.AssistantAgent`, `autogen_ext.models.openai.
# OpenAIChatCompletionClient`, streaming switched with `model_client_stream`, tools as plain functions;
# and the version check that fails fast, here with the pins of this notebook and with a wrong one:

# %%
print(sl.require(autogen_agentchat="0.7.5", autogen_core="0.7.5", autogen_ext="0.7.5"))
try:
    sl.require(autogen_agentchat="0.2.40")
except sl.VersionMismatch as exc:
    print(f"{type(exc).__name__}: {exc}")

# %% [markdown]
# **Measured.** The article's snippet (client built with `stream=True`), then the one-path code:

# %%
async def article_000_agent():
    client = OpenAIChatCompletionClient(model="streamlab-mock", base_url=slag.url(proxy), api_key="unused",
                                        model_info=MODEL_INFO, stream=True)
    return await AssistantAgent("support_agent", model_client=client).run(task=TASK)


try:  # a ValueError is a programming error, not a stream fault: sl.arecord lets it through
    await sl.arecord(article_000_agent, expected=40)
except ValueError as exc:
    print(f"the article's snippet raises {type(exc).__name__}: {exc}")
sl.compare(fixed=await streamed(slag.url(proxy)), title="one API path")

# %% [markdown]
# **Verdict:** article code invalid on these versions — with only the 0.7 packages installed (no `autogen`,
# no `pyautogen`) nothing can mix, but the articles' snippets themselves do not run: `stream=` on the
# client raises `ValueError`, `function_tool` does not exist, `TaskResult` has no `.stream`; and no version
# of the installed AutoGen prints the "streaming response cutoff" they diagnose. Evidence: the snippet cell
# and the scan.

# %% [markdown]
# ## 9. A tool that raises during a streamed run vs a tool that returns a structured error (Aarons, AutoGen cutoff)
#
# **The claim.** A tool that throws (a `KeyError` for a missing policy) bubbles up and kills the
# assistant's stream; return a structured error instead. The mock asks for the tool with
# `policy_id="demo"`, which is not in the database; with `reflect_on_tool_use=True` the agent then
# streams a second answer about the tool's result.
#
# **Broken:** `lookup_policy` indexes the dict and raises. **Fixed:** it returns `{"error": ...}`.

# %%
from autogen_core.tools import FunctionTool  # noqa: E402

POLICIES = {"P-100": {"name": "Home basic"}}


def lookup_policy(policy_id: str) -> dict:
    """Look up an insurance policy by id."""
    return {"policy": POLICIES[policy_id]["name"]}                # KeyError if missing


def lookup_policy_or_error(policy_id: str) -> dict:
    policy = POLICIES.get(policy_id)
    if not policy:
        return {"error": f"policy_id {policy_id} not found"}
    return {"policy": policy["name"]}


async def with_tool(tool):
    client = model_client(slag.url(proxy))
    agent = AssistantAgent("assistant", model_client=client, tools=[tool], model_client_stream=True,
                           reflect_on_tool_use=True)
    events = []

    async def keep(stream):
        async for event in stream:
            events.append(event)
            yield event

    run = await sl.arecord(lambda: keep(agent.run_stream(task="What is policy demo?", output_task_messages=False)))
    await client.close()
    kinds = [type(e).__name__ for e in events]
    outcome = next(e for e in events if type(e).__name__ == "ToolCallExecutionEvent").content[0]
    print(f"{run}\n  events: {' > '.join(dict.fromkeys(kinds))}\n  tool result: is_error={outcome.is_error}, "
          f"content={outcome.content!r}")
    return run


raising = await with_tool(lookup_policy)
structured = await with_tool(FunctionTool(lookup_policy_or_error, name="lookup_policy",
                                          description="Look up an insurance policy by id."))

# %% [markdown]
# **Measured.**

# %%
sl.compare(broken=raising, fixed=structured, title="a tool that raises vs one that returns an error")

# %% [markdown]
# AutoGen 0.7.5 catches the tool's exception (`StaticWorkbench.call_tool` wraps any `Exception` into
# `ToolResult(is_error=True)`), hands the message to the model as the tool's result, and the stream goes
# on: both runs stream the second answer to the end. The difference is only what the model reads: the
# bare `'demo'` of a `KeyError` vs a sentence it can act on.
#
# **Verdict:** not reproduced on these versions — a raising tool does not end the stream; AutoGen turns
# the exception into an error result and the run completes. The structured error is still better input
# for the model. Evidence: the first cell of this section.

# %% [markdown]
# ## 10. An oversized history vs a trimmed one (Aarons, AutoGen cutoff)
#
# **The claim.** With a huge history some providers start generating and then fail once internal limits
# are hit (common in long group chats); trim the history (`messages[-10:]`) before `run_stream()`.
# The mock has a 4,096-token context window and, like OpenAI, refuses a request whose prompt plus
# `max_tokens` (1,024 here) does not fit. One agent is given a claim in eight 600-word sections, one
# per turn; AgentChat keeps the history inside the agent, in its `model_context`.
#
# **Broken:** the default, unbounded context. **Fixed:** AutoGen's own trimming,
# `BufferedChatCompletionContext(buffer_size=6)` (the last 6 messages: the article's `messages[-10:]`),
# and `TokenLimitedChatCompletionContext` (below).

# %%
from autogen_core.model_context import BufferedChatCompletionContext, TokenLimitedChatCompletionContext  # noqa: E402

WINDOW = slag.url(proxy, "context=4096", itl=0.02)
SECTIONS = [f"Claim section {k}: " + " ".join(f"w{k}x{j}" for j in range(600)) for k in range(1, 9)]


async def eight_turns(model_context=None):
    client = model_client(WINDOW, max_tokens=1024)
    agent = AssistantAgent("claims_agent", model_client=client, model_client_stream=True,
                           **({"model_context": model_context} if model_context else {}))
    runs = []
    for section in SECTIONS:
        runs.append(await sl.arecord(lambda: agent.run_stream(task=section, output_task_messages=False),
                                     expected=40))
        if runs[-1].error is not None:
            break
    await client.close()
    return runs


unbounded = await eight_turns()
buffered = await eight_turns(BufferedChatCompletionContext(buffer_size=6))
for name, runs in (("unbounded", unbounded), ("buffer_size=6", buffered)):
    last = runs[-1]
    print(f"{name:14} turns run: {len(runs)}, last: {last.outcome}, {last.error_class}")
print("\nthe error:", str(unbounded[-1].error).split(" - ")[0], "-", unbounded[-1].error.body["message"])

# %% [markdown]
# The long history fails before the stream, as an HTTP 400 (`openai.BadRequestError`,
# `context_length_exceeded`): on an OpenAI-compatible server the window is checked before the first
# token, so this is an error with a clear message, not a cut stream. The article's other knob makes it
# come sooner: the window must hold the prompt *and* `max_tokens`, so the 2048 of section 2 would fail a
# turn earlier.
#
# `TokenLimitedChatCompletionContext` trims by token count, which it asks its model client for.
# `OpenAIChatCompletionClient.count_tokens` uses tiktoken: for a model name tiktoken does not know it
# falls back to `get_encoding("cl100k_base")`, which downloads the encoding from the internet on first
# use (the offline guard would refuse it; on a machine with a cached copy it would just work).
# `slag.refuse_tiktoken()` records the look-ups and refuses them, to show what AutoGen asks for:

# %%
counting_client = model_client(WINDOW)
with slag.refuse_tiktoken() as asked, slag.capture_logs("autogen_core.trace") as logged:
    try:
        await TokenLimitedChatCompletionContext(counting_client, token_limit=3000,
                                                initial_messages=[]).get_messages()
        counting_client.count_tokens([])
    except slag.TiktokenRefused as exc:
        print(f"{type(exc).__name__}: {exc}")
print("tiktoken was asked for:", asked, "| AutoGen logged:", [r.getMessage() for r in logged])
await counting_client.close()

# %% [markdown]
# The context only uses its `model_client` argument to count, so it can be given a counter instead of the
# real client: `slag.WordCounter` counts words, the mock's unit (in an app: your provider's tokenizer,
# installed locally). The agent still talks to the real client.

# %%
limited = await eight_turns(TokenLimitedChatCompletionContext(slag.WordCounter(context_window=4096),
                                                              token_limit=3000))
last_prompt = sum(len(str(m.get("content", "")).split()) for m in mock.journal.last.body["messages"])
print(f"token_limit=3000: turns run: {len(limited)}, last: {limited[-1].outcome}; "
      f"words in the last request's messages: {last_prompt}")
print("tiktoken encodings loaded in this kernel:", slag.tiktoken_encodings_loaded())

# %% [markdown]
# **Measured.** The failing turn, unbounded vs trimmed:

# %%
sl.compare(broken=unbounded[-1], fixed=buffered[len(unbounded) - 1],
           title=f"turn {len(unbounded)} of a growing history: unbounded vs last 6 messages")

# %% [markdown]
# **Verdict:** partly — an oversized history does fail, but before the stream with a 400
# `context_length_exceeded`, not as a cutoff; trimming fixes it, and AutoGen has it built in
# (`BufferedChatCompletionContext`, or `TokenLimitedChatCompletionContext` with a local counter so
# tiktoken never downloads). Evidence: the first cell of this section.

# %% [markdown]
# ## 11. The debugging steps of both articles, and the symptom table rebuilt from this notebook's runs (Aarons, AutoGen scaling; AutoGen cutoff)
#
# The articles' steps: disable streaming first (000: `stream=False`; 001: `run()` instead of
# `run_stream()`); reduce concurrency to 1; log request and response metadata (model, `max_tokens`,
# duration, whether the stream ended cleanly) and the exact last event; test outside AutoGen with the raw
# SDK; check package versions; test against a known-good model path. Each step below is applied to one
# failing setup: the slow model behind the 29 s gateway deadline of section 1, which a user reports as
# "the answer stops half-way".

# %%
FAILING = SLOW
deadline = hops.Deadline(seconds=29)

# Step 1a, AutoGen scaling: disable streaming with stream=False on the client.
try:
    model_client(FAILING, stream=False)
except ValueError as exc:
    print(f"step 1a  stream=False on the client: {type(exc).__name__}: {exc}")

# Step 1b, AutoGen cutoff: replace run_stream() with run(), keeping the agent as it is.
with proxy.inject(deadline), slag.model_requests(mock) as made:
    client = model_client(FAILING)
    agent = AssistantAgent("support_agent", model_client=client, model_client_stream=True)
    step_1b = await sl.arecord(lambda: agent.run(task=TASK), expected=10)
    await client.close()
print(f"step 1b  run() instead of run_stream(): {step_1b.outcome}, {step_1b.error_class}; "
      f"HTTP stream: {made[0].stream}")

# Step 1c: what really turns streaming off.
with proxy.inject(deadline), slag.model_requests(mock) as made:
    step_1c = await not_streamed(FAILING, expected=10)
print(f"step 1c  model_client_stream=False: {step_1c.outcome}, {step_1c.error_class} "
      f"{getattr(step_1c.error, 'status_code', '')}, model requests: {len(made)}")

# %% [markdown]
# Step 1b does not disable anything: `run()` streams from the model exactly like `run_stream()` when the
# agent has `model_client_stream=True`, and fails the same way, only worse: `run()` returns nothing
# until the end, so the 7 words that did arrive are lost with the exception (the recorder, which sees
# only what reaches the caller, calls it an error before the stream). Step 1c turns streaming off, and the
# error does not go away, it changes (three `504`s): by the article's rule that means "not a transport
# problem", yet the cause is the gateway. Next, concurrency 1 and the metadata.

# %%
# Step 2: one request at a time. Step 3: log request/response metadata and the last event.
log = slag.RequestLog()
client = model_client(FAILING, http_client=log.http_client())
agent = AssistantAgent("support_agent", model_client=client, model_client_stream=True)
last_event = None
with proxy.inject(deadline), slag.finish_reasons() as calls:
    try:
        async for last_event in agent.run_stream(task=TASK):
            pass
    except Exception as exc:  # noqa: BLE001 - the error is what we log
        failure = exc
print(log.table())
print(f"ended with {type(failure).__module__.split('.')[0]}.{type(failure).__name__}: {failure}")
print(f"last event: {type(last_event).__name__} {last_event.content!r}; model calls that ended: {len(calls)}")
await client.close()

# %% [markdown]
# One request, a `200` with headers at once, then an exception after a partial answer: *AutoGen cutoff*'s
# checklist (final message? tool call? only partial chunks?) says "only partial token chunks", and no
# `LLMStreamEndEvent` was logged. Concurrency was already 1, so it is not about load.

# %%
# Step 4: the same request without AutoGen, with the raw SDK, through the same path.
raw = openai.AsyncOpenAI(base_url=FAILING, api_key="unused")
with proxy.inject(deadline):
    raw_sdk = await sl.arecord(lambda: raw.chat.completions.create(
        model="streamlab-mock", messages=[{"role": "user", "content": TASK}], stream=True), expected=10)
await raw.close()
print("step 4  raw openai SDK, same path:", raw_sdk)

# Step 5: package versions (AutoGen cutoff's pip freeze | grep -E "autogen|openai").
print("step 5 ", ", ".join(f"{d} {importlib.metadata.version(d)}"
                          for d in ("autogen-agentchat", "autogen-core", "autogen-ext", "openai")))

# Step 6: a known-good path: the same model, straight to it, without the gateway.
direct = await streamed(slag.url(mock, tokens=10, ttft=3, itl=4), expected=10)
print("step 6  same model, no gateway in between:", direct)

# %% [markdown]
# The raw SDK is cut the same way (the problem is below AutoGen), the versions are the pinned ones, and
# the model answers in full without the hop: the gateway's deadline it is. The steps work as a
# bisection, once the two misleading ones are replaced (`model_client_stream=False` for "disable
# streaming", and reading the result as "the failure changed", not "it disappeared").
#
# *AutoGen scaling*'s symptom table, rebuilt from the runs of this notebook (each cell of the last column is
# computed from the recorded runs above):

# %%
on_fails_off_works = [c for c, (r, _) in conditions.items()
                      if r["streaming on"].error and not r["streaming off"].error]
on_works_off_fails = [c for c, (r, _) in conditions.items()
                      if not r["streaming on"].error and r["streaming off"].error]
both_fail = [c for c, (r, _) in conditions.items() if r["streaming on"].error and r["streaming off"].error]
failures_20 = sum(r is None or r.error is not None for r in shared)
rows = [
    ("Works with stream=False, fails with streaming", "Stream transport cutoff",
     f"seen for {on_fails_off_works}; the reverse for {on_works_off_fails}; both fail for {both_fail}"),
    ("Fails only under multiple workers", "Shared client or infra timeout",
     f"20 concurrent runs on one shared client: {failures_20} failed; one shared agent: "
     f"{mixed_requests(made_same_agent)} of {len(made_same_agent)} requests mixed users, "
     f"{sum(r is None or r.error is not None for r in same_agent)} failed"),
    ("Fails on long prompts only", "Token/context limit",
     f"turn {len(unbounded)}: {unbounded[-1].error_class} before the stream; max_tokens=256: "
     f"{short.tokens}/{short.expected} words, no error"),
    ("Fails even in raw SDK call", "Backend/proxy/network issue",
     f"raw SDK through the gateway: {raw_sdk.outcome}, {raw_sdk.error_class}; direct: {direct.outcome}"),
]
Markdown("| symptom (AutoGen scaling) | the article's cause | what this notebook's runs show |\n|---|---|---|\n"
         + "\n".join(f"| {symptom} | {cause} | {seen} |" for symptom, cause, seen in rows))

# %% [markdown]
# **Verdict:** partly — the steps do locate the layer, but two of them mislead on 0.7.5: `stream=False`
# raises, and `run()` instead of `run_stream()` does not turn streaming off; and the table's first row
# holds only for a one-off drop (an idle timeout inverts it, a deadline fails both ways), its second row
# was not observed (a shared client never failed), and its third row is an error before the stream or a
# silent truncation, not a cutoff. Evidence: the cells of this section.

# %% [markdown]
# ## 12. Summary
#
# | # | pattern | verdict | lesson |
# |---|---|---|---|
# | 1 | streaming on a cut path vs off | partly | off survives a one-off drop (SDK retry), not a deadline, and an idle timeout makes off fail; switch with `model_client_stream`, `stream=` raises |
# | 2 | `max_tokens` 256 vs 2048 | reproduced | truncation is silent in AgentChat; `"length"` is only in the `autogen_core.events` log / `CreateResult` |
# | 3 | proxy timeout 30 / 300 / 3600 s | reproduced | 30 s cuts a paused stream; 3600 s adds nothing over 300 s and hands a hung upstream to the client's 600 s timeout |
# | 4 | shared client vs client per agent | not reproduced on these versions | a shared `OpenAIChatCompletionClient` is safe; a shared *agent* mixes users' histories |
# | 5 | blocking handler vs `to_thread` | partly | blocking stalls every stream on the loop; a cut needs a reader stopped past the hop's send timeout with MBs unread; drain into a queue |
# | 6 | non-conforming stream vs conforming | partly | losses are silent (no `finish_reason`, bad framing) or a JSON error; check finish reason and usage |
# | 7 | `break` in `run_stream` vs consuming it | partly | no error, but the request runs on, the context keeps an unanswered turn, a team stays "running" |
# | 8 | mixed APIs vs one path | article code invalid on these versions | `stream=`, `function_tool`, `.stream` fail on 0.7.5; the "cutoff" message does not exist in AutoGen |
# | 9 | raising tool vs structured error | not reproduced on these versions | AutoGen turns the exception into an error result and streams on |
# | 10 | oversized vs trimmed history | partly | a 400 before the stream, not a cutoff; `BufferedChatCompletionContext`, or a token-limited one with a local counter |
# | 11 | the articles' debugging steps | partly | good bisection, but "stream=False" raises and `run()` still streams; the symptom table's rows 1-3 do not hold as written |
#
# What AutoGen 0.7.5 lets through when a stream is cut: the transport's own `httpx.RemoteProtocolError`
# (or `httpx.ReadTimeout`), never an `openai.APIError`; what it does not report at all: a truncated answer.

# %% [markdown]
# ## 13. Exercises
#
# 1. Section 3: find the smallest `proxy_read_timeout` among 30, 60, 90, 150 and 300 s that carries the
#    answer with the 120 s pause.
# 2. Section 6: write `trustworthy(run, call)` that flags every run whose answer cannot be trusted, from
#    the recorded run and the model call in AutoGen's event log (hint: `call.finish_reason`,
#    `call.completion_tokens`, `run.tokens`), and apply it to the five backends.
# 3. Section 7: stop a streamed answer after 5 deltas *and* end the model request, without closing any
#    client another agent uses. Show the journal entry says `client disconnected`.

# %% tags=["solution"]
# Solution 1: step the proxy's read timeout up until the pause no longer trips it.
with sl.time_scale(0.002):
    for seconds in (30, 60, 90, 150, 300):
        with proxy.inject(hops.ReadTimeout(seconds=seconds)):
            run = await streamed(PAUSE)
        print(f"proxy_read_timeout {seconds:3} s: {run.outcome}")
        if run.outcome is sl.Outcome.COMPLETE:
            break

# %% tags=["solution"]
# Solution 2: trust a run only if the model said "stop" and the server's count matches what arrived.
def trustworthy(run, call):
    return (run.error is None and call is not None and call.finish_reason == "stop"
            and call.completion_tokens == run.tokens)


for name, fault in backends.items():
    with slag.finish_reasons() as calls:
        run = await streamed(slag.url(proxy, *([fault] if fault else [])), stream_options={"include_usage": True})
    print(f"{name:17} trustworthy: {trustworthy(run, calls[0] if calls else None)}")

# %% tags=["solution"]
# Solution 3: give the run its own model client; closing it ends the HTTP request (and only that one).
async def answer_until(n_deltas):
    own = model_client(slag.url(mock))
    agent = AssistantAgent("assistant", model_client=own, model_client_stream=True)
    with slag.model_requests(mock) as made, slag.capture_logs("opentelemetry"):
        deltas = 0
        async for event in agent.run_stream(task=TASK):
            if isinstance(event, ModelClientStreamingChunkEvent):
                deltas += 1
                if deltas == n_deltas:
                    break
        await own.close()
        await asyncio.sleep(0.05)
    return made[0]


entry = await answer_until(5)
print(f"the model request ended: {entry.ended}, after {entry.tokens_sent < 40 and 'fewer than 40' or 'all 40'} tokens")

# %%
proxy.stop()
mock.stop()
print("running servers:", sl.running_servers())
print("tiktoken encodings loaded:", slag.tiktoken_encodings_loaded())
