"""CrewAI helpers, taught in notebooks/03_crewai.ipynb (article "CrewAI production": "streaming response cutoff in production" in CrewAI).

    observe(mock)              ``with observe(mock) as seen:`` around a kickoff: ``seen.requests`` are the model
                               requests made inside the block (the mock's journal), ``seen.llm_calls`` what
                               CrewAI's own events said about each LLM call (stream flag, finish_reason, usage,
                               error), ``seen.tools`` each tool call with its output size, ``seen.agent_errors``
                               the agent's failed attempts (``AgentExecutionErrorEvent``; all but the last
                               one were retried)
    understand(item)           ``understand=`` for ``sl.record`` over ``with_result(crew_stream)``: a
                               ``StreamChunk`` carries text, the final ``CrewOutput`` is the end marker
    with_result(streaming)     iterate a ``CrewStreamingOutput``, then yield its ``.result``
    report(runs)               one table: outcome, tokens, error, model requests, LLM finish_reasons, E2E
    words(text)                tokens in the mock's unit (whitespace-separated words)
    backoff_in_scenario_time()  the retry backoffs of the openai SDK (0.5 s doubling to 8 s) and of CrewAI's
                               rate-limit retry run in scenario time, like every other duration streamlab scales
    quiet()                    keep CrewAI's log lines in a ``LogBook`` instead of under every cell
    NetworkWatch               count (and refuse) every DNS lookup and connection that would leave loopback,
                               also those a background thread would swallow; the last cell prints the count
    serve(app)                 an ASGI app (the notebook's FastAPI app) on uvicorn, in a thread of this process
    streamed_text()            ``with streamed_text() as text:``: the text every LLM call streamed inside the
                               block, by task id (``LLMStreamChunkEvent``; ``replay()`` gives no stream object)
    stored_tasks(crew)         what CrewAI kept of the crew's last kickoff for replay (``crewai log-tasks-outputs``)
    replay(crew, task_id)      ``crew.replay(task_id)``, measured: the stored tasks before, the output or the
                               error, the text streamed by task, what CrewAI printed meanwhile
    HTTPStream, app_event      the job stream client (re-exported from ``streamlab._clients``)

Nothing here imports crewai at module import: ``sl.offline()`` must run first, because
crewai builds its telemetry (an OpenTelemetry exporter to telemetry.crewai.com, plus
SIGINT/SIGTERM handlers) when ``crewai`` is imported, reading the switches then.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import socket
import threading
from dataclasses import dataclass, field
from typing import Any, Iterator

from .._clients import HTTPStream, app_event
from .._mock import JournalEntry, MockLLM
from .._offline import NetworkBlocked
from .._plots import _t, text_table
from .._recorder import ChunkInfo, Run, inspect_chunk
from .._servers import ThreadedASGIServer
from .._text import count_tokens
from .._timescale import current_time_scale, scale_sdk_backoff

__all__ = ["observe", "Observation", "LLMCall", "ToolCall", "understand", "with_result", "report", "words",
           "backoff_in_scenario_time", "quiet", "LogBook", "NetworkWatch", "serve", "HTTPStream", "app_event",
           "streamed_text", "stored_tasks", "StoredTask", "replay", "Replay"]


# --------------------------------------------------------------------------- what a kickoff did


@dataclass
class LLMCall:
    """One LLM call as CrewAI's events report it (``LLMCallStarted`` + ``Completed`` / ``Failed``)."""

    call_id: str
    stream: bool | None = None
    max_tokens: int | None = None
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    error: str | None = None
    chunks: int = 0           # LLMStreamChunkEvents
    ended: bool = False


@dataclass
class ToolCall:
    """One tool call: name and the size of what it returned, as ``ToolUsageFinishedEvent`` reports it."""

    name: str
    output_chars: int | None = None
    error: str | None = None


@dataclass
class Observation:
    """What happened inside one ``with observe(mock):`` block."""

    mock: MockLLM | None
    first: int = 0
    llm: dict[str, LLMCall] = field(default_factory=dict)
    tools: list[ToolCall] = field(default_factory=list)
    agent_errors: list[str] = field(default_factory=list)   # AgentExecutionErrorEvent.error: one per failed attempt
    requests: list[JournalEntry] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)      # log lines written in the block (after quiet())
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def llm_calls(self) -> list[LLMCall]:
        return list(self.llm.values())

    @property
    def finish_reasons(self) -> list[str | None]:
        """finish_reason of every LLM call that completed, in order (None: the stream ended without one)."""
        return [c.finish_reason for c in self.llm_calls if c.ended and c.error is None]

    @property
    def request_bytes(self) -> list[int]:
        """Size of every model request body (JSON, bytes), in order."""
        import json

        return [len(json.dumps(e.body).encode()) if e.body is not None else 0 for e in self.requests]

    def summary(self) -> str:
        failed = sum(1 for c in self.llm_calls if c.error)
        reasons = ",".join(str(r) for r in self.finish_reasons) or "-"
        return (f"model requests: {len(self.requests)}; CrewAI LLM calls: {len(self.llm)} ({failed} failed); "
                f"finish_reason: {reasons}; failed agent attempts: {len(self.agent_errors)}")

    def __repr__(self) -> str:
        return f"<Observation {self.summary()}>"


