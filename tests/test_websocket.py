"""The WebSocket transport (issue 12): ``streamlab.apps.ws`` through the embedded proxy and real nginx.

Real sockets everywhere: the mock, uvicorn running ``streamlab.apps.ws`` (LangChain
``ChatOpenAI.astream`` -> one message per token), the embedded proxy relaying the
upgrade, real nginx with and without the upgrade headers, and the ``websockets``
client in ``streamlab._ws.ws_record``. At ``SCALE`` the hop timeout is 1.5 s of wall
clock and the model stall 2.4 s; pings come every 0.4 s. nginx's timeouts are kept
above 1 s of wall clock on purpose: nginx only re-arms a timer that moved by more
than 300 ms (NGX_TIMER_LAZY_DELAY), so a tunnel timeout of 0.1 s fires during a
steady stream (measured), which no real deployment sees.
"""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor

import pytest

import streamlab as sl
from streamlab import hops
from streamlab._nginx import NginxProxy, nginx_available
from streamlab import ws_record

SCALE = 0.05
TOKENS = 12
TIMEOUT = 30.0        # scenario seconds: the hop's idle / read timeout (1.5 s of wall clock)
STALL = "stall@5=48"  # the model goes silent after token 5 for 48 scenario seconds (2.4 s)
PING = "0.4"          # uvicorn --ws-ping-interval, real seconds (well below the timeout)
APP_PING = 8.0        # the app's {"type": "ping"} interval, scenario seconds (0.4 s)
CLIENT_TIMEOUT = 150.0  # scenario seconds the client waits for one message (outlasts the stall)

needs_nginx = pytest.mark.skipif(not nginx_available(), reason="nginx is not installed (apt-get install nginx-light)")


@pytest.fixture(scope="module", autouse=True)
def scaled():
    with sl.time_scale(SCALE):
        yield


@pytest.fixture(scope="module")
def mock(scaled):
    with sl.MockLLM(tokens=TOKENS, itl=0.2) as server:
        yield server


def _app(mock, *extra: str) -> sl.Uvicorn:
    return sl.Uvicorn("streamlab.apps.ws:app", env={"STREAMLAB_MODEL_URL": mock.base_url}, extra_args=list(extra))


@pytest.fixture(scope="module")
def servers(mock):
    """The WebSocket app twice, started side by side: uvicorn's protocol pings off, and every PING s."""
    quiet = _app(mock, "--ws-ping-interval", "0")
    pinging = _app(mock, "--ws-ping-interval", PING, "--ws-ping-timeout", "10")
    with ThreadPoolExecutor(2) as pool:
        started = [pool.submit(server.__enter__) for server in (quiet, pinging)]
    try:
        for future in started:
            future.result()
        yield quiet, pinging
    finally:
        quiet.stop()
        pinging.stop()


@pytest.fixture(scope="module")
def app(servers):
    return servers[0]


@pytest.fixture(scope="module")
def ping_app(servers):
    return servers[1]


def ws(server, path: str = "/ws/chat", **query: str) -> str:
    url = server.url.replace("http://", "ws://", 1) + path
    return url + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")


# ----------------------------------------------------------------------------- the app and the client


def test_app_streams_every_token_then_done_and_closes_1000(app):
    run = ws_record(ws(app), timeout=CLIENT_TIMEOUT)
    assert run.outcome is sl.Outcome.COMPLETE, run.summary()
    assert (run.status, run.close_code, len(run.tokens)) == (101, 1000, TOKENS)
    assert run.messages[-1] == {"type": "done", "tokens": TOKENS}
    assert run.times == sorted(run.times) and len(run.times) == TOKENS + 1


def test_model_cut_becomes_an_error_message_and_close_1011(app):
    run = ws_record(ws(app, spec="cut@5"), timeout=CLIENT_TIMEOUT)
    assert run.outcome is sl.Outcome.CUT_MID_STREAM, run.summary()
    assert run.close_code == 1011 and len(run.tokens) == 5
    assert run.messages[-1]["type"] == "error"


def test_app_refuses_a_bad_ping_with_close_1008(app):
    run = ws_record(ws(app, ping="soon"), timeout=CLIENT_TIMEOUT)
    assert run.close_code == 1008 and "ping" in run.close_reason
    assert run.outcome is sl.Outcome.ERROR_BEFORE_STREAM


