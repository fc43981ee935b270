"""AutoGen helpers, taught in notebooks/01_autogen.ipynb (article "AutoGen scaling" "streaming response cutoff when
scaling" and article "AutoGen cutoff" "streaming response cutoff" in AutoGen).

    url(server, *faults, **options)   an OpenAI base URL through ``server`` (the mock, or a proxy in front
                                      of it) whose requests carry mock faults/options: ``.../s/cut@12/v1``
    model_requests(mock)              ``with model_requests(mock) as made:``: ``made`` lists the journal
                                      entries of the model requests made inside the block
    finish_reasons()                  ``with finish_reasons() as seen:``: the finish reason and usage of
                                      every model call, read from autogen_core's event log (AgentChat's
                                      TaskResult and TextMessage do not carry them)
    capture_logs(*names)              ``with capture_logs("opentelemetry") as records:``: keep what those
                                      loggers emit instead of printing it
    LoopLag                           ``async with LoopLag() as lag:``: how late a 0.1 s ticker on this event
                                      loop woke up (``lag.max``, scenario seconds)
    busy(seconds)                     burn CPU for ``seconds`` scenario seconds (the articles' heavy_pdf_parse)
    WordCounter                       token counting for ``TokenLimitedChatCompletionContext`` in the mock's unit
                                      (words), so AutoGen never asks tiktoken for an encoding
    RequestLog                        model, max_tokens, stream flag, status and time to headers of every
                                      HTTP request an openai client makes (httpx event hooks)
    refuse_tiktoken()                 ``with refuse_tiktoken() as asked:``: record and refuse tiktoken
                                      encoding look-ups (which would download from the internet)
    tiktoken_encodings_loaded()       the encodings tiktoken has loaded in this process (the notebook ends with [])
    sdk_backoff_in_scenario_time()    the openai SDK's retry backoff runs in scenario time, like every other
                                      duration streamlab scales

Why ``WordCounter``: on autogen-ext 0.7.5 ``OpenAIChatCompletionClient.count_tokens`` calls
``tiktoken.encoding_for_model(model)`` and, for a model name tiktoken does not know (any local
model), ``tiktoken.get_encoding("cl100k_base")``, which downloads the encoding from
openaipublic.blob.core.windows.net on first use. Only ``TokenLimitedChatCompletionContext`` (and
the web surfer agent) call it; ``remaining_tokens`` also needs the model in AutoGen's own table of
OpenAI models and raises ``KeyError`` for any other name.

Nothing here imports autogen at module import.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

from .._mock import JournalEntry, MockLLM
from .._text import count_tokens
from .._timescale import scale_sdk_backoff, to_real, to_scenario
from ..faults import Fault, to_spec

__all__ = ["url", "model_requests", "finish_reasons", "ModelCall", "capture_logs", "LoopLag", "busy", "RequestLog",
           "WordCounter", "refuse_tiktoken", "TiktokenRefused", "tiktoken_encodings_loaded",
           "sdk_backoff_in_scenario_time"]


# --------------------------------------------------------------------------- where requests go


def url(server: Any, *faults: Fault | str, **options: Any) -> str:
    """OpenAI base URL through ``server`` (anything with ``.url``) carrying mock faults and options.

    The mock reads the behaviour from the path (``/s/<spec>/v1``); a proxy passes the path on,
    so ``url(proxy, Cut(at=12), itl=4)`` reaches the mock through the proxy with the fault.
    """
    spec = to_spec(*faults, **options)
    return f"{server.url}/s/{spec}/v1" if spec else f"{server.url}/v1"


class _Made(list):
    """Journal entries of the model requests made inside a ``model_requests`` block."""

    def table(self) -> str:
        from .._plots import text_table

        rows = [(str(i), "yes" if e.stream else "no", e.spec or "-", f"{e.tokens_sent}/{e.tokens_planned}",
                 str(e.finish_reason), e.ended) for i, e in enumerate(self, 1)]
        return text_table(("#", "stream", "behaviour", "sent/planned", "finish", "ended"), rows)


@contextlib.contextmanager
def model_requests(mock: MockLLM) -> Iterator[list[JournalEntry]]:
    """Collect the chat requests the mock received inside the block (filled in on exit)."""
    before = {e.id for e in mock.journal.chat()}
    made = _Made()
    try:
        yield made
    finally:
        made.extend(e for e in mock.journal.chat() if e.id not in before)


# --------------------------------------------------------------------------- what AutoGen logged


@dataclass
class ModelCall:
    """One model call as autogen_core's event log saw it."""

    kind: str                      # "LLMCall" (create) or "LLMStreamEnd" (create_stream)
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    content: Any = None

    @property
    def words(self) -> int:
        return count_tokens(self.content) if isinstance(self.content, str) else 0


