# Source of notebooks/00_start_here.ipynb (build: .venv/bin/python tools/nb.py build notebooks/src/00_start_here.py)

# %% [markdown]
# # 00 · Start here: what a streaming cutoff looks like from the client
#
# **The question.** An LLM answer streams token by token over one long HTTP response. When that
# response ends early, what does your code actually see: an exception (which one?), a shorter
# answer with no error at all, or a long wait? This notebook starts streamlab's mock model on a real
# loopback socket, breaks the stream in every way a model server can, and records what the raw
# `openai` SDK and raw `httpx` report each time.
#
# 1. Setup
# 2. What a streaming cutoff is
# 3. A clean stream, recorded
# 4. Every model fault, seen by the openai SDK and by raw httpx
# 5. Broken beside fixed: a stall and a client timeout
# 6. Streaming vs not streaming when the connection drops once
# 7. What the server sent vs what the client got
# 8. The playground
# 9. Summary
# 10. Exercises

# %% [markdown]
# ## 1. Setup
#
# The versions are pinned: the stored outputs below were made with them. `sl.offline()` switches off
# every telemetry channel and refuses connections that would leave loopback. `sl.time_scale(0.1)` runs
# one scenario second in 0.1 s of wall-clock time; every figure below is printed in scenario seconds.

# %%
import httpx
import openai

import streamlab as sl
from streamlab.faults import (BrokenFraming, ContextWindow, Cut, ErrorEvent, MalformedChunk, NoDone,
                              RateLimited, Reset, ServerError, SilentEnd, SlowHeaders, Stall)

print(sl.require(openai="2.54.0", httpx="0.28.1"))
sl.offline()
sl.time_scale(0.1)
print("scenario seconds run at", sl.current_time_scale(), "wall-clock seconds each")

# %% [markdown]
# ## 2. What a streaming cutoff is
#
# With `stream=True` the model server answers `200 OK` at once and then writes one Server-Sent Event
# per token into a chunked HTTP body:
#
# ```
# data: {"choices":[{"delta":{"content":" token"},"finish_reason":null}]}
#
# data: {"choices":[{"delta":{},"finish_reason":"stop"}]}
#
# data: [DONE]
# ```
#
# Two markers tell a reader the answer is over: the `finish_reason` of the last choice (the *answer*
# ended; `"length"` means the token budget ran out) and `data: [DONE]` (the *stream* ended), followed by
# the zero-length chunk that closes the HTTP body. A **cutoff** is any way the reader stops receiving
# tokens before those markers: the connection closes or resets, a hop times out, the body ends
# cleanly but early, or nothing arrives at all. Because the status line was already `200`, none of
# this can be reported as an HTTP error any more. The rest of this notebook shows what each case
# looks like to the client.

# %% [markdown]
# ## 3. A clean stream, recorded
#
# The mock model streams 40 tokens: 0.5 s to the first token (TTFT), then one token every 0.05 s
# (ITL). A token is one word (see `streamlab/_text.py`), and the text is seeded, so every run streams
# the same words. `sl.record` timestamps every chunk of any stream and names the outcome.

# %%
mock = sl.MockLLM(tokens=40, ttft=0.5, itl=0.05).start()   # stopped in the last cell, or at kernel exit
MESSAGES = [{"role": "user", "content": "Summarize this 20-page insurance claim."}]

sdk = openai.OpenAI(base_url=mock.base_url, api_key="unused", max_retries=0)
clean = sl.record(
    lambda: sdk.chat.completions.create(model="streamlab-mock", messages=MESSAGES, stream=True),
    expected=40, label="openai SDK")
clean

# %% [markdown]
# The same request read with nothing but `httpx`, line by line (`sl.sse_events` is 30 lines of
# httpx: open the response, raise on an HTTP error status, split the body at blank lines):

# %%
raw = sl.record(lambda: sl.sse_events(mock.base_url + "/chat/completions",
                                      body={"model": "streamlab-mock", "stream": True, "messages": MESSAGES}),
                expected=40, label="raw httpx")
