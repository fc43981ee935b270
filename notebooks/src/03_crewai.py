# Source of notebooks/03_crewai.ipynb (build: .venv/bin/python tools/nb.py build notebooks/src/03_crewai.py)

# %% [markdown]
# # 03 · CrewAI: a streaming cutoff in production, checked pattern by pattern
#
# **The question.** Cyprian Aarons' article *How to Fix 'streaming response cutoff in production' in
# CrewAI (Python)* (updated 2026-04-21; cited below as *CrewAI production*) says a crew's answer is cut
# off in production mostly because streaming is switched on for a long, open-ended task, and lists four
# more causes (the token limit, a hosting platform that kills requests, a gateway timeout, a tool that
# returns a huge payload) with their fixes and a debugging routine. Which of these hold on crewai
# 1.15.30 with openai 2.54.0? What does a crew really return or raise in each case, how many model
# requests does it make behind your back, and where is the evidence? Every run below is the real CrewAI
# (`LLM`, `Agent`, `Task`, `Crew`) talking HTTP over loopback to streamlab's mock model, through real
# hops: a load balancer with an idle timeout, a serverless-style duration limit, and real nginx.
#
# 0. Setup
# 1. Streaming a long open-ended task vs not streaming a constrained one
# 2. Output over the token limit vs split tasks or a raised max_tokens
# 3. A platform that kills requests after 60 s vs a background job
# 4. A 60 s gateway timeout vs moving the run off the request path
# 5. A tool that returns a huge payload vs a paginated one
# 6. The article's debugging steps
# 7. `crew.kickoff()` in a running Jupyter kernel, and nest-asyncio
# 8. Summary
# 9. Exercises

# %% [markdown]
# ## 0. Setup
#
# The versions are pinned: the stored outputs were made with them. Order matters in this cell.
# `sl.offline()` sets the switches that turn off CrewAI's telemetry and tracing
# (`CREWAI_DISABLE_TELEMETRY`, `OTEL_SDK_DISABLED`, `CREWAI_TRACING_ENABLED=false`, ...) and refuses
# name lookups and connections that would leave loopback. It must run **before** `import crewai`:
# CrewAI builds its telemetry when it is imported (an OpenTelemetry exporter to
# `telemetry.crewai.com`, plus its own SIGINT/SIGTERM handlers), reading the switches at that moment.
# A refusal inside a background thread (an exporter) would never show up in a cell, so
# `slc.NetworkWatch` also counts every attempt: the last cell prints them.
#
# `sl.time_scale(0.01)` runs one scenario second in 10 ms: a 60 s timeout takes 0.6 s, and every
# duration printed below is in scenario seconds. `slc.backoff_in_scenario_time()` puts the retry
# backoffs of the openai SDK and of CrewAI on the same clock (their retry counts are untouched), and
# `slc.quiet()` keeps CrewAI's log lines in a log book instead of under every cell (section 6 reads it).
# CrewAI's own work (building agents and executors, emitting events) takes a few hundredths of a second
# per run, which the scale turns into a few seconds: the E2E figures below are that much longer than
# the model and the hops alone would make them.

# %%
import asyncio
import json
import re
import time

import httpx

import streamlab as sl
from streamlab import Proxy, hops, proxy_for  # the embedded fault-injecting proxy; real nginx when installed
from streamlab.faults import ContextWindow, Cut, NoDone, RateLimited, SilentEnd, Stall
from streamlab.frameworks import crewai as slc

print(sl.require(crewai="1.15.30", openai="2.54.0", httpx="0.28.1"))
sl.offline()                                    # before crewai is imported
network = slc.NetworkWatch().install()          # counts every attempt to leave loopback
sl.time_scale(0.01)

started = time.perf_counter()
from crewai import LLM, Agent, Crew, Task  # noqa: E402
from crewai.tools import tool  # noqa: E402

print(f"import crewai: {time.perf_counter() - started:.3f} s of wall-clock time")
logs = slc.quiet()
slc.backoff_in_scenario_time()

from crewai.events.listeners.tracing.utils import should_enable_tracing  # noqa: E402
from crewai.telemetry import Telemetry  # noqa: E402

print("CrewAI telemetry exporter built:", Telemetry().ready, "| tracing enabled:", should_enable_tracing())

# %% [markdown]
# The mock model answers every request with seeded text, one word per token: 1 s to the first token,
# then one token every 0.1 s. It does not read prompts, so each crew below tells it how long its answer
# is with a base-URL option (`mock.base_url_for(tokens=800)`): that is where a real model's obedience
# to "write everything" or "keep it under 300 words" is written down.
#
# How CrewAI talks to it, read from the installed source (`crewai/llm.py`,
# `crewai/llms/providers/openai/completion.py`): `LLM(model="gpt-4o-mini", base_url=...)` is a factory
# that returns CrewAI's **native OpenAI provider**, `OpenAICompletion` (LiteLLM is not installed and
# not needed). It builds an `openai.OpenAI(base_url=..., api_key=..., max_retries=2)`; `timeout` stays
# `None`, so the SDK's default of 600 s applies. `stream=True` sends `stream: true` with
# `stream_options: {"include_usage": true}`, and `max_tokens=` is sent as `max_tokens` (the bodies are
# printed below: a streamed request at the end of this Setup, a capped one in section 2).

# %%
mock = sl.MockLLM(tokens=800, ttft=1.0, itl=0.1).start()   # stopped in the last cell (or at kernel exit)
LONG, SHORT = 800, 250    # words the model writes for "write everything" and for "under 300 words"

probe = LLM(model="gpt-4o-mini", base_url=mock.base_url, api_key="unused")
client = probe._get_sync_client()
print(f"LLM(...) built a {type(probe).__name__}; its openai client: max_retries={client.max_retries}, "
      f"read timeout {client.timeout.read:g} s")

