"""Real app servers (uvicorn, gunicorn) in subprocesses, and the demo apps they serve.

Each test pins one behaviour of the pinned versions (gunicorn 27, uvicorn 0.54,
sse-starlette 3.7, FastAPI 0.165), observed over real sockets:

* gunicorn ``--timeout`` spares a uvicorn worker that streams on a healthy event
  loop, kills one whose loop is blocked (``[CRITICAL] WORKER TIMEOUT (pid:N)``),
  and caps the length of a stream from a sync (WSGI) worker;
* a killed worker cuts its client's stream and is replaced;
* apps log how a client left, with the request id;
* sync code in ``async def`` freezes ``/health`` and hides the client's disconnect;
* buffered JSON vs SSE, shared vs per-request state, background jobs, LangGraph.
"""

from __future__ import annotations

import json
import re
import signal
import threading
import time

import httpx
import psutil
import pytest

import streamlab
from streamlab._appserver import Gunicorn, Uvicorn
from streamlab._clients import Abort, HTTPStream, read_stream
from streamlab._servers import running_servers
from streamlab._timescale import time_scale

TICKER = "streamlab.apps.ticker:app"


# -- hygiene: nothing a test starts may outlive it ---------------------------------------
# (conftest.py stops and fails on any server still registered after a test, so every
# server here is function-scoped: uvicorn and gunicorn start in 0.2-0.5 s)

pytestmark = pytest.mark.usefixtures("clean_slate")  # tests/conftest.py: no server or child left


@pytest.fixture
def mock():
    with streamlab.MockLLM(tokens=40, ttft=0.02, itl=0.02) as server:
        yield server


@pytest.fixture
def model_env(mock):
    return {"STREAMLAB_MODEL_URL": mock.base_url}


@pytest.fixture
def gunicorn_uv():
    """gunicorn -k uvicorn_worker.UvicornWorker --timeout 2 -w 2, serving the ticker."""
    with Gunicorn(TICKER, workers=2, timeout=2, graceful_timeout=1) as server:
        yield server


def _stream_in_thread(url: str, **options) -> tuple[threading.Thread, HTTPStream]:
    stream = HTTPStream(url, **options)
    thread = threading.Thread(target=stream.run, daemon=True)
    thread.start()
    return thread, stream


def _pid_of(server, rid: str) -> int:
    line = server.wait_for_log(rf"pid=\d+ rid={re.escape(rid)} ")
    return int(re.search(r"pid=(\d+)", line.text).group(1))


# -- lifecycle ---------------------------------------------------------------------------

def test_uvicorn_starts_fast_passes_env_and_stops_its_whole_group():
    t0 = time.perf_counter()
    with time_scale(0.5), Uvicorn(TICKER, env={"STREAMLAB_DEMO": "yes"}) as server:
        started = time.perf_counter() - t0
        assert started < 2.0, f"uvicorn took {started:.2f} s to accept connections"
        assert server in running_servers()
        assert server.command.startswith(f"uvicorn {TICKER} --host 127.0.0.1 --port {server.port} --workers 1")
        assert httpx.get(server.url + "/health").json()["time_scale"] == 0.5
        assert httpx.get(server.url + "/env?name=STREAMLAB_DEMO").json()["value"] == "yes"
        assert server.worker_pids() == [server.pid]
        assert server.log_lines("Application startup complete")
        pid = server.pid
    assert server not in running_servers()
    assert not psutil.pid_exists(pid)


def test_gunicorn_stop_leaves_no_worker():
    with Gunicorn(TICKER, workers=2) as server:
        family = [server.pid, *server.worker_pids()]
        assert len(family) == 3
        assert re.search(r"--no-control-socket", server.command)
    for pid in family:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert server.log_lines(r"\[INFO\] Shutting down: Master")


