"""Record any stream a user has and name what happened to it.

``record()`` (sync) and ``arecord()`` (async) wrap an iterable of chunks: raw SSE
lines from httpx, the openai SDK's stream, or a framework's iterator of events.
Pass a zero-argument callable instead of the stream itself to also catch errors
raised while the request is made (a 429, a 504 before headers). Every chunk, the
terminal marker and any exception are timestamped.

Outcomes, checked in this order::

    an HTTP error status (429, 500, 504 ...) ....... HTTP_ERROR            (run.status, run.body)
    exception, no chunk yet ........................ ERROR_BEFORE_STREAM   (STALLED if it is a timeout)
    a completeness guard raised (IncompleteStream) . TRUNCATION_DETECTED   (TRUNCATED_BY_LENGTH for "length")
    exception after some chunks .................... CUT_MID_STREAM        (STALLED if it is a timeout)
    we stopped reading (abort_after=...) ........... CLIENT_ABORTED
    ended, terminal marker with finish "length" .... TRUNCATED_BY_LENGTH
    ended without a terminal marker ................ SILENT_TRUNCATION
    ended with the marker, in one burst although ... BUFFERED
      it was meant to arrive every ``itl`` seconds
    ended with the marker .......................... COMPLETE

Only stream faults are recorded: an exception that no stream, SDK or framework raises for a
transport reason (a ``NameError`` in the callable, a ``TypeError``) propagates unchanged. The
exception tree and the allow-list are in ``streamlab._errors``.

Times are reported in scenario seconds (see ``streamlab.time_scale``), from **t0, the moment
the first HTTP request of the recorded call goes out** (its request headers start on the
socket), not from the call: the first openai request of a process spends ~0.4 s of wall clock
building its client and request models before it sends anything, which at ``time_scale(0.02)``
would read as 20 scenario seconds of "TTFT". t0 comes from a small hook on httpx's transports
(``httpx.HTTPTransport.handle_request`` / ``AsyncHTTPTransport.handle_async_request``, which
the openai SDK, LangChain, AutoGen and CrewAI all send through) that, while a recording is
active in this thread or task (a contextvar), notes the first request's send time (httpcore's
``trace`` extension: ``send_request_headers.started``) and the status of every response.
Design choices:

- A retry belongs to the stream: when the SDK retries a failed first attempt (a 429, a reset),
  t0 stays the *first* attempt's send, so TTFT includes the backoff the user waited through.
- A call that makes several requests (an agent's turns, a graph's nodes) is timed from the first.
- A stream that makes no HTTP request through httpx (a generator, an in-memory transport, a
  transport of its own) is timed from the call, as before.
- Connection setup (the TCP connect) is not counted; on loopback it is under 2 ms.
"""

from __future__ import annotations

import contextvars
import enum
import inspect
import json
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterable, Callable, Iterable

from ._sse import parse_block, split_events
from ._errors import IncompleteStream, LengthTruncation, describe, http_body, http_status, is_stream_fault
from ._text import count_tokens
from ._timescale import current_time_scale

__all__ = ["Outcome", "Run", "record", "arecord", "ChunkInfo", "inspect_chunk", "StreamErrorEvent"]


class Outcome(str, enum.Enum):
    """How a recorded stream ended (the order of checks is in the module docstring).

    ``HTTP_ERROR`` is an HTTP response with an error status (4xx/5xx: a rate limit, a server
    error, a gateway's 504), however the client reported it (an exception or a body it read);
    ``run.status`` and ``run.body`` say which. ``ERROR_BEFORE_STREAM`` is *no* HTTP response at
    all: nobody listening, a reset or a close before the headers. ``STALLED`` is a timeout.
    ``TRUNCATION_DETECTED`` is a stream that ended short and a completeness guard
    (``streamlab.fixes.guard``) raised ``IncompleteStream``: what would otherwise be a
    ``SILENT_TRUNCATION``.
    """

    COMPLETE = "complete"
    TRUNCATED_BY_LENGTH = "truncated by length"
    CUT_MID_STREAM = "cut mid-stream"
    SILENT_TRUNCATION = "silent truncation"
    STALLED = "stalled / timed out"
    BUFFERED = "buffered"
    ERROR_BEFORE_STREAM = "error before stream"
    CLIENT_ABORTED = "client aborted"
    HTTP_ERROR = "http error"
    TRUNCATION_DETECTED = "truncation detected"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class ChunkInfo:
    """What the recorder understood of one chunk."""

    text: str | None = None        # content carried by the chunk (None: none)
    finish: str | None = None      # finish reason / stop reason, when the chunk carries one
    terminal: bool = False         # the stream's end marker ([DONE], finish_reason, TaskResult, ...)
    nbytes: int = 0
    error: str | None = None       # an error object carried inside the stream
    echo: bool = False             # the caller's own input echoed back (AutoGen's task message): not received