def _handlers(seen: Observation) -> dict[type, Any]:
    from crewai.events.types.agent_events import AgentExecutionErrorEvent
    from crewai.events.types.llm_events import (LLMCallCompletedEvent, LLMCallFailedEvent, LLMCallStartedEvent,
                                                LLMStreamChunkEvent)
    from crewai.events.types.tool_usage_events import ToolUsageErrorEvent, ToolUsageFinishedEvent

    def call(event: Any) -> LLMCall:
        with seen._lock:
            return seen.llm.setdefault(event.call_id, LLMCall(event.call_id))

    def started(source: Any, event: Any) -> None:
        c = call(event)
        c.stream = event.stream
        c.max_tokens = event.max_tokens if event.max_tokens is None else int(event.max_tokens)

    def completed(source: Any, event: Any) -> None:
        c = call(event)
        c.finish_reason, c.usage, c.ended = event.finish_reason, event.usage, True

    def failed(source: Any, event: Any) -> None:
        c = call(event)
        c.error, c.ended = event.error, True

    def chunk(source: Any, event: Any) -> None:
        call(event).chunks += 1

    def tool_done(source: Any, event: Any) -> None:
        output = event.output
        with seen._lock:
            seen.tools.append(ToolCall(event.tool_name, None if output is None else len(str(output))))

    def tool_error(source: Any, event: Any) -> None:
        with seen._lock:
            seen.tools.append(ToolCall(event.tool_name, error=str(event.error)))

    def agent_error(source: Any, event: Any) -> None:
        with seen._lock:
            seen.agent_errors.append(event.error)

    return {LLMCallStartedEvent: started, LLMCallCompletedEvent: completed, LLMCallFailedEvent: failed,
            LLMStreamChunkEvent: chunk, ToolUsageFinishedEvent: tool_done, ToolUsageErrorEvent: tool_error,
            AgentExecutionErrorEvent: agent_error}


@contextlib.contextmanager
def observe(mock: MockLLM | None = None) -> Iterator[Observation]:
    """Collect CrewAI's events and the mock's requests for the duration of the block.

        with slc.observe(mock) as seen:
            run = await sl.arecord(crew.kickoff_async, expected=800)
        seen.requests, seen.llm_calls, seen.agent_errors, seen.logs, seen.summary()

    Handlers are registered on ``crewai_event_bus`` for the block only. CrewAI runs
    most handlers in a thread pool; the block waits for them (``flush``) before it ends.
    """
    from crewai.events.event_bus import crewai_event_bus

    seen = Observation(mock=mock, first=mock.journal.last.id if mock is not None and mock.journal.last else 0)
    first_log = len(_logbook.records) if _logbook is not None else 0
    handlers = _handlers(seen)
    for event_type, handler in handlers.items():
        crewai_event_bus.register_handler(event_type, handler)
    try:
        yield seen
    finally:
        crewai_event_bus.flush(timeout=10)
        for event_type, handler in handlers.items():
            crewai_event_bus.off(event_type, handler)
        if mock is not None:
            seen.requests = [e for e in mock.journal.chat() if e.id > seen.first]
        if _logbook is not None:
            seen.logs = _logbook.lines(first_log)


# --------------------------------------------------------------------------- CrewAI's own stream


def with_result(streaming: Any) -> Iterator[Any]:
    """Every chunk of a ``CrewStreamingOutput`` (``Crew(stream=True).kickoff()``), then its final ``.result``."""
    for chunk in streaming:
        yield chunk
    yield streaming.result


def understand(item: Any) -> ChunkInfo:
    """``understand=`` for ``sl.record``: CrewAI ``StreamChunk`` text; the ``CrewOutput`` ends the stream."""
    name = type(item).__name__
    if name == "StreamChunk":
        text = item.content if isinstance(item.content, str) else None
        return ChunkInfo(text or None, None, False, len((item.content or "").encode()))
    if name == "CrewOutput":
        return ChunkInfo(None, "stop", True, len(str(item.raw or "").encode()))
    return inspect_chunk(item)