# %% [markdown]
# Retries happen at three layers, and they multiply. This matters for every table below:
#
# | layer | setting (default) | what it retries |
# |---|---|---|
# | openai SDK | `max_retries=2` on the client CrewAI builds | connection errors, timeouts, 408/409/429/5xx, but only until the response headers arrive: a stream that breaks after `200 OK` is not retried |
# | CrewAI rate-limit retry (`crewai/llms/retry.py`) | 3 attempts | 429 and throttling errors only |
# | `Agent` | `max_retry_limit=2` | any exception out of the task's execution: the whole LLM call again |
#
# ### The article's `crew.kickoff()` in this kernel
#
# The article's code ends with `result = crew.kickoff()`. In a notebook cell that line fails: the
# cell runs inside the kernel's event loop, and CrewAI's agent executor, seeing a running loop,
# returns a coroutine instead of running (its "magic auto-async" for Flows), which `Agent.execute_task`
# then refuses.

# %%
def article_broken(base_url, *, stream=True, **llm_settings):
    """The article's broken pattern, verbatim but for where the LLM lives."""
    llm = LLM(model="gpt-4o-mini", temperature=0.2, stream=stream, base_url=base_url, api_key="unused",
              **llm_settings)
    agent = Agent(role="Analyst", goal="Write a full incident report", backstory="You are an expert analyst.",
                  llm=llm)
    task = Task(description="Analyze all logs and write everything you find.", expected_output="A complete report.",
                agent=agent)
    return Crew(agents=[agent], tasks=[task])


def article_fixed(base_url, *, stream=False, **llm_settings):
    """The article's fixed pattern: stream=False and a constrained task."""
    llm = LLM(model="gpt-4o-mini", temperature=0.2, stream=stream, base_url=base_url, api_key="unused",
              **llm_settings)
    agent = Agent(role="Analyst", goal="Write a concise incident report", backstory="You are an expert analyst.",
                  llm=llm)
    task = Task(description="Analyze the logs and return:\n1) root cause\n2) impacted systems\n"
                            "3) recommended fix\nKeep it under 300 words.",
                expected_output="A structured incident summary under 300 words.", agent=agent)
    return Crew(agents=[agent], tasks=[task])


crew = article_fixed(mock.base_url_for(tokens=SHORT))
with slc.observe(mock) as seen:
    try:
        result = crew.kickoff()
    except RuntimeError as exc:
        print(f"{type(exc).__name__}: {exc}")
print(seen.summary())

# %% [markdown]
# No model request was made, and the agent "retried" the refusal twice (its `max_retry_limit`). What
# works in a cell: `await crew.kickoff_async()` (the same sync `kickoff()` in a worker thread, via
# `asyncio.to_thread`), `await crew.akickoff()` (native async), and a `Crew(stream=True)`, whose
# `kickoff()` returns an iterator and runs the crew in a thread of its own. The rest of the notebook
# awaits `crew.kickoff_async()`; section 7 tries nest-asyncio.

# %%
result = await crew.kickoff_async()
print("await crew.kickoff_async():", type(result).__name__, slc.words(result.raw), "words")
result = await article_fixed(mock.base_url_for(tokens=SHORT)).akickoff()
print("await crew.akickoff():     ", type(result).__name__, slc.words(result.raw), "words")
streaming_crew = article_fixed(mock.base_url_for(tokens=SHORT))
streaming_crew.stream = True
streaming = streaming_crew.kickoff()
chunks = [chunk.content for chunk in streaming]
print("Crew(stream=True).kickoff():", type(streaming).__name__, f"{len(chunks)} chunks,",
      slc.words(streaming.result.raw), "words")
body = mock.journal.last.body
print("\nits request body:", {k: body.get(k) for k in ("model", "stream", "stream_options")})

# %% [markdown]
# ## 1. Streaming a long open-ended task vs not streaming a constrained one (Aarons, CrewAI production)
#
# **The claim.** The most common cause, says the article, is a mismatch between streaming and the shape
# of the task: `stream=True` on the LLM and an agent asked to "write everything it finds". Its fix
# switches streaming off ("avoid partial-response issues") and constrains the task to a structured
# answer under 300 words.
#
# **Broken** is `article_broken` above (`stream=True`, 800 words of answer); **Fixed** is
# `article_fixed` (`stream=False`, 250 words). Both run under the four things that cut streams in
# production: a connection cut mid-answer (on every request, like a hop that always drops it), an
# early but clean end of the body (no `finish_reason`, no `[DONE]`), a load balancer with a 60 s idle
# timeout, and a stall that never ends; and under a body that ends with its `finish_reason` but without
# `data: [DONE]`. `kickoff` below is the whole harness: it awaits the crew, records what came back, and counts
# the model requests and what CrewAI's events said about each LLM call. A crew hands back its answer in
# one piece, so the outcome reads `complete` when `kickoff` returned, and when it raised `http error`
# (a status such as 500) or `error before stream` (no response at all); `tokens` counts the words of
# what it returned.

# %%
async def kickoff(label, crew, expected):
    with slc.observe(mock) as seen:
        run = await sl.arecord(crew.kickoff_async, expected=expected, label=label)
    return label, run, seen


rows = []
for name, fault in [("cut@100", Cut(at=100)), ("clean end@100", SilentEnd(at=100)), ("no [DONE]", NoDone())]:
    rows.append(await kickoff(f"{name} · broken", article_broken(mock.base_url_for(fault, tokens=LONG)), LONG))
    rows.append(await kickoff(f"{name} · fixed", article_fixed(mock.base_url_for(fault, tokens=SHORT)), SHORT))
print(slc.report(rows))

# %% [markdown]
# The same two crews behind a load balancer that closes a connection after 60 s without a byte
# (an AWS ALB's default idle timeout), plus a third run that only switches streaming off and keeps the
# long task, to separate the two halves of the fix.

