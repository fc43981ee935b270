"""A real headless Chromium as a client (streamlab._browser): what the browser says, as a Run.

Every stream goes over loopback to real servers (the mock model, the ticker app under uvicorn, the
embedded proxy, real nginx for HTTP/2). Skipped, with the reason, when Chromium or Playwright is missing.
"""

import asyncio
import glob
import os
import tempfile

import psutil
import pytest

import streamlab as sl
from streamlab import hops
from streamlab._browser import Browser, BrowserError, BrowserTimeout, browser_available, browser_stream
from streamlab.faults import Cut
from streamlab._nginx import nginx_available, nginx_has_http2

pytestmark = pytest.mark.skipif(browser_available() is not None, reason=str(browser_available()))

BODY = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def servers():
    with sl.time_scale(1.0), sl.MockLLM(tokens=10, itl=0.03) as mock, \
            sl.Uvicorn("streamlab.apps.ticker:app") as ticker, Browser() as browser:
        yield mock, ticker, browser


def test_fetch_reads_a_complete_stream_with_its_timing(servers):
    mock, _, browser = servers
    run = browser.stream(mock.base_url + "/chat/completions", mode="fetch", method="POST", json=BODY,
                         expected=10, itl=0.03)
    assert run.outcome is sl.Outcome.COMPLETE, run
    assert (run.chunks, run.status, run.net_error, run.protocol) == (10, 200, None, "http/1.1")
    assert 0.015 < run.itl_p50 < 0.3            # the mock's 30 ms per token, timed in the page
    assert run.e2e >= 9 * 0.03


def test_fetch_cut_mid_stream_is_err_incomplete_chunked_encoding(servers):
    mock, _, browser = servers
    run = browser.stream(mock.base_url_for(Cut(at=5)) + "/chat/completions", mode="fetch", method="POST",
                         json=BODY, expected=10)
    assert run.outcome is sl.Outcome.CUT_MID_STREAM, run
    assert run.chunks == 5
    assert run.net_error == "net::ERR_INCOMPLETE_CHUNKED_ENCODING"
    assert run.page_error == "TypeError: network error"
    assert isinstance(run.error, BrowserError) and "ERR_INCOMPLETE_CHUNKED_ENCODING" in run.error_text
    assert any("ERR_INCOMPLETE_CHUNKED_ENCODING" in line for line in run.console)


def test_eventsource_complete_ends_on_the_done_event(servers):
    _, ticker, browser = servers
    run = browser.stream(ticker.url + "/stream?n=6&every=0.02", expected=6)
    assert run.outcome is sl.Outcome.COMPLETE, run
    assert run.chunks == 6 and run.net_error is None and run.page_error is None
    assert [e.event for e in run.events][0] == "open"


def test_eventsource_cut_by_a_hop(servers):
    _, ticker, browser = servers
    with sl.Proxy(upstream=ticker, faults=[hops.CutAfterBytes(nbytes=60)]) as proxy:
        run = browser.stream(proxy.url + "/stream?n=10&every=0.02", expected=10)
    assert run.outcome is sl.Outcome.CUT_MID_STREAM, run
    assert 0 < run.chunks < 10
    assert run.net_error == "net::ERR_INCOMPLETE_CHUNKED_ENCODING"
    assert run.page_error == "EventSource error event, readyState CONNECTING: it would reconnect"


def test_abort_after_is_client_aborted_not_an_error(servers):
    _, ticker, browser = servers
    for mode in ("eventsource", "fetch"):
        run = browser.stream(ticker.url + "/stream?n=20&every=0.02", mode=mode, abort_after=3, expected=20)
        assert run.outcome is sl.Outcome.CLIENT_ABORTED, (mode, run)
        assert run.net_error is None and run.error is None
        assert run.chunks <= 4


def test_http_error_status_is_http_error_in_both_modes(servers):
    _, ticker, browser = servers
    for mode in ("eventsource", "fetch"):
        run = browser.stream(ticker.url + "/no-such-route", mode=mode)
        assert run.outcome is sl.Outcome.HTTP_ERROR, (mode, run)
        assert run.status == 404


def test_page_timeout_is_stalled(servers):
    _, ticker, browser = servers
    run = browser.stream(ticker.url + "/stream?n=3&every=5", timeout=0.5, expected=3)
    assert run.outcome is sl.Outcome.STALLED, run
    assert isinstance(run.error, BrowserTimeout) and run.net_error is None


def test_works_inside_a_running_event_loop(servers):
    """A Jupyter kernel runs an asyncio loop: Playwright's sync API refuses it, our worker thread does not."""
    _, ticker, browser = servers

    async def in_loop():
        return browser.stream(ticker.url + "/stream?n=3&every=0.01", expected=3)

    assert asyncio.run(in_loop()).outcome is sl.Outcome.COMPLETE


def test_bad_arguments_are_clear_errors(servers):
    _, ticker, browser = servers
    with pytest.raises(ValueError, match="mode"):
        browser.stream(ticker.url + "/stream", mode="websocket")
    with pytest.raises(ValueError, match="EventSource can only GET"):
        browser.stream(ticker.url + "/stream", method="POST")
    with pytest.raises(ValueError, match="absolute"):
        browser.stream("/stream")


@pytest.mark.skipif(not (nginx_available() and nginx_has_http2()), reason="nginx with HTTP/2 is not installed")
def test_http2_through_real_nginx_and_its_cut(servers):
    _, ticker, browser = servers
    with sl.NginxProxy(upstream=ticker, faults=hops.nginx(proxy_buffering=False), http2=True) as nginx:
        ok = browser.stream(nginx.https_url + "/stream?n=4&every=0.02", expected=4)
    assert ok.outcome is sl.Outcome.COMPLETE and ok.protocol == "h2", ok
    with sl.NginxProxy(upstream=ticker, faults=hops.nginx(proxy_buffering=False, proxy_read_timeout=0.6),
                       http2=True) as nginx:
        cut = browser.stream(nginx.https_url + "/stream?n=4&every=0.02&block_at=2&block=3", expected=4)
    assert cut.outcome is sl.Outcome.CUT_MID_STREAM, cut
    assert cut.net_error == "net::ERR_HTTP2_PROTOCOL_ERROR"


def _browser_processes() -> set[int]:
    """Live descendants that belong to a browser (Chromium or Playwright's node driver)."""
    out = set()
    for p in psutil.Process().children(recursive=True):
        try:
            if p.status() != psutil.STATUS_ZOMBIE and ("chrom" in p.name() or p.name().startswith("node")):
                out.add(p.pid)
        except psutil.Error:
            continue
    return out


def test_one_shot_leaves_no_process_and_no_profile_dir(servers):
    _, ticker, _ = servers
    before = _browser_processes()               # the module's own browser is still running
    pattern = os.path.join(tempfile.gettempdir(), "*")
    dirs_before = {d for d in glob.glob(pattern) if "chrom" in d or "playwright" in d}
    browser = Browser().start()
    try:
        pid, profile = browser.pid, browser.user_data_dir
        assert pid is not None and os.path.isdir(profile)
        assert len(_browser_processes() - before) > 1
        with pytest.raises(RuntimeError, match="boom"), browser:
            raise RuntimeError("boom")
    finally:
        browser.stop()
    assert not browser.running and not os.path.exists(profile)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    run = browser_stream(ticker.url + "/stream?n=2&every=0.01", expected=2)
    assert run.outcome is sl.Outcome.COMPLETE
    assert _browser_processes() - before == set()
    assert {d for d in glob.glob(pattern) if "chrom" in d or "playwright" in d} <= dirs_before
