"""The AutoGen helpers of notebooks/01_autogen (streamlab.frameworks.autogen): what they report is what the
real AutoGen 0.7.5 did against the mock, and token counting never reaches tiktoken."""

import asyncio
import time

import pytest

import streamlab as sl
from streamlab.faults import Cut, SilentEnd
from streamlab.frameworks import autogen as slag

sl.offline()
pytest.importorskip("autogen_agentchat")

from autogen_agentchat.agents import AssistantAgent  # noqa: E402
from autogen_core.model_context import TokenLimitedChatCompletionContext  # noqa: E402
from autogen_core.models import UserMessage  # noqa: E402
from autogen_ext.models.openai import OpenAIChatCompletionClient  # noqa: E402

INFO = {"vision": False, "function_calling": True, "json_output": False, "family": "unknown",
        "structured_output": False}


def client(base_url, **settings):
    return OpenAIChatCompletionClient(model="streamlab-mock", base_url=base_url, api_key="unused", model_info=INFO,
                                      **settings)


def test_url_carries_faults_and_options_through_any_server():
    with sl.MockLLM(tokens=5) as mock:
        assert slag.url(mock) == mock.url + "/v1"
        assert slag.url(mock, Cut(at=3), itl=0.5) == mock.url + "/s/cut@3,itl=0.5/v1"


def test_finish_reasons_and_model_requests_see_what_agentchat_hides():
    async def main(mock):
        results = {}
        for name, url, extra in (("length", slag.url(mock), {"max_tokens": 5}),
                                 ("silent", slag.url(mock, SilentEnd(at=4)), {})):
            c = client(url, **extra)
            agent = AssistantAgent("a", model_client=c, model_client_stream=True)
            with slag.finish_reasons() as calls, slag.model_requests(mock) as made:
                result = await agent.run(task="hello")
            await c.close()
            results[name] = (calls.reasons, len(made), made[0].stream, len(result.messages[-1].content.split()))
        return results

    with sl.MockLLM(tokens=12) as mock:
        results = asyncio.run(main(mock))
    assert results["length"] == (["length"], 1, True, 5)
    assert results["silent"] == (["unknown"], 1, True, 4)


def test_word_counter_lets_the_token_limited_context_trim_without_tiktoken():
    counter = slag.WordCounter(context_window=100)
    messages = [UserMessage(content="one two three", source="u"), UserMessage(content="four five", source="u")]
    assert counter.count_tokens(messages) == 5 and counter.remaining_tokens(messages) == 95
    messages.append(UserMessage(content="six", source="u"))
    context = TokenLimitedChatCompletionContext(counter, token_limit=4, initial_messages=messages)
    kept = asyncio.run(context.get_messages())
    assert [m.content for m in kept] == ["one two three", "six"]  # AutoGen drops from the middle
    assert slag.tiktoken_encodings_loaded() == []


def test_refuse_tiktoken_shows_what_the_stock_client_would_download():
    c = client("http://127.0.0.1:9/v1")
    with slag.refuse_tiktoken() as asked, slag.capture_logs("autogen_core.trace") as logged:
        with pytest.raises(slag.TiktokenRefused):
            c.count_tokens([UserMessage(content="hi", source="u")])
    assert asked == ["encoding_for_model('streamlab-mock')", "get_encoding('cl100k_base')"]
    assert [r.getMessage() for r in logged] == ["Model streamlab-mock not found. Using cl100k_base encoding."]
    import tiktoken

    assert tiktoken.get_encoding.__module__.startswith("tiktoken")  # restored
    asyncio.run(c.close())


def test_loop_lag_sees_a_blocked_loop_and_not_a_threaded_one():
    async def main(block):
        async with slag.LoopLag(every=0.01) as lag:
            await asyncio.sleep(0.02)
            if block:
                slag.busy(0.3)
            else:
                await asyncio.to_thread(slag.busy, 0.3)
            await asyncio.sleep(0.02)
        return lag

    assert asyncio.run(main(True)).max > 0.2
    assert asyncio.run(main(False)).max < 0.15


def test_request_log_records_the_metadata_of_each_request():
    async def main(mock):
        log = slag.RequestLog()
        c = client(slag.url(mock), max_tokens=7, http_client=log.http_client())
        await AssistantAgent("a", model_client=c, model_client_stream=True).run(task="hi")
        await c.close()
        return log

    with sl.MockLLM(tokens=3) as mock:
        log = asyncio.run(main(mock))
    [row] = log.rows
    assert (row["model"], row["max_tokens"], row["stream"], row["status"]) == ("streamlab-mock", 7, True, 200)
    assert "streamlab-mock" in log.table()


def test_sdk_backoff_is_scaled_once():
    from openai._base_client import BaseClient

    slag.sdk_backoff_in_scenario_time()
    first = BaseClient._calculate_retry_timeout
    slag.sdk_backoff_in_scenario_time()
    assert BaseClient._calculate_retry_timeout is first  # patched once, not wrapped twice


def test_busy_takes_scenario_seconds():
    with sl.time_scale(0.5):
        start = time.perf_counter()
        slag.busy(0.1)
        assert 0.04 < time.perf_counter() - start < 0.2
