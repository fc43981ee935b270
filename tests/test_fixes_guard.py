"""``streamlab.fixes.guard``: every silent truncation becomes an error (issue 12).

Real openai SDK (sync and async), raw SSE over httpx and LangChain's ChatOpenAI,
against the mock on a loopback socket; the faults fire at token indices.
"""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest

import streamlab as sl
from streamlab.fixes import IncompleteStream, LengthTruncation, UsageMismatch, guard

MESSAGES = [{"role": "user", "content": "Explain RFC 9110 in 3 bullets"}]


@pytest.fixture
def mock():
    with sl.time_scale(1.0), sl.MockLLM(tokens=20, ttft=0.0, itl=0.0) as server:
        yield server


def _sdk(mock, spec=None, **extra):
    client = openai.OpenAI(base_url=mock.base_url_for(spec) if spec else mock.base_url, api_key="unused",
                           max_retries=0)
    return client.chat.completions.create(model="m", messages=MESSAGES, stream=True, **extra)


def _drain(stream):
    return sum(1 for _ in stream)


def test_guard_lets_a_complete_sdk_stream_through_unchanged(mock):
    plain = [c.model_dump() for c in _sdk(mock)]
    guarded = [c.model_dump() for c in guard(_sdk(mock))]
    strip = [{k: v for k, v in c.items() if k not in ("id", "created")} for c in plain]
    assert strip == [{k: v for k, v in c.items() if k not in ("id", "created")} for c in guarded]


def test_guard_turns_a_silent_truncation_of_the_sdk_stream_into_an_error(mock):
    assert sum(1 for c in _sdk(mock, "silent@12") if c.choices[0].delta.content) == 12  # no error
    with pytest.raises(IncompleteStream, match="without a finish_reason") as info:
        _drain(guard(_sdk(mock, "silent@12")))
    assert info.value.reason == "no finish_reason" and info.value.tokens == 12


def test_guard_raises_length_truncation_unless_a_short_answer_was_asked_for(mock):
    with pytest.raises(LengthTruncation):
        _drain(guard(_sdk(mock, max_tokens=5)))
    assert _drain(guard(_sdk(mock, max_tokens=5), allow_length=True)) > 0


def test_guard_on_an_async_sdk_stream(mock):
    async def run(spec):
        client = openai.AsyncOpenAI(base_url=mock.base_url_for(spec), api_key="unused", max_retries=0)
        try:
            stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
            return [c async for c in guard(stream)]
        finally:
            await client.close()

    with pytest.raises(IncompleteStream):
        asyncio.run(run("silent@7"))


def test_guard_demands_done_on_raw_sse_text(mock):
    url = mock.base_url_for("nodone") + "/chat/completions"
    events = list(sl.sse_events(url))                              # finish_reason, no [DONE]
    assert events and not any("[DONE]" in e for e in events)
    with pytest.raises(IncompleteStream, match=r"\[DONE\]") as info:
        list(guard(sl.sse_events(url)))
    assert info.value.reason == "no [DONE]"
    assert list(guard(sl.sse_events(mock.base_url + "/chat/completions")))


def test_guard_compares_content_with_the_usage_count(mock):
    # framing@3 glues two events together: the SDK parses neither, so a token is lost without an error
    full = _sdk(mock, "framing@3", stream_options={"include_usage": True})
    with pytest.raises(UsageMismatch) as info:
        _drain(guard(full))
    assert info.value.usage_tokens == 20 and info.value.tokens < 20


def test_guard_passes_transport_errors_through_unchanged(mock):
    with pytest.raises(httpx.RemoteProtocolError):
        _drain(guard(_sdk(mock, "cut@5")))


def test_guard_on_langchain_chat_openai(mock):
    from langchain_openai import ChatOpenAI

    def model(spec):
        return ChatOpenAI(model="m", base_url=mock.base_url_for(spec) if spec else mock.base_url,
                          api_key="unused", max_retries=0)

    assert _drain(guard(model(None).stream("hi"))) > 0
    with pytest.raises(IncompleteStream):
        _drain(guard(model("silent@9").stream("hi")))


def test_guard_refuses_what_is_not_a_stream():
    with pytest.raises(TypeError, match="takes a stream"):
        guard(42)


def test_recorder_names_a_guarded_silent_truncation_truncation_detected(mock):
    plain = sl.record(lambda: _sdk(mock, "silent@12"), expected=20)
    guarded = sl.record(lambda: guard(_sdk(mock, "silent@12")), expected=20)
    length = sl.record(lambda: guard(_sdk(mock, max_tokens=5)), expected=20)
    assert plain.outcome == sl.Outcome.SILENT_TRUNCATION and plain.error is None
    assert guarded.outcome == sl.Outcome.TRUNCATION_DETECTED
    assert guarded.error_class == "streamlab.IncompleteStream" and guarded.tokens == 12
    assert length.outcome == sl.Outcome.TRUNCATED_BY_LENGTH and length.error_class == "streamlab.LengthTruncation"


# --------------------------------------------------------------------------- AutoGen and CrewAI (issue 12)

AUTOGEN_INFO = {"vision": False, "function_calling": True, "json_output": False, "family": "unknown",
                "structured_output": False}


def _autogen(mock, spec=None, **settings):
    sl.offline()
    from autogen_ext.models.openai import OpenAIChatCompletionClient

    return OpenAIChatCompletionClient(model="m", base_url=mock.base_url_for(spec) if spec else mock.base_url,
                                      api_key="unused", model_info=AUTOGEN_INFO, **settings)


