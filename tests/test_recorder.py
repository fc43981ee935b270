"""The recorder names every outcome from what a client really received."""

import asyncio
import re
import time
from pathlib import Path

import httpx
import openai
import pytest

import streamlab as sl
from streamlab.faults import Cut, Stall

MESSAGES = [{"role": "user", "content": "x"}]


def sse(tokens, finish="stop", done=True):
    for t in tokens:
        yield f'data: {{"choices":[{{"delta":{{"content":"{t}"}},"finish_reason":null}}]}}'
    if finish:
        yield f'data: {{"choices":[{{"delta":{{}},"finish_reason":"{finish}"}}]}}'
    if done:
        yield "data: [DONE]"


def test_outcomes_of_synthetic_streams():
    assert sl.record(sse(["a", " b"])).outcome is sl.Outcome.COMPLETE
    assert sl.record(sse(["a"], finish="length")).outcome is sl.Outcome.TRUNCATED_BY_LENGTH
    assert sl.record(sse(["a"], finish=None, done=False)).outcome is sl.Outcome.SILENT_TRUNCATION

    def broken():
        yield from sse(["a"], finish=None, done=False)
        raise ConnectionResetError("peer reset")

    run = sl.record(broken())
    assert run.outcome is sl.Outcome.CUT_MID_STREAM and run.error_class == "builtins.ConnectionResetError"

    def fails_first():  # no HTTP response at all (a RuntimeError would be a bug: it propagates)
        raise httpx.ConnectError("connection refused")

    assert sl.record(fails_first).outcome is sl.Outcome.ERROR_BEFORE_STREAM

    def times_out():
        yield from sse(["a"], finish=None, done=False)
        raise httpx.ReadTimeout("slow")

    assert sl.record(times_out()).outcome is sl.Outcome.STALLED


def test_buffered_stream_is_named_buffered():
    def held_back():
        time.sleep(0.2)  # nothing for a long while, then everything at once
        yield from sse([f" w{i}" for i in range(10)])

    run = sl.record(held_back(), itl=0.02)
    assert run.outcome is sl.Outcome.BUFFERED and run.tokens == 10
    assert sl.record(held_back()).outcome is sl.Outcome.COMPLETE  # without the hint nothing says it was held

    def steady():
        for item in sse([f" w{i}" for i in range(10)]):
            time.sleep(0.02)
            yield item

    assert sl.record(steady(), itl=0.02).outcome is sl.Outcome.COMPLETE


def test_abort_after_chunks_and_seconds_closes_the_stream():
    closed = []

    class Stream:
        def __iter__(self):
            yield from sse([f" w{i}" for i in range(50)])

        def close(self):
            closed.append(True)

    run = sl.record(Stream(), abort_after=5)
    assert run.outcome is sl.Outcome.CLIENT_ABORTED and run.chunks == 5 and closed

    def slow():
        for item in sse([f" w{i}" for i in range(50)]):
            time.sleep(0.01)
            yield item

    run = sl.record(slow(), abort_after_s=0.1)
    assert run.outcome is sl.Outcome.CLIENT_ABORTED and 1 <= run.chunks < 50


def test_arecord_async_streams_awaitables_and_values():
    async def agen():
        for item in sse(["a", " b", " c"]):
            yield item

    async def main():
        run = await sl.arecord(agen(), expected=3)
        assert run.outcome is sl.Outcome.COMPLETE and run.tokens == 3

        async def value():
            return "just text, no stream"

        assert (await sl.arecord(value)).outcome is sl.Outcome.COMPLETE

        async def boom():
            raise ConnectionResetError("reset before the headers")

        assert (await sl.arecord(boom)).outcome is sl.Outcome.ERROR_BEFORE_STREAM

    asyncio.run(main())


def test_real_async_sdk_stream_and_non_streamed_completion():
    with sl.MockLLM(tokens=12) as mock:
        async def main():
            client = openai.AsyncOpenAI(base_url=mock.base_url_for(Cut(at=4)), api_key="unused", max_retries=0)
            run = await sl.arecord(lambda: client.chat.completions.create(model="m", messages=MESSAGES,
                                                                          stream=True), expected=12)
            await client.close()
            return run

        run = asyncio.run(main())
        assert run.outcome is sl.Outcome.CUT_MID_STREAM and run.tokens == 4
        client = openai.OpenAI(base_url=mock.base_url, api_key="unused")
        whole = sl.record(lambda: client.chat.completions.create(model="m", messages=MESSAGES), expected=12)
        assert whole.outcome is sl.Outcome.COMPLETE and whole.tokens == 12 and whole.chunks == 1


def test_figures_are_in_scenario_seconds():
    with sl.time_scale(0.01), sl.MockLLM(tokens=5, ttft=30, itl=10) as mock:
        client = openai.OpenAI(base_url=mock.base_url, api_key="unused")
        run = sl.record(lambda: client.chat.completions.create(model="m", messages=MESSAGES, stream=True))
    assert 28 < run.ttft < 60 and 8 < run.itl_p50 < 15 and run.e2e > 65
    assert run.figures()["outcome"] == "complete"


