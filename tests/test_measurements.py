"""Measurements that do not mislead (issue 10, findings 1-3).

1. The first openai request of a process spends ~0.3-0.9 s of wall clock building its client and
   request models before anything is sent; the recorder used to count that as TTFT, multiplied
   by 1/time_scale (00_start_here's clean stream showed 4.5 s for a 0.5 s mock; 27 s at 0.02).
   t0 is now the first request's send (``streamlab._recorder`` docstring).
2. An HTTP error status is never "complete": ``Outcome.HTTP_ERROR`` with ``run.status``/``run.body``;
   "no HTTP response at all" stays ``ERROR_BEFORE_STREAM``.
3. A programming error in the recorded code propagates; it is not a stream fault.
"""

import json
import subprocess
import sys
import textwrap

import httpx
import openai
import pytest

import streamlab as sl
from streamlab import hops
from streamlab.faults import Cut, RateLimited, ServerError, SlowHeaders, to_spec

MESSAGES = [{"role": "user", "content": "x"}]

FRESH_SDK = """
import json, sys
import openai
import streamlab as sl
with sl.time_scale({scale}), sl.MockLLM(tokens=10, ttft=0.5, itl=0.05) as mock:
    client = openai.OpenAI(base_url=mock.base_url, api_key="unused", max_retries=0)
    run = sl.record(lambda: client.chat.completions.create(model="m", messages=[{{"role": "user", "content": "x"}}],
                                                            stream=True))
    print(json.dumps({{"ttft": run.ttft, "outcome": str(run.outcome), "status": run.status,
                      "warmup_s": (run.t_start - run.t_call) / {scale}}}))
"""

FRESH_LANGCHAIN = """
import json
from langchain_openai import ChatOpenAI
import streamlab as sl
with sl.time_scale({scale}), sl.MockLLM(tokens=10, ttft=0.5, itl=0.05) as mock:
    llm = ChatOpenAI(model="streamlab-mock", base_url=mock.base_url, api_key="unused", max_retries=0)
    run = sl.record(lambda: llm.stream("hello"))
    print(json.dumps({{"ttft": run.ttft, "outcome": str(run.outcome), "status": run.status,
                      "warmup_s": (run.t_start - run.t_call) / {scale}}}))
"""


def _fresh(script: str, scale: float) -> dict:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script.format(scale=scale))],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _first_stream(script: str, scale: float, tries: int = 5) -> dict:
    """The first recorded stream of a fresh process, measured in up to ``tries`` fresh processes.

    The warm-up this pins is systematic: every fresh process has it (0.3-0.9 s of wall clock,
    i.e. 15-45 scenario seconds at 0.02). Scheduling noise on a loaded machine only ever *adds*
    delay (a 30 % margin at 0.02 is 3 ms of wall clock, and a busy 2-core box can lose that), so
    the smallest of a few fresh measurements (stopping at the first within the margin) is the honest estimate of the recorder's own error;
    a t0 taken too late would show as a TTFT below the margin in every process.
    """
    runs = []
    for _ in range(tries):
        runs.append(_fresh(script, scale))
        if runs[-1]["ttft"] == pytest.approx(0.5, rel=0.3):
            break
    return min(runs, key=lambda r: r["ttft"])


@pytest.mark.parametrize("scale", [1, 0.1, 0.02])
def test_first_recorded_ttft_is_the_streams_not_the_process_warmup(scale):
    """A fresh process, its first openai-SDK stream, MockLLM(ttft=0.5): TTFT within 30 % of 0.5 s."""
    got = _first_stream(FRESH_SDK, scale)
    assert got["outcome"] == "complete" and got["status"] == 200
    assert got["ttft"] == pytest.approx(0.5, rel=0.3), got


