"""The mock model: an OpenAI-compatible Chat Completions server in plain ASGI.

    POST /v1/chat/completions      streaming (SSE) and non-streaming
    GET  /v1/models
    GET  /healthz
    .../s/<spec>/v1/...             the same routes with a behaviour spec (see ``streamlab.faults``)

Each request runs this pipeline; every fault in the chain sees every event::

    request -> [faults] -> headers -> start -> token 0 .. token n-1 -> finish -> usage? -> done
                 |                                 |
          429/500/400/slow headers     cut / reset / silent end / stall / malformed / framing / error

Timing follows the vocabulary of ``vllm bench serve``: TTFT (time to first
token), ITL (inter-token latency), TPOT (time per output token) and E2EL
(end-to-end latency). Token ``i`` is scheduled at ``TTFT + i * ITL`` (+ seeded,
bounded jitter) after the request arrived; a stall shifts the rest of the
schedule. Lateness (actual send time minus schedule) is kept per request for the
benchmark.

The bytes are shaped here, in ``send`` calls, on purpose (STYLE.md, item 9): a
framework or middleware in between could buffer the stream or hide a
disconnect. Cut and reset reach for uvicorn's transport so the client sees a
real FIN or RST; under any other ASGI server they fall back to raising, which
makes the server drop the connection.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

from . import faults as _faults
from ._servers import ThreadedASGIServer, drop_connection
from ._text import count_tokens, echo_tokens, generate
from ._timeline import HopLog
from ._timescale import to_real

__all__ = ["MockLLM", "MockApp", "Journal", "JournalEntry", "Event", "Exchange"]

DEFAULT_MODEL = "streamlab-mock"
HEADER = "x-streamlab"
MAX_BODY = 8 * 1024 * 1024


@dataclass(frozen=True)
class Event:
    """One step of an exchange, as the faults see it. ``data`` is the wire bytes (streaming only)."""

    kind: str  # request | start | token | finish | usage | done | body
    index: int = 0
    data: bytes = b""

    def replace(self, **changes: Any) -> "Event":
        return dataclasses.replace(self, **changes)


@dataclass
class JournalEntry:
    """One request as the mock saw it: what was asked, which behaviour applied, what was sent."""

    id: int
    method: str
    path: str
    spec: str = ""
    faults: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    body: Any = None
    stream: bool = False
    status: int | None = None
    tokens_planned: int = 0
    tokens_sent: int = 0
    finish_reason: str | None = None
    ended: str = "open"  # complete | cut | reset | silent | error | rejected | client disconnected
    t_start: float = 0.0
    t_end: float | None = None
    log: HopLog = field(default_factory=lambda: HopLog("model"))
    lateness: list[float] = field(default_factory=list)

    @property
    def last_user_message(self) -> str:
        for message in reversed((self.body or {}).get("messages") or []):
            if isinstance(message, dict) and message.get("role") == "user":
                return _content_text(message.get("content"))
        return ""

    def wait_closed(self, timeout: float = 5.0) -> "JournalEntry":
        """Wait (wall-clock seconds) until the server has finished this exchange, e.g. noticed that a
        hop dropped the connection; returns the entry, so ``mock.journal.last.wait_closed().ended``."""
        deadline = time.perf_counter() + timeout
        while self.t_end is None and time.perf_counter() < deadline:
            time.sleep(0.002)
        return self

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id, "path": self.path, "spec": self.spec, "stream": self.stream,
            "status": self.status, "tokens_sent": self.tokens_sent, "planned": self.tokens_planned,
            "finish_reason": self.finish_reason, "ended": self.ended,
        }


class Journal:
    """Thread-safe, bounded list of ``JournalEntry`` (newest last)."""

    def __init__(self, maxlen: int = 2000) -> None:
        self._entries: collections.deque[JournalEntry] = collections.deque(maxlen=maxlen)
        self._lock = threading.Lock()
        self._next = 1

    def new(self, method: str, path: str) -> JournalEntry:
        with self._lock:
            entry = JournalEntry(id=self._next, method=method, path=path, t_start=time.perf_counter())
            self._next += 1
            self._entries.append(entry)
        return entry

    def __iter__(self) -> Iterator[JournalEntry]:
        with self._lock:
            return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, index: int) -> JournalEntry:
        with self._lock:
            return list(self._entries)[index]

    @property
    def last(self) -> JournalEntry | None:
        with self._lock:
            return self._entries[-1] if self._entries else None

    def chat(self) -> list[JournalEntry]:
        """Only the chat completion requests."""
        return [e for e in self if e.path.endswith("/chat/completions")]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def table(self) -> str:
        """A plain-text table of the chat requests (for notebooks)."""
        rows = [("#", "stream", "behaviour", "status", "sent/planned", "finish", "ended")]
        for e in self.chat():
            rows.append((str(e.id), "yes" if e.stream else "no", e.spec or "-", str(e.status or "-"),
                         f"{e.tokens_sent}/{e.tokens_planned}", str(e.finish_reason), e.ended))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


class _Ended(Exception):
    """Internal: the exchange is over (closed, reset, ended or rejected)."""


class _Truncated(Exception):
    """Internal: a non-streaming answer ends early (silent truncation)."""


class RequestError(Exception):
    """Bad input: becomes an OpenAI-style JSON error."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code