def test_nobody_listening_is_error_before_stream():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    run = ws_record(f"ws://127.0.0.1:{port}/ws/chat")
    assert run.outcome is sl.Outcome.ERROR_BEFORE_STREAM and run.status is None
    assert run.error.startswith("ConnectionRefusedError")


# ----------------------------------------------------------------------------- the embedded proxy


def test_embedded_proxy_relays_the_upgrade_and_every_token(app):
    with sl.Proxy(upstream=app.url) as proxy:
        run = ws_record(ws(proxy), timeout=CLIENT_TIMEOUT)
        log = proxy.log
    assert run.outcome is sl.Outcome.COMPLETE, run.summary()
    assert (run.close_code, len(run.tokens)) == (1000, TOKENS)
    assert [e.note for e in log.of("status")] == ["101"]
    assert [e.note for e in log.of("upgrade")] == ["websocket: relaying raw bytes"]
    assert log.bytes("up") > 0  # the client's frames (its close frame at least) went upstream
    assert log.bytes("out") >= log.bytes("in") - 1  # everything from upstream reached the client
    assert log.of("close")[-1].note == "eof"


def test_embedded_proxy_passes_a_refused_upgrade_on_and_closes(app):
    with sl.Proxy(upstream=app.url) as proxy:
        run = ws_record(ws(proxy, path="/no/such/socket"), timeout=CLIENT_TIMEOUT)
    assert run.outcome is sl.Outcome.HTTP_ERROR and run.status == 403, run.summary()


def test_embedded_idle_timeout_during_a_stall_closes_without_close_frame_1006(app):
    with sl.Proxy(upstream=app.url, faults=[hops.IdleTimeout(seconds=TIMEOUT)]) as proxy:
        run = ws_record(ws(proxy, spec=STALL), timeout=CLIENT_TIMEOUT)
        log = proxy.log
    assert run.outcome is sl.Outcome.CUT_MID_STREAM, run.summary()
    assert run.close_code == 1006 and len(run.tokens) == 5
    assert run.error.startswith("ConnectionClosedError")
    notes = [e.note for e in log.of("fault")]
    assert notes == ["idle_timeout: upstream timed out (110: Connection timed out) while proxying upgraded "
                     "connection"]
    assert log.of("close")[-1].note == "cut"
    gap = run.elapsed - run.token_times[4]  # from the last token to the cut
    assert TIMEOUT * 0.9 < gap < TIMEOUT * 1.5, gap


def test_embedded_idle_timeout_survives_a_stall_with_uvicorn_ping_frames(ping_app):
    with sl.Proxy(upstream=ping_app.url, faults=[hops.IdleTimeout(seconds=TIMEOUT)]) as proxy:
        run = ws_record(ws(proxy, spec=STALL), timeout=CLIENT_TIMEOUT)
        log = proxy.log
    assert run.outcome is sl.Outcome.COMPLETE, run.summary()
    assert run.pings == 0  # protocol pings: the client library answered them, the app sent no message
    assert not log.of("fault")
    assert run.token_times[5] - run.token_times[4] > TIMEOUT  # the stall really outlasted the timeout


def test_embedded_deadline_cuts_a_tunnel_kept_busy_by_pings(app):
    # a lifetime limit (API gateway, Google's backend service timeout for WebSockets) ignores traffic
    with sl.Proxy(upstream=app.url, faults=[hops.Deadline(seconds=TIMEOUT)]) as proxy:
        run = ws_record(ws(proxy, spec=STALL, ping=f"{APP_PING:g}"), timeout=CLIENT_TIMEOUT)
        log = proxy.log
    assert run.outcome is sl.Outcome.CUT_MID_STREAM and run.close_code == 1006, run.summary()
    assert run.pings >= 2 and len(run.tokens) == 5
    assert [e.note.split(":")[0] for e in log.of("fault")] == ["deadline"]
    assert TIMEOUT * 0.95 < run.elapsed < TIMEOUT * 1.5, run.elapsed


def test_embedded_read_timeout_reset_action_is_also_1006(app):
    with sl.Proxy(upstream=app.url, faults=[hops.ReadTimeout(seconds=TIMEOUT, action="reset")]) as proxy:
        run = ws_record(ws(proxy, spec=STALL), timeout=CLIENT_TIMEOUT)
        log = proxy.log
    assert run.outcome is sl.Outcome.CUT_MID_STREAM and run.close_code == 1006, run.summary()
    assert log.of("close")[-1].note == "reset"