def test_uvicorn_supervisor_replaces_a_killed_worker():
    with Uvicorn(TICKER, workers=2) as server:
        first = server.worker_pids()
        assert len(first) == 2
        killed = server.kill_worker(0)
        assert killed == first[0]
        now = server.wait_workers(timeout=10)
        assert killed not in now and first[1] in now
        assert server.log_lines(rf"Child process \[{killed}\] died")


# -- binding: loopback only, unless the caller opts in (issue 10) -------------------------

@pytest.mark.parametrize("make", [
    lambda **kw: Uvicorn(TICKER, extra_args=["--host", "0.0.0.0"], **kw),
    lambda **kw: Uvicorn(TICKER, extra_args=["--host=192.168.1.5"], **kw),
    lambda **kw: Uvicorn(TICKER, extra_args=["--host", "example.com"], **kw),
    lambda **kw: Gunicorn(TICKER, extra_args=["--bind", "0.0.0.0:0"], **kw),
    lambda **kw: Gunicorn(TICKER, extra_args=["-b", "[::]"], **kw),
    lambda **kw: Gunicorn(TICKER, extra_args=["-b0.0.0.0"], **kw),
    lambda **kw: Gunicorn(TICKER, extra_args=["--bind=10.1.2.3:8000"], **kw),
    lambda **kw: Gunicorn(TICKER, extra_args=["--bi", ":8000"], **kw),  # argparse prefix; "" = every interface
    lambda **kw: Gunicorn(TICKER, extra_args=["-b", "127.0.0.1:0", "-b", "0.0.0.0:0"], **kw),
], ids=["uvicorn --host 0.0.0.0", "uvicorn --host=LAN", "uvicorn --host name", "gunicorn --bind 0.0.0.0",
        "gunicorn -b [::]", "gunicorn -b0.0.0.0", "gunicorn --bind=LAN", "gunicorn --bi :8000",
        "gunicorn second bind"])
def test_a_non_loopback_bind_is_refused_without_allow_non_loopback(make):
    with pytest.raises(ValueError, match="non-loopback address.*allow_non_loopback=True"):
        make()


@pytest.mark.parametrize("args", [["--uds", "/tmp/x.sock"], ["--fd=3"]])
def test_uvicorn_uds_and_fd_are_refused_because_url_could_not_tell_the_truth(args):
    with pytest.raises(ValueError, match="not supported"):
        Uvicorn(TICKER, extra_args=args, allow_non_loopback=True)


@pytest.mark.parametrize("bind", ["unix:/tmp/x.sock", "fd://3"])
def test_gunicorn_unix_and_fd_binds_are_refused(bind):
    with pytest.raises(ValueError, match="not supported"):
        Gunicorn(TICKER, extra_args=["-b", bind], allow_non_loopback=True)


def _listening(pid: int) -> set[str]:
    family = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    return {f"{c.laddr.ip}:{c.laddr.port}" for p in family for c in p.net_connections("tcp")
            if c.status == psutil.CONN_LISTEN}


def test_a_loopback_host_other_than_127_0_0_1_is_bound_and_reported():
    with Uvicorn(TICKER, extra_args=["--host", "127.0.0.2"]) as server:
        assert server.url == f"http://127.0.0.2:{server.port}"
        assert httpx.get(server.url + "/health").json()["ok"] is True
        assert _listening(server.pid) == {f"127.0.0.2:{server.port}"}


@pytest.mark.parametrize("kind", ["uvicorn", "gunicorn"])
def test_allow_non_loopback_warns_binds_every_interface_and_url_says_so(kind):
    with pytest.warns(RuntimeWarning, match=r"listens on 0\.0\.0\.0.*reachable from other machines"):
        if kind == "uvicorn":
            server = Uvicorn(TICKER, extra_args=["--host", "0.0.0.0"], allow_non_loopback=True)
        else:
            server = Gunicorn(TICKER, extra_args=["-b", "0.0.0.0"], allow_non_loopback=True)
    with server:
        assert server.url == f"http://0.0.0.0:{server.port}"
        assert _listening(server.pid) == {f"0.0.0.0:{server.port}"}
        assert "0.0.0.0" in server.command
        assert httpx.get(f"http://127.0.0.1:{server.port}/health").json()["ok"] is True