# %%
with Proxy(upstream=mock, profile="load_balancer", name="load balancer") as lb:
    via_lb = lambda url: url.replace(mock.url, lb.url)  # noqa: E731
    lb_rows = [
        await kickoff("idle 60 s · broken", article_broken(via_lb(mock.base_url_for(tokens=LONG))), LONG),
        await kickoff("idle 60 s · fixed", article_fixed(via_lb(mock.base_url_for(tokens=SHORT))), SHORT),
        await kickoff("idle 60 s · stream=False, long task",
                      article_broken(via_lb(mock.base_url_for(tokens=LONG)), stream=False), LONG),
    ]
    lb_faults = [e.note for e in lb.log.of("fault")]
print(slc.report(lb_rows))
print(f"\nload balancer: {len(lb_faults)} idle timeouts fired ({lb_faults[0]})")

# %% [markdown]
# A stall that never ends (a hung upstream) with the article's code, which sets no timeout: the SDK's
# default 600 s read timeout decides. It is written out so it runs in scenario time, and this block runs
# ten times faster still (`sl.time_scale(0.001)`) so that hours of waiting take seconds.

# %%
with sl.time_scale(0.001):
    sdk_default = 600 * sl.current_time_scale()      # the openai SDK's default timeout, in wall-clock seconds
    stall_rows = [
        await kickoff("stall@100 · broken",
                      article_broken(mock.base_url_for(Stall(at=100), tokens=LONG), timeout=sdk_default), LONG),
        await kickoff("stall@100 · fixed",
                      article_fixed(mock.base_url_for(Stall(at=100), tokens=SHORT), timeout=sdk_default), SHORT),
    ]
print(slc.report(stall_rows))

# %% [markdown]
# **Measured.** All rows, and the load-balancer runs side by side with their timelines (a crew's result
# arrives in one piece, at the end):

# %%
print(slc.report(rows + lb_rows + stall_rows))
for label, run, seen in rows[:2] + stall_rows:
    print(f"\n{label}: {run.error_class}: {run.error}")
sl.compare(broken=lb_rows[0][1], fixed=lb_rows[1][1], **{"stream=False, long task": lb_rows[2][1]},
           title="behind a load balancer with a 60 s idle timeout")

# %% [markdown]
# What the tables say:
#
# - **A cut is retried by the agent, and without streaming by the SDK too.** With `stream=True` the
#   body breaks after `200 OK`, so the SDK cannot retry; the `Agent` retries the whole call twice:
#   3 requests, then `httpx.RemoteProtocolError` escapes `kickoff()`. With `stream=False` the SDK
#   retries each of the agent's three attempts twice: **9 requests**, and CrewAI reports the cut as
#   `ConnectionError: Failed to connect to OpenAI API: Connection error.`, although every connection
#   was made and answered.
# - **A clean early end is silent either way.** Both variants return a normal `CrewOutput` holding 100
#   words; the only trace is `finish_reason=None` in CrewAI's `LLMCallCompletedEvent` (the `finish`
#   column). A missing `[DONE]` after a `finish_reason` is harmless.
# - **An idle timeout favours streaming.** Streamed tokens keep the connection busy, so the long
#   streamed answer passes the load balancer. Without streaming nothing crosses the wire until the whole
#   answer is written: the 250-word answer (26 s) passes, the 800-word one (81 s) gets
#   `504 Gateway Time-out` nine times (SDK × agent retries), 9 minutes for nothing. What saved the
#   article's fix is the shorter task, not `stream=False`.
# - **A stall hangs for the SDK's 600 s per attempt**: 30 minutes for the streamed crew (3 attempts),
#   90 minutes without streaming (9 attempts), then a timeout error. Neither variant sets a timeout.
#
# **Verdict:** partly — constraining the task is what helps (a shorter answer fits inside an idle
# timeout); `stream=False` caused no cut to disappear, tripled the requests and the hang on a cut or a
# stall, and is what fails behind an idle timeout when the task stays long (evidence: the tables above).

# %% [markdown]
# ### If you really want tokens: CrewAI's own stream
#
# `LLM(stream=True)` does not give the caller a stream: the chunks go to CrewAI's event bus
# (`LLMStreamChunkEvent`) and `kickoff()` still returns one `CrewOutput` at the end. Tokens reach your
# code only with `Crew(..., stream=True)`: `kickoff()` returns a `CrewStreamingOutput` to iterate
# (`StreamChunk.content`), then `.result`. Note that `Crew(stream=True)` also sets `stream=True` on
# every agent's LLM, whatever the LLM was built with. Here the first request is cut at token 100 and the
# agent's retry succeeds:

# %%
streamed_crew = article_broken(mock.base_url_for(tokens=LONG))
streamed_crew.stream = True
with mock.script(Cut(at=100), None), slc.observe(mock) as seen:
    streaming = streamed_crew.kickoff()
    crew_stream = sl.record(slc.with_result(streaming), understand=slc.understand, expected=LONG,
                            label="Crew(stream=True)")
text = crew_stream.text
print(crew_stream, "|", seen.summary())
print(f"tokens streamed to the caller: {crew_stream.tokens}; words in streaming.result.raw: "
      f"{slc.words(streaming.result.raw)}")
print("the answer's first sentence appears", text.count(streaming.result.raw.split(".")[0]), "times in the stream")

# %% [markdown]
# The retry is invisible in the stream: the 100 tokens of the failed attempt are followed, without any
# marker, by the full answer of the second attempt, so a UI that appends chunks shows the opening twice.
# Only `streaming.result.raw` is right. If you stream a crew to users, send a reset when CrewAI starts a
# new LLM call (`LLMCallStartedEvent`), or stream only after a call has completed.