class _Calls(list):
    @property
    def reasons(self) -> list[str | None]:
        return [c.finish_reason for c in self]


def _model_call(event: Any) -> ModelCall | None:
    kwargs = getattr(event, "kwargs", None)
    if not isinstance(kwargs, dict) or kwargs.get("type") not in ("LLMCall", "LLMStreamEnd"):
        return None
    response = kwargs.get("response") or {}
    if kwargs["type"] == "LLMCall":  # the raw ChatCompletion, as a dict
        choice = (response.get("choices") or [{}])[0]
        reason = choice.get("finish_reason")
        content = (choice.get("message") or {}).get("content")
    else:  # AutoGen's CreateResult: finish_reason normalised ("unknown" when the stream had none)
        reason = response.get("finish_reason")
        content = response.get("content")
    return ModelCall(kwargs["type"], reason, int(kwargs.get("prompt_tokens") or 0),
                     int(kwargs.get("completion_tokens") or 0), content)


class _EventHandler(logging.Handler):
    def __init__(self, calls: _Calls) -> None:
        super().__init__(logging.INFO)
        self.calls = calls

    def emit(self, record: logging.LogRecord) -> None:
        call = _model_call(record.msg)
        if call is not None:
            self.calls.append(call)


@contextlib.contextmanager
def finish_reasons() -> Iterator[_Calls]:
    """Every model call AutoGen makes inside the block, from its event logger (``autogen_core.events``).

    AutoGen logs ``LLMCallEvent`` after ``create()`` and ``LLMStreamEndEvent`` after ``create_stream()``
    at INFO level; this handler reads their ``response``. The logger's level and propagation are
    restored on exit. It observes the whole process (outside a runtime the events carry no agent id):
    to make a run raise on a length cut or a missing finish_reason, wrap its model client in
    ``streamlab.fixes.guard_model_client`` instead.
    """
    from autogen_core import EVENT_LOGGER_NAME

    logger = logging.getLogger(EVENT_LOGGER_NAME)
    calls = _Calls()
    handler = _EventHandler(calls)
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield calls
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