# -- gunicorn --timeout: a heartbeat, not a request timeout ------------------------------

def test_gunicorn_timeout_spares_a_long_stream_on_a_healthy_loop(gunicorn_uv):
    """A 5 s stream through --timeout 2: the worker's event loop keeps notifying the arbiter."""
    t0 = time.perf_counter()
    result = read_stream(gunicorn_uv.url + "/stream?n=50&every=0.1", timeout=10)
    assert result.outcome == "complete" and len(result.events) == 51
    assert result.elapsed > 4.5
    assert gunicorn_uv.log_lines("WORKER TIMEOUT", since=t0) == []


def test_gunicorn_timeout_kills_a_worker_whose_loop_is_blocked(gunicorn_uv):
    """time.sleep inside async def: no heartbeat, WORKER TIMEOUT, SIGABRT, the client's stream is cut."""
    t0 = time.perf_counter()
    result = read_stream(gunicorn_uv.url + "/stream?n=50&every=0.05&block_at=5&block=6",
                         headers={"X-Request-ID": "blocked-1"}, timeout=15)
    assert result.outcome == "cut", result
    assert isinstance(result.error, httpx.RemoteProtocolError)
    assert len(result.events) == 5
    pid = _pid_of(gunicorn_uv, "blocked-1")
    blocked = gunicorn_uv.wait_for_log("rid=blocked-1 /stream blocking the event loop", since=t0)
    killed = gunicorn_uv.wait_for_log(rf"\[CRITICAL\] WORKER TIMEOUT \(pid:{pid}\)", since=t0)
    assert gunicorn_uv.wait_for_log(rf"\[WARNING\] Worker \(pid:{pid}\) was sent SIGABRT!", since=t0)
    # the last heartbeat came at most timeout/2 (+1 s tick) before the block; the arbiter ticks every 1 s
    assert 0.5 < killed.t - blocked.t < 3.5
    replacement = gunicorn_uv.wait_workers()
    assert pid not in replacement and len(replacement) == 2


def test_gunicorn_timeout_caps_a_stream_from_a_sync_worker():
    """A WSGI generator in a sync worker: no heartbeat while it streams, so --timeout ends it."""
    with Gunicorn("streamlab.apps.ticker_wsgi:app", worker_class="sync", timeout=2) as server:
        t0 = time.perf_counter()
        result = read_stream(server.url + "/ticks?n=60&every=0.1", headers={"X-Request-ID": "sync-1"}, timeout=15)
        assert result.outcome == "cut" and isinstance(result.error, httpx.RemoteProtocolError)
        assert 1.5 < result.elapsed < 4.5, result.elapsed
        pid = _pid_of(server, "sync-1")
        assert server.wait_for_log(rf"\[CRITICAL\] WORKER TIMEOUT \(pid:{pid}\)", since=t0)
        assert server.wait_for_log(rf"streamlab.gunicorn worker aborted \(pid:{pid}\)", since=t0)
        assert server.wait_for_log(r"rid=sync-1 /ticks WORKER EXIT \(SystemExit", since=t0)
        assert pid not in server.wait_workers()


# -- killing a worker mid-stream ---------------------------------------------------------

def test_killing_the_worker_mid_stream_cuts_the_client(gunicorn_uv):
    thread, stream = _stream_in_thread(gunicorn_uv.url + "/stream?n=40&every=0.05",
                                       headers={"X-Request-ID": "kill-1"}, timeout=10)
    pid = _pid_of(gunicorn_uv, "kill-1")
    gunicorn_uv.wait_for_log("rid=kill-1 /stream token 3 ")
    assert gunicorn_uv.kill_worker(pid) == pid
    thread.join(10)
    assert stream.result.outcome == "cut"
    assert isinstance(stream.result.error, httpx.RemoteProtocolError)
    assert 3 <= len(stream.result.events) < 40
    assert gunicorn_uv.wait_for_log(rf"Worker \(pid:{pid}\) was sent SIGKILL!")
    assert pid not in gunicorn_uv.wait_workers()


