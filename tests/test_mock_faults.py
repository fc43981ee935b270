"""Every model fault, driven over a real loopback socket, with the symptom a client sees."""

import json
import socket

import httpx
import openai
import pytest

import streamlab as sl
from streamlab.faults import (BrokenFraming, ContextWindow, Cut, ErrorEvent, MalformedChunk, NoDone, RateLimited,
                              Reset, ServerError, SilentEnd, SlowHeaders, Stall)

MESSAGES = [{"role": "user", "content": "tell me about streaming cutoffs please"}]


@pytest.fixture(scope="module")
def mock():
    with sl.time_scale(0.01), sl.MockLLM(tokens=20, itl=0.2) as server:  # 2 ms between tokens
        yield server


def client_for(mock, *faults, **kw):
    return openai.OpenAI(base_url=mock.base_url_for(*faults), api_key="unused", max_retries=0,
                         timeout=kw.pop("timeout", 5.0))


def stream_run(mock, *faults, **kw):
    client = client_for(mock, *faults, timeout=kw.pop("timeout", 5.0))
    return sl.record(lambda: client.chat.completions.create(model="m", messages=MESSAGES, stream=True, **kw),
                     expected=20)


def test_clean_stream_is_complete(mock):
    run = stream_run(mock)
    assert run.outcome is sl.Outcome.COMPLETE
    assert run.tokens == 20 and run.finish == "stop"
    assert mock.journal.last.ended == "complete"


def test_cut_gives_incomplete_chunked_read(mock):
    run = stream_run(mock, Cut(at=7))
    assert run.outcome is sl.Outcome.CUT_MID_STREAM
    assert isinstance(run.error, httpx.RemoteProtocolError)
    assert "incomplete chunked read" in str(run.error)
    assert run.tokens == 7


def test_reset_gives_connection_reset(mock):
    run = stream_run(mock, Reset(at=4))
    assert run.outcome is sl.Outcome.CUT_MID_STREAM
    assert isinstance(run.error, httpx.ReadError)
    assert "reset" in str(run.error).lower()
    assert run.tokens == 4


def test_silent_end_raises_nothing(mock):
    run = stream_run(mock, SilentEnd(at=9))
    assert run.error is None
    assert run.outcome is sl.Outcome.SILENT_TRUNCATION
    assert run.tokens == 9 and run.finish is None


def test_missing_done_with_finish_reason_is_not_noticed_by_the_sdk(mock):
    run = stream_run(mock, NoDone())
    assert run.outcome is sl.Outcome.COMPLETE and run.tokens == 20
    raw = list(sl.sse_events(mock.base_url_for(NoDone()) + "/chat/completions"))
    assert "[DONE]" not in raw[-1] and '"finish_reason":"stop"' in raw[-1]


def test_stall_times_out_a_client_with_a_short_read_timeout(mock):
    run = stream_run(mock, Stall(at=5, seconds=100), timeout=0.3)  # 1 s stall vs 0.3 s read timeout
    assert run.outcome is sl.Outcome.STALLED
    assert isinstance(run.error, openai.APITimeoutError) or isinstance(run.error, httpx.ReadTimeout)
    assert run.tokens == 5


def test_stall_shorter_than_timeout_completes(mock):
    run = stream_run(mock, Stall(at=5, seconds=10), timeout=2.0)  # 0.1 s stall
    assert run.outcome is sl.Outcome.COMPLETE and run.tokens == 20
    gaps = run.itls
    assert max(gaps) >= 9  # the stall shows as one long gap, in scenario seconds


def test_malformed_chunk_raises_json_error_in_sdk(mock):
    run = stream_run(mock, MalformedChunk(at=3))
    assert isinstance(run.error, json.JSONDecodeError)
    assert run.outcome is sl.Outcome.CUT_MID_STREAM and run.tokens == 3


def test_broken_framing_silently_loses_a_token(mock):
    run = stream_run(mock, BrokenFraming(at=3))
    assert run.error is None and run.outcome is sl.Outcome.COMPLETE
    assert run.tokens == 19  # one token vanished without any error


