# Source of notebooks/05_incidents.ipynb (build: .venv/bin/python tools/nb.py build notebooks/src/05_incidents.py)

# %% [markdown]
# # 05 · Incidents: real reports of cut and stuck streams, rebuilt and replayed
#
# **The question.** When a user reports "the stream stops after a minute" or "the browser says
# `net::ERR_...`", can we rebuild the stack they had from real parts (nginx where they had nginx, the
# app server they ran, a real browser where they saw a browser error), see the same error they saw,
# and prove the fix under the same conditions? Each section below takes one public issue or pull
# request, cited by repository and number, and does exactly that. The reporters' words are not quoted;
# only the error texts are.
#
# 0. Setup
# 1. ingress-nginx's 60 s in front of an nginx with 300 s (onyx-dot-app/onyx#10247)
# 2. nginx buffers what a middle proxy sends (mostlygeek/llama-swap#236, #295)
# 3. API Gateway's 29 s in front of a slow Lambda (FullStackWithLawrence/aws-openai#4)
# 4. A load balancer's idle timeout during a silent node (langflow-ai/langflow#15178, #15188)
# 5. gunicorn's 30 s and a slow first chunk (BerriAI/litellm#1953)
# 6. gzip on for text/event-stream (nexu-io/open-design#99, #111)
# 7. A CDN's 30 s before the response head (open-webui/open-webui#10316)
# 8. A Google Cloud load balancer's 30 s total over HTTP/2 (kubernetes/ingress-gce#518)
# 9. Cloudflare's 100 s and a non-streaming call (misospace/pr-reviewer-action#23)
# 10. The browser leaves; does the model stop? (vllm-project/vllm#54947)
# 11. Summary
# 12. Exercises

# %% [markdown]
# ## 0. Setup
#
# Versions are checked first. `sl.offline()` refuses connections that leave loopback.
# `sl.time_scale(0.015)` runs one scenario second in 15 ms, so every duration below is written and
# printed in production seconds. The browser is Debian's Chromium driven by Playwright
# (`sl.Browser`, `streamlab/_browser.py`): one headless browser for the whole notebook, loading a
# small page that reads each stream with `EventSource` or with `fetch` and a stream reader, on the
# stream's own origin. What it reports (`net::ERR_...`, console lines, the protocol it spoke) becomes a
# `Run` like any other client's.

# %%
import time

import streamlab as sl
from streamlab import hops
from streamlab.faults import AccelBuffering, OnDisconnect, SlowHeaders, Transfer

print(sl.require(playwright="1.65.2", openai="2.54.0", httpx="0.28.1", uvicorn="0.54.0", gunicorn="27.0.1"))
sl.offline()
sl.time_scale(0.015)
assert sl.browser_available() is None, sl.browser_available()
browser = sl.Browser().start()
mock = sl.MockLLM(tokens=20, ttft=1, itl=1).start()
BODY = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "Explain RFC 9110"}]}


def via(front_url, *faults, **options):
    """The mock's chat completions URL reached through a hop at ``front_url``, with the model's behaviour."""
    return front_url + mock.base_url_for(*faults, **options)[len(mock.url):] + "/chat/completions"


def show(run):
    """What the reader of a browser console would see, and what was measured."""
    print(run)
    print(f"  status {run.status}, protocol {run.protocol}, {run.chunks} chunks, "
          f"TTFT {run.ttft if run.ttft is not None else float('nan'):.1f} s, E2E {run.e2e:.1f} s")
    if run.net_error or run.page_error:
        print(f"  browser: {run.net_error}; page: {run.page_error}")


print("one scenario second runs in", sl.current_time_scale(), "s of wall-clock time")