class StreamErrorEvent(Exception):
    """An error object arrived inside an otherwise healthy raw SSE stream."""


def _size(obj: Any) -> int:
    if isinstance(obj, (bytes, bytearray)):
        return len(obj)
    if isinstance(obj, str):
        return len(obj.encode())
    dump = getattr(obj, "model_dump_json", None)
    if callable(dump):
        try:
            return len(dump())
        except Exception:  # noqa: BLE001 - size is informative only
            pass
    return len(repr(obj).encode())


class _Value:
    """A non-streamed result wrapped as the one chunk of its run."""

    def __init__(self, info: ChunkInfo) -> None:
        self.info = info


def inspect_chunk(item: Any) -> ChunkInfo:
    """Understand one chunk of the common stream types (duck-typed, no framework imports)."""
    if isinstance(item, _Value):
        return item.info
    nbytes = _size(item)
    # Raw SSE from httpx: bytes or str lines/blocks/network reads (streamlab._sse parses them).
    if isinstance(item, (bytes, bytearray)):
        item = item.decode("utf-8", "replace")
    if isinstance(item, str):
        text_parts: list[str] = []
        finish = None
        terminal = False
        error = None
        blocks, rest = split_events(item)
        for block in blocks + ([rest] if rest.strip() else []):
            data = parse_block(block).data
            if data is None:
                continue  # a comment (keep-alive) or a block without data
            data = data.strip()
            if data == "[DONE]":
                terminal = True
                continue
            try:
                obj = json.loads(data)
            except ValueError:
                continue
            if isinstance(obj, dict) and obj.get("error"):
                error = str((obj["error"] or {}).get("message", obj["error"]))
            for choice in (obj.get("choices") or []) if isinstance(obj, dict) else []:
                delta = choice.get("delta") or {}
                if isinstance(delta.get("content"), str) and delta["content"]:
                    text_parts.append(delta["content"])
                finish = choice.get("finish_reason") or finish
        # finish_reason ends the answer; [DONE] ends the transport. Either is a terminal marker.
        return ChunkInfo("".join(text_parts) or None, finish, terminal or finish is not None, nbytes, error)
    name = type(item).__name__
    # openai SDK chunk
    if name == "ChatCompletionChunk":
        choices = item.choices or []
        text = choices[0].delta.content if choices and choices[0].delta else None
        finish = choices[0].finish_reason if choices else None
        return ChunkInfo(text or None, finish, finish is not None, nbytes)
    # LangChain message chunk
    if name in ("AIMessageChunk", "AIMessage"):
        meta = getattr(item, "response_metadata", {}) or {}
        finish = meta.get("finish_reason")
        content = item.content if isinstance(item.content, str) else None
        return ChunkInfo(content or None, finish, finish is not None, nbytes)
    # LangGraph "messages" mode: (message_chunk, metadata)
    if isinstance(item, tuple) and len(item) == 2 and type(item[0]).__name__ in ("AIMessageChunk", "AIMessage"):
        return inspect_chunk(item[0])
    # AutoGen AgentChat events
    if name in ("TextMessage", "MultiModalMessage") and getattr(item, "source", None) == "user":
        return ChunkInfo(None, None, False, nbytes, echo=True)
    if name == "ModelClientStreamingChunkEvent":
        return ChunkInfo(item.content or None, None, False, nbytes)
    if name == "TaskResult":
        return ChunkInfo(None, str(getattr(item, "stop_reason", None) or "stop"), True, nbytes)
    if name == "Response":  # autogen_agentchat.base.Response (on_messages_stream)
        return ChunkInfo(None, "stop", True, nbytes)
    if name == "CreateResult":  # autogen_core model client result, last item of create_stream
        return ChunkInfo(None, getattr(item, "finish_reason", None), True, nbytes)
    return ChunkInfo(None, None, False, nbytes)


def _is_timeout(exc: BaseException) -> bool:
    if isinstance(exc, TimeoutError):
        return True
    for cls in type(exc).__mro__:
        if "Timeout" in cls.__name__:
            return True
    return False


