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

Response shapes: how a real server's answer differs from the mock's default. They take a word, share
the grammar and live in their own registry, ``SHAPES`` (``shapes()``), so ``names()`` (the playground's
dropdown, the outcome table) keeps to the faults that take numbers::

    accel=yes       X-Accel-Buffering: yes (default no; accel=absent: no such header)
    ctype=plain     Content-Type text/plain; charset=utf-8 (sse = the default text/event-stream;
                    charset=utf-8, sse-bare = text/event-stream, json, octet, absent)
    transfer=length the whole answer first, then one body with Content-Length (a stream's default
                    is chunked; transfer=close: HTTP/1.0, no length, ends when the connection closes)
    finish=null     finish_reason stays null, then [DONE] (finish=wrong: stop<->length,
                    tool_calls->stop; finish=usage: the reason only on the final usage chunk)
    ondisconnect=continue  after the client left, go on generating (tokens_generated counts the
                    tokens paid for) instead of stopping (ondisconnect=stop, the default)

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

A fault of your own is one more frozen dataclass, registered by name (then it works from a spec
string, the header, ``script``/``inject`` and the CLI ``--fault``), built only from the names here:
``Fault``, ``Event`` (what ``act`` sees), ``FaultContext`` (what it may do), ``Bound``/``Choice``
(the checks its value passes), ``to_real`` (scenario seconds to wall-clock seconds) and
``register``::

    @faults.register
    @dataclass(frozen=True, kw_only=True)
    class Repeat(faults.Fault):  # token ``at`` is sent twice (a relay that retried a write)
        at: int
        name: ClassVar[str] = "repeat"
        index_arg: ClassVar[str] = "at"

        async def act(self, event, ex):
            if event.kind == "token" and event.index == self.at and ex.stream:
                return event.replace(data=event.data * 2)
            return event

The exception a client sees for each fault is tabulated in ``notebooks/00_start_here``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from dataclasses import fields as _dc_fields
from typing import ClassVar

from . import _spec
from ._events import Event, Fault, FaultContext, fmt as _fmt
from ._spec import LIMITS, Bound, Choice, SpecError
from ._timescale import to_real

Exchange = FaultContext  # what ``act`` gets: the exchange (``streamlab._mock.Exchange`` implements it)

