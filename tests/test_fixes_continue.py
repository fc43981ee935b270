"""``streamlab.fixes.continue_stream``: after a mid-stream cut, ask for the rest, not for it all again.

Real loopback sockets, the real openai SDK, the mock's continue convention (a trailing assistant
message: the mock sends its answer after the words the prefix has). Counted per scenario: tokens
received vs the uncut answer's, duplicated tokens (received twice), requests to the model.
"""

from __future__ import annotations

import httpx
import openai
import pytest

import streamlab as sl
from streamlab import faults
from streamlab._text import generate
from streamlab.fixes import ContinuedStream, continue_response, continue_stream

TOKENS = 30
MESSAGES = [{"role": "user", "content": "Summarise the incident"}]


@pytest.fixture(scope="module")
def mock():
    with sl.MockLLM(tokens=TOKENS, itl=0.005) as server:
        yield server


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key="unused", max_retries=0)


def _uncut() -> list[str]:
    return generate(TOKENS)


def _duplicates(received: list[str]) -> int:
    """Tokens shown more than once: what arrived beyond the uncut answer, given it is a prefix-cover of it."""
    return len(received) - len(_uncut())


def test_plain_retry_after_a_cut_shows_the_first_tokens_twice(mock):
    received: list[str] = []
    client = _client(mock.base_url)
    with mock.script(faults.Cut(at=12), None):
        for attempt in range(2):
            try:
                for chunk in client.chat.completions.create(model="m", messages=MESSAGES, stream=True):
                    if chunk.choices and chunk.choices[0].delta.content:
                        received.append(chunk.choices[0].delta.content)
                break
            except httpx.RemoteProtocolError:  # the SDK does not retry a started stream; we do, naively
                continue
    assert "".join(received[12:]) == "".join(_uncut())
    assert _duplicates(received) == 12  # 42 tokens shown for a 30-token answer


def test_continue_stream_after_a_cut_joins_to_the_uncut_answer_with_no_duplicates(mock):
    before = len(mock.journal.chat())
    with mock.script(faults.Cut(at=12), None):
        answer = continue_stream(_client(mock.base_url), model="m", messages=MESSAGES)
    assert answer.pieces == _uncut() and answer.text == "".join(_uncut())
    assert _duplicates(answer.pieces) == 0 and answer.received_per_attempt == [12, 18]
    assert answer.attempts == 2 and answer.finish_reason == "stop" and answer.cuts[0].startswith("RemoteProtocolError")
    first, second = mock.journal.chat()[before:]
    assert second.body["messages"][-1] == {"role": "assistant", "content": "".join(_uncut()[:12])}
    assert second.tokens_planned == TOKENS - 12  # the model generated only the rest


def test_continue_stream_survives_a_cut_on_every_connection(mock):
    answer = continue_stream(_client(mock.base_url_for("cut@12")), model="m", messages=MESSAGES, max_attempts=4)
    assert answer.received_per_attempt == [12, 12, 6] and answer.pieces == _uncut()


def test_continue_stream_continues_after_a_silent_end(mock):
    with mock.script("silent@7", None):
        answer = continue_stream(_client(mock.base_url), model="m", messages=MESSAGES)
    assert answer.cuts == ["ended without finish_reason"] and answer.pieces == _uncut()


def test_continue_stream_gives_up_after_max_attempts_with_the_sdk_error(mock):
    answer = ContinuedStream(_client(mock.base_url_for("cut@4")), model="m", messages=MESSAGES, max_attempts=2)
    with pytest.raises(httpx.RemoteProtocolError):
        list(answer)
    assert answer.pieces == _uncut()[:8] and answer.attempts == 2


def test_continue_response_uses_starting_after_and_runs_the_model_once(mock):
    run = continue_response(_client(mock.base_url_for("cut@10")), model="m", input="incident 42")
    # 10 + 10 + 10 deltas; the third cut lands right before the closing events, so a fourth
    # connection brings only those (response.completed): 3 resumes, nothing sent twice
    assert run.deltas == _uncut() and run.resumes == 3
    assert sum(1 for e in mock.journal if e.method == "POST" and (e.body or {}).get("input") == "incident 42") == 1


def test_continue_stream_checks_its_settings():
    with pytest.raises(ValueError):
        ContinuedStream(None, model="m", messages=MESSAGES, max_attempts=0)