# -- client disconnects, as the apps log them --------------------------------------------

def test_apps_log_the_client_disconnect_with_the_request_id(model_env):
    with Uvicorn(TICKER) as ticker, Uvicorn("streamlab.apps.chat:app", env=model_env) as chat:
        read_stream(ticker.url + "/stream?n=40&every=0.02", headers={"X-Request-ID": "abort-1"},
                    abort=Abort(after_chunks=3))
        line = ticker.wait_for_log("rid=abort-1 /stream CLIENT DISCONNECT")
        assert line.text.endswith("CLIENT DISCONNECT (http.disconnect) after 3 chunks")

        read_stream(chat.url + "/chat/sse", headers={"X-Request-ID": "abort-2"}, abort=Abort(after_chunks=5),
                    unit="event")
        assert chat.wait_for_log(r"rid=abort-2 /chat/sse CLIENT DISCONNECT \(http.disconnect\) after \d+ body bytes")
        assert chat.wait_for_log(r"rid=abort-2 /chat/sse STREAM CANCELLED \(CancelledError\) after 5 tokens")


def test_a_sync_wsgi_worker_notices_the_disconnect_at_its_next_write():
    with Gunicorn("streamlab.apps.ticker_wsgi:app", worker_class="sync", log_level="debug") as server:
        read_stream(server.url + "/ticks?n=40&every=0.02", headers={"X-Request-ID": "wsgi-1"},
                    abort=Abort(after_chunks=3))
        assert server.wait_for_log(r"rid=wsgi-1 /ticks CLIENT DISCONNECT \(write failed, gunicorn closed the generator")
        assert server.wait_for_log(r"\[DEBUG\] Ignoring (EPIPE|connection reset)")


# -- the demo apps -----------------------------------------------------------------------

def test_buffered_json_arrives_in_one_piece_at_the_end_while_sse_streams(model_env):
    with Uvicorn("streamlab.apps.chat:app", env=model_env) as server:
        buffered = read_stream(server.url + "/chat/buffered", timeout=10)
        sse = read_stream(server.url + "/chat/sse", unit="event", timeout=10)
    assert buffered.outcome == sse.outcome == "complete"
    assert json.loads(buffered.body)["tokens"] == 40
    assert buffered.ttfb > 0.6  # 40 tokens x 20 ms before the first byte
    assert sse.ttfb < 0.3
    tokens = [e for e in sse.events if e.get("event") == "token"]
    assert len(tokens) == 40 and sse.events[-1] == {"event": "done", "data": "[DONE]"}
    assert sse.headers["cache-control"] == "no-cache" and sse.headers["x-accel-buffering"] == "no"
    assert "".join(e["data"] for e in tokens) == json.loads(buffered.body)["text"]


def _health_during_stall(server, path: str, rid: str, method: str = "GET") -> tuple[float, HTTPStream]:
    """/health latency while ``path`` waits 1.5 s for the model's 4th token (mock: stall@3=1.5)."""
    body = {"input": "hi"} if method == "POST" else None
    thread, stream = _stream_in_thread(f"{server.url}{path}?spec=stall@3=1.5", method=method, json=body,
                                       headers={"X-Request-ID": rid}, unit="event", timeout=10)
    server.wait_for_log(rf"rid={rid} {path} token 2 ")
    t0 = time.perf_counter()
    httpx.get(server.url + "/health", timeout=10)
    latency = time.perf_counter() - t0
    thread.join(10)
    return latency, stream