# %% [markdown]
# ## 1. ingress-nginx's 60 s in front of an nginx with 300 s (onyx-dot-app/onyx#10247)
#
# **Report.** Onyx runs browser → cloud load balancer → ingress-nginx → Onyx's own nginx → API server.
# Its own nginx allows 300 s between reads; the ingress controller keeps its default of 60 s. A chat
# with a very large prompt (the PR mentions about 70 000 tokens) waits longer than a minute for the
# first token; the ingress gives up on the stream, and the browser reports `ERR_HTTP2_PROTOCOL_ERROR`,
# while the inner hops finish the request normally.
#
# **Rebuilt.** Real nginx twice: the ingress (`hops.ingress_nginx()`, its ConfigMap defaults:
# 60 s, buffering off) listening with TLS and HTTP/2, as a browser meets it; behind it an nginx with
# `proxy_read_timeout 300` and buffering off; behind that the mock model, whose response head leaves at
# once and whose first token comes after 70 s. The client is Chromium, reading with `fetch` (a POST).

# %%
SLOW_FIRST = dict(tokens=10, ttft=70, itl=1)
with sl.NginxProxy(upstream=mock, faults=hops.nginx(proxy_read_timeout=300, proxy_buffering=False)) as inner, \
        sl.NginxProxy(upstream=inner, faults=hops.ingress_nginx(), http2=True) as ingress:
    onyx_broken = browser.stream(via(ingress.https_url, **SLOW_FIRST),
                                 mode="fetch", method="POST", json=BODY, expected=10, label="ingress 60 s")
show(onyx_broken)

# %% [markdown]
# The browser spoke HTTP/2 to the ingress and got `200`, then after 60 s of silence the ingress reset
# the stream: `net::ERR_HTTP2_PROTOCOL_ERROR`, the reporter's error, and `fetch`'s reader failed with a
# network error. The inner nginx, with its 300 s, had no complaint.
#
# **Fix** (the PR): 900 s at the ingress (`proxy-read-timeout` annotation), and 900 s at the inner nginx.

# %%
with sl.NginxProxy(upstream=mock, faults=hops.nginx(proxy_read_timeout=900, proxy_buffering=False)) as inner, \
        sl.NginxProxy(upstream=inner, faults=hops.ingress_nginx(proxy_read_timeout=900), http2=True) as ingress:
    onyx_fixed = browser.stream(via(ingress.https_url, **SLOW_FIRST),
                                mode="fetch", method="POST", json=BODY, expected=10, label="ingress 900 s")
show(onyx_fixed)
sl.compare(broken=onyx_broken, fixed=onyx_fixed, title="a 70 s first token behind ingress-nginx")

# %% [markdown]
# **Verdict: reproduced.** Same error text, same place. Differences: nginx 1.22.1 plays the ingress
# (the controller ships its own nginx build); the load balancer in front is left out, since it is not
# where the stream broke.
#
# ## 2. nginx buffers what a middle proxy sends (mostlygeek/llama-swap#236, #295)
#
# **Report.** nginx with its default `proxy_buffering on` streamed llama-server's answers fine, but once
# llama-swap (a Go proxy that starts and swaps model servers) sat between nginx and llama-server,
# `stream=true` answers stuttered. The issue proposed `X-Accel-Buffering: no` from llama-swap; the PR
# added it to streaming responses and documented `proxy_buffering off`.
#
# Why one and not the other: nginx talks HTTP/1.0 to its upstream by default. A server that answers
# that with `Transfer-Encoding: chunked` anyway (llama-server, uvicorn) is passed on read by read; one
# that answers with a body delimited by closing the connection (what Go's server does for HTTP/1.0) is
# collected in nginx's buffers (measured, `streamlab/hops.py`).
#
# **Rebuilt.** Real nginx with its defaults in front of the mock in two shapes: chunked (llama-server
# directly) and close-delimited without `X-Accel-Buffering` (what nginx gets from the middle proxy).
# *Approximated:* the middle hop itself is not run; the mock answers the way it answers. The client is
# Chromium with `fetch`; `itl=1` tells the recorder the answer was meant to arrive once a second.

