"""The drill's app for a real gunicorn: the same OpenAI-compatible relay as ``DrillApp``, as WSGI and as ASGI.

    STREAMLAB_MODEL_URL=http://127.0.0.1:PORT/v1 STREAMLAB_DRILL_APP='{"lookup": 4.0}' \\
        gunicorn streamlab.drills._wsgi:app  -k sync -w 2 --timeout 30               # WSGI, sync workers
        gunicorn streamlab.drills._wsgi:asgi -k uvicorn_worker.UvicornWorker ...     # DrillApp itself, ASGI

``app`` reads the model with a sync httpx client, which is right in a sync
worker: the worker serves one request at a time and has nothing else to do
while it waits. What a sync worker cannot do while it streams is tell the
arbiter it is alive (gunicorn 27 notifies between requests only), so
``--timeout`` caps how long a streamed answer may last (``streamlab._appserver``).
``STREAMLAB_DRILL_APP`` holds ``AppConfig``'s fields as JSON; the switches that
mean something in a WSGI relay are honoured (``lookup``, ``heartbeat``,
``x_accel_no``, ``check_finish``, ``max_tokens``, ``history_words``; a sync client
is this app's only way to call the model, so ``blocking`` changes nothing, and a
worker's one request at a time leaves ``shared`` nothing to cross).

Both write their log lines to stderr as ``streamlab.drill-app <line>`` (one
write per line: workers share the pipe), next to gunicorn's own lines, the way
an operator reads them: facts, never a cause.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
import time
from dataclasses import fields
from typing import Any, Iterator

import httpx

from .._timescale import current_time_scale, to_real
from ._app import AppConfig, DrillApp, _Relay

PREFIX = "streamlab.drill-app "
"""What starts every line this app writes (the drill's ``logs("app")`` shows the rest)."""

_JSON = [("Content-Type", "application/json")]


def _say(line: str) -> None:
    sys.stderr.write(PREFIX + line + "\n")
    sys.stderr.flush()


def config_from_env() -> AppConfig:
    raw = os.environ.get("STREAMLAB_DRILL_APP", "{}")
    try:
        values = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"STREAMLAB_DRILL_APP is not JSON: {raw!r}") from exc
    known = {f.name for f in fields(AppConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"STREAMLAB_DRILL_APP: unknown fields {unknown}; known: {sorted(known)}")
    return AppConfig(**values)


def _model_url() -> str:
    url = os.environ.get("STREAMLAB_MODEL_URL")
    if not url:
        raise RuntimeError("STREAMLAB_MODEL_URL is not set (the model's base URL, http://127.0.0.1:PORT/v1)")
    return url.rstrip("/")


_ids = 0
_ids_lock = threading.Lock()


def _error(start_response, status: str, message: str, param: str | None = None) -> list[bytes]:
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error", "param": param,
                                 "code": None}}).encode()
    start_response(status, _JSON + [("Content-Length", str(len(body)))])
    return [body]


