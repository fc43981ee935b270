"""LangGraph helpers, part 4: reading the app's streams from the notebook (HTTP clients, the retry
helper, job polling, concurrency, log lines). SSE is parsed by ``streamlab._sse``.

Re-exported by ``streamlab.frameworks.langgraph``.
"""

import ast
import asyncio
import json
import re
import threading
import time
from typing import Any, AsyncIterator, Callable, Iterable, Iterator

import httpx

from .._recorder import ChunkInfo
from .._sse import parse_block
from .._timescale import to_real, to_scenario


def _payload(text: str) -> Any:
    """JSON if it is JSON, else a Python literal (the article's ``f"{chunk}"``), else the text."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def read_event(item: Any) -> ChunkInfo:
    """What one streamed item carries, for ``sl.record(..., understand=read_event)``.

    Understands: an SSE block (``data: {...}`` as JSON or as the article's Python repr,
    ``event: token`` / ``event: done`` frames, keep-alive comments), a JSON or repr line, and a
    job poll (a dict). A graph update that carries the final ``answer`` ends the run (the last
    node's update is the only end marker the article's endpoint sends); so do ``done`` events
    and a finished job.
    """
    nbytes = len(item.encode()) if isinstance(item, str) else len(item) if isinstance(item, bytes) else 0
    if isinstance(item, bytes):
        item = item.decode("utf-8", "replace")
    if isinstance(item, dict):
        payload, event = item, None
    else:
        text = item.strip("\n")
        if not text.strip() or text.lstrip().startswith(":") and "data:" not in text:
            return ChunkInfo(None, None, False, nbytes)  # a keep-alive comment
        if "data:" in text or "event:" in text:
            parsed = parse_block(text)
            event = parsed.event
            if parsed.data is None:
                return ChunkInfo(None, "stop" if event == "done" else None, event == "done", nbytes)
            payload = _payload(parsed.data)
        else:
            payload, event = _payload(text), None
    if event == "done" or payload == "[DONE]":
        return ChunkInfo(None, "stop", True, nbytes)
    if isinstance(payload, str):  # streamlab's "event: token / data: <text>" frames
        return ChunkInfo(payload or None, None, False, nbytes)
    if isinstance(payload, dict):
        if "token" in payload:
            return ChunkInfo(payload["token"] or None, None, False, nbytes)
        if payload.get("status") in ("done", "error"):  # a job poll
            return ChunkInfo(payload.get("answer"), "stop" if payload["status"] == "done" else None,
                             payload["status"] == "done", nbytes, payload.get("error"))
        if "history" in payload:  # a state of the looping graph: one unit per step
            return ChunkInfo(" step" if payload.get("step") else None, None, False, nbytes)
        for update in payload.values():  # {node: update}: the answer ends the run
            if isinstance(update, dict) and update.get("answer"):
                return ChunkInfo(update["answer"], "stop", True, nbytes)
    return ChunkInfo(None, None, False, nbytes)


class Stream:
    """An ``HTTPStream`` whose sync iteration always ends the way the stream ended.

    ``HTTPStream.__iter__`` reads in a thread with its own event loop; when that loop has just
    closed, its cleanup can raise ``RuntimeError('Event loop is closed')``, which then replaces
    the stream's own exception (or its normal end). This wrapper restores what really happened,
    from ``result``. Async iteration is passed through unchanged.
    """

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.result = stream.result

    def __iter__(self) -> Iterator[Any]:
        try:
            yield from self.stream
        except RuntimeError as exc:
            if "Event loop is closed" not in str(exc):
                raise
            if self.result.error is not None:
                raise self.result.error from None
            # otherwise the stream had ended normally

    def __aiter__(self) -> AsyncIterator[Any]:
        return self.stream.__aiter__()


class Lines:
    """An ``HTTPStream`` read as lines (JSON Lines, text/plain): sync and async iterable."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.result = stream.result

    def __iter__(self) -> Iterator[str]:
        pending = ""
        for chunk in self.stream:
            pending += chunk.decode("utf-8", "replace")
            *lines, pending = pending.split("\n")
            yield from (line + "\n" for line in lines if line.strip())
        if pending.strip():
            yield pending

    async def __aiter__(self) -> AsyncIterator[str]:
        pending = ""
        async for chunk in self.stream:
            pending += chunk.decode("utf-8", "replace")
            *lines, pending = pending.split("\n")
            for line in lines:
                if line.strip():
                    yield line + "\n"
        if pending.strip():
            yield pending