# --------------------------------------------------------------------------- tables


def report(rows: list[tuple[str, Run, Observation]]) -> str:
    """A table of (label, run, observation): what the caller got and what it cost.

    ``finish`` lists the finish_reason of each completed LLM call, as CrewAI's
    ``LLMCallCompletedEvent`` reports it (``None``: the answer ended without one).
    """
    header = ("run", "outcome", "tokens", "error", "requests", "finish", "E2E")
    body = []
    for label, run, seen in rows:
        got = f"{run.tokens}/{run.expected}" if run.expected is not None else str(run.tokens)
        reasons = ",".join(str(r) for r in seen.finish_reasons) or "-"
        body.append((label, str(run.outcome), got, run.error_class, str(len(seen.requests)), reasons, _t(run.e2e)))
    return text_table(header, body, numeric=(6,), fixed={6: 12})  # text, and an HTML table in a notebook


def words(text: str | None) -> int:
    """Tokens in the mock's unit (words)."""
    return count_tokens(text or "")


# --------------------------------------------------------------------------- time and noise


_backoff_originals: Any = None  # CrewAI's own retry delay function, while patched


def backoff_in_scenario_time() -> None:
    """Make the retry backoffs of the openai SDK and of CrewAI run in scenario time (idempotent).

    The openai SDK sleeps 0.5 s, 1 s, 2 s ... (jittered, capped at 8 s) between
    retries of a failed request; CrewAI's own rate-limit retry (``crewai.llms.retry``)
    sleeps 1 s, 2 s ... between attempts on a 429. Both sleep in wall-clock time,
    while everything else in a streamlab run (model timing, hop timeouts, stalls)
    runs at ``sl.time_scale``: without this, a backoff would count 1/scale times
    too much in the scenario seconds the tables print. The number of retries and
    the backoff formulas stay the libraries' own; a server's ``Retry-After`` is
    left alone (the mock already scales it).
    """
    global _backoff_originals
    if _backoff_originals is not None:
        return
    import crewai.llms.retry as crewai_retry

    scale_sdk_backoff()
    crew_original = crewai_retry.get_retry_delay_seconds

    def crew_scaled(retry_number: int, *, retry_after_seconds: float | None = None, **kwargs: Any) -> float:
        seconds = crew_original(retry_number, retry_after_seconds=retry_after_seconds, **kwargs)
        return seconds if retry_after_seconds is not None else seconds * current_time_scale()

    _backoff_originals = crew_original
    crewai_retry.get_retry_delay_seconds = crew_scaled  # type: ignore[assignment]


def _restore_backoff() -> None:
    """Undo ``backoff_in_scenario_time()`` (for tests)."""
    global _backoff_originals
    if _backoff_originals is None:
        return
    import crewai.llms.retry as crewai_retry

    scale_sdk_backoff(False)
    crewai_retry.get_retry_delay_seconds = _backoff_originals  # type: ignore[assignment]
    _backoff_originals = None


