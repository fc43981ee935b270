"""HTTP/2 toward the client: real nginx ``listen ... ssl http2`` in front of the mock, read by httpx.

Pins what a cut looks like to an h2 client next to an HTTP/1.1 client of the same nginx:
over h2 a model cut (FIN or RST) or a proxy read timeout mid-stream is a *stream reset*
(``RST_STREAM`` INTERNAL_ERROR, httpx ``RemoteProtocolError(<StreamReset ... error_code:2 ...>)``)
and the connection lives on; over HTTP/1.1 it is an incomplete chunked read and the
connection is gone. The certificate is made at start and verified normally (no
``verify=False`` anywhere).
"""

from __future__ import annotations

import os
import ssl
import time

import httpx
import pytest

import streamlab as sl
from streamlab import hops
from streamlab._nginx import NginxProxy, nginx_available, nginx_conf, nginx_has_http2
from streamlab._tls import client_context, make_self_signed, spki_fingerprint, tls_backend

pytestmark = [
    pytest.mark.usefixtures("clean_slate"),
    pytest.mark.skipif(not nginx_available(), reason="nginx is not installed"),
    pytest.mark.skipif(not nginx_has_http2(), reason="this nginx has no --with-http_v2_module"),
    pytest.mark.skipif(tls_backend() is None, reason="neither the cryptography package nor openssl"),
]

