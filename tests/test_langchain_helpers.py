"""streamlab.frameworks.langchain: the helpers behind notebooks/02_langchain.ipynb."""

import time

import pytest

import streamlab as sl
from streamlab._servers import ThreadedASGIServer
from streamlab.frameworks import langchain as lc


@pytest.fixture(scope="module")
def served():
    """The mock model and combined_app() on real loopback sockets, in threads (time scale 0.01)."""
    with sl.time_scale(0.01), sl.MockLLM(tokens=6, ttft=0.5, itl=1) as mock:
        import os

        old = os.environ.get("STREAMLAB_MODEL_URL")
        os.environ["STREAMLAB_MODEL_URL"] = mock.base_url
        try:
            with ThreadedASGIServer(lc.combined_app(), name="test-langchain-app") as app:
                yield mock, app
        finally:
            if old is None:
                os.environ.pop("STREAMLAB_MODEL_URL", None)
            else:
                os.environ["STREAMLAB_MODEL_URL"] = old


def test_combined_app_has_every_demo_route_once():
    app = lc.combined_app()
    paths = [(r.path, tuple(sorted(getattr(r, "methods", None) or ()))) for r in app.router.routes]
    assert len(paths) == len(set(paths))
    for path in ("/chat/buffered", "/chat/sse", "/chat/plain", "/stream/sync", "/stream/async", "/invoke/sync",
                 "/invoke/async", "/stream/shared", "/stream/per_request", "/jobs", "/jobs/{job_id}", "/health"):
        assert path in {p for p, _ in paths}, path


def test_plain_sse_route_sends_no_accel_header_unless_asked(served):
    mock, app = served
    stats: dict = {}
    blocks = list(lc.sse_blocks(lc.endpoint(app, "/chat/plain", spec="tokens=3,seed=71"), stats=stats))
    assert stats["status"] == 200
    assert [lc.token_events(b).text is not None for b in blocks] == [True, True, True, False]
    assert lc.token_events(blocks[-1]).terminal
    import httpx

    with httpx.stream("GET", lc.endpoint(app, "/chat/plain", spec="tokens=1,seed=71")) as response:
        assert "x-accel-buffering" not in response.headers
    with httpx.stream("GET", lc.endpoint(app, "/chat/plain", spec="tokens=1,seed=71", accel="no")) as response:
        assert response.headers["x-accel-buffering"] == "no"


def test_record_sse_and_record_json_count_tokens(served):
    mock, app = served
    with sl.time_scale(0.01):
        sse = lc.record_sse(lc.endpoint(app, "/chat/sse", spec="tokens=4,seed=72"), expected=4, itl=1)
        buffered = lc.record_json(lc.endpoint(app, "/chat/buffered", spec="tokens=4,seed=72"), expected=4)
    assert (sse.outcome, sse.tokens) == (sl.Outcome.COMPLETE, 4)
    assert (buffered.outcome, buffered.tokens) == (sl.Outcome.COMPLETE, 4)
    assert sse.text == buffered.text


def test_token_events_ignore_the_answer_event():
    assert lc.token_events("event: answer\ndata: whole text\n\n").text is None
    assert lc.token_events("event: token\r\ndata:  word\r\n\r\n").text == " word"
    assert lc.token_events("event: done\ndata: [DONE]\n\n").terminal


def test_first_bytes_measures_sse_and_json(served):
    mock, app = served
    with sl.time_scale(0.01):
        sse = lc.first_bytes(lc.endpoint(app, "/chat/sse", spec="tokens=5,ttft=2,itl=2,seed=73"), clients=3)
        whole = lc.first_bytes(lc.endpoint(app, "/chat/buffered", spec="tokens=5,ttft=2,itl=2,seed=73"), clients=1)
    assert [(h.status, h.tokens, h.error) for h in sse] == [(200, 5, None)] * 3
    assert all(h.e2e - h.ttft > 4 for h in sse)          # tokens kept coming after the first
    assert whole[0].tokens == 5 and whole[0].e2e - whole[0].ttft < 1


def test_together_keeps_order_staggers_and_returns_exceptions():
    with sl.time_scale(0.01):
        started = time.perf_counter()
        a, b, c = lc.together(lambda: time.perf_counter(), lambda: time.perf_counter(), lambda: 1 / 0, stagger=10)
    assert b - a >= 0.09
    assert isinstance(c, ZeroDivisionError)
    assert a - started < 0.09


def test_health_probe_counts_a_probe_still_waiting(served):
    mock, app = served
    with sl.time_scale(0.01), lc.HealthProbe(lc.endpoint(app, "/health"), every=1) as probe:
        time.sleep(0.05)
    assert probe.latencies and probe.worst < 100


def test_timeout_defaults_reads_the_clients_chatopenai_builds():
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model="m", base_url="http://127.0.0.1:9/v1", api_key="unused")
    found = lc.timeout_defaults(llm)
    assert found["request_timeout"] is None and found["sync_sdk_timeout"] is None
    assert found["max_retries"] == 2
    assert found["stream_chunk_timeout"] == 120.0
    explicit = lc.timeout_defaults(ChatOpenAI(model="m", base_url="http://127.0.0.1:9/v1", api_key="unused",
                                              timeout=30, max_retries=0))
    assert explicit["sync_sdk_timeout"] == 30 and explicit["max_retries"] == 0
    llm.root_client.close()


def test_quiet_strips_what_changes_between_runs():
    assert lc.quiet("[2026-11-21 22:27:45 +0000] [11810] [CRITICAL] WORKER TIMEOUT (pid:11811)") == \
        "[CRITICAL] WORKER TIMEOUT (pid:11811)"
    assert lc.quiet("2026/11/21 22:30:06 [error] 13305#13305: *2 upstream timed out") == \
        "nginx [error] upstream timed out"
    assert lc.quiet("streamlab.app pid=1 rid=a /x start") == "streamlab.app pid=1 rid=a /x start"


def test_endpoint_encodes_the_query():
    assert lc.endpoint("http://h:1/", "/chat/sse", spec="tokens=4,itl=2") == \
        "http://h:1/chat/sse?spec=tokens%3D4%2Citl%3D2"
    assert lc.endpoint("http://h:1", "/health") == "http://h:1/health"