@dataclass
class Run:
    """One recorded stream: its timestamped chunks, its end, and its outcome."""

    label: str = ""
    expected: int | None = None
    t_start: float = 0.0
    t_end: float = 0.0
    arrivals: list[float] = field(default_factory=list)     # perf_counter of every item
    content_arrivals: list[float] = field(default_factory=list)  # perf_counter of content chunks
    texts: list[str] = field(default_factory=list)
    items: int = 0
    nbytes: int = 0
    terminal: bool = False
    finish: str | None = None
    error: BaseException | None = None
    aborted: bool = False
    outcome: Outcome | None = None
    value: Any = None   # what a callable returned, when not a stream
    scale: float = field(default_factory=current_time_scale)  # the time scale in force when recorded
    itl_hint: float | None = None  # the ITL the stream was meant to have (scenario s), to spot buffering
    t_call: float = 0.0            # perf_counter when the recorded call started (t_start: its first send)
    status: int | None = None      # HTTP status of the last response seen (None: no HTTP response)
    body: str | None = None        # the error body of an HTTP error status, when the client read it

    # -- figures (scenario seconds) -----------------------------------------
    @property
    def chunks(self) -> int:
        """Content-bearing chunks received."""
        return len(self.content_arrivals)

    @property
    def text(self) -> str:
        return "".join(self.texts)

    @property
    def tokens(self) -> int:
        """Tokens of answer text received, in the mock's unit (words): comparable streamed or not."""
        return count_tokens(self.text)

    def _s(self, real: float | None) -> float | None:
        return None if real is None else real / self.scale

    @property
    def ttft(self) -> float | None:
        return self._s(self.content_arrivals[0] - self.t_start) if self.content_arrivals else None

    @property
    def e2e(self) -> float:
        return self._s(self.t_end - self.t_start)

    @property
    def itls(self) -> list[float]:
        a = self.content_arrivals
        return [self._s(b - x) for x, b in zip(a, a[1:])]

    def _pct(self, q: float) -> float | None:
        itls = sorted(self.itls)
        if not itls:
            return None
        if len(itls) == 1:
            return itls[0]
        return statistics.quantiles(itls, n=100, method="inclusive")[int(q) - 1]

    @property
    def itl_p50(self) -> float | None:
        return self._pct(50)

    @property
    def itl_p99(self) -> float | None:
        return self._pct(99)

    @property
    def error_text(self) -> str:
        """``module.Class: message``, never an empty message (see ``streamlab._errors.describe``)."""
        return describe(self.error, scale=self.scale)

    @property
    def error_class(self) -> str:
        if self.error is None:
            return "-"
        return f"{type(self.error).__module__.split('.')[0]}.{type(self.error).__name__}"

    def relative(self) -> list[float]:
        """Content arrival times relative to the start, in scenario seconds."""
        return [self._s(t - self.t_start) for t in self.content_arrivals]

    def figures(self) -> dict[str, Any]:
        return {"label": self.label, "outcome": str(self.outcome), "chunks": self.chunks,
                "tokens": self.tokens, "expected": self.expected, "error": self.error_class, "finish": self.finish,
                "ttft_s": self.ttft, "itl_p50_s": self.itl_p50, "itl_p99_s": self.itl_p99,
                "e2e_s": self.e2e, "bytes": self.nbytes, "status": self.status}

    def __repr__(self) -> str:
        got = f"{self.tokens}/{self.expected}" if self.expected is not None else str(self.tokens)
        err = f", {self.error_class}" if self.error is not None else ""
        if self.outcome is Outcome.HTTP_ERROR and self.status is not None:
            err = f", status {self.status}{err}"
        return f"<Run {self.label + ': ' if self.label else ''}{self.outcome}, {got} tokens{err}>"

    # -- classification ---------------------------------------------------------
    def take(self, info: ChunkInfo, t: float) -> None:
        """Fold one understood chunk, arrived at ``t`` (``perf_counter``), into the run; the first
        error object carried inside the stream becomes ``run.error`` (a ``StreamErrorEvent``)."""
        self.items += 1
        self.arrivals.append(t)
        self.nbytes += info.nbytes
        if info.text:
            self.texts.append(info.text)
            self.content_arrivals.append(t)
        if info.finish is not None:
            self.finish = info.finish
        if info.terminal:
            self.terminal = True
        if info.error is not None and self.error is None:
            self.error = StreamErrorEvent(info.error)

    def _classify(self) -> Outcome:
        status = http_status(self.error)
        if status is not None:
            self.status = status
            self.body = self.body if self.body is not None else http_body(self.error)
            return Outcome.HTTP_ERROR
        if self.error is None and not self.terminal and self.status is not None and self.status >= 400:
            return Outcome.HTTP_ERROR  # an error answer read as a body (HTTPStream, a raw reader)
        if self.aborted and self.error is None:
            return Outcome.CLIENT_ABORTED
        if isinstance(self.error, LengthTruncation):
            return Outcome.TRUNCATED_BY_LENGTH
        if isinstance(self.error, IncompleteStream):
            return Outcome.TRUNCATION_DETECTED
        if self.error is not None:
            if _is_timeout(self.error):
                return Outcome.STALLED
            return Outcome.CUT_MID_STREAM if self.items else Outcome.ERROR_BEFORE_STREAM
        if self.aborted:
            return Outcome.CLIENT_ABORTED
        if self.finish == "length":
            return Outcome.TRUNCATED_BY_LENGTH
        if not self.terminal:
            return Outcome.SILENT_TRUNCATION
        a = self.content_arrivals
        if self.itl_hint and len(a) >= 3:
            meant = (len(a) - 1) * self.itl_hint * self.scale
            if (a[-1] - a[0]) < 0.25 * meant:
                return Outcome.BUFFERED
        return Outcome.COMPLETE


