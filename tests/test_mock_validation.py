"""Bad input to the mock is a clear 4xx (wire) or SpecError (Python), never a 500, a hang or a traceback.

Issue 10: an audit of 209 bad inputs to ``streamlab mock`` found 27 plain-text 500s, 29 tracebacks
and a spec (``tokens=1000000000000``) that froze the server while it grew by 1.2 GB. The fix is one
validation layer: a schema for the body (``streamlab/_validate.py``) and limits for the spec grammar
(``streamlab/_spec.py``). These tests pin it over a real loopback socket; the last one replays a
compact version of ``tools/audit_mock.py`` and reads uvicorn's error log.
"""

import logging
import math
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import httpx
import pytest

import streamlab as sl
from streamlab import _text, faults
from streamlab._mock_journal import Journal
from streamlab.faults import Cut, SpecError, Stall

ROOT = Path(__file__).resolve().parent.parent
GOOD = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}


@pytest.fixture(scope="module")
def mock():
    with sl.MockLLM(tokens=8) as server:
        yield server


@pytest.fixture
def client(mock):
    with httpx.Client(base_url=mock.url, timeout=5.0) as h:
        yield h


@pytest.fixture
def error_log():
    """Records uvicorn and the mock log at ERROR (an 'Exception in ASGI application' is one)."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            if record.levelno >= logging.ERROR or record.exc_info:
                records.append(record)

    handler = Keep(logging.DEBUG)
    loggers = [logging.getLogger(name) for name in ("uvicorn.error", "uvicorn", "streamlab.mock")]
    for logger in loggers:
        logger.addHandler(handler)
    yield records
    for logger in loggers:
        logger.removeHandler(handler)


def assert_json_400(response, code=None, param=None):
    assert response.status_code == 400, response.text[:300]
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    if code:
        assert error["code"] == code, error
    if param:
        assert error["param"] == param, error
    return error


def still_serves(client):
    r = client.post("/v1/chat/completions", json={**GOOD, "stream": True})
    return r.status_code == 200 and r.text.endswith("data: [DONE]\n\n")


def test_tokens_spec_above_limit_is_400_not_a_freeze(client, error_log):
    t0 = time.perf_counter()
    for r in (client.post("/s/tokens=1000000000000/v1/chat/completions", json=GOOD),
              client.post("/v1/chat/completions", json=GOOD, headers={"X-Streamlab": "tokens=100001"})):
        error = assert_json_400(r, "invalid_streamlab_spec")
        assert "100000" in error["message"]
    assert time.perf_counter() - t0 < 2.0
    ok = client.post("/s/tokens=100000/v1/chat/completions", json=GOOD)  # the limit itself is served
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 100_000
    assert still_serves(client) and error_log == []


def test_max_tokens_above_limit_is_400(client):
    for value in (100_001, 10**12, 1e308, "5", True):
        assert_json_400(client.post("/v1/chat/completions", json={**GOOD, "max_tokens": value}), param="max_tokens")
    r = client.post("/v1/chat/completions", json={**GOOD, "max_completion_tokens": 100_000})
    assert r.status_code == 200


def test_nested_json_is_400_not_recursionerror(client, error_log):
    deep = b"[" * 100_000 + b"]" * 100_000
    assert_json_400(client.post("/v1/chat/completions", content=deep), "invalid_json")
    field = b'{"model":"m","messages":[{"role":"user","content":"x"}],"x":' + b"[" * 100 + b"]" * 100 + b"}"
    error = assert_json_400(client.post("/v1/chat/completions", content=field), "invalid_json")
    assert "64" in error["message"]
    assert still_serves(client) and error_log == []


def test_nan_and_infinity_json_literals_are_400(client):
    for literal in (b"NaN", b"Infinity", b"-Infinity"):
        body = b'{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":' + literal + b"}"
        assert_json_400(client.post("/v1/chat/completions", content=body), "invalid_json")


@pytest.mark.parametrize("spec", ["stall@1=nan", "stall@1=1e300", "stall@1=inf", "ratelimit=nan",
                                  "slowheaders=1e12", "ttft=1e308", "itl=nan", "jitter=-1", "ttft=1_000",
                                  "cut@99999999999999999999", "context=nan", "tokens=1e3"])
def test_nan_stall_is_400(client, spec):
    t0 = time.perf_counter()
    assert_json_400(client.post(f"/s/{spec}/v1/chat/completions", json=GOOD), "invalid_streamlab_spec")
    assert_json_400(client.post("/v1/chat/completions", json=GOOD, headers={"X-Streamlab": spec}),
                    "invalid_streamlab_spec")
    assert time.perf_counter() - t0 < 2.0  # refused before any stall or sleep


def test_spec_echo_is_truncated(client):
    spec = "x" * 200_000
    r = client.post("/v1/chat/completions", json=GOOD, headers={"X-Streamlab": spec})
    error = assert_json_400(r, "invalid_streamlab_spec")
    assert len(r.content) < 2000 and "200000 characters" in error["message"]
    many = ",".join(["cut@1"] * 100)
    assert "limit is 64" in assert_json_400(client.post("/v1/chat/completions", json=GOOD,
                                                        headers={"X-Streamlab": many}))["message"]
    long_path = client.get("/" + "a" * 20_000)
    assert long_path.status_code == 404 and len(long_path.content) < 2000


@pytest.mark.parametrize("tools", ["x", {"type": "function"}, [{}], [1], [{"type": "function"}],
                                   [{"type": "function", "function": {}}],
                                   [{"type": "function", "function": {"name": 1}}],
                                   [{"type": "function", "function": {"name": "a b"}}],
                                   [{"type": "function", "function": {"name": "f", "parameters": "x"}}],
                                   [{"type": "function", "function": {"name": "f",
                                                                      "parameters": {"properties": "x"}}}],
                                   [{"type": "function", "function": {"name": f"f{i}"}} for i in range(200)]])
def test_malformed_tools_are_400(client, error_log, tools):
    for stream in (False, True):
        assert_json_400(client.post("/v1/chat/completions", json={**GOOD, "tools": tools, "stream": stream}))
    assert error_log == []


def test_function_without_parameters_is_supported(client):
    tools = [{"type": "function", "function": {"name": "ping"}}]
    r = client.post("/v1/chat/completions", json={**GOOD, "tools": tools})
    call = r.json()["choices"][0]["message"]["tool_calls"][0]["function"]
    assert call == {"name": "ping", "arguments": "{}"}
    odd = [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"type": ["integer", "null"]}}, "required": ["a"]}}}]
    r = client.post("/v1/chat/completions", json={**GOOD, "tools": odd})
    assert r.json()["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] == '{"a": 1}'


@pytest.mark.parametrize("field,value", [
    ("stream_options", "x"), ("stream_options", 1), ("stream_options", {"include_usage": "yes"}),
    ("temperature", 2.5), ("temperature", -1), ("temperature", "hot"), ("top_p", 1.5), ("n", 2), ("n", 0),
    ("n", "1"), ("stop", ["a"] * 5), ("tool_choice", "sometimes"), ("model", 1), ("model", None),
    ("tool_choice", {"type": "function", "function": {"name": "not_in_tools"}}),
])
def test_wrong_type_or_range_per_field_is_400(client, field, value):
    error = assert_json_400(client.post("/v1/chat/completions", json={**GOOD, "stream": True, field: value}))
    assert error["param"].startswith(field)


def test_n_above_one_is_400_with_a_reason(client):
    error = assert_json_400(client.post("/v1/chat/completions", json={**GOOD, "n": 3}), "unsupported_value", "n")
    assert "one choice" in error["message"]
    assert client.post("/v1/chat/completions", json={**GOOD, "n": 1}).status_code == 200


@pytest.mark.parametrize("content", [1, {}, True, [1], [{}], [{"type": "text", "text": 1}], None])
def test_content_neither_string_nor_parts_is_400(client, content):
    body = {**GOOD, "messages": [{"role": "user", "content": content}]}
    assert_json_400(client.post("/v1/chat/completions", json=body))


def test_assistant_message_without_content_is_accepted(client):
    messages = [{"role": "user", "content": "x"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "ok"}]
    r = client.post("/v1/chat/completions", json={**GOOD, "messages": messages})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"].startswith("Tool result: ok")


def test_bad_values_from_python_raise_spec_error_at_call_time(mock):
    for make in (lambda: Stall(at=1, seconds=math.nan), lambda: Stall(at=1, seconds=1e300),
                 lambda: Cut(at=-1), lambda: Cut(at=True), lambda: Cut(at=100_001),
                 lambda: faults.RateLimited(retry_after=math.inf), lambda: faults.SlowHeaders(seconds=1e12),
                 lambda: faults.ContextWindow(tokens=-5)):
        with pytest.raises(SpecError):
            make()
    before = len(mock.journal)
    for call in (lambda: mock.script("stall@1=nan"), lambda: mock.script(None, then="tokens=10**12"),
                 lambda: mock.script(object()), lambda: mock.inject("cut@1"), lambda: mock.inject(Cut)):
        with pytest.raises(SpecError):
            call()
    for settings in ({"tokens": 10**12}, {"ttft": math.nan}, {"itl": -1}, {"seed": "x"}, {"max_body": 0}):
        with pytest.raises(SpecError):
            sl.MockLLM(**settings)
    with pytest.raises(SpecError):
        mock.base_url_for("stall@1=1e300")
    assert len(mock.journal) == before  # nothing reached the server


def test_validate_checks_a_spec_or_a_fault_value_pair():
    assert faults.validate("stall@5=30,tokens=200") == ([Stall(at=5, seconds=30)], {"tokens": 200})
    assert faults.validate("stall", 30, at=5) == ([Stall(at=5, seconds=30)], {})
    assert faults.validate("tokens", 200) == ([], {"tokens": 200})
    assert faults.validate("nodone") == ([faults.NoDone()], {})
    for args, kwargs in ((("stall", math.nan), {"at": 5}), (("stall", 30), {}), (("nodone", 1), {}),
                         (("nosuch", 1), {}), (("tokens", 10**9), {}), (("cut",), {"at": -1}),
                         (("x" * 10_000,), {})):
        with pytest.raises(SpecError) as err:
            faults.validate(*args, **kwargs)
        assert len(str(err.value)) < 400


@pytest.mark.parametrize("argv", [["--tokens", "1000000000000"], ["--ttft", "nan"], ["--fault", "stall@1=nan"],
                                  ["--itl", "1e308"], ["--port", "99999"], ["--time-scale", "-1"]])
def test_cli_bad_values_are_argparse_errors_without_traceback(argv):
    proc = subprocess.run([sys.executable, "-m", "streamlab", "mock", *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2
    assert "error: argument" in proc.stderr and "Traceback" not in proc.stderr


def test_text_cache_is_bounded():
    reference = _text.generate(3000, 7)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for seed in range(40):
            assert len(_text.generate(100_000, 1000 + seed)) == 100_000
        grown = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    info = _text.cache_info()
    assert info["seeds"] <= _text.CACHE_SEEDS
    assert grown < 10 * 1024 * 1024, f"text cache grew by {grown / 1e6:.1f} MB"  # was about 20 MB per seed
    assert _text.generate(3000, 7) == reference and _text.generate(12, 7) == reference[:12]


def test_journal_bodies_are_bounded_in_bytes():
    journal = Journal(100, max_bytes=1000)
    for _ in range(10):
        journal.charge(journal.new("POST", "/v1/chat/completions"), 400)
    assert len(journal) == 2 and [e.id for e in journal] == [9, 10]


def _audit():
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import audit_mock
    finally:
        sys.path.remove(str(ROOT / "tools"))
    return audit_mock


def test_compact_audit_has_no_5xx_no_hang_and_no_traceback(error_log):
    audit = _audit()
    cases = [c for c in audit.cases() if not c.waits][::3]
    assert len(cases) > 100
    results = {}
    with sl.MockLLM() as server:
        for case in cases:
            answer = audit.probe(server.port, case.raw)
            kind = audit.classify(case, answer)
            results.setdefault(kind, []).append(case.label)
            assert audit.normal_ok(server.port), f"server not answering after {case.label!r}"
    assert not results.get("5xx") and not results.get("hang") and not results.get("no answer"), results
    assert len(results["4xx json"]) > 0.75 * len(cases)
    assert [r.getMessage()[:200] for r in error_log] == []