sl.compare(clean, raw, title="a clean stream: 40 tokens, one every 0.05 s")

# %% [markdown]
# ## 4. Every model fault, seen by the openai SDK and by raw httpx
#
# Each fault is one small object (`streamlab.faults`), fired at a token index, so a run breaks the same
# way every time. The mock applies it when the request's base URL carries it
# (`mock.base_url_for(Cut(at=12))` gives `.../s/cut@12/v1`), so any client that takes a base URL can be
# broken without code changes. Both clients get a read timeout of 3 s and no retries.

# %%
FAULTS = [Cut(at=12), Reset(at=12), SilentEnd(at=12), NoDone(), Stall(at=12, seconds=8), MalformedChunk(at=12),
          BrokenFraming(at=12), ErrorEvent(at=12), RateLimited(retry_after=1), ServerError(),
          ContextWindow(tokens=4), SlowHeaders(seconds=8)]
TIMEOUT = httpx.Timeout(3 * sl.current_time_scale())   # 3 scenario seconds, in wall-clock seconds for httpx

runs = []
for fault in FAULTS:
    url = mock.base_url_for(fault)
    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=TIMEOUT)
    runs.append(sl.record(lambda: client.chat.completions.create(
        model="streamlab-mock", messages=MESSAGES, stream=True), expected=40, label=f"{fault} · SDK"))
    runs.append(sl.record(lambda: sl.sse_events(url + "/chat/completions", timeout=3,
                                                body={"model": "streamlab-mock", "stream": True,
                                                      "messages": MESSAGES}),
                          expected=40, label=f"{fault} · httpx"))
sl.table(runs)

# %% [markdown]
# What to take from the table:
#
# - **A cut or a reset is an `httpx` exception even through the openai SDK.** The SDK turns errors into
#   `openai.APIConnectionError` only while it makes the request; once the body is streaming, the
#   transport's own `httpx.RemoteProtocolError` (incomplete chunked read) or `httpx.ReadError`
#   (connection reset) reaches your loop. Code that catches only `openai.APIError` misses both.
# - **A clean early end is silent.** `silent@12` ends the body properly after 12 tokens: no
#   exception, just 12 of 40 tokens. Only a reader that checks for `finish_reason` or `[DONE]` notices.
# - **A missing `[DONE]` goes unnoticed** when `finish_reason` arrived; both readers call it complete.
# - **Broken SSE framing loses a token without any error** (39 of 40), while a malformed JSON chunk
#   stops the SDK with `json.JSONDecodeError` and is skipped by a lenient raw reader.
# - **A stall is a timeout only if the client has one shorter than the stall.** Here 3 s < 8 s, and
#   again the SDK lets the raw `httpx.ReadTimeout` through; only slow *headers* become
#   `openai.APITimeoutError`. The SDK's default timeout is 600 s: a stalled stream would hang ten minutes.
# - Errors before the first byte (429, 500, 400 context length, slow headers past the timeout) are
#   ordinary HTTP errors: the SDK raises its typed error; they are not cutoffs.

# %% [markdown]
# ## 5. Broken beside fixed: a stall and a client timeout
#
# A model that pauses for 5 s in the middle of an answer (a busy backend, a long tool call upstream)
# against a client whose read timeout is 2 s, and the same stall against a client that allows 10 s.

# %%
def stream_with_timeout(seconds):
    client = openai.OpenAI(base_url=mock.base_url_for(Stall(at=12, seconds=5)), api_key="unused",
                           max_retries=0, timeout=httpx.Timeout(seconds * sl.current_time_scale()))
    return sl.record(lambda: client.chat.completions.create(model="streamlab-mock", messages=MESSAGES,
                                                            stream=True), expected=40)


sl.compare(broken=stream_with_timeout(2), fixed=stream_with_timeout(10),
           title="a 5 s stall at token 12: read timeout 2 s vs 10 s")

