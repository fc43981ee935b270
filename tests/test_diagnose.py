"""``streamlab diagnose`` names the cause and the layer of a broken stream, over real stacks.

One test per stack, built from the articles and the incidents, each over real
loopback sockets: the mock model, real nginx where installed (``proxy_for(prefer=
"nginx")``, else the embedded proxy that mirrors it), the embedded load balancer /
gateway faults, real gunicorn and uvicorn subprocesses serving the demo apps.
Each stack runs under ``time_scale`` and ``diagnose`` reads the scale in force, so
silences are compared with production defaults (nginx 60 s, ALB 60 s, API Gateway
29 s) in scenario seconds. The expected (cause, layer) is the one a person would
name; the evidence is checked for the number that proves it.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs

import psutil
import pytest

import streamlab as sl
from streamlab import hops
from streamlab._diagnose import CAUSES, LAYERS, DiagnoseError, diagnose
from streamlab._servers import ThreadedASGIServer, free_port
from streamlab._timescale import time_scale, to_real

@pytest.fixture(autouse=True)
def _fresh():
    """Like tests/conftest.py's clean_slate, but the module-scoped ``blocking_app`` may be up: real time (1.0)
    for the test, and no server or child process it started is left afterwards."""
    servers = {id(s) for s in sl.running_servers()}
    children = {p.pid for p in psutil.Process().children(recursive=True)}
    with time_scale(1.0):
        yield
    assert [s for s in sl.running_servers() if id(s) not in servers] == []
    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in children and p.is_running()
            and p.status() != psutil.STATUS_ZOMBIE]
    assert left == []


ROOT = Path(__file__).resolve().parent.parent


def expect(report, cause: str, layer: str) -> None:
    assert (report.cause, report.layer) == (cause, layer), report.text()
    assert report.took < 60, f"diagnose took {report.took:.1f} s"
    for f in report.findings:
        assert f.cause in CAUSES and f.layer in LAYERS


async def sse_upstream(scope, receive, send):
    """An SSE server of OpenAI-style chunks: ``/sse?n=8&every=2&mode=chunked|length`` (no X-Accel-Buffering)."""
    if scope["type"] != "http":
        return
    if scope["path"] == "/health":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})
        return
    q = {k: v[-1] for k, v in parse_qs(scope["query_string"].decode()).items()}
    n, every = int(q.get("n", 8)), float(q.get("every", 2))
    events = [b'data: {"choices":[{"index":0,"delta":{"content":"tok%d "},"finish_reason":null}]}\n\n' % i
              for i in range(n)]
    events += [b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n', b"data: [DONE]\n\n"]
    headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
    if q.get("mode") == "length":  # not chunked: what nginx buffers
        headers.append((b"content-length", str(sum(map(len, events))).encode()))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    for event in events:
        await asyncio.sleep(to_real(every))
        await send({"type": "http.response.body", "body": event, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


# -- the model alone -----------------------------------------------------------------------

def test_a_healthy_model_is_ok():
    with time_scale(0.05), sl.MockLLM(tokens=20, ttft=0.5, itl=0.3) as mock:
        report = diagnose(mock.base_url)
    expect(report, "ok", "model")
    assert report.verdict.startswith("ok")
    steps = {f.step for f in report.findings}
    assert {"timeline", "health", "concurrency", "streaming_off"} <= steps


@pytest.mark.parametrize("spec, options, cause, proof", [
    ("silent@12", {}, "silent_truncation", "after 12 tokens"),
    ("", {"max_tokens": 8}, "length_truncation", "finish_reason: length after 8 tokens"),
    ("error@3", {}, "error_event", "after 3 tokens an error event"),
    ("servererror", {}, "http_error", "HTTP 500"),
    ("cut@6", {}, "cut", "6 tokens in"),
    ("reset@6", {}, "reset", "reset (ECONNRESET)"),
    ("stall@4", {"max_silence": 8}, "stall", "no byte for the probe's max_silence 8 s"),
], ids=["silent", "length", "error-event", "500", "cut", "reset", "stall"])
def test_model_faults_are_named_at_the_model(spec, options, cause, proof):
    with time_scale(0.05), sl.MockLLM(tokens=20, itl=0.3) as mock:
        report = diagnose(mock.base_url_for(spec) if spec else mock.base_url, steps=("timeline",), **options)
    expect(report, cause, "model")
    assert proof in report.verdict


def test_raw_sdk_step_names_the_exception_the_openai_sdk_raises():
    with time_scale(0.05), sl.MockLLM(tokens=20, itl=0.3) as mock:
        report = diagnose(mock.base_url_for("cut@6"), steps=("timeline", "raw_sdk"))
    sdk = next(f for f in report.findings if f.step == "raw_sdk")
    assert (sdk.cause, sdk.layer) == ("cut", "model")
    assert "openai SDK raised httpx.RemoteProtocolError after 6 tokens" in sdk.evidence


def test_the_report_has_a_timeline_figure_and_json():
    with time_scale(0.05), sl.MockLLM(tokens=10, itl=0.3) as mock:
        report = diagnose(mock.base_url_for("cut@4"), steps=("timeline", "repeat"))
    text = report.text()
    assert "timeline:" in text and "X" in report.figure() and "<pre>" in report._repr_html_()
    assert json.loads(report.to_json())["findings"][0]["cause"] == "cut"
    figure = report.plot()
    assert len(figure.axes[0].get_yticklabels()) == 2  # timeline and repeat


# -- hops ------------------------------------------------------------------------------------

def test_healthy_stream_through_nginx_defaults_is_ok():
    with time_scale(0.05), sl.MockLLM(tokens=20, itl=0.3) as mock, \
            sl.proxy_for(upstream=mock.url, faults=hops.nginx(), prefer="nginx") as proxy:
        report = diagnose(proxy.url + "/v1", steps=("timeline", "health"))
    expect(report, "ok", "model")


def test_a_proxy_error_page_is_an_http_error_at_the_proxy_and_a_model_json_error_at_the_model():
    port = free_port()  # nobody listens there: nginx answers 502 Bad Gateway with its own page
    with time_scale(0.05), sl.proxy_for(upstream=f"http://127.0.0.1:{port}", faults=hops.nginx(),
                                        prefer="nginx") as proxy, sl.MockLLM(tokens=5) as mock:
        down = diagnose(proxy.url + "/v1", steps=("timeline",))
        limited = diagnose(mock.base_url_for("ratelimit=2"), steps=("timeline",))
    expect(down, "http_error", "proxy")
    assert "HTTP 502" in down.verdict
    expect(limited, "http_error", "model")
    assert "HTTP 429" in limited.verdict


def test_nginx_read_timeout_on_a_stalled_model_is_an_idle_timeout_at_the_proxy():
    with time_scale(0.02), sl.MockLLM(tokens=20, itl=0.5) as mock, \
            sl.proxy_for(upstream=mock.url, faults=hops.nginx(proxy_read_timeout=60), prefer="nginx") as proxy:
        report = diagnose(proxy.url + "/s/stall@5=200/v1")
    expect(report, "idle_timeout", "proxy")
    assert "nginx proxy_read_timeout 60 s" in report.verdict
    repeat = next(f for f in report.findings if f.step == "repeat")
    assert repeat.cause == "idle_timeout" and "the same silence twice" in repeat.evidence
    off = next(f for f in report.findings if f.step == "streaming_off")
    assert (off.cause, off.layer) == ("idle_timeout", "proxy") and "504" in off.evidence


def test_load_balancer_idle_timeout_is_an_idle_timeout_at_the_proxy():
    with time_scale(0.02), sl.MockLLM(tokens=20, itl=0.5) as mock, \
            sl.Proxy(upstream=mock.url, faults=hops.load_balancer(idle_timeout=60)) as lb:
        report = diagnose(lb.url + "/s/stall@5=200/v1", steps=("timeline", "repeat"))
    expect(report, "idle_timeout", "proxy")
    assert "AWS ALB idle timeout 60 s" in report.verdict


def test_gateway_deadline_cuts_a_flowing_stream_at_a_constant_time():
    with time_scale(0.02), sl.MockLLM(tokens=100, itl=0.5) as mock, \
            sl.Proxy(upstream=mock.url, faults=hops.api_gateway(timeout=29)) as gateway:
        report = diagnose(gateway.url + "/v1", steps=("timeline", "repeat", "streaming_off"))
    expect(report, "deadline", "proxy")
    assert "AWS API Gateway integration timeout 29 s" in report.verdict
    assert "the same elapsed time twice" in next(f for f in report.findings if f.step == "repeat").evidence


def test_serverless_kill_is_a_deadline_at_the_proxy():
    with time_scale(0.02), sl.MockLLM(tokens=60, itl=0.5) as mock, \
            sl.Proxy(upstream=mock.url, faults=hops.serverless(max_duration=10)) as platform:
        report = diagnose(platform.url + "/v1", steps=("timeline", "repeat"))
    expect(report, "deadline", "proxy")
    assert "data was flowing when it was cut" in report.verdict


def test_nginx_without_chunked_encoding_turns_a_model_cut_into_a_clean_end():
    """chunked_transfer_encoding off: the body is close-delimited, so the model's cut looks complete."""
    faults = hops.nginx(chunked_transfer_encoding=False)
    with time_scale(0.05), sl.MockLLM(tokens=20, itl=0.3) as mock, \
            sl.proxy_for(upstream=mock.url, faults=faults, prefer="nginx") as proxy:
        blind = diagnose(proxy.url + "/s/cut@6/v1", steps=("timeline",))
        report = diagnose(proxy.url + "/s/cut@6/v1", model=mock, steps=("timeline", "model_journal"))
    expect(blind, "silent_truncation", "model")
    expect(report, "cut", "model")
    assert "a hop hid the cut" in report.verdict