# %% [markdown]
# ## 2. Output over the token limit vs split tasks or a raised max_tokens (Aarons, CrewAI production)
#
# **The claim.** A task that asks for too much ("a full 40-page policy analysis") runs into the output
# token limit and the provider stops mid-response. Fix: split the work into smaller tasks, or raise the
# output limit, e.g. `LLM(model="gpt-4o-mini", max_tokens=1200)`.
#
# Here the analysis is 2,000 words; the model writes 50 words per second in this section
# (`itl=0.02`) so the long answers take less than a minute. **Broken**: the article's own
# `max_tokens=1200`, which is smaller than the answer. **Fixed**: `max_tokens=2400`, and, second fix,
# the analysis split into four tasks of 500 words each under the same `max_tokens=1200`.

# %%
def analyst(max_tokens, words):
    llm = LLM(model="gpt-4o-mini", max_tokens=max_tokens, api_key="unused",
              base_url=mock.base_url_for(tokens=words, itl=0.02))
    return Agent(role="Policy analyst", goal="Analyse the insurance policy", backstory="You are an expert.",
                 llm=llm)


def whole_analysis(max_tokens):
    agent = analyst(max_tokens, words=2000)
    task = Task(description="Generate a full 40-page policy analysis with citations for every section.",
                expected_output="A complete policy analysis.", agent=agent)
    return Crew(agents=[agent], tasks=[task])


def split_analysis(max_tokens):
    agent = analyst(max_tokens, words=500)
    parts = ["coverage and exclusions", "premiums and limits", "claims procedure", "legal and compliance"]
    tasks = [Task(description=f"Write the '{part}' part of the policy analysis, with citations.",
                  expected_output=f"The '{part}' part, about 500 words.", agent=agent) for part in parts]
    return Crew(agents=[agent], tasks=tasks)


capped = await kickoff("max_tokens=1200", whole_analysis(1200), 2000)
raised = await kickoff("max_tokens=2400", whole_analysis(2400), 2000)
split = await kickoff("4 tasks, max_tokens=1200", split_analysis(1200), 2000)
print(slc.report([capped, raised, split]))

# %% [markdown]
# **Measured.** Where would a caller see the truncation? Not in the result object: no field of
# `CrewOutput` or `TaskOutput` carries the finish reason, and no error or warning is raised. Two
# traces exist: `token_usage.completion_tokens` equal to `max_tokens` (a hint), and
# `finish_reason="length"` on CrewAI's `LLMCallCompletedEvent`.

# %%
for label, run, seen in (capped, raised, split):
    result = run.value
    parts = [slc.words(t.raw) for t in result.tasks_output]
    print(f"{label}: str(result) has {slc.words(result.raw)} words, tasks_output {parts}, "
          f"completion_tokens={result.token_usage.completion_tokens}, finish_reason={seen.finish_reasons}")
print("\nthe capped answer ends with:", repr(capped[1].value.raw[-60:]))
print("the capped request carried max_tokens =", capped[2].requests[0].body["max_tokens"])
print("request sizes of the split crew:", [f"{n:,} bytes" for n in split[2].request_bytes])
sl.compare(broken=capped[1], fixed=raised[1], **{"split into 4 tasks": split[1]},
           title="a 2,000-word answer under max_tokens")

# %% [markdown]
# The capped run looks like a success: `complete`, no error, 1,200 words that stop mid-sentence. The
# split crew gets every part, but `str(result)` (and `result.raw`) is only the **last** task's output:
# the whole analysis has to be joined from `result.tasks_output` (2,000 words). Each later task also
# receives the earlier outputs as context, so its request grows.
#
# **Verdict:** reproduced — an answer over `max_tokens` comes back as a normal `CrewOutput` with no
# error; only `finish_reason="length"` in CrewAI's events shows it; a limit above the answer or split
# tasks fix it, and split tasks must be read from `tasks_output` (evidence: the cell above).

# %% [markdown]
# ## 3. A platform that kills requests after 60 s vs a background job (Aarons, CrewAI production)
#
# **The claim.** Serverless functions and short-lived containers cut a request off while CrewAI is still
# running. Fix: don't run `crew.kickoff()` in a synchronous HTTP handler; run it as a background job
# (a worker or a queue consumer).
#
# The app below is what a reader would deploy: **broken** `POST /report` runs the crew inside the
# request; **fixed** `POST /jobs` starts it in the background and answers `202` with a job id at once,
# `GET /jobs/{id}` reports the status, and `GET /jobs/{id}/stream` streams the crew's tokens as SSE
# (from `Crew(stream=True)`), resumable with `Last-Event-ID`. It runs on uvicorn in a thread of this
# kernel (`slc.serve`), so its crews use the same mock. The routes are `def`, not `async def`: uvicorn
# runs them in its thread pool, where there is no event loop and `crew.kickoff()` works.

# %%
import threading  # noqa: E402

from fastapi import FastAPI, Request  # noqa: E402
from fastapi.responses import StreamingResponse  # noqa: E402

app = FastAPI()
jobs, delivered_late = {}, []


def report_crew(stream=False):
    crew = article_broken(mock.base_url_for(tokens=LONG))  # the article's crew: an 800-word report, 81 s
    crew.stream = stream                                    # Crew(stream=True): kickoff() yields chunks
    return crew


@app.post("/report")
def report():                                   # BROKEN: the crew runs inside the request
    result = report_crew().kickoff()
    delivered_late.append(result.raw)           # (for the notebook: the crew's result, delivered or not)
    return {"report": result.raw}


@app.post("/report/async")
async def report_async():                       # the same handler written as `async def`
    return {"report": report_crew().kickoff().raw}