# %% [markdown]
# The broken run stops at token 12 with a timeout; the fixed run shows the 5 s silence and then the
# rest of the answer. A read timeout bounds the *gap between two reads*, not the whole answer: that
# is why a long but steady stream never trips it, and a single long pause does.

# %% [markdown]
# ## 6. Streaming vs not streaming when the connection drops once
#
# `mock.script(...)` gives successive requests successive behaviours: here the first request is cut
# after 12 tokens and the next one runs clean. The openai SDK's default `max_retries=2` is in force.

# %%
retrying = openai.OpenAI(base_url=mock.base_url, api_key="unused")   # default retries: 2

before = len(mock.journal.chat())
with mock.script(Cut(at=12), None):
    streamed = sl.record(lambda: retrying.chat.completions.create(
        model="streamlab-mock", messages=MESSAGES, stream=True), expected=40, label="stream=True")
requests_streamed = len(mock.journal.chat()) - before

before = len(mock.journal.chat())
with mock.script(Cut(at=12), None):
    whole = sl.record(lambda: retrying.chat.completions.create(
        model="streamlab-mock", messages=MESSAGES, stream=False), expected=40, label="stream=False")
requests_whole = len(mock.journal.chat()) - before

print(f"model requests made: stream=True {requests_streamed}, stream=False {requests_whole}")
sl.table([streamed, whole])

# %% [markdown]
# Without streaming, the dropped connection happens while the SDK is still reading the response
# inside its retry loop, so it quietly retries and succeeds (two requests reached the model). With
# streaming, the drop happens after `create()` has returned the stream: no retry layer is left, and
# the error reaches your loop after 12 tokens. This is the core of the articles' "turn streaming
# off" advice, and its cost: the retry doubles the model work and the user waits for the whole answer.

# %% [markdown]
# ## 7. What the server sent vs what the client got
#
# The mock journals every request: its body, the behaviour applied and each event sent, with
# timestamps. `sl.plot_hops` draws one lane per hop, a tick per send or arrival, so the lanes show where
# a stream was lost.

# %%
client = openai.OpenAI(base_url=mock.base_url_for(Cut(at=25)), api_key="unused", max_retries=0)
cut_run = sl.record(lambda: client.chat.completions.create(model="streamlab-mock", messages=MESSAGES,
                                                           stream=True), expected=40)
sent = mock.journal.last
print(f"model: {sent.tokens_sent} tokens sent, ended: {sent.ended}; client: {cut_run.outcome}, "
      f"{cut_run.tokens} tokens, {cut_run.error_class}")
figure = sl.plot_hops(cut_run, [sent.log], title="cut at token 25: model side vs client side")

# %% [markdown]
# The same picture with a hop in the path: an embedded proxy with nginx's `proxy_read_timeout` set to
# 3 s, in front of a model that stalls for 8 s after token 25. The proxy's lanes show what it received
# from the model and what it passed on, and where it gave up.

# %%
with sl.Proxy(upstream=mock.url, faults=[sl.hops.ReadTimeout(seconds=3)]) as proxy:
    client = openai.OpenAI(base_url=proxy.url + "/s/stall@25=8/v1", api_key="unused", max_retries=0)
    hop_run = sl.record(lambda: client.chat.completions.create(model="streamlab-mock", messages=MESSAGES,
                                                               stream=True), expected=40)
    client.close()
sent = mock.journal.last.wait_closed()   # the model side learns of the drop a moment after the client
print(f"model: {sent.tokens_sent} tokens sent, ended: {sent.ended}; client: {hop_run.outcome}, "
      f"{hop_run.tokens} tokens, {hop_run.error_class}")
figure = sl.plot_hops(hop_run, [sent.log, ("proxy received", proxy.log, "in"), ("proxy sent", proxy.log, "out")],
                      title="proxy_read_timeout 3 s vs an 8 s stall at token 25")

# %%
print(mock.journal.table())

