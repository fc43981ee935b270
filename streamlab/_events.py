"""What a model fault sees and acts on: the events of an exchange, the fault base, the exchange API.

These types sit below both the engine and the catalogue, so imports run one way::

    _mock (engine, ASGI)  ->  faults (catalogue, REGISTRY, parse)  ->  _events (this)  ->  _spec (limits)

A fault's settings are checked when it is built (``Fault.__post_init__``), against the limits of
``streamlab._spec``: ``Stall(at=3, seconds=float("nan"))`` raises ``SpecError`` at once, in the
caller's code, never inside a request.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Iterable, Protocol

from . import _spec
from ._spec import Bound, Choice, SpecError

__all__ = ["Event", "Fault", "FaultContext", "SpecError"]


@dataclass(frozen=True)
class Event:
    """One step of an exchange, as the faults see it. ``data`` is the wire bytes (streaming only).

    ``kind`` is one of ``request`` (before anything is sent), ``start`` (the role chunk), ``token``
    (``index`` = 0-based token number), ``finish`` (``index`` = tokens planned), ``usage``, ``done``
    (the ``[DONE]`` line) or ``body`` (the whole non-streaming JSON body). ``reason`` is the
    finish_reason a ``finish`` or ``usage`` event carries: a fault that returns
    ``event.replace(reason=...)`` changes it (the mock rebuilds the chunk; ``None`` on ``finish``
    sends ``"finish_reason": null``, a reason on ``usage`` puts a choice with it in the usage chunk).
    """

    kind: str  # request | start | token | finish | usage | done | body
    index: int = 0
    data: bytes = b""
    reason: str | None = None

    def replace(self, **changes: Any) -> "Event":
        return dataclasses.replace(self, **changes)


class FaultContext(Protocol):
    """The exchange as a fault sees it (implemented by ``streamlab._mock_exchange.Exchange``).

    Read: ``stream``, ``body`` (the validated request JSON), ``prompt_tokens``, ``max_tokens``,
    ``planned_finish`` (the reason the answer will end with, set before the ``start`` event).
    Shape the response before it starts (on the ``request`` event): ``set_header`` (None removes a
    header), ``set_transfer`` (``chunked``, ``length`` or ``close``), ``keep_generating`` (True: go
    on generating, and counting, after the client left). End or hold it from any event: ``close``,
    ``end``, ``pause``, ``fail_midstream``, ``reject``; ``write`` sends stream bytes now (an event's
    ``data`` is sent when ``act`` returns it). ``note`` writes to the journal's log.
    Durations a fault is given are scenario seconds: convert with ``streamlab.faults.to_real``.
    """

    stream: bool
    body: dict
    malformed_body: bool
    prompt_tokens: int
    max_tokens: int | None
    planned_finish: str | None
    keep_generating: bool

    def note(self, kind: str, detail: str = "", nbytes: int = 0) -> None: ...
    async def write(self, data: bytes) -> None: ...
    def set_header(self, name: bytes, value: bytes | None) -> None: ...
    def set_transfer(self, transfer: str) -> None: ...
    async def close(self, *, reset: bool, why: str) -> None: ...
    async def end(self, *, why: str) -> None: ...
    async def pause(self, seconds: float | None) -> None: ...
    async def fail_midstream(self, message: str, *, why: str) -> None: ...
    async def reject(self, status: int, message: str, *, type: str, code: str | None = None,
                     param: str | None = None, headers: Iterable[tuple[bytes, bytes]] = ()) -> None: ...


@dataclass(frozen=True, kw_only=True)
class Fault:
    """Base of all model faults. ``act`` gets each event and returns it (maybe changed) or None to drop it.

    ``bounds`` maps a field to its ``Bound`` (a number) or ``Choice`` (a word); fields not named
    there are checked by kind: the
    ``index_arg`` field is a token index (0 to MAX_TOKENS), a float field scenario seconds
    (0 to MAX_SECONDS, finite; None where None is the default), a str field a short text.
    """

    name: ClassVar[str] = "noop"
    index_arg: ClassVar[str | None] = None  # field filled from "@N"
    value_arg: ClassVar[str | None] = None  # field filled from "=V"
    bounds: ClassVar[dict[str, Bound | Choice]] = {}

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.default is None:
                continue
            where = f"{self.name}: {f.name}"
            bound = self.bound_of(f.name)
            if bound is None:
                _spec.check_text(value, where)
            else:
                bound.check(value, where)

    @classmethod
    def bound_of(cls, field_name: str) -> Bound | Choice | None:
        """The ``Bound`` of a numeric field, the ``Choice`` of a word field (None for free text)."""
        if field_name in cls.bounds:
            return cls.bounds[field_name]
        if field_name == cls.index_arg:
            return _spec.TOKEN_INDEX
        kind = str({f.name: f.type for f in fields(cls)}[field_name])
        if "float" in kind:
            return _spec.SECONDS
        if "int" in kind:
            return _spec.TOKENS
        return None

    async def act(self, event: Event, ex: FaultContext) -> Event | None:
        return event

    def spec(self) -> str:
        """This fault in the spec grammar, e.g. ``stall@5=30``."""
        text = self.name
        if self.index_arg is not None:
            text += f"@{getattr(self, self.index_arg)}"
        if self.value_arg is not None and getattr(self, self.value_arg) is not None:
            text += f"={fmt(getattr(self, self.value_arg))}"
        return text

    def __str__(self) -> str:
        return self.spec()


def fmt(value: object) -> str:
    """A value as the spec grammar writes it (``30.0`` -> ``30``)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