# %%
SWAP = dict(tokens=20, ttft=1, itl=1)
with sl.NginxProxy(upstream=mock, faults=hops.nginx()) as nginx:
    direct = browser.stream(via(nginx.url, **SWAP), mode="fetch",
                            method="POST", json=BODY, expected=20, itl=1, label="llama-server (chunked)")
    via_swap = browser.stream(via(nginx.url, Transfer(value="close"),
                                                                 AccelBuffering(value="absent"),
                                                                 **SWAP),
                              mode="fetch", method="POST", json=BODY, expected=20, itl=1,
                              label="via the middle proxy (close-delimited)")
    fixed_header = browser.stream(via(nginx.url, Transfer(value="close"),
                                                                     AccelBuffering(value="no"),
                                                                     **SWAP),
                                  mode="fetch", method="POST", json=BODY, expected=20, itl=1,
                                  label="+ X-Accel-Buffering: no")
with sl.NginxProxy(upstream=mock, faults=hops.nginx(proxy_buffering=False)) as nginx:
    fixed_off = browser.stream(via(nginx.url, Transfer(value="close"),
                                                                  AccelBuffering(value="absent"),
                                                                  **SWAP),
                               mode="fetch", method="POST", json=BODY, expected=20, itl=1,
                               label="proxy_buffering off")
sl.table([direct, via_swap, fixed_header, fixed_off])

# %% [markdown]
# **Verdict: reproduced** (the symptom is a held stream, there is no error text): the close-delimited
# answer reaches the browser in one burst (`buffered`); the header from the middle hop or
# `proxy_buffering off` at nginx lets it stream at one token a second. A longer answer would leave in
# 4 KiB bursts, the "stutter" of the report.
#
# ## 3. API Gateway's 29 s in front of a slow Lambda (FullStackWithLawrence/aws-openai#4)
#
# **Report.** An API Gateway REST API in front of a Lambda function that calls GPT-4 without streaming.
# The gateway's integration timeout is 29 s; the slower requests time out at the gateway, while the
# function goes on, gets the model's answer and logs it (the report found it in CloudWatch).
#
# **Rebuilt.** The embedded proxy with the API Gateway profile (`hops.aws_api_gateway()`: 29 s, then
# `504 {"message": "Endpoint request timed out"}`) in front of the mock answering without streaming after
# 45 s, set to go on generating when its client leaves (`OnDisconnect("continue")`, what a Lambda does:
# it runs until it returns). *Approximated:* the Lambda runtime is not run; the mock plays the function
# and the model it calls. Client: Chromium, `fetch`.

# %%
LAMBDA = dict(tokens=30, ttft=45, itl=0)
with sl.Proxy(upstream=mock, faults=hops.aws_api_gateway()) as gateway:
    gw_broken = browser.stream(via(gateway.url, OnDisconnect(value="continue"),
                                                                    **LAMBDA),
                               mode="fetch", method="POST", json={**BODY, "stream": False}, label="API Gateway")
show(gw_broken)
print("the client got:", gw_broken.body)
mock_entry = mock.journal.last
time.sleep(60 * sl.current_time_scale())   # extra code: let the model's 45 s pass before reading its journal
print(f"the model: {mock_entry.ended}, tokens generated {mock_entry.tokens_generated}, "
      f"sent {mock_entry.tokens_sent}, client left at: {mock_entry.disconnect}")

# %% [markdown]
# The browser got `504` with the gateway's JSON after 29 s; the model went on to generate every token
# for nobody. **Fix**: the issue is open; what works is not to hold one request open past 29 s through
# the gateway. Here: stream from a function URL (Lambda response streaming, up to Lambda's own 900 s
# limit, `hops.serverless(max_duration=900)`), so the same 45 s answer arrives.

# %%
with sl.Proxy(upstream=mock, faults=hops.serverless(max_duration=900)) as function_url:
    gw_fixed = browser.stream(via(function_url.url, **{**LAMBDA, "itl": 0.2}),
                              mode="fetch", method="POST", json=BODY, expected=30, label="function URL, streamed")
