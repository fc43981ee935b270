"""The mock model on several processes: ``MockCluster(workers=N)`` and ``streamlab mock --workers N``.

    with sl.MockCluster(workers=4, tokens=50, itl=0.02) as mock:    # same settings as MockLLM
        mock.base_url                                                # one port, N processes
        with mock.script(Cut(at=3), None): ...                       # request 1 cut, whichever worker
        with mock.inject(Stall(at=3, seconds=30)): ...               # every request, every worker
        mock.journal.last, mock.pids                                 # merged journal, worker pids

One Python process serves a few hundred streams before its event loop, not the client,
sets the inter-token lateness. At 1,000 concurrent streams the mock must not be the
bottleneck of a load test, so it can run on N processes on one port.

Design notes.

* **Listening.** Each worker binds its own socket to the same port with ``SO_REUSEPORT``;
  the kernel spreads new connections over them by a hash of the 4-tuple (a shared
  listening socket would let whichever worker wakes first take most connections).
  The parent binds the port first (bound, not listening, so it gets no connections) to
  hold it and learn it; the workers' listeners join its reuseport group.
* **Lifetime.** Workers are ``python -c ...  _worker_main()`` processes started with
  ``streamlab._lifetime.popen``: SIGKILLed when the parent dies, however it dies.
* **Control channel.** One ``socketpair`` per worker, JSON lines both ways. The parent
  owns the behaviour state. ``inject``/``script`` push ``{"op": "state"}`` (injected
  faults as specs, whether a script is on) to every worker and return only when all
  have acknowledged, so the next request sees it whichever worker takes it. A script's
  steps stay in the parent: a worker that gets a chat request while a script is on asks
  for the next step (one round trip, only while scripted), so steps are taken in the
  order requests ask, across workers. Spec-in-URL and ``X-Streamlab`` need no channel
  (stateless), except ``first=N``, which counts per worker (N per worker, not in all).
* **Journal.** A worker reports each entry when it opens (id order = arrival order at the
  parent) and again when its ASGI call ends (the fields of ``JournalEntry``, without the
  per-chunk ``log`` and lateness samples); the parent's ``Journal`` holds them in
  ``t_start`` order (``perf_counter`` is ``CLOCK_MONOTONIC``, one clock for all
  processes on Linux). ``entry.worker`` is the pid that served it. ``journal_size=1``
  (``--no-journal``) reports nothing.
* The time scale in force at ``start()`` is the workers' (they read ``STREAMLAB_TIME_SCALE``).
  Faults registered with ``faults.register`` exist only in the process that registered
  them; use built-in faults or a spec with a cluster.
* ``MockLLM`` (one process, in a thread) is unchanged; a cluster is for load.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import contextvars
import json
import os
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Iterator

from . import faults as _faults
from ._mock import MockApp, MockURLs, _check_step
from ._mock_journal import Journal, JournalEntry
from ._servers import HOST, Server

__all__ = ["MockCluster"]

MAX_WORKERS = 64
# not ``-m streamlab._mock_workers``: the package imports this module first (runpy warns)
_WORKER_MAIN = "import sys; from streamlab._mock_workers import _worker_main; sys.exit(_worker_main())"
_STEP: contextvars.ContextVar[Any] = contextvars.ContextVar("streamlab_mock_step", default=None)
_CALL_ENTRIES: contextvars.ContextVar[list | None] = contextvars.ContextVar("streamlab_mock_entries", default=None)
_FIELDS = ("method", "path", "spec", "faults", "options", "body", "stream", "status", "tokens_planned",
           "tokens_sent", "tokens_generated", "finish_reason", "ended", "t_start", "t_end", "disconnect",
           "t_disconnect")


def _step_specs(step: Any) -> list[str] | None:
    """A script step (None, a Fault, a spec or a list of those) as a list of spec strings."""
    if step is None:
        return None
    items = step if isinstance(step, (list, tuple)) else [step]
    return [item.spec() if isinstance(item, _faults.Fault) else item for item in items if item is not None]


class MergedJournal(Journal):
    """The parent's journal: entries reported by the workers, kept in arrival (``t_start``) order."""

    def _open(self, worker: int, wid: int, fields: dict[str, Any]) -> JournalEntry:
        with self._lock:
            entry = JournalEntry(id=self._next, method=fields.get("method", ""), path=fields.get("path", ""))
            self._next += 1
            entry.t_start = fields.get("t_start", 0.0)
            entry.worker = worker  # type: ignore[attr-defined]
            entries = list(self._entries)
            at = bisect.bisect_right([e.t_start for e in entries], entry.t_start)
            entries.insert(at, entry)
            self._entries.clear()
            self._entries.extend(entries[-self._entries.maxlen:] if self._entries.maxlen else entries)
        return entry

    def _update(self, entry: JournalEntry, fields: dict[str, Any]) -> None:
        for name in _FIELDS:
            if name in fields and name not in ("method", "path", "t_start"):
                setattr(entry, name, fields[name])


