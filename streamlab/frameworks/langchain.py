"""LangChain helpers, taught in notebooks/02_langchain.ipynb (article "LangChain scaling": "streaming response cutoff when scaling").

The app the notebook's uvicorn and gunicorn processes serve::

    combined_app()              the routes of streamlab.apps.chat, .blocking, .shared_state and .jobs in one
                                FastAPI app, plus /chat/plain (below), so the notebook starts one server
                                per setting instead of one per demo app (a factory: nothing is imported
                                until a server calls it):
                                    Uvicorn("streamlab.frameworks.langchain:combined_app", extra_args=["--factory"])
                                    Gunicorn("streamlab.frameworks.langchain:combined_app()", ...)

Clients (durations in scenario seconds, see ``streamlab.time_scale``)::

    endpoint(server, route, **query)   a URL; ``spec=`` picks the mock model's behaviour per request
    sse_blocks(url)                    GET an SSE endpoint and yield each event block, decoded (gzip too)
    record_sse(url, ...)               ``sl.record`` of ``sse_blocks`` with ``token_events``
    record_json(url, ...)              ``sl.record`` of a buffered JSON answer (its ``text``)
    token_events(block)                ``understand=`` for the demo apps' SSE (token / done events)
    first_bytes(url, clients=10)       TTFB, TTFT and E2E of concurrent GETs, as ``Hit``s
    together(*calls, stagger=0)        run callables at once (or staggered), results in order
    HealthProbe(url)                   poll a health endpoint in the background; ``.worst`` latency

Reading what happened::

    chunk_timeouts()           ``with chunk_timeouts() as fired:``: langchain_openai's "stream_chunk_timeout
                               fired" warning kept as a line with its timeout, instead of a bare stderr line
    describe_error(exc)        ``module.Class: message``, never an empty message (httpx's async ReadTimeout
                               has none: then the timeout that fired, in scenario seconds)

    timeout_defaults(llm)      the timeouts a ``ChatOpenAI`` really runs with, read from its clients
    quiet(line)                a server log line without gunicorn's / nginx's timestamp and ids
    TERMINATION                the article's termination messages, with what the pinned servers print

``/chat/plain`` is the hand-written SSE endpoint many apps have: ``StreamingResponse`` with
``text/event-stream`` and ``Cache-Control: no-cache``, and *no* ``X-Accel-Buffering`` header
(``?accel=no`` adds it). sse-starlette's ``EventSourceResponse`` (the article's fix, ``/chat/sse``)
always sends ``X-Accel-Buffering: no``, so only a route like this one shows what nginx's
buffering settings do to a stream.
"""

import asyncio
import contextlib
import json
import logging
import re
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterator
from urllib.parse import urlencode

import httpx

from .._sse import SSEParser, iter_blocks, parse_block
from .._timescale import to_real, to_scenario

__all__ = ["combined_app", "endpoint", "sse_blocks", "get_json_text", "record_sse", "record_json", "token_events",
           "first_bytes", "Hit", "together", "HealthProbe", "timeout_defaults", "quiet", "TERMINATION",
           "chunk_timeouts", "describe_error"]


# --------------------------------------------------------------------------- the app


def combined_app():
    """The demo apps of article "LangChain scaling" (+ jobs) in one FastAPI app, plus ``/chat/plain``. A factory:
    nothing is imported until an app server calls it."""
    from fastapi import FastAPI, Request
    from fastapi.responses import StreamingResponse

    from ..apps import blocking, chat, jobs, shared_state
    from ..apps._common import DisconnectLog, llm_tokens, request_id, spec_of, sse_frame, traced, warm_start

    app = FastAPI(title="streamlab: the LangChain article's patterns", lifespan=warm_start)
    app.add_middleware(DisconnectLog)
    seen = {(getattr(r, "path", ""), frozenset(getattr(r, "methods", None) or ())) for r in app.router.routes}
    for module in (chat, blocking, shared_state, jobs):
        for route in module.app.router.routes:
            key = (getattr(route, "path", ""), frozenset(getattr(route, "methods", None) or ()))
            if key not in seen:
                seen.add(key)
                app.router.routes.append(route)

    @app.get("/chat/plain")
    async def chat_plain(request: Request, q: str = chat.PROMPT, accel: str | None = None):
        rid, spec = request_id(request.headers), spec_of(request.query_params, request.headers)

        async def frames():
            async for text in traced(rid, "/chat/plain", llm_tokens(q, spec)):
                yield sse_frame(text, event="token")
            yield sse_frame("[DONE]", event="done")

        headers = {"Cache-Control": "no-cache", "X-Request-ID": rid}
        if accel:
            headers["X-Accel-Buffering"] = accel
        return StreamingResponse(frames(), media_type="text/event-stream", headers=headers)

    return app