@pytest.mark.parametrize("scale", [1, 0.1])
def test_first_recorded_langchain_ttft_is_the_streams_not_the_process_warmup(scale):
    """The same for LangChain's ``ChatOpenAI.stream`` (its first stream in a fresh process). Not at 0.02:
    LangChain's own per-chunk work (callbacks, message conversion) is a few ms on a fresh process, at the
    level of the 3 ms margin there (0.58 s measured on an idle machine, up to 1.4 s at load 10)."""
    got = _first_stream(FRESH_LANGCHAIN, scale)
    assert got["outcome"] == "complete" and got["status"] == 200
    assert got["ttft"] == pytest.approx(0.5, rel=0.3), got


def test_a_retried_first_attempt_is_part_of_the_ttft():
    """t0 is the first attempt's send: a 429 answered, waited out (Retry-After 1 s) and retried counts."""
    with sl.time_scale(0.1), sl.MockLLM(tokens=5, ttft=0.5) as mock:
        limited, fine = mock.base_url_for(RateLimited(retry_after=1)), mock.base_url
        attempts = []

        class FirstAttemptLimited(httpx.HTTPTransport):
            def handle_request(self, request):
                attempts.append(request.url)
                if len(attempts) == 1:
                    request.url = httpx.URL(str(request.url).replace(fine, limited))
                return super().handle_request(request)

        client = openai.OpenAI(base_url=fine, api_key="unused", max_retries=1,
                               http_client=httpx.Client(transport=FirstAttemptLimited()))
        run = sl.record(lambda: client.chat.completions.create(model="m", messages=MESSAGES, stream=True))
        client.close()
    assert len(attempts) == 2 and run.outcome is sl.Outcome.COMPLETE and run.status == 200
    assert 1.4 <= run.ttft <= 2.5, run.ttft  # 1 s Retry-After + 0.5 s TTFT, from the first send


@pytest.mark.parametrize("fault, status, error", [(RateLimited(retry_after=1), 429, "openai.RateLimitError"),
                                                  (ServerError(), 500, "openai.InternalServerError")])
def test_an_sdk_status_error_is_an_http_error_with_its_status(fault, status, error):
    with sl.MockLLM(tokens=5) as mock:
        client = openai.OpenAI(base_url=mock.base_url_for(fault), api_key="unused", max_retries=0)
        run = sl.record(lambda: client.chat.completions.create(model="m", messages=MESSAGES, stream=True))
        raw = sl.record(lambda: sl.sse_events(mock.base_url_for(fault) + "/chat/completions"))
    assert run.outcome is sl.Outcome.HTTP_ERROR and str(run.outcome) == "http error"
    assert run.status == status and run.error_class == error and run.body
    assert raw.outcome is sl.Outcome.HTTP_ERROR and raw.status == status and raw.error_class == "httpx.HTTPStatusError"
    assert f"status {status}" in repr(run)


def test_a_bad_request_is_an_http_error_too():
    with sl.MockLLM(tokens=5) as mock:
        client = openai.OpenAI(base_url=mock.base_url, api_key="unused", max_retries=0)
        run = sl.record(lambda: client.chat.completions.create(model="m", messages=[], stream=True))
    assert run.outcome is sl.Outcome.HTTP_ERROR and run.status == 400 and "error" in run.body


def test_a_gateway_deadline_in_front_of_slow_headers_is_an_http_error_not_complete():
    """``read_stream`` and the recorder through an API gateway's 29 s deadline in front of a model whose
    headers take 60 s: a 504 with the gateway's body (``read_stream`` used to say "complete")."""
    body = sl.chat_request()
    with sl.time_scale(0.02), sl.MockLLM(tokens=5) as mock, \
            sl.Proxy(upstream=mock.url, faults=[hops.Deadline(seconds=29)]) as gateway:
        url = gateway.url + "/s/" + to_spec(SlowHeaders(seconds=60)) + "/v1/chat/completions"
        result = sl.read_stream(url, method="POST", json=body)
        run = sl.record(sl.HTTPStream(url, method="POST", json=body, unit="event"))
        sdk = sl.record(lambda: openai.OpenAI(base_url=url.rsplit("/chat/completions", 1)[0], api_key="unused",
                                              max_retries=0).chat.completions.create(
            model="m", messages=MESSAGES, stream=True))
    assert result.status == 504 and result.outcome == "http error" and b"timed out" in result.body
    assert run.outcome is sl.Outcome.HTTP_ERROR and run.status == 504 and "timed out" in run.body
    assert sdk.outcome is sl.Outcome.HTTP_ERROR and sdk.status == 504 and sdk.error_class == "openai.InternalServerError"


