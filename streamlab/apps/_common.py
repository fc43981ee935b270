"""What every demo app shares: configuration from the environment, request ids,
log lines, the chat model, SSE headers.

The apps run inside app-server subprocesses (``streamlab.Uvicorn``,
``streamlab.Gunicorn``), so everything they need comes from environment
variables, read when first used (never at import):

    STREAMLAB_MODEL_URL      OpenAI base URL of the mock model, e.g. http://127.0.0.1:PORT/v1
    STREAMLAB_MODEL          model name sent to it               (default "streamlab-mock")
    STREAMLAB_MODEL_RETRIES  openai client max_retries           (default 0: a retry is a second run)
    STREAMLAB_TIME_SCALE     wall-clock seconds per scenario second (see streamlab._timescale)
    STREAMLAB_LOG_TOKENS     "0" silences the per-token lines    (default "1")

Log lines go to stderr, one event per line, so ``server.log_lines("rid=lb-3")``
shows one request's life::

    streamlab.app pid=4242 rid=r7 /chat/sse start
    streamlab.app pid=4242 rid=r7 /chat/sse token 0 'The'
    streamlab.app pid=4242 rid=r7 /chat/sse CLIENT DISCONNECT (CancelledError) after 5 tokens
    streamlab.app pid=4242 rid=r7 /chat/sse done 40 tokens

The request id is the ``X-Request-ID`` header when the client (or
``streamlab.Balancer``) sends one, else ``<pid>-<n>``. The behaviour of the mock
model is chosen per request with ``?spec=stall@5=30`` (or the ``X-Streamlab``
header), which becomes the mock's ``/s/<spec>/v1`` base URL.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re
import sys
from contextlib import asynccontextmanager
from functools import lru_cache
from typing import Any, AsyncIterator, Callable, Iterator

from .._sse import format_event
from .._timescale import to_real

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
SSE_PING = 15.0  # scenario seconds; sse-starlette's default keep-alive comment interval

_counter = itertools.count(1)
_logger = logging.getLogger("streamlab.app")


def _ensure_handler() -> None:
    if not _logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("streamlab.app pid=%(process)d %(message)s"))
        _logger.addHandler(handler)
        _logger.setLevel(logging.INFO)
        _logger.propagate = False


def log(rid: str, route: str, message: str) -> None:
    """One line: ``streamlab.app pid=<pid> rid=<rid> <route> <message>``."""
    _ensure_handler()
    _logger.info("rid=%s %s %s", rid, route, message)


def log_token(rid: str, route: str, index: int, text: str) -> None:
    if os.environ.get("STREAMLAB_LOG_TOKENS", "1") != "0":
        log(rid, route, f"token {index} {text!r}")


def request_id(headers: Any) -> str:
    """``X-Request-ID`` from the request (Starlette headers or an ASGI header list), else a new one."""
    value = None
    if isinstance(headers, list):
        for name, raw in headers:
            if name.lower() == b"x-request-id":
                value = raw.decode("latin-1")
    else:
        value = headers.get("x-request-id")
    return value or f"{os.getpid()}-{next(_counter)}"


def spec_of(query: Any, headers: Any) -> str | None:
    """The mock behaviour asked for by this request: ``?spec=`` or the ``X-Streamlab`` header."""
    return query.get("spec") or headers.get("x-streamlab") or None


def model_url(spec: str | None = None) -> str:
    """The mock's OpenAI base URL, with ``/s/<spec>`` inserted when a behaviour is asked for."""
    base = os.environ.get("STREAMLAB_MODEL_URL")
    if not base:
        raise RuntimeError("STREAMLAB_MODEL_URL is not set: start the app server with "
                           "env={'STREAMLAB_MODEL_URL': mock.base_url}")
    base = base.rstrip("/")
    if not spec:
        return base
    root = re.sub(r"(/s/[^/]+)?/v1$", "", base)
    return f"{root}/s/{spec}/v1"


@lru_cache(maxsize=1)
def _http_clients():
    import httpx

    timeout = httpx.Timeout(600.0, connect=5.0)  # the openai SDK's defaults
    return httpx.Client(timeout=timeout), httpx.AsyncClient(timeout=timeout)


@lru_cache(maxsize=64)
def chat_model(spec: str | None = None):
    """A ``langchain_openai.ChatOpenAI`` pointed at the mock (one per spec and process).

    The models share one pair of httpx clients: building a ChatOpenAI with its
    own clients takes ~0.3 s of blocked event loop on the first request of each spec.
    """
    from langchain_openai import ChatOpenAI

    sync_client, async_client = _http_clients()
    return ChatOpenAI(
        model=os.environ.get("STREAMLAB_MODEL", "streamlab-mock"),
        base_url=model_url(spec),
        api_key=os.environ.get("STREAMLAB_API_KEY", "sk-streamlab-local"),
        streaming=True,
        max_retries=int(os.environ.get("STREAMLAB_MODEL_RETRIES", "0")),
        http_client=sync_client,
        http_async_client=async_client,
    )


@asynccontextmanager
async def warm_start(app: Any) -> AsyncIterator[None]:
    """FastAPI lifespan: build the chat model before the first request (when the model URL is set)."""
    if os.environ.get("STREAMLAB_MODEL_URL"):
        chat_model()
    yield


