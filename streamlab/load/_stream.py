"""One streaming request, read chunk by chunk and named like ``sl.record`` names it.

This module imports neither locust nor gevent: Locust's worker processes import it after
gevent has patched the standard library (so ``http.client`` on a patched socket yields to
other users while it waits), and a test can call it in a plain thread.

Why ``http.client`` and ``read1()``: it is the least client that streams chunk by chunk
(each ``read1`` returns at most what one read of the socket brought) and it tells a cut from
an end: a chunked body that stops without its final zero-size chunk raises
``http.client.IncompleteRead``. (``readline()`` on a chunked body does not: it goes through
``peek()``, which swallows that error and reports a clean end, i.e. a cut would read as a
silent truncation.) One keep-alive connection per user, as an SDK's pool would keep; a new
one after any stream that did not end cleanly.

Outcomes, in the order ``streamlab._recorder`` checks them (names: ``streamlab.Outcome``)::

    HTTP status >= 400 ...................................... "http error"
    timeout (connect, headers or between two reads) ......... "stalled / timed out"
    transport error, no SSE event yet ....................... "error before stream"
    transport error or an error event after some events ..... "cut mid-stream"
    ended, finish_reason "length" ........................... "truncated by length"
    ended without [DONE] / finish_reason / ``event: done`` .. "silent truncation"
    ended with one .......................................... "complete"

``buffered`` (all tokens in one burst) needs the ITL the stream was meant to have, which a
load test against any URL does not know; a load test does not report it.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Target", "Client", "OUTCOMES"]

# streamlab.Outcome values, spelled here so that this module stays import-light; a test
# pins them to the enum.
COMPLETE = "complete"
TRUNCATED_BY_LENGTH = "truncated by length"
CUT_MID_STREAM = "cut mid-stream"
SILENT_TRUNCATION = "silent truncation"
STALLED = "stalled / timed out"
ERROR_BEFORE_STREAM = "error before stream"
HTTP_ERROR = "http error"
OUTCOMES = (COMPLETE, TRUNCATED_BY_LENGTH, CUT_MID_STREAM, SILENT_TRUNCATION, STALLED,
            ERROR_BEFORE_STREAM, HTTP_ERROR)

_READ = 65536


@dataclass(frozen=True, kw_only=True)
class Target:
    """What each user requests: an OpenAI-style chat stream or a GET of an SSE URL.

        Target.from_url("http://127.0.0.1:8000/v1")             # POST .../v1/chat/completions
        Target.from_url("http://127.0.0.1:8000/s/cut@5/v1")     # the same, with a mock fault spec
        Target.from_url("http://127.0.0.1:8001/sse")            # GET, the app's own SSE route
        Target.from_url("http://127.0.0.1:8001/chat", body={"q": "hi"})   # POST that JSON instead
    """

    scheme: str
    host: str
    port: int
    path: str
    method: str = "GET"
    body: bytes | None = None
    headers: tuple[tuple[str, str], ...] = ()
    route: str = ""          # the name Locust's stats show for these requests

    @classmethod
    def from_url(cls, url: str, *, body: Any = None, model: str = "streamlab-load",
                 prompt: str = "Tell me a story.", headers: dict[str, str] | None = None) -> "Target":
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        path = parts.path or "/"
        hdrs = {"Accept": "text/event-stream", "User-Agent": "streamlab-load"}
        if path.rstrip("/").endswith("/v1") and body is None:   # an OpenAI base URL
            path = path.rstrip("/") + "/chat/completions"
            body = {"model": model, "messages": [{"role": "user", "content": prompt}], "stream": True}
        method = "GET"
        raw = None
        if body is not None:
            method = "POST"
            raw = body if isinstance(body, bytes) else (body.encode() if isinstance(body, str) else
                                                       json.dumps(body).encode())
            hdrs["Content-Type"] = "application/json"
        hdrs.update(headers or {})
        full = path + (f"?{parts.query}" if parts.query else "")
        return cls(scheme=parts.scheme, host=parts.hostname, port=port, path=full, method=method, body=raw,
                   headers=tuple(hdrs.items()), route=path)


def _event_blocks(buffer: bytes) -> tuple[list[bytes], bytes]:
    """Split complete SSE events (ended by a blank line) off ``buffer``."""
    buffer = buffer.replace(b"\r\n", b"\n")
    *done, rest = buffer.split(b"\n\n")
    return [b + b"\n\n" for b in done if b.strip()], rest


def _understand(block: bytes) -> tuple[bool, bool, str | None, str | None]:
    """(content?, terminal?, finish, error) of one SSE event block, as ``sl.app_event`` reads it."""
    event = data = None
    lines = []
    for line in block.decode("utf-8", "replace").split("\n"):
        if line.startswith(":") or not line:
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            event = value
        elif name == "data":
            lines.append(value)
    data = "\n".join(lines) if lines else None
    if data == "[DONE]" or event == "done":
        return False, True, "stop", None
    if event == "error":
        return False, False, None, data or "error event"
    if data is None:
        return False, False, None, None
    if not data.startswith("{"):
        return bool(data), False, None, None   # an app's plain-text token
    try:
        obj = json.loads(data)
    except ValueError:
        return False, False, None, None
    if not isinstance(obj, dict):
        return False, False, None, None
    if obj.get("error"):
        err = obj["error"]
        return False, False, None, str(err.get("message", err) if isinstance(err, dict) else err)
    content, finish = False, None
    for choice in obj.get("choices") or []:
        delta = choice.get("delta") or {}
        if isinstance(delta.get("content"), str) and delta["content"]:
            content = True
        finish = choice.get("finish_reason") or finish
    return content, finish is not None, finish, None


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    name = f"{type(exc).__module__.split('.')[0]}.{type(exc).__name__}"
    return f"{name}: {text[:120]}" if text else name


@dataclass
class Client:
    """One user's connection; ``stream()`` makes one request and returns its record (a dict).

    Record keys: ``start`` (epoch s), ``ttft_ms`` (first content event; None if none),
    ``itl_ms`` (gaps between content events), ``e2e_ms``, ``bytes`` (body bytes), ``events``,
    ``outcome``, ``status``, ``error``. Times are wall clock (a load test runs in real time).
    """

    target: Target
    timeout: float = 30.0
    _conn: http.client.HTTPConnection | None = field(default=None, repr=False)

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            cls = http.client.HTTPSConnection if self.target.scheme == "https" else http.client.HTTPConnection
            self._conn = cls(self.target.host, self.target.port, timeout=self.timeout)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def stream(self) -> dict[str, Any]:
        t = self.target
        start_wall = time.time()
        t0 = time.perf_counter()
        content: list[float] = []
        nbytes = events = 0
        status: int | None = None
        terminal, finish, error, exc = False, None, None, None
        try:
            conn = self._connection()
            conn.request(t.method, t.path, body=t.body, headers=dict(t.headers))
            response = conn.getresponse()
            status = response.status
            if status >= 400:
                nbytes = len(response.read(_READ))
            else:
                buffer = b""
                while True:
                    piece = response.read1(_READ)
                    if not piece:
                        break
                    now = time.perf_counter()
                    nbytes += len(piece)
                    blocks, buffer = _event_blocks(buffer + piece)
                    for block in blocks:
                        events += 1
                        has_content, is_terminal, fin, err = _understand(block)
                        if has_content:
                            content.append(now)
                        if fin:
                            finish = fin
                        terminal = terminal or is_terminal
                        if err is not None and error is None:
                            error = f"error event: {err[:120]}"
                    if error is not None:
                        break
        except Exception as e:  # noqa: BLE001 - every transport failure is an outcome; GreenletExit is not an Exception
            exc = e
        t_end = time.perf_counter()
        if exc is not None or error is not None or not terminal or (status or 0) >= 400:
            self.close()  # never reuse a connection whose stream did not end cleanly
        if status is not None and status >= 400:
            outcome = HTTP_ERROR
            error = error or f"HTTP {status}"
        elif exc is not None:
            error = _describe(exc)
            if isinstance(exc, TimeoutError):
                outcome = STALLED
            else:
                outcome = CUT_MID_STREAM if events else ERROR_BEFORE_STREAM
        elif error is not None:
            outcome = CUT_MID_STREAM  # an error object inside the stream (sl.record: StreamErrorEvent)
        elif finish == "length":
            outcome = TRUNCATED_BY_LENGTH
        elif not terminal:
            outcome = SILENT_TRUNCATION
        else:
            outcome = COMPLETE
        return {
            "start": start_wall,
            "ttft_ms": round((content[0] - t0) * 1000, 3) if content else None,
            "itl_ms": [round((b - a) * 1000, 3) for a, b in zip(content, content[1:])],
            "e2e_ms": round((t_end - t0) * 1000, 3),
            "bytes": nbytes,
            "events": events,
            "tokens": len(content),
            "outcome": outcome,
            "status": status,
            "error": error,
        }