@app.post("/jobs", status_code=202)
def start_job():                                # FIXED: the request only starts the crew
    job = {"id": f"job-{len(jobs) + 1}", "status": "running", "tokens": [], "report": None}
    jobs[job["id"]] = job

    def work():
        try:
            streaming = report_crew(stream=True).kickoff()
            for chunk in streaming:
                job["tokens"].append(chunk.content)
            job["report"], job["status"] = streaming.result.raw, "done"
        except Exception as exc:
            job["status"] = f"error: {type(exc).__name__}: {exc}"

    threading.Thread(target=work, daemon=True).start()
    return {"id": job["id"]}


@app.get("/jobs/{job_id}")
def job_status(job_id: str):
    job = jobs[job_id]
    return {"status": job["status"], "tokens": len(job["tokens"]), "report": job["report"]}


@app.get("/jobs/{job_id}/stream")
async def job_stream(job_id: str, request: Request):
    job, first = jobs[job_id], int(request.headers.get("last-event-id", -1)) + 1

    async def events():
        i, quiet_since = first, time.monotonic()
        while True:
            while i < len(job["tokens"]):
                yield f"event: token\nid: {i}\ndata: {job['tokens'][i]}\n\n"
                i, quiet_since = i + 1, time.monotonic()
            if job["status"] != "running":
                break
            if time.monotonic() - quiet_since > 15 * sl.current_time_scale():
                yield ": keep-alive\n\n"          # every 15 s without a token, as sse-starlette does
                quiet_since = time.monotonic()
            await asyncio.sleep(0.01)
        yield "event: done\ndata: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


server = slc.serve(app)   # stopped in the last cell


def ask_for_report(base):
    """The client of the broken endpoint: one request, the report in the answer."""
    response = httpx.post(base + "/report", timeout=None)
    response.raise_for_status()
    return response.json()["report"]


def run_as_job(base, poll_every=5):
    """The client of the fixed endpoints: start the job, then poll every 5 s (short requests)."""
    job = httpx.post(base + "/jobs").json()
    while (state := httpx.get(f"{base}/jobs/{job['id']}").json())["status"] == "running":
        time.sleep(poll_every * sl.current_time_scale())
    return state["report"]

# %% [markdown]
# In front of it, a platform that ends every request after 60 s (a Vercel function's `maxDuration`, a
# Lambda timeout), as the embedded proxy's `kill_after` fault: `504` if the answer has not started,
# a cut if it has.

# %%
with Proxy(upstream=server, faults=hops.serverless(max_duration=60), name="platform") as platform:
    with slc.observe(mock) as seen_broken:
        killed = sl.record(lambda: ask_for_report(platform.url), expected=LONG)
        while not delivered_late:               # the crew is still running: wait for it
            time.sleep(0.05)
    with slc.observe(mock) as seen_fixed:
        polled = sl.record(lambda: run_as_job(platform.url), expected=LONG)
    platform_faults = [e.note for e in platform.log.of("fault")]

print(killed, "|", killed.error.response.status_code, killed.error.response.text.strip().splitlines()[-1])
print("the crew behind it went on:", slc.words(delivered_late[0]), "words written for nobody;",
      seen_broken.summary())
print(polled, "|", seen_fixed.summary(), "| job:", jobs["job-1"]["status"])
print(f"platform: {platform_faults}")

# %% [markdown]
# **Measured.**

# %%
sl.compare(broken=killed, fixed=polled, title="a 60 s platform limit, an 81 s crew")

# %% [markdown]
# The broken request gets `504 FUNCTION_INVOCATION_TIMEOUT` at 60 s while the crew goes on: the model
# request completes and its tokens are paid for, and the report is thrown away. The job is never
# inside one request for long: the start answers at once, each poll is short, and the report arrives
# with the poll after the crew finishes. One honest difference: the proxy plays the platform's limit
# on the *request*; a real serverless platform also freezes or kills the function once it has
# answered, so the job must run on something that outlives the request (a worker process, a queue
# consumer), which is what the article says. The app server here is that long-lived worker.
#
# **Verdict:** reproduced — a 60 s platform limit turns an 81 s `crew.kickoff()` in the handler into a
# `504` while the crew's work is wasted; the same crew as a polled background job completes
# (evidence: the two cells above).

# %% [markdown]
# ## 4. A 60 s gateway timeout vs moving the run off the request path (Aarons, CrewAI production)
#
# **The claim.** nginx, API gateways and load balancers terminate idle requests; the article quotes
# `proxy_read_timeout 60s; proxy_send_timeout 60s;`. If the task can run longer, move it off the
# request path or raise the timeout.
#
# Real nginx 1.22 with exactly those settings (and its other defaults) in front of the same app.
# **Broken**: `POST /report`. **Fixed**: the job, with its token stream read through the same nginx.

# %%
with proxy_for(upstream=server, faults=hops.nginx(proxy_read_timeout=60, proxy_send_timeout=60)) as nginx:
    print(nginx.kind)
    before = len(delivered_late)
    gateway = sl.record(lambda: ask_for_report(nginx.url), expected=LONG)
    while len(delivered_late) == before or not nginx.log_lines("timed out"):   # the crew, and nginx's log line
        time.sleep(0.05)
    nginx_errors = [re.search(r"upstream timed out[^,]*", line).group(0) for line in nginx.log_lines("timed out")]
    job = httpx.post(nginx.url + "/jobs").json()
    job_tokens = sl.record(slc.HTTPStream(f"{nginx.url}/jobs/{job['id']}/stream", unit="event", timeout=None),
                           understand=slc.app_event, expected=LONG)
print(gateway, "|", gateway.error.response.status_code, gateway.error.response.reason_phrase)
print("nginx error log:", nginx_errors)
print(job_tokens, "| job:", jobs[job["id"]]["status"])

# %% [markdown]
# **Measured.**

# %%
sl.compare(broken=gateway, fixed=job_tokens, title="nginx proxy_read_timeout 60s, an 81 s crew")

