"""Completeness guard: a stream that ends short raises, instead of looking like an answer.

    from streamlab.fixes import guard, guard_model_client, IncompleteStream

    stream = client.chat.completions.create(..., stream=True,
                                            stream_options={"include_usage": True})
    for chunk in guard(stream):                 # or: async for chunk in guard(async_stream)
        ...                                     # raises IncompleteStream at the end if it fell short

A silent truncation (the body ends cleanly after part of the answer) raises
nothing in the openai SDK, LangChain or LangGraph: the loop simply ends. The
guard watches what passes through and, when the source is exhausted, checks:

    no finish_reason on any chunk ........................ IncompleteStream(reason="no finish_reason")
    raw SSE text that never carried ``data: [DONE]`` ...... IncompleteStream(reason="no [DONE]")
    finish_reason "length" (the token budget ran out) .... LengthTruncation   (allow_length=True: passes)
    fewer content chunks than usage.completion_tokens ..... UsageMismatch      (only when usage was sent)

All three are ``IncompleteStream`` (defined with the rest of the exception tree in
``streamlab._errors``), which carries ``reason``, ``tokens`` (content chunks seen) and
``finish``; ``sl.record`` names a guarded stream's end ``truncation detected`` (or
``truncated by length``) instead of ``silent truncation``. Errors the
source raises itself (a cut, a reset, a timeout) pass through unchanged: the
guard adds an error only where there was none.

What it understands: openai SDK chunks (sync ``Stream`` and ``AsyncStream``),
raw SSE text or bytes (``sl.sse_events``, httpx ``iter_lines``), LangChain
message chunks (``ChatOpenAI.stream``/``astream``) and LangGraph's ``messages``
stream mode, through the recorder's ``inspect_chunk``; and two frameworks' own streams:

    AutoGen ``model_client.create_stream(...)`` (async): str tokens, then a ``CreateResult`` whose
        ``finish_reason`` is "unknown" when the stream sent none (AutoGen raises nothing): the guard
        treats "unknown" as no finish_reason (IncompleteStream) and "length" as LengthTruncation.
    AutoGen ``AssistantAgent.run_stream``/``on_messages_stream``: no finish_reason reaches them. The
        agent keeps the ``CreateResult`` to itself; ``ModelClientStreamingChunkEvent``, the final
        ``TextMessage``, ``Response`` and ``TaskResult`` carry none (autogen-agentchat 0.7.5). So guard the
        model client the agent calls, where the ``CreateResult`` is:

            agent = AssistantAgent("a", model_client=guard_model_client(client), model_client_stream=True)
            async for event in agent.run_stream(task=...):   # raises LengthTruncation / IncompleteStream
                ...

        ``guard_model_client`` judges each ``create_stream`` like ``guard`` above and raises when its
        ``CreateResult`` arrives, before the agent takes it: max_tokens=12 raises LengthTruncation after 12
        chunk events, silent@12 IncompleteStream, a complete answer passes. AgentChat does not catch it:
        ``run_stream``/``run`` of the agent raise it unchanged (the class the recorder names), and the short
        answer never enters ``agent.model_context``. In a team (``RoundRobinGroupChat``) AgentChat turns
        it into ``RuntimeError("LengthTruncation: ...")`` (``_base_group_chat.py``: ``raise
        RuntimeError(str(message.error))``): the class is lost, the message keeps the name. Pinned by tests.
        Not chosen: reading AutoGen's event log (``streamlab.frameworks.autogen.finish_reasons()``):
        ``LLMStreamEndEvent`` does carry the finish_reason, but its logger is process-wide and the event's
        ``agent_id`` is None outside a runtime (``autogen_core/logging.py``), so a guard could not tell
        this run's call from a concurrent one. Without ``guard_model_client``, ``guard(agent.run_stream(...),
        require_usage=True)`` can judge by usage alone: with ``stream_options={"include_usage": True}`` on
        ``OpenAIChatCompletionClient`` the final message's ``models_usage.completion_tokens`` is 0 when the
        usage chunk never came, so silent@9 raises (reason "no usage"); a length cut passes it (usage
        matches what was streamed).
    CrewAI ``Crew(stream=True).kickoff()`` (``CrewStreamingOutput``, sync or async): ``StreamChunk`` has no
        finish_reason (crewai 1.15.30), but CrewAI's event bus does: ``LLMCallCompletedEvent.finish_reason``
        (``crewai/events/types/llm_events.py``), which the native OpenAI provider fills from the stream's
        last ``finish_reason`` (``crewai/llms/providers/openai/completion.py``, ``_handle_streaming_completion``
        and ``_finalize_streaming_response``; None when no chunk carried one). ``guard(crew.kickoff())``
        listens to that event for as long as it iterates, counting only this stream's calls (a context
        variable set around the first ``next``, which CrewAI copies into the crew's thread and into its
        handler threads: two crews streaming at once each see their own), then judges: any call "length" is
        LengthTruncation (``allow_length`` lets it pass), any call without a finish_reason IncompleteStream
        (reason "no finish_reason"); then by ``.result.token_usage``: content but no reported usage is
        IncompleteStream(reason="no usage"), fewer chunks than completion_tokens UsageMismatch (the only
        checks left when no call event was seen, e.g. a stream already started before it was guarded).

The usage check counts
chunks that carry content, which is one token per chunk on OpenAI-compatible
servers (and on the streamlab mock); pass ``check_usage=False`` for a server
that batches tokens. Taught in notebooks/06_fixes.
"""

