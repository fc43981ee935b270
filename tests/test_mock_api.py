"""The mock's content, timing, options, journal, bad input and lifecycle."""

import json
import time

import httpx
import openai
import pytest

import streamlab as sl
from streamlab import faults
from streamlab.faults import Cut, SpecError


def test_spec_round_trip_and_errors():
    fs, opts = faults.parse("cut@12,stall@5=30,tokens=200,itl=0.02,echo")
    assert [f.spec() for f in fs] == ["cut@12", "stall@5=30"]
    assert opts == {"tokens": 200, "itl": 0.02, "echo": True}
    assert faults.to_spec(Cut(at=3), tokens=5) == "cut@3,tokens=5"
    for bad in ("cut", "cut@x", "nosuch", "tokens", "nodone@3", "stall@-1", "tokens=-4"):
        with pytest.raises(SpecError):
            faults.parse(bad)


def test_registry_names_every_fault():
    assert faults.names() == ["cut", "reset", "silent", "nodone", "stall", "malformed", "framing", "error",
                              "ratelimit", "servererror", "context", "slowheaders"]


def test_deterministic_content_and_max_tokens():
    with sl.MockLLM(tokens=30) as mock:
        client = openai.OpenAI(base_url=mock.base_url, api_key="unused")
        ask = lambda **kw: client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}],
                                                          **kw)
        a, b = ask(), ask()
        assert a.choices[0].message.content == b.choices[0].message.content
        assert a.usage.completion_tokens == 30 and a.choices[0].finish_reason == "stop"
        short = ask(max_tokens=8)
        assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 8
        short2 = ask(max_completion_tokens=5)
        assert short2.usage.completion_tokens == 5
        chunks = list(client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}],
                                                     stream=True, stream_options={"include_usage": True}))
        assert chunks[-1].usage.completion_tokens == 30 and chunks[-1].choices == []
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == a.choices[0].message.content


def test_only_a_trailing_assistant_text_prefix_shortens_the_answer():
    """The continue convention (commit 0a25b3a) changes the answer of one request shape only: a last
    assistant message with words. Every other conversation gets the same tokens as a plain one."""
    user = {"role": "user", "content": "x"}
    call = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
    with sl.MockLLM(tokens=12) as mock:
        def answer(messages):
            body = {"model": "m", "stream": True, "messages": messages}
            result = sl.read_stream(mock.base_url + "/chat/completions", method="POST", json=body, unit="event")
            assert result.outcome == "complete", result
            chunks = [json.loads(e["data"]) for e in result.events if e.get("data") not in (None, "[DONE]")]
            return [c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]]

        plain = answer([user])
        assert len([t for t in plain if t]) == 12
        unchanged = {
            "assistant not last": [user, {"role": "assistant", "content": "Earlier reply ."}, user],
            "empty prefix": [user, {"role": "assistant", "content": ""}],
            "null prefix": [user, {"role": "assistant", "content": None}],
            "blank prefix": [user, {"role": "assistant", "content": "   "}],
            "tool-call turn last": [user, {"role": "assistant", "content": "Let me look .", "tool_calls": [call]}],
        }
        for name, messages in unchanged.items():
            assert answer(messages) == plain, name
        words = "".join(plain).split()
        rest = answer([user, {"role": "assistant", "content": " ".join(words[:4])}])
        assert "".join(rest).split() == words[4:]


def test_echo_repeats_the_last_user_message():
    with sl.MockLLM(tokens=6, echo=True) as mock:
        client = openai.OpenAI(base_url=mock.base_url, api_key="unused")
        out = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "req-17 hello"}])
        assert out.choices[0].message.content == "req-17 hello req-17 hello req-17 hello"