class _Worker:
    def __init__(self, index: int, proc: subprocess.Popen, sock: socket.socket) -> None:
        self.index = index
        self.proc = proc
        self.sock = sock
        self.pid: int | None = None
        self.acked = 0
        self.write_lock = threading.Lock()
        self.open: dict[int, JournalEntry] = {}
        self.thread: threading.Thread | None = None

    def send(self, message: dict[str, Any]) -> None:
        data = (json.dumps(message) + "\n").encode()
        with self.write_lock:
            with contextlib.suppress(OSError):
                self.sock.sendall(data)


class MockCluster(MockURLs, Server):
    """The mock model served by ``workers`` processes on one loopback port (``SO_REUSEPORT``).

    Keyword arguments are ``MockApp``'s (checked here, ``SpecError``) plus ``workers`` and
    ``port``; ``inject``, ``script``, ``journal``, ``base_url``, ``base_url_for`` and
    ``headers_for`` work as on ``MockLLM``. ``pids`` lists the workers' pids.
    """

    kind = "mock model (workers)"

    def __init__(self, *, workers: int = 2, port: int = 0, startup_timeout: float = 60.0, **settings: Any) -> None:
        super().__init__()
        if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= MAX_WORKERS:
            raise _faults.SpecError(f"workers must be an integer from 1 to {MAX_WORKERS}, not {workers!r}")
        self._checker = MockApp(**settings)  # checks every setting now, in this process
        self.workers = workers
        self._want_port = port
        self._startup_timeout = startup_timeout
        self._settings = dict(settings)
        self._settings["faults"] = [f.spec() for f in settings.get("faults", ())]
        self.journal = MergedJournal(settings.get("journal_size", 2000))
        self._report = settings.get("journal_size", 2000) > 1
        self._lock = threading.Condition()
        self._workers: list[_Worker] = []
        self._holder: socket.socket | None = None
        self._version = 0
        self._injected: tuple[_faults.Fault, ...] = ()
        self._script: list[Any] = []
        self._script_then: Any = None
        self._scripted = False

    # -- the servers -----------------------------------------------------------
    @property
    def pids(self) -> list[int]:
        return [w.pid for w in self._workers if w.pid is not None]

    def _start(self) -> None:
        from ._lifetime import popen

        holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind((HOST, self._want_port))
        self._holder = holder
        self.port = holder.getsockname()[1]
        config = json.dumps({"port": self.port, "settings": self._settings, "report": self._report})
        for index in range(self.workers):
            mine, theirs = socket.socketpair()
            proc = popen([sys.executable, "-c", _WORKER_MAIN, "--control-fd", str(theirs.fileno()),
                          "--config", config], pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=None)
            theirs.close()
            worker = _Worker(index, proc, mine)
            worker.thread = threading.Thread(target=self._follow, args=(worker,), daemon=True,
                                             name=f"streamlab-mock-worker-{index}")
            self._workers.append(worker)
            worker.thread.start()
        deadline = time.monotonic() + self._startup_timeout
        with self._lock:
            while not all(w.pid for w in self._workers):
                dead = [w for w in self._workers if w.proc.poll() is not None]
                if dead:
                    raise RuntimeError(f"mock worker {dead[0].index} exited with code {dead[0].proc.returncode}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"mock workers not ready within {self._startup_timeout} s")
                self._lock.wait(0.1)

    def _stop(self) -> None:
        for worker in self._workers:
            if worker.proc.poll() is None:
                worker.proc.kill()
        for worker in self._workers:
            worker.proc.wait()
            with contextlib.suppress(OSError):
                worker.sock.shutdown(socket.SHUT_RDWR)
            worker.sock.close()
            if worker.thread is not None:
                worker.thread.join(2)
        self._workers = []
        if self._holder is not None:
            self._holder.close()
            self._holder = None

    def _follow(self, worker: _Worker) -> None:
        with contextlib.suppress(OSError, ValueError):
            for line in worker.sock.makefile("rb"):
                message = json.loads(line)
                op = message.get("op")
                if op == "step":
                    worker.send({"op": "step", "n": message["n"], "step": self._take_step()})
                elif op == "open":
                    worker.open[message["id"]] = self.journal._open(worker.pid or 0, message["id"], message)
                elif op == "end":
                    entry = worker.open.pop(message["id"], None)
                    if entry is not None:
                        self.journal._update(entry, message)
                else:
                    with self._lock:
                        if op == "ready":
                            worker.pid = message["pid"]
                        elif op == "ack":
                            worker.acked = max(worker.acked, message["v"])
                        self._lock.notify_all()

    # -- behaviour state, pushed to every worker ----------------------------------
    def _take_step(self) -> list[str] | None:
        with self._lock:
            if not self._scripted:
                return None
            return _step_specs(self._script.pop(0) if self._script else self._script_then)

    def _push(self) -> None:
        with self._lock:
            self._version += 1
            message = {"op": "state", "v": self._version, "scripted": self._scripted,
                       "injected": [f.spec() for f in self._injected]}
            workers = list(self._workers)
        for worker in workers:
            worker.send(message)
        deadline = time.monotonic() + 10
        with self._lock:
            while any(w.acked < message["v"] for w in workers):
                if time.monotonic() > deadline:
                    raise RuntimeError("mock workers did not acknowledge the new behaviour within 10 s")
                self._lock.wait(0.05)

    def inject(self, *faults: _faults.Fault) -> contextlib.AbstractContextManager[None]:
        """Apply ``faults`` to every request, on every worker, inside the ``with`` block."""
        self._checker._check_faults(faults, "inject")
        return self._inject(faults)

    @contextlib.contextmanager
    def _inject(self, faults: tuple) -> Iterator[None]:
        with self._lock:
            before = self._injected
            self._injected = before + tuple(faults)
        self._push()
        try:
            yield
        finally:
            with self._lock:
                self._injected = before
            self._push()

    def script(self, *steps: Any, then: Any = None) -> contextlib.AbstractContextManager[None]:
        """Request 1 (whichever worker takes it) gets ``steps[0]``, request 2 ``steps[1]``, ... then ``then``."""
        for i, step in enumerate(steps):
            _check_step(step, f"script step {i + 1}")
        _check_step(then, "script then=")
        return self._run_script(steps, then)

    @contextlib.contextmanager
    def _run_script(self, steps: tuple, then: Any) -> Iterator[None]:
        with self._lock:
            self._script, self._script_then, self._scripted = list(steps), then, True
        self._push()
        try:
            yield
        finally:
            with self._lock:
                self._script, self._script_then, self._scripted = [], None, False
            self._push()


# -- the worker process ----------------------------------------------------------------

class _ReportingJournal(Journal):
    def __init__(self, maxlen: int, report: Any) -> None:
        super().__init__(maxlen)
        self._report = report

    def new(self, method: str, path: str) -> JournalEntry:
        entry = super().new(method, path)
        if self._report is not None:
            self._report({"op": "open", "id": entry.id, "method": method, "path": path, "t_start": entry.t_start})
            found = _CALL_ENTRIES.get()
            if found is not None:
                found.append(entry)
        return entry


class WorkerApp(MockApp):
    """``MockApp`` in a worker: behaviour state from the parent, journal entries reported to it."""

    def __init__(self, channel: "_Channel", report: bool, **settings: Any) -> None:
        settings["faults"] = [f for spec in settings.get("faults", ()) for f in _faults.parse(spec)[0]]
        super().__init__(**settings)
        self.channel = channel
        self.journal = _ReportingJournal(self.journal._entries.maxlen or 2000, channel.send if report else None)
        self._remote_scripted = False

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or self.journal._report is None:
            return await super().__call__(scope, receive, send)
        entries: list[JournalEntry] = []
        token = _CALL_ENTRIES.set(entries)
        try:
            await super().__call__(scope, receive, send)
        finally:
            _CALL_ENTRIES.reset(token)
            for entry in entries:
                fields = {name: getattr(entry, name) for name in _FIELDS}
                self.channel.send({"op": "end", "id": entry.id, **fields})

    async def _read_body(self, receive: Any) -> bytes:
        raw = await super()._read_body(receive)
        if self._remote_scripted:
            _STEP.set(await self.channel.ask_step())
        return raw

    def _next_step(self) -> Any:
        return _STEP.get() if self._remote_scripted else None

    def apply(self, message: dict[str, Any]) -> None:
        self._injected = tuple(f for spec in message["injected"] for f in _faults.parse(spec)[0])
        self._remote_scripted = bool(message["scripted"])


class _Channel:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.waiting: dict[int, asyncio.Future] = {}
        self.n = 0
        self.app: WorkerApp | None = None

    def send(self, message: dict[str, Any]) -> None:
        self.writer.write((json.dumps(message, default=str) + "\n").encode())

    async def ask_step(self) -> Any:
        self.n += 1
        future = asyncio.get_running_loop().create_future()
        self.waiting[self.n] = future
        self.send({"op": "step", "n": self.n})
        return await future

    async def follow(self) -> None:
        while line := await self.reader.readline():
            message = json.loads(line)
            if message["op"] == "state" and self.app is not None:
                self.app.apply(message)
                self.send({"op": "ack", "v": message["v"]})
            elif message["op"] == "step":
                future = self.waiting.pop(message["n"], None)
                if future is not None and not future.done():
                    future.set_result(message["step"])
        os._exit(0)  # the parent closed the channel: it is gone or stopping us


async def _serve(control_fd: int, config: dict[str, Any]) -> None:
    import uvicorn

    ctrl = socket.socket(fileno=control_fd)
    reader, writer = await asyncio.open_connection(sock=ctrl)
    channel = _Channel(reader, writer)
    app = WorkerApp(channel, config["report"], **config["settings"])
    channel.app = app
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((HOST, config["port"]))
    sock.listen(2048)
    sock.setblocking(False)
    server = uvicorn.Server(uvicorn.Config(
        app, host=HOST, port=config["port"], http="httptools", lifespan="off", access_log=False,
        log_level="warning", proxy_headers=False, server_header=False, date_header=False,
        timeout_graceful_shutdown=1, backlog=2048))
    follower = asyncio.ensure_future(channel.follow())
    serving = asyncio.ensure_future(server.serve(sockets=[sock]))
    while not server.started and not serving.done():
        await asyncio.sleep(0.01)
    channel.send({"op": "ready", "pid": os.getpid()})
    await asyncio.wait([follower, serving], return_when=asyncio.FIRST_COMPLETED)


def _worker_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streamlab._mock_workers")
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--config", required=True)
    args = parser.parse_args(argv)
    from ._offline import ensure_offline

    ensure_offline()
    try:
        import uvloop

        uvloop.run(_serve(args.control_fd, json.loads(args.config)))
    except ImportError:  # pragma: no cover - uvloop is in the lock
        asyncio.run(_serve(args.control_fd, json.loads(args.config)))
    return 0


def run_cli(workers: int, port: int, settings: dict[str, Any]) -> int:
    """``streamlab mock --workers N``: serve in the foreground until Ctrl-C."""
    cluster = MockCluster(workers=workers, port=port, **settings)
    try:
        cluster.start()
    except OSError as exc:
        print(f"streamlab mock: cannot listen on 127.0.0.1:{port}: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        print(f"streamlab mock listening on {cluster.base_url} ({workers} worker processes, pids "
              f"{' '.join(map(str, cluster.pids))}; Ctrl-C to stop)", flush=True)
        while all(w.proc.poll() is None for w in cluster._workers):
            time.sleep(0.5)
        print("streamlab mock: a worker exited; stopping", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        cluster.stop()


if __name__ == "__main__":
    sys.exit(_worker_main())