def _error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> bytes:
    return json.dumps({"error": {"message": message, "type": type, "param": param, "code": code}}).encode()


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


class Exchange:
    """One chat completion request/response, with the actions a fault may take."""

    def __init__(self, app: "MockApp", send: Any, entry: JournalEntry, body: dict, stream: bool) -> None:
        self.app = app
        self._send = send
        self.entry = entry
        self.body = body
        self.stream = stream
        self.headers_sent = False
        self.malformed_body = False
        self.disconnected = asyncio.Event()
        self._receive: Any = None
        self._watcher: asyncio.Future | None = None
        # uvicorn keeps a ``disconnected`` flag on the object behind ``send``; reading it costs
        # nothing, where a task blocked on receive() per request would cost throughput.
        self._cycle = getattr(send, "__self__", None)
        self._raw = False  # set once the headers are out and uvicorn chose chunked framing
        self.events = app.record_events
        self.offset = 0.0  # schedule shift caused by stalls
        self.prompt_tokens = sum(count_tokens(_content_text(m.get("content"))) for m in body["messages"])
        self.max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")

    # -- bookkeeping -------------------------------------------------------
    def note(self, kind: str, detail: str = "", nbytes: int = 0) -> None:
        if self.events or kind != "out":
            self.entry.log.add(kind, nbytes, detail, conn=self.entry.id)

    def is_disconnected(self) -> bool:
        if not self.disconnected.is_set() and getattr(self._cycle, "disconnected", False):
            self.disconnected.set()
        return self.disconnected.is_set()

    def watch(self) -> None:
        """Start listening for the client's disconnect (needed only while we wait without sending)."""
        if self._watcher is not None or self._receive is None:
            return

        async def listen() -> None:
            while True:
                message = await self._receive()
                if message["type"] == "http.disconnect":
                    self.disconnected.set()
                    return

        self._watcher = asyncio.ensure_future(listen())

    # -- wire --------------------------------------------------------------
    async def start_response(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        base = [(b"x-request-id", str(self.entry.id).encode())]
        await self._send({"type": "http.response.start", "status": status, "headers": base + headers})
        self.headers_sent = True
        cycle = self._cycle
        self._raw = bool(getattr(cycle, "chunked_encoding", False)) and hasattr(cycle, "flow") \
            and getattr(cycle, "transport", None) is not None
        self.entry.status = status
        self.note("status", str(status))

    async def write(self, data: bytes) -> None:
        if self.is_disconnected():
            raise _Ended
        cycle = self._cycle
        if self._raw and not cycle.flow.write_paused:
            # Fast path under uvicorn: frame the chunk ourselves and write it to the transport,
            # skipping one ASGI send() per token (the mock's hottest line). Headers, the final
            # chunk, flow control (a paused transport) and every other server use send().
            cycle.transport.write(b"%x\r\n%s\r\n" % (len(data), data))
        else:
            await self._send({"type": "http.response.body", "body": data, "more_body": True})
        if self.events:
            self.note("out", nbytes=len(data))

    async def finish_body(self) -> None:
        await self._send({"type": "http.response.body", "body": b"", "more_body": False})

    # -- actions for faults -------------------------------------------------
    async def close(self, *, reset: bool, why: str) -> None:
        """Drop the connection now: FIN (``reset=False``) or RST (``reset=True``)."""
        self.entry.ended = "reset" if reset else "cut"
        self.note("fault", why)
        transport = getattr(getattr(self._send, "__self__", None), "transport", None)
        if transport is None:  # pragma: no cover - not under uvicorn
            raise RuntimeError(f"streamlab mock: {why} (connection dropped by raising)")
        drop_connection(transport, reset=reset)
        for _ in range(3):  # let uvicorn see connection_lost, so it logs nothing
            await asyncio.sleep(0)
        self.note("close", "reset" if reset else "eof")
        raise _Ended

    async def end(self, *, why: str) -> None:
        """End cleanly now, as if the answer were complete (silent truncation)."""
        self.entry.ended = "silent"
        self.note("fault", why)
        if not self.stream:
            raise _Truncated
        await self.finish_body()
        self.note("close", "clean end")
        raise _Ended

    async def pause(self, seconds: float | None) -> None:
        """Send nothing for ``seconds`` of wall-clock time (None: until the client disconnects)."""
        started = time.perf_counter()
        self.watch()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.disconnected.wait(), seconds)
        self.offset += time.perf_counter() - started
        if self.is_disconnected():
            raise _Ended

    async def fail_midstream(self, message: str, *, why: str) -> None:
        self.note("fault", why)
        if not self.stream:
            await self.reject(500, message, type="server_error")
        self.entry.ended = "error"
        await self.write(b"data: " + _error_body(message, "server_error") + b"\n\n")
        await self.finish_body()
        raise _Ended

    async def reject(self, status: int, message: str, *, type: str, code: str | None = None,
                     param: str | None = None, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
        """Answer with an OpenAI-style JSON error instead of a completion."""
        self.entry.ended = "rejected"
        self.note("fault", f"HTTP {status}")
        body = _error_body(message, type, param, code)
        await self.start_response(status, [(b"content-type", b"application/json"),
                                           (b"content-length", str(len(body)).encode()), *headers])
        await self._send({"type": "http.response.body", "body": body, "more_body": False})
        raise _Ended


class MockApp:
    """The ASGI application behind ``MockLLM`` (also served by ``streamlab mock``).

    Keyword-only defaults apply to every request unless a spec, a script step
    or an injected fault says otherwise. Durations are scenario seconds.
    """

    def __init__(self, *, tokens: int = 32, ttft: float = 0.0, itl: float = 0.0, jitter: float = 0.0,
                 seed: int = 0, echo: bool = False, model: str = DEFAULT_MODEL,
                 faults: Iterable[_faults.Fault] = (), tool_arguments: dict[str, dict] | None = None,
                 max_body: int = MAX_BODY, journal_size: int = 2000, record_events: bool = True) -> None:
        self.defaults: dict[str, Any] = {"tokens": tokens, "ttft": ttft, "itl": itl, "jitter": jitter,
                                         "seed": seed, "echo": echo, "tools": "auto"}
        _faults.parse(_faults.to_spec(**{k: v for k, v in self.defaults.items() if k != "echo"}))
        self.model = model
        self.tool_arguments = dict(tool_arguments or {})
        self.max_body = max_body
        self.journal = Journal(journal_size)
        self.record_events = record_events  # per-chunk "out" events in the journal (off for benchmarks)
        self.lateness: collections.deque[float] = collections.deque(maxlen=200_000)
        self._injected: tuple[_faults.Fault, ...] = tuple(faults)
        self._script: collections.deque[Any] = collections.deque()
        self._script_then: Any = None
        self._scripted = False
        self._lock = threading.Lock()
        self._first_counts: collections.Counter[str] = collections.Counter()

    # -- configuration from Python -------------------------------------------
    @contextlib.contextmanager
    def inject(self, *faults: _faults.Fault) -> Iterator[None]:
        """Apply ``faults`` to every request inside the ``with`` block."""
        with self._lock:
            before = self._injected
            self._injected = before + tuple(faults)
        try:
            yield
        finally:
            with self._lock:
                self._injected = before

    @contextlib.contextmanager
    def script(self, *steps: Any, then: Any = None) -> Iterator[None]:
        """Give request 1 the behaviour ``steps[0]``, request 2 ``steps[1]``, ... then ``then``.

        A step is None (clean), a fault, a spec string, or a list of those.

            with mock.script(Cut(at=5), None):   # first request cut, the retry succeeds
                ...
        """
        with self._lock:
            self._script = collections.deque(steps)
            self._script_then = then
            self._scripted = True
        try:
            yield
        finally:
            with self._lock:
                self._script.clear()
                self._script_then = None
                self._scripted = False

    def _next_step(self) -> Any:
        with self._lock:
            if not self._scripted:
                return None
            return self._script.popleft() if self._script else self._script_then

    # -- ASGI -----------------------------------------------------------------
    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        spec = ""
        route = path
        if path.startswith("/s/"):
            spec, slash, rest = path[3:].partition("/")
            route = "/" + rest if slash else "/"
        for name, value in scope.get("headers", ()):
            if name == HEADER.encode():
                spec = ",".join(filter(None, (value.decode("latin-1"), spec)))
        try:
            if route in ("/v1/chat/completions", "/chat/completions"):
                if method != "POST":
                    raise RequestError(405, f"Method {method} not allowed on {route}; use POST.")
                await self._chat(scope, receive, send, spec)
            elif route in ("/v1/models", "/models"):
                if method != "GET":
                    raise RequestError(405, f"Method {method} not allowed on {route}; use GET.")
                await self._json(send, 200, {"object": "list", "data": [
                    {"id": self.model, "object": "model", "created": 0, "owned_by": "streamlab"}]})
            elif route in ("/healthz", "/health"):
                await self._json(send, 200, {"status": "ok"})
            elif route == "/streamlab/stats":
                await self._json(send, 200, self.stats())
            else:
                raise RequestError(404, f"Unknown route {method} {route}. The mock serves POST "
                                   "/v1/chat/completions and GET /v1/models (optionally under /s/<spec>/).")
        except RequestError as err:
            await self._json(send, err.status, None, error=err)

    def stats(self) -> dict[str, Any]:
        """Token send lateness (actual minus scheduled, seconds) over the recent requests."""
        values = sorted(self.lateness)
        pick = lambda q: values[min(len(values) - 1, round(q * (len(values) - 1)))] if values else None  # noqa: E731
        return {"tokens": len(values), "lateness_p50": pick(0.5), "lateness_p99": pick(0.99),
                "lateness_max": values[-1] if values else None, "requests": len(self.journal)}

    async def _json(self, send: Any, status: int, payload: Any, *, error: RequestError | None = None) -> None:
        body = (_error_body(error.message, error.type, error.param, error.code) if error
                else json.dumps(payload).encode())
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            + ([(b"connection", b"close")] if status == 413 else [])})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    async def _read_body(self, receive: Any) -> bytes:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Ended
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise RequestError(413, f"Request body larger than {self.max_body} bytes.",
                                   code="request_too_large")
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)

    def _resolve(self, spec: str) -> tuple[list[_faults.Fault], dict[str, Any], str]:
        """Merge defaults < injected < script step < header/path spec."""
        faults: list[_faults.Fault] = list(self._injected)
        options = dict(self.defaults)
        specs: list[str] = []
        step = self._next_step()
        for item in (step if isinstance(step, (list, tuple)) else [step]):
            if item is None:
                continue
            if isinstance(item, _faults.Fault):
                faults.append(item)
                specs.append(item.spec())
            elif isinstance(item, str):
                f, o = _faults.parse(item)
                faults += f
                options.update(o)
                specs.append(item)
            else:
                raise TypeError(f"script step must be None, a Fault or a spec string, not {item!r}")
        if spec:
            try:
                f, o = _faults.parse(spec)
            except _faults.SpecError as exc:
                raise RequestError(400, f"Bad streamlab behaviour spec: {exc}", param="x-streamlab",
                                   code="invalid_streamlab_spec") from None
            if "first" in o:
                with self._lock:
                    self._first_counts[spec] += 1
                    if self._first_counts[spec] > int(o["first"]):
                        f = []
            faults += f
            options.update(o)
            specs.append(spec)
        return faults, options, ",".join([f.spec() for f in self._injected] + specs)

    async def _chat(self, scope: dict, receive: Any, send: Any, spec: str) -> None:
        entry = self.journal.new(scope["method"], scope["path"])
        entry.log.add("open", note=f"{scope['method']} {scope['path']}", conn=entry.id)
        try:
            raw = await self._read_body(receive)
            body = self._validate(raw)
            entry.body = body
            faults, options, entry.spec = self._resolve(spec)
        except RequestError as err:
            entry.status, entry.ended = err.status, "rejected"
            raise
        except _Ended:
            entry.ended = "client disconnected"
            return
        entry.faults = [f.spec() for f in faults]
        entry.options = options
        stream = bool(body.get("stream"))
        entry.stream = stream
        ex = Exchange(self, send, entry, body, stream)
        ex._receive = receive
        if ex._cycle is None or not hasattr(ex._cycle, "disconnected"):
            ex.watch()  # not under uvicorn: listen for the disconnect the portable way
        try:
            await self._respond(ex, faults, options)
        except _Ended:
            pass
        finally:
            if ex._watcher is not None:
                ex._watcher.cancel()
            entry.t_end = time.perf_counter()
            if ex.is_disconnected() and entry.ended in ("open", "complete"):
                entry.ended = "client disconnected"
                ex.note("close", "client disconnected")

    def _validate(self, raw: bytes) -> dict:
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise RequestError(400, "We could not parse the JSON body of your request. (HINT: This likely "
                               "means you aren't using your HTTP library correctly. The OpenAI API expects a "
                               "JSON payload.)", code="invalid_json") from None
        if not isinstance(body, dict):
            raise RequestError(400, "The request body must be a JSON object.")
        if "model" not in body:
            raise RequestError(400, "you must provide a model parameter", param="model",
                               code="missing_required_parameter")
        messages = body.get("messages")
        if messages is None:
            raise RequestError(400, "Missing required parameter: 'messages'.", param="messages",
                               code="missing_required_parameter")
        if not isinstance(messages, list) or not messages:
            raise RequestError(400, "'messages' must be a non-empty array.", param="messages",
                               code="invalid_type")
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise RequestError(400, f"messages[{i}] must be an object with a 'role'.",
                                   param=f"messages[{i}]", code="invalid_type")
        if "stream" in body and body["stream"] is not None and not isinstance(body["stream"], bool):
            raise RequestError(400, "'stream' must be a boolean.", param="stream", code="invalid_type")
        for key in ("max_tokens", "max_completion_tokens"):
            value = body.get(key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise RequestError(400, f"'{key}' must be a positive integer.", param=key, code="invalid_type")
        return body

    # -- the answer -------------------------------------------------------------
    def _plan(self, ex: Exchange, options: dict[str, Any]) -> tuple[list[str], dict | None, str]:
        """The tokens to send, an optional tool call, and the finish reason."""
        body = ex.body
        n = int(options["tokens"])
        last = body["messages"][-1]
        tools = body.get("tools") or []
        tool_mode = str(options.get("tools") or "auto")
        if tools and tool_mode != "off" and body.get("tool_choice") != "none" and last.get("role") != "tool":
            names = [t.get("function", {}).get("name") for t in tools if isinstance(t, dict)]
            name = tool_mode if tool_mode in names else names[0]
            schema = next(t["function"].get("parameters") or {} for t in tools if t["function"].get("name") == name)
            arguments = json.dumps(self.tool_arguments.get(name) or _example_arguments(schema))
            pieces = [arguments[i:i + 8] for i in range(0, len(arguments), 8)] or [""]
            call = {"id": f"call_{ex.entry.id}_0", "name": name, "arguments": arguments}
            return pieces, call, "tool_calls"
        if last.get("role") == "tool":
            result = _content_text(last.get("content"))
            lead = ["Tool", " result:"] + [" " + w for w in result.split()[:8]] + [" ."]
            rest = generate(n, int(options["seed"]))
            tokens = (lead + [" " + rest[0]] + rest[1:])[:n] if rest else lead[:n]
        elif options.get("echo"):
            tokens = echo_tokens(ex.entry.last_user_message, n)
        else:
            tokens = generate(n, int(options["seed"]))
        finish = "stop"
        if ex.max_tokens is not None and ex.max_tokens < len(tokens):
            tokens, finish = tokens[: ex.max_tokens], "length"
        return tokens, None, finish

    async def _run_chain(self, faults: list[_faults.Fault], event: Event, ex: Exchange) -> Event | None:
        for fault in faults:
            event = await fault.act(event, ex)
            if event is None:
                return None
        return event

    async def _respond(self, ex: Exchange, faults: list[_faults.Fault], options: dict[str, Any]) -> None:
        t0 = ex.entry.t_start
        await self._run_chain(faults, Event("request"), ex)
        tokens, call, finish = self._plan(ex, options)
        ex.entry.tokens_planned = len(tokens)
        ttft, itl, jitter = (to_real(float(options[k])) for k in ("ttft", "itl", "jitter"))
        rng = random.Random(int(options["seed"]))
        cid = f"chatcmpl-streamlab-{ex.entry.id}"
        created = int(time.time())
        model = json.dumps(ex.body.get("model") or self.model).encode()
        include_usage = bool((ex.body.get("stream_options") or {}).get("include_usage"))

        def deadline(i: int) -> float:
            jit = rng.uniform(-jitter, jitter) if jitter else 0.0
            return t0 + ex.offset + ttft + i * itl + jit

        async def wait_for_token(i: int) -> None:
            due = deadline(i)
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if ex.is_disconnected():
                raise _Ended
            late = time.perf_counter() - due
            ex.entry.lateness.append(late)
            self.lateness.append(late)

        usage = lambda: {"prompt_tokens": ex.prompt_tokens, "completion_tokens": ex.entry.tokens_sent,  # noqa: E731
                         "total_tokens": ex.prompt_tokens + ex.entry.tokens_sent}

        if not ex.stream:
            content: list[str] = []
            finish_reason: str | None = finish
            try:
                for i, token in enumerate(tokens):
                    await wait_for_token(i)
                    await self._run_chain(faults, Event("token", i), ex)
                    content.append(token)
                    ex.entry.tokens_sent += 1
                await self._run_chain(faults, Event("finish", len(tokens)), ex)
            except _Truncated:
                finish_reason = None
            message: dict[str, Any] = {"role": "assistant", "content": None if call else "".join(content)}
            if call:
                message["tool_calls"] = [{"id": call["id"], "type": "function",
                                          "function": {"name": call["name"], "arguments": "".join(content)}}]
            payload = {"id": cid, "object": "chat.completion", "created": created, "model": json.loads(model),
                       "choices": [{"index": 0, "message": message, "logprobs": None,
                                    "finish_reason": finish_reason}],
                       "usage": usage(), "system_fingerprint": None}
            data = json.dumps(payload).encode()
            if ex.malformed_body:
                data = data[: len(data) // 2]
            event = await self._run_chain(faults, Event("body", data=data), ex)
            await ex.start_response(200, [(b"content-type", b"application/json"),
                                          (b"content-length", str(len(event.data if event else b"")).encode())])
            await ex._send({"type": "http.response.body", "body": event.data if event else b"", "more_body": False})
            ex.note("out", nbytes=len(event.data if event else b""))
            ex.entry.finish_reason = finish_reason
            if ex.entry.ended == "open":
                ex.entry.ended = "complete"
            return

        await ex.start_response(200, [(b"content-type", b"text/event-stream; charset=utf-8"),
                                      (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")])
        head = b'data: {"id":"' + cid.encode() + b'","object":"chat.completion.chunk","created":' + \
            str(created).encode() + b',"model":' + model + b',"system_fingerprint":null,"choices":['

        def chunk(delta: bytes, reason: str | None = None) -> bytes:
            fr = b"null" if reason is None else b'"' + reason.encode() + b'"'
            return head + b'{"index":0,"delta":' + delta + b',"logprobs":null,"finish_reason":' + fr + b"}]}\n\n"

        start = await self._run_chain(faults, Event("start", 0, chunk(b'{"role":"assistant","content":""}')), ex)
        if start is not None:
            await ex.write(start.data)
        for i, token in enumerate(tokens):
            await wait_for_token(i)
            if call is None:
                delta = b'{"content":' + json.dumps(token).encode() + b"}"
            else:
                function = {"arguments": token}
                if i == 0:
                    function = {"name": call["name"], "arguments": token}
                tc: dict[str, Any] = {"index": 0, "function": function}
                if i == 0:
                    tc.update(id=call["id"], type="function")
                delta = json.dumps({"tool_calls": [tc]}).encode()
            data: bytes | None = chunk(delta)
            if faults:  # the common no-fault path skips building an Event per token
                event = await self._run_chain(faults, Event("token", i, data), ex)
                data = None if event is None else event.data
            if data is not None:
                await ex.write(data)
            ex.entry.tokens_sent += 1
        event = await self._run_chain(faults, Event("finish", len(tokens), chunk(b"{}", finish)), ex)
        if event is not None:
            await ex.write(event.data)
            ex.entry.finish_reason = finish
        if include_usage:
            usage_chunk = head + b'],"usage":' + json.dumps(usage()).encode() + b"}\n\n"
            event = await self._run_chain(faults, Event("usage", 0, usage_chunk), ex)
            if event is not None:
                await ex.write(event.data)
        event = await self._run_chain(faults, Event("done", 0, b"data: [DONE]\n\n"), ex)
        if event is not None:
            await ex.write(event.data)
        await ex.finish_body()
        if ex.entry.ended == "open":
            ex.entry.ended = "complete"
        ex.note("close", "complete")


def _example_arguments(schema: dict) -> dict:
    """Deterministic arguments that satisfy a JSON schema's required properties."""
    examples = {"string": "demo", "integer": 1, "number": 1.0, "boolean": True, "array": [], "object": {}}
    props = schema.get("properties") or {}
    required = schema.get("required") or list(props)
    return {k: examples.get((props.get(k) or {}).get("type", "string"), "demo") for k in required}


class MockLLM(ThreadedASGIServer):
    """The mock model on a real loopback socket, in a background thread.

        with MockLLM(tokens=200, ttft=0.5, itl=0.02) as mock:      # scenario seconds
            client = openai.OpenAI(base_url=mock.base_url, api_key="unused")
            client.chat.completions.create(model="m", messages=[...], stream=True)
            url = mock.base_url_for(Cut(at=12))                        # .../s/cut@12/v1
            with mock.script(Cut(at=5), None): ...                     # request 1 cut, then clean
            with mock.inject(Stall(at=3, seconds=30)): ...             # every request in the block
            mock.journal.last.summary()                                # what the server did

    All keyword arguments are those of ``MockApp``. Stops on ``with`` exit, on
    error, on kernel interrupt (the ``with`` block unwinds) and at interpreter exit.
    """

    kind = "mock model"

    def __init__(self, **settings: Any) -> None:
        self.app_ = MockApp(**settings)
        super().__init__(self.app_, name="streamlab-mock")

    @property
    def base_url(self) -> str:
        """OpenAI base URL: ``http://127.0.0.1:PORT/v1``."""
        return self.url + "/v1"

    def base_url_for(self, *faults: "_faults.Fault | str", **options: Any) -> str:
        """Base URL whose requests carry ``faults`` and ``options`` (for clients that only take a URL)."""
        spec = _faults.to_spec(*faults, **options)
        return f"{self.url}/s/{spec}/v1" if spec else self.base_url

    def headers_for(self, *faults: "_faults.Fault | str", **options: Any) -> dict[str, str]:
        """Request headers that select ``faults`` and ``options`` (for clients that take default headers)."""
        return {HEADER: _faults.to_spec(*faults, **options)}

    @property
    def journal(self) -> Journal:
        return self.app_.journal

    def inject(self, *faults: _faults.Fault):
        return self.app_.inject(*faults)

    def script(self, *steps: Any, then: Any = None):
        return self.app_.script(*steps, then=then)