# ----------------------------------------------------------------------------- real nginx


@needs_nginx
def test_nginx_without_upgrade_headers_sends_a_plain_get_and_the_app_answers_404(app):
    with NginxProxy(upstream=app.url) as nginx:
        run = ws_record(ws(nginx), timeout=CLIENT_TIMEOUT)
    # nginx drops Upgrade (hop-by-hop) and sends Connection: close: the app sees a plain GET for a
    # WebSocket-only route, and the client's handshake fails with that HTTP status
    assert run.outcome is sl.Outcome.HTTP_ERROR and run.status == 404, run.summary()
    assert run.error.startswith("InvalidStatus")


@needs_nginx
def test_nginx_with_websocket_streams_every_token(app):
    with NginxProxy(upstream=app.url, websocket=True, faults=[hops.ReadTimeout(seconds=TIMEOUT)]) as nginx:
        assert "proxy_set_header Upgrade $http_upgrade;" in nginx.config
        run = ws_record(ws(nginx), timeout=CLIENT_TIMEOUT)
    assert run.outcome is sl.Outcome.COMPLETE, run.summary()
    assert (run.close_code, len(run.tokens)) == (1000, TOKENS)


@needs_nginx
def test_nginx_read_timeout_during_a_stall_is_1006_without_pings(app):
    with NginxProxy(upstream=app.url, websocket=True, faults=[hops.ReadTimeout(seconds=TIMEOUT)]) as nginx:
        run = ws_record(ws(nginx, spec=STALL), timeout=CLIENT_TIMEOUT)
        lines = nginx.log_lines("while proxying upgraded connection")
    assert run.outcome is sl.Outcome.CUT_MID_STREAM, run.summary()
    assert run.close_code == 1006 and len(run.tokens) == 5
    assert any("upstream timed out" in line for line in lines), lines


@needs_nginx
@pytest.mark.parametrize("pings", ["uvicorn ping frames", "client ping frames", "app ping messages"])
def test_nginx_read_timeout_survives_a_stall_with_pings(app, ping_app, pings):
    # nginx re-arms proxy_read_timeout on traffic either way through the tunnel: the client's own
    # pings (and the server's pongs) keep it open as well as the server's pings do
    upstream = ping_app if pings == "uvicorn ping frames" else app
    query = {"ping": f"{APP_PING:g}"} if pings == "app ping messages" else {}
    client_ping = float(PING) if pings == "client ping frames" else None
    with NginxProxy(upstream=upstream.url, websocket=True, faults=[hops.ReadTimeout(seconds=TIMEOUT)]) as nginx:
        run = ws_record(ws(nginx, spec=STALL, **query), timeout=CLIENT_TIMEOUT, ping_interval=client_ping,
                        ping_timeout=10.0)
    assert run.outcome is sl.Outcome.COMPLETE, run.summary()
    assert run.token_times[5] - run.token_times[4] > TIMEOUT  # the stall really outlasted the timeout
    assert (run.pings >= 3) == (pings == "app ping messages")


def test_client_leaving_mid_stream_reaches_the_app_through_the_embedded_proxy(app):
    from websockets.sync.client import connect

    rid = "ws-leaves-early"
    with sl.Proxy(upstream=app.url) as proxy:
        with connect(ws(proxy, spec="stall@6=20"), proxy=None, ping_interval=None,
                     additional_headers={"X-Request-ID": rid}) as client:
            got = [client.recv(timeout=10) for _ in range(3)]
        # the client's close frame went through the tunnel; the app finds out on its next send
        line = app.wait_for_log(rf"{rid}.*CLIENT DISCONNECT \(WebSocketDisconnect", timeout=10)
        log = proxy.log
    sent = int(line.text.rsplit("after ", 1)[1].split()[0])
    assert len(got) == 3 and 3 <= sent <= 6, line.text  # it stopped long before the 12 (and the stall)
    assert log.bytes("up") > 0 and log.of("close")[-1].note == "eof"


def test_proxy_for_accepts_websocket_true_with_either_engine():
    with sl.MockLLM() as mock:
        embedded = sl.proxy_for(upstream=mock.url, prefer="embedded", websocket=True)
        assert embedded.kind.startswith("embedded")
    with pytest.raises(ValueError, match="always relays WebSocket upgrades"):
        sl.Proxy(upstream="http://127.0.0.1:9", websocket=False)
