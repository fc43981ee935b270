"""``streamlab.apps.switches``: the app-side choices an incident's app made, as switches (issue 11).

Measured on Starlette 1.10 / FastAPI 0.165 under real uvicorn, against the mock:

* a ``BaseHTTPMiddleware`` in the stack hides the client's disconnect from
  ``request.is_disconnected()``: the handler runs the model to the end for nobody;
  a ``StreamingResponse`` is still cancelled (Starlette ends it when the send fails);
* ``STREAMLAB_ON_DISCONNECT=continue`` keeps a model call running after its client left,
  ``cancel`` stops it at the next token;
* ``STREAMLAB_HEARTBEAT`` adds ``: ping`` comments while the model is silent.
"""

from __future__ import annotations

import time

import pytest

import streamlab as sl

pytestmark = pytest.mark.usefixtures("clean_slate")
APP = "streamlab.apps.switches:app"


def _abandoned(route: str, abort: sl.Abort, **env: str):
    """The client leaves early; what did the model side generate, and what did the app log?"""
    with sl.MockLLM(tokens=40, ttft=0.05, itl=0.05) as mock, \
            sl.Uvicorn(APP, env={"STREAMLAB_MODEL_URL": mock.base_url, **env}) as app:
        result = sl.read_stream(app.url + route, abort=abort)
        entry = mock.journal.last
        entry.wait_closed(5.0)
        time.sleep(0.3)  # the app's last log line
        return result, entry, app.log_lines("MODEL CALL")


def test_a_streaming_response_stops_the_model_call_when_the_client_leaves():
    result, entry, lines = _abandoned("/chat/sse", sl.Abort(after_chunks=3))
    assert result.outcome == "aborted"
    assert entry.tokens_generated <= 5 and entry.disconnect is not None
    assert any("MODEL CALL cancelled" in line for line in lines)


def test_on_disconnect_continue_pays_for_every_token_after_the_client_left():
    result, entry, lines = _abandoned("/chat/sse", sl.Abort(after_chunks=3), STREAMLAB_ON_DISCONNECT="continue")
    assert result.outcome == "aborted"
    assert entry.tokens_generated == 40 and entry.ended == "complete"
    assert any("MODEL CALL done after 40 tokens" in line for line in lines)


def test_base_http_middleware_hides_the_disconnect_from_is_disconnected():
    _, plain, plain_lines = _abandoned("/chat/json", sl.Abort(after=0.4))
    _, wrapped, wrapped_lines = _abandoned("/chat/json", sl.Abort(after=0.4), STREAMLAB_BASE_MIDDLEWARE="1")
    assert plain.tokens_generated < 40 and any("is_disconnected()" in line for line in plain_lines)
    assert wrapped.tokens_generated == 40 and any("done after 40 tokens" in line for line in wrapped_lines)


def test_base_http_middleware_still_lets_a_streaming_response_be_cancelled():
    _, entry, lines = _abandoned("/chat/sse", sl.Abort(after_chunks=3), STREAMLAB_BASE_MIDDLEWARE="1")
    assert entry.tokens_generated <= 5 and any("MODEL CALL cancelled" in line for line in lines)


def test_heartbeat_switch_pings_while_the_model_is_silent():
    with sl.time_scale(0.05), sl.MockLLM(tokens=6, ttft=0.2, itl=0.2) as mock, \
            sl.Uvicorn(APP, env={"STREAMLAB_MODEL_URL": mock.base_url, "STREAMLAB_HEARTBEAT": "5"}) as app:
        result = sl.read_stream(app.url + "/chat/sse?spec=stall@2=30", timeout=None)
    assert result.outcome == "complete" and result.text.count(": ping") >= 4


def test_a_bad_switch_value_stops_the_app_at_startup_with_its_reason():
    with sl.MockLLM() as mock:
        with pytest.raises(Exception) as info:
            with sl.Uvicorn(APP, env={"STREAMLAB_MODEL_URL": mock.base_url, "STREAMLAB_ON_DISCONNECT": "maybe"}):
                pass
    assert "STREAMLAB_ON_DISCONNECT must be 'cancel' or 'continue'" in str(info.value)
