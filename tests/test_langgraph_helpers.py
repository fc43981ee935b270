"""The LangGraph helpers of notebooks/04_langgraph (streamlab.frameworks.langgraph) read what the
article's endpoints really emit, and the demo app serves the article's patterns."""

import json

import httpx
import httpx_sse
import pytest

import streamlab as sl
from streamlab._appserver import Uvicorn
from streamlab.frameworks import langgraph as lg


def test_read_event_understands_every_shape_the_app_emits():
    answer = "Section incident or gateway"
    # the article's endpoint: data: {chunk} with a Python repr; the final answer ends the run
    info = lg.read_event(f"data: {{'call_model': {{'answer': {answer!r}}}}}\n\n")
    assert info.text == answer and info.terminal
    # an update without the answer carries nothing and does not end the run
    info = lg.read_event("data: {'open_ticket': {'ticket': 'ticket-lb-1'}}\n\n")
    assert info.text is None and not info.terminal
    # JSON Lines / text/plain lines from /chat/sync and /chat/async
    assert lg.read_event(json.dumps({"call_model": {"answer": answer}}) + "\n").terminal
    assert lg.read_event(f"{ {'call_model': {'answer': answer}} }\n").text == answer
    # /stream: JSON token events, then done; keep-alive comments carry nothing
    assert lg.read_event('event: token\ndata: {"token": " word", "node": "m"}\n\n').text == " word"
    assert lg.read_event('event: done\ndata: {"answer": "x"}\n\n').terminal
    ping = lg.read_event(": ping\n\n")
    assert ping.text is None and not ping.terminal
    # streamlab's own frames (apps.graph_wsgi)
    assert lg.read_event("event: token\ndata: word\n\n").text == "word"
    assert lg.read_event("event: done\ndata: [DONE]\n\n").terminal
    # job polls and loop states
    assert not lg.read_event({"status": "running"}).terminal
    done = lg.read_event({"status": "done", "answer": answer})
    assert done.text == answer and done.terminal
    assert lg.read_event({"status": "error", "error": "boom"}).error == "boom"
    assert lg.read_event('data: {"history": [], "step": 3}\n\n').text == " step"


def test_lines_splits_chunks_at_newlines():
    class Chunks:
        result = None

        def __iter__(self):
            yield from (b'{"a": 1}\n{"b"', b': 2}\n', b'{"c": 3}')

    assert list(lg.Lines(Chunks())) == ['{"a": 1}\n', '{"b": 2}\n', '{"c": 3}']


def test_blind_retries_sends_the_request_again_on_a_timeout_only():
    calls = []

    def make():
        calls.append(1)
        if len(calls) < 3:
            raise httpx.ReadTimeout("slow")
        yield "data: {'m': {'answer': 'ok'}}\n\n"

    retrying = lg.blind_retries(make, attempts=3)
    run = sl.record(retrying, understand=lg.read_event)
    assert run.outcome is sl.Outcome.COMPLETE and retrying.attempts == 3
    assert retrying.errors == ["ReadTimeout", "ReadTimeout"]

    def cut():
        raise httpx.RemoteProtocolError("cut")
        yield  # pragma: no cover

    other = lg.blind_retries(cut, attempts=3)
    assert sl.record(other).error_class == "httpx.RemoteProtocolError" and other.attempts == 1


def test_ledger_performs_a_keyed_side_effect_once(monkeypatch):
    with lg.Ledger() as ledger:
        monkeypatch.setenv("STREAMLAB_LEDGER", ledger.path)
        assert lg._ledger_add(None, "r1")[1] and lg._ledger_add(None, "r2")[1]
        assert lg._ledger_add("order-42", "r3") == ("ticket-order-42", True)
        assert lg._ledger_add("order-42", "r4") == ("ticket-order-42", False)
        assert [(k, rid) for k, _, rid in ledger.effects()] == [(None, "r1"), (None, "r2"), ("order-42", "r3")]
        ledger.clear()
        assert ledger.effects() == []


def test_growth_measures_the_article_nodes():
    bad, good = lg.growth(lg.bad_node, 50), lg.growth(lg.good_node, 50)
    assert len(bad) == len(good) == 51 and bad[-1].step == 50
    assert bad[-1].history == 50 and good[-1].history == 21
    assert bad[-1].nbytes > 2 * good[-1].nbytes and bad[30].nbytes > bad[20].nbytes