from __future__ import annotations

import contextvars
import json
from typing import Any, AsyncIterator, Iterator

from .._errors import IncompleteStream, LengthTruncation, UsageMismatch
from .._recorder import inspect_chunk

__all__ = ["guard", "guard_model_client", "IncompleteStream", "LengthTruncation", "UsageMismatch"]


def _usage_tokens(item: Any) -> int | None:
    models_usage = getattr(item, "models_usage", None)  # AutoGen AgentChat message (0: not reported)
    if models_usage is not None:
        value = getattr(models_usage, "completion_tokens", None)
        return value if isinstance(value, int) and value > 0 else None
    usage = getattr(item, "usage", None)
    if usage is not None:
        value = getattr(usage, "completion_tokens", None)
        return value if isinstance(value, int) else None
    meta = getattr(item, "usage_metadata", None)  # LangChain message chunk
    if isinstance(meta, dict) and isinstance(meta.get("output_tokens"), int) and meta["output_tokens"]:
        return meta["output_tokens"]
    if isinstance(item, tuple) and len(item) == 2:  # LangGraph messages mode
        return _usage_tokens(item[0])
    text = item.decode("utf-8", "replace") if isinstance(item, (bytes, bytearray)) else item
    if isinstance(text, str) and '"usage"' in text:
        for line in text.splitlines():
            if line.startswith("data:"):
                try:
                    obj = json.loads(line[5:].strip())
                except ValueError:
                    continue
                usage = obj.get("usage") if isinstance(obj, dict) else None
                if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
                    return usage["completion_tokens"]
    return None