def test_slow_headers_behind_the_client_timeout_stay_a_stall():
    with sl.time_scale(0.05), sl.MockLLM(tokens=5) as mock:
        client = openai.OpenAI(base_url=mock.base_url_for(SlowHeaders(seconds=8)), api_key="unused",
                               max_retries=0, timeout=3 * 0.05)
        run = sl.record(lambda: client.chat.completions.create(model="m", messages=MESSAGES, stream=True))
    assert run.outcome is sl.Outcome.STALLED and run.status is None


def test_no_http_response_at_all_is_an_error_before_stream():
    client = openai.OpenAI(base_url="http://127.0.0.1:9/v1", api_key="unused", max_retries=0)
    run = sl.record(lambda: client.chat.completions.create(model="m", messages=MESSAGES, stream=True))
    assert run.outcome is sl.Outcome.ERROR_BEFORE_STREAM and run.status is None
    assert run.error_class == "openai.APIConnectionError"


def test_a_cut_keeps_its_outcome_and_the_status_of_its_headers():
    with sl.MockLLM(tokens=20) as mock:
        client = openai.OpenAI(base_url=mock.base_url_for(Cut(at=5)), api_key="unused", max_retries=0)
        run = sl.record(lambda: client.chat.completions.create(model="m", messages=MESSAGES, stream=True))
    assert run.outcome is sl.Outcome.CUT_MID_STREAM and run.status == 200


@pytest.mark.parametrize("bug", [
    lambda: undefined_name,  # noqa: F821 - the trainee's typo
    lambda: len(5),
    lambda: None.content,
    lambda: {}["missing"],
    lambda: __import__("no_such_module_anywhere"),
])
def test_a_programming_error_is_not_a_stream_fault(bug):
    with pytest.raises((NameError, TypeError, AttributeError, KeyError, ImportError)):
        sl.record(bug)


def test_a_programming_error_mid_stream_propagates_sync_and_async():
    import asyncio

    def stream():
        yield 'data: {"choices":[{"delta":{"content":"a"},"finish_reason":null}]}'
        assert False, "a bug in the reader"

    with pytest.raises(AssertionError):
        sl.record(stream())

    async def astream():
        yield 'data: {"choices":[{"delta":{"content":"a"},"finish_reason":null}]}'
        raise TypeError("a bug")

    with pytest.raises(TypeError):
        asyncio.run(sl.arecord(astream()))


def test_an_error_raised_from_a_transport_error_is_recorded():
    """CrewAI turns an openai NotFoundError into ``ValueError(...) from e``: still a stream fault, with its status."""
    request = httpx.Request("POST", "http://127.0.0.1/v1/chat/completions")
    response = httpx.Response(404, request=request, text='{"error": "no such model"}')

    def crewai_like():
        try:
            raise openai.NotFoundError("not found", response=response, body=None)
        except openai.NotFoundError as e:
            raise ValueError("Model m not found") from e

    run = sl.record(crewai_like)
    assert run.outcome is sl.Outcome.HTTP_ERROR and run.status == 404 and "no such model" in run.body


def test_error_text_is_never_an_empty_message():
    run = sl.record(lambda: (_ for _ in ()).throw(httpx.ReadTimeout("")))
    assert run.outcome is sl.Outcome.STALLED
    assert run.error_text == "httpx.ReadTimeout: (no message)"