def test_nginx_gzip_on_event_stream_holds_the_stream_to_the_end():
    faults = hops.nginx(gzip=True, gzip_types=("text/event-stream",))
    with time_scale(0.05), ThreadedASGIServer(sse_upstream) as app, \
            sl.proxy_for(upstream=app.url, faults=faults, prefer="nginx") as proxy:
        report = diagnose(proxy.url + "/sse?n=8&every=2", direct=app.url + "/sse?n=8&every=2",
                          steps=("timeline", "bypass_hop"))
    expect(report, "gzip", "proxy")
    assert "Content-Encoding: gzip" in report.verdict
    bypass = next(f for f in report.findings if f.step == "bypass_hop")
    assert (bypass.cause, bypass.layer) == ("gzip", "proxy") and "the hop in between causes it" in bypass.evidence


def test_nginx_buffers_a_body_that_is_not_chunked():
    with time_scale(0.05), ThreadedASGIServer(sse_upstream) as app, \
            sl.proxy_for(upstream=app.url, faults=hops.nginx(), prefer="nginx") as proxy:
        held = diagnose(proxy.url + "/sse?n=8&every=2&mode=length", steps=("timeline",))
        flowing = diagnose(proxy.url + "/sse?n=8&every=2", steps=("timeline",))
    expect(held, "buffering", "proxy")
    assert "all 10 events arrived at" in held.verdict
    expect(flowing, "ok", "app")


