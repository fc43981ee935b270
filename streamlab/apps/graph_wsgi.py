"""A plain WSGI app that streams a LangGraph run as a generator: the "sync multi-worker WSGI" of article "LangGraph scaling".

    gunicorn streamlab.apps.graph_wsgi:app -k sync -w 2 --timeout 30
                                             env: STREAMLAB_MODEL_URL=http://127.0.0.1:PORT/v1

    POST /graph?mode=messages&spec=  {"input": "..."}  the graph of ``streamlab.apps.graph``
                                     (sync node), ``graph.stream()`` returned as the WSGI body:
                                     one ``token`` event per item, then ``done``
    GET  /health

What a sync worker does with a streamed body, on gunicorn 27 (tests/test_appserver.py,
with the model-free twin ``streamlab.apps.ticker_wsgi``):

* one worker serves one request at a time: with ``-w 2`` the third stream waits
  in the listen backlog until a stream ends;
* the worker's heartbeat is only sent between requests, so ``--timeout`` is the
  longest a streamed response can last: the arbiter logs ``WORKER TIMEOUT``,
  SystemExit is raised inside the generator (logged here as ``WORKER EXIT``), the
  client sees the stream cut;
* a client that goes away is noticed at the next write; gunicorn swallows the
  ``BrokenPipeError`` (logged only at ``--log-level debug``: "Ignoring EPIPE") and
  closes the generator, which this app logs as ``CLIENT DISCONNECT (write failed, ...)``.
"""

from __future__ import annotations

import json
import os

from ._common import chat_model
from .graph import item_text, sync_graph
from .ticker_wsgi import health, not_found, request_of, sse_body

if os.environ.get("STREAMLAB_MODEL_URL"):  # a WSGI app has no lifespan: warm the model client on import
    chat_model()


def _graph_texts(body: dict, spec: str | None, mode: str):
    payload = {"input": body.get("input") or body.get("q") or "Explain LangGraph streaming"}
    for item in sync_graph.stream(payload, {"configurable": {"spec": spec}}, stream_mode=mode):
        text = item_text(item, mode)
        if text:
            yield text


def app(environ, start_response):
    rid, headers, q = request_of(environ)
    path = environ.get("PATH_INFO", "/")
    if path == "/health":
        return health(start_response)
    if path != "/graph":
        return not_found(start_response)
    length = int(environ.get("CONTENT_LENGTH") or 0)
    raw = environ["wsgi.input"].read(length) if length else b""
    texts = _graph_texts(json.loads(raw) if raw else {}, q.get("spec") or headers.get("x-streamlab"),
                         q.get("mode", "messages"))
    return sse_body(rid, path, texts, start_response)