# %% [markdown]
# ## 8. The playground
#
# Move the sliders, pick a fault and press Run: the timeline and the outcome are redrawn in place.
# The panel is a widget: until its cell has run in your kernel, JupyterLab shows only a line of text in
# its place (a saved notebook holds no live controls), so run the cell. Settings that make no sense (a
# negative stall, a fault index past the end of the answer, a proxy timeout of "-3") are named in red
# under the Run button, and Run stays off until they are fixed. The same scenario runs without widgets
# through `sl.run_scenario(...)`, which is what the cell after the panel does (and what the test runner
# checks).

# %% tags=["nbval-ignore-output"]
panel = sl.playground(tokens=40, fault="stall", at=10, value=5.0, timeout=2.0)

# %%
sl.run_scenario(tokens=40, ttft=0.5, itl=0.05, fault="stall", at=10, value=5.0, timeout=2.0)

# %% [markdown]
# ## 9. Summary
#
# | fault (model side) | what the openai SDK raises | what raw httpx sees | lesson |
# |---|---|---|---|
# | connection closed mid-body | `httpx.RemoteProtocolError` | same | catch transport errors around the loop, not only `openai.APIError` |
# | connection reset | `httpx.ReadError` | same | same |
# | clean end, no finish_reason / [DONE] | nothing: fewer tokens | nothing | check `finish_reason` yourself |
# | no [DONE], finish_reason sent | nothing: complete | nothing: complete | `finish_reason` is the marker that matters |
# | stall longer than read timeout | `httpx.ReadTimeout` | `httpx.ReadTimeout` | set a read timeout; the SDK's default is 600 s |
# | headers slower than the timeout | `openai.APITimeoutError` | `httpx.ReadTimeout` | before the stream the SDK wraps (and retries) |
# | malformed JSON chunk | `json.JSONDecodeError` | skipped | a lenient reader hides corruption |
# | broken SSE framing | nothing: a token lost | nothing: a token lost | count what you expected |
# | error event mid-stream | `openai.APIError` | an error object in the stream | read error objects in streams |
# | 429 / 500 / 400 before the stream | typed `openai` errors | `httpx.HTTPStatusError` | not a cutoff: the SDK retries 429 and 5xx |
#
# Streaming removes the SDK's retry safety net after the first byte: a once-off drop is retried
# invisibly without streaming and surfaces as an exception with streaming.

# %% [markdown]
# ## 10. Exercises
#
# 1. Which faults leave **no trace** for a reader that only catches exceptions? Write a check that
#    flags all of them using the recorded run (hint: `run.finish`, `run.tokens`, `run.expected`).
# 2. Which of the read timeouts 2, 4, 8 and 16 s is the smallest that survives a 5 s stall at token 12?
#    Why is a timeout of exactly 5 s not enough?
# 3. Script the first **two** requests to be reset at token 5 and the third to run clean. How many
#    model requests does a non-streaming call with the default retries make, and does it succeed?

# %% tags=["solution"]
# Solution 1: a run is trustworthy only if it ended with a finish_reason and got what was expected.
def silently_wrong(run):
    return run.error is None and (run.finish is None or (run.expected and run.tokens < run.expected))

print(sorted({r.label.split(" ·")[0] for r in runs if silently_wrong(r)}))

# %% tags=["solution"]
# Solution 2: double the read timeout until the stall no longer trips it. Exactly 5 s is not enough:
# the gap between two reads is the stall plus one inter-token interval (and scheduling noise).
for seconds in (2, 4, 8, 16):
    if stream_with_timeout(seconds).outcome is sl.Outcome.COMPLETE:
        print(f"smallest read timeout that survives the 5 s stall: {seconds} s")
        break

# %% tags=["solution"]
# Solution 3: two resets, then a clean answer; max_retries=2 allows exactly three attempts.
before = len(mock.journal.chat())
with mock.script(Reset(at=5), Reset(at=5), None):
    third = sl.record(lambda: retrying.chat.completions.create(
        model="streamlab-mock", messages=MESSAGES, stream=False), expected=40)
print(third, f"after {len(mock.journal.chat()) - before} model requests")

# %%
mock.stop()
print("running servers:", sl.running_servers())