BODY = {"model": "streamlab-mock", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
H1_CUT = "peer closed connection without sending complete message body (incomplete chunked read)"


def _stream(client: httpx.Client, url: str) -> tuple[str, bytes, BaseException | None]:
    """POST a streaming completion; (http_version, bytes read, the exception that ended it or None)."""
    got = b""
    version = "?"
    try:
        with client.stream("POST", url + "/v1/chat/completions", json=BODY) as response:
            version = response.http_version
            assert response.status_code == 200
            for chunk in response.iter_raw():
                got += chunk
    except httpx.HTTPError as exc:
        return version, got, exc
    return version, got, None


def _records(proxy: NginxProxy, n: int) -> list[dict]:
    """nginx's access-log records once there are ``n`` (a line is written when nginx finalizes a request)."""
    deadline = time.monotonic() + 5
    while True:
        proxy.log  # noqa: B018 - reads the access log
        if len(proxy._records) >= n or time.monotonic() > deadline:
            return proxy._records


def _log_line(proxy: NginxProxy, text: str, n: int = 1) -> list[str]:
    """nginx's error-log lines with ``text`` once there are ``n`` (stderr is read by a thread)."""
    deadline = time.monotonic() + 5
    while len(lines := proxy.log_lines(text)) < n and time.monotonic() < deadline:
        time.sleep(0.02)
    return lines


@pytest.fixture
def mock():
    with sl.MockLLM(tokens=20, itl=0.01) as server:
        yield server


def test_h2_is_negotiated_and_the_certificate_verifies(mock):
    with NginxProxy(upstream=mock.url, http2=True) as proxy:
        assert proxy.url == proxy.https_url and proxy.url.startswith("https://127.0.0.1:")
        assert os.path.dirname(proxy.ca_path) == proxy.workdir  # key and cert live in nginx's temp dir
        assert oct(os.stat(proxy._key_path).st_mode & 0o777) == "0o600"
        assert f"listen 127.0.0.1:{proxy.port} ssl http2;" in proxy.config
        with httpx.Client(http2=True, verify=proxy.ssl_context()) as client:
            version, body, error = _stream(client, proxy.url)
        assert (version, error) == ("HTTP/2", None) and body.rstrip().endswith(b"data: [DONE]")
        with httpx.Client(verify=proxy.ssl_context(http2=False)) as client:  # the same port speaks 1.1 too
            assert client.get(proxy.url + "/v1/models").http_version == "HTTP/1.1"
        with httpx.Client(http2=True) as client, pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY"):
            client.get(proxy.url + "/v1/models")  # the system CAs do not trust it: only ca_path does
        workdir = proxy.workdir
    assert not os.path.exists(workdir)  # the key goes with nginx


def test_a_model_cut_is_a_stream_reset_over_h2_and_an_incomplete_chunked_read_over_h1(mock):
    with NginxProxy(upstream=mock.url, http2=True) as proxy:
        with httpx.Client(http2=True, verify=proxy.ssl_context()) as h2:
            version, body, error = _stream(h2, proxy.url + "/s/cut@5")
            assert version == "HTTP/2" and isinstance(error, httpx.RemoteProtocolError)
            assert "StreamReset" in str(error) and "error_code:2" in str(error)  # RST_STREAM INTERNAL_ERROR
            assert body.count(b"data: ") == 6  # role chunk + 5 tokens got through before the reset
            # the connection survives a stream reset: the next request reuses it
            assert _stream(h2, proxy.url)[2] is None
        with httpx.Client(verify=proxy.ssl_context(http2=False)) as h1:
            version, body, error = _stream(h1, proxy.url + "/s/cut@5")
            assert version == "HTTP/1.1" and isinstance(error, httpx.RemoteProtocolError)
            assert str(error) == H1_CUT and body.count(b"data: ") == 6
        # an RST from the model looks the same to the client as a FIN: nginx decides what the client sees
        with httpx.Client(http2=True, verify=proxy.ssl_context()) as h2:
            assert "StreamReset" in str(_stream(h2, proxy.url + "/s/reset@5")[2])
        protocols = [r["protocol"] for r in _records(proxy, 4)]
        assert protocols == ["HTTP/2.0", "HTTP/2.0", "HTTP/1.1", "HTTP/2.0"]  # nginx saw what httpx says
        assert len(_log_line(proxy, "upstream prematurely closed connection", 2)) == 2
        assert len(_log_line(proxy, "Connection reset by peer) while reading upstream")) == 1


def test_h2_keeps_the_connection_after_a_reset_h1_loses_it(mock):
    """nginx's access log ``$connection``: one TCP connection for cut + next request over h2, two over 1.1."""
    with NginxProxy(upstream=mock.url, http2=True) as proxy:
        for http2 in (True, False):
            with httpx.Client(http2=http2, verify=proxy.ssl_context(http2=http2)) as client:
                assert _stream(client, proxy.url + "/s/cut@3")[2] is not None
                assert _stream(client, proxy.url)[2] is None
        _records(proxy, 4)
        conns = [e.conn for e in proxy.log.of("open")]
        assert len(conns) == 4
        assert conns[0] == conns[1] and conns[2] != conns[3], conns


def test_a_proxy_read_timeout_over_h2_is_a_stream_reset_too(mock):
    with NginxProxy(upstream=mock.url, http2=True, faults=[hops.ReadTimeout(seconds=1.0)]) as proxy:
        with httpx.Client(http2=True, verify=proxy.ssl_context(), timeout=10) as h2:
            start = time.perf_counter()
            version, body, error = _stream(h2, proxy.url + "/s/stall@4=3")
            took = time.perf_counter() - start
        assert version == "HTTP/2" and isinstance(error, httpx.RemoteProtocolError)
        assert "StreamReset" in str(error) and body.count(b"data: ") == 5
        assert 1.0 - 0.3 - 0.05 < took < 2.5  # nginx's timer may fire up to 0.3 s early (TIMER_SLACK)
        assert _log_line(proxy, "upstream timed out (110: Connection timed out) while reading upstream")
        with httpx.Client(verify=proxy.ssl_context(http2=False), timeout=10) as h1:
            assert str(_stream(h1, proxy.url + "/s/stall@4=3")[2]) == H1_CUT


def test_tls_settings_are_checked_and_written():
    with pytest.raises(ValueError, match="http2 toward the client needs tls"):
        nginx_conf(upstream="http://127.0.0.1:1", port=2, http2=True)
    conf = nginx_conf(upstream="http://127.0.0.1:1", port=2, tls=("/d/cert.pem", "/d/key.pem"))
    assert "listen 127.0.0.1:2 ssl;" in conf and "ssl_certificate_key /d/key.pem;" in conf
    assert "listen 127.0.0.1:2;" in nginx_conf(upstream="http://127.0.0.1:1", port=2)  # unchanged default
    proxy = NginxProxy(upstream="http://127.0.0.1:1", tls=True)
    assert proxy.tls and not proxy.http2
    with pytest.raises(RuntimeError, match="listens without TLS"):
        NginxProxy(upstream="http://127.0.0.1:1").https_url  # noqa: B018


def test_the_certificate_names_loopback_only(tmp_path):
    cert, key = make_self_signed(str(tmp_path))
    ctx = client_context(cert)
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    info = ssl._ssl._test_decode_cert(cert)
    assert dict(x[0] for x in info["subject"])["commonName"] == "127.0.0.1"
    assert set(info["subjectAltName"]) == {("IP Address", "127.0.0.1"), ("IP Address", "0:0:0:0:0:0:0:1"),
                                           ("DNS", "localhost")}


def test_the_spki_fingerprint_is_what_chromium_pins(tmp_path):
    """``--ignore-certificate-errors-spki-list=<fingerprint>``: base64 SHA-256 of the DER public key."""
    import base64
    import hashlib
    import shutil
    import subprocess

    cert, _ = make_self_signed(str(tmp_path))
    fingerprint = spki_fingerprint(cert)
    assert len(base64.b64decode(fingerprint)) == 32
    if shutil.which("openssl"):
        pub = subprocess.run(["openssl", "x509", "-in", cert, "-pubkey", "-noout"], capture_output=True,
                             check=True).stdout
        der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "DER"], input=pub, capture_output=True,
                             check=True).stdout
        assert fingerprint == base64.b64encode(hashlib.sha256(der).digest()).decode()


def test_proxy_for_gives_h2_nginx_or_says_why_not(mock):
    proxy = sl.proxy_for(upstream=mock.url, http2=True)
    assert isinstance(proxy, NginxProxy) and proxy.http2
    with pytest.raises(RuntimeError, match="needs real nginx .asked for.; the embedded proxy speaks plain HTTP/1.1"):
        sl.proxy_for(upstream=mock.url, http2=True, prefer="embedded")
    with pytest.raises(RuntimeError, match="needs real nginx .nginx has no directive"):
        sl.proxy_for(upstream=mock.url, tls=True, faults=[hops.CutAfterBytes(nbytes=100)])
