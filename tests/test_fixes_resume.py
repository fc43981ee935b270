"""Resumable SSE (``streamlab.fixes.ResumableRuns``, ``streamlab.apps.resumable``) against real faults.

The stack is real: ``redis-server`` (``sl.RedisServer``), the mock model, two gunicorn
replicas of ``streamlab.apps.resumable:app`` with 2 uvicorn workers each (4 workers),
a non-sticky round-robin ``sl.Balancer`` in front, and real nginx where a proxy
timeout is the fault. Each scenario runs the plain SSE baseline (``/chat/sse``: the
model call lives in the request) and the resumable run (``POST /runs``, then
``resume_stream`` on ``/runs/{id}/stream``), and counts for the resumable run:
tokens received (each index 0..n-1 exactly once, in order), duplicates, and
``model_runs``, the chat requests the mock got for that run's prompt (must be 1).

Why two replicas: round robin alternates between them, so the ``POST`` (whose
worker runs the model call) and the first stream connection land in different
processes, and the worker killed mid-stream is the one serving the stream, never
the producer. (A killed producer ends the run with ``producer lost``: resuming is
not a continuation; see the module docstring of ``streamlab/fixes/_resume.py``.)
"""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
import uuid
from urllib.parse import urlencode

import httpx
import pytest

import streamlab as sl
from streamlab import hops
from streamlab.fixes import InMemoryStore, RedisStore, ResumableStream, resume_stream
from streamlab.fixes._resume import event_id_key

APP = "streamlab.apps.resumable:app"
TOKENS = 40
SCALE = 0.1  # wall-clock seconds per scenario second: itl 0.2 s -> 20 ms, a 30 s stall -> 3 s
STALL = "stall@8=10"  # a kill after 8 events lands in a 1 s stall: mid-run for sure, however slow the machine

pytestmark = pytest.mark.skipif(not sl.redis_available(), reason="redis-server is not installed")


@pytest.fixture(scope="module")
def stack():
    with sl.time_scale(SCALE), sl.RedisServer() as redis, sl.MockLLM(tokens=TOKENS, itl=0.2) as mock:
        env = {"STREAMLAB_MODEL_URL": mock.base_url, "STREAMLAB_REDIS_URL": redis.url, "STREAMLAB_LOG_TOKENS": "1",
               "STREAMLAB_RESUME_LEASE": "2"}
        # --preload: the app (langchain) is imported once per replica and workers fork from it,
        # so a killed worker is replaced at once instead of after a fresh import
        options = dict(workers=2, env=env, timeout=300, extra_args=["--preload"])
        # start() returns once every worker has finished the app's startup (lifespan)
        with sl.Gunicorn(APP, **options) as a, sl.Gunicorn(APP, **options) as b, sl.Balancer([a, b]) as lb:
            yield {"redis": redis, "mock": mock, "replicas": [a, b], "lb": lb}


def _prompt(name: str) -> str:
    return f"{name} {uuid.uuid4().hex[:8]}"


def _model_runs(mock: sl.MockLLM, prompt: str) -> int:
    return sum(1 for entry in mock.journal.chat() if entry.last_user_message == prompt)


def _indices(events) -> list[int]:
    return [json.loads(e.data if hasattr(e, "data") else e["data"])["i"] for e in events
            if (e.event if hasattr(e, "event") else e.get("event")) == "token"]


def _start_run(base: str, prompt: str, spec: str | None = None) -> dict:
    params = {"q": prompt, **({"spec": spec} if spec else {})}
    reply = httpx.post(base + "/runs", params=params, timeout=30)
    assert reply.status_code == 201, reply.text
    return {**reply.json(), "upstream": reply.headers.get("x-streamlab-upstream")}


def _in_thread(fn, *args, **kwargs) -> threading.Thread:
    thread = threading.Thread(target=fn, args=args, kwargs=kwargs, daemon=True)
    thread.start()
    return thread


