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
    upgrade  a 101 answer turned the exchange into a tunnel   note: the protocol ("websocket")
    up       bytes relayed from the client to the upstream  nbytes (in a tunnel)

A log is bounded, so a hop that runs for days (``streamlab proxy``) stays flat:
it keeps at most ``max_exchanges`` exchanges (events grouped by ``conn``) and
``max_events`` events. Past either cap the *oldest exchanges are dropped whole*
(never half an exchange, so what is left still reads open ... close), and
``dropped_exchanges`` / ``dropped_events`` count what went. Only when one
exchange alone is longer than ``max_events`` are its own oldest events dropped.
``max_events=None`` keeps everything (the old behaviour).
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from dataclasses import dataclass
from typing import Iterator

__all__ = ["HopEvent", "HopLog", "MAX_EXCHANGES", "MAX_EVENTS"]

MAX_EXCHANGES = 5_000   # exchanges (distinct ``conn`` groups) a HopLog keeps by default
MAX_EVENTS = 50_000     # events a HopLog keeps by default (about 10 MB)


@dataclass(frozen=True, slots=True)
class HopEvent:
    t: float
    kind: str
    nbytes: int = 0
    note: str = ""
    conn: int = 0


class HopLog:
    """Thread-safe, bounded record of the events seen at one hop (see the module docstring).

        log.of("fault")            # events of one kind (optionally of one conn)
        log.bytes("out", conn=3)   # summed nbytes
        log.events                 # every kept event, in the order added
        log.dropped_exchanges      # how many old exchanges were dropped to stay within the caps
    """

    def __init__(self, name: str, *, max_exchanges: int | None = MAX_EXCHANGES,
                 max_events: int | None = MAX_EVENTS) -> None:
        if max_exchanges is not None and max_exchanges < 1 or max_events is not None and max_events < 1:
            raise ValueError("max_exchanges and max_events are positive (or None: unbounded)")
        self.name = name
        self.max_exchanges = max_exchanges
        self.max_events = max_events
        self.dropped_exchanges = 0
        self.dropped_events = 0
        self._groups: dict[int, list[tuple[int, HopEvent]]] = {}  # conn -> (seq, event), oldest conn first
        self._count = 0
        self._seq = itertools.count()
        self._lock = threading.Lock()

    def add(self, kind: str, nbytes: int = 0, note: str = "", conn: int = 0, t: float | None = None) -> HopEvent:
        event = HopEvent(time.perf_counter() if t is None else t, kind, nbytes, note, conn)
        with self._lock:
            group = self._groups.get(conn)
            if group is None:
                group = self._groups[conn] = []
            group.append((next(self._seq), event))
            self._count += 1
            if (self.max_events is not None and self._count > self.max_events
                    or self.max_exchanges is not None and len(self._groups) > self.max_exchanges):
                self._trim(conn)
        return event

    def _trim(self, newest: int) -> None:
        """Drop the oldest exchanges whole until within the caps (the lock is held)."""
        groups = self._groups
        while (self.max_exchanges is not None and len(groups) > self.max_exchanges
               or self.max_events is not None and self._count > self.max_events):
            oldest = next(iter(groups))
            if oldest == newest and len(groups) == 1:  # one exchange longer than the cap: drop its head
                group = groups[oldest]
                cut = self._count - self.max_events  # type: ignore[operator]
                del group[:cut]
                self._count -= cut
                self.dropped_events += cut
                return
            if oldest == newest:  # keep the exchange being written: move it to the young end
                groups[oldest] = groups.pop(oldest)
                continue
            group = groups.pop(oldest)
            self._count -= len(group)
            self.dropped_events += len(group)
            self.dropped_exchanges += 1

    @property
    def events(self) -> list[HopEvent]:
        """Every kept event, in the order they were added."""
        with self._lock:
            groups = [list(g) for g in self._groups.values()]
        if len(groups) == 1:
            return [e for _, e in groups[0]]
        return [e for _, e in heapq.merge(*groups, key=lambda item: item[0])]

    def __iter__(self) -> Iterator[HopEvent]:
        return iter(self.events)

    def of(self, kind: str, conn: int | None = None) -> list[HopEvent]:
        if conn is not None:
            with self._lock:
                return [e for _, e in self._groups.get(conn, ()) if e.kind == kind]
        return [e for e in self.events if e.kind == kind]

    def bytes(self, kind: str, conn: int | None = None) -> int:
        return sum(e.nbytes for e in self.of(kind, conn))

    def clear(self) -> None:
        with self._lock:
            self._groups.clear()
            self._count = 0

    def __len__(self) -> int:
        return self._count

    def __repr__(self) -> str:
        dropped = f", dropped {self.dropped_exchanges} exchanges" if self.dropped_exchanges else ""
        return f"<HopLog {self.name}: {self._count} events in {len(self._groups)} exchanges{dropped}>"
