"""What a hop does when its timer fires (``Timer.action``), and the X-Accel pass-through mode.

Issue 11, "hop actions when a timer fires": a timer that runs out on a response
already streaming may cut it (the default, what nginx does), end it cleanly (a
silent truncation, as some L7 proxies do), inject an SSE error event or reset the
connection. Each action is pinned here by what a real client sees over a real
loopback socket: httpx's exception, the openai SDK's exception, ``sl.record``'s
outcome. And "a hop mode that passes X-Accel-* headers on": the embedded proxy as
a middle hop in front of real nginx, where ``x_accel="pass"`` lets the app's
``X-Accel-Buffering: no`` reach nginx and ``"strip"`` (the default) does not.

Time runs at 1/100: a 30 s timeout takes 0.3 s.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import openai
import pytest

import streamlab as sl
from streamlab import hops
from streamlab._nginx import nginx_available
from streamlab._proxy import Proxy
from streamlab._servers import ThreadedASGIServer
from streamlab._timescale import time_scale, to_real
from test_proxy import CLI_ENV, CLI_PROXY, SSEUpstream, cli_proxy, leftover_nginx, observe

ROOT = Path(__file__).resolve().parent.parent
SCALE = 0.01
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}


@pytest.fixture(autouse=True)
def scaled():
    with time_scale(SCALE):
        yield
    assert sl.running_servers() == []
    assert leftover_nginx() == []


@pytest.fixture
def upstream():
    with ThreadedASGIServer(SSEUpstream(), name="test-upstream") as server:
        yield server


@pytest.fixture
def client():
    with httpx.Client() as c:
        yield c


def sdk_for(proxy: Proxy) -> openai.OpenAI:
    # the mock stalls after 4 tokens for 300 s: far past the proxy's 30 s read timeout
    return openai.OpenAI(base_url=proxy.url + "/s/stall@4=300/v1", api_key="unused", max_retries=0)


# --------------------------------------------------------------------------- each action, as the client sees it


def test_cut_action_closes_without_the_terminating_chunk_httpx_remote_protocol_error(upstream, client):
    with Proxy(upstream=upstream.url, faults=[hops.ReadTimeout(seconds=30, action="cut")]) as proxy:
        seen = observe(client, proxy.url + "/sse?n=8&interval=5&stall_at=2")
    assert seen.status == 200 and seen.outcome == "cut"
    assert isinstance(seen.error, httpx.RemoteProtocolError)
    assert seen.data == [b"data: 0 ", b"data: 1 "]


def test_end_action_ends_the_body_cleanly_without_done_a_silent_truncation(upstream, client):
    with Proxy(upstream=upstream.url, faults=["read_timeout=30:action=end"]) as proxy:
        seen = observe(client, proxy.url + "/sse?n=8&interval=5&stall_at=2")
        faults = [e.note for e in proxy.log.of("fault")]
        closes = [e.note for e in proxy.log.of("close")]
    assert seen.status == 200 and seen.outcome == "complete" and seen.error is None  # terminating chunk came
    assert seen.data == [b"data: 0 ", b"data: 1 "] and not seen.done
    assert to_real(30) * 0.9 < seen.ended_at < to_real(30) + 1.0
    assert faults == ["read_timeout: upstream timed out (110: Connection timed out) while reading upstream: "
                      "body ended cleanly (silent truncation)"]
    assert closes == ["eof"]


def test_end_action_through_the_openai_sdk_is_recorded_as_silent_truncation():
    with sl.MockLLM(tokens=20, itl=1) as mock, \
            Proxy(upstream=mock.url, faults=[hops.ReadTimeout(seconds=30, action="end")]) as proxy:
        sdk = sdk_for(proxy)
        run = sl.record(lambda: sdk.chat.completions.create(**BODY), label="end")
    assert run.outcome is sl.Outcome.SILENT_TRUNCATION, run
    assert run.error is None and 1 <= run.tokens <= 5


def test_error_event_action_injects_an_sse_error_object_the_sdk_raises_as_api_error():
    with sl.MockLLM(tokens=20, itl=1) as mock, \
            Proxy(upstream=mock.url, faults=[hops.ReadTimeout(seconds=30, action="error-event")]) as proxy:
        sdk = sdk_for(proxy)
        got = []
        with pytest.raises(openai.APIError) as info:
            for chunk in sdk.chat.completions.create(**BODY):
                got.append(chunk)
    assert not isinstance(info.value, openai.APIStatusError)  # the status was 200: the error came in the stream
    assert "while reading upstream" in info.value.message
    assert info.value.body["code"] == "read_timeout" and info.value.body["type"] == "hop_timeout"
    assert 1 <= len(got) <= 6


def test_error_event_starts_on_an_event_boundary_and_the_stream_then_ends_cleanly(upstream, client):
    with Proxy(upstream=upstream.url, faults=[hops.ReadTimeout(seconds=30, action="error-event")]) as proxy:
        seen = observe(client, proxy.url + "/sse?n=8&interval=5&stall_at=2")
    assert seen.outcome == "complete" and seen.data[:2] == [b"data: 0 ", b"data: 1 "]
    assert len(seen.data) == 3 and seen.data[2].startswith(b'data: {"error": {"message": "nginx proxy_read_timeout')
    assert seen.body.endswith(b"\n\n")


def test_error_event_on_a_response_that_is_not_sse_is_a_cut(upstream, client):
    with Proxy(upstream=upstream.url, faults=[hops.ReadTimeout(seconds=30, action="error-event")]) as proxy:
        seen = observe(client, proxy.url + "/sse?n=8&interval=5&stall_at=2&type=application/json")
        faults = [e.note for e in proxy.log.of("fault")]
    assert seen.outcome == "cut" and b"error" not in seen.body
    assert "not an SSE response: cut instead" in faults[0]


def test_reset_action_sends_a_tcp_reset_httpx_read_error(upstream, client):
    with Proxy(upstream=upstream.url, faults=[hops.ReadTimeout(seconds=30, action="reset")]) as proxy:
        seen = observe(client, proxy.url + "/sse?n=8&interval=5&stall_at=2")
        closes = [e.note for e in proxy.log.of("close")]
    assert seen.status == 200 and seen.outcome == "reset" and isinstance(seen.error, httpx.ReadError)
    assert seen.data == [b"data: 0 ", b"data: 1 "] and closes == ["reset"]


@pytest.mark.parametrize("action", hops.ACTIONS)
def test_before_the_response_head_every_action_gets_the_hops_error_response(upstream, client, action):
    with Proxy(upstream=upstream.url, faults=[hops.Deadline(seconds=29, action=action)]) as proxy:
        seen = observe(client, proxy.url + "/sse?ttfb=60")
    assert seen.status == 504 and seen.body == b'{"message": "Endpoint request timed out"}'


def test_end_action_behind_gzip_and_buffering_finishes_the_gzip_stream(upstream, client):
    faults = hops.nginx(gzip=True, gzip_types=("text/event-stream",), action="end")
    with Proxy(upstream=upstream.url, faults=faults) as proxy:
        seen = observe(client, proxy.url + "/sse?n=8&interval=5&stall_at=2", headers={"accept-encoding": "gzip"})
    assert seen.headers["content-encoding"] == "gzip" and seen.outcome == "complete"  # httpx inflated it whole
    assert seen.data == [b"data: 0 ", b"data: 1 "]


# --------------------------------------------------------------------------- the setting: registry, spec, profiles, CLI


def test_action_is_a_validated_setting_of_every_timer_and_round_trips_through_the_spec():
    timers = [cls for cls in hops.REGISTRY.values() if issubclass(cls, hops.Timer)]
    assert {c.name for c in timers} == {"read_timeout", "upstream_send_timeout", "idle_timeout", "deadline",
                                        "kill_after", "origin_read_timeout", "backend_timeout", "router_timeout"}
    for cls in timers:
        for action in hops.ACTIONS:
            fault = cls(action=action)
            assert hops.from_spec(fault.spec()) == fault
    assert hops.ReadTimeout(seconds=30).spec() == "read_timeout=30"  # the default is left out
    assert hops.from_spec("idle_timeout=60:action=error_event") == hops.IdleTimeout(action="error-event")
    with pytest.raises(ValueError):
        hops.ReadTimeout(action="explode")
    with pytest.raises(hops.SpecError, match="action is one of cut, end, error-event, reset"):
        hops.from_spec("deadline=29:action=explode")
    rearmed = hops.with_action([*hops.nginx(), hops.Rule(fault=hops.Deadline(), path_prefix="/v1")], "reset")
    assert [getattr(getattr(f, "fault", f), "action", None) for f in rearmed] == ["reset", "reset", None, None,
                                                                                 "reset"]
    assert hops.cloudflare(action="end") == [hops.OriginReadTimeout(seconds=100, action="end")]


def test_cli_on_timeout_end_rearms_the_profiles_timers(upstream, client):
    with cli_proxy("--upstream", upstream.url, "--profile", "cloudflare", "--on-timeout", "end",
                   "--time-scale", str(SCALE)) as (proc, url):
        assert proc.stdout.readline().strip() == "faults: origin_read_timeout=100:action=end"
        seen = observe(client, url + "/sse?n=8&interval=5&stall_at=2")  # 100 s of silence after 2 events
    assert seen.outcome == "complete" and seen.data == [b"data: 0 ", b"data: 1 "] and not seen.done
    assert to_real(100) * 0.9 < seen.ended_at < to_real(100) + 1.5
    refused = subprocess.run([*CLI_PROXY, "--upstream", upstream.url, "--engine", "nginx", "--on-timeout", "end"],
                             cwd=ROOT, env=CLI_ENV, capture_output=True, text=True, timeout=30)
    assert refused.returncode == 2 and "real nginx can only cut" in refused.stderr


# --------------------------------------------------------------------------- X-Accel pass-through


def test_proxy_strips_x_accel_headers_by_default_and_passes_them_with_x_accel_pass(upstream, client):
    with Proxy(upstream=upstream.url) as strip, Proxy(upstream=upstream.url, x_accel="pass") as passing:
        stripped = observe(client, strip.url + "/sse?n=1&accel=1")
        passed = observe(client, passing.url + "/sse?n=1&accel=1")
    assert "x-accel-buffering" not in stripped.headers
    assert passed.headers["x-accel-buffering"] == "no"
    with pytest.raises(ValueError, match="x_accel"):
        Proxy(upstream=upstream.url, x_accel="drop")


@pytest.mark.skipif(not nginx_available(), reason="real nginx is not installed (apt-get install nginx-light)")
@pytest.mark.parametrize("mode", ["pass", "strip"])
def test_x_accel_buffering_no_from_the_app_reaches_the_nginx_in_front_only_with_pass(upstream, client, mode):
    # client -> real nginx (proxy_buffering on) -> embedded middle hop -> app sending X-Accel-Buffering: no.
    # nginx speaks HTTP/1.0 to the middle hop, which answers close-delimited: a body nginx's buffering holds
    # (4 KiB buffers) unless the response says X-Accel-Buffering: no.
    with Proxy(upstream=upstream.url, x_accel=mode, name="middle") as middle, \
            sl.proxy_for(upstream=middle.url, faults=hops.nginx(), prefer="nginx") as front:
        assert front.kind.startswith("real nginx")
        seen = observe(client, front.url + "/sse?n=5&interval=20&accel=1")
    assert seen.outcome == "complete" and seen.done and len(seen.events) == 6
    if mode == "pass":
        assert seen.spread() > 0.6 * to_real(5 * 20)  # events flowed through nginx as they came
    else:
        assert seen.spread() < 0.25 * to_real(5 * 20)  # held by nginx until the end


def test_real_nginx_refuses_a_timer_action_it_cannot_take():
    from streamlab._nginx import NginxUnsupported, check_supported
    from streamlab._rules import as_rules

    with pytest.raises(NginxUnsupported, match="can only cut"):
        check_supported(as_rules(sl.hops.nginx(proxy_read_timeout=30, action="end")))
    check_supported(as_rules(sl.hops.nginx(proxy_read_timeout=30)))