class _Watch:
    """What the guard has seen so far, and the verdict at the end."""

    def __init__(self, *, require_done: bool | None, allow_length: bool, check_usage: bool,
                 require_usage: bool = False) -> None:
        self.require_done = require_done
        self.require_usage = require_usage
        self.allow_length = allow_length
        self.check_usage = check_usage
        self.tokens = 0
        self.finish: str | None = None
        self.done = False
        self.raw = False
        self.usage: int | None = None
        self.strs = 0          # non-empty str items: AutoGen create_stream tokens, or raw SSE text
        self.crew = False      # a CrewAI CrewStreamingOutput: judged by its LLM calls' events and usage
        self.crew_finishes: list[str | None] = []

    def see(self, item: Any) -> None:
        name = type(item).__name__
        if name == "CreateResult":  # AutoGen create_stream's last item: the str items before were tokens
            reason = getattr(item, "finish_reason", None)
            self.finish = None if reason in (None, "unknown") else str(reason)  # "unknown": none was sent
            self.tokens = self.strs
            self.strs = 0
            self.raw = False
            self.done = False
            usage = _usage_tokens(item)
            self.usage = usage if usage else None  # AutoGen reports 0 when the server sent no usage
            return
        if name == "StreamChunk":  # CrewAI: text (or tool call) pieces, never a finish_reason
            if getattr(item, "content", None) and getattr(item, "tool_call", None) is None:
                self.tokens += 1
            return
        if isinstance(item, str) and item:
            self.strs += 1  # and judged as raw SSE below, unless a CreateResult follows
        info = inspect_chunk(item)
        if info.text:
            self.tokens += 1
        if info.finish:
            self.finish = info.finish
        if isinstance(item, (str, bytes, bytearray)):
            self.raw = True
            text = item.decode("utf-8", "replace") if isinstance(item, (bytes, bytearray)) else item
            if any(line.startswith("data:") and line[5:].strip() == "[DONE]" for line in text.splitlines()):
                self.done = True
        usage = _usage_tokens(item)
        if usage is not None:
            self.usage = usage

    def see_crew_result(self, result: Any, finishes: list[str | None] | None = None) -> None:
        """CrewAI's ``CrewOutput``: its ``token_usage`` comes from the usage chunk that ends a stream;
        ``finishes``: the finish_reason of each of the crew's LLM calls (``LLMCallCompletedEvent``)."""
        self.crew = True
        self.crew_finishes = list(finishes or [])
        metrics = getattr(result, "token_usage", None)
        self.usage = getattr(metrics, "completion_tokens", None) if metrics is not None else None

    def verdict(self) -> None:
        seen = f"after {self.tokens} content chunks"
        if self.crew:  # the finish_reason of each LLM call (CrewAI's event bus), then the crew's usage
            finishes = self.crew_finishes
            if finishes and not self.allow_length and "length" in finishes:
                raise LengthTruncation(f"an LLM call of the crew was cut by the token budget (finish_reason "
                                       f"'length'; the crew's calls ended {finishes}) {seen}", reason="length",
                                       tokens=self.tokens, finish="length")
            if self.tokens and None in finishes:
                raise IncompleteStream(f"an LLM call of the crew ended without a finish_reason (the crew's "
                                       f"calls ended {finishes}) {seen}: a silent truncation",
                                       reason="no finish_reason", tokens=self.tokens)
            self.finish = finishes[-1] if finishes else None
            if self.tokens and not self.usage:
                raise IncompleteStream(f"the crew streamed {self.tokens} content chunks but no LLM call reported "
                                       f"usage (the usage chunk ends a complete stream): a silent truncation",
                                       reason="no usage", tokens=self.tokens, finish=self.finish)
            if self.check_usage and self.usage and self.tokens < self.usage:
                raise UsageMismatch(f"usage says {self.usage} completion tokens, the stream delivered "
                                    f"{self.tokens}", reason="usage mismatch", tokens=self.tokens,
                                    finish=self.finish, usage_tokens=self.usage)
            return
        if self.finish is None:
            raise IncompleteStream(f"the stream ended without a finish_reason {seen}: a silent truncation",
                                   reason="no finish_reason", tokens=self.tokens)
        need_done = self.raw if self.require_done is None else self.require_done
        if need_done and not self.done:
            raise IncompleteStream(f"the stream ended without data: [DONE] {seen} (finish_reason "
                                   f"{self.finish!r})", reason="no [DONE]", tokens=self.tokens,
                                   finish=self.finish)
        if self.finish == "length" and not self.allow_length:
            raise LengthTruncation(f"the answer was cut by the token budget (finish_reason 'length') {seen}",
                                   reason="length", tokens=self.tokens, finish=self.finish)
        if self.require_usage and self.tokens and self.usage is None:
            raise IncompleteStream(f"the stream delivered {self.tokens} content chunks but no usage report "
                                   f"(the usage chunk ends a complete stream): a silent truncation",
                                   reason="no usage", tokens=self.tokens, finish=self.finish)
        if self.check_usage and self.usage is not None and self.tokens < self.usage:
            raise UsageMismatch(f"usage says {self.usage} completion tokens, the stream delivered "
                                f"{self.tokens}", reason="usage mismatch", tokens=self.tokens,
                                finish=self.finish, usage_tokens=self.usage)