def test_tool_call_then_reply_after_tool_result():
    tools = [{"type": "function", "function": {"name": "lookup_policy", "parameters": {
        "type": "object", "properties": {"policy_id": {"type": "string"}}, "required": ["policy_id"]}}}]
    with sl.MockLLM(tokens=12) as mock:
        client = openai.OpenAI(base_url=mock.base_url, api_key="unused")
        msgs = [{"role": "user", "content": "look up P-1"}]
        first = client.chat.completions.create(model="m", messages=msgs, tools=tools)
        call = first.choices[0].message.tool_calls[0]
        assert first.choices[0].finish_reason == "tool_calls"
        assert call.function.name == "lookup_policy" and call.function.arguments == '{"policy_id": "demo"}'
        streamed = list(client.chat.completions.create(model="m", messages=msgs, tools=tools, stream=True))
        args = "".join(c.choices[0].delta.tool_calls[0].function.arguments for c in streamed
                       if c.choices and c.choices[0].delta.tool_calls)
        assert args == '{"policy_id": "demo"}' and streamed[-1].choices[0].finish_reason == "tool_calls"
        msgs += [first.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": '{"error": "policy P-1 not found"}'}]
        reply = client.chat.completions.create(model="m", messages=msgs, tools=tools)
        assert reply.choices[0].message.content.startswith('Tool result: {"error": "policy P-1 not found"}')


def test_timing_ttft_and_itl_in_scenario_seconds():
    with sl.time_scale(0.01), sl.MockLLM(tokens=10, ttft=20, itl=5) as mock:  # 0.2 s, 0.05 s
        client = openai.OpenAI(base_url=mock.base_url, api_key="unused")
        run = sl.record(lambda: client.chat.completions.create(model="m", messages=[{"role": "user",
                                                                                     "content": "x"}], stream=True))
        assert 18 < run.ttft < 40
        assert 4 < run.itl_p50 < 8
        assert max(abs(x) for x in mock.journal.last.lateness) < 0.05


def test_bad_input_gets_openai_style_errors():
    with sl.MockLLM() as mock, httpx.Client(base_url=mock.url) as h:
        cases = [
            (h.post("/v1/chat/completions", content=b"{not json"), 400, "invalid_json"),
            (h.post("/v1/chat/completions", json=[1, 2]), 400, None),
            (h.post("/v1/chat/completions", json={"model": "m"}), 400, "missing_required_parameter"),
            (h.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]}), 400,
             "missing_required_parameter"),
            (h.post("/v1/chat/completions", json={"model": "m", "messages": []}), 400, "invalid_type"),
            (h.post("/v1/chat/completions", json={"model": "m", "messages": ["x"]}), 400, "invalid_type"),
            (h.post("/v1/chat/completions", json={**sl.chat_request(), "stream": "yes"}), 400, "invalid_type"),
            (h.post("/v1/chat/completions", json={**sl.chat_request(), "max_tokens": 0}), 400, "invalid_type"),
            (h.post("/s/nosuch@1/v1/chat/completions", json=sl.chat_request()), 400, "invalid_streamlab_spec"),
            (h.get("/v1/chat/completions"), 405, None),
            (h.get("/nope"), 404, None),
        ]
        for response, status, code in cases:
            assert response.status_code == status, response.text
            error = response.json()["error"]
            assert error["message"] and error["type"] == "invalid_request_error"
            if code:
                assert error["code"] == code
    with sl.MockLLM(max_body=1000) as mock:
        r = httpx.post(mock.base_url + "/chat/completions", json={**sl.chat_request(), "pad": "x" * 5000})
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


def test_models_endpoint():
    with sl.MockLLM() as mock:
        models = openai.OpenAI(base_url=mock.base_url, api_key="unused").models.list()
        assert [m.id for m in models] == ["streamlab-mock"]


def test_journal_records_body_behaviour_and_events():
    with sl.MockLLM(tokens=5) as mock:
        client = openai.OpenAI(base_url=mock.base_url_for(Cut(at=2)), api_key="unused", max_retries=0)
        sl.record(lambda: client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}],
                                                         stream=True))
        entry = mock.journal.last
        assert entry.body["messages"][0]["content"] == "hi"
        assert entry.spec == "cut@2" and entry.faults == ["cut@2"] and entry.ended == "cut"
        assert entry.tokens_sent == 2
        kinds = [e.kind for e in entry.log.events]
        assert kinds[0] == "open" and "fault" in kinds and kinds[-1] == "close"
        assert "cut@2" in mock.journal.table()


def test_inject_is_scoped_and_removed_on_error():
    with sl.MockLLM(tokens=5) as mock:
        client = openai.OpenAI(base_url=mock.base_url, api_key="unused", max_retries=0)
        stream = lambda: client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}],
                                                        stream=True)
        with pytest.raises(RuntimeError):
            with mock.inject(Cut(at=1)):
                assert sl.record(stream).outcome is sl.Outcome.CUT_MID_STREAM
                raise RuntimeError("boom")
        assert sl.record(stream).outcome is sl.Outcome.COMPLETE


def test_client_disconnect_is_journaled():
    with sl.MockLLM(tokens=200, itl=0.01) as mock:
        client = openai.OpenAI(base_url=mock.base_url, api_key="unused")
        run = sl.record(lambda: client.chat.completions.create(model="m", messages=[{"role": "user",
                                                                                     "content": "x"}],
                                                               stream=True), abort_after=3)
        assert run.outcome is sl.Outcome.CLIENT_ABORTED
        assert mock.journal.last.wait_closed().ended == "client disconnected"
        assert mock.journal.last.tokens_sent < 200


def test_starts_fast_and_stops_clean():
    t = time.perf_counter()
    mock = sl.MockLLM().start()
    assert time.perf_counter() - t < 1.0
    port = mock.port
    assert sl.running_servers() == [mock]
    mock.stop()
    assert sl.running_servers() == []
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz")


def test_stopped_on_error_inside_with():
    with pytest.raises(ZeroDivisionError):
        with sl.MockLLM() as mock:
            1 / 0
    assert not mock.running and sl.running_servers() == []


def test_stopped_on_keyboard_interrupt_inside_with():
    with pytest.raises(KeyboardInterrupt):
        with sl.MockLLM() as mock:
            raise KeyboardInterrupt  # what a kernel interrupt raises inside a running cell
    assert not mock.running and sl.running_servers() == []
