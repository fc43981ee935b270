"""The app under drill: a small OpenAI-compatible ASGI relay in front of the model, with switchable flaws.

It is the "app" box of every drill (client -> edge -> app -> model). Each flaw is
a real one, not a simulation of its symptom: ``blocking`` reads the model with a
sync httpx client inside ``async def`` (the event loop really stops),
``shared`` keeps the request's messages in one dict for every request (two users
really cross), ``history_words`` really prepends a long history (the model
really rejects it), ``max_tokens`` is really sent. Each fix is the other value
of the same switch (``heartbeat``, ``x_accel_no``, ``check_finish``).

What it logs (``log``: lines a real app would write, ``hoplog``: reads and
writes for ``sl.plot_hops``) names facts, never a flaw or a cause.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx

from .._timeline import HopLog
from .._timescale import to_real


@dataclass(frozen=True, kw_only=True)
class AppConfig:
    """The app's switches (scenario seconds). The defaults are a correct app."""

    blocking: bool = False          # sync httpx client inside async def
    shared: bool = False            # one dict for every request's messages
    max_tokens: int | None = None   # sent to the model with every request
    history_words: int = 0          # words of past conversation prepended to every request
    heartbeat: float | None = None  # an SSE comment after this long without a model chunk
    x_accel_no: bool = False        # X-Accel-Buffering: no on the event stream
    check_finish: bool = False      # an error event when the model's stream ends without finish_reason
    lookup: float = 4.0             # the user lookup every request awaits before calling the model


class DrillApp:
    """ASGI app: ``POST /v1/chat/completions`` relayed to ``model_url``; ``GET /health``."""

    def __init__(self, *, model_url: str, config: AppConfig) -> None:
        self.model_url = model_url.rstrip("/")
        self.config = config
        self.log: list[str] = []
        self.hoplog = HopLog("app")
        self._state: dict[str, Any] = {}
        self._ids = 0
        self._lock = threading.Lock()
        self._t0 = time.perf_counter()

    def _say(self, line: str) -> None:
        with self._lock:
            self.log.append(f"[{(time.perf_counter() - self._t0) / _scale():7.1f} s] {line}")

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] in ("/health", "/healthz"):
            await _json(send, 200, {"status": "ok"})
            return
        if scope["path"] not in ("/v1/chat/completions", "/chat/completions") or scope["method"] != "POST":
            await _json(send, 404, {"error": {"message": f"no route {scope['method']} {scope['path']}",
                                              "type": "invalid_request_error", "param": None, "code": None}})
            return
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        try:
            body = json.loads(raw)
            messages = list(body["messages"])
        except (ValueError, KeyError, TypeError):
            await _json(send, 400, {"error": {"message": "body must be JSON with messages", "type":
                                              "invalid_request_error", "param": "messages", "code": None}})
            return
        with self._lock:
            self._ids += 1
            rid = self._ids
        conn = rid
        self.hoplog.add("open", conn=conn)
        cfg = self.config
        user = body.get("user") or "anonymous"
        asked = " ".join(str(m.get("content", "")) for m in messages if m.get("role") == "user")[:60]
        self._say(f"req {rid} user={user}: question {asked!r}")
        if cfg.shared:
            self._state["messages"] = messages
            await asyncio.sleep(to_real(cfg.lookup))
            messages = self._state["messages"]
        else:
            await asyncio.sleep(to_real(cfg.lookup))
        if cfg.history_words:
            messages = [{"role": "user", "content": " ".join(["earlier"] * cfg.history_words)}] + messages
        upstream = {"model": body.get("model", "gpt-4o-mini"), "messages": messages,
                    "stream": bool(body.get("stream"))}
        if cfg.max_tokens is not None:
            upstream["max_tokens"] = cfg.max_tokens
        prompt_words = sum(len(str(m.get("content", "")).split()) for m in messages)
        self._say(f"req {rid}: calling the model, {len(messages)} message(s), {prompt_words} prompt words"
                  + (f", max_tokens {cfg.max_tokens}" if cfg.max_tokens is not None else ""))
        t0 = time.perf_counter()
        if not upstream["stream"]:
            await self._plain(rid, upstream, send, t0)
        elif cfg.blocking:
            await self._relay_blocking(rid, upstream, send, t0)
        else:
            await self._relay(rid, upstream, send, t0)
        self.hoplog.add("close", conn=conn, note="complete")

    # -- the three ways of calling the model -------------------------------------------
    async def _plain(self, rid: int, upstream: dict, send: Any, t0: float) -> None:
        if self.config.blocking:
            with httpx.Client(timeout=None) as client:
                r = client.post(self.model_url + "/chat/completions", json=upstream)
        else:
            async with httpx.AsyncClient(timeout=None) as client:
                r = await client.post(self.model_url + "/chat/completions", json=upstream)
        self._say(f"req {rid}: model answered {r.status_code} (stream=false) after {self._since(t0):.1f} s")
        await send({"type": "http.response.start", "status": r.status_code,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": r.content})

    async def _relay(self, rid: int, upstream: dict, send: Any, t0: float) -> None:
        async with httpx.AsyncClient(timeout=None) as client:
            async with client.stream("POST", self.model_url + "/chat/completions", json=upstream) as r:
                if r.status_code != 200:
                    await self._error(rid, r.status_code, await r.aread(), send, t0)
                    return
                await self._head(rid, send)
                state = _Relay()
                it = r.aiter_raw().__aiter__()
                beat = self.config.heartbeat
                pending: asyncio.Future | None = None
                while True:
                    if pending is None:
                        pending = asyncio.ensure_future(it.__anext__())
                    done, _ = await asyncio.wait({pending}, timeout=to_real(beat) if beat else None)
                    if not done:
                        await self._send(rid, send, b": keep-alive\n\n")
                        continue
                    try:
                        chunk = pending.result()
                    except StopAsyncIteration:
                        break
                    except httpx.HTTPError as exc:
                        state.error = f"{type(exc).__name__}"
                        break
                    finally:
                        pending = None if done else pending
                    state.feed(chunk)
                    await self._send(rid, send, chunk)
                await self._end(rid, state, send, t0)

    async def _relay_blocking(self, rid: int, upstream: dict, send: Any, t0: float) -> None:
        # the flaw: a sync client in async def -- every read below stops the event loop
        with httpx.Client(timeout=None) as client:
            with client.stream("POST", self.model_url + "/chat/completions", json=upstream) as r:
                if r.status_code != 200:
                    await self._error(rid, r.status_code, r.read(), send, t0)
                    return
                await self._head(rid, send)
                state = _Relay()
                try:
                    for chunk in r.iter_raw():
                        state.feed(chunk)
                        await self._send(rid, send, chunk)
                except httpx.HTTPError as exc:
                    state.error = type(exc).__name__
                await self._end(rid, state, send, t0)

    # -- pieces ----------------------------------------------------------------------
    async def _head(self, rid: int, send: Any) -> None:
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        if self.config.x_accel_no:
            headers.append((b"x-accel-buffering", b"no"))
        await send({"type": "http.response.start", "status": 200, "headers": headers})

    async def _send(self, rid: int, send: Any, data: bytes) -> None:
        self.hoplog.add("out", len(data), conn=rid)
        await send({"type": "http.response.body", "body": data, "more_body": True})

    async def _error(self, rid: int, status: int, body: bytes, send: Any, t0: float) -> None:
        text = body[:160].decode("utf-8", "replace")
        self._say(f"req {rid}: model answered {status} after {self._since(t0):.1f} s: {text}")
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})

    async def _end(self, rid: int, state: "_Relay", send: Any, t0: float) -> None:
        if self.config.check_finish and state.finish is None and not state.error:
            self._say(f"req {rid}: the model's stream ended without finish_reason: error event sent")
            await self._send(rid, send, b'data: {"error": {"message": "the answer ended without finish_reason",'
                                        b' "type": "incomplete_stream", "param": null, "code": null}}\n\n')
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        self._say(f"req {rid}: model stream ended after {self._since(t0):.1f} s: {state.chunks} chunks relayed, "
                  f"finish_reason {state.finish}, [DONE] {'yes' if state.done else 'no'}"
                  + (f", read error {state.error}" if state.error else ""))

    def _since(self, t0: float) -> float:
        return (time.perf_counter() - t0) / _scale()


