"""Which exceptions are a stream's fault, and what each fault raises through each client.

The recorder (``sl.record`` / ``sl.arecord``) keeps an exception as the observation only
when a stream, an SDK or a framework raises it for a transport reason. Anything else (a
typo's ``NameError``, a ``TypeError`` from a wrong call, an ``AttributeError``,
``ImportError``, ``AssertionError``, a ``KeyError`` of user code, a framework's
``ValueError`` for a wrong argument) propagates unchanged: a bug is not a network fault.

What a fault raises, by client (the classes the recorder keeps)::

    no HTTP response at all (Outcome.ERROR_BEFORE_STREAM, or STALLED for a timeout)
     +-- nobody listening / reset before headers
     |     httpx ............ httpx.ConnectError, httpx.RemoteProtocolError ("without sending"), httpx.ReadError
     |     openai SDK ....... openai.APIConnectionError   (wraps the httpx error, after its retries)
     |     LangChain ........ langchain_openai.OpenAIConnectionError (an openai.APIConnectionError)
     |     CrewAI ........... builtins.ConnectionError "Failed to connect to OpenAI API" (raised from it)
     +-- slow headers, read timeout before the first byte
           httpx ............ httpx.ReadTimeout            openai SDK: openai.APITimeoutError
    an HTTP error status (Outcome.HTTP_ERROR; ``run.status``, ``run.body``)
     +-- 429 / 500 / 504 / 400 ...
           httpx ............ httpx.HTTPStatusError (raise_for_status), or no exception at all
                              (``HTTPStream`` / ``read_stream`` keep the status: outcome "http error")
           openai SDK ....... openai.APIStatusError: RateLimitError, InternalServerError, BadRequestError ...
           LangChain ........ the same classes (langchain_openai subclasses them)
           CrewAI ........... the openai error, or ValueError / LLMContextLengthExceededError raised from it
    a stream that started, then broke (Outcome.CUT_MID_STREAM)
     +-- cut (FIN mid-body) . httpx.RemoteProtocolError "incomplete chunked read" (every client: the SDKs
     |                        do not wrap errors raised while iterating)
     +-- reset (RST) ........ httpx.ReadError
     +-- error event in SSE . openai.APIError (SDK), streamlab.StreamErrorEvent (raw readers)
     +-- malformed JSON ..... json.JSONDecodeError (openai SDK)
    a stream that ended short without an error, caught by ``streamlab.fixes.guard``
     +-- no finish_reason / no [DONE] .. streamlab.IncompleteStream        (Outcome.TRUNCATION_DETECTED)
     +-- fewer tokens than its usage ... streamlab.UsageMismatch           (Outcome.TRUNCATION_DETECTED)
     +-- finish_reason "length" ........ streamlab.LengthTruncation        (Outcome.TRUNCATED_BY_LENGTH)
    a stall mid-stream (Outcome.STALLED)
           httpx.ReadTimeout; langchain_openai.StreamChunkTimeoutError (a TimeoutError, ``astream`` only);
           streamlab.TotalTimeout (``ClientTimeout(total=...)``); asyncio's TimeoutError (``wait_for``)

The allow-list (``is_stream_fault``)::

    httpx.HTTPError, httpcore's network/protocol/timeout errors, anyio's broken/closed/end-of-stream
    openai.APIError (every openai error: connection, timeout, status, stream error event)
    OSError (ConnectionError, TimeoutError = asyncio.TimeoutError, socket errors), EOFError
    json.JSONDecodeError (a malformed chunk the SDK failed to parse)
    streamlab.StreamErrorEvent, streamlab.IncompleteStream (the completeness guard)
    langchain_core.exceptions.ModelError, crewai's LLMContextLengthExceededError, aiohttp.ClientError
    ... and any exception raised *from* one of these (``raise X from transport_error``), the way
    CrewAI turns an openai ``NotFoundError`` into a ``ValueError``.

``http_status(exc)`` finds the HTTP status of such an exception (its own, or its cause's).
"""

from __future__ import annotations

import importlib
import json
import sys
from functools import lru_cache
from typing import Any

__all__ = ["is_stream_fault", "http_status", "http_body", "describe", "IncompleteStream", "LengthTruncation",
           "UsageMismatch"]