# -- app servers -----------------------------------------------------------------------------

def test_gunicorn_sync_worker_timeout_cuts_at_a_constant_time():
    with sl.Gunicorn("streamlab.apps.ticker_wsgi:app", worker_class="sync", workers=2, timeout=1) as app:
        report = diagnose(app.url + "/ticks?n=40&every=0.1", steps=("timeline", "health", "repeat"))
    expect(report, "worker_timeout", "app")
    assert "Server: gunicorn" in report.verdict


def test_an_openai_compatible_relay_on_gunicorn_sync_workers_is_a_worker_timeout_at_the_app():
    """The drills' WSGI relay (a sync client, right for a sync worker) at its base URL, the way a user points
    diagnose at their own app: gunicorn --timeout 30 kills each 48-word answer 30 to 40 s in (time scale 0.1:
    3 s of wall clock, the arbiter looks once a second), the same at every repeat."""
    import re

    env = {"STREAMLAB_MODEL_URL": None, "STREAMLAB_DRILL_APP": json.dumps({"lookup": 0.0})}
    with time_scale(0.1), sl.MockLLM(tokens=48, itl=1.0, ttft=0.5) as mock:
        env["STREAMLAB_MODEL_URL"] = mock.url + "/v1"
        with sl.Gunicorn("streamlab.drills._wsgi:app", worker_class="sync", workers=2, timeout=30, env=env) as app:
            report = diagnose(app.url + "/v1", steps=("timeline", "health", "repeat"), model=mock)
            killed = app.log_lines("WORKER TIMEOUT")
    expect(report, "worker_timeout", "app")
    assert "Server: gunicorn with no proxy in front" in report.verdict
    cuts = [float(x) for x in re.findall(r"cut at (\d+\.\d) s", " ".join(f.evidence for f in report.findings))]
    assert cuts and all(30.0 <= c <= 46.0 for c in cuts), report.text()
    assert len(killed) >= 2, killed  # gunicorn's own log: one kill per stream the ladder ran


@pytest.fixture(scope="module")
def blocking_app():
    """The mock and ``streamlab.apps.blocking`` under uvicorn at time_scale 0.05, shared by the tests below
    (the app imports LangChain: 3-10 s to start on a busy machine). Root conftest.py stops them at the end."""
    with time_scale(SCALE), sl.MockLLM(tokens=12, itl=0.4) as mock, \
            sl.Uvicorn("streamlab.apps.blocking:app", env={"STREAMLAB_MODEL_URL": mock.base_url}) as app:
        yield mock, app


SCALE = 0.05


def test_sync_stream_in_async_def_is_a_blocked_loop_and_astream_is_ok(blocking_app):
    mock, app = blocking_app
    with time_scale(SCALE):
        broken = diagnose(app.url + "/stream/sync?spec=stall@3=30", steps=("timeline", "health"))
        fixed = diagnose(app.url + "/stream/async?spec=stall@3=30", steps=("timeline", "health"))
    expect(broken, "blocked_loop", "app")
    assert "/health answered in" in broken.verdict
    expect(fixed, "ok", "app")