show(gw_fixed)
sl.compare(broken=gw_broken, fixed=gw_fixed, title="a 45 s answer behind API Gateway (29 s)")

# %% [markdown]
# **Verdict: reproduced** (504 and body exactly as reported by many gateway users; the function paying
# on is shown by the mock's journal).
#
# ## 4. A load balancer's idle timeout during a silent node (langflow-ai/langflow#15178, #15188)
#
# **Report.** Langflow 1.12.2 streams a workflow run as SSE. A node that works longer than the idle
# timeout of something in between (a load balancer, a firewall, a proxy: 50 to 60 s is common) leaves
# the stream silent; that hop closes the connection, the UI says the run failed with a network error,
# and the backend often finishes anyway. The PR sends an SSE comment `: keepalive` after 15 s of silence.
#
# **Rebuilt.** streamlab's heartbeat demo app (`streamlab/apps/heartbeat.py`, FastAPI under real
# uvicorn, `ChatOpenAI.astream` inside) behind the embedded proxy with AWS ALB's profile (60 s idle,
# `hops.aws_alb()`); the model sends 2 tokens, then is silent for 90 s (the "node"), then sends the
# rest. Client: Chromium, `fetch` with a stream reader (what the UI uses).

# %%
app = sl.Uvicorn("streamlab.apps.heartbeat:app", env={"STREAMLAB_MODEL_URL": mock.base_url}).start()
NODE = "tokens=6,ttft=1,itl=1,stall@2=90"
with sl.Proxy(upstream=app, faults=hops.aws_alb()) as alb:
    lf_broken = browser.stream(f"{alb.url}/sse?spec={NODE}", mode="fetch", expected=6, label="no keepalive")
    lf_fixed = browser.stream(f"{alb.url}/sse?spec={NODE}&every=15", mode="fetch", expected=6,
                              label=": ping every 15 s")
show(lf_broken)
show(lf_fixed)
print("the page read heartbeat comments:", lf_fixed.comments > 0, "| application events:", lf_fixed.chunks)
sl.compare(broken=lf_broken, fixed=lf_fixed, title="a 90 s silent node behind a 60 s idle timeout")

# %% [markdown]
# **Verdict: reproduced.** Without comments the ALB cut the stream at 60 s of silence and the browser
# reported a broken chunked body; with a comment every 15 s the same run completes, and the comments
# never reach the application's events. *Differences:* the report's hop was Caddy and an unnamed
# middlebox; streamlab's heartbeat app sends `: ping` where Langflow's PR sends `: keepalive` (both are
# SSE comments, ignored by every SSE parser).
#
# ## 5. gunicorn's 30 s and a slow first chunk (BerriAI/litellm#1953)
#
# **Report.** LiteLLM's proxy ran under gunicorn, whose worker timeout defaults to 30 s; a model that
# took over 30 s to send its first chunk (the PR names Bedrock's Claude v2.1) was killed with its
# worker. The PR raised the timeout.
#
# **When gunicorn kills.** `--timeout` is not a request timeout: the arbiter kills a worker that has not
# *notified* it for that long. A sync (WSGI) worker notifies only between requests, so a request that
# waits 60 s for its first chunk is killed at about 30 s; a uvicorn worker notifies from its event loop,
# so an async wait of 60 s passes (and only a blocked loop is killed). Two real gunicorns, model-free
# ticker apps whose first event comes after 60 s. This section runs at `time_scale(0.08)`: gunicorn
# checks its workers about once a second of wall clock, so its 30 s must stay well above that.

# %%
GUNICORN_SCALE = 0.08
with sl.time_scale(GUNICORN_SCALE):
    async_server = sl.Gunicorn("streamlab.apps.ticker:app", timeout=30).start()   # also used in exercise 2