# --------------------------------------------------------------------------- clients


@lru_cache(maxsize=1)
def _client() -> httpx.Client:
    """One shared httpx client: a new ``httpx.Client`` builds an SSL context (tens of ms of CPU),
    which would add jitter to every staggered or concurrent request. Connections are not reused
    across requests (each stream gets its own TCP connection, as a browser tab would)."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
    return httpx.Client(limits=limits)


def endpoint(server: Any, route: str, **query: Any) -> str:
    """``server.url + route`` with ``query`` URL-encoded; ``spec=`` picks the mock model's behaviour
    for that request (``endpoint(app, "/chat/sse", spec="tokens=40,itl=2")``)."""
    base = server.url if hasattr(server, "url") else str(server)
    return base.rstrip("/") + route + (("?" + urlencode(query)) if query else "")


def sse_blocks(url: str, *, timeout: float | None = None, headers: dict[str, str] | None = None,
               stats: dict[str, Any] | None = None) -> Iterator[str]:
    """GET ``url`` and yield every SSE event block (text up to the blank line) as it is decoded.

    httpx decompresses a gzip body (it sends ``Accept-Encoding: gzip`` like a browser), so a
    proxy that compresses the stream is seen the way a browser sees it. ``timeout`` is the
    read timeout in scenario seconds (None: wait forever). Raises ``httpx.HTTPStatusError``
    for a 4xx/5xx answer. If ``stats`` is a dict it gets ``status``, ``content_encoding`` and
    ``t_headers`` (``time.perf_counter()`` when the response head arrived).
    """
    client = _client()
    with client.stream("GET", url, headers=headers, timeout=httpx.Timeout(to_real(timeout), connect=5.0)) as response:
        if stats is not None:
            stats.update(status=response.status_code, t_headers=time.perf_counter(),
                         content_encoding=response.headers.get("content-encoding", "-"))
        if response.status_code >= 400:
            response.read()
            response.raise_for_status()
        for block in iter_blocks(response.iter_text()):  # streamlab._sse: the package's one SSE parser
            yield block + "\n\n"


def get_json_text(url: str, *, timeout: float | None = None, headers: dict[str, str] | None = None) -> str:
    """GET a buffered JSON answer and return its ``text`` (raises ``httpx.HTTPStatusError`` for 4xx/5xx)."""
    response = _client().get(url, timeout=httpx.Timeout(to_real(timeout), connect=5.0), headers=headers)
    response.raise_for_status()
    return response.json()["text"]


@dataclass
class Hit:
    """One GET as a client saw it (scenario seconds from the request)."""

    status: int | None
    ttfb: float | None      # first body byte
    ttft: float | None      # first token of answer text (SSE: first token event; JSON: the parsed body)
    e2e: float
    tokens: int
    error: str | None = None

    @property
    def outcome(self) -> str:
        """``http error`` (a 4xx/5xx: a 504 from a proxy is never complete), ``error`` (no HTTP response
        or a broken body: ``error`` names the class) or ``complete``."""
        if self.status is not None and self.status >= 400:
            return "http error"
        return "error" if self.error is not None else "complete"


async def _one(client: httpx.AsyncClient, url: str, headers: dict[str, str]) -> Hit:
    from .._clients import app_event

    t0 = time.perf_counter()
    status = ttfb = ttft = None
    text: list[str] = []
    error = None
    try:
        async with client.stream("GET", url, headers=headers) as response:
            status = response.status_code
            sse = response.headers.get("content-type", "").startswith("text/event-stream")
            body, parser = b"", SSEParser()
            async for chunk in response.aiter_bytes():
                now = time.perf_counter()
                if ttfb is None and chunk:
                    ttfb = now
                if not sse:
                    body += chunk
                    continue
                for block in parser.feed(chunk):
                    info = app_event(block + "\n\n")
                    if info.text:
                        text.append(info.text)
                        ttft = ttft or now
            if not sse and status == 200:
                text.append(json.loads(body)["text"])
                ttft = time.perf_counter()
    except httpx.HTTPError as exc:
        error = type(exc).__name__
    rel = lambda t: None if t is None else to_scenario(t - t0)  # noqa: E731
    return Hit(status, rel(ttfb), rel(ttft), to_scenario(time.perf_counter() - t0), len("".join(text).split()), error)


def first_bytes(url: str, *, clients: int = 1, timeout: float | None = None, rid: str = "hit") -> list[Hit]:
    """``clients`` concurrent GETs of ``url`` (one event loop, one connection each); their ``Hit``s.

    Request ids are ``<rid>-<i>``, so server log lines can be matched to clients. Runs in a
    thread of its own, so it works from inside Jupyter's running event loop too.
    """
    async def main() -> list[Hit]:
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=httpx.Timeout(to_real(timeout), connect=5.0), limits=limits) as client:
            return list(await asyncio.gather(*(_one(client, url, {"X-Request-ID": f"{rid}-{i}"})
                                                for i in range(clients))))

    box: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: box.update(hits=asyncio.run(main())), daemon=True)
    thread.start()
    thread.join()
    return box["hits"]


def record_sse(url: str, *, expected: int | None = None, itl: float | None = None, label: str = "",
               rid: str | None = None, timeout: float | None = None, abort_after: int | None = None,
               abort_after_s: float | None = None, understand: Any = None):
    """``sl.record`` of an SSE endpoint of the demo apps read with ``sse_blocks`` (``X-Request-ID: rid``).

    ``understand`` defaults to ``token_events`` (``event: token`` is answer text, ``done`` ends it).
    """
    from .._recorder import record

    headers = {"X-Request-ID": rid} if rid else None
    return record(lambda: sse_blocks(url, timeout=timeout, headers=headers), expected=expected, itl=itl,
                  label=label, abort_after=abort_after, abort_after_s=abort_after_s,
                  understand=understand or token_events)


def record_json(url: str, *, expected: int | None = None, label: str = "", rid: str | None = None,
                timeout: float | None = None):
    """``sl.record`` of a buffered JSON endpoint: one chunk, its ``text``; a 4xx/5xx is the error."""
    from .._recorder import record

    headers = {"X-Request-ID": rid} if rid else None
    return record(lambda: get_json_text(url, timeout=timeout, headers=headers), expected=expected, label=label)


def token_events(block: Any):
    """``understand=`` for the demo apps' SSE: only ``event: token`` carries answer text (an
    ``answer`` event repeating the whole text is not counted again); ``done`` is the end marker."""
    from .._clients import app_event
    from .._recorder import ChunkInfo

    raw = block.decode("utf-8", "replace") if isinstance(block, (bytes, bytearray)) else str(block)
    event = parse_block(raw)
    if event.event not in (None, "token", "done") and event.data != "[DONE]":
        return ChunkInfo(None, None, False, len(raw.encode()))
    return app_event(raw)


def together(*calls: Any, stagger: float = 0.0) -> list[Any]:
    """Run zero-argument callables at the same time (one thread each); their results, in order.

    The i-th call starts ``i * stagger`` scenario seconds after the first. An exception
    raised by a call is returned in its place.
    """
    results: list[Any] = [None] * len(calls)

    def run(i: int, call: Any) -> None:
        if i and stagger:
            time.sleep(to_real(i * stagger))
        try:
            results[i] = call()
        except Exception as exc:  # noqa: BLE001 - handed back to the caller
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i, c), daemon=True) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


class HealthProbe:
    """GET ``url`` every ``every`` scenario seconds in a thread while the ``with`` block runs.

        with HealthProbe(server.url + "/health") as probe:
            ...
        probe.worst        # slowest answer, scenario seconds (a probe still waiting counts too)
    """

    def __init__(self, url: str, *, every: float = 1.0) -> None:
        self.url = url
        self.every = every
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pending: float | None = None

    def _run(self) -> None:
        with httpx.Client(timeout=httpx.Timeout(None, connect=5.0)) as client:
            while not self._stop.is_set():
                self._pending = time.perf_counter()
                client.get(self.url)
                self.latencies.append(to_scenario(time.perf_counter() - self._pending))
                self._pending = None
                self._stop.wait(to_real(self.every))

    def __enter__(self) -> "HealthProbe":
        self._thread = threading.Thread(target=self._run, name="streamlab-health-probe", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        pending = self._pending
        if pending is not None:  # a probe still blocked when the block ends counts as its wait so far
            self.latencies.append(to_scenario(time.perf_counter() - pending))
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    @property
    def worst(self) -> float:
        return max(self.latencies, default=0.0)


# --------------------------------------------------------------------------- the client's own timeouts


def timeout_defaults(llm: Any) -> dict[str, Any]:
    """The timeouts a ``langchain_openai.ChatOpenAI`` runs with, read from the objects it built.

    Keys: ``request_timeout`` (the field), ``sync_sdk_timeout`` / ``async_sdk_timeout`` (what
    its openai clients pass to httpx per request), ``max_retries``, ``stream_chunk_timeout``
    (LangChain's own per-chunk bound, async streaming only), ``tcp_user_timeout_ms`` (the
    kernel-level bound on unacknowledged data it sets on its sockets, None if none), and
    ``openai_sdk_default`` (what the bare openai SDK would use) for comparison.
    """
    import openai
    from langchain_openai.chat_models import _client_utils

    options = _client_utils._resolve_socket_options(llm.http_socket_options)
    user_timeout = next((value for _, name, value in options if name == 18), None)  # 18: TCP_USER_TIMEOUT
    return {
        "request_timeout": llm.request_timeout,
        "sync_sdk_timeout": llm.root_client.timeout,
        "async_sdk_timeout": llm.root_async_client.timeout,
        "max_retries": llm.root_client.max_retries,
        "stream_chunk_timeout": llm.stream_chunk_timeout,
        "tcp_user_timeout_ms": user_timeout,
        "openai_sdk_default": openai.DEFAULT_TIMEOUT,
    }


# --------------------------------------------------------------------------- logs


CHUNK_TIMEOUT_LOGGER = "langchain_openai.chat_models._client_utils"


class _ChunkTimeoutLines(logging.Handler):
    """Turns each chunk-timeout record into one line with its figures (scenario seconds)."""

    def __init__(self, lines: list[str], scale: float) -> None:
        super().__init__(logging.WARNING)
        self.lines, self.scale = lines, scale

    def emit(self, record: logging.LogRecord) -> None:
        timeout = getattr(record, "timeout_s", None)
        wait = f"no chunk for {timeout / self.scale:g} s" if timeout else record.getMessage()
        self.lines.append(f"stream_chunk_timeout fired: {wait} after {getattr(record, 'chunks_received', '?')} "
                          f"chunks (model {getattr(record, 'model_name', None) or '-'})")


@contextlib.contextmanager
def chunk_timeouts() -> Iterator[list[str]]:
    """``with chunk_timeouts() as fired:`` keep langchain_openai's chunk-timeout warnings out of stderr.

    When ``stream_chunk_timeout`` fires, ``ChatOpenAI.astream`` logs ``langchain_openai.stream_chunk_timeout
    fired`` at WARNING on ``langchain_openai.chat_models._client_utils`` before it raises
    ``StreamChunkTimeoutError``. Nothing configures that logger, so Python's last-resort handler
    prints the bare message to stderr, where it lands in a notebook cell with no context. Inside
    the block each such record becomes one line of ``fired`` instead (times in scenario seconds)::

        stream_chunk_timeout fired: no chunk for 120 s after 6 chunks (model streamlab-mock)

    The logger's propagation is restored on exit.
    """
    from .._timescale import current_time_scale

    lines: list[str] = []
    logger = logging.getLogger(CHUNK_TIMEOUT_LOGGER)
    handler = _ChunkTimeoutLines(lines, current_time_scale())
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


_STAMP = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4}\] \[\d+\] ")
_NGINX_STAMP = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d (\[\w+\]) \d+#\d+: \*\d+ ")


def quiet(line: str) -> str:
    """A log line without what changes from run to run: gunicorn's ``[date] [pid]`` prefix and
    nginx's date, process and connection numbers. (``pid=N``, ``pid:N`` and ports are left for
    the notebooks' sanitizer, which replaces them.)"""
    line = _STAMP.sub("", str(line))
    line = _NGINX_STAMP.sub(r"nginx \1 ", line)
    return line


def describe_error(exc: BaseException | None) -> str:
    """``module.Class: message``; an empty ``str(exc)`` is replaced by what fired (``streamlab._errors.describe``)."""
    from .._errors import describe
    from .._timescale import current_time_scale

    return describe(exc, scale=current_time_scale())


# The article's list of termination messages (article "LangChain scaling", "Inspect server termination logs"),
# with the pattern that finds what the pinned servers really print for each.
TERMINATION = {
    "Worker timeout (pid: ...)": r"(?i)worker timeout",
    "ClientDisconnect": r"ClientDisconnect|CLIENT DISCONNECT",
    "BrokenPipeError": r"BrokenPipe|EPIPE",
    "asyncio.CancelledError": r"CancelledError",
}