# -- with the model's journal (model=) ------------------------------------------------------

def test_the_journal_shows_a_silent_model_behind_an_app_that_looks_complete(blocking_app):
    mock, app = blocking_app
    with time_scale(SCALE):
        blind = diagnose(app.url + "/stream/async?spec=silent@7", steps=("timeline",))
        report = diagnose(app.url + "/stream/async?spec=silent@7", model=mock, steps=("timeline", "model_journal"))
    expect(blind, "ok", "app")  # the app sent its done event: the client alone cannot tell
    expect(report, "silent_truncation", "model")
    assert "the model sent 7/12 tokens" in report.verdict


def test_a_model_cut_passed_on_by_the_app_is_a_cut_at_the_app_and_the_journal_puts_it_at_the_model(blocking_app):
    mock, app = blocking_app
    with time_scale(SCALE):
        blind = diagnose(app.url + "/stream/async?spec=cut@5", steps=("timeline",))
        report = diagnose(app.url + "/stream/async?spec=cut@5", model=mock, steps=("timeline", "model_journal"))
    expect(blind, "cut", "app")  # Server: uvicorn, data flowing: not a worker kill, not a hop
    expect(report, "cut", "model")
    assert "the model sent 5/12 tokens" in report.verdict


def test_the_journal_proves_an_app_that_answers_at_the_end_held_the_tokens(blocking_app):
    """/invoke/async collects the whole answer, then returns JSON: the model streamed, the app held it."""
    mock, app = blocking_app
    with time_scale(SCALE):
        report = diagnose(app.url + "/invoke/async", model=mock, steps=("timeline", "model_journal"))
    expect(report, "buffering", "app")
    journal = next(f for f in report.findings if f.step == "model_journal")
    assert (journal.cause, journal.layer) == ("buffering", "app") and "held at the app" in journal.evidence
    assert "model sent" in report.figure()


def test_the_journal_shows_what_the_model_sent_past_an_idle_timeout(blocking_app):
    mock, app = blocking_app
    with time_scale(SCALE), \
            sl.proxy_for(upstream=app.url, faults=hops.nginx(proxy_read_timeout=60), prefer="nginx") as proxy:
        report = diagnose(proxy.url + "/stream/async?spec=stall@5=100", model=mock,
                          steps=("timeline", "model_journal"))
    expect(report, "idle_timeout", "proxy")
    journal = next(f for f in report.findings if f.step == "model_journal")
    assert journal.layer == "proxy" and "lost between the model and the client" in journal.evidence


# -- the command line --------------------------------------------------------------------------

def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "streamlab", "diagnose", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_cli_json_is_one_object_with_verdict_and_findings():
    with time_scale(0.05), sl.MockLLM(tokens=10, itl=0.2) as mock:
        done = _cli(mock.base_url_for("silent@5"), "--json", "--time-scale", "0.05")
    assert done.returncode == 1, done.stderr
    out = json.loads(done.stdout)
    assert set(out) == {"verdict", "findings"} and out["verdict"].startswith("silent_truncation at model")
    for f in out["findings"]:
        assert {"layer", "cause", "evidence"} <= set(f) and f["cause"] in CAUSES and f["layer"] in LAYERS


def test_cli_model_starts_a_mock_and_reads_its_journal():
    """--model on a fixed port; a proxy already points there, as a user's app would."""
    port = free_port()
    with sl.Proxy(upstream=f"http://127.0.0.1:{port}") as proxy:
        done = _cli(proxy.url + "/s/silent@7/v1", "--model", "tokens=15,itl=0.01", "--model-port", str(port),
                    "--steps", "timeline,model_journal", "--json")
    assert f"mock model at http://127.0.0.1:{port}/v1" in done.stderr
    out = json.loads(done.stdout)
    journal = next(f for f in out["findings"] if f["step"] == "model_journal")
    assert journal["cause"] == "silent_truncation" and "the model sent 7/15 tokens" in journal["evidence"], out


@pytest.mark.parametrize("url, message", [
    ("not-a-url", "not an http(s) URL"),
    ("http://127.0.0.1:1/v1", "nobody answers at 127.0.0.1:1"),
], ids=["not-a-url", "unreachable"])
def test_cli_bad_input_is_one_line_and_exit_2(url, message):
    done = _cli(url)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr and done.stdout == ""


def test_python_api_raises_a_diagnose_error():
    with pytest.raises(DiagnoseError, match="not an http"):
        diagnose("ftp://x")
    with pytest.raises(DiagnoseError, match="unknown steps"):
        diagnose("http://127.0.0.1:1/v1", steps=("nope",))
