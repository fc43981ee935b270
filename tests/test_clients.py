"""Client behaviours (abort, slow reader, timeouts) over real sockets, and what the server sees."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest

import streamlab
from streamlab._appserver import Uvicorn
from streamlab._clients import (Abort, ClientTimeout, HTTPStream, SlowReader, StreamResult, TotalTimeout, app_event,
                                read_stream)
from streamlab._timescale import time_scale

TICKER = "streamlab.apps.ticker:app"


pytestmark = pytest.mark.usefixtures("clean_slate")  # tests/conftest.py: no server or child left


@pytest.fixture
def ticker():
    with Uvicorn(TICKER) as server:
        yield server


def test_a_complete_stream_keeps_every_chunk_with_its_time(ticker):
    result = read_stream(ticker.url + "/stream?n=10&every=0.02")
    assert isinstance(result, StreamResult) and result.outcome == "complete" and result.status == 200
    assert [e["data"] for e in result.events] == [f"tick {i}" for i in range(10)] + ["[DONE]"]
    assert len(result.chunks) == len(result.times) and result.times == sorted(result.times)
    assert result.t_start < result.t_headers <= result.times[0] <= result.t_end
    assert 0.01 < result.ttfb < 0.5 and result.nbytes == len(result.body)


def test_httpstream_ttfb_does_not_count_client_setup(ticker, monkeypatch):
    """Building the httpx client is setup (20-100 ms of SSL context and pool): the clock starts at
    the send. A client that takes 0.5 s to build must not show a 0.5 s time to first byte."""
    built = []

    class SlowToBuild(httpx.AsyncClient):
        def __init__(self, *args, **kwargs):
            time.sleep(0.5)
            super().__init__(*args, **kwargs)
            built.append(time.perf_counter())

    monkeypatch.setattr(httpx, "AsyncClient", SlowToBuild)
    result = read_stream(ticker.url + "/stream?n=2&every=0.05")
    assert result.outcome == "complete" and len(built) == 1
    assert result.t_start >= built[0]
    assert 0.04 < result.ttfb < 0.4 and result.elapsed < 0.45


def test_abort_after_chunks_closes_the_connection_and_the_server_sees_it(ticker):
    stream = HTTPStream(ticker.url + "/stream?n=40&every=0.02", headers={"X-Request-ID": "ac-1"},
                        abort=Abort(after_chunks=4))
    chunks = list(stream)
    assert len(chunks) == 4 and stream.result.aborted and stream.result.outcome == "aborted"
    assert stream.result.error is None
    line = ticker.wait_for_log("rid=ac-1 /stream CLIENT DISCONNECT")
    assert line.text.endswith("(http.disconnect) after 4 chunks")


def test_abort_after_seconds_fires_during_a_stall(ticker):
    """The server blocks for 1 s after 2 events; AbortController(0.4 s) does not wait for it."""
    t0 = time.perf_counter()
    result = read_stream(ticker.url + "/stream?n=5&every=0.05&block_at=2&block=1", abort=Abort(after=0.4),
                         headers={"X-Request-ID": "at-1"})
    assert result.outcome == "aborted" and len(result.events) == 2
    assert 0.35 < time.perf_counter() - t0 < 1.0
    assert ticker.wait_for_log("rid=at-1 /stream CLIENT DISCONNECT", timeout=5)


def test_abort_and_timeouts_are_in_scenario_seconds(ticker):
    with time_scale(0.01):
        t0 = time.perf_counter()
        result = read_stream(ticker.url + "/stream?n=50&every=0.05", abort=Abort(after=30))  # 0.3 s
    assert result.outcome == "aborted" and 0.25 < time.perf_counter() - t0 < 0.8


def test_read_timeout_vs_total_deadline(ticker):
    slow_first = read_stream(ticker.url + "/stream?n=3&every=0.5", timeout=ClientTimeout(read=0.2))
    assert slow_first.outcome == "timeout" and isinstance(slow_first.error, httpx.ReadTimeout)

    # a trickle: one event every 0.1 s never trips a 0.3 s read timeout ...
    trickle = ticker.url + "/stream?n=15&every=0.1"
    assert read_stream(trickle, timeout=ClientTimeout(read=0.3)).outcome == "complete"
    # ... only an overall deadline ends it
    bounded = read_stream(trickle, timeout=ClientTimeout(read=0.3, total=0.5))
    assert bounded.outcome == "timeout" and isinstance(bounded.error, TotalTimeout)
    assert isinstance(bounded.error, httpx.TimeoutException) and 3 <= len(bounded.events) <= 6


def test_errors_are_raised_by_iteration_and_kept_by_run(ticker):
    stream = HTTPStream(ticker.url + "/stream?n=3&every=0.5", timeout=ClientTimeout(read=0.1))
    with pytest.raises(httpx.ReadTimeout):
        list(stream)
    assert isinstance(stream.result.error, httpx.ReadTimeout)
    with pytest.raises(RuntimeError, match="single use"):
        list(stream)


def test_a_cut_from_the_mock_model_is_a_remote_protocol_error():
    with streamlab.MockLLM(tokens=20) as mock:
        body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        result = read_stream(mock.base_url_for("cut@5") + "/chat/completions", method="POST", json=body,
                             unit="event")
    assert result.outcome == "cut" and isinstance(result.error, httpx.RemoteProtocolError)
    assert 1 <= len(result.events) <= 6


def test_a_slow_reader_blocks_the_server_only_after_megabytes(ticker):
    """Stop reading for 1 s. A token-sized stream ends on the server long before the client
    reads it (kernel buffers hold it); 6 MB is more than they hold and the app's send waits."""
    t0 = time.perf_counter()
    small = read_stream(ticker.url + "/stream?n=40&every=0&size=200", headers={"X-Request-ID": "slow-1"},
                        slow=SlowReader(pause_at=1, pause=1.0))
    done = ticker.wait_for_log("rid=slow-1 /stream done")
    assert small.outcome == "complete" and small.t_end - done.t > 0.7
    assert not ticker.log_lines("rid=slow-1 /stream send blocked")

    big = read_stream(ticker.url + "/stream?n=100&every=0&size=65536", headers={"X-Request-ID": "slow-2"},
                      slow=SlowReader(pause_at=1, pause=1.0), timeout=20)
    assert big.outcome == "complete" and big.nbytes > 6_000_000
    line = ticker.wait_for_log(r"rid=slow-2 /stream send blocked (\d\.\d\d) s")
    assert float(line.text.split("send blocked ")[1].split(" ")[0]) > 0.5
    assert time.perf_counter() - t0 < 10