class _Relay:
    """What the app saw of the model's stream: chunks, finish_reason, [DONE]."""

    def __init__(self) -> None:
        self.buf = ""
        self.chunks = 0
        self.finish: str | None = None
        self.done = False
        self.error: str | None = None

    def feed(self, chunk: bytes) -> None:
        self.buf += chunk.decode("utf-8", "replace")
        *blocks, self.buf = self.buf.split("\n\n")
        for block in blocks:
            for line in block.splitlines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    self.done = True
                    continue
                self.chunks += 1
                try:
                    for choice in json.loads(data).get("choices") or []:
                        self.finish = choice.get("finish_reason") or self.finish
                except (ValueError, AttributeError):
                    pass


async def _json(send: Any, status: int, obj: Any) -> None:
    body = json.dumps(obj).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _scale() -> float:
    from .._timescale import current_time_scale

    return current_time_scale()


class H11Server:
    """The app under uvicorn's h11 protocol, in a thread: what an h11 server sends an HTTP/1.0 peer.

    uvicorn's default protocol (httptools, ``ThreadedASGIServer``) frames every body
    without a Content-Length as chunked, whatever the request's version; h11 answers an
    HTTP/1.0 request (nginx's default ``proxy_http_version``) with a close-delimited
    body, which nginx's ``proxy_buffering`` holds in full buffers. Used by the drill
    whose edge buffers. (``ThreadedASGIServer`` has no protocol option, hence this class.)
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self._thread: threading.Thread | None = None
        self._server: Any = None
        self._sock: Any = None
        self.url = ""

    def __enter__(self) -> "H11Server":
        import logging

        import uvicorn

        from .._servers import bound_socket

        self._sock = bound_socket()
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        config = uvicorn.Config(self.app, http="h11", loop="asyncio", lifespan="off", server_header=False,
                                date_header=False, access_log=False, log_config=None, log_level=logging.WARNING,
                                timeout_graceful_shutdown=0.2)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=lambda: asyncio.run(self._server.serve(sockets=[self._sock])),
                                        name="streamlab-drill-app-h11", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError("the drill's h11 app server did not start")
            time.sleep(0.002)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.should_exit = True
            self._server.force_exit = True
        if self._thread is not None:
            self._thread.join(5)
        if self._sock is not None:
            self._sock.close()