with sl.time_scale(GUNICORN_SCALE), \
        sl.Gunicorn("streamlab.apps.ticker_wsgi:app", worker_class="sync", timeout=30) as sync_server:
    gu_sync = browser.stream(sync_server.url + "/ticks?n=1&every=60", mode="fetch", expected=1,
                             label="sync worker, --timeout 30")
    gu_async = browser.stream(async_server.url + "/stream?n=1&every=60", mode="fetch", expected=1,
                              label="uvicorn worker, --timeout 30")
    first_kill = sync_server.log_lines("WORKER TIMEOUT")[0]
    print("gunicorn's log:", first_kill[first_kill.index("[CRITICAL]"):])
show(gu_sync)
show(gu_async)

# %% [markdown]
# **Verdict: partly.** The sync worker is killed 30 s into its wait for the first chunk, or a little
# later (gunicorn looks about once a second of wall clock, 12 scenario seconds at this scale;
# `WORKER TIMEOUT` in its log), and the browser gets an HTTP `500` instead of a stream. The uvicorn worker, the kind LiteLLM's
# proxy runs, is *not* killed by a slow async first chunk on gunicorn 27: the PR's explanation holds
# only where the worker cannot notify (a sync worker, or a blocked event loop, exercise 2).
#
# ## 6. gzip on for text/event-stream (nexu-io/open-design#99, #111)
#
# **Report.** Open Design's daemon behind nginx on Ubuntu 20.04: `proxy_buffering off` and read
# timeouts of a day, yet long generations failed about 90 s in with `net::ERR_INCOMPLETE_CHUNKED_ENCODING
# 200 (OK)` in the browser console; nginx logged nothing. The reporter found that nginx's `gzip on`
# (with the event-stream type compressed) was what broke it, and that a heartbeat would help. The PR
# added a `: keepalive` comment every 25 s and documented `gzip off` for SSE.
#
# **Rebuilt.** Real nginx 1.22.1 with `proxy_buffering off` and `gzip on` for `text/event-stream`, in
# front of the mock streaming a 100 s answer, read by Chromium with `fetch`; then the same with gzip off.

# %%
LONG = dict(tokens=20, ttft=1, itl=5)
with sl.NginxProxy(upstream=mock, faults=hops.nginx(proxy_buffering=False, proxy_read_timeout=86400,
                                                   gzip=True, gzip_types=("text/event-stream",))) as nginx:
    od_gzip = browser.stream(via(nginx.url, **LONG), mode="fetch",
                             method="POST", json=BODY, expected=20, itl=5, label="gzip on, buffering off",
                             headers={"accept-encoding": "gzip"})
with sl.NginxProxy(upstream=mock, faults=hops.nginx(proxy_buffering=False, proxy_read_timeout=86400)) as nginx:
    od_plain = browser.stream(via(nginx.url, **LONG), mode="fetch",
                              method="POST", json=BODY, expected=20, itl=5, label="gzip off")
show(od_gzip)
print("  content-encoding:", od_gzip.headers.get("content-encoding"))
show(od_plain)

# %% [markdown]
# **Verdict: not reproduced on these versions.** nginx 1.22.1 with `proxy_buffering off` (and the
# mock's `X-Accel-Buffering: no`, as the daemon sent) flushes gzip output on every upstream read, so the compressed stream reaches Chromium event by event and completes.
# The 90 s cut of the report needs something this stack does not have (the reporter's nginx build and
# version are not given; a hop with an idle timeout in front would explain a cut when gzip holds bytes
# back, as it does with buffering on: see exercise 3).
#
# ## 7. A CDN's 30 s before the response head (open-webui/open-webui#10316)
#
# **Report.** Open WebUI v0.5.14 in Docker, used from Chrome 133 through a CDN with a 30 s limit. With a
# model that thinks for more than 30 s, `/api/chat/completions` fails with `504 Gateway Timeout`,
# although the backend finishes and stores the answer.
#
# **Rebuilt.** The embedded proxy with a 30 s read timeout plays the CDN (the report does not name it:
# *approximated*), in front of the mock, whose response head leaves only after 40 s of "thinking"
# (`SlowHeaders(40)`, what a backend does that waits for the model before it answers). Client: Chromium
# with `fetch`.

