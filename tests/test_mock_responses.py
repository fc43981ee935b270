"""The mock's OpenAI Responses API through the real openai SDK: streaming, background, cut, resume.

Every test talks to a real ``MockLLM`` on a loopback socket with ``openai.OpenAI``
(``max_retries=0``), so what is pinned is what the SDK parses and raises.
"""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

import streamlab as sl
from streamlab._mock_responses import Runs, continuation
from streamlab._text import generate

TOKENS = 30
ORDER = ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"]
CLOSING = ["response.output_text.done", "response.content_part.done", "response.output_item.done",
           "response.completed"]


@pytest.fixture(scope="module")
def mock():
    with sl.MockLLM(tokens=TOKENS, itl=0.02) as server:
        yield server


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key="unused", max_retries=0)


def _answer(n: int = TOKENS, seed: int = 0) -> str:
    return "".join(generate(n, seed))


def _read_until_error(stream) -> tuple[list, BaseException | None]:
    got = []
    try:
        for event in stream:
            got.append(event)
    except Exception as exc:  # noqa: BLE001 - the exception class is what the test pins
        return got, exc
    return got, None


def _wait(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def test_stream_events_are_the_sdk_types_in_order_with_contiguous_sequence_numbers(mock):
    events = list(_client(mock.base_url).responses.create(model="m", input="hi", stream=True))
    types = [e.type for e in events]
    assert types[:4] == ORDER and types[-4:] == CLOSING
    assert types[4:-4] == ["response.output_text.delta"] * TOKENS
    assert [e.sequence_number for e in events] == list(range(len(events)))
    final = events[-1].response
    assert final.status == "completed" and final.output_text == _answer()
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == _answer()
    assert final.usage.output_tokens == TOKENS and final.usage.input_tokens == 1
    assert isinstance(events[-1], openai.types.responses.ResponseCompletedEvent)


def test_non_streaming_create_waits_for_the_whole_answer(mock):
    response = _client(mock.base_url).responses.create(model="m", input="hi", instructions="be brief")
    assert response.status == "completed" and response.output_text == _answer()
    assert response.usage.input_tokens == 3


def test_background_without_stream_returns_queued_job_then_completes(mock):
    client = _client(mock.base_url)
    job = client.responses.create(model="m", input="hi", background=True)
    assert job.status == "queued" and job.background is True
    assert _wait(lambda: client.responses.retrieve(job.id).status == "completed")
    assert client.responses.retrieve(job.id).output_text == _answer()


def test_cut_background_stream_raises_httpx_remote_protocol_error_and_the_run_goes_on(mock):
    stream = _client(mock.base_url_for("cut@5")).responses.create(model="m", input="hi", stream=True,
                                                                  background=True)
    got, error = _read_until_error(stream)
    assert type(error) is httpx.RemoteProtocolError  # not an openai error: the SDK does not wrap it
    assert [e.type for e in got].count("response.output_text.delta") == 5
    run = mock.responses.get(got[0].response.id)
    created = run.entry
    assert created.wait_closed().ended == "cut" and created.tokens_sent == 5
    assert _wait(lambda: run.status == "completed")
    assert run.tokens_generated == TOKENS and created.tokens_generated == TOKENS  # paid after the cut


def test_resume_with_starting_after_replays_after_n_then_follows_live_without_duplicates(mock):
    client = _client(mock.base_url)
    slow = mock.headers_for("cut@5", itl=0.05)  # 30 tokens over 1.5 s: the resume starts mid-run
    got, error = _read_until_error(client.responses.create(model="m", input="hi", stream=True, background=True,
                                                           extra_headers=slow))
    assert isinstance(error, httpx.RemoteProtocolError)
    rid, last = got[0].response.id, got[-1].sequence_number
    run = mock.responses.get(rid)
    generated_at_resume = run.tokens_generated
    rest = list(client.responses.retrieve(rid, stream=True, starting_after=last))
    assert generated_at_resume < TOKENS  # the resume followed live events, not only stored ones
    assert rest[0].sequence_number == last + 1
    sequence = [e.sequence_number for e in got + rest]
    assert sequence == list(range(len(sequence)))  # each event once, none missing
    text = "".join(e.delta for e in got + rest if e.type == "response.output_text.delta")
    assert text == _answer() and rest[-1].type == "response.completed"
    resumed = mock.journal.last
    assert resumed.path == f"/v1/responses/{rid}" and resumed.options["starting_after"] == last
    assert resumed.tokens_sent == TOKENS - 5


def test_fault_spec_applies_to_each_resume_connection(mock):
    """cut@12 on every connection: 30 tokens arrive in three connections (12 + 12 + 6)."""
    client = _client(mock.base_url_for("cut@12"))
    got, error = _read_until_error(client.responses.create(model="m", input="hi", stream=True, background=True))
    rid, pieces = got[0].response.id, [got]
    while error is not None:
        more, error = _read_until_error(client.responses.retrieve(rid, stream=True,
                                                                  starting_after=pieces[-1][-1].sequence_number))
        pieces.append(more)
    deltas = [[e.delta for e in p if e.type == "response.output_text.delta"] for p in pieces]
    assert [len(d) for d in deltas] == [12, 12, 6]
    assert "".join(sum(deltas, [])) == _answer()


def test_non_background_stream_cut_ends_the_run_and_cannot_be_resumed(mock):
    client = _client(mock.base_url_for("cut@5", itl=0.05))
    got, error = _read_until_error(client.responses.create(model="m", input="hi", stream=True))
    assert isinstance(error, httpx.RemoteProtocolError)
    run = mock.responses.get(got[0].response.id)
    assert _wait(lambda: run.status == "cancelled")
    assert run.tokens_generated < TOKENS
    with pytest.raises(openai.BadRequestError) as info:
        list(_client(mock.base_url).responses.retrieve(run.id, stream=True))
    assert info.value.body["code"] == "invalid_request" and "background" in info.value.body["message"]


def test_stall_holds_the_delivery_while_the_background_run_finishes(mock):
    client = _client(mock.base_url_for("stall@3=1"))
    events = list(client.responses.create(model="m", input="hi", stream=True, background=True))
    run = mock.responses.get(events[0].response.id)
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == _answer()
    stalled = run.entry.log
    assert any(e.kind == "fault" and "stall@3" in e.note for e in stalled.events)
    assert run.done and run.entry.t_end - run.entry.t_start >= 1.0


def test_error_event_midstream_raises_openai_api_error(mock):
    stream = _client(mock.base_url_for("error@4")).responses.create(model="m", input="hi", stream=True,
                                                                    background=True)
    got, error = _read_until_error(stream)
    assert type(error) is openai.APIError and "server had an error" in str(error)
    assert [e.type for e in got].count("response.output_text.delta") == 4


def test_ratelimit_rejects_before_any_run_starts(mock):
    before = len(mock.responses)
    with pytest.raises(openai.RateLimitError):
        _client(mock.base_url_for("ratelimit=1")).responses.create(model="m", input="hi", stream=True,
                                                                   background=True)
    assert len(mock.responses) == before


def test_cancel_stops_a_background_run(mock):
    client = _client(mock.base_url)
    job = client.responses.create(model="m", input="hi", background=True,
                                  extra_headers=mock.headers_for(tokens=1000, itl=0.05))
    cancelled = client.responses.cancel(job.id)
    assert cancelled.status == "cancelled"
    run = mock.responses.get(job.id)
    generated = run.tokens_generated
    time.sleep(0.2)
    assert run.tokens_generated == generated < 1000
    assert client.responses.cancel(job.id).status == "cancelled"  # cancelling again changes nothing


def test_assistant_prefix_input_continues_the_answer_after_its_words(mock):
    prefix = _answer(11)
    events = list(_client(mock.base_url).responses.create(model="m", stream=True, input=[
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": prefix}]))
    rest = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert prefix + rest == _answer()
    assert continuation([{"role": "user", "content": "x"}], ["a", " b"]) == ["a", " b"]


def test_max_output_tokens_ends_incomplete(mock):
    events = list(_client(mock.base_url).responses.create(model="m", input="hi", stream=True, max_output_tokens=7))
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"
    assert events[-1].response.output_text == _answer(7)


BAD = [
    ("POST", "/v1/responses", b"{not json", 400, "invalid_json"),
    ("POST", "/v1/responses", b'{"input": "hi"}', 400, "missing_required_parameter"),
    ("POST", "/v1/responses", b'{"model": "m"}', 400, "missing_required_parameter"),
    ("POST", "/v1/responses", b'{"model": "m", "input": []}', 400, "missing_required_parameter"),
    ("POST", "/v1/responses", b'{"model": "m", "input": "hi", "stream": "yes"}', 400, "invalid_type"),
    ("POST", "/v1/responses", b'{"model": "m", "input": "hi", "background": true, "store": false}', 400,
     "invalid_value"),
    ("POST", "/v1/responses", b'{"model": "m", "input": "hi", "max_output_tokens": 0}', 400, "invalid_value"),
    ("POST", "/v1/responses", b'{"model": "m", "input": [{"role": "tool", "content": "x"}]}', 400, "invalid_value"),
    ("POST", "/v1/responses", b'{"model": "m", "input": "hi", "x": NaN}', 400, "invalid_json"),
    ("POST", "/v1/responses", b'{"model": "m", "input": ' + b"[" * 100 + b"]" * 100 + b"}", 400, "invalid_json"),
    ("POST", "/s/cut@nope/v1/responses", b'{"model": "m", "input": "hi"}', 400, "invalid_streamlab_spec"),
    ("GET", "/v1/responses", b"", 405, None),
    ("GET", "/v1/responses/resp_nothere", b"", 404, "not_found"),
    ("GET", "/v1/responses/not-a-response-id", b"", 404, "not_found"),
    ("PUT", "/v1/responses/resp_nothere", b"", 405, None),
]


@pytest.mark.parametrize("method,path,body,status,code", BAD)
def test_bad_input_gets_an_openai_style_json_4xx(mock, method, path, body, status, code):
    reply = httpx.request(method, mock.url + path, content=body, headers={"content-type": "application/json"})
    assert reply.status_code == status
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code and error["message"]


def test_bad_queries_on_a_real_run_get_400(mock):
    job = _client(mock.base_url).responses.create(model="m", input="hi", background=True)
    for query, param in (("stream=maybe", "stream"), ("stream=true&starting_after=abc", "starting_after"),
                         ("stream=true&starting_after=-5", "starting_after"),
                         ("stream=true&starting_after=%EF%BC%91", "starting_after")):
        reply = httpx.get(f"{mock.base_url}/responses/{job.id}?{query}")
        assert reply.status_code == 400 and reply.json()["error"]["param"] == param, query
    plain = _client(mock.base_url).responses.create(model="m", input="hi")
    reply = httpx.post(f"{mock.base_url}/responses/{plain.id}/cancel")
    assert reply.status_code == 400 and "background" in reply.json()["error"]["message"]
    assert httpx.get(mock.url + "/healthz").status_code == 200  # the server is fine after all that


def test_starting_after_past_the_end_of_a_finished_run_is_an_empty_stream(mock):
    client = _client(mock.base_url)
    events = list(client.responses.create(model="m", input="hi", stream=True, background=True))
    assert list(client.responses.retrieve(events[0].response.id, stream=True,
                                          starting_after=events[-1].sequence_number)) == []


def test_runs_are_bounded_and_a_full_mock_answers_429():
    with sl.MockLLM(tokens=1000, itl=0.05) as small:
        small.app_.responses = Runs(max_runs=3, max_active=2)
        client = _client(small.base_url)
        jobs = [client.responses.create(model="m", input="hi", background=True) for _ in range(2)]
        with pytest.raises(openai.RateLimitError) as info:
            client.responses.create(model="m", input="hi", background=True)
        assert "at most 2 running" in info.value.body["message"]
        for job in jobs:
            client.responses.cancel(job.id)
        done = [client.responses.create(model="m", input="hi", background=True) for _ in range(2)]
        assert small.responses is small.app_.responses and len(small.responses) == 3  # the oldest run left
        assert small.responses.get(jobs[0].id) is None and small.responses.get(done[1].id) is not None
        for job in done:
            client.responses.cancel(job.id)
        assert json.loads(httpx.delete(f"{small.base_url}/responses/{done[1].id}").text)["deleted"] is True


def test_event_bytes_are_reserved_up_front_and_trued_up_at_the_end(mock):
    runs = mock.responses
    events = list(_client(mock.base_url).responses.create(model="m", input="hi", stream=True, background=True))
    run = runs.get(events[0].response.id)
    assert run.done and run.reserved == run.nbytes == sum(len(d) for _, d in run.frames)
    assert runs.nbytes == sum(r.reserved for r in runs)
    small = Runs(max_bytes=50_000)
    with sl.MockLLM(tokens=1000) as other:
        other.app_.responses = small
        with pytest.raises(openai.RateLimitError):  # 1000 tokens reserve ~200 kB: over the bound before it runs
            _client(other.base_url).responses.create(model="m", input="hi", background=True)
        assert len(small) == 0 and small.nbytes == 0
