"""``worker_connections=`` of real nginx (``NginxProxy``, ``nginx_conf``, ``proxy_for``).

nginx counts every connection of its worker against ``worker_connections``: the listening
socket, the channel to the master process, each client connection and each connection to
the upstream. One proxied stream holds two, so ``worker_connections=8`` leaves room for
(8 - 2) // 2 = 3 concurrent streams. Measured here over real sockets: the streams past that
are not queued; nginx logs "worker_connections are not enough" and the client gets either a
500 (accepted, but no connection left toward the upstream) or a reset before any response.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

import streamlab as sl
from streamlab._nginx import NginxProxy, nginx_available, nginx_conf

pytestmark = pytest.mark.skipif(not nginx_available(), reason="nginx is not installed")

BODY = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
LIMIT = 8
FIT = (LIMIT - 2) // 2  # listening socket + master channel, then two connections per stream


def _burst(proxy, n: int) -> list:
    """n streams started at once (each ~1 s long, so they all overlap)."""
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda _i: sl.read_stream(proxy.url + "/v1/chat/completions", method="POST",
                                                        json=BODY, timeout=10), range(n)))


def test_worker_connections_default_is_1024_and_is_written():
    assert "events { worker_connections 1024; }" in nginx_conf(upstream="http://127.0.0.1:1", port=2)
    assert "events { worker_connections 8; }" in nginx_conf(upstream="http://127.0.0.1:1", port=2,
                                                            worker_connections=8)


@pytest.mark.parametrize("bad", [0, -1, 1.5, "8", True, None])
def test_worker_connections_rejects_what_nginx_would_not_take(bad):
    with pytest.raises(ValueError, match="worker_connections must be an int >= 1"):
        nginx_conf(upstream="http://127.0.0.1:1", port=2, worker_connections=bad)
    with pytest.raises(ValueError, match="worker_connections"):
        NginxProxy(upstream="http://127.0.0.1:1", worker_connections=bad)


def test_proxy_for_embedded_ignores_worker_connections():
    proxy = sl.proxy_for(upstream="http://127.0.0.1:1", prefer="embedded", worker_connections=8)
    assert proxy.kind.startswith("embedded proxy")


def test_streams_past_worker_connections_fail_fast_and_the_rest_complete():
    with sl.MockLLM(tokens=20, itl=0.05) as mock, NginxProxy(upstream=mock, worker_connections=LIMIT) as proxy:
        within = _burst(proxy, FIT)
        assert Counter(r.outcome for r in within) == {"complete": FIT}
        assert proxy.log_lines("worker_connections are not enough") == []

        over = _burst(proxy, FIT + 3)
        outcomes = Counter(r.outcome for r in over)
        assert outcomes["complete"] == FIT, outcomes
        failed = [r for r in over if r.outcome != "complete"]
        assert len(failed) == 3
        # not queued and not hung: a 500 from nginx, or no HTTP response at all (reset/closed)
        assert all((r.outcome == "http error" and r.status == 500) or r.outcome == "error" for r in failed), failed
        assert proxy.log_lines("worker_connections are not enough")

        after = _burst(proxy, FIT)  # nginx itself is fine once the burst is over
        assert Counter(r.outcome for r in after) == {"complete": FIT}
