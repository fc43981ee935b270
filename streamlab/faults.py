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

Limits (``LIMITS``, all in ``streamlab/_spec.py``). A value outside them is a ``SpecError`` (a
``ValueError``) in Python, when the fault or spec is built, and a JSON ``400`` with code
``invalid_streamlab_spec`` on the wire; an error message quotes at most 120 characters of it::

    tokens=N, @N (token index)            whole number, 0 .. 100 000
    ttft itl jitter, stall@N=S,           finite number of scenario seconds, 0 .. 86 400
      slowheaders=S, ratelimit=S
    context=N                             whole number, 0 .. 10 000 000
    seed=N / first=N                      0 .. 2**32-1 / 0 .. 1 000 000
    tools=NAME                            auto, off or 1..64 of A-Z a-z 0-9 _ -
    a spec                                at most 4 096 characters and 64 items
    a number                              plain ASCII decimal: no nan, inf, '_' or other digits

``validate(spec)`` / ``validate(name, value, at=N)`` runs the same checks before a run.

The exception a client sees for each fault is tabulated in ``notebooks/00_start_here``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import ClassVar

from . import _spec
from ._events import Event, Fault, FaultContext, fmt as _fmt
from ._spec import LIMITS, SpecError
from ._timescale import to_real

Exchange = FaultContext  # what ``act`` gets: the exchange (``streamlab._mock.Exchange`` implements it)

__all__ = [
    "Fault", "Cut", "Reset", "SilentEnd", "NoDone", "Stall", "MalformedChunk", "BrokenFraming",
    "ErrorEvent", "RateLimited", "ServerError", "ContextWindow", "SlowHeaders",
    "REGISTRY", "names", "parse", "validate", "to_spec", "SpecError", "LIMITS",
]


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
    bounds: ClassVar[dict] = {"tokens": _spec.CONTEXT}

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


# Options share the grammar; they set timing and content instead of faults (rules: ``_spec.OPTION_RULES``).
OPTIONS: dict[str, type] = {
    "tokens": int, "ttft": float, "itl": float, "jitter": float, "seed": int,
    "echo": bool, "tools": str, "first": int,
}


def names() -> list[str]:
    """Registered fault names, in registry order (for dropdowns and CLI help)."""
    return list(REGISTRY)


def _item(item: str, faults: list[Fault], options: dict[str, object]) -> None:
    head, _, value = item.partition("=")
    name, _, index = head.partition("@")
    name = ALIASES.get(name.lower(), name.lower())
    where = _spec.echo(item)
    if name in OPTIONS:
        if index:
            raise SpecError(f"{where}: option {name!r} takes no @index")
        options[name] = _spec.check_option(name, value, raw=True, where=f"{where}: {name}")
        return
    cls = REGISTRY.get(name)
    if cls is None:
        known = ", ".join(list(REGISTRY) + list(OPTIONS))
        raise SpecError(f"unknown fault or option {_spec.echo(name)} in {where}; known: {known}")
    kwargs: dict[str, object] = {}
    if cls.index_arg is not None:
        if not index:
            raise SpecError(f"{where}: {name} needs a token index, like {name}@12")
        kwargs[cls.index_arg] = _spec.TOKEN_INDEX.parse(index, f"{where}: the token index")
    elif index:
        raise SpecError(f"{where}: {name} takes no @index")
    if cls.value_arg is not None and value:
        bound = cls.bound_of(cls.value_arg)
        assert bound is not None
        kwargs[cls.value_arg] = bound.parse(value, f"{where}: {cls.value_arg}")
    elif value and cls.value_arg is None:
        raise SpecError(f"{where}: {name} takes no =value")
    try:
        faults.append(cls(**kwargs))
    except TypeError:
        raise SpecError(f"{where}: {name} needs a value, like {name}=1") from None


def parse(spec: str) -> tuple[list[Fault], dict[str, object]]:
    """Parse a spec string into (faults, options). Raises ``SpecError`` naming the offending item.

    Every value is checked against ``LIMITS`` (see the module docstring): ``stall@1=nan``,
    ``tokens=1000000000000`` or a 200 KB spec are refused here, before any request runs.
    """
    faults: list[Fault] = []
    options: dict[str, object] = {}
    for item in _spec.split(spec):
        _item(item, faults, options)
    return faults, options


_UNSET = object()


def validate(spec: "str | Fault", value: object = _UNSET, *, at: int | None = None
             ) -> tuple[list[Fault], dict[str, object]]:
    """Check a behaviour before a run; return ``(faults, options)`` or raise ``SpecError``.

        validate("stall@5=30,tokens=200")     # a whole spec string
        validate("stall", 30, at=5)           # a (fault name, value) pair, index as keyword
        validate("tokens", 200)               # an option and its value
        validate(Stall(at=5, seconds=30))     # an object (checked when it was built)

    The one check the URL prefix, the ``X-Streamlab`` header, the CLI and the playground share.
    """
    if isinstance(spec, Fault):
        return [spec], {}
    if value is _UNSET and at is None:
        return parse(spec)
    if not isinstance(spec, str):
        raise SpecError(f"a fault or option name is a string, not {_spec.echo(spec)}")
    name = ALIASES.get(spec.strip().lower(), spec.strip().lower())
    if name in OPTIONS:
        if at is not None:
            raise SpecError(f"option {name!r} takes no token index")
        return [], {name: _spec.check_option(name, None if value is _UNSET else value)}
    cls = REGISTRY.get(name)
    if cls is None:
        raise SpecError(f"unknown fault or option {_spec.echo(spec)}; known: "
                        f"{', '.join(list(REGISTRY) + list(OPTIONS))}")
    kwargs: dict[str, object] = {}
    if cls.index_arg is not None:
        if at is None:
            raise SpecError(f"{name} needs a token index (at=)")
        kwargs[cls.index_arg] = at
    elif at is not None:
        raise SpecError(f"{name} takes no token index")
    if value is not _UNSET and value is not None:
        if cls.value_arg is None:
            raise SpecError(f"{name} takes no value")
        kwargs[cls.value_arg] = value
    try:
        return [cls(**kwargs)], {}
    except TypeError:
        raise SpecError(f"{name} needs a value ({cls.value_arg})") from None


def to_spec(*items: "Fault | str", **options: object) -> str:
    """Build a spec string from fault objects, spec fragments and options (checked: ``SpecError``)."""
    parts: list[str] = []
    for item in items:
        if item is None:
            continue
        if not isinstance(item, (Fault, str)):
            raise SpecError(f"a behaviour is a Fault or a spec string, not {_spec.echo(item)}")
        parts.append(item.spec() if isinstance(item, Fault) else item)
    for key, value in options.items():
        if key not in OPTIONS:
            raise SpecError(f"unknown option {key!r}; known: {', '.join(OPTIONS)}")
        _spec.check_option(key, value)
        if value is True:
            parts.append(key)
        elif value is False:
            parts.append(f"{key}=off")
        else:
            parts.append(f"{key}={_fmt(value)}")
    spec = ",".join(parts)
    parse(spec)  # fail early, not on the server
    return spec
