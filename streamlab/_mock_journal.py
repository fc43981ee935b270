"""The mock's request journal: one ``JournalEntry`` per request, in a bounded, thread-safe ``Journal``.

Memory is bounded twice: at most ``maxlen`` entries (2000), and at most ``max_bytes`` (64 MiB) of
request bodies in all (the oldest entries leave first). Per entry, ``lateness`` keeps the first
``MAX_ENTRY_SAMPLES`` token samples and ``log`` at most ``MAX_ENTRY_EVENTS`` events.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

from ._timeline import HopLog
from ._validate import content_text as _content_text

__all__ = ["Journal", "JournalEntry"]

MAX_ENTRY_EVENTS = 20_000   # HopLog events kept per request (a 100 000-token stream logs one per chunk)
MAX_ENTRY_SAMPLES = 20_000  # lateness samples kept per request
MAX_JOURNAL_BYTES = 64 * 1024 * 1024  # request bodies kept by one journal, in all


@dataclass
class JournalEntry:
    """One request as the mock saw it: what was asked, which behaviour applied, what was sent."""

    id: int
    method: str
    path: str
    spec: str = ""
    faults: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    body: Any = None
    stream: bool = False
    status: int | None = None
    tokens_planned: int = 0
    tokens_sent: int = 0
    tokens_generated: int = 0  # paid for: generated at their deadline, sent or not (ondisconnect=continue)
    finish_reason: str | None = None
    ended: str = "open"  # complete | cut | reset | silent | error | rejected | client disconnected
    t_start: float = 0.0
    t_end: float | None = None
    # where the server noticed the client had left: "request body", "ttft wait", "non-streaming wait",
    # "at token N" (a streaming deadline or write), "stall"; None if it never left (or left after the end)
    disconnect: str | None = None
    t_disconnect: float | None = None  # wall-clock seconds after the request arrived
    log: HopLog = field(default_factory=lambda: HopLog("model"))
    lateness: list[float] = field(default_factory=list)

    @property
    def last_user_message(self) -> str:
        for message in reversed((self.body or {}).get("messages") or []):
            if isinstance(message, dict) and message.get("role") == "user":
                return _content_text(message.get("content"))
        return ""

    def wait_closed(self, timeout: float = 5.0) -> "JournalEntry":
        """Wait (wall-clock seconds) until the server has finished this exchange, e.g. noticed that a
        hop dropped the connection; returns the entry, so ``mock.journal.last.wait_closed().ended``."""
        deadline = time.perf_counter() + timeout
        while self.t_end is None and time.perf_counter() < deadline:
            time.sleep(0.002)
        return self

    def paid(self) -> dict[str, Any]:
        """Tokens paid for (generated) vs sent, and where the disconnect was noticed."""
        return {"id": self.id, "generated": self.tokens_generated, "sent": self.tokens_sent,
                "disconnect": self.disconnect,
                "t_disconnect": None if self.t_disconnect is None else round(self.t_disconnect, 3),
                "ended": self.ended}

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id, "path": self.path, "spec": self.spec, "stream": self.stream,
            "status": self.status, "tokens_sent": self.tokens_sent, "planned": self.tokens_planned,
            "finish_reason": self.finish_reason, "ended": self.ended,
        }


class Journal:
    """Thread-safe, bounded list of ``JournalEntry`` (newest last)."""

    def __init__(self, maxlen: int = 2000, *, max_bytes: int = MAX_JOURNAL_BYTES) -> None:
        self._entries: collections.deque[JournalEntry] = collections.deque(maxlen=maxlen)
        self._lock = threading.Lock()
        self._next = 1
        self.max_bytes = max_bytes
        self._bytes = 0  # request body bytes of the entries kept
        self._sizes: dict[int, int] = {}

    def charge(self, entry: JournalEntry, nbytes: int) -> None:
        """Count ``nbytes`` of request body against the journal; the oldest entries leave past ``max_bytes``."""
        with self._lock:
            self._sizes[entry.id] = self._sizes.get(entry.id, 0) + nbytes
            self._bytes += nbytes
            if len(self._sizes) > len(self._entries):  # some were pushed out by maxlen
                live = {e.id for e in self._entries}
                for gone in [i for i in self._sizes if i not in live]:
                    self._bytes -= self._sizes.pop(gone)
            while self._bytes > self.max_bytes and len(self._entries) > 1:
                old = self._entries.popleft()
                self._bytes -= self._sizes.pop(old.id, 0)

    def new(self, method: str, path: str) -> JournalEntry:
        with self._lock:
            entry = JournalEntry(id=self._next, method=method, path=path, t_start=time.perf_counter())
            self._next += 1
            self._entries.append(entry)
        return entry

    def __iter__(self) -> Iterator[JournalEntry]:
        with self._lock:
            return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, index: int) -> JournalEntry:
        with self._lock:
            return list(self._entries)[index]

    @property
    def last(self) -> JournalEntry | None:
        with self._lock:
            return self._entries[-1] if self._entries else None

    def chat(self) -> list[JournalEntry]:
        """Only the chat completion requests."""
        return [e for e in self if e.path.endswith("/chat/completions")]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._sizes.clear()
            self._bytes = 0

    def table(self) -> str:
        """A plain-text table of the chat requests (for notebooks)."""
        rows = [("#", "stream", "behaviour", "status", "sent/planned", "finish", "ended")]
        for e in self.chat():
            rows.append((str(e.id), "yes" if e.stream else "no", e.spec or "-", str(e.status or "-"),
                         f"{e.tokens_sent}/{e.tokens_planned}", str(e.finish_reason), e.ended))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
