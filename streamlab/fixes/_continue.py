"""Continue a chat completion after a cut, from what was received, without replaying it.

    answer = continue_stream(client, model="m", messages=[{"role": "user", "content": "..."}])
    for piece in answer: print(piece, end="")     # each piece once, across the cuts
    answer.text, answer.attempts, answer.cuts

The openai SDK retries a request that failed before its stream started (``max_retries``), never
one whose stream broke in the middle: a cut is an ``httpx.RemoteProtocolError`` out of the
iterator, and a stream that just stops (no ``finish_reason``) raises nothing. Retrying the whole
request shows the user the first words twice (or a different answer). ``ContinuedStream`` sends
the partial answer back as a trailing assistant message and asks for the rest:

    messages + [{"role": "assistant", "content": "<what arrived>"}]

Which servers continue a trailing assistant message: the streamlab mock does (its convention: it
sends its deterministic answer after the words the prefix already has, so the joined text is the
uncut answer, token for token); several APIs support "prefill" (Anthropic's, Mistral's
``prefix: true``, DeepSeek's beta, vLLM's ``continue_final_message``), OpenAI's chat API does not
promise it. ``extra_body`` lets you pass the server's own switch. For the Responses API use
``starting_after`` instead (``streamlab.fixes.BackgroundRun``): nothing is generated twice.
"""

from __future__ import annotations

import time
from typing import Any, Iterator

from ._background import BackgroundRun, follow_response

__all__ = ["ContinuedStream", "continue_stream", "continue_response"]


class ContinuedStream:
    """A streamed chat answer that continues after a cut from what was received; iterate for text pieces.

    Keyword-only: ``max_attempts`` requests at most (the first included; then the last error is
    raised), ``pause`` wall-clock seconds between them, ``continue_body`` extra JSON for the
    continuation requests (e.g. ``{"continue_final_message": True, "add_generation_prompt": False}``
    for vLLM); everything else goes to ``client.chat.completions.create`` (with ``stream=True``).
    """

    def __init__(self, client: Any, *, model: str, messages: list[dict], max_attempts: int = 3,
                 pause: float = 0.0, continue_body: dict | None = None, **create: Any) -> None:
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
            raise ValueError(f"max_attempts must be a whole number >= 1, not {max_attempts!r}")
        self.client = client
        self.model = model
        self.messages = list(messages)
        self.max_attempts = max_attempts
        self.pause = pause
        self.continue_body = dict(continue_body or {})
        self.create = create
        self.pieces: list[str] = []
        self.attempts = 0
        self.cuts: list[str] = []  # why each attempt before the last ended early
        self.finish_reason: str | None = None
        self.received_per_attempt: list[int] = []

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    def _request(self) -> Any:
        messages = self.messages
        create = dict(self.create)
        if self.pieces:
            messages = messages + [{"role": "assistant", "content": self.text}]
            if self.continue_body:
                create["extra_body"] = {**(create.get("extra_body") or {}), **self.continue_body}
        return self.client.chat.completions.create(model=self.model, messages=messages, stream=True, **create)

    def __iter__(self) -> Iterator[str]:
        import httpx
        import openai

        while True:
            self.attempts += 1
            got = 0
            try:
                stream = self._request()
                try:
                    for chunk in stream:
                        for choice in chunk.choices or ():
                            piece = choice.delta.content if choice.delta else None
                            if piece:
                                self.pieces.append(piece)
                                got += 1
                                yield piece
                            if choice.finish_reason:
                                self.finish_reason = choice.finish_reason
                finally:
                    stream.close()
                self.received_per_attempt.append(got)
                if self.finish_reason is not None:
                    return
                why = "ended without finish_reason"
            except (httpx.TransportError, openai.APIConnectionError) as exc:
                self.received_per_attempt.append(got)
                why = f"{type(exc).__name__}: {exc}"
                if self.attempts >= self.max_attempts:
                    self.cuts.append(why)
                    raise
            self.cuts.append(why)
            if self.attempts >= self.max_attempts:
                raise ConnectionError(f"chat stream {why} after {self.attempts} attempts")
            if self.pause:
                time.sleep(self.pause)


def continue_stream(client: Any, **kwargs: Any) -> ContinuedStream:
    """Stream a chat answer to its end, continuing after each cut; the finished ``ContinuedStream``."""
    answer = ContinuedStream(client, **kwargs)
    for _ in answer:
        pass
    return answer


def continue_response(client: Any, **kwargs: Any) -> BackgroundRun:
    """The Responses API variant: a background run followed with ``starting_after`` (see ``BackgroundRun``)."""
    return follow_response(client, **kwargs)