# %%
with sl.Proxy(upstream=mock, faults=[hops.ReadTimeout(seconds=30)]) as cdn:
    ow_broken = browser.stream(via(cdn.url, SlowHeaders(seconds=40)), mode="fetch", method="POST", json=BODY,
                               expected=20, label="CDN 30 s")
with sl.Proxy(upstream=mock, faults=[hops.ReadTimeout(seconds=120)]) as cdn:
    ow_fixed = browser.stream(via(cdn.url, SlowHeaders(seconds=40)), mode="fetch", method="POST", json=BODY,
                              expected=20, label="CDN 120 s")
show(ow_broken)
show(ow_fixed)

# %% [markdown]
# **Verdict: reproduced** (`504` after 30 s). The fix shown is the CDN's limit above the thinking time;
# the other fix, sending the response head and then keepalive comments at once, needs the backend to
# answer before the model does (section 4 shows that one).
#
# ## 8. A Google Cloud load balancer's 30 s total over HTTP/2 (kubernetes/ingress-gce#518)
#
# **Report.** A `text/event-stream` endpoint behind a GKE ingress (Google's HTTP(S) load balancer): the
# browser console shows `net::ERR_SPDY_PROTOCOL_ERROR 200` and the stream drops almost exactly 30 s in;
# curl says `HTTP/2 stream 1 was not closed cleanly: INTERNAL_ERROR (err 2)`. Raising nginx timeouts did
# not help; the load balancer's backend timeout (30 s by default, a limit on the whole response, not
# on silence) was the cause, raised through a `BackendConfig`.
#
# **Rebuilt.** The embedded proxy with `hops.gcp_load_balancer()` (30 s total) in front of the
# model-free ticker app (one event a second for 40 s, never silent), and real nginx with HTTP/2 and TLS
# in front of it for the browser's side of the connection (*approximated*: Google's front end is not
# nginx). Client: Chromium with `EventSource`.

# %%
ticker = sl.Uvicorn("streamlab.apps.ticker:app").start()
with sl.Proxy(upstream=ticker, faults=hops.gcp_load_balancer()) as gclb, \
        sl.NginxProxy(upstream=gclb, faults=hops.nginx(proxy_buffering=False, proxy_read_timeout=3600),
                      proxy_http_version="1.1", http2=True) as front:
    gc_broken = browser.stream(front.https_url + "/stream?n=40&every=1", expected=40, label="timeoutSec 30")
with sl.Proxy(upstream=ticker, faults=hops.gcp_load_balancer(timeout_sec=3600)) as gclb, \
        sl.NginxProxy(upstream=gclb, faults=hops.nginx(proxy_buffering=False, proxy_read_timeout=3600),
                      proxy_http_version="1.1", http2=True) as front:
    gc_fixed = browser.stream(front.https_url + "/stream?n=40&every=1", expected=40, label="timeoutSec 3600")
print(f"{gc_broken.label}: {gc_broken.outcome}, {gc_broken.net_error}, after {gc_broken.e2e:.1f} s, "
      f"with an event every second until then: {gc_broken.chunks >= 25}")
show(gc_fixed)

# %% [markdown]
# **Verdict: reproduced**, with today's name of the error: Chromium renamed its SPDY errors, so the same
# reset reads `net::ERR_HTTP2_PROTOCOL_ERROR` here. The stream was cut at 30 s while an event arrived
# every second: no keepalive helps against a total limit, only `timeoutSec` does.
#
# ## 9. Cloudflare's 100 s and a non-streaming call (misospace/pr-reviewer-action#23)
#
# **Report.** A review action calls a self-hosted model behind Cloudflare without streaming; answers
# that take longer than 100 s fail with `error: 524`, every retry again. Cloudflare's 100 s counts the
# wait between reads, so the proposed fix is `"stream": true`: the first token comes well before 100 s
# and every token resets the timer.
#
# **Rebuilt.** The embedded proxy with `hops.cloudflare()` (100 s, `524` `error code: 524`) in front
# of the mock: a non-streaming answer that takes 125 s, then the same answer streamed (first token after
# 20 s, then one every 3 s: 107 s in all). Client: Chromium with `fetch` (the report used curl).