def _autogen_create_stream(mock, spec=None, **settings):
    from autogen_core.models import UserMessage

    async def run():
        client = _autogen(mock, spec, **settings)
        try:
            return [x async for x in guard(client.create_stream([UserMessage(content="hi", source="u")]))]
        finally:
            await client.close()

    return asyncio.run(run())


def test_guard_on_autogen_create_stream_reads_the_create_results_finish_reason(mock):
    pytest.importorskip("autogen_ext.models.openai")
    items = _autogen_create_stream(mock)
    assert type(items[-1]).__name__ == "CreateResult" and items[-1].finish_reason == "stop"
    assert sum(isinstance(x, str) for x in items) == 20
    with pytest.raises(IncompleteStream, match="without a finish_reason") as info:
        _autogen_create_stream(mock, "silent@9")  # AutoGen itself says finish_reason="unknown", no error
    assert info.value.reason == "no finish_reason" and info.value.tokens == 9
    with pytest.raises(LengthTruncation) as info:
        _autogen_create_stream(mock, max_tokens=5)
    assert info.value.tokens == 5
    autogen_ok = asyncio.run(_allow_length(mock))
    assert autogen_ok == 6  # 5 tokens and the CreateResult


async def _allow_length(mock):
    from autogen_core.models import UserMessage

    client = _autogen(mock, max_tokens=5)
    try:
        return len([x async for x in guard(client.create_stream([UserMessage(content="hi", source="u")]),
                                           allow_length=True)])
    finally:
        await client.close()


def _run_stream(mock, spec=None, *, require_usage=False, **settings):
    from autogen_agentchat.agents import AssistantAgent

    async def run():
        client = _autogen(mock, spec, **settings)
        try:
            agent = AssistantAgent("a", model_client=client, model_client_stream=True)
            return [e async for e in guard(agent.run_stream(task="hi"), require_usage=require_usage)]
        finally:
            await client.close()

    return asyncio.run(run())


def test_guard_on_autogen_run_stream_sees_no_finish_reason_only_usage(mock):
    # Pins the documented limitation: AssistantAgent keeps the CreateResult to itself; no event carries
    # a finish_reason, so a silent truncation and a length cut pass a plain guard unnoticed.
    pytest.importorskip("autogen_agentchat")
    for spec, settings, chunks in (("silent@9", {}, 9), (None, {"max_tokens": 5}, 5)):
        events = _run_stream(mock, spec, **settings)  # no error
        assert type(events[-1]).__name__ == "TaskResult" and type(events[-2]).__name__ == "TextMessage"
        assert sum(type(e).__name__ == "ModelClientStreamingChunkEvent" for e in events) == chunks
        assert events[-2].models_usage.completion_tokens == 0  # no include_usage: AutoGen reports 0
        assert not any(hasattr(e, "finish_reason") for e in events)


def test_guard_on_autogen_run_stream_with_usage_catches_a_silent_truncation_not_a_length_cut(mock):
    pytest.importorskip("autogen_agentchat")
    usage = {"stream_options": {"include_usage": True}}
    complete = _run_stream(mock, require_usage=True, **usage)  # no error
    assert complete[-2].models_usage.completion_tokens == 20
    with pytest.raises(IncompleteStream, match="no usage report") as info:
        _run_stream(mock, "silent@9", require_usage=True, **usage)
    assert info.value.reason == "no usage" and info.value.tokens == 9
    cut = _run_stream(mock, require_usage=True, max_tokens=5, **usage)  # no error: usage matches
    assert cut[-2].models_usage.completion_tokens == 5


def _crew(mock, spec=None, *, max_tokens=None):
    sl.offline()
    crewai = pytest.importorskip("crewai")
    llm = crewai.LLM(model="gpt-4o-mini", base_url=mock.base_url_for(spec) if spec else mock.base_url,
                     api_key="unused", stream=True, max_tokens=max_tokens)
    agent = crewai.Agent(role="Analyst", goal="Report", backstory="An analyst.", llm=llm)
    task = crewai.Task(description="Write the report.", expected_output="A report.", agent=agent)
    return crewai.Crew(agents=[agent], tasks=[task], stream=True)


def test_guard_on_a_crewai_stream_judges_it_by_the_crews_usage(mock):
    complete = guard(_crew(mock).kickoff())
    assert sum(1 for c in complete if c.content) == 20  # no error
    assert complete.result.token_usage.completion_tokens == 20
    streaming = _crew(mock, "silent@9").kickoff()
    with pytest.raises(IncompleteStream, match="no LLM call reported usage") as info:
        _drain(guard(streaming))
    assert info.value.reason == "no usage" and info.value.tokens == 9
    assert streaming.result.token_usage.successful_requests == 0


def test_guard_on_a_crewai_stream_cannot_see_a_length_cut(mock):
    # Pins the documented limitation: StreamChunk has no finish_reason, and a length-capped answer
    # reports usage that matches what was streamed, so it looks complete.
    streaming = _crew(mock, max_tokens=5).kickoff()
    assert _drain(guard(streaming)) == 5
    assert streaming.result.token_usage.completion_tokens == 5
    from crewai.types.streaming import StreamChunk

    assert not any("finish" in field for field in StreamChunk.model_fields)