def test_sync_stream_in_async_def_freezes_health_and_hides_the_disconnect(model_env):
    with Uvicorn("streamlab.apps.blocking:app", env=model_env) as server:
        slow, broken = _health_during_stall(server, "/stream/sync", "sync-1")
        fast, good = _health_during_stall(server, "/stream/async", "async-1")
        assert broken.result.outcome == good.result.outcome == "complete"
        assert slow > 1.0, f"/health answered in {slow:.2f} s while the loop was blocked"
        assert fast < 0.3, f"/health took {fast:.2f} s next to astream()"

        # the blocked loop never reads the client's FIN: the model run goes on to the end
        read_stream(server.url + "/stream/sync", headers={"X-Request-ID": "gone-1"}, abort=Abort(after_chunks=3))
        assert server.wait_for_log(r"rid=gone-1 /stream/sync done 40 tokens", timeout=10)
        assert not server.log_lines(r"rid=gone-1 .*DISCONNECT")
        read_stream(server.url + "/stream/async", headers={"X-Request-ID": "gone-2"}, abort=Abort(after_chunks=3))
        assert server.wait_for_log(r"rid=gone-2 /stream/async CLIENT DISCONNECT \(http.disconnect\)")
        time.sleep(0.3)
        assert not server.log_lines(r"rid=gone-2 /stream/async done")


def test_a_shared_token_buffer_mixes_concurrent_answers(model_env):
    with Uvicorn("streamlab.apps.shared_state:app", env=model_env) as server:
        for route, mixed in (("/stream/shared", True), ("/stream/per_request", False)):
            streams = [HTTPStream(f"{server.url}{route}?spec=echo&q={word}+{word}", unit="event", timeout=10)
                       for word in ("alpha", "bravo")]
            threads = [threading.Thread(target=s.run) for s in streams]
            for thread in threads:
                thread.start()
                time.sleep(0.1)  # b starts while a is half way
            for thread in threads:
                thread.join(10)
            answers = {}
            for word, s in zip(("alpha", "bravo"), streams):
                assert s.result.outcome == "complete"
                answers[word] = next(e["data"] for e in s.result.events if e.get("event") == "answer")
            if mixed:
                assert "bravo" in answers["alpha"] or "alpha" in answers["bravo"], answers
            else:
                assert set(answers["alpha"].split()) == {"alpha"} and set(answers["bravo"].split()) == {"bravo"}


def test_a_background_job_survives_the_cut_and_the_stream_resumes(model_env):
    with Uvicorn("streamlab.apps.jobs:app", env=model_env) as server:
        job = httpx.post(server.url + "/jobs", json={"q": "report"}).json()["id"]
        first = read_stream(f"{server.url}/jobs/{job}/stream", unit="event", abort=Abort(after_chunks=5))
        assert first.aborted and [e["id"] for e in first.events[:5]] == ["0", "1", "2", "3", "4"]
        rest = read_stream(f"{server.url}/jobs/{job}/stream", unit="event", headers={"Last-Event-ID": "4"},
                           timeout=10)
        assert rest.outcome == "complete"
        ids = [int(e["id"]) for e in rest.events if e.get("event") == "token"]
        assert ids == list(range(5, 40))
        status = httpx.get(f"{server.url}/jobs/{job}").json()
        assert status["status"] == "done" and status["tokens"] == 40
        assert httpx.get(f"{server.url}/jobs/job-0-0").status_code == 404


