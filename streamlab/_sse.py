"""Raw SSE over httpx, the way a minimal client (or the article's "test with a raw script") reads it."""

from __future__ import annotations

from typing import Any, Iterator

import httpx

from ._timescale import to_real

__all__ = ["sse_events", "chat_request"]


def chat_request(*, model: str = "streamlab-mock", prompt: str = "Explain streaming cutoffs.",
                 stream: bool = True, **extra: Any) -> dict[str, Any]:
    """A minimal Chat Completions request body."""
    return {"model": model, "stream": stream, "messages": [{"role": "user", "content": prompt}], **extra}


def sse_events(url: str, *, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None,
               timeout: float | None = 30.0, client: httpx.Client | None = None) -> Iterator[str]:
    """POST ``body`` to ``url`` and yield each SSE event block (text between blank lines).

    Raises ``httpx.HTTPStatusError`` for a non-2xx answer (before any event),
    and whatever httpx raises when the stream breaks. ``timeout`` is the read
    timeout in scenario seconds (None: wait forever).

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
            block: list[str] = []
            for line in response.iter_lines():
                if line == "":
                    if block:
                        yield "\n".join(block)
                        block = []
                else:
                    block.append(line)
            if block:
                yield "\n".join(block)
    finally:
        if own:
            client.close()