def test_table_sanitizes_to_the_same_text(tmp_path):
    cfg = (Path(__file__).resolve().parent.parent / "tools" / "sanitize.cfg").read_text()
    pattern = re.search(r"regex: (.+)\nreplace: (.+)", cfg)
    regex, replace = pattern.group(1), pattern.group(2).replace("\\1", r"\1")
    fast, slow = sl.Run(label="a"), sl.Run(label="a")
    for run, gap in ((fast, 0.001), (slow, 0.5)):
        run.t_start, run.content_arrivals, run.t_end = 0.0, [gap, 2 * gap, 30 * gap], 31 * gap
        run.texts, run.terminal, run.outcome = ["x", " y", " z"], True, sl.Outcome.COMPLETE
    a, b = sl.table([fast]), sl.table([slow])
    assert a != b
    assert re.sub(regex, replace, a) == re.sub(regex, replace, b)


def test_compare_and_plots_return_figures():
    runs = [sl.record(sse(["a", " b"])), sl.record(sse(["a"], finish=None, done=False))]
    comparison = sl.compare(broken=runs[1], fixed=runs[0])
    assert "silent truncation" in repr(comparison) and comparison["fixed"] is runs[0]
    assert comparison.figure is not None
    log = sl.HopLog("model")
    log.add("out", 10)
    assert sl.plot_hops(runs[0], [log]) is not None


def test_stalled_stream_against_the_mock_marks_the_silence():
    with sl.time_scale(0.01), sl.MockLLM(tokens=20, itl=1) as mock:
        client = openai.OpenAI(base_url=mock.base_url_for(Stall(at=5, seconds=50)), api_key="unused",
                               max_retries=0, timeout=2.0)
        run = sl.record(lambda: client.chat.completions.create(model="m", messages=MESSAGES, stream=True))
        figure = sl.plot_runs(run)
    assert run.outcome is sl.Outcome.COMPLETE and max(run.itls) > 40
    assert figure is not None


@pytest.mark.parametrize("kind", ["AIMessageChunk", "TaskResult"])
def test_framework_chunks_are_understood(kind):
    if kind == "AIMessageChunk":
        from langchain_core.messages import AIMessageChunk

        info = sl._recorder.inspect_chunk(AIMessageChunk(content="hi", response_metadata={"finish_reason": "stop"}))
        assert info.text == "hi" and info.terminal
    else:
        from autogen_agentchat.base import TaskResult

        info = sl._recorder.inspect_chunk(TaskResult(messages=[], stop_reason=None))
        assert info.terminal


def test_autogen_task_echo_is_not_a_received_chunk():
    """AgentChat's run_stream echoes the caller's task first; a failure right after it is an error
    before the stream, not a cut (found while writing 01_autogen)."""
    from autogen_agentchat.messages import TextMessage

    def stream():
        yield TextMessage(source="user", content="the task")
        raise ConnectionError("model unreachable")

    run = sl.record(stream())
    assert run.items == 0 and run.outcome is sl.Outcome.ERROR_BEFORE_STREAM


def test_tables_are_plain_text_for_terminals_and_html_for_jupyterlab():
    """Issue 10: wide tables wrapped at 1400 px in JupyterLab; text/plain (nbval) must stay the same text."""
    runs = [sl.record(sse(["a", " b"]), expected=2, label="a rather long run label · SDK through the proxy")]
    text = sl.table(runs)
    assert isinstance(text, str) and repr(text) == str(text) and "\n" in text
    html = text._repr_html_()
    assert html.startswith("<table>") and html.count("<tr>") == 2 and "a rather long run label" in html
    assert "white-space:nowrap" in html
    assert text._repr_markdown_().splitlines()[1].startswith("|---|---|")
    comparison = sl.compare(broken=runs[0], fixed=sl.record(sse(["c"]), expected=2), plot=False)
    assert repr(comparison) == str(comparison.table) and comparison._repr_html_().count("<tr>") == 3


def test_plots_draw_the_first_token_wait_and_a_mid_stream_silence_differently():
    def stalled():
        yield from list(sse([" w0", " w1"], finish=None, done=False))
        time.sleep(0.3)
        yield from sse([" w2", " w3"])

    def slow_start():
        time.sleep(0.3)
        yield from sse([f" w{i}" for i in range(4)])

    fig = sl.plot_runs(sl.record(slow_start()), sl.record(stalled()))
    labels = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    assert labels == ["waiting for first token", "silence mid-stream"]
    texts = [t.get_text() for t in fig.axes[1].texts]
    assert "silence" in texts and "silence" not in [t.get_text() for t in fig.axes[0].texts]


def test_an_error_label_stays_inside_its_panel():
    """01 section 1: a label right-aligned at x = 0 ran off the left edge over the y axis."""
    import openai

    client = openai.OpenAI(base_url="http://127.0.0.1:9/v1", api_key="unused", max_retries=0)
    run = sl.record(lambda: client.chat.completions.create(model="m", messages=MESSAGES, stream=True),
                    label="nobody listening · SDK")
    fig = sl.plot_runs(run)
    fig.canvas.draw()
    ax = fig.axes[0]
    note = next(t for t in ax.texts if "APIConnectionError" in t.get_text())
    assert note.get_window_extent().x0 >= ax.get_window_extent().x0