def sse_ping() -> float:
    """sse-starlette's keep-alive comment interval in wall-clock seconds (15 scenario seconds)."""
    return to_real(SSE_PING)


async def traced(rid: str, route: str, tokens: AsyncIterator[Any], *, unit: str = "tokens",
                 each: Callable[[int, Any], None] | None = None, end: str = "done {n} {unit}") -> AsyncIterator[Any]:
    """Pass tokens through, logging each one, the end, and how the stream stopped.

    ``asyncio.CancelledError`` is what a Starlette/sse-starlette stream sees when
    the client went away (``DisconnectLog`` logs that on its own line) and also
    when sse-starlette ends its streams because the server is shutting down;
    ``GeneratorExit`` is what a generator sees when it is closed unfinished.
    ``unit`` names what passes in the lines, ``each(n, item)`` logs one (default:
    ``log_token``), ``end`` is the last line (the LangGraph app traces "events").
    """
    n = 0
    log(rid, route, "start")
    try:
        async for item in tokens:
            if each is None:
                log_token(rid, route, n, item)
            else:
                each(n, item)
            n += 1
            yield item
    except asyncio.CancelledError:
        log(rid, route, f"STREAM CANCELLED (CancelledError) after {n} {unit}")
        raise
    except GeneratorExit:
        log(rid, route, f"STREAM CLOSED (GeneratorExit) after {n} {unit}")
        raise
    except Exception as exc:
        log(rid, route, f"ERROR {type(exc).__name__}: {exc} after {n} {unit}")
        raise
    log(rid, route, end.format(n=n, unit=unit))


class DisconnectLog:
    """Plain ASGI middleware (``app.add_middleware(DisconnectLog)``) that logs how a client left.

    It sees what the app sees: ``receive()`` returning ``http.disconnect`` before the
    response ended (``CLIENT DISCONNECT (http.disconnect)``), or Starlette's
    ``ClientDisconnect`` raised out of the app. It also gives every request an
    ``X-Request-ID`` so the handler and this log line agree. Unlike Starlette's
    ``BaseHTTPMiddleware`` it neither buffers the body nor hides the disconnect.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rid = request_id(scope["headers"])
        if not any(name.lower() == b"x-request-id" for name, _ in scope["headers"]):
            scope = {**scope, "headers": [*scope["headers"], (b"x-request-id", rid.encode())]}
        path = scope["path"]
        state = {"sent": 0, "done": False, "logged": False}

        async def watched_send(message: dict) -> None:
            if message["type"] == "http.response.body":
                state["sent"] += len(message.get("body", b""))
                state["done"] = not message.get("more_body", False)
            await send(message)

        async def watched_receive() -> dict:
            message = await receive()
            if message["type"] == "http.disconnect" and not state["done"] and not state["logged"]:
                state["logged"] = True
                log(rid, path, f"CLIENT DISCONNECT (http.disconnect) after {state['sent']} body bytes sent")
            return message

        from starlette.requests import ClientDisconnect

        try:
            await self.app(scope, watched_receive, watched_send)
        except ClientDisconnect:
            log(rid, path, f"CLIENT DISCONNECT (ClientDisconnect) after {state['sent']} body bytes sent")
            raise


def traced_sync(rid: str, route: str, tokens: Iterator[str], *,
                closed: str = "STREAM CLOSED (GeneratorExit)") -> Iterator[str]:
    """``traced`` for plain generators (WSGI apps, sync code); ``closed`` words the GeneratorExit line."""
    n = 0
    log(rid, route, "start")
    try:
        for text in tokens:
            log_token(rid, route, n, text)
            n += 1
            yield text
    except GeneratorExit:
        log(rid, route, f"{closed} after {n} tokens")
        raise
    except (BrokenPipeError, ConnectionResetError) as exc:
        log(rid, route, f"CLIENT DISCONNECT ({type(exc).__name__}) after {n} tokens")
        raise
    except SystemExit:
        log(rid, route, f"WORKER EXIT (SystemExit: the server is ending this worker) after {n} tokens")
        raise
    except Exception as exc:
        log(rid, route, f"ERROR {type(exc).__name__}: {exc} after {n} tokens")
        raise
    log(rid, route, f"done {n} tokens")


async def llm_tokens(prompt: str, spec: str | None) -> AsyncIterator[str]:
    """Token texts of ``ChatOpenAI.astream`` (empty chunks dropped)."""
    async for chunk in chat_model(spec).astream(prompt):
        if chunk.content:
            yield chunk.content


def llm_tokens_sync(prompt: str, spec: str | None) -> Iterator[str]:
    """Token texts of the *sync* ``ChatOpenAI.stream``: blocks the calling thread between tokens."""
    for chunk in chat_model(spec).stream(prompt):
        if chunk.content:
            yield chunk.content


def sse_frame(data: str, *, event: str | None = None, id: str | int | None = None) -> str:
    """One SSE event as text (multi-line data split into several ``data:`` fields): ``streamlab._sse.format_event``,
    the writing half of the package's one SSE parser."""
    return format_event(data, event=event, id=id)
