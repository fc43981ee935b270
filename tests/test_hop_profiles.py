"""Profiles of the hops people deploy (issue 11): each one's status, body and timing at its limit.

Every profile in ``hops.PROFILES`` models one product at its documented defaults
(the docstring of each profile function, and of the fault it uses, cites the
documentation it was checked against). Here each is pinned by what a real client
sees over a real loopback socket (the openai SDK, ``sl.read_stream`` or plain
httpx) at its limit, with time at 1/100: Cloudflare's 100 s is 1 s of wall clock.
The upstream is the mock model or the scripted SSE app of ``tests/test_proxy.py``.
"""

from __future__ import annotations

import time

import httpx
import openai
import pytest

import streamlab as sl
from streamlab import hops
from streamlab._nginx import nginx_available
from streamlab._proxy import Proxy
from streamlab._servers import ThreadedASGIServer
from streamlab._timescale import time_scale, to_real
from test_proxy import SSEUpstream, cli_proxy, leftover_nginx, observe

SCALE = 0.01
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}


@pytest.fixture(autouse=True)
def scaled():
    with time_scale(SCALE):
        yield
    assert sl.running_servers() == []
    assert leftover_nginx() == []


@pytest.fixture
def mock():
    with sl.MockLLM(tokens=10, itl=1) as server:
        yield server


@pytest.fixture
def upstream():
    with ThreadedASGIServer(SSEUpstream(), name="test-upstream") as server:
        yield server


@pytest.fixture
def client():
    with httpx.Client() as c:
        yield c


def hop_time(proxy: Proxy) -> float:
    """Wall-clock seconds the proxy held its last exchange (request in to close), from its hop log.

    Measured at the hop, not around the SDK call: the first openai request of a process
    spends a good part of a second building its client before anything is sent.
    """
    return proxy.log.of("close")[-1].t - proxy.log.of("open")[-1].t