def test_show_prints_routes_and_nodes(capsys):
    lg.show("/chat/sync", lg.bad_node)
    out = capsys.readouterr().out
    assert '@app.post("/chat/sync")' in out and "graph.stream(payload, config)" in out
    assert "@app.post(\"/chat/async\")" not in out and "def bad_node(state):" in out


def test_settle_returns_when_nothing_is_open():
    class Idle:
        journal = []

    lg.settle(Idle(), timeout=1)


def test_the_demo_app_serves_the_article_endpoints():
    with sl.MockLLM(tokens=8) as mock, lg.Ledger() as ledger, \
            Uvicorn("streamlab.frameworks.langgraph:create_app", extra_args=["--factory"],
                    env={"STREAMLAB_MODEL_URL": mock.base_url, **ledger.env}) as app, httpx.Client() as client:
        with httpx_sse.connect_sse(client, "POST", app.url + "/run", json={"input": "hi"}) as source:
            events = list(source.iter_sse())
        assert len(events) == 1 and events[0].data.startswith("{'call_model': {'answer': ")
        with pytest.raises(json.JSONDecodeError):
            events[0].json()
        with httpx_sse.connect_sse(client, "POST", app.url + "/stream", json={"input": "hi"}) as source:
            events = list(source.iter_sse())
        assert [e.event for e in events] == ["token"] * 8 + ["done"] and events[0].json()["node"] == "call_model"
        run = sl.record(lg.post(app.url + "/chat/sync", lines=True), expected=8, understand=lg.read_event)
        assert run.outcome is sl.Outcome.COMPLETE and run.tokens == 8
        assert [e.stream for e in mock.journal.chat()] == [False, True, False]  # only "messages" streams
        key = {"Idempotency-Key": "k"}
        for _ in range(2):
            assert sl.record(lg.post(app.url + "/agent/safe", headers=key), understand=lg.read_event).terminal
        assert len(ledger.effects()) == 1


def test_stream_restores_what_happened_when_the_reader_loop_closed_under_it():
    class Result:
        error = None

    class Racing:  # what HTTPStream.__iter__ raises when its reader loop closed a moment too early
        result = Result()

        def __init__(self, error=None):
            self.result.error = error

        def __iter__(self):
            yield "data: {'m': {'answer': 'ok'}}\n\n"
            raise RuntimeError("Event loop is closed")

    assert list(lg.Stream(Racing())) == ["data: {'m': {'answer': 'ok'}}\n\n"]
    with pytest.raises(httpx.RemoteProtocolError):
        list(lg.Stream(Racing(httpx.RemoteProtocolError("incomplete chunked read"))))


def test_the_stream_tracers_keep_their_lines(monkeypatch):
    """apps._common.traced (tokens) and the LangGraph app's _logged (events) are one tracer; the lines
    the notebooks grep and print stay as they were."""
    import asyncio

    from streamlab.apps import _common
    from streamlab.frameworks import _langgraph_app

    lines: list[str] = []
    record = lambda rid, route, message: lines.append(f"rid={rid} {route} {message}")
    monkeypatch.setattr(_common, "log", record)
    monkeypatch.setattr(_langgraph_app, "log", record)
    monkeypatch.setenv("STREAMLAB_LOG_TOKENS", "1")

    class Event:
        def __init__(self, data):
            self.data = data

    async def items(*values):
        for value in values:
            yield value

    async def main():
        assert [t async for t in _common.traced("r1", "/sse", items("a", "b"))] == ["a", "b"]
        assert len([e async for e in _langgraph_app._logged("r2", "/graph", items(Event("x"), Event("y")))]) == 2
        stream = _langgraph_app._logged("r3", "/graph", items(Event("x"), Event("y")))
        await stream.__anext__()
        await stream.aclose()

    asyncio.run(main())
    assert lines == ["rid=r1 /sse start", "rid=r1 /sse token 0 'a'", "rid=r1 /sse token 1 'b'",
                     "rid=r1 /sse done 2 tokens",
                     "rid=r2 /graph start", "rid=r2 /graph emit 0 'x'", "rid=r2 /graph emit 1 'y'",
                     "rid=r2 /graph end after 2 events",
                     "rid=r3 /graph start", "rid=r3 /graph emit 0 'x'",
                     "rid=r3 /graph STREAM CLOSED (GeneratorExit) after 1 events"]