class LogBook(logging.Handler):
    """The log records of this process, kept instead of printed (``quiet()`` installs one on the root logger)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []
        self._guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._guard:
            self.records.append(record)

    def lines(self, since: int = 0, grep: str | None = None) -> list[str]:
        """``LEVEL logger: message`` of the records from index ``since``, optionally only those containing ``grep``."""
        with self._guard:
            records = self.records[since:]
        out = [f"{r.levelname} {r.name}: {r.getMessage()}" for r in records]
        return [line for line in out if grep is None or grep in line]


_logbook: LogBook | None = None


def quiet() -> LogBook:
    """Keep CrewAI's log lines and console warnings out of the cell outputs (idempotent).

    CrewAI logs every failed LLM call through the root logger (``logging.error``),
    which makes Python install a stderr handler on the root logger the first time
    (``logging.basicConfig`` is implied by module-level ``logging.error``), and its
    event bus prints ``[CrewAIEventsBus] Warning: Event pairing mismatch ...`` on
    the error path. This keeps the log records in a ``LogBook`` (read them with
    ``logs.lines(grep=...)`` or ``seen.logs``) and turns the pairing warnings off.

    And CrewAI's one-time tracing notice: the first crew run of a fresh storage directory ends with a
    "Tracing Preference Saved" panel, which rich prints straight into a notebook (past ``sys.stdout``).
    ``sl.offline()`` gives every process a fresh private directory, so every notebook would show it;
    ``quiet()`` records the first run as done, declined (CrewAI's ``mark_first_execution_done``), in that
    private directory only. A ``CREWAI_STORAGE_DIR`` the user set is left alone. CrewAI reads the
    flag once, when ``import crewai`` builds its trace listener (``first_time_handler.is_first_time``),
    so ``quiet()`` clears that latch too; otherwise the panel still comes at the first crew's end, printed
    from CrewAI's handler thread into whichever cell is running then (or none).
    """
    global _logbook
    if _logbook is None:
        _logbook = LogBook()
        logging.getLogger().addHandler(_logbook)
    from .._offline import crewai_storage_dir

    private = crewai_storage_dir()
    if private is not None and os.environ.get("CREWAI_STORAGE_DIR") == private:
        from crewai.events.listeners.tracing.utils import is_first_execution, mark_first_execution_done

        if is_first_execution():
            mark_first_execution_done(user_consented=False)
        from crewai.events.listeners.tracing.trace_listener import TraceCollectionListener

        listener = TraceCollectionListener._instance
        handler = getattr(listener, "first_time_handler", None)
        if handler is not None:
            handler.is_first_time = False
    from crewai.events import event_context

    event_context._default_config.mismatch_behavior = event_context.MismatchBehavior.SILENT
    event_context._default_config.empty_pop_behavior = event_context.MismatchBehavior.SILENT
    return _logbook


# --------------------------------------------------------------------------- network


def _is_loopback_host(host: Any) -> bool:
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode("idna", "replace")
    host = str(host)
    if host in ("localhost", "", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


class NetworkWatch:
    """Count (and refuse) every attempt to leave loopback: name lookups and connections.

        watch = slc.NetworkWatch().install()      # with sl.offline(), before importing crewai
        ...
        watch.attempts                            # [] when nothing tried

    ``sl.offline()`` refuses non-loopback name lookups and connections, but an
    exception raised in a background thread (an OpenTelemetry exporter that
    retries quietly) never reaches the notebook. This watch refuses the same
    things with ``NetworkBlocked`` and keeps ``(kind, target, thread name)`` for
    each attempt, so "nothing tried to leave" can be printed, not assumed. A name
    lookup counts because its DNS query is the first packet out. It wraps the
    socket functions in force when installed (``sl.offline()``'s guard included)
    and puts them back on ``uninstall()``.
    """

    def __init__(self) -> None:
        self.attempts: list[tuple[str, str, str]] = []
        self._saved: tuple[Any, Any, Any] | None = None

    def _note(self, kind: str, target: Any) -> None:
        self.attempts.append((kind, str(target), threading.current_thread().name))

    def install(self) -> "NetworkWatch":
        if self._saved is not None:
            return self
        getaddrinfo, connect, connect_ex = socket.getaddrinfo, socket.socket.connect, socket.socket.connect_ex
        self._saved = (getaddrinfo, connect, connect_ex)
        watch = self

        def guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any):
            if not _is_loopback_host(host):
                watch._note("dns", host)
                raise NetworkBlocked(f"streamlab offline guard: refused to look up {host!r} (only loopback allowed)")
            return getaddrinfo(host, *args, **kwargs)

        def guarded(original: Any):
            def connect_(sock: socket.socket, address: Any):
                if sock.family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple) \
                        and not _is_loopback_host(address[0]):
                    watch._note("connect", address[0])
                    raise NetworkBlocked(f"streamlab offline guard: refused a connection to {address!r} "
                                         "(only loopback allowed)")
                return original(sock, address)
            return connect_

        socket.getaddrinfo = guarded_getaddrinfo  # type: ignore[assignment]
        socket.socket.connect = guarded(connect)  # type: ignore[method-assign]
        socket.socket.connect_ex = guarded(connect_ex)  # type: ignore[method-assign]
        return self

    def uninstall(self) -> None:
        if self._saved is None:
            return
        socket.getaddrinfo, socket.socket.connect, socket.socket.connect_ex = self._saved  # type: ignore[assignment]
        self._saved = None

    def __repr__(self) -> str:
        return f"<NetworkWatch {len(self.attempts)} attempts to leave loopback>"


# --------------------------------------------------------------------------- the notebook's app


def serve(app: Any, *, name: str = "crew-app") -> ThreadedASGIServer:
    """Start ``app`` (any ASGI app) on uvicorn in a thread of this process; stop it with ``.stop()``.

    The crews the app runs share this kernel's CrewAI and the notebook's mock,
    so a job's model requests show up in ``mock.journal``. Routes declared with
    ``def`` run in uvicorn's thread pool (no event loop there: ``crew.kickoff()``
    works); routes declared ``async def`` run on the server's loop.
    """
    server = ThreadedASGIServer(app, name=name)
    server.kind = "crew app (uvicorn thread)"
    return server.start()



# --------------------------------------------------------------------------- task replay


@contextlib.contextmanager
def streamed_text() -> Iterator[dict[str, list[str]]]:
    """``with streamed_text() as text:``: ``text[task_id]`` is every text chunk an LLM call of that task
    streamed inside the block, in order (CrewAI runs ``LLMStreamChunkEvent`` handlers synchronously).

    It sees what a ``Crew(stream=True)`` caller sees during ``kickoff()`` (its ``StreamChunk``s are made
    from the same events) and what streams during ``crew.replay()``, which returns a plain ``CrewOutput``.
    """
    from crewai.events.event_bus import crewai_event_bus
    from crewai.events.types.llm_events import LLMStreamChunkEvent

    text: dict[str, list[str]] = {}

    def chunk(source: Any, event: Any) -> None:
        if event.chunk and event.tool_call is None:
            text.setdefault(str(event.task_id or ""), []).append(event.chunk)

    crewai_event_bus.register_handler(LLMStreamChunkEvent, chunk)
    try:
        yield text
    finally:
        crewai_event_bus.flush(timeout=10)
        crewai_event_bus.off(LLMStreamChunkEvent, chunk)


@dataclass(frozen=True)
class StoredTask:
    """One task output CrewAI stored from the last kickoff (``latest_kickoff_task_outputs.db``)."""

    task_index: int
    task_id: str
    words: int              # of its stored raw output, in the mock's unit
    was_replayed: bool


def stored_tasks(crew: Any) -> list[StoredTask]:
    """The task outputs ``crew.replay()`` can start from: CrewAI writes one after each task that *finished*
    (``Crew._store_execution_log``), in a SQLite file under ``CREWAI_STORAGE_DIR`` (with ``sl.offline()``
    a private directory of this process, removed at exit). A task whose LLM call raised has none."""
    stored = crew._task_output_handler.load() or []
    return [StoredTask(int(d["task_index"]), str(d["task_id"]), count_tokens((d.get("output") or {}).get("raw") or ""),
                       bool(d.get("was_replayed"))) for d in stored]


@dataclass
class Replay:
    """What one ``crew.replay(task_id)`` did (``replay()``)."""

    task_id: str
    stored_before: list[StoredTask]
    output: Any = None                      # the CrewOutput; None when replay raised
    error: BaseException | None = None      # e.g. ValueError "Task with id ... not found in the crew's tasks."
    text: dict[str, list[str]] = field(default_factory=dict)  # streamed during the replay, by task id
    printed: str = ""                       # what CrewAI printed meanwhile (its first-run tracing notice)

    @property
    def error_line(self) -> str:
        return f"{type(self.error).__name__}: {self.error}" if self.error is not None else ""


def replay(crew: Any, task_id: Any, **kwargs: Any) -> Replay:
    """Call ``crew.replay(task_id)`` (CrewAI's documented way to re-run a crew from a task of its last
    kickoff) and measure it: which task outputs were stored before, the ``CrewOutput`` or the exception
    (not raised: kept in ``.error``), the text every task streamed during the replay.

    CrewAI re-runs the task ``task_id`` itself and every task after it, with the stored outputs of the
    tasks before it as context; ``task_id`` must be one of ``stored_tasks(crew)`` or CrewAI raises
    ``ValueError``. What CrewAI prints to stdout meanwhile (the first completed execution of a fresh
    storage directory prints a "Tracing Preference Saved" panel) is kept in ``.printed``.

    CrewAI has no async replay, and its agents refuse to run synchronously on a thread with a running
    event loop (a notebook kernel's: ``RuntimeError: Agent execution was invoked synchronously ...``),
    so there the call runs in a worker thread (the caller still waits for it).
    """
    import asyncio
    import concurrent.futures
    import contextvars
    import io

    result = Replay(str(task_id), stored_tasks(crew))
    out = io.StringIO()

    def call() -> None:
        try:
            result.output = crew.replay(str(task_id), **kwargs)
        except Exception as exc:  # noqa: BLE001 - measured, not raised: a failed replay is a finding
            result.error = exc

    try:
        asyncio.get_running_loop()
        in_loop = True
    except RuntimeError:
        in_loop = False
    with streamed_text() as text, contextlib.redirect_stdout(out):
        if in_loop:
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                pool.submit(contextvars.copy_context().run, call).result()
        else:
            call()
    result.text, result.printed = text, out.getvalue()
    return result