class _Recording:
    def __init__(self, label: str, expected: int | None, abort_after: int | None,
                 abort_after_s: float | None, understand: Callable[[Any], ChunkInfo],
                 itl: float | None = None) -> None:
        now = time.perf_counter()
        self.run = Run(label=label, expected=expected, t_start=now, t_call=now, itl_hint=itl)
        self.t_request: float | None = None   # the first HTTP request was handed to a transport
        self.t_sent: float | None = None      # ... and its headers started on the socket
        self.abort_after = abort_after
        self.abort_after_real = None if abort_after_s is None else abort_after_s * current_time_scale()
        self.understand = understand

    def _sent(self, when: float) -> None:
        """t0: the first request's send, unless the stream had yielded something before any request
        (then the call itself is the stream and stays t0)."""
        if not self.run.arrivals:
            self.run.t_start = when

    def request_started(self) -> bool:
        """A request is handed to a transport; True when it is the recording's first."""
        if self.t_request is not None:
            return False
        self.t_request = time.perf_counter()
        self._sent(self.t_request)
        return True

    def headers_sent(self) -> None:
        if self.t_sent is None:
            self.t_sent = time.perf_counter()
            self._sent(self.t_sent)

    def response(self, status: int) -> None:
        self.run.status = status

    def add(self, item: Any) -> bool:
        """Record one item; True when the reader should stop now (an abort)."""
        now = time.perf_counter()
        run = self.run
        info = self.understand(item)
        if info.echo:
            return False
        run.take(info, now)
        if info.error is not None:
            return True
        if self.abort_after is not None and run.chunks >= self.abort_after and not run.terminal:
            run.aborted = True
            return True
        if self.abort_after_real is not None and now - run.t_start >= self.abort_after_real and not run.terminal:
            run.aborted = True
            return True
        return False

    def finish(self, error: BaseException | None, stream: Any = None) -> Run:
        run = self.run
        run.t_end = time.perf_counter()
        run.error = error or run.error
        result = getattr(stream, "result", None)  # an HTTPStream (or a wrapper of one) knows its status
        if run.status is None and isinstance(getattr(result, "status", None), int):
            run.status = result.status
        if run.status is not None and run.status >= 400 and run.body is None:
            text = getattr(result, "text", None)
            run.body = text if isinstance(text, str) else None
        run.outcome = run._classify()
        return run


# --------------------------------------------------------------------------- t0: the first request's send

_active: "contextvars.ContextVar[_Recording | None]" = contextvars.ContextVar("streamlab_recording", default=None)
_hook_lock = threading.Lock()
_hooked = False