# %% [markdown]
# nginx answers `504 Gateway Time-out` after 60 s and logs `upstream timed out (110: Connection timed
# out) while reading response header from upstream`; the crew behind it finishes anyway. The job's
# stream goes through the same nginx in one connection: `proxy_read_timeout` bounds the silence
# between two reads, and the tokens never leave 60 s of silence (while the crew starts, the endpoint
# sends a keep-alive comment every 15 s). Real nginx 1.22's default `proxy_buffering on` does not hold
# SSE events back, as streamlab's conformance tests found. Raising the timeout would also work, up to
# the next hop's limit; section 3 shows a limit that no stream survives (exercise 4 resumes it).
#
# **Verdict:** reproduced — nginx's 60 s `proxy_read_timeout` ends a request that waits 81 s for a
# crew with `504`; the same crew run as a job, its tokens streamed through the same nginx, completes
# (evidence: the two cells above).

# %% [markdown]
# ## 5. A tool that returns a huge payload vs a paginated one (Aarons, CrewAI production)
#
# **The claim.** A tool that returns a massive, unbounded JSON payload can trigger truncation
# downstream; return paginated or summarized data (`{"count": 50, "items": recent_items[:50]}`).
#
# **Broken**: the article's `fetch_all_transactions`, here 20,000 transactions (about 1.5 MB of JSON),
# run with CrewAI's defaults and with its guards switched off one by one. **Fixed**: the article's
# `fetch_recent_transactions`, the 50 most recent. The mock plays gpt-4o-mini's 128k context window
# (it counts words: `ContextWindow(tokens=128000)` answers `400 context_length_exceeded` above it), and
# calls the tool once, then answers in 120 words (`mock.script(None, then="tools=off")`: a model that
# got what it needed).

# %%
TRANSACTIONS = [{"id": i, "account": f"ACC-{i % 97:04d}", "amount": round(10 + (i * 37 % 5000) / 7, 2),
                 "status": "settled"} for i in range(20000)]


@tool("fetch_all_transactions")
def fetch_all_transactions() -> str:
    """Return every transaction on record."""
    return json.dumps(TRANSACTIONS)


@tool("fetch_recent_transactions")
def fetch_recent_transactions() -> str:
    """Return the 50 most recent transactions."""
    return json.dumps({"count": 50, "items": TRANSACTIONS[-50:]})


def fraud_crew(fetch, **agent_settings):
    llm = LLM(model="gpt-4o-mini", api_key="unused",
              base_url=mock.base_url_for(ContextWindow(tokens=128000), tokens=120, itl=0.05))
    agent = Agent(role="Analyst", goal="Find anomalies in transactions", backstory="You are an expert analyst.",
                  llm=llm, tools=[fetch], **agent_settings)
    task = Task(description="Fetch the transactions with your tool and report anomalies.",
                expected_output="A short anomaly report.", agent=agent)
    return Crew(agents=[agent], tasks=[task])


async def with_tool(label, crew):
    with mock.script(None, then="tools=off"):
        return await kickoff(label, crew, None)


tool_rows = [
    await with_tool("huge payload, CrewAI defaults", fraud_crew(fetch_all_transactions)),
    await with_tool("huge payload, deferral off", fraud_crew(fetch_all_transactions, use_better_compaction=False)),
    await with_tool("paginated tool", fraud_crew(fetch_recent_transactions)),
]
for label, run, seen in tool_rows:
    print(f"{label}: {run.outcome}, {len(seen.requests)} model requests, {sum(seen.request_bytes):,} bytes sent "
          f"(largest {max(seen.request_bytes):,}), tool output {seen.tools[0].output_chars:,} chars")

# %% [markdown]
# CrewAI 1.15.30 does not put the 1.5 MB into the conversation. With its defaults
# (`use_better_compaction=True`), a tool result above 25% of the model's usable context window is
# written to a temporary file and replaced by a short reference plus a `read_a_deferred_tool_result`
# tool for bounded reads: the second request is 4.5 KB. With that deferral off, the agent's
# `respect_context_window=True` (default) sees the conversation would overflow and summarizes it
# first, in chunks: six extra model calls of up to 378 KB each, 1.8 MB sent in all, and the answer is
# built from summaries of the data instead of the data.
# With both switched off, the oversized request reaches the model:

# %%
with mock.script(None, then="tools=off"), slc.observe(mock) as seen_unguarded:
    try:
        await fraud_crew(fetch_all_transactions, use_better_compaction=False,
                         respect_context_window=False).kickoff_async()
    except SystemExit as exc:        # not an Exception: `except Exception` would not catch it
        print(f"{type(exc).__name__}: {exc}")
print(seen_unguarded.summary())
print("request sizes:", [f"{n:,} bytes" for n in seen_unguarded.request_bytes],
      "| model answered:", [e.status for e in seen_unguarded.requests])
print([line for line in seen_unguarded.logs if "maximum context length" in line][0][:160])

# %% [markdown]
# The model rejects the 1.7 MB request with `400 context_length_exceeded`, and CrewAI turns that into
# `SystemExit("Context length exceeded and user opted not to summarize ...")`: nobody was asked, and a
# `SystemExit` is not an `Exception`, so an `except Exception` in a web handler or a worker does not
# catch it (in a script it ends the process). No run was truncated in any variant.
#
# **Measured.**

# %%
sl.compare(broken=tool_rows[1][1], fixed=tool_rows[2][1], **{"CrewAI defaults": tool_rows[0][1]},
           title="a 1.5 MB tool result vs 50 items")

# %% [markdown]
# **Verdict:** not reproduced on these versions — CrewAI 1.15.30 parks an oversized tool result in a
# temporary file by default, and summarizes an overflowing conversation when that is off; only with
# both guards off does the payload reach the model, which rejects it, and CrewAI raises `SystemExit`,
# not a truncation. The paginated tool is still the cheapest: 2 small requests (evidence: the cells above).