def test_langgraph_sync_stream_blocks_the_loop_astream_does_not(model_env):
    with Uvicorn("streamlab.apps.graph:app", env=model_env) as server:
        fast, good = _health_during_stall(server, "/graph/async", "graph-async", "POST")
        assert good.result.outcome == "complete" and good.result.headers["content-type"].startswith("text/event-stream")
        assert sum(e.get("event") == "token" for e in good.result.events) == 40
        slow, broken = _health_during_stall(server, "/graph/sync", "graph-sync", "POST")
        # the article's shape still runs on FastAPI 0.165: a generator route, streamed as JSON Lines
        assert broken.result.outcome == "complete" and len(broken.result.text.splitlines()) == 40
        assert broken.result.headers["content-type"].startswith("application/jsonl")
    assert fast < 0.3, f"/health took {fast:.2f} s next to astream()"
    assert slow > 1.0, f"/health answered in {slow:.2f} s while graph.stream() waited for a token"


def test_sync_wsgi_workers_serve_one_stream_each(model_env):
    """Three graph.stream() bodies, two sync workers: the third waits for a free worker."""
    with Gunicorn("streamlab.apps.graph_wsgi:app", worker_class="sync", workers=2, env=model_env) as server:
        streams = [HTTPStream(server.url + "/graph", method="POST", json={"input": "hi"}, unit="event", timeout=10)
                   for _ in range(3)]
        threads = [threading.Thread(target=s.run) for s in streams]
        for thread in threads:
            thread.start()
            time.sleep(0.05)
        for thread in threads:
            thread.join(10)
    assert all(s.result.outcome == "complete" for s in streams)
    assert all(sum(e.get("event") == "token" for e in s.result.events) == 40 for s in streams)
    waits = sorted(s.result.ttfb for s in streams)
    assert waits[1] < 0.5 and waits[2] > 0.7, waits  # 40 tokens x 20 ms before a worker is free


def test_uvicorn_sigterm_waits_for_a_plain_stream_but_sse_starlette_ends_it(model_env):
    with Uvicorn(TICKER) as ticker, Uvicorn("streamlab.apps.chat:app", env=model_env) as chat:
        plain_thread, plain = _stream_in_thread(ticker.url + "/stream?n=20&every=0.05", timeout=10)
        sse_thread, sse = _stream_in_thread(chat.url + "/chat/sse", unit="event", timeout=10)
        ticker.wait_for_log(r"/stream token 2 ")
        chat.wait_for_log(r"/chat/sse token 2 ")
        for server in (ticker, chat):
            server.process.send_signal(signal.SIGTERM)
        plain_thread.join(10)
        sse_thread.join(10)
        assert plain.result.outcome == "complete"
        assert ticker.log_lines(r"Waiting for connections to close. \(CTRL\+C to force quit\)")
        assert sse.result.outcome == "cut" and sse.result.events[-1].get("event") == "token"
        assert chat.wait_for_log(r"/chat/sse STREAM CANCELLED \(CancelledError\)")


SLOW_STARTUP_APP = """
import time


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                time.sleep(1.0)  # a model client or a pool built at startup
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})
"""


def test_gunicorn_uvicorn_workers_are_ready_only_after_the_app_startup(tmp_path):
    """A uvicorn worker logs "worker ready" at the fork; its lifespan startup (1 s here) comes after.
    start() and wait_workers() count a worker only once it has logged "Application startup complete"."""
    (tmp_path / "slow_startup_app.py").write_text(SLOW_STARTUP_APP)
    import streamlab._appserver as appserver

    env = {"PYTHONPATH": f"{tmp_path}:{appserver._ROOT}"}
    with Gunicorn("slow_startup_app:app", workers=2, env=env) as server:
        started = {int(m.group(1)) for line in server.log_lines(r"\] \[INFO\] Application startup complete")
                   if (m := re.search(r"\[(\d+)\] \[INFO\]", line))}
        assert set(server.worker_pids()) <= started and len(server.worker_pids()) == 2
        server.kill_worker(0)
        pids = server.wait_workers(timeout=30)
        assert len(pids) == 2 and set(pids) <= {int(m.group(1)) for line in server.log_lines(
            r"Application startup complete") if (m := re.search(r"\[(\d+)\] \[INFO\]", line))}
        assert httpx.get(server.url + "/", timeout=5).text == "ok"
