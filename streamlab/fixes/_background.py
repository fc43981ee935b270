"""Follow a background response and re-attach after a cut (the OpenAI Responses API).

    run = follow_response(client, model="m", input="Summarise the incident", max_resumes=3)
    run.text, run.id, run.resumes, run.last_sequence

``client.responses.create(stream=True, background=True)`` decouples the run from the request: the
model goes on when the connection breaks, and ``client.responses.retrieve(id, stream=True,
starting_after=N)`` sends what came after sequence number ``N``, then follows live. The SDK does
neither by itself: a cut stream raises ``httpx.RemoteProtocolError`` (not an ``openai`` error,
and ``max_retries`` does not apply once the stream has started), and a stream that just stops
(no ``response.completed``) raises nothing at all. ``BackgroundRun`` keeps the id and the last
sequence number, re-attaches on either, and yields every event once (an event at or below the
last sequence number is dropped, so a server that replays a little more costs no duplicate).

Note that the SDK's own ``client.responses.stream(response_id=..., starting_after=N)`` helper asks
the server for the whole stream and drops the first ``N`` events on the client;
``retrieve(..., starting_after=N)``, used here, asks the server for only the rest.
"""

from __future__ import annotations

import time
from typing import Any, Iterator

__all__ = ["BackgroundRun", "follow_response", "RESUMABLE", "TERMINAL_EVENTS"]

TERMINAL_EVENTS = ("response.completed", "response.incomplete", "response.failed")


def _resumable() -> tuple[type[BaseException], ...]:
    import httpx
    import openai

    return (httpx.TransportError, openai.APIConnectionError)


RESUMABLE = "httpx.TransportError, openai.APIConnectionError (a cut, a reset, a read timeout)"


class BackgroundRun:
    """A background response, followed across cuts: iterate it for its events (each once).

    Keyword-only: ``max_resumes`` re-attachments at most (then the last error is raised), ``pause``
    wall-clock seconds before each, everything else goes to ``client.responses.create`` (which
    always gets ``stream=True, background=True``). Pass ``id=`` instead to follow an existing run.
    """

    def __init__(self, client: Any, *, max_resumes: int = 3, pause: float = 0.0, id: str | None = None,
                 starting_after: int | None = None, **create: Any) -> None:
        if isinstance(max_resumes, bool) or not isinstance(max_resumes, int) or max_resumes < 0:
            raise ValueError(f"max_resumes must be a whole number >= 0, not {max_resumes!r}")
        if id is None and not create:
            raise ValueError("give the create arguments (model=..., input=...) or id= of a background run")
        self.client = client
        self.max_resumes = max_resumes
        self.pause = pause
        self.create = create
        self.id: str | None = id
        self.last_sequence: int | None = starting_after
        self.resumes = 0
        self.errors: list[str] = []  # one line per break: "RemoteProtocolError: peer closed ..." / "ended early"
        self.status: str | None = None
        self.response: Any = None  # the final response object (response.completed / .incomplete / .failed)
        self.deltas: list[str] = []
        self.events = 0

    @property
    def text(self) -> str:
        return "".join(self.deltas)

    def _open(self) -> Any:
        if self.id is None:
            return self.client.responses.create(stream=True, background=True, **self.create)
        if self.last_sequence is None:
            return self.client.responses.retrieve(self.id, stream=True)
        return self.client.responses.retrieve(self.id, stream=True, starting_after=self.last_sequence)

    def __iter__(self) -> Iterator[Any]:
        resumable = _resumable()
        while True:
            try:
                stream = self._open()
                try:
                    for event in stream:
                        seq = getattr(event, "sequence_number", None)
                        if seq is not None and self.last_sequence is not None and seq <= self.last_sequence:
                            continue  # already had it
                        if seq is not None:
                            self.last_sequence = seq
                        if self.id is None and getattr(event, "response", None) is not None:
                            self.id = event.response.id
                        self.events += 1
                        if event.type == "response.output_text.delta":
                            self.deltas.append(event.delta)
                        if event.type in TERMINAL_EVENTS:
                            self.response = event.response
                            self.status = event.response.status
                        yield event
                finally:
                    close = getattr(stream, "close", None)
                    if close is not None:
                        close()
                if self.status is not None:
                    return
                why = "ended without a terminal event"
            except resumable as exc:
                why = f"{type(exc).__name__}: {exc}"
                if self.id is None or self.resumes >= self.max_resumes:
                    self.errors.append(why)
                    raise
            if self.id is None or self.resumes >= self.max_resumes:
                self.errors.append(why)
                raise ConnectionError(f"background response {self.id}: {why} after {self.resumes} resumes")
            self.errors.append(why)
            self.resumes += 1
            if self.pause:
                time.sleep(self.pause)


def follow_response(client: Any, **kwargs: Any) -> BackgroundRun:
    """Create a background response and follow it to its end across cuts; the finished ``BackgroundRun``."""
    run = BackgroundRun(client, **kwargs)
    for _ in run:
        pass
    return run