# %% [markdown]
# ## 6. The article's debugging steps (Aarons, CrewAI production)
#
# **Step 1: disable streaming first.** "If the issue disappears, the problem is likely transport or
# runtime related." The same broken crew with only `stream` flipped, under the faults of section 1:

# %%
step1 = [await kickoff("cut@100 · stream=True", article_broken(mock.base_url_for(Cut(at=100), tokens=LONG)), LONG),
         await kickoff("cut@100 · stream=False",
                       article_broken(mock.base_url_for(Cut(at=100), tokens=LONG), stream=False), LONG),
         lb_rows[0], lb_rows[2]]
print(slc.report(step1))

# %% [markdown]
# The test misleads in both directions. A connection cut is transport, yet it does not disappear with
# `stream=False` (it costs 9 requests instead of 3); behind an idle-timeout load balancer, switching
# streaming off makes a working crew fail. With CrewAI's retries, flipping `stream` changes how many
# requests are made and which layer reports the error, so compare the request counts and error classes,
# not just "works / fails".
#
# **Step 2: reduce the task.** "If a shorter prompt works reliably, you're hitting token/time limits."
# From the tables above: behind the idle timeout the 250-word task works and the 800-word one fails
# without streaming (a time limit: true); under `max_tokens` the split tasks work (a token limit: true);
# under a cut at token 100 the short task fails as well, because the cut comes before its end. This
# step works when the limit is a duration or a token budget.
#
# **Step 3: check infrastructure timeouts.** Every hop left a line that names the timeout; CrewAI's own
# log carries the body of the error page. Here is what each layer recorded in sections 1, 3 and 4:

# %%
print("load balancer hop log:    ", lb_faults[0])
print("serverless platform hop:  ", platform_faults[0])
print("nginx error log:          ", nginx_errors[0])
print("client of the platform:   ", killed.error_class, killed.error.response.status_code,
      killed.error.response.text.strip().splitlines()[-1])
print("client of nginx:          ", gateway.error_class, gateway.error.response.status_code,
      gateway.error.response.reason_phrase)
crewai_504 = [line for line in lb_rows[2][2].logs if "504" in line]
print(f"CrewAI's log (stream=False behind the load balancer): {len(crewai_504)} lines with a 504, the first:")
print("   ", " ".join(crewai_504[0].split())[:120])

# %% [markdown]
# None of these hops says "context deadline exceeded": that is Go's wording for a timeout
# (`context.DeadlineExceeded`), logged by Go-based proxies such as Traefik or Caddy. Search your logs
# for `504`, `timed out` and the platform's own code (`FUNCTION_INVOCATION_TIMEOUT`) as well. Container
# restarts do not apply here.
#
# **Step 4: log tool outputs and the final token usage.** The article's example prints the result's type
# and its first 1,000 characters. For the capped analysis of section 2, that shows nothing wrong:

# %%
result = await whole_analysis(1200).kickoff_async()
print(type(result))
print(str(result)[:1000])

# %% [markdown]
# The finish reason, the token usage per call and the size of every tool result are in CrewAI's
# events. A listener is a few lines; CrewAI runs most handlers in a thread pool, so collect first and
# print after `crewai_event_bus.flush()`:

# %%
from crewai.events import crewai_event_bus  # noqa: E402
from crewai.events.types.llm_events import LLMCallCompletedEvent  # noqa: E402
from crewai.events.types.tool_usage_events import ToolUsageFinishedEvent  # noqa: E402

seen_events = []


def on_llm_done(source, event):
    usage = event.usage or {}
    seen_events.append(f"LLM call done: finish_reason={event.finish_reason}, "
                       f"prompt_tokens={usage.get('prompt_tokens')}, "
                       f"completion_tokens={usage.get('completion_tokens')}")


def on_tool_done(source, event):
    seen_events.append(f"tool {event.tool_name} returned {len(str(event.output)):,} chars")


crewai_event_bus.register_handler(LLMCallCompletedEvent, on_llm_done)
crewai_event_bus.register_handler(ToolUsageFinishedEvent, on_tool_done)
try:
    result = await whole_analysis(1200).kickoff_async()
    crewai_event_bus.flush()
    with mock.script(None, then="tools=off"):
        await fraud_crew(fetch_all_transactions).kickoff_async()
    crewai_event_bus.flush()
finally:
    crewai_event_bus.off(LLMCallCompletedEvent, on_llm_done)
    crewai_event_bus.off(ToolUsageFinishedEvent, on_tool_done)
print("\n".join(seen_events))
print("crew token usage:", result.token_usage.completion_tokens, "completion tokens")

# %% [markdown]
# **Verdict:** partly — steps 3 and 4 find the causes (when the listener reads `finish_reason`, not just
# the printed result); step 2 finds time and token limits; step 1 misleads, because with CrewAI's
# layered retries turning streaming off changes the error and the request count rather than making a
# transport problem disappear (evidence: the cells of this section).

# %% [markdown]
# ## 7. `crew.kickoff()` in a running Jupyter kernel, and nest-asyncio
#
# Section 0 showed `crew.kickoff()` refusing to run in a cell. nest-asyncio is the usual cure for
# "asyncio.run() cannot be called from a running event loop". It runs last in this notebook because
# `nest_asyncio.apply()` patches asyncio for the rest of the kernel's life (pure-Python tasks and
# futures, a re-entrant loop).

# %%
import nest_asyncio  # noqa: E402

nest_asyncio.apply()
with slc.observe(mock) as seen:
    try:
        article_fixed(mock.base_url_for(tokens=SHORT)).kickoff()
    except RuntimeError as exc:
        print(f"after nest_asyncio.apply(), crew.kickoff(): {type(exc).__name__}: {str(exc)[:70]}...")
