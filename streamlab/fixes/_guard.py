"""Completeness guard: a stream that ends short raises, instead of looking like an answer.

    from streamlab.fixes import guard, IncompleteStream

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
        ``TextMessage``, ``Response`` and ``TaskResult`` carry none (autogen-agentchat 0.7.5). Only usage
        does: with ``OpenAIChatCompletionClient(..., stream_options={"include_usage": True})`` the final
        message's ``models_usage.completion_tokens`` is the server's count, 0 when the usage chunk never
        came. So ``guard(agent.run_stream(...), require_usage=True)`` catches silent@9 (reason "no usage");
        without include_usage it passes unnoticed, and a length cut passes always (usage matches what was
        streamed); all pinned by tests. For the finish_reason, guard the model client's ``create_stream``
        or read ``streamlab.frameworks.autogen.finish_reasons()`` (AutoGen's event log).
    CrewAI ``Crew(stream=True).kickoff()`` (``CrewStreamingOutput``): ``StreamChunk`` has no finish_reason
        (crewai 1.15.30), so the guard judges the crew by ``.result.token_usage`` after the last chunk:
        content but no reported usage (CrewAI asks for ``include_usage``; the usage chunk ends a complete
        stream) is IncompleteStream(reason="no usage"); fewer chunks than completion_tokens is UsageMismatch.
        A length cut is NOT detectable: its usage matches what was streamed (pinned by a test).

The usage check counts
chunks that carry content, which is one token per chunk on OpenAI-compatible
servers (and on the streamlab mock); pass ``check_usage=False`` for a server
that batches tokens. Taught in notebooks/06_fixes.
"""

from __future__ import annotations

import json
from typing import Any, AsyncIterator, Iterator

from .._errors import IncompleteStream, LengthTruncation, UsageMismatch
from .._recorder import inspect_chunk

__all__ = ["guard", "IncompleteStream", "LengthTruncation", "UsageMismatch"]


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
        self.crew = False      # a CrewAI CrewStreamingOutput: no finish_reason exists, judged by usage

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

    def see_crew_result(self, result: Any) -> None:
        """CrewAI's ``CrewOutput``: its ``token_usage`` comes from the usage chunk that ends a stream."""
        self.crew = True
        metrics = getattr(result, "token_usage", None)
        self.usage = getattr(metrics, "completion_tokens", None) if metrics is not None else None

    def verdict(self) -> None:
        seen = f"after {self.tokens} content chunks"
        if self.crew:  # no finish_reason anywhere in CrewAI's stream: usage is the only witness
            if self.tokens and not self.usage:
                raise IncompleteStream(f"the crew streamed {self.tokens} content chunks but no LLM call reported "
                                       f"usage (the usage chunk ends a complete stream): a silent truncation",
                                       reason="no usage", tokens=self.tokens)
            if self.check_usage and self.usage and self.tokens < self.usage:
                raise UsageMismatch(f"usage says {self.usage} completion tokens, the stream delivered "
                                    f"{self.tokens}", reason="usage mismatch", tokens=self.tokens,
                                    usage_tokens=self.usage)
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


class _Guarded:
    def __init__(self, source: Any, watch: _Watch) -> None:
        self._source = source
        self._watch = watch

    def _end(self) -> None:
        if type(self._source).__name__ == "CrewStreamingOutput":
            self._watch.see_crew_result(self._source.result)
        self._watch.verdict()

    def __iter__(self) -> Iterator[Any]:
        for item in self._source:
            self._watch.see(item)
            yield item
        self._end()

    async def _aiter(self) -> AsyncIterator[Any]:
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