class IncompleteStream(Exception):
    """A stream ended without error but short of a complete answer (raised by ``streamlab.fixes.guard``).

        IncompleteStream          no finish_reason / no [DONE]: a silent truncation made loud
         +-- LengthTruncation     finish_reason "length": the token budget cut the answer
         +-- UsageMismatch        usage says more tokens than the stream delivered

    ``reason`` names the check that failed, ``tokens`` counts the content chunks seen,
    ``finish`` is the finish reason (None when there was none), ``usage_tokens`` the usage count.
    """

    def __init__(self, message: str, *, reason: str, tokens: int, finish: str | None = None,
                 usage_tokens: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.tokens = tokens
        self.finish = finish
        self.usage_tokens = usage_tokens


class LengthTruncation(IncompleteStream):
    """The answer stopped because ``max_tokens`` (or the model's own limit) was reached."""


class UsageMismatch(IncompleteStream):
    """The server's usage count is larger than what reached the client."""

# (module, attribute) of framework/transport exception classes, used when importable.
_OPTIONAL = (
    ("httpx", "HTTPError"),
    ("httpcore", "NetworkError"), ("httpcore", "ProtocolError"), ("httpcore", "TimeoutException"),
    ("anyio", "BrokenResourceError"), ("anyio", "ClosedResourceError"), ("anyio", "EndOfStream"),
    ("openai", "APIError"),
    ("langchain_core.exceptions", "ModelError"),
    ("crewai.utilities.exceptions.context_window_exceeding_exception", "LLMContextLengthExceededError"),
    ("aiohttp", "ClientError"),
)


def _imported_roots() -> frozenset[str]:
    return frozenset(root for root in {m.split(".")[0] for m, _ in _OPTIONAL} if root in sys.modules)


@lru_cache(maxsize=8)
def _allowed(roots: frozenset[str]) -> tuple[type[BaseException], ...]:
    """The allow-list, from the frameworks imported so far (one not imported cannot have raised)."""
    from ._recorder import StreamErrorEvent

    classes: list[type[BaseException]] = [OSError, EOFError, json.JSONDecodeError, StreamErrorEvent,
                                         IncompleteStream]
    for module, name in _OPTIONAL:
        if module.split(".")[0] not in roots:
            continue
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):  # pragma: no cover - another version
            continue
        classes.append(cls)
    return tuple(classes)


def _chain(exc: BaseException):
    """``exc`` and its explicit causes (``raise ... from``), innermost last."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__


def is_stream_fault(exc: BaseException) -> bool:
    """True when a stream, SDK or framework raised ``exc`` for a transport reason (see the tree above)."""
    allowed = _allowed(_imported_roots())
    return any(isinstance(e, allowed) for e in _chain(exc))


def _response_of(exc: BaseException) -> Any:
    response = getattr(exc, "response", None)
    return response if getattr(response, "status_code", None) is not None else None


def http_status(exc: BaseException | None) -> int | None:
    """The HTTP status of an HTTP error status exception (``httpx.HTTPStatusError``, ``openai.APIStatusError``,
    or an exception raised from one), else None. Only statuses >= 400 count."""
    if exc is None:
        return None
    for e in _chain(exc):
        status = getattr(e, "status_code", None)
        if status is None:
            response = _response_of(e)
            status = getattr(response, "status_code", None)
        if isinstance(status, int) and status >= 400:
            return status
    return None


def http_body(exc: BaseException | None) -> str | None:
    """The error body of such an exception, as text (None when it has none or it was not read)."""
    if exc is None:
        return None
    for e in _chain(exc):
        response = _response_of(e)
        if response is None:
            continue
        try:
            return response.text
        except Exception:  # noqa: BLE001 - a streamed body that was never read
            body = getattr(e, "body", None)
            return None if body is None else str(body)
    return None


_TIMEOUT_KEYS = {"ConnectTimeout": "connect", "ReadTimeout": "read", "WriteTimeout": "write", "PoolTimeout": "pool"}


def _httpx_timeout(exc: BaseException) -> tuple[str, float] | None:
    """(phase, wall-clock seconds) of the httpx timeout that fired, read from the request it belongs to."""
    key = _TIMEOUT_KEYS.get(type(exc).__name__)
    if key is None:
        return None
    try:
        value = exc.request.extensions.get("timeout", {}).get(key)  # type: ignore[attr-defined]
    except (RuntimeError, AttributeError):  # httpx: "The .request property has not been set."
        return None
    return (key, value) if isinstance(value, (int, float)) else None


def describe(exc: BaseException | None, *, scale: float = 1.0) -> str:
    """``module.Class: message``; when ``str(exc)`` is empty (httpx's async ``ReadTimeout`` comes from an
    anyio timeout with no text, ``asyncio.TimeoutError`` has none), what fired instead of nothing:
    the httpx timeout and its value (scenario seconds, ``scale`` = the time scale), or the cause."""
    if exc is None:
        return "-"
    name = f"{type(exc).__module__.split('.')[0]}.{type(exc).__name__}"
    text = str(exc).strip()
    if text:
        return f"{name}: {text}"
    fired = _httpx_timeout(exc)
    if fired is not None:
        return f"{name}: (no message) the {fired[0]} timeout of {fired[1] / scale:g} s passed without data"
    timeout = getattr(exc, "timeout_s", None)
    if isinstance(timeout, (int, float)):
        return f"{name}: (no message) no chunk within {timeout / scale:g} s"
    cause = exc.__cause__ or exc.__context__
    if cause is not None and str(cause).strip():
        return f"{name}: (no message) from {type(cause).__name__}: {cause}"
    if cause is not None:
        return f"{name}: (no message) from {type(cause).__name__}"
    return f"{name}: (no message)"