class _Keep(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__(logging.DEBUG)
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def capture_logs(*names: str, level: int = logging.WARNING) -> Iterator[list[logging.LogRecord]]:
    """Keep the records (at ``level`` or above) of the named loggers instead of printing them."""
    records: list[logging.LogRecord] = []
    handler = _Keep(records)
    handler.setLevel(level)
    saved = []
    for name in names:
        logger = logging.getLogger(name)
        saved.append((logger, logger.propagate))
        logger.addHandler(handler)
        logger.propagate = False
    try:
        yield records
    finally:
        for logger, propagate in saved:
            logger.removeHandler(handler)
            logger.propagate = propagate


# --------------------------------------------------------------------------- the event loop


_BLOCK = bytes(range(256)) * 1024  # 256 KiB


def busy(seconds: float) -> None:
    """Do ``seconds`` scenario seconds of CPU work in this thread (the articles' ``heavy_pdf_parse``).

    The work is hashing, which runs in C and releases the GIL like most parsers do, so in a worker
    thread (``asyncio.to_thread``) it leaves the event loop free; on the loop itself it blocks it.
    (Pure-Python work in a thread would still take the GIL from the loop for up to one switch
    interval, 5 ms, at a time.)
    """
    import hashlib

    until = time.perf_counter() + to_real(seconds)
    while time.perf_counter() < until:
        hashlib.sha256(_BLOCK).digest()


class LoopLag:
    """How late the event loop runs a ticker that wants to wake every ``every`` scenario seconds.

        async with LoopLag() as lag:
            ...                              # the code under test, on the same loop
        lag.max, lag.p50                     # scenario seconds
    """

    def __init__(self, every: float = 0.1) -> None:
        self.every = every
        self.lags: list[float] = []
        self._task: asyncio.Task | None = None

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + to_real(self.every)
            await asyncio.sleep(to_real(self.every))
            self.lags.append(to_scenario(max(0.0, loop.time() - due)))

    async def __aenter__(self) -> "LoopLag":
        self._task = asyncio.get_running_loop().create_task(self._tick())
        await asyncio.sleep(0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @property
    def max(self) -> float:
        return max(self.lags, default=0.0)

    @property
    def p50(self) -> float:
        return statistics.median(self.lags) if self.lags else 0.0


# --------------------------------------------------------------------------- request metadata


class RequestLog:
    """The articles' "log raw request and response metadata", with httpx event hooks.

        log = RequestLog()
        client = OpenAIChatCompletionClient(..., http_client=log.http_client())
        ...
        print(log.table())     # one row per HTTP request: model, max_tokens, stream, status, headers after

    ``http_client()`` is ``openai.DefaultAsyncHttpxClient`` (the SDK's own timeouts and limits) with
    two hooks; the model client closes it when it is closed.
    """

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def http_client(self, **kwargs: Any) -> Any:
        import openai

        hooks = kwargs.pop("event_hooks", {})
        hooks = {"request": [*hooks.get("request", []), self._request],
                 "response": [*hooks.get("response", []), self._response]}
        return openai.DefaultAsyncHttpxClient(event_hooks=hooks, **kwargs)

    async def _request(self, request: Any) -> None:
        import json

        try:
            body = json.loads(request.content or b"{}")
        except ValueError:
            body = {}
        request.extensions["streamlab_row"] = row = {
            "model": body.get("model"), "max_tokens": body.get("max_tokens"), "stream": bool(body.get("stream")),
            "messages": len(body.get("messages") or []), "status": None, "headers_after": None,
            "t0": time.perf_counter()}
        self.rows.append(row)

    async def _response(self, response: Any) -> None:
        row = response.request.extensions.get("streamlab_row")
        if row is not None:
            row["status"] = response.status_code
            row["headers_after"] = to_scenario(time.perf_counter() - row["t0"])

    def table(self) -> str:
        from .._plots import _t, text_table

        rows = [(str(i), str(r["model"]), str(r["max_tokens"]), "yes" if r["stream"] else "no", str(r["messages"]),
                 str(r["status"]), _t(r["headers_after"])) for i, r in enumerate(self.rows, 1)]
        return text_table(("#", "model", "max_tokens", "stream", "messages", "status", "headers after"), rows)


# --------------------------------------------------------------------------- token counting


@dataclass
class WordCounter:
    """``count_tokens`` / ``remaining_tokens`` in the mock's unit (one word = one token), no tiktoken.

    Pass it as the ``model_client`` of ``TokenLimitedChatCompletionContext`` (which uses its
    model client for counting only); the agent keeps calling the real model client.
    ``context_window`` is the limit ``remaining_tokens`` counts down from.
    """

    context_window: int = 4096
    per_message: int = 0
    counted: list[int] = field(default_factory=list, repr=False)

    def count_tokens(self, messages: Sequence[Any], *, tools: Sequence[Any] = ()) -> int:
        total = 0
        for message in messages:
            content = getattr(message, "content", "")
            if isinstance(content, str):
                total += count_tokens(content)
            elif isinstance(content, list):
                total += sum(count_tokens(getattr(part, "content", part) if not isinstance(part, str) else part)
                             for part in content if isinstance(getattr(part, "content", part), str))
            total += self.per_message
        self.counted.append(total)
        return total

    def remaining_tokens(self, messages: Sequence[Any], *, tools: Sequence[Any] = ()) -> int:
        return self.context_window - self.count_tokens(messages, tools=tools)


class TiktokenRefused(RuntimeError):
    """tiktoken was asked for an encoding inside ``refuse_tiktoken()`` (it would have downloaded it)."""


@contextlib.contextmanager
def refuse_tiktoken() -> Iterator[list[str]]:
    """Record every tiktoken encoding look-up in the block and refuse it with ``TiktokenRefused``.

    ``encoding_for_model`` is allowed to fail the way it does for unknown models (``KeyError``,
    no network needed), so the caller's fallback to ``get_encoding`` is seen too.
    """
    import tiktoken

    asked: list[str] = []
    originals = {"get_encoding": tiktoken.get_encoding, "encoding_for_model": tiktoken.encoding_for_model}

    def get_encoding(name: str) -> Any:
        asked.append(f"get_encoding({name!r})")
        raise TiktokenRefused(f"tiktoken.get_encoding({name!r}) would load (and on first use download) an encoding")

    def encoding_for_model(model: str) -> Any:
        asked.append(f"encoding_for_model({model!r})")
        from tiktoken.model import encoding_name_for_model

        return get_encoding(encoding_name_for_model(model))  # KeyError for unknown models, as tiktoken does

    tiktoken.get_encoding = get_encoding
    tiktoken.encoding_for_model = encoding_for_model
    try:
        yield asked
    finally:
        tiktoken.get_encoding = originals["get_encoding"]
        tiktoken.encoding_for_model = originals["encoding_for_model"]


def tiktoken_encodings_loaded() -> list[str]:
    """Names of the encodings tiktoken has constructed in this process (none means nothing was downloaded)."""
    try:
        import tiktoken.registry
    except ImportError:  # pragma: no cover - tiktoken is pinned
        return []
    return sorted(tiktoken.registry.ENCODINGS)


# --------------------------------------------------------------------------- time


def sdk_backoff_in_scenario_time() -> None:
    """Make the openai SDK's retry backoff run in scenario time (idempotent): ``sl.scale_sdk_backoff()``."""
    scale_sdk_backoff()