def test_error_event_raises_api_error(mock):
    run = stream_run(mock, ErrorEvent(at=6))
    assert isinstance(run.error, openai.APIError)
    assert run.tokens == 6


def test_rate_limit_429_with_retry_after(mock):
    with httpx.Client() as h:
        r = h.post(mock.base_url_for(RateLimited(retry_after=100)) + "/chat/completions",
                   json=sl.chat_request())
    assert r.status_code == 429
    assert r.headers["retry-after"] == "1" and r.headers["retry-after-ms"] == "1000"
    assert r.json()["error"]["code"] == "rate_limit_exceeded"
    run = stream_run(mock, RateLimited(retry_after=1))
    assert isinstance(run.error, openai.RateLimitError)
    assert run.outcome is sl.Outcome.HTTP_ERROR and run.status == 429  # the recorder's outcome since 5f7f03d


def test_sdk_retries_a_429_then_succeeds(mock):
    client = openai.OpenAI(base_url=mock.base_url, api_key="unused", max_retries=2)
    with mock.script(RateLimited(retry_after=1), None):
        run = sl.record(lambda: client.chat.completions.create(model="m", messages=MESSAGES, stream=True))
    assert run.outcome is sl.Outcome.COMPLETE
    assert [e.status for e in mock.journal.chat()[-2:]] == [429, 200]


def test_server_error_500(mock):
    run = stream_run(mock, ServerError())
    assert isinstance(run.error, openai.InternalServerError)
    assert run.outcome is sl.Outcome.HTTP_ERROR and run.status == 500


def test_context_window_400(mock):
    client = client_for(mock, ContextWindow(tokens=10))
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=5)
    assert err.value.code == "context_length_exceeded"
    ok = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "short"}], max_tokens=5)
    assert ok.choices[0].finish_reason == "length"


def test_slow_headers_trip_a_short_timeout_before_the_stream(mock):
    run = stream_run(mock, SlowHeaders(seconds=100), timeout=0.3)
    assert run.outcome is sl.Outcome.STALLED and run.items == 0


def test_non_streaming_cut_is_a_disconnect_without_response(mock):
    client = client_for(mock, Cut(at=3))
    with pytest.raises(openai.APIConnectionError) as err:
        client.chat.completions.create(model="m", messages=MESSAGES)
    assert isinstance(err.value.__cause__, httpx.RemoteProtocolError)


def test_non_streaming_silent_end_has_no_finish_reason(mock):
    answer = client_for(mock, SilentEnd(at=4)).chat.completions.create(model="m", messages=MESSAGES)
    assert answer.choices[0].finish_reason is None
    assert len(answer.choices[0].message.content.split()) == 4


def test_first_n_option_cuts_only_the_first_request(mock):
    base = mock.url + "/s/cut@3,first=1/v1"
    client = openai.OpenAI(base_url=base, api_key="unused", max_retries=0)
    runs = [sl.record(lambda: client.chat.completions.create(model="m", messages=MESSAGES, stream=True))
            for _ in range(2)]
    assert [r.outcome for r in runs] == [sl.Outcome.CUT_MID_STREAM, sl.Outcome.COMPLETE]


def test_header_selects_behaviour(mock):
    client = openai.OpenAI(base_url=mock.base_url, api_key="unused", max_retries=0,
                           default_headers=mock.headers_for(Cut(at=2)))
    run = sl.record(lambda: client.chat.completions.create(model="m", messages=MESSAGES, stream=True))
    assert run.outcome is sl.Outcome.CUT_MID_STREAM and run.tokens == 2


def test_reset_sends_a_real_rst():
    with sl.MockLLM(tokens=50, itl=0.01) as mock:
        body = json.dumps(sl.chat_request()).encode()
        sock = socket.create_connection(("127.0.0.1", mock.port))
        sock.sendall(b"POST /s/reset@2/v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        with pytest.raises(ConnectionResetError):
            while sock.recv(65536):
                pass
        sock.close()