_SAMPLE_CHUNK = {"id": "warm", "object": "chat.completion.chunk", "created": 0, "model": "warm",
                 "choices": [{"index": 0, "delta": {"role": "assistant", "content": "", "tool_calls": [
                     {"index": 0, "id": "c", "type": "function", "function": {"name": "f", "arguments": ""}}]},
                     "logprobs": None, "finish_reason": None}],
                 "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
_warmed: set[str] = set()


def _warm_sdk_models() -> None:
    """Build the openai SDK's chunk models now, before t0, once per process.

    pydantic builds a model's schema lazily, on first use: the SDK's first streamed chunk spends
    5-20 ms in ``model_rebuild`` for ``ChatCompletionChunk``, ``Choice`` and ``ChoiceDelta``. That
    is process warm-up inside the stream: at ``time_scale(0.02)`` it reads as up to 1 scenario
    second of TTFT, and it holds the GIL while an in-process mock wants to send its next token.
    Done when the first recording starts (if the openai SDK is imported), outside any figure.
    """
    if "openai" in _warmed or "openai" not in sys.modules:
        return
    _warmed.add("openai")
    try:
        from openai._models import construct_type
        from openai.types.chat import ChatCompletion, ChatCompletionChunk

        construct_type(type_=ChatCompletionChunk, value=_SAMPLE_CHUNK)
        choice = {"index": 0, "finish_reason": "stop", "logprobs": None,
                  "message": {"role": "assistant", "content": "", "tool_calls": None}}
        construct_type(type_=ChatCompletion, value={**_SAMPLE_CHUNK, "object": "chat.completion",
                                                   "choices": [choice]})
    except Exception:  # noqa: BLE001 - another SDK version: the warm-up is an optimisation only
        pass


def _install_transport_hook() -> None:
    """Wrap httpx's two default transports once (idempotent; a no-op outside a recording)."""
    global _hooked
    _warm_sdk_models()
    if _hooked:
        return
    with _hook_lock:
        if _hooked:
            return
        import httpx

        sync_send = httpx.HTTPTransport.handle_request
        async_send = httpx.AsyncHTTPTransport.handle_async_request

        def handle_request(self: Any, request: Any) -> Any:
            rec = _active.get()
            if rec is None:
                return sync_send(self, request)
            if rec.request_started():
                outer = request.extensions.get("trace")

                def trace(name: str, info: dict) -> None:
                    if name.endswith("send_request_headers.started"):
                        rec.headers_sent()
                    if outer is not None:
                        outer(name, info)

                request.extensions = {**request.extensions, "trace": trace}
            response = sync_send(self, request)
            rec.response(response.status_code)
            return response

        async def handle_async_request(self: Any, request: Any) -> Any:
            rec = _active.get()
            if rec is None:
                return await async_send(self, request)
            if rec.request_started():
                outer = request.extensions.get("trace")

                async def trace(name: str, info: dict) -> None:
                    if name.endswith("send_request_headers.started"):
                        rec.headers_sent()
                    if outer is not None:
                        await outer(name, info)

                request.extensions = {**request.extensions, "trace": trace}
            response = await async_send(self, request)
            rec.response(response.status_code)
            return response

        handle_request.__wrapped__ = sync_send  # type: ignore[attr-defined]
        handle_async_request.__wrapped__ = async_send  # type: ignore[attr-defined]
        httpx.HTTPTransport.handle_request = handle_request  # type: ignore[method-assign]
        httpx.AsyncHTTPTransport.handle_async_request = handle_async_request  # type: ignore[method-assign]
        _hooked = True


def record(stream: Iterable[Any] | Callable[[], Any], *, label: str = "", expected: int | None = None,
           abort_after: int | None = None, abort_after_s: float | None = None, itl: float | None = None,
           understand: Callable[[Any], ChunkInfo] = inspect_chunk) -> Run:
    """Consume a (sync) stream, timestamp every chunk, and return its ``Run``.

    ``stream`` may be a zero-argument callable that makes the request and returns
    the stream (so errors raised before the first chunk are recorded too), or a
    callable that returns a plain value (a non-streaming call: recorded as one chunk).
    ``abort_after`` / ``abort_after_s`` stop reading after N content chunks or T
    scenario seconds and close the stream, like a browser's AbortController.
    ``itl`` is the inter-token latency the stream was meant to have (scenario
    seconds); with it, a complete stream that arrived in one burst is BUFFERED.
    """
    _install_transport_hook()
    rec = _Recording(label, expected, abort_after, abort_after_s, understand, itl)
    token = _active.set(rec)
    error: BaseException | None = None
    iterator = None
    try:
        if callable(stream) and not hasattr(stream, "__iter__"):
            stream = stream()
        if not hasattr(stream, "__iter__") or isinstance(stream, (str, bytes)) or _is_value(stream):
            rec.run.value = stream
            rec.add(_value_chunk(stream))
        else:
            iterator = iter(stream)
            for item in iterator:
                if rec.add(item):
                    break
    except Exception as exc:  # noqa: BLE001 - a stream fault is the observation
        if not is_stream_fault(exc):
            raise  # a bug in the caller's code (NameError, TypeError ...) is not a stream fault
        error = exc
    finally:
        _active.reset(token)
        owners = [x for x in (iterator, stream) if x is not None]
        for owner in owners[:1] + [x for x in owners[1:] if x is not owners[0]]:  # both, once each
            close = getattr(owner, "close", None)
            if callable(close):
                try:
                    close()
                except Exception:  # noqa: BLE001
                    pass
    return rec.finish(error, stream)


async def arecord(stream: AsyncIterable[Any] | Callable[[], Any] | Any, *, label: str = "",
                  expected: int | None = None, abort_after: int | None = None,
                  abort_after_s: float | None = None, itl: float | None = None,
                  understand: Callable[[Any], ChunkInfo] = inspect_chunk) -> Run:
    """Async twin of ``record``: ``stream`` is an async iterable, an awaitable, or a callable returning either."""
    _install_transport_hook()
    rec = _Recording(label, expected, abort_after, abort_after_s, understand, itl)
    token = _active.set(rec)
    error: BaseException | None = None
    iterator = None
    try:
        if callable(stream) and not hasattr(stream, "__aiter__"):
            stream = stream()
        if inspect.isawaitable(stream) and not hasattr(stream, "__aiter__"):
            stream = await stream
        if hasattr(stream, "__aiter__"):
            iterator = stream.__aiter__()
            async for item in iterator:
                if rec.add(item):
                    break
        elif hasattr(stream, "__iter__") and not isinstance(stream, (str, bytes)) and not _is_value(stream):
            for item in stream:
                if rec.add(item):
                    break
        else:
            rec.run.value = stream
            rec.add(_value_chunk(stream))
    except Exception as exc:  # noqa: BLE001 - a stream fault is the observation
        if not is_stream_fault(exc):
            raise  # a bug in the caller's code (NameError, TypeError ...) is not a stream fault
        error = exc
    finally:
        _active.reset(token)
        for name in ("aclose", "close"):
            closer = getattr(iterator, name, None) or getattr(stream, name, None)
            if callable(closer):
                try:
                    result = closer()
                    if inspect.isawaitable(result):
                        await result
                except Exception:  # noqa: BLE001
                    pass
                break
    return rec.finish(error, stream)


def _is_value(obj: Any) -> bool:
    """Pydantic models and the like iterate over their fields; they are values, not streams."""
    return hasattr(obj, "model_dump") or type(obj).__name__ in ("ChatCompletion", "TaskResult", "CrewOutput")


def _value_chunk(value: Any) -> Any:
    """A non-streamed result, as one chunk: its text, its finish reason, terminal."""
    name = type(value).__name__
    text, finish = None, "stop"
    if name == "ChatCompletion":
        choice = value.choices[0]
        text, finish = choice.message.content, choice.finish_reason
        info = ChunkInfo(text or None, finish, finish is not None, _size(value))
    elif name == "TaskResult":
        last = value.messages[-1] if value.messages else None
        content = getattr(last, "content", None)
        info = ChunkInfo(content if isinstance(content, str) and content else None,
                         str(value.stop_reason or "stop"), True, _size(value))
    elif isinstance(value, dict) and isinstance(value.get("messages"), list) and value["messages"]:
        return _Value(ChunkInfo(**{**_value_chunk(value["messages"][-1]).info.__dict__, "nbytes": _size(value)}))
    elif hasattr(value, "response_metadata"):
        # A LangChain message from a chat model: its finish reason is the model's own, and an answer
        # that came back without one (a body that ended early) is not complete.
        content = value.content if isinstance(value.content, str) else None
        finish = (value.response_metadata or {}).get("finish_reason")
        info = ChunkInfo(content or None, finish, finish is not None, _size(value))
    else:
        # Anything else (a CrewAI output, a string) carries no finish reason: taken as ended.
        content = getattr(value, "content", None)
        if not isinstance(content, str):
            content = getattr(value, "raw", None)
        if not isinstance(content, str):
            content = value if isinstance(value, str) else str(value)
        info = ChunkInfo(content or None, finish, True, _size(value))
    return _Value(info)
