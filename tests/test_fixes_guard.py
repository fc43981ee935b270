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
from streamlab.fixes import IncompleteStream, LengthTruncation, UsageMismatch, guard, guard_model_client

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
    # a finish_reason, so a silent truncation and a length cut pass a plain guard unnoticed
    # (guard_model_client, below, reads it on the model client).
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


def _guarded_agent_run(mock, spec=None, *, stream=True, team=False, **settings):
    """``AssistantAgent(model_client=guard_model_client(client))``: what the caller of run_stream gets."""
    from autogen_agentchat.agents import AssistantAgent

    async def run():
        client = _autogen(mock, spec, **settings)
        agent = AssistantAgent("a", model_client=guard_model_client(client), model_client_stream=stream)
        source = agent
        if team:
            from autogen_agentchat.conditions import MaxMessageTermination
            from autogen_agentchat.teams import RoundRobinGroupChat

            source = RoundRobinGroupChat([agent], termination_condition=MaxMessageTermination(2))
        events = []
        try:
            async for event in source.run_stream(task="hi"):
                events.append(event)
            return events, None, await agent.model_context.get_messages()
        except Exception as exc:  # noqa: BLE001 - the test asserts the class
            return events, exc, await agent.model_context.get_messages()
        finally:
            await client.close()

    return asyncio.run(run())


def _chunk_events(events):
    return sum(type(e).__name__ == "ModelClientStreamingChunkEvent" for e in events)


def test_guard_model_client_raises_a_length_cut_out_of_autogen_run_stream_unchanged(mock):
    pytest.importorskip("autogen_agentchat")
    events, error, context = _guarded_agent_run(mock, max_tokens=12)
    assert type(error) is LengthTruncation and error.reason == "length" and error.tokens == 12
    assert _chunk_events(events) == 12 and not any(type(e).__name__ == "TaskResult" for e in events)
    assert [type(m).__name__ for m in context] == ["UserMessage"]  # the short answer is not the agent's reply
    events, error, _ = _guarded_agent_run(mock, "silent@12")
    assert type(error) is IncompleteStream and error.reason == "no finish_reason" and _chunk_events(events) == 12
    events, error, context = _guarded_agent_run(mock)  # negative control: a complete answer passes
    assert error is None and type(events[-1]).__name__ == "TaskResult" and _chunk_events(events) == 20
    assert [type(m).__name__ for m in context] == ["UserMessage", "AssistantMessage"]


def test_guard_model_client_judges_a_non_streamed_create_and_lets_allowed_length_pass(mock):
    pytest.importorskip("autogen_agentchat")
    _, error, _ = _guarded_agent_run(mock, stream=False, max_tokens=12)
    assert type(error) is LengthTruncation
    _, error, _ = _guarded_agent_run(mock, stream=False)
    assert error is None

    async def run_whole():  # agent.run(), not run_stream: the same exception, unchanged
        from autogen_agentchat.agents import AssistantAgent

        client = _autogen(mock, max_tokens=12)
        try:
            await AssistantAgent("a", model_client=guard_model_client(client), model_client_stream=True).run(task="hi")
        finally:
            await client.close()

    with pytest.raises(LengthTruncation):
        asyncio.run(run_whole())

    async def allowed():
        from autogen_core.models import UserMessage

        client = guard_model_client(_autogen(mock, max_tokens=5), allow_length=True)
        try:
            return [x async for x in client.create_stream([UserMessage(content="hi", source="u")])]
        finally:
            await client.close()

    items = asyncio.run(allowed())
    assert len(items) == 6 and items[-1].finish_reason == "length"


def test_guard_model_client_in_an_autogen_team_arrives_as_a_runtime_error_naming_it(mock):
    # Pins AgentChat's behaviour: a group chat re-raises an agent's error as RuntimeError(str(error)).
    pytest.importorskip("autogen_agentchat")
    import logging

    logging.getLogger("autogen_core").disabled = True  # the runtime logs the agent's traceback at ERROR
    try:
        events, error, _ = _guarded_agent_run(mock, team=True, max_tokens=12)
    finally:
        logging.getLogger("autogen_core").disabled = False
    assert type(error) is RuntimeError and str(error).startswith("LengthTruncation: the answer was cut")
    assert _chunk_events(events) == 12


def test_guard_model_client_refuses_what_is_not_a_model_client():
    with pytest.raises(TypeError, match="takes an AutoGen ChatCompletionClient"):
        guard_model_client(object())


def _crew(mock, spec=None, *, max_tokens=None):
    sl.offline()
    crewai = pytest.importorskip("crewai")
    llm = crewai.LLM(model="gpt-4o-mini", base_url=mock.base_url_for(spec) if spec else mock.base_url,
                     api_key="unused", stream=True, max_tokens=max_tokens)
    agent = crewai.Agent(role="Analyst", goal="Report", backstory="An analyst.", llm=llm)
    task = crewai.Task(description="Write the report.", expected_output="A report.", agent=agent)
    return crewai.Crew(agents=[agent], tasks=[task], stream=True)


def test_guard_on_a_crewai_stream_judges_it_by_its_llm_calls_finish_reason(mock):
    complete = guard(_crew(mock).kickoff())  # negative control: a complete answer passes
    assert sum(1 for c in complete if c.content) == 20
    assert complete.result.token_usage.completion_tokens == 20
    streaming = _crew(mock, "silent@12").kickoff()
    with pytest.raises(IncompleteStream, match="without a finish_reason") as info:
        _drain(guard(streaming))
    assert type(info.value) is IncompleteStream and info.value.reason == "no finish_reason"
    assert info.value.tokens == 12 and streaming.result.token_usage.successful_requests == 0


def test_guard_on_a_crewai_stream_raises_a_length_cut_from_the_llm_call_event(mock):
    streaming = _crew(mock, max_tokens=12).kickoff()
    with pytest.raises(LengthTruncation, match="calls ended \\['length'\\]") as info:
        _drain(guard(streaming))
    assert info.value.tokens == 12 and info.value.finish == "length"
    assert streaming.result.token_usage.completion_tokens == 12  # the usage alone matches: it could not tell
    assert _drain(guard(_crew(mock, max_tokens=12).kickoff(), allow_length=True)) == 12
    from crewai.types.streaming import StreamChunk

    assert not any("finish" in field for field in StreamChunk.model_fields)  # the chunks still carry none


def test_guard_on_concurrent_crewai_streams_counts_each_streams_own_calls():
    import threading

    outcome, started = {}, []

    def run(name, max_tokens):
        streaming = _crew(slow, max_tokens=max_tokens).kickoff()
        try:
            for n, _ in enumerate(guard(streaming)):
                if n == 0:
                    started.append((name, len(outcome)))  # both streams run at once: neither had ended
            outcome[name] = n + 1
        except IncompleteStream as exc:
            outcome[name] = type(exc).__name__

    with sl.time_scale(1.0), sl.MockLLM(tokens=20, ttft=0.0, itl=0.05) as slow:
        threads = [threading.Thread(target=run, args=args) for args in (("full", None), ("cut", 12))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert outcome == {"full": 20, "cut": "LengthTruncation"}
    assert sorted(started) == [("cut", 0), ("full", 0)]


def test_guard_on_an_async_crewai_stream(mock):
    async def run(max_tokens):
        streaming = await _crew(mock, max_tokens=max_tokens).kickoff_async()
        return len([c async for c in guard(streaming)])

    assert asyncio.run(run(None)) == 20
    with pytest.raises(LengthTruncation):
        asyncio.run(run(12))