def app(environ: dict, start_response: Any) -> Any:
    """WSGI: ``POST /v1/chat/completions`` relayed to the model with a sync client; ``GET /health``."""
    global _ids
    path, method = environ.get("PATH_INFO", "/"), environ.get("REQUEST_METHOD", "GET")
    if path in ("/health", "/healthz"):
        body = b'{"status": "ok"}'
        start_response("200 OK", _JSON + [("Content-Length", str(len(body)))])
        return [body]
    if path not in ("/v1/chat/completions", "/chat/completions") or method != "POST":
        return _error(start_response, "404 Not Found", f"no route {method} {path}")
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = json.loads(environ["wsgi.input"].read(length))
        messages = list(body["messages"])
    except (ValueError, KeyError, TypeError):
        return _error(start_response, "400 Bad Request", "body must be JSON with messages", "messages")
    with _ids_lock:
        _ids += 1
        rid = f"{_ids} (pid:{os.getpid()})"  # a worker's own count: two workers each have a req 1
    cfg = config_from_env()
    user = body.get("user") or "anonymous"
    asked = " ".join(str(m.get("content", "")) for m in messages if m.get("role") == "user")[:60]
    _say(f"req {rid} user={user}: question {asked!r}")
    time.sleep(to_real(cfg.lookup))  # the user lookup
    if cfg.history_words:
        messages = [{"role": "user", "content": " ".join(["earlier"] * cfg.history_words)}] + messages
    upstream = {"model": body.get("model", "gpt-4o-mini"), "messages": messages, "stream": bool(body.get("stream"))}
    if cfg.max_tokens is not None:
        upstream["max_tokens"] = cfg.max_tokens
    words = sum(len(str(m.get("content", "")).split()) for m in messages)
    _say(f"req {rid}: calling the model, {len(messages)} message(s), {words} prompt words"
         + (f", max_tokens {cfg.max_tokens}" if cfg.max_tokens is not None else ""))
    t0 = time.perf_counter()
    client = httpx.Client(timeout=None)
    if not upstream["stream"]:
        try:
            r = client.post(_model_url() + "/chat/completions", json=upstream)
        finally:
            client.close()
        _say(f"req {rid}: model answered {r.status_code} (stream=false) after {_since(t0):.1f} s")
        start_response(f"{r.status_code} {r.reason_phrase}", _JSON + [("Content-Length", str(len(r.content)))])
        return [r.content]
    stream = client.stream("POST", _model_url() + "/chat/completions", json=upstream)
    r = stream.__enter__()
    if r.status_code != 200:
        data = r.read()
        stream.__exit__(None, None, None)
        client.close()
        _say(f"req {rid}: model answered {r.status_code} after {_since(t0):.1f} s: "
             f"{data[:160].decode('utf-8', 'replace')}")
        start_response(f"{r.status_code} {r.reason_phrase}", _JSON + [("Content-Length", str(len(data)))])
        return [data]
    headers = [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")]
    if cfg.x_accel_no:
        headers.append(("X-Accel-Buffering", "no"))
    start_response("200 OK", headers)
    return _relay(rid, cfg, client, stream, r, t0)


def _relay(rid: str, cfg: AppConfig, client: httpx.Client, stream: Any, r: httpx.Response, t0: float) -> Iterator[bytes]:
    state = _Relay()
    chunks = _chunks(r, cfg.heartbeat, state)
    ended = "the model's stream ended"
    try:
        for chunk in chunks:
            yield chunk
        if cfg.check_finish and state.finish is None and not state.error:
            _say(f"req {rid}: the model's stream ended without finish_reason: error event sent")
            yield (b'data: {"error": {"message": "the answer ended without finish_reason", "type": '
                   b'"incomplete_stream", "param": null, "code": null}}\n\n')
    except GeneratorExit:
        ended = "the response was closed (gunicorn closed the body: the client is gone)"
        raise
    except BaseException as exc:  # SystemExit from gunicorn's SIGABRT handler, among others
        ended = f"the relay stopped: {type(exc).__name__} raised in the worker"
        raise
    finally:
        chunks.close()
        stream.__exit__(None, None, None)
        client.close()
        _say(f"req {rid}: {ended} after {_since(t0):.1f} s: {state.chunks} chunks relayed, finish_reason "
             f"{state.finish}, [DONE] {'yes' if state.done else 'no'}"
             + (f", read error {state.error}" if state.error else ""))


def _chunks(r: httpx.Response, beat: float | None, state: _Relay) -> Iterator[bytes]:
    """The model's raw chunks; with ``beat``, an SSE comment whenever none came for that long."""
    if not beat:
        try:
            for chunk in r.iter_raw():
                state.feed(chunk)
                yield chunk
        except httpx.HTTPError as exc:
            state.error = type(exc).__name__
        return
    box: queue.Queue = queue.Queue()
    stop = threading.Event()

    def read() -> None:
        try:
            for chunk in r.iter_raw():
                if stop.is_set():
                    return
                box.put(chunk)
        except httpx.HTTPError as exc:
            box.put(exc)
        except Exception as exc:  # the response closed under the reader (the relay ended first)
            box.put(exc)
        box.put(None)

    reader = threading.Thread(target=read, name="drill-app-reader", daemon=True)
    reader.start()
    try:
        while True:
            try:
                item = box.get(timeout=to_real(beat))
            except queue.Empty:
                yield b": keep-alive\n\n"
                continue
            if item is None:
                return
            if isinstance(item, BaseException):
                state.error = type(item).__name__
                return
            state.feed(item)
            yield item
    finally:
        stop.set()


def _since(t0: float) -> float:
    return (time.perf_counter() - t0) / current_time_scale()


class _EchoedApp(DrillApp):
    """``DrillApp`` whose log lines also go to stderr (a subprocess's memory is not the drill's)."""

    def _say(self, line: str) -> None:
        super()._say(line)
        _say(line)


def _asgi() -> Any:
    if not os.environ.get("STREAMLAB_MODEL_URL"):
        return None
    return _EchoedApp(model_url=_model_url(), config=config_from_env())


asgi = _asgi()
"""The ASGI ``DrillApp`` (under ``-k uvicorn_worker.UvicornWorker``: an event loop that notifies the arbiter)."""