def post(url: str, payload: dict | None = None, *, lines: bool = False, read_timeout: float | None = None,
         headers: dict[str, str] | None = None) -> Any:
    """A POST stream over a real socket: SSE event blocks, or lines with ``lines=True``.

    ``read_timeout`` is the client's read timeout in scenario seconds (None: wait forever).
    """
    from .._clients import ClientTimeout, HTTPStream

    stream = Stream(HTTPStream(url, method="POST", json=payload if payload is not None else {"input": "hello"},
                               headers=headers, timeout=ClientTimeout(read=read_timeout),
                               unit="chunk" if lines else "event"))
    return Lines(stream) if lines else stream


class blind_retries:  # noqa: N801 - used like a function
    """The article's broken retry policy: on a timeout, send the same request again (a new run,
    on whichever worker the balancer picks). ``attempts`` counts the requests sent."""

    def __init__(self, make_stream: Callable[[], Iterable[Any]], *, attempts: int = 3,
                 on: tuple[type[BaseException], ...] = (httpx.TimeoutException,)) -> None:
        self.make_stream = make_stream
        self.max_attempts = attempts
        self.on = on
        self.attempts = 0
        self.errors: list[str] = []

    def __iter__(self) -> Iterator[Any]:
        while True:
            self.attempts += 1
            try:
                yield from self.make_stream()
                return
            except self.on as exc:
                self.errors.append(type(exc).__name__)
                if self.attempts >= self.max_attempts:
                    raise


def follow_job(url: str, payload: dict | None = None, *, every: float = 10.0, headers: dict | None = None,
               timeout: float = 30.0) -> Iterator[dict]:
    """POST ``url + "/jobs"``, then GET the job every ``every`` scenario seconds; yield each poll.

    Every request is short, so no hop timeout ever sees a long silence. ``timeout`` is the
    read timeout of each request (scenario seconds).
    """
    t = httpx.Timeout(to_real(timeout), connect=5.0)
    with httpx.Client(timeout=t, headers=headers) as client:
        created = client.post(url + "/jobs", json=payload or {"input": "hello"})
        created.raise_for_status()
        job_id = created.json()["job_id"]
        while True:
            poll = client.get(f"{url}/jobs/{job_id}")
            poll.raise_for_status()
            state = poll.json()
            yield state
            if state["status"] != "running":
                return
            time.sleep(to_real(every))


async def concurrently(makes: list[Callable[[], Any]], health_url: str, *, expected: int | None = None,
                       every: float = 1.0, understand: Callable[[Any], ChunkInfo] = read_event):
    """Record the streams of ``makes`` at once while GETting ``health_url`` every ``every`` s.

    Returns ``(runs, health)``: the ``Run`` of each stream and the health answers' latencies
    (scenario seconds). The health check runs in a thread of its own, so what it measures is
    the server, not this event loop. Await it from a notebook cell.
    """
    from .._recorder import arecord

    done = threading.Event()
    latencies: list[float] = []

    def probe() -> None:
        with httpx.Client(timeout=None) as client:
            while not done.wait(to_real(every)):
                t0 = time.perf_counter()
                client.get(health_url)
                latencies.append(to_scenario(time.perf_counter() - t0))

    prober = threading.Thread(target=probe, name="streamlab-health", daemon=True)
    prober.start()
    try:
        runs = await asyncio.gather(*(arecord(make, label=f"request {i + 1}", expected=expected,
                                              understand=understand) for i, make in enumerate(makes)))
    finally:
        done.set()
        await asyncio.get_running_loop().run_in_executor(None, prober.join)
    return list(runs), latencies


def settle(*servers: Any, timeout: float = 10.0) -> None:
    """Wait (wall clock, at most ``timeout``) until no exchange is still open at these servers:
    the mock's journal has no open request, a balancer's or proxy's log closed every exchange it
    opened. Streams a client gave up on can outlive the client; stopping a server under them
    makes it log their cancellation."""
    deadline = time.monotonic() + timeout

    def busy(server: Any) -> bool:
        journal = getattr(server, "journal", None)
        if journal is not None:
            return any(entry.ended == "open" for entry in journal)
        log = getattr(server, "log", None)
        if log is not None and hasattr(log, "of"):
            return bool({e.conn for e in log.of("open")} - {e.conn for e in log.of("close")})
        return False

    while any(busy(s) for s in servers) and time.monotonic() < deadline:
        time.sleep(0.02)


_STAMP = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4}\] \[\d+\] ")


def quiet(line: str) -> str:
    """A log line without gunicorn's ``[date] [pid]`` prefix (``pid=N`` is left to the sanitizer)."""
    return _STAMP.sub("", str(line))