def test_slow_reader_delay_paces_the_reads(ticker):
    result = read_stream(ticker.url + "/stream?n=5&every=0", slow=SlowReader(delay=0.1))
    assert result.outcome == "complete" and result.elapsed >= 0.1 * (len(result.chunks) - 1)


def test_async_iteration(ticker):
    async def main() -> tuple[list, StreamResult]:
        stream = HTTPStream(ticker.url + "/stream?n=6&every=0.01", unit="event")
        return [event async for event in stream], stream.result

    events, result = asyncio.run(main())
    assert result.outcome == "complete" and events[-1] == "event: done\ndata: [DONE]\n\n"
    assert asyncio.run(HTTPStream(ticker.url + "/stream?n=40&every=0.01", abort=Abort(after_chunks=2)).arun()).aborted


def test_the_recorder_wraps_a_stream_and_its_abort_reaches_the_server(ticker):
    run = streamlab.record(HTTPStream(ticker.url + "/stream?n=8&every=0.01", unit="event"), understand=app_event)
    assert run.outcome == streamlab.Outcome.COMPLETE

    stream = HTTPStream(ticker.url + "/stream?n=40&every=0.02", headers={"X-Request-ID": "rec-1"}, unit="event")
    run = streamlab.record(stream, understand=app_event, abort_after=3)
    assert run.outcome == streamlab.Outcome.CLIENT_ABORTED
    assert stream.result.aborted
    assert ticker.wait_for_log("rid=rec-1 /stream CLIENT DISCONNECT")


def test_a_consumer_that_stops_early_does_not_leave_the_reader_running(ticker):
    stream = HTTPStream(ticker.url + "/stream?n=5&every=0.05&block_at=1&block=1", headers={"X-Request-ID": "stop-1"})
    iterator = iter(stream)
    next(iterator)
    t0 = time.perf_counter()
    iterator.close()  # the reader thread is blocked in a read: closing must not wait for the server
    assert time.perf_counter() - t0 < 0.5
    assert stream.result.events == [{"data": "tick 0"}]
    assert stream.result.aborted
    assert not [t for t in threading.enumerate() if t.name == "streamlab-client"]


# --------------------------------------------------------------------------- the one SSE parser (streamlab._sse)

from streamlab._sse import SSEEvent, SSEParser, format_event, iter_blocks, parse_block, split_events  # noqa: E402


def test_sse_parser_ignores_comments_and_keeps_comment_only_blocks_as_dataless():
    event = parse_block(": ping\ndata: x\n: another")
    assert event == SSEEvent(data="x", comments=("ping", "another"))
    assert parse_block(": ping").data is None


def test_sse_parser_joins_multi_line_data_and_reads_id_event_retry():
    event = parse_block("event: token\nid: 7\nretry: 3000\ndata: first\ndata:second\ndata:  two spaces")
    assert event.event == "token" and event.id == "7" and event.retry == 3000
    assert event.data == "first\nsecond\n two spaces"  # one space after the colon is dropped, not two
    assert parse_block("retry: soon\nid: a\0b\ndata").as_dict() == {"data": ""}  # bad retry, NUL id, bare field


def test_sse_parser_splits_crlf_cr_and_lf_even_when_a_read_cuts_a_crlf():
    parser = SSEParser()
    assert parser.feed("data: a\r") == []               # the CR may be half of a CRLF
    assert parser.feed("\n\r\ndata: b\r\rdata: c\n") == ["data: a", "data: b"]
    assert parser.feed("\n") == ["data: c"]
    assert split_events("data: 1\r\n\r\ndata: 2") == (["data: 1"], "data: 2")


def test_sse_parser_hands_back_a_partial_final_event():
    parser = SSEParser()
    assert parser.feed("data: whole\n\ndata: [DONE]") == ["data: whole"]
    assert parser.close() == "data: [DONE]"           # not an event for a browser; the reader decides
    assert list(iter_blocks(["data: x\n\n", "data: y"])) == ["data: x", "data: y"]
    assert list(iter_blocks(["data: x\n\n", "data: y"], partial=False)) == ["data: x"]


def test_format_event_round_trips_through_the_parser():
    text = format_event("line 1\nline 2", event="token", id=3)
    assert text.endswith("\n\n")
    assert parse_block(text) == SSEEvent(data="line 1\nline 2", event="token", id="3")
