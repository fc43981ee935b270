"""``streamlab.fixes.BackgroundRun``: a background Responses run followed across real cuts.

The mock serves the Responses API on a loopback socket; the client is the real openai SDK.
Figures per scenario: deltas received vs the uncut answer, duplicated events, model runs (the
mock's ``POST /v1/responses`` entries for the prompt: must stay 1 however often we re-attach).
"""

from __future__ import annotations

import uuid

import httpx
import openai
import pytest

import streamlab as sl
from streamlab.fixes import BackgroundRun, follow_response
from streamlab._text import generate

TOKENS = 30


@pytest.fixture(scope="module")
def mock():
    with sl.MockLLM(tokens=TOKENS, itl=0.01) as server:
        yield server


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key="unused", max_retries=0)


def _prompt() -> str:
    return f"report {uuid.uuid4().hex[:8]}"


def _model_runs(mock, prompt: str) -> int:
    return sum(1 for e in mock.journal if e.method == "POST" and e.path.endswith("/responses")
               and (e.body or {}).get("input") == prompt)


def _answer() -> str:
    return "".join(generate(TOKENS))


def test_sdk_alone_keeps_only_what_came_before_the_cut(mock):
    got = []
    with pytest.raises(httpx.RemoteProtocolError):
        for event in _client(mock.base_url_for("cut@12")).responses.create(
                model="m", input=_prompt(), stream=True, background=True):
            got.append(event)
    assert sum(e.type == "response.output_text.delta" for e in got) == 12  # of 30; max_retries does not apply


def test_follow_response_reattaches_after_each_cut_and_yields_each_event_once(mock):
    prompt = _prompt()
    run = BackgroundRun(_client(mock.base_url_for("cut@12")), model="m", input=prompt, max_resumes=3)
    events = list(run)
    sequence = [e.sequence_number for e in events]
    assert sequence == list(range(len(sequence)))  # no duplicate, no gap
    assert run.text == _answer() and len(run.deltas) == TOKENS  # 30 received of 30 expected
    assert run.resumes == 2 and run.status == "completed" and len(run.errors) == 2
    assert all(e.startswith("RemoteProtocolError") for e in run.errors)
    assert _model_runs(mock, prompt) == 1


def test_follow_response_reattaches_after_a_silent_end(mock):
    run = follow_response(_client(mock.base_url_for("silent@7", first=1)), model="m", input=_prompt())
    assert run.errors == ["ended without a terminal event"] and run.resumes == 1
    assert run.text == _answer()


def test_follow_response_gives_up_after_max_resumes_with_the_sdk_error(mock):
    run = BackgroundRun(_client(mock.base_url_for("cut@3")), model="m", input=_prompt(), max_resumes=2)
    with pytest.raises(httpx.RemoteProtocolError):
        list(run)
    assert run.resumes == 2 and len(run.deltas) == 9 and len(run.errors) == 3


def test_background_run_follows_an_existing_id_from_a_sequence_number(mock):
    client = _client(mock.base_url)
    job = client.responses.create(model="m", input=_prompt(), background=True)
    run = follow_response(client, id=job.id, starting_after=10)
    assert run.events > 0 and run.status == "completed"
    assert run.text == "".join(generate(TOKENS)[10 - 3:])  # seq 0..3 are the opening events: delta i is seq i + 4


def test_background_run_checks_its_settings():
    with pytest.raises(ValueError):
        BackgroundRun(None, max_resumes=-1, model="m", input="x")
    with pytest.raises(ValueError):
        BackgroundRun(None)