def _wait(predicate, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met within {timeout} s")
        time.sleep(0.005)


def _settled(server) -> None:
    """After a kill: the replacement worker is up and has finished the app's startup."""
    server.wait_workers(timeout=30)


def _owner(replicas, pid: int):
    for server in replicas:
        if pid in server.worker_pids():
            return server
    raise AssertionError(f"pid {pid} is no worker of the replicas")


def _assert_exactly_once(stream: ResumableStream) -> None:
    assert stream.outcome == "complete", stream.connections
    assert _indices(stream.events) == list(range(TOKENS)), "every token once, in order"
    assert stream.duplicates == 0
    assert json.loads(stream.events[-1].data) == {"tokens": TOKENS}
    ids = [e.id for e in stream.events]
    assert all(event_id_key(x) < event_id_key(y) for x, y in zip(ids, ids[1:])), "ids strictly increasing"


# -- (1) a worker killed mid-stream ----------------------------------------------------------

def test_worker_killed_mid_stream_cuts_the_baseline(stack):
    lb, replicas, mock = stack["lb"], stack["replicas"], stack["mock"]
    prompt, rid = _prompt("kill-baseline"), f"kb-{uuid.uuid4().hex[:6]}"
    stream = sl.HTTPStream(lb.url + "/chat/sse?" + urlencode({"q": prompt}),
                           headers={"X-Request-ID": rid, "X-Streamlab": STALL}, unit="event",
                           timeout=httpx.Timeout(30.0))
    thread = _in_thread(stream.run)
    _wait(lambda: len(_indices(stream.result.events)) >= 8, timeout=20, what="8 tokens at the client")
    server = next(s for s in replicas if s.log_lines(rf"rid={rid} /chat/sse token 7 "))
    pid = int(stream.result.headers["x-streamlab-pid"])
    server.kill_worker(pid)
    thread.join(10)
    assert stream.result.outcome == "cut" and isinstance(stream.result.error, httpx.RemoteProtocolError)
    assert _indices(stream.result.events) == list(range(8))
    [model_run] = [e for e in mock.journal.chat() if e.last_user_message == prompt]
    assert model_run.wait_closed().ended != "complete", "the model call died with the worker"
    _settled(server)


def test_worker_killed_mid_stream_resumable_run_completes_once(stack):
    lb, replicas, mock = stack["lb"], stack["replicas"], stack["mock"]
    prompt = _prompt("kill-resume")
    run = _start_run(lb.url, prompt, STALL)
    result = ResumableStream(run["stream"])
    thread = _in_thread(lambda: list(resume_stream(lb.url + run["stream"], result=result)))
    _wait(lambda: len(result.events) >= 8, timeout=20, what="8 events")
    served_by = int(result.connections[0]["pid"])
    assert served_by != run["pid"], "round robin put the stream on the other replica"
    server = _owner(replicas, served_by)
    server.kill_worker(served_by)
    thread.join(15)
    _assert_exactly_once(result)
    assert result.connections[0]["ended"] == "cut: RemoteProtocolError"
    assert result.reconnects >= 1 and all(int(c["pid"]) != served_by for c in result.connections[1:])
    assert _model_runs(mock, prompt) == 1
    _settled(server)


def test_a_killed_producer_ends_the_run_with_producer_lost_not_a_hang(stack):
    """What resuming cannot cure: the worker that runs the model call dies; the run is over."""
    a, b = stack["replicas"]
    mock = stack["mock"]
    prompt = _prompt("producer-killed")
    run = _start_run(a.url, prompt, STALL)  # the producer lives in a worker of replica a
    result = ResumableStream(run["stream"])
    thread = _in_thread(lambda: list(resume_stream(b.url + run["stream"], result=result)))
    _wait(lambda: len(result.events) >= 8, timeout=20, what="8 events")
    a.kill_worker(run["pid"])
    t_kill = time.monotonic()
    thread.join(15)
    took = time.monotonic() - t_kill
    assert result.outcome == "error" and "producer lost" in result.events[-1].data, result.connections
    assert result.events[-1].id is None and result.duplicates == 0
    got = _indices(result.events)
    assert got == list(range(8)), "what was produced before the kill, once"
    assert took < 2 + 1 + 2, f"readers learn it within lease + poll (+ margin): {took:.1f} s"
    assert _model_runs(mock, prompt) == 1
    _settled(a)


# -- the browser's EventSource ---------------------------------------------------------------

def _chromium() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return None
    return shutil.which("chromium") or shutil.which("chromium-browser")


EVENTSOURCE = """url => new Promise(resolve => {
    window.got = []; window.opens = 0;
    const es = new EventSource(url);
    es.onopen = () => { window.opens += 1; };
    es.addEventListener('token', e => window.got.push([e.lastEventId, JSON.parse(e.data).i]));
    es.addEventListener('done', e => { es.close(); window.finished = e.data; });
    resolve(true);
})"""


@pytest.mark.skipif(_chromium() is None, reason="playwright or chromium is not installed")
def test_browser_eventsource_resumes_after_a_worker_kill_with_last_event_id(stack):
    from playwright.sync_api import sync_playwright

    a, b = stack["replicas"]
    mock = stack["mock"]
    prompt = _prompt("browser")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.route("**/favicon.ico", lambda route: route.abort())
            page.goto(b.url + "/health")
            run = _start_run(a.url, prompt, STALL)  # producer on replica a, the page on replica b
            page.evaluate(EVENTSOURCE, run["stream"])
            _wait(lambda: page.evaluate("window.got.length") >= 8, timeout=20, what="8 events in the page")
            served = b.wait_for_log(rf"rid={run['run_id']} /runs serve after -")
            pid = int(served.text.split("pid=")[1].split()[0])
            b.kill_worker(pid)
            _wait(lambda: page.evaluate("window.finished || null") is not None, timeout=15, what="done in the page")
            got, opens = page.evaluate("window.got"), page.evaluate("window.opens")
        finally:
            browser.close()
    assert [i for _, i in got] == list(range(TOKENS)), "every token once, in order"
    assert opens >= 2, (got, b.log_lines(rf"rid={run['run_id']} "))
    resumed = b.log_lines(rf"rid={run['run_id']} /runs serve after \d")
    assert resumed, "the browser reconnected with Last-Event-ID"
    assert resumed[0].split("serve after ")[1] in {event_id for event_id, _ in got}
    assert _model_runs(mock, prompt) == 1
    _settled(b)


# -- (2) a proxy read timeout during a model stall -------------------------------------------

@pytest.mark.skipif(not sl.nginx_available(), reason="nginx is not installed")
def test_proxy_read_timeout_during_a_stall_cuts_the_baseline_and_the_run_resumes(stack):
    lb, mock = stack["lb"], stack["mock"]
    spec = "stall@5=30"  # 3 s of silence at SCALE; nginx gives up after 1 s
    with sl.proxy_for(upstream=lb.url, faults=[hops.ReadTimeout(seconds=10)], prefer="nginx") as nginx:
        assert nginx.kind.startswith("real nginx")
        baseline_prompt = _prompt("timeout-baseline")
        url = nginx.url + "/chat/sse?" + urlencode({"q": baseline_prompt, "spec": spec})
        baseline = sl.HTTPStream(url, unit="event", timeout=httpx.Timeout(10.0)).run()
        assert baseline.outcome == "cut", baseline
        assert _indices(baseline.events) == list(range(5))
        _wait(lambda: nginx.log_lines("upstream timed out"), timeout=5, what="nginx's timeout line")
        [model_run] = [e for e in mock.journal.chat() if e.last_user_message == baseline_prompt]
        assert model_run.wait_closed().ended != "complete", "the cut cancelled the model call"

        prompt = _prompt("timeout-resume")
        run = _start_run(nginx.url, prompt, spec)
        result = ResumableStream(run["stream"])
        list(resume_stream(nginx.url + run["stream"], result=result, retry=0.5))
        _assert_exactly_once(result)
        assert result.reconnects >= 1 and result.connections[0]["ended"] == "cut: RemoteProtocolError", \
            result.connections
        assert _model_runs(mock, prompt) == 1


# -- (3) the client's network drops ----------------------------------------------------------

def _drop_then_resume(base: str, run: dict) -> tuple[list, ResumableStream]:
    first = sl.HTTPStream(base + run["stream"], abort=sl.Abort(after_chunks=6), unit="event",
                          timeout=httpx.Timeout(10.0)).run()
    assert first.outcome == "aborted"
    events = [e for e in first.events if e.get("data") is not None]  # the first block is "retry: 100"
    assert len(events) == 5 and first.events[0].get("retry")
    result = ResumableStream(run["stream"])
    list(resume_stream(base + run["stream"], last_event_id=events[-1]["id"], result=result))
    return events, result


def test_client_network_drop_then_last_event_id_gets_the_rest_once(stack):
    lb, mock = stack["lb"], stack["mock"]
    prompt = _prompt("drop")
    run = _start_run(lb.url, prompt)
    first, rest = _drop_then_resume(lb.url, run)
    assert rest.outcome == "complete" and rest.duplicates == 0
    assert _indices(first) + _indices(rest.events) == list(range(TOKENS))
    assert rest.connections[0]["last_event_id"] == first[-1]["id"]
    assert _model_runs(mock, prompt) == 1


# -- (4) ids under a burst: langgraph#8112 ----------------------------------------------------

def _ordered(ids: list[str]) -> bool:
    keys = [event_id_key(i) for i in ids]
    return len(set(ids)) == len(ids) and all(x < y for x, y in zip(keys, keys[1:]))


def test_redis_ids_within_one_millisecond_stay_ordered_and_resume_exactly(stack):
    """langgraph#8112: ids ``<ms>-0`` repeat within a millisecond, and ``"...-10" < "...-9"`` as strings."""
    store = RedisStore(stack["redis"].url)
    run_id = f"burst-{uuid.uuid4().hex[:6]}"

    async def go():
        assert await store.create(run_id)
        ids = [await store.append(run_id, "token", str(i)) for i in range(300)]  # one at a time
        async with store._redis().pipeline(transaction=False) as pipe:  # a producer faster than a round trip
            for i in range(300, 600):
                pipe.xadd(store._key(run_id, "events"), {"e": "token", "d": str(i)})
            ids += await pipe.execute()
        tenth = next(i for i in ids if event_id_key(i)[1] >= 10)
        rest = await store.read(run_id, tenth, timeout=0)
        await store.aclose()
        return ids, tenth, rest

    ids, tenth, rest = asyncio.run(go())
    assert _ordered(ids)
    per_ms: dict[int, int] = {}
    for ms, _ in map(event_id_key, ids):
        per_ms[ms] = per_ms.get(ms, 0) + 1
    assert max(per_ms.values()) >= 10, "the burst put 10+ events into one millisecond"
    assert any(x > y for x, y in zip(ids, ids[1:])), "as strings the ids are out of order: never compare them so"
    first = ids.index(tenth) + 1
    assert [e.data for e in rest] == [str(i) for i in range(first, min(600, first + 500))], "batches of 500"


def test_in_memory_ids_count_up_and_resume_after_the_ninth():
    store = InMemoryStore()

    async def go():
        assert await store.create("r")
        ids = [await store.append("r", "token", str(i)) for i in range(2000)]
        return ids, await store.read("r", "9", timeout=0)

    ids, rest = asyncio.run(go())
    assert ids == [str(n) for n in range(1, 2001)] and _ordered(ids)
    assert [e.data for e in rest] == [str(i) for i in range(9, 509)], "after id '9' comes id '10' (batch of 500)"


def test_a_burst_through_the_app_keeps_ids_strictly_increasing(stack):
    lb, mock = stack["lb"], stack["mock"]
    run = _start_run(lb.url, _prompt("burst"), "tokens=300,itl=0")
    result = ResumableStream(run["stream"])
    list(resume_stream(lb.url + run["stream"], result=result))
    assert result.outcome == "complete" and _indices(result.events) == list(range(300))
    keys = [event_id_key(e.id) for e in result.events]
    assert all(x < y for x, y in zip(keys, keys[1:]))


# -- the store's contract, over HTTP ---------------------------------------------------------

def test_a_run_starts_once_per_run_id_and_bad_input_gets_4xx(stack):
    lb, mock = stack["lb"], stack["mock"]
    prompt, run_id = _prompt("once"), f"once-{uuid.uuid4().hex[:6]}"
    replies = [httpx.post(lb.url + "/runs", params={"q": prompt, "run_id": run_id}, timeout=10) for _ in range(4)]
    assert sorted(r.status_code for r in replies) == [200, 200, 200, 201]
    assert len({r.headers["x-streamlab-upstream"] for r in replies}) == 2, "both replicas were asked"
    result = ResumableStream("")
    list(resume_stream(lb.url + f"/runs/{run_id}/stream", result=result))
    assert result.outcome == "complete" and _model_runs(mock, prompt) == 1
    bad_id = httpx.get(lb.url + f"/runs/{run_id}/stream", headers={"Last-Event-ID": "yesterday"})
    assert bad_id.status_code == 400 and bad_id.json()["error"]["param"] == "last_event_id"
    assert httpx.get(lb.url + "/runs/no-such-run/stream").status_code == 404
    assert httpx.post(lb.url + "/runs", params={"run_id": "a b/c"}).status_code == 400
    tail = httpx.get(lb.url + f"/runs/{run_id}/stream", params={"last_event_id": result.events[-2].id})
    assert tail.status_code == 200 and tail.text.count("\nevent: ") + tail.text.startswith("event: ") == 1


def test_redis_calls_per_event(stack):
    lb, redis = stack["lb"], stack["redis"]
    run = _start_run(lb.url, _prompt("calls"))
    redis.reset_stats()
    result = ResumableStream(run["stream"])
    list(resume_stream(lb.url + run["stream"], result=result))
    calls = redis.command_calls()
    events = len(result.events)
    assert result.outcome == "complete" and events == TOKENS + 1
    assert calls.get("xadd", 0) <= events  # the producer: one XADD per event (some came before reset_stats)
    assert calls["xread"] <= events + 2  # one reader: at most one XREAD per event, plus a first and a last
    print(f"\nredis calls for {events} events, 1 reader: {dict(sorted(calls.items()))}")


# -- (5) the in-process store, one process ---------------------------------------------------

def test_in_memory_store_in_one_process_resumes_after_a_drop():
    with sl.time_scale(SCALE), sl.MockLLM(tokens=TOKENS, itl=0.2) as mock, \
            sl.Uvicorn(APP, env={"STREAMLAB_MODEL_URL": mock.base_url}) as app:
        assert httpx.get(app.url + "/health").json()["store"] == "memory"
        prompt = _prompt("memory")
        run = _start_run(app.url, prompt)
        first, rest = _drop_then_resume(app.url, run)
        assert rest.outcome == "complete" and rest.duplicates == 0
        assert _indices(first) + _indices(rest.events) == list(range(TOKENS))
        assert [e["id"] for e in first] == [str(i) for i in range(1, 6)]
        assert _model_runs(mock, prompt) == 1


# -- the producer's lease, in process --------------------------------------------------------

@pytest.mark.parametrize("kind", ["redis", "memory"])
def test_a_run_longer_than_the_lease_is_renewed_not_lost(stack, kind):
    from streamlab.fixes import ResumableRuns

    async def slow_model():
        for i in range(12):
            await asyncio.sleep(0.1)  # 1.2 s in all: twice the lease
            yield "token", str(i)

    async def go():
        store = RedisStore(stack["redis"].url) if kind == "redis" else InMemoryStore()
        runs = ResumableRuns(store, lease=0.6, poll=0.05)
        run_id = f"lease-{kind}-{uuid.uuid4().hex[:6]}"
        assert await runs.start(run_id, slow_model)
        assert not await runs.start(run_id, slow_model), "a run id starts once"
        got = [e async for e in runs.events(run_id)]
        late = [e async for e in runs.events(run_id, got[2].id)]
        await runs.aclose()
        return got, late

    got, late = asyncio.run(go())
    assert [(e.event, e.data) for e in got] == [("token", str(i)) for i in range(12)] + [("done", "[DONE]")]
    assert [e.data for e in late] == [str(i) for i in range(3, 12)] + ["[DONE]"]


def test_redis_down_answers_503_with_a_reason_not_a_500(monkeypatch):
    from streamlab._servers import ThreadedASGIServer, free_port
    from streamlab.apps import resumable

    monkeypatch.setenv("STREAMLAB_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")  # nobody listens
    resumable.runs.cache_clear()
    try:
        with ThreadedASGIServer(resumable.app) as server:
            created = httpx.post(server.url + "/runs", params={"q": "x"}, timeout=10)
            stream = httpx.get(server.url + "/runs/some-run/stream", timeout=10)
            health = httpx.get(server.url + "/health", timeout=10)
    finally:
        resumable.runs.cache_clear()
    for reply in (created, stream):
        assert reply.status_code == 503, reply.text
        assert reply.json()["error"]["type"] == "service_unavailable"
        assert "event store unavailable: ConnectionError" in reply.json()["error"]["message"]
    assert health.json()["store"] == "redis"


def test_an_event_cut_before_its_blank_line_does_not_count_as_received():
    """The id of an event becomes the Last-Event-ID only when the event is dispatched (WHATWG):
    a cut between ``id: 7`` and the blank line must make the server replay event 7."""
    from streamlab.fixes._resume import _parse_lines

    state = {"id": None, "retry": 0.5}
    lines = ["id: 6", "data: six", "", "id: 7", "data: seven"]          # the cut: no blank line after 7
    events = list(_parse_lines(iter(lines), state))
    assert [e.data for e in events] == ["six"] and state["id"] == "6"