_END = object()
_GUARD_RUN: contextvars.ContextVar[object | None] = contextvars.ContextVar("streamlab_guard_run", default=None)


class _CrewCalls:
    """The finish_reason of every LLM call one guarded CrewAI stream makes, from CrewAI's event bus.

    A handler for ``LLMCallCompletedEvent`` (which carries the provider's ``finish_reason``) lives as long
    as the iteration. CrewAI runs the crew in a thread (or task) it starts on the stream's first ``next``,
    in a copy of the caller's context, and runs the handler in a copy of the emitting thread's context:
    a context variable set around that first ``next`` marks this stream's calls, so a concurrent crew's
    calls are not counted (CrewAI routes its own ``StreamChunk``s to the right stream the same way).
    """

    def __init__(self) -> None:
        self.mark = object()
        self.finishes: list[str | None] = []
        self._bus: Any = None
        self._event: Any = None

    def _handler(self, source: Any, event: Any) -> None:
        if _GUARD_RUN.get() is self.mark:
            self.finishes.append(getattr(event, "finish_reason", None))

    def __enter__(self) -> "_CrewCalls":
        from crewai.events import LLMCallCompletedEvent, crewai_event_bus

        self._bus, self._event = crewai_event_bus, LLMCallCompletedEvent
        crewai_event_bus.register_handler(LLMCallCompletedEvent, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        self._bus.flush(timeout=10.0)  # the handler runs in CrewAI's thread pool (kickoff flushes too)
        self._bus.off(self._event, self._handler)

    def start(self, first: Any) -> Any:
        token = _GUARD_RUN.set(self.mark)
        try:
            return first()
        finally:
            _GUARD_RUN.reset(token)

    async def astart(self, items: Any) -> Any:
        token = _GUARD_RUN.set(self.mark)
        try:
            return await items.__anext__()
        except StopAsyncIteration:
            return _END
        finally:
            _GUARD_RUN.reset(token)


class _Guarded:
    def __init__(self, source: Any, watch: _Watch) -> None:
        self._source = source
        self._watch = watch

    def _crew(self) -> bool:
        return type(self._source).__name__ == "CrewStreamingOutput"

    def _end(self, calls: "_CrewCalls | None" = None) -> None:
        if self._crew():
            self._watch.see_crew_result(self._source.result, calls.finishes if calls is not None else None)
        self._watch.verdict()

    def __iter__(self) -> Iterator[Any]:
        if self._crew():
            with _CrewCalls() as calls:
                items = iter(self._source)
                first = calls.start(lambda: next(items, _END))  # CrewAI starts the crew's thread here
                if first is not _END:
                    self._watch.see(first)
                    yield first
                    for item in items:
                        self._watch.see(item)
                        yield item
            self._end(calls)
            return
        for item in self._source:
            self._watch.see(item)
            yield item
        self._end()

    async def _aiter(self) -> AsyncIterator[Any]:
        if self._crew():
            with _CrewCalls() as calls:
                items = self._source.__aiter__()
                first = await calls.astart(items)  # CrewAI starts the crew's task here
                if first is not _END:
                    self._watch.see(first)
                    yield first
                    async for item in items:
                        self._watch.see(item)
                        yield item
            self._end(calls)
            return
        async for item in self._source:
            self._watch.see(item)
            yield item
        self._end()

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._aiter()

    def __getattr__(self, name: str) -> Any:  # response, close(), ... of the wrapped stream
        return getattr(self._source, name)


def guard(stream: Any, *, require_done: bool | None = None, allow_length: bool = False,
          check_usage: bool = True, require_usage: bool = False) -> Any:
    """Wrap a sync or async stream; iterate the result the way you iterated the stream.

    Args (keyword-only):
        require_done: demand ``data: [DONE]``; default: only for raw SSE text (the SDKs
            swallow the marker, so their streams are judged by finish_reason).
        allow_length: let ``finish_reason: "length"`` pass (you asked for a short answer).
        check_usage: compare content chunks with ``usage.completion_tokens`` when sent.
        require_usage: content without a usage report is ``IncompleteStream(reason="no usage")``; set it
            when usage was asked for (``include_usage``) and the stream hides finish_reason
            (AutoGen ``run_stream``). CrewAI streams always get this check (CrewAI asks for usage).
    """
    if not (hasattr(stream, "__iter__") or hasattr(stream, "__aiter__")):
        raise TypeError(f"guard() takes a stream (an iterable or async iterable), got {type(stream).__name__}")
    return _Guarded(stream, _Watch(require_done=require_done, allow_length=allow_length,
                                   check_usage=check_usage, require_usage=require_usage))


def guard_model_client(model_client: Any, *, allow_length: bool = False, require_usage: bool = False) -> Any:
    """An AutoGen ``ChatCompletionClient`` that raises where the model's answer fell short.

    Pass it to the agent: ``AssistantAgent(..., model_client=guard_model_client(client))``. Every
    ``create_stream`` is watched like ``guard`` watches it, and the verdict is taken when the final
    ``CreateResult`` arrives, before the agent sees it: finish_reason "length" raises ``LengthTruncation``
    (unless ``allow_length``), "unknown" (AutoGen's word for none sent) ``IncompleteStream``, fewer str
    tokens than its usage ``UsageMismatch``; ``require_usage``: no usage report is ``IncompleteStream``.
    ``create`` (``model_client_stream=False``) is judged by its finish_reason alone. Everything else
    (``model_info``, usage totals, ``close``, token counting) is the wrapped client's; the wrapper is
    not a declarative component (``agent.dump_component()`` raises TypeError; ``save_state`` works).
    """
    if not all(hasattr(model_client, name) for name in ("create", "create_stream", "model_info")):
        raise TypeError(f"guard_model_client() takes an AutoGen ChatCompletionClient, "
                        f"got {type(model_client).__name__}")
    return _guarded_client_class()(model_client, allow_length=allow_length, require_usage=require_usage)


_CLIENT_CLASS: Any = None


def _guarded_client_class() -> Any:
    global _CLIENT_CLASS
    if _CLIENT_CLASS is not None:
        return _CLIENT_CLASS
    from autogen_core.models import ChatCompletionClient, CreateResult

    class GuardedModelClient(ChatCompletionClient):
        """A model client whose short answers raise (``streamlab.fixes.guard_model_client``)."""

        def __init__(self, inner: Any, *, allow_length: bool, require_usage: bool) -> None:
            self.inner = inner
            self._allow_length = allow_length
            self._require_usage = require_usage

        async def create(self, messages: Any, **kwargs: Any) -> Any:
            result = await self.inner.create(messages, **kwargs)
            tokens = getattr(result.usage, "completion_tokens", 0)
            if result.finish_reason == "length" and not self._allow_length:
                raise LengthTruncation("the answer was cut by the token budget (finish_reason 'length')",
                                       reason="length", tokens=tokens, finish="length")
            if result.finish_reason == "unknown":
                raise IncompleteStream("the answer ended without a finish_reason: a silent truncation",
                                       reason="no finish_reason", tokens=tokens)
            return result

        def create_stream(self, messages: Any, **kwargs: Any) -> Any:
            return self._stream(messages, kwargs)

        async def _stream(self, messages: Any, kwargs: dict) -> Any:
            watch = _Watch(require_done=False, allow_length=self._allow_length, check_usage=True,
                           require_usage=self._require_usage)
            async for item in self.inner.create_stream(messages, **kwargs):
                watch.see(item)
                if isinstance(item, CreateResult):
                    watch.verdict()  # raises here: the agent never takes the short answer as its reply
                yield item

        async def close(self) -> None:
            await self.inner.close()

        def actual_usage(self) -> Any:
            return self.inner.actual_usage()

        def total_usage(self) -> Any:
            return self.inner.total_usage()

        def count_tokens(self, messages: Any, **kwargs: Any) -> int:
            return self.inner.count_tokens(messages, **kwargs)

        def remaining_tokens(self, messages: Any, **kwargs: Any) -> int:
            return self.inner.remaining_tokens(messages, **kwargs)

        @property
        def capabilities(self) -> Any:
            return self.inner.capabilities

        @property
        def model_info(self) -> Any:
            return self.inner.model_info

    _CLIENT_CLASS = GuardedModelClient
    return _CLIENT_CLASS
