"""A plain WSGI app that streams a LangGraph run as a generator: the "sync multi-worker WSGI" of seeds/004.

    gunicorn streamlab.apps.graph_wsgi:app -k sync -w 2 --timeout 30
                                             env: STREAMLAB_MODEL_URL=http://127.0.0.1:PORT/v1

    POST /graph?mode=messages&spec=  {"input": "..."}  the graph of ``streamlab.apps.graph``
                                     (sync node), ``graph.stream()`` returned as the WSGI body
    GET  /ticks?n=40&every=0.05      model-free: n SSE events, one every ``every`` scenario s
    GET  /health

What a sync worker does with a streamed body, on gunicorn 27 (see tests/test_appserver.py):

* one worker serves one request at a time: with ``-w 2`` the third stream waits
  in the listen backlog until a stream ends;
* the worker's heartbeat is only sent between requests, so ``--timeout`` is the
  longest a streamed response can last: the arbiter logs ``WORKER TIMEOUT``,
  the worker logs its abort, the client sees the stream cut;
* a client that goes away is noticed at the next write; gunicorn swallows the
  ``BrokenPipeError`` (logged only at ``--log-level debug``: "Ignoring EPIPE") and
  closes the generator, which this app logs as ``CLIENT DISCONNECT (GeneratorExit ...)``.
"""

from __future__ import annotations

import json
import os
import time
from urllib.parse import parse_qs

from .._timescale import to_real
from ._common import log, request_id, sse_frame, traced_sync

SSE_HEADERS = [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache"), ("X-Accel-Buffering", "no")]


def _graph_texts(body: dict, spec: str | None, mode: str):
    from .graph import item_text, sync_graph  # LangGraph and LangChain load on first use

    payload = {"input": body.get("input") or body.get("q") or "Explain LangGraph streaming"}
    for item in sync_graph.stream(payload, {"configurable": {"spec": spec}}, stream_mode=mode):
        text = item_text(item, mode)
        if text:
            yield text


def _ticks(n: int, every: float):
    for i in range(n):
        time.sleep(to_real(every))
        yield f"tick {i}"


def app(environ, start_response):
    headers = {k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")}
    rid = request_id(headers)
    q = {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    path = environ.get("PATH_INFO", "/")
    if path == "/health":
        body = json.dumps({"ok": True, "pid": os.getpid()}).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]
    if path == "/graph":
        length = int(environ.get("CONTENT_LENGTH") or 0)
        raw = environ["wsgi.input"].read(length) if length else b""
        texts = _graph_texts(json.loads(raw) if raw else {}, q.get("spec") or headers.get("x-streamlab"),
                             q.get("mode", "messages"))
    elif path == "/ticks":
        texts = _ticks(int(q.get("n", 40)), float(q.get("every", 0.05)))
    else:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found"]
    start_response("200 OK", SSE_HEADERS + [("X-Request-ID", rid)])
    log(rid, path, f"streaming from sync worker pid {os.getpid()}")

    def frames():
        for text in traced_sync(rid, path, texts):
            yield sse_frame(text, event="token").encode()
        yield sse_frame("[DONE]", event="done").encode()

    return frames()