# %%
with sl.Proxy(upstream=mock, faults=hops.cloudflare()) as cloudflare:
    cf_broken = browser.stream(via(cloudflare.url, tokens=30, ttft=125, itl=0), mode="fetch", method="POST",
                               json={**BODY, "stream": False}, label="stream: false")
    cf_fixed = browser.stream(via(cloudflare.url, tokens=30, ttft=20, itl=3), mode="fetch", method="POST",
                              json=BODY, expected=30, label="stream: true")
show(cf_broken)
print("the client got:", cf_broken.body)
show(cf_fixed)

# %% [markdown]
# **Verdict: reproduced** (`524`, body `error code: 524`, at 100 s). The streamed answer takes longer in
# total and passes, because no gap between reads reaches 100 s.
#
# ## 10. The browser leaves; does the model stop? (vllm-project/vllm#54947)
#
# **Report.** vLLM v0.22.0 (the `vllm/vllm-openai` image) serving Qwen2.5-7B: when the client closed
# its connection mid-request, the server went on generating tokens. In the review of vllm#32442 a
# maintainer says the OpenAI server already aborts a request whose client has gone.
#
# **Rebuilt.** No vLLM here (no GPU, no model): *not the reporter's server*. What can be shown for real
# is the client half: a browser that stops reading with `AbortController` after 5 events does close the
# connection, and the server sees it; and what the two server policies cost. The mock plays a server
# that stops (`ondisconnect=stop`, its default) and one that generates on (`continue`), and its
# journal counts the tokens paid for.

# %%
paid = {}
for policy in ("continue", "stop"):
    left = browser.stream(via(mock.url, OnDisconnect(value=policy), tokens=30, itl=1), mode="fetch",
                          method="POST", json=BODY, expected=30, abort_after=5, label=f"server: {policy}")
    time.sleep(40 * sl.current_time_scale())          # extra code: let the 30 s answer's schedule pass
    entry = mock.journal.last
    paid[policy] = (left, entry)
    print(f"server {policy}: {left.outcome}; the server noticed mid-stream: "
          f"{entry.disconnect.startswith('at token')}; tokens paid for: "
          f"{'all 30' if entry.tokens_generated == 30 else 'at most 6' if entry.tokens_generated <= 6 else 'some'}")
vl_broken, vl_fixed = paid["continue"][0], paid["stop"][0]

# %% [markdown]
# **Verdict: not reproduced here** (vLLM is not run). The browser's abort reaches the server at once,
# within a token; whether the engine then stops is the server's own choice, and the difference is
# most of the answer paid for nothing.
#
# ## 11. Summary

# %%
from IPython.display import Markdown  # noqa: E402

ROWS = [
    ("onyx-dot-app/onyx#10247", onyx_broken, onyx_fixed, "reproduced"),
    ("mostlygeek/llama-swap#236, #295", via_swap, fixed_header, "reproduced"),
    ("FullStackWithLawrence/aws-openai#4", gw_broken, gw_fixed, "reproduced"),
    ("langflow-ai/langflow#15178, #15188", lf_broken, lf_fixed, "reproduced"),
    ("BerriAI/litellm#1953", gu_sync, gu_async, "partly"),
    ("nexu-io/open-design#99, #111", od_gzip, od_plain, "not reproduced on these versions"),
    ("open-webui/open-webui#10316", ow_broken, ow_fixed, "reproduced"),
    ("kubernetes/ingress-gce#518", gc_broken, gc_fixed, "reproduced"),
    ("misospace/pr-reviewer-action#23", cf_broken, cf_fixed, "reproduced"),
    ("vllm-project/vllm#54947", vl_broken, vl_fixed, "not reproduced here (no vLLM)"),
]
lines = ["| incident | broken: outcome (browser error) | fixed: outcome | verdict |", "|---|---|---|---|"]
for name, broken, fixed, verdict in ROWS:
    lines.append(f"| {name} | {broken.outcome} ({broken.net_error or broken.status}) | {fixed.outcome} | {verdict} |")
