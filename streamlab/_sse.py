"""The one SSE parser of the package, and raw SSE over httpx (the article's "test with a raw script").

Server-sent events, as the WHATWG HTML standard ("event stream interpretation") reads them::

    : ping                      a comment: ignored (a keep-alive; sse-starlette sends one every 15 s)
    event: token                the event type
    id: 7                       the last event id (ignored when it contains NUL)
    retry: 3000                 reconnection time in ms (digits only, else ignored)
    data: first line            data lines: joined with "\\n"; one space after the colon is dropped
    data: second line
                                a blank line ends the event
    lines end with CRLF, LF or CR; a field name without a colon has an empty value

``SSEParser`` reads text incrementally (network reads cut events and even CRLFs anywhere)
and returns each finished block; ``parse_block`` turns a block into an ``SSEEvent``. An
unfinished final block (the stream ended without its blank line) is *not* an event for a
browser: ``SSEParser.close()`` hands it back so a reader can decide (the recorder counts a
``data: [DONE]`` that lost its blank line as what it is: partial). Blocks that hold only
comments are returned too (``SSEEvent.data is None``): a keep-alive is a transport event a
reader may want to see, not data.

Users: ``sse_events`` below, ``HTTPStream(unit="event")`` and ``StreamResult.events``
(``_clients``), the recorder's raw-SSE chunks, ``app_event``, the framework helpers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import httpx

from ._timescale import to_real

__all__ = ["sse_events", "chat_request", "SSEEvent", "SSEParser", "parse_block", "split_events", "iter_blocks",
           "format_event"]


@dataclass(frozen=True)
class SSEEvent:
    """One parsed SSE block. ``data`` is None when the block had no ``data`` field (only comments,
    or only ``event:`` / ``id:``)."""

    data: str | None = None
    event: str | None = None
    id: str | None = None
    retry: int | None = None
    comments: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, str]:
        """``{"event", "data", "id", "retry"}`` with only the fields present (the older helpers' shape)."""
        out = {k: v for k, v in (("event", self.event), ("id", self.id), ("data", self.data)) if v is not None}
        if self.retry is not None:
            out["retry"] = str(self.retry)
        return out


def _lines(block: str) -> list[str]:
    return block.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def parse_block(block: str | bytes) -> SSEEvent:
    """Parse one event block (text up to, and without, its blank line; a trailing blank line is fine)."""
    if isinstance(block, (bytes, bytearray)):
        block = bytes(block).decode("utf-8", "replace")
    data: list[str] = []
    fields: dict[str, Any] = {}
    comments: list[str] = []
    for line in _lines(block):
        if not line:
            continue
        if line.startswith(":"):
            comments.append(line[1:].lstrip(" "))
            continue
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            data.append(value)
        elif name == "event":
            fields["event"] = value
        elif name == "id":
            if "\0" not in value:
                fields["id"] = value
        elif name == "retry":
            if value.isdigit():
                fields["retry"] = int(value)
        # any other field name is ignored, as a browser does
    return SSEEvent("\n".join(data) if data else None, fields.get("event"), fields.get("id"), fields.get("retry"),
                    tuple(comments))


class SSEParser:
    """Incremental block splitter: ``feed(text)`` returns the blocks finished so far.

        parser = SSEParser()
        for piece in network_reads:
            for block in parser.feed(piece):        # str blocks, without their blank line
                event = parse_block(block)
        rest = parser.close()                       # the unfinished final block, or None
    """

    def __init__(self) -> None:
        self._pending = ""

    def feed(self, text: str | bytes) -> list[str]:
        if isinstance(text, (bytes, bytearray)):
            text = bytes(text).decode("utf-8", "replace")
        text = self._pending + text
        # a CR at the very end may be the first half of a CRLF: keep it until the next read
        hold = text.endswith("\r")
        if hold:
            text = text[:-1]
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        *blocks, rest = text.split("\n\n")
        self._pending = rest + ("\r" if hold else "")
        return [b.strip("\n") for b in blocks if b.strip("\n")]

    @property
    def pending(self) -> str:
        """Text of the block not finished yet."""
        return self._pending.replace("\r\n", "\n").replace("\r", "\n")

    def close(self) -> str | None:
        """End of stream: the unfinished final block (not an event for a browser), or None."""
        rest, self._pending = self.pending.strip("\n"), ""
        return rest or None


def split_events(text: str) -> tuple[list[str], str]:
    """Finished SSE blocks in ``text`` and the unfinished rest (``SSEParser`` in one call)."""
    parser = SSEParser()
    blocks = parser.feed(text)
    return blocks, parser.pending


def iter_blocks(pieces: Iterable[str | bytes], *, partial: bool = True) -> Iterator[str]:
    """The blocks of a stream of text pieces (network reads or lines); with ``partial`` the unfinished
    final block too. Lines from ``iter_lines()`` work as pieces when each gets its newline back."""
    parser = SSEParser()
    for piece in pieces:
        yield from parser.feed(piece)
    rest = parser.close()
    if partial and rest:
        yield rest


def format_event(data: str, *, event: str | None = None, id: str | int | None = None) -> str:
    """One SSE event as text (multi-line data split into several ``data:`` fields), with its blank line."""
    lines = []
    if event:
        lines.append(f"event: {event}")
    if id is not None:
        lines.append(f"id: {id}")
    lines += [f"data: {part}" for part in data.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    return "\n".join(lines) + "\n\n"


# --------------------------------------------------------------------------- raw SSE over httpx


def chat_request(*, model: str = "streamlab-mock", prompt: str = "Explain streaming cutoffs.",
                 stream: bool = True, **extra: Any) -> dict[str, Any]:
    """A minimal Chat Completions request body."""
    return {"model": model, "stream": stream, "messages": [{"role": "user", "content": prompt}], **extra}


def sse_events(url: str, *, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None,
               timeout: float | None = 30.0, client: httpx.Client | None = None) -> Iterator[str]:
    """POST ``body`` to ``url`` and yield each SSE event block (text between blank lines).

    Raises ``httpx.HTTPStatusError`` for a non-2xx answer (before any event),
    and whatever httpx raises when the stream breaks. ``timeout`` is the read
    timeout in scenario seconds (None: wait forever). An unfinished final block
    is yielded too (a raw reader sees it; a browser would drop it).

        run = sl.record(lambda: sl.sse_events(mock.base_url + "/chat/completions"))
    """
    body = body if body is not None else chat_request()
    real = to_real(timeout)
    own = client is None
    client = client or httpx.Client(timeout=httpx.Timeout(real, connect=5.0))
    try:
        with client.stream("POST", url, json=body, headers=headers) as response:
            if response.status_code >= 400:
                response.read()
                response.raise_for_status()
            yield from iter_blocks(response.iter_text())
    finally:
        if own:
            client.close()