print(seen.summary())
result = asyncio.run(article_fixed(mock.base_url_for(tokens=SHORT)).kickoff_async())
print("asyncio.run(crew.kickoff_async()) now works:", type(result).__name__, slc.words(result.raw), "words")

# %% [markdown]
# nest-asyncio does not help `kickoff()`: CrewAI checks `asyncio.get_running_loop()`, which still finds
# the kernel's loop. It only makes `asyncio.run(...)` re-entrant, and `await crew.kickoff_async()` needed
# no patch. The same check fires in a web app: the `async def` version of the report handler fails.

# %%
response = httpx.post(server.url + "/report/async")
print(response.status_code, response.text)

# %% [markdown]
# FastAPI answers `500 Internal Server Error`: the handler runs on the server's event loop, so
# `crew.kickoff()` raises the same `RuntimeError`. In an `async def` handler, `await crew.kickoff_async()`;
# or declare the handler `def`, as the app above does.

# %% [markdown]
# ## 8. Summary
#
# | pattern | verdict | lesson |
# |---|---|---|
# | 1. `stream=True` on a long task vs `stream=False` on a short one | partly | the short task helps behind an idle timeout; `stream=False` adds SDK retries (9 requests instead of 3) and is what fails behind an idle timeout when the task stays long |
# | 2. output over the token limit | reproduced | a capped answer is a normal `CrewOutput`; only `finish_reason="length"` in the events shows it; split results live in `tasks_output` |
# | 3. a platform that kills requests | reproduced | `504` at the limit while the crew runs on and is paid for; a polled background job completes |
# | 4. a 60 s gateway timeout | reproduced | nginx `504` after 60 s of silence; a job whose tokens stream through the same nginx completes |
# | 5. a tool with a huge payload | not reproduced on these versions | CrewAI defers oversized tool results to a file by default; with every guard off it raises `SystemExit` on the 400, not a truncation |
# | 6. the debugging steps | partly | logs and events find the cause; "disable streaming first" misleads with CrewAI's retry layers |
#
# Also found on these versions: the article's `crew.kickoff()` raises `RuntimeError` in a notebook cell
# and in an `async def` handler (nest-asyncio does not change that); `Crew(stream=True)` repeats the
# tokens of a failed attempt without a marker; CrewAI reports a cut without streaming as
# "Failed to connect to OpenAI API"; and the agent's retry budget is spent for good (exercise 2).

# %% [markdown]
# ## 9. Exercises
#
# 1. A **one-off** cut: script the first request to be cut at token 100 and the next to run clean
#    (`mock.script(Cut(at=100), None)`). How many model requests do the broken and the fixed crew make,
#    and which layer retried?
# 2. Build **one** broken crew and kick it off three times while every request is cut at token 100
#    (`mock.inject(Cut(at=100))`), then once more with a one-off cut. How many requests does each
#    kickoff make? What does that mean for a crew built once at import time in a web app?
# 3. A persistent `429` (`RateLimited(retry_after=1)`): how many requests does the broken crew make
#    before `kickoff` gives up, and which three layers multiply?
# 4. The job stream of section 3 through the 60 s serverless platform is cut at 60 s. Reconnect with the
#    `Last-Event-ID` of the last token you got and read the rest: does the client end up with all 800
#    tokens?

# %% tags=["solution"]
# Solution 1: the agent retries the streamed call; without streaming the SDK retries inside the first attempt.
one_off = []
for label, crew in [("broken", article_broken(mock.base_url_for(tokens=LONG))),
                    ("fixed", article_fixed(mock.base_url_for(tokens=SHORT)))]:
    with mock.script(Cut(at=100), None):
        one_off.append(await kickoff(f"one-off cut · {label}", crew, LONG if label == "broken" else SHORT))
print(slc.report(one_off))
for label, run, seen in one_off:
    print(f"{label}: failed agent attempts {len(seen.agent_errors)}, CrewAI LLM calls {len(seen.llm_calls)}, "
          f"model requests {len(seen.requests)}")

# %% tags=["solution"]
# Solution 2: Agent.max_retry_limit is a budget for the agent object's lifetime: it is never reset.
reused = article_broken(mock.base_url_for(tokens=SHORT))
counts = []
for attempt in range(3):
    with mock.inject(Cut(at=100)):
        _, run, seen = await kickoff(f"persistent cut #{attempt + 1}", reused, SHORT)
    counts.append((run.error_class, len(seen.requests)))
with mock.script(Cut(at=100), None):
    _, run, seen = await kickoff("one-off cut", reused, SHORT)
counts.append((run.error_class, len(seen.requests)))
print(counts)

# %% tags=["solution"]
# Solution 3: 3 SDK attempts x 3 CrewAI rate-limit attempts x 3 agent attempts.
label, run, seen = await kickoff("429 every request", article_broken(mock.base_url_for(RateLimited(retry_after=1))),
                                 LONG)
print(run.error_class, "|", seen.summary())

# %% tags=["solution"]
# Solution 4: the stream is cut at the platform's limit; Last-Event-ID resumes where it stopped.
with Proxy(upstream=server, faults=hops.serverless(max_duration=60), name="platform") as platform:
    job = httpx.post(platform.url + "/jobs").json()
    url = f"{platform.url}/jobs/{job['id']}/stream"
    first = sl.record(slc.HTTPStream(url, unit="event", timeout=None), understand=slc.app_event, expected=LONG)
    last_id = first.chunks - 1
    rest = sl.record(slc.HTTPStream(url, headers={"Last-Event-ID": str(last_id)}, unit="event", timeout=None),
                     understand=slc.app_event, expected=LONG - first.chunks)
print(first.outcome, first.error_class, "|", rest.outcome, "| tokens:", first.chunks + rest.chunks)

# %%
for hop in (server, mock):
    hop.stop()
print("running servers:", sl.running_servers())
print("attempts to leave loopback:", network.attempts)