Markdown("\n".join(lines))

# %% [markdown]
# The verdict column is written by hand from the sections above; the outcome columns are this run's.
# Lessons: every hop's timeout counts, the smallest wins (1, 3, 4, 7, 9), and some are totals that no
# keepalive helps against (8); what nginx buffers depends on the
# framing it receives, not only on its settings (2); gunicorn's timeout is a liveness check, not a
# request limit (5); a setting that broke someone's stream may not break it on another version (6).
#
# ## 12. Exercises
#
# 1. Section 1's fix raised the ingress to 900 s. Would 120 s do for the 70 s first token? And for a
#    first token after 150 s?

# %% tags=["solution"]
results = {}
with sl.NginxProxy(upstream=mock, faults=hops.nginx(proxy_read_timeout=300, proxy_buffering=False)) as inner, \
        sl.NginxProxy(upstream=inner, faults=hops.ingress_nginx(proxy_read_timeout=120), http2=True) as ing:
    for ttft in (70, 150):
        run = browser.stream(via(ing.https_url, **{**SLOW_FIRST, "ttft": ttft}), mode="fetch", method="POST",
                             json=BODY, expected=10)
        results[f"first token after {ttft} s"] = (str(run.outcome), run.net_error)
print(results)

# %% [markdown]
# 2. Section 5 says a uvicorn worker is killed only when its event loop is blocked. Show it: the ticker's
#    `/stream?block_at=1&block=60` blocks the loop with `time.sleep` for 60 s after the first event.

# %% tags=["solution"]
with sl.time_scale(GUNICORN_SCALE):     # the scale the server was started with (section 5)
    blocked = browser.stream(async_server.url + "/stream?n=3&every=1&block_at=1&block=60", mode="fetch",
                             expected=3)
    killed = bool(async_server.log_lines("WORKER TIMEOUT"))
print(blocked.outcome, blocked.net_error, "worker killed:", killed)

# %% [markdown]
# 3. Open Design's daemon sent `X-Accel-Buffering: no` (so does the mock, by default). Take the section 6
#    nginx (gzip on) with `proxy_buffering on`, an app that does *not* send the header, and a 60 s idle
#    timeout in front (`hops.aws_alb()`, speaking HTTP/1.1 to nginx as an ALB does). What does the
#    browser see now, and why?

# %% tags=["solution"]
# An ALB speaks HTTP/1.1 to its targets; nginx compresses only HTTP/1.1 requests (gzip_http_version 1.1)
with sl.NginxProxy(upstream=mock, faults=hops.nginx(gzip=True, gzip_types=("text/event-stream",))) as nginx, \
        sl.Proxy(upstream=nginx, faults=hops.aws_alb(), proxy_http_version="1.1") as alb:
    held = browser.stream(via(alb.url, AccelBuffering(value="absent"), **LONG), mode="fetch", method="POST",
                          json=BODY, expected=20)
print(f"{held.outcome}, status {held.status} after {held.e2e:.1f} s;", "awselb" in (held.body or ""))
# nginx held the gzip output (headers too) for the whole answer, so the ALB saw 60 s of silence

# %% [markdown]
# Clean up: the browser, the app and the mock.

# %%
browser.stop()
app.stop()
ticker.stop()
async_server.stop()
mock.stop()
print("stopped:", not browser.running)