def sdk_error(proxy: Proxy, spec: str) -> tuple[openai.APIStatusError, float]:
    """The openai SDK's error for a streamed chat completion through ``proxy`` to the mock with ``spec``,
    and how long the hop took to give it."""
    sdk = openai.OpenAI(base_url=f"{proxy.url}/s/{spec}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.APIStatusError) as info:
        for _ in sdk.chat.completions.create(**BODY):
            pass
    return info.value, hop_time(proxy)


def near(seconds: float, limit: float, slack: float = 0.5) -> bool:
    """``seconds`` of wall clock is the scaled ``limit`` (never early; late by at most ``slack`` s)."""
    return to_real(limit) * 0.95 <= seconds <= to_real(limit) + slack


# --------------------------------------------------------------------------- Cloudflare


def test_cloudflare_profile_answers_524_error_code_524_after_100s_of_silence_before_headers(mock):
    with Proxy(upstream=mock.url, profile="cloudflare") as proxy:
        error, took = sdk_error(proxy, "slowheaders=200")
    assert isinstance(error, openai.InternalServerError) and error.status_code == 524
    assert error.response.text == "error code: 524"
    assert error.response.headers["content-type"].startswith("text/plain")
    assert near(took, 100)


def test_cloudflare_profile_cuts_after_100s_of_silence_mid_stream_not_a_stream_with_90s_gaps(upstream, client):
    with Proxy(upstream=upstream.url, profile="cloudflare") as proxy:
        gaps = observe(client, proxy.url + "/sse?n=2&interval=90")
        silent = observe(client, proxy.url + "/sse?n=5&stall_at=2")
    assert gaps.outcome == "complete" and gaps.done
    assert silent.status == 200 and silent.outcome == "cut" and len(silent.events) == 2
    assert near(silent.ended_at, 100)


# --------------------------------------------------------------------------- AWS


def test_aws_alb_profile_answers_504_awselb_after_60s_idle_and_cuts_a_stream_idle_60s(upstream, client):
    with Proxy(upstream=upstream.url, profile="aws_alb") as proxy:
        before = observe(client, proxy.url + "/sse?ttfb=100")
        gaps = observe(client, proxy.url + "/sse?n=2&interval=50")
        silent = observe(client, proxy.url + "/sse?n=5&stall_at=2")
    assert before.status == 504 and b"504 Gateway Time-out" in before.body and b"awselb/2.0" in before.body
    assert near(before.ended_at, 60)
    assert gaps.outcome == "complete"
    assert silent.outcome == "cut" and len(silent.events) == 2 and near(silent.ended_at, 60)


def test_aws_api_gateway_profile_answers_504_endpoint_request_timed_out_at_29s(mock):
    with Proxy(upstream=mock.url, profile="aws_api_gateway") as proxy:
        error, took = sdk_error(proxy, "slowheaders=60")
    assert error.status_code == 504 and error.response.json() == {"message": "Endpoint request timed out"}
    assert near(took, 29)


def test_aws_api_gateway_profile_cuts_a_flowing_stream_at_29s_total(upstream):
    with Proxy(upstream=upstream.url, profile="aws_api_gateway") as proxy:
        result = sl.read_stream(proxy.url + "/sse?n=20&interval=2")  # 40 s of steady events
    assert result.status == 200 and isinstance(result.error, httpx.RemoteProtocolError)
    assert 12 <= len(result.events) <= 16  # about 29 s / 2 s
    assert near(result.t_end - result.t_start, 29)


# --------------------------------------------------------------------------- Google Cloud


def test_gcp_load_balancer_profile_cuts_a_steadily_flowing_stream_at_30s_total(upstream):
    with Proxy(upstream=upstream.url, profile="gcp_load_balancer") as proxy:
        result = sl.read_stream(proxy.url + "/sse?n=20&interval=4")  # never idle, 80 s long
    assert result.status == 200 and isinstance(result.error, httpx.RemoteProtocolError)
    assert 6 <= len(result.events) <= 8  # about 30 s / 4 s
    assert near(result.t_end - result.t_start, 30)


def test_gcp_load_balancer_profile_answers_502_when_no_response_in_30s(mock):
    with Proxy(upstream=mock.url, profile="gcp_load_balancer") as proxy:
        error, took = sdk_error(proxy, "slowheaders=45")
    assert error.status_code == 502 and b"502" in error.response.content and b"Server Error" in error.response.content
    assert near(took, 30)


# --------------------------------------------------------------------------- Heroku


def test_heroku_profile_answers_503_h12_after_30s_without_a_first_byte(mock):
    with Proxy(upstream=mock.url, profile="heroku") as proxy:
        error, took = sdk_error(proxy, "slowheaders=40")
        faults = [e.note for e in proxy.log.of("fault")]
    assert error.status_code == 503 and b"Application Error" in error.response.content
    assert near(took, 30) and faults == ["router_timeout: H12 Request timeout"]


def test_heroku_profile_allows_40s_gaps_after_the_first_byte_and_cuts_after_55s_of_silence(upstream, client):
    with Proxy(upstream=upstream.url, profile="heroku") as proxy:
        gaps = observe(client, proxy.url + "/sse?n=2&interval=40")  # > 30 s, < 55 s: the rolling window
        silent = observe(client, proxy.url + "/sse?n=5&stall_at=2")
    assert gaps.outcome == "complete" and gaps.done
    assert silent.outcome == "cut" and len(silent.events) == 2 and near(silent.ended_at, 55)


# --------------------------------------------------------------------------- ingress-nginx and nginx


def test_ingress_nginx_profile_does_not_buffer_an_sse_body_that_nginx_defaults_would_hold(upstream, client):
    url = "/sse?n=5&interval=10&length=1"  # Content-Length framing: what nginx's buffering holds
    with Proxy(upstream=upstream.url, profile="ingress_nginx") as ingress, \
            Proxy(upstream=upstream.url, profile="nginx") as plain:
        flowing = observe(client, ingress.url + url)
        held = observe(client, plain.url + url)
    assert flowing.done and flowing.spread() > 0.6 * to_real(50)
    assert held.done and held.spread() < 0.2 * to_real(50)
    assert hops.ingress_nginx() == [hops.ReadTimeout(seconds=60), hops.UpstreamSendTimeout(seconds=60),
                                    hops.SendTimeout(seconds=60),
                                    hops.Buffering(on=False, buffer_size=4096, buffers=(4, 4096))]


@pytest.mark.skipif(not nginx_available(), reason="real nginx is not installed (apt-get install nginx-light)")
def test_ingress_nginx_profile_on_real_nginx_streams_unbuffered_and_times_out_at_60s(upstream, client):
    with sl.proxy_for(upstream=upstream.url, profile="ingress_nginx", prefer="nginx") as proxy:
        assert proxy.kind.startswith("real nginx") and "proxy_buffering off;" in proxy.config
        flowing = observe(client, proxy.url + "/sse?n=5&interval=10&length=1")
        late = observe(client, proxy.url + "/sse?ttfb=100")
    assert flowing.done and flowing.spread() > 0.6 * to_real(50)
    assert late.status == 504 and near(late.ended_at, 60, slack=0.8)


def test_nginx_profile_is_unchanged():
    assert hops.nginx() == [hops.ReadTimeout(seconds=60), hops.UpstreamSendTimeout(seconds=60),
                            hops.SendTimeout(seconds=60), hops.Buffering()]
    assert [f.spec() for f in hops.nginx()] == ["read_timeout=60", "upstream_send_timeout=60", "send_timeout=60",
                                                "buffering=on"]


# --------------------------------------------------------------------------- every profile from Python and the CLI


def test_every_profile_works_from_python_with_its_documented_defaults():
    expected = {
        "cloudflare": [hops.OriginReadTimeout(seconds=100)],
        "aws_alb": [hops.IdleTimeout(seconds=60)],
        "aws_api_gateway": [hops.Deadline(seconds=29)],
        "gcp_load_balancer": [hops.BackendTimeout(seconds=30)],
        "heroku": [hops.RouterTimeout(seconds=30, idle=55)],
        "ingress_nginx": hops.ingress_nginx(),
        "nginx": hops.nginx(), "load_balancer": [hops.IdleTimeout(seconds=60)],
        "api_gateway": [hops.Deadline(seconds=29)], "serverless": [hops.KillAfter(seconds=10)],
    }
    assert set(hops.PROFILES) == set(expected)
    for name, faults in expected.items():
        assert hops.PROFILES[name]() == faults
        assert Proxy(upstream="http://127.0.0.1:1", profile=name).faults == sorted(faults, key=lambda f: f.stage)
        assert (hops.PROFILES[name].__doc__ or "").strip(), name
    assert Proxy(upstream="http://127.0.0.1:1", profile="ingress-nginx").faults == Proxy(
        upstream="http://127.0.0.1:1", profile="ingress_nginx").faults


def test_cli_profile_names_a_product_and_its_durations_scale_with_time_scale(mock):
    with cli_proxy("--upstream", mock.url, "--profile", "heroku", "--time-scale", str(SCALE)) as (proc, url):
        assert proc.stdout.readline().strip() == "faults: router_timeout=30"
        sdk = openai.OpenAI(base_url=url + "/s/slowheaders=40/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.APIStatusError) as info:
            sdk.chat.completions.create(**BODY)
        t0 = time.perf_counter()  # timed again with a client that has nothing to build
        late = httpx.post(url + "/s/slowheaders=40/v1/chat/completions", json=BODY, timeout=10)
        took = time.perf_counter() - t0
    assert info.value.status_code == 503 and late.status_code == 503 and near(took, 30)
