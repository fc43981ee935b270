"""Faults of the mock model, fired at a token index or a scripted moment.

One fault is one frozen dataclass of settings plus one method, ``act``, that
sees every event of an exchange and passes on what it is not meant to change.
The mock runs a chain of faults per request; each is registered by name so a
URL, a header, the CLI and the playground dropdown all build from ``REGISTRY``.

Spec grammar (path prefix ``/s/<spec>/v1/...`` or header ``X-Streamlab: <spec>``)::

    spec   := item ("," item)*
    item   := name ["@" token_index] ["=" value]

    cut@12          close the connection after 12 tokens (client: incomplete chunked read)
    reset@12        TCP reset after 12 tokens
    silent@12       end the body cleanly after 12 tokens: no finish_reason, no [DONE]
    nodone          finish_reason is sent, the final "data: [DONE]" is not
    stall@5=30      after 5 tokens, send nothing for 30 s (scenario seconds), then go on
    stall@5         after 5 tokens, send nothing until the client gives up
    malformed@3     chunk 3 is not valid JSON
    framing@3       chunk 3 breaks SSE framing (no "data:" field, no blank line)
    error@3         after 3 tokens, an error event {"error": {...}} ends the stream
    ratelimit=2     HTTP 429 with Retry-After 2 s, before any token
    servererror     HTTP 500 before any token
    context=4096    HTTP 400 context_length_exceeded when prompt + max_tokens > 4096
    slowheaders=5   wait 5 s before sending the response headers

Options in the same grammar (not faults): ``tokens=200``, ``ttft=0.5``, ``itl=0.02``,
``jitter=0.005``, ``seed=3``, ``echo``, ``tools=off``, ``first=1`` (this spec's faults
apply to the first N requests that carry it; later ones run clean).

The exception a client sees for each fault is tabulated in ``notebooks/00_start_here``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, ClassVar

from ._timescale import to_real

if TYPE_CHECKING:  # pragma: no cover
    from ._mock import Event, Exchange

__all__ = [
    "Fault", "Cut", "Reset", "SilentEnd", "NoDone", "Stall", "MalformedChunk", "BrokenFraming",
    "ErrorEvent", "RateLimited", "ServerError", "ContextWindow", "SlowHeaders",
    "REGISTRY", "names", "parse", "SpecError",
]


class SpecError(ValueError):
    """A behaviour spec that cannot be parsed (bad name, index or value)."""


@dataclass(frozen=True, kw_only=True)
class Fault:
    """Base of all model faults. ``act`` gets each event and returns it (maybe changed) or None to drop it."""

    name: ClassVar[str] = "noop"
    index_arg: ClassVar[str | None] = None  # field filled from "@N"
    value_arg: ClassVar[str | None] = None  # field filled from "=V"

    async def act(self, event: "Event", ex: "Exchange") -> "Event | None":
        return event

    def spec(self) -> str:
        """This fault in the spec grammar, e.g. ``stall@5=30``."""
        text = self.name
        if self.index_arg is not None:
            text += f"@{getattr(self, self.index_arg)}"
        if self.value_arg is not None and getattr(self, self.value_arg) is not None:
            text += f"={_fmt(getattr(self, self.value_arg))}"
        return text

    def __str__(self) -> str:
        return self.spec()


def _fmt(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _at_token(event: "Event", at: int) -> bool:
    """True for the moment right after ``at`` tokens were sent (before token ``at``, 0-based)."""
    return event.kind in ("token", "finish") and event.index == at


@dataclass(frozen=True, kw_only=True)
class Cut(Fault):
    """Close the connection (FIN) after ``at`` tokens, without ending the chunked body."""

    at: int
    name: ClassVar[str] = "cut"
    index_arg: ClassVar[str] = "at"

    async def act(self, event, ex):
        if _at_token(event, self.at):
            await ex.close(reset=False, why=f"cut@{self.at}")
        return event


@dataclass(frozen=True, kw_only=True)
class Reset(Fault):
    """Abort the TCP connection with RST after ``at`` tokens."""

    at: int
    name: ClassVar[str] = "reset"
    index_arg: ClassVar[str] = "at"

    async def act(self, event, ex):
        if _at_token(event, self.at):
            await ex.close(reset=True, why=f"reset@{self.at}")
        return event


@dataclass(frozen=True, kw_only=True)
class SilentEnd(Fault):
    """End the body cleanly after ``at`` tokens: no finish_reason, no [DONE] (silent truncation)."""

    at: int
    name: ClassVar[str] = "silent"
    index_arg: ClassVar[str] = "at"

    async def act(self, event, ex):
        if _at_token(event, self.at):
            await ex.end(why=f"silent@{self.at}")
        return event


@dataclass(frozen=True, kw_only=True)
class NoDone(Fault):
    """Send the finish_reason chunk but never the ``data: [DONE]`` line."""

    name: ClassVar[str] = "nodone"

    async def act(self, event, ex):
        if event.kind == "done":
            ex.note("fault", "nodone: [DONE] dropped")
            return None
        return event


@dataclass(frozen=True, kw_only=True)
class Stall(Fault):
    """After ``at`` tokens send nothing for ``seconds`` (scenario seconds; None: until the client leaves)."""

    at: int
    seconds: float | None = None
    name: ClassVar[str] = "stall"
    index_arg: ClassVar[str] = "at"
    value_arg: ClassVar[str] = "seconds"

    async def act(self, event, ex):
        if _at_token(event, self.at):
            ex.note("fault", f"stall@{self.at} for {self.seconds if self.seconds is not None else 'ever'}")
            await ex.pause(to_real(self.seconds))
        return event


@dataclass(frozen=True, kw_only=True)
class MalformedChunk(Fault):
    """Chunk number ``at`` carries invalid JSON (cut in the middle of the object)."""

    at: int
    name: ClassVar[str] = "malformed"
    index_arg: ClassVar[str] = "at"

    async def act(self, event, ex):
        if event.kind == "token" and event.index == self.at:
            ex.note("fault", f"malformed@{self.at}")
            if ex.stream:
                return event.replace(data=b'data: {"id": "broken", "choices": [{"delta": {"content": "\n\n')
            ex.malformed_body = True
        return event


@dataclass(frozen=True, kw_only=True)
class BrokenFraming(Fault):
    """Chunk number ``at`` is sent without its ``data:`` field name and without the blank line."""

    at: int
    name: ClassVar[str] = "framing"
    index_arg: ClassVar[str] = "at"

    async def act(self, event, ex):
        if event.kind == "token" and event.index == self.at:
            ex.note("fault", f"framing@{self.at}")
            if ex.stream:
                return event.replace(data=event.data.removeprefix(b"data: ").rstrip(b"\n") + b"\n")
            ex.malformed_body = True
        return event


@dataclass(frozen=True, kw_only=True)
class ErrorEvent(Fault):
    """After ``at`` tokens, an OpenAI-style error object ends the stream (or a 500 when not streaming)."""

    at: int
    message: str = "The server had an error while processing your request."
    name: ClassVar[str] = "error"
    index_arg: ClassVar[str] = "at"

    async def act(self, event, ex):
        if _at_token(event, self.at):
            await ex.fail_midstream(self.message, why=f"error@{self.at}")
        return event


@dataclass(frozen=True, kw_only=True)
class RateLimited(Fault):
    """HTTP 429 with ``Retry-After`` (scenario seconds) before any token."""

    retry_after: float = 1.0
    name: ClassVar[str] = "ratelimit"
    value_arg: ClassVar[str] = "retry_after"

    async def act(self, event, ex):
        if event.kind == "request":
            real = to_real(self.retry_after)
            await ex.reject(
                429, "Rate limit reached for requests. Please try again later.",
                type="rate_limit_error", code="rate_limit_exceeded",
                headers=[(b"retry-after", str(max(0, round(real))).encode()),
                         (b"retry-after-ms", str(int(real * 1000)).encode())],
            )
        return event


@dataclass(frozen=True, kw_only=True)
class ServerError(Fault):
    """HTTP 500 before any token."""

    name: ClassVar[str] = "servererror"

    async def act(self, event, ex):
        if event.kind == "request":
            await ex.reject(500, "The server had an error while processing your request.", type="server_error")
        return event


@dataclass(frozen=True, kw_only=True)
class ContextWindow(Fault):
    """HTTP 400 ``context_length_exceeded`` when prompt tokens + requested max tokens exceed ``tokens``."""

    tokens: int
    name: ClassVar[str] = "context"
    value_arg: ClassVar[str] = "tokens"

    async def act(self, event, ex):
        if event.kind == "request":
            wanted = ex.prompt_tokens + (ex.max_tokens or 0)
            if wanted > self.tokens:
                await ex.reject(
                    400,
                    f"This model's maximum context length is {self.tokens} tokens. However, you requested "
                    f"{wanted} tokens ({ex.prompt_tokens} in the messages, {ex.max_tokens or 0} in the "
                    "completion). Please reduce the length of the messages or completion.",
                    type="invalid_request_error", code="context_length_exceeded", param="messages",
                )
        return event


@dataclass(frozen=True, kw_only=True)
class SlowHeaders(Fault):
    """Wait ``seconds`` (scenario seconds) before the response headers."""

    seconds: float
    name: ClassVar[str] = "slowheaders"
    value_arg: ClassVar[str] = "seconds"

    async def act(self, event, ex):
        if event.kind == "request":
            ex.note("fault", f"slowheaders={self.seconds}")
            await asyncio.sleep(to_real(self.seconds))
        return event


REGISTRY: dict[str, type[Fault]] = {
    cls.name: cls
    for cls in (Cut, Reset, SilentEnd, NoDone, Stall, MalformedChunk, BrokenFraming,
                ErrorEvent, RateLimited, ServerError, ContextWindow, SlowHeaders)
}
ALIASES = {"429": "ratelimit", "500": "servererror", "ctx": "context"}

# Options share the grammar; they set timing and content instead of faults.
OPTIONS: dict[str, type] = {
    "tokens": int, "ttft": float, "itl": float, "jitter": float, "seed": int,
    "echo": bool, "tools": str, "first": int,
}


def names() -> list[str]:
    """Registered fault names, in registry order (for dropdowns and CLI help)."""
    return list(REGISTRY)


def _number(raw: str, kind: type, item: str):
    try:
        return kind(raw)
    except ValueError:
        raise SpecError(f"{item!r}: {raw!r} is not a valid {kind.__name__}") from None


def parse(spec: str) -> tuple[list[Fault], dict[str, object]]:
    """Parse a spec string into (faults, options). Raises ``SpecError`` with the offending item."""
    faults: list[Fault] = []
    options: dict[str, object] = {}
    for item in filter(None, (part.strip() for part in spec.replace(";", ",").split(","))):
        head, _, value = item.partition("=")
        name, _, index = head.partition("@")
        name = ALIASES.get(name.lower(), name.lower())
        if name in OPTIONS:
            kind = OPTIONS[name]
            if index:
                raise SpecError(f"{item!r}: option {name!r} takes no @index")
            if kind is bool:
                if value not in ("", "1", "true", "on", "0", "false", "off"):
                    raise SpecError(f"{item!r}: {name} is on or off")
                options[name] = value in ("", "1", "true", "on")
            elif kind is str:
                options[name] = value
            else:
                if not value:
                    raise SpecError(f"{item!r}: option {name!r} needs a value, like {name}=1")
                number = _number(value, kind, item)
                if number < 0:
                    raise SpecError(f"{item!r}: {name} must not be negative")
                options[name] = number
            continue
        cls = REGISTRY.get(name)
        if cls is None:
            known = ", ".join(list(REGISTRY) + list(OPTIONS))
            raise SpecError(f"unknown fault or option {name!r} in {item!r}; known: {known}")
        kwargs: dict[str, object] = {}
        if cls.index_arg is not None:
            if not index:
                raise SpecError(f"{item!r}: {name} needs a token index, like {name}@12")
            kwargs[cls.index_arg] = _number(index, int, item)
            if kwargs[cls.index_arg] < 0:
                raise SpecError(f"{item!r}: the token index must not be negative")
        elif index:
            raise SpecError(f"{item!r}: {name} takes no @index")
        if cls.value_arg is not None and value:
            ftype = {f.name: f.type for f in fields(cls)}[cls.value_arg]
            kwargs[cls.value_arg] = _number(value, int if "int" in str(ftype) else float, item)
        elif value and cls.value_arg is None:
            raise SpecError(f"{item!r}: {name} takes no =value")
        try:
            faults.append(cls(**kwargs))
        except TypeError:
            raise SpecError(f"{item!r}: {name} needs a value, like {name}=1") from None
    return faults, options


def to_spec(*items: "Fault | str", **options: object) -> str:
    """Build a spec string from fault objects, spec fragments and options."""
    parts = [item.spec() if isinstance(item, Fault) else str(item) for item in items if item is not None]
    for key, value in options.items():
        if key not in OPTIONS:
            raise SpecError(f"unknown option {key!r}; known: {', '.join(OPTIONS)}")
        if value is True:
            parts.append(key)
        elif value is False:
            parts.append(f"{key}=off")
        else:
            parts.append(f"{key}={_fmt(value)}")
    spec = ",".join(parts)
    parse(spec)  # fail early, not on the server
    return spec
