"""LangGraph helpers, part 2: the side-effect ledger every worker process shares (a sqlite file).

Re-exported by ``streamlab.frameworks.langgraph``.
"""

import atexit
import contextlib
import os
import shutil
import sqlite3
import tempfile


def _ledger_add(key: str | None, rid: str) -> tuple[str, bool]:
    """Record one side effect; with a key, at most once per key across every process. (ticket, done)."""
    path = os.environ.get("STREAMLAB_LEDGER")
    if not path:
        raise RuntimeError("STREAMLAB_LEDGER is not set: start the app with env=ledger.env")
    with contextlib.closing(sqlite3.connect(path, timeout=30, isolation_level=None)) as db:
        db.execute("CREATE TABLE IF NOT EXISTS effects (key TEXT UNIQUE, ticket TEXT, pid INTEGER, rid TEXT)")
        ticket = f"ticket-{key or rid}"
        try:
            db.execute("INSERT INTO effects VALUES (?, ?, ?, ?)", (key, ticket, os.getpid(), rid))
            return ticket, True
        except sqlite3.IntegrityError:
            row = db.execute("SELECT ticket FROM effects WHERE key = ?", (key,)).fetchone()
            return row[0], False


class Ledger:
    """The side-effect ledger the app's ``open_ticket`` node writes: a sqlite file in a temporary
    directory, shared by every worker process (``env`` goes to the app servers)."""

    def __init__(self) -> None:
        self._dir = tempfile.mkdtemp(prefix="streamlab-ledger-")
        atexit.register(shutil.rmtree, self._dir, True)  # also when a notebook stops halfway
        self.path = os.path.join(self._dir, "ledger.sqlite")
        with contextlib.closing(sqlite3.connect(self.path)) as db:
            db.execute("CREATE TABLE IF NOT EXISTS effects (key TEXT UNIQUE, ticket TEXT, pid INTEGER, rid TEXT)")
            db.commit()

    @property
    def env(self) -> dict[str, str]:
        return {"STREAMLAB_LEDGER": self.path}

    def effects(self) -> list[tuple[str | None, int, str]]:
        """(key, pid, request id) of every side effect performed so far."""
        with contextlib.closing(sqlite3.connect(self.path, timeout=30)) as db:
            return db.execute("SELECT key, pid, rid FROM effects ORDER BY rowid").fetchall()

    def clear(self) -> None:
        with contextlib.closing(sqlite3.connect(self.path, timeout=30)) as db:
            db.execute("DELETE FROM effects")
            db.commit()

    def close(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