__all__ = [
    "Fault", "Cut", "Reset", "SilentEnd", "NoDone", "Stall", "MalformedChunk", "BrokenFraming",
    "ErrorEvent", "RateLimited", "ServerError", "ContextWindow", "SlowHeaders",
    "AccelBuffering", "ContentType", "Transfer", "FinishReason", "OnDisconnect",
    "Event", "FaultContext", "Exchange", "Bound", "Choice", "to_real", "register",
    "REGISTRY", "SHAPES", "names", "shapes", "examples", "parse", "validate", "to_spec", "SpecError", "LIMITS",
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


# -- response shapes: headers, body framing, finish_reason, what the backend does when the client leaves


@dataclass(frozen=True, kw_only=True)
class AccelBuffering(Fault):
    """The ``X-Accel-Buffering`` header of the answer: ``no`` (the mock's default on streams), ``yes``,
    or ``absent``. nginx holds a non-chunked body in its buffers unless this says ``no``."""

    value: str
    name: ClassVar[str] = "accel"
    value_arg: ClassVar[str] = "value"
    bounds: ClassVar[dict] = {"value": Choice(("no", "yes", "absent"))}

    async def act(self, event, ex):
        if event.kind == "request":
            ex.set_header(b"x-accel-buffering", None if self.value == "absent" else self.value.encode())
        return event


CONTENT_TYPES = {"sse": b"text/event-stream; charset=utf-8", "sse-bare": b"text/event-stream",
                 "json": b"application/json", "plain": b"text/plain; charset=utf-8",
                 "octet": b"application/octet-stream", "absent": None}


@dataclass(frozen=True, kw_only=True)
class ContentType(Fault):
    """The answer's ``Content-Type``: ``sse`` (``text/event-stream; charset=utf-8``, the stream default),
    ``sse-bare`` (no charset), ``json``, ``plain``, ``octet`` (``application/octet-stream``) or ``absent``."""

    value: str
    name: ClassVar[str] = "ctype"
    value_arg: ClassVar[str] = "value"
    bounds: ClassVar[dict] = {"value": Choice(tuple(CONTENT_TYPES))}

    async def act(self, event, ex):
        if event.kind == "request":
            ex.set_header(b"content-type", CONTENT_TYPES[self.value])
        return event


@dataclass(frozen=True, kw_only=True)
class Transfer(Fault):
    """How the body is framed: ``chunked`` (a stream's default), ``length`` (the whole answer is
    generated on its schedule, then sent at once with Content-Length; a JSON answer's default) or
    ``close`` (HTTP/1.0: no length, no chunks, paced, the connection closes at the end)."""

    value: str
    name: ClassVar[str] = "transfer"
    value_arg: ClassVar[str] = "value"
    bounds: ClassVar[dict] = {"value": Choice(("chunked", "length", "close"))}

    async def act(self, event, ex):
        if event.kind == "request":
            ex.note("fault", f"transfer={self.value}")
            ex.set_transfer(self.value)
        return event


WRONG_REASON = {"stop": "length", "length": "stop", "tool_calls": "stop"}


@dataclass(frozen=True, kw_only=True)
class FinishReason(Fault):
    """The finish_reason: ``null`` (never set, then ``[DONE]``), ``wrong`` (stop<->length, tool_calls
    -> stop) or ``usage`` (no finish chunk; the reason rides on a final usage chunk, sent even
    without ``stream_options.include_usage``; a non-streaming answer keeps its reason)."""

    value: str
    name: ClassVar[str] = "finish"
    value_arg: ClassVar[str] = "value"
    bounds: ClassVar[dict] = {"value": Choice(("null", "wrong", "usage"))}

    async def act(self, event, ex):
        if event.kind == "finish":
            if self.value == "null":
                return event.replace(reason=None)
            if self.value == "wrong":
                return event.replace(reason=WRONG_REASON.get(event.reason or "", "stop"))
            if ex.stream:  # usage: the finish chunk is dropped ...
                return None
        elif event.kind == "usage" and self.value == "usage":  # ... and its reason sent here
            return event.replace(reason=ex.planned_finish)
        return event


@dataclass(frozen=True, kw_only=True)
class OnDisconnect(Fault):
    """What the backend does once its client left: ``stop`` generating (the default) or
    ``continue`` to the end of the answer on its schedule, sending nothing. The journal's
    ``tokens_generated`` counts the tokens paid for, ``tokens_sent`` those the client got."""

    value: str
    name: ClassVar[str] = "ondisconnect"
    value_arg: ClassVar[str] = "value"
    bounds: ClassVar[dict] = {"value": Choice(("stop", "continue"))}

    async def act(self, event, ex):
        if event.kind == "request":
            ex.keep_generating = self.value == "continue"
        return event


REGISTRY: dict[str, type[Fault]] = {
    cls.name: cls
    for cls in (Cut, Reset, SilentEnd, NoDone, Stall, MalformedChunk, BrokenFraming,
                ErrorEvent, RateLimited, ServerError, ContextWindow, SlowHeaders)
}
# Response shapes take a word, not a number, and describe how an answer is framed and labelled; they
# share the grammar but have their own registry, so the fault dropdown, the outcome table
# (tools/data.py) and every caller of ``names()`` that fills in numbers see only the faults.
SHAPES: dict[str, type[Fault]] = {
    cls.name: cls for cls in (AccelBuffering, ContentType, Transfer, FinishReason, OnDisconnect)
}
ALIASES = {"429": "ratelimit", "500": "servererror", "ctx": "context"}


def register(cls: type[Fault]) -> type[Fault]:
    """Class decorator: make a model fault known by its ``name`` (specs, the header, the CLI, dropdowns).

    The name is checked like the grammar's words (1..64 of ``A-Z a-z 0-9 _ -``), must not be an
    option's or another class's (the same class defined again, as when a notebook cell runs twice,
    replaces it), and the class must be a ``Fault``; else ``SpecError``. ``REGISTRY.pop(name)``
    forgets it.
    """
    if not (isinstance(cls, type) and issubclass(cls, Fault)):
        raise SpecError(f"register() takes a Fault subclass, not {_spec.echo(cls)}")
    name = _spec.check_name(cls.name, "a fault's name")
    if name != name.lower() or name == Fault.name:
        raise SpecError(f"a fault's name is lower-case and not {Fault.name!r}: {name!r}")
    known = REGISTRY.get(name, cls)
    same = (known.__module__, known.__qualname__) == (cls.__module__, cls.__qualname__)  # a cell run again
    if name in OPTIONS or name in ALIASES or name in SHAPES or not same:
        raise SpecError(f"the fault name {name!r} is taken")
    for arg in (cls.index_arg, cls.value_arg):
        if arg is not None and arg not in {f.name for f in _dc_fields(cls)}:
            raise SpecError(f"{cls.__name__}: {arg!r} is not one of its fields")
    REGISTRY[name] = cls
    return cls


# Options share the grammar; they set timing and content instead of faults (rules: ``_spec.OPTION_RULES``).
OPTIONS: dict[str, type] = {
    "tokens": int, "ttft": float, "itl": float, "jitter": float, "seed": int,
    "echo": bool, "tools": str, "first": int,
}


def _example(cls: type[Fault]) -> str:
    bound = cls.bound_of(cls.value_arg) if cls.value_arg else None
    return bound.words[0] if isinstance(bound, Choice) else "1"


def names() -> list[str]:
    """Registered fault names, in registry order (for dropdowns and CLI help)."""
    return list(REGISTRY)


_EXAMPLE_SETTINGS = {"stall": dict(seconds=8), "ratelimit": dict(retry_after=1), "context": dict(tokens=4),
                     "slowheaders": dict(seconds=8)}


def examples(*, at: int = 12) -> list[Fault]:
    """One instance of every registered fault, fired at token ``at`` where it takes an index (the
    rows of ``data/fault_outcomes.csv`` and the model-fault rows of ``data/fix_matrix.csv``)."""
    out = []
    for name, cls in REGISTRY.items():
        kwargs = dict(_EXAMPLE_SETTINGS.get(name, {}))
        if cls.index_arg:
            kwargs[cls.index_arg] = at
        out.append(cls(**kwargs))
    return out


def shapes() -> list[str]:
    """Registered response-shape names (``accel``, ``ctype``, ``transfer``, ``finish``, ``ondisconnect``)."""
    return list(SHAPES)


def _lookup(name: str) -> type[Fault] | None:
    return REGISTRY.get(name) or SHAPES.get(name)


def _known() -> str:
    return ", ".join(list(REGISTRY) + list(SHAPES) + list(OPTIONS))


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
    cls = _lookup(name)
    if cls is None:
        raise SpecError(f"unknown fault or option {_spec.echo(name)} in {where}; known: {_known()}")
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
        raise SpecError(f"{where}: {name} needs a value, like {name}={_example(cls)}") from None


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
    cls = _lookup(name)
    if cls is None:
        raise SpecError(f"unknown fault or option {_spec.echo(spec)}; known: {_known()}")
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
