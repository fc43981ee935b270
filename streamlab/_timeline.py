"""What one hop saw, with timestamps: the common record of the mock, the proxy and the apps.

Every hop appends ``HopEvent``s to its ``HopLog``. Times are ``time.perf_counter()``
(CLOCK_MONOTONIC on Linux, so comparable across processes on one machine).

Event kinds (a hop uses the ones that apply):

    open     a client connection or request arrived         note: method and path
    status   response status line sent/received            note: "200", "504", ...
    in       bytes received from upstream                  nbytes
    out      bytes sent to the client                      nbytes
    hold     bytes kept back in a buffer                   nbytes (buffer fill after the read)
    fault    a fault fired                                 note: fault name and detail
    close    the exchange ended                            note: "eof", "reset", "timeout", ...
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

__all__ = ["HopEvent", "HopLog"]


@dataclass(frozen=True, slots=True)
class HopEvent:
    t: float
    kind: str
    nbytes: int = 0
    note: str = ""
    conn: int = 0


@dataclass
class HopLog:
    """Append-only, thread-safe list of events seen at one hop."""

    name: str
    events: list[HopEvent] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, kind: str, nbytes: int = 0, note: str = "", conn: int = 0, t: float | None = None) -> HopEvent:
        event = HopEvent(time.perf_counter() if t is None else t, kind, nbytes, note, conn)
        with self._lock:
            self.events.append(event)
        return event

    def of(self, kind: str, conn: int | None = None) -> list[HopEvent]:
        with self._lock:
            return [e for e in self.events if e.kind == kind and (conn is None or e.conn == conn)]

    def bytes(self, kind: str, conn: int | None = None) -> int:
        return sum(e.nbytes for e in self.of(kind, conn))

    def clear(self) -> None:
        with self._lock:
            self.events.clear()

    def __len__(self) -> int:
        return len(self.events)
