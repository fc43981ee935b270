"""The model-free ticker as a plain WSGI app, for gunicorn's sync workers (no LangChain to import).

    gunicorn streamlab.apps.ticker_wsgi:app -k sync -w 2 --timeout 30

    GET /ticks?n=40&every=0.05   n SSE events ``data: tick <i>``, one every ``every`` scenario s
                                 (``time.sleep``: a sync worker does nothing else meanwhile)
    GET /health

What a sync worker does with a streamed body is described in ``streamlab.apps.graph_wsgi``.
"""

from __future__ import annotations

import json
import os
import time
from urllib.parse import parse_qs

from .._timescale import to_real
from ._common import log, request_id, sse_frame, traced_sync

# gunicorn's sync worker closes the body iterator unfinished after a failed write
# (EPIPE/ECONNRESET, which it only logs at debug level): the client is gone.
CLOSED = "CLIENT DISCONNECT (write failed, gunicorn closed the generator: GeneratorExit)"
SSE_HEADERS = [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache"), ("X-Accel-Buffering", "no")]


def health(start_response) -> list[bytes]:
    body = json.dumps({"ok": True, "pid": os.getpid()}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def not_found(start_response) -> list[bytes]:
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"not found"]


def sse_body(rid: str, path: str, texts, start_response):
    """Start an SSE response and return its body: one ``token`` event per text, then ``done``."""
    start_response("200 OK", SSE_HEADERS + [("X-Request-ID", rid)])
    log(rid, path, f"streaming from sync worker pid {os.getpid()}")

    def frames():
        for text in traced_sync(rid, path, texts, closed=CLOSED):
            yield sse_frame(text, event="token").encode()
        yield sse_frame("[DONE]", event="done").encode()

    return frames()


def request_of(environ) -> tuple[str, dict[str, str], dict[str, str]]:
    """(request id, lower-case headers, query) of a WSGI request."""
    headers = {k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")}
    query = {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    return request_id(headers), headers, query


def _ticks(n: int, every: float):
    for i in range(n):
        time.sleep(to_real(every))
        yield f"tick {i}"


def app(environ, start_response):
    rid, _headers, q = request_of(environ)
    path = environ.get("PATH_INFO", "/")
    if path == "/health":
        return health(start_response)
    if path == "/ticks":
        return sse_body(rid, path, _ticks(int(q.get("n", 40)), float(q.get("every", 0.05))), start_response)
    return not_found(start_response)
