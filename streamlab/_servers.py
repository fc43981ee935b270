"""Lifecycle of every server streamlab starts: bind 127.0.0.1 on a free port, start
fast, stop on context exit, on error, on kernel interrupt and at interpreter exit.

    Server                      base: start()/stop(), ``with`` support, registry
     +-- ThreadedASGIServer     an ASGI app on uvicorn in a daemon thread (the mock model)
     +-- (proxy, app servers)   see _proxy.py and _appserver.py

``running_servers()`` lists what is up right now; the test suite asserts it is
empty after every test, and ``stop_all()`` runs at exit.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import socket
import struct
import threading
import time
from typing import Any, Callable

__all__ = ["Server", "ThreadedASGIServer", "LoopThread", "running_servers", "stop_all", "free_port"]

HOST = "127.0.0.1"
_live: "dict[int, Server]" = {}
_live_lock = threading.Lock()


def running_servers() -> "list[Server]":
    """Every streamlab server (thread or subprocess) that has started and not stopped."""
    with _live_lock:
        return list(_live.values())


def stop_all() -> None:
    """Stop every running streamlab server (registered at interpreter exit)."""
    for server in running_servers():
        with contextlib.suppress(Exception):
            server.stop()


atexit.register(stop_all)


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago (for subprocesses that bind themselves)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def drop_connection(transport: Any, *, reset: bool) -> None:
    """End a connection now: FIN after what is already queued (``reset=False``), or an RST that
    discards it (``reset=True``, through ``SO_LINGER 0``), as a crashed server or a proxy would."""
    if reset:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    else:
        transport.close()


def bound_socket(port: int = 0) -> socket.socket:
    """A listening socket on 127.0.0.1, already bound (no race): a free port, or ``port``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((HOST, port))
    except OSError:
        sock.close()
        raise
    sock.listen(1024)
    sock.setblocking(False)
    return sock


class Server:
    """Base class: a server with a URL, started once, stopped for sure.

    Subclasses implement ``_start()`` (return when the port accepts connections)
    and ``_stop()`` (idempotent). Use as a context manager, or call ``start()``
    and ``stop()``; anything still running at interpreter exit is stopped.
    """

    kind = "server"

    def __init__(self) -> None:
        self.host = HOST
        self.port: int | None = None
        self._started = False

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError(f"{self.kind} is not started; use `with` or call .start()")
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        return f"http://{host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._started

    def start(self) -> "Server":
        if self._started:
            return self
        from ._offline import ensure_offline

        ensure_offline()
        try:
            self._start()
        except BaseException:
            with contextlib.suppress(Exception):
                self._stop()
            raise
        self._started = True
        with _live_lock:
            _live[id(self)] = self
        return self

    def stop(self) -> None:
        if not self._started:
            return
        try:
            self._stop()
        finally:
            self._started = False
            with _live_lock:
                _live.pop(id(self), None)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __del__(self) -> None:  # a forgotten server must not outlive its object
        with contextlib.suppress(Exception):
            if self._started:
                self.stop()

    def _start(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _stop(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        where = f"{self.host}:{self.port}" if self.port else "not started"
        return f"<{type(self).__name__} {where}{'' if self._started else ' (stopped)'}>"


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - uvloop is pinned, but optional
        return asyncio.new_event_loop()


class LoopThread:
    """An event loop running in a daemon thread, independent of Jupyter's own loop.

    ``submit(coro)`` schedules a coroutine on it from any thread and returns a
    concurrent future; ``call(fn, *args)`` runs a plain callable on the loop.
    """

    def __init__(self, name: str) -> None:
        self.loop = _new_loop()
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()
        self._ready.wait()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._ready.set)
        try:
            self.loop.run_forever()
        finally:
            with contextlib.suppress(Exception):
                pending = asyncio.all_tasks(self.loop)
                for task in pending:
                    task.cancel()
                self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self.loop.close()

    def submit(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, fn: Callable[..., Any], *args: Any) -> None:
        self.loop.call_soon_threadsafe(fn, *args)

    def stop(self, timeout: float = 5.0) -> None:
        if self.loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout)


_stopping_threads: set[str] = set()
_filter_installed = False


def _install_shutdown_filter() -> None:
    """Once per process: hide uvicorn's error records from server threads that are being stopped."""
    global _filter_installed
    if not _filter_installed:
        logging.getLogger("uvicorn.error").addFilter(lambda record: record.threadName not in _stopping_threads)
        _filter_installed = True


class ThreadedASGIServer(Server):
    """Serve an ASGI app with uvicorn (httptools) in a background thread.

    The listening socket is bound before the thread starts, so ``url`` is known
    at once and no port race is possible. Works from inside a running Jupyter
    event loop because the server has a loop of its own.
    """

    kind = "ASGI server"

    def __init__(self, app: Any, *, name: str = "streamlab-asgi") -> None:
        super().__init__()
        self.app = app
        self.name = name
        self._thread: threading.Thread | None = None
        self._server: Any = None
        self._sock: socket.socket | None = None

    def _start(self) -> None:
        import uvicorn

        self._sock = bound_socket()
        self.port = self._sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            http="httptools",
            loop="none",
            lifespan="off",
            proxy_headers=False,
            server_header=False,
            date_header=False,
            access_log=False,
            log_config=None,
            log_level=logging.WARNING,
            timeout_graceful_shutdown=0.2,
            timeout_keep_alive=75,
            backlog=1024,
        )
        self._server = uvicorn.Server(config)
        self._server.config.setup_event_loop = lambda: None  # the thread owns its loop
        failed: list[BaseException] = []

        def run() -> None:
            loop = _new_loop()
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._server.serve(sockets=[self._sock]))
            except BaseException as exc:  # pragma: no cover - reported below
                failed.append(exc)
            finally:
                with contextlib.suppress(Exception):
                    pending = asyncio.all_tasks(loop)
                    for task in pending:
                        task.cancel()
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.close()

        self._thread = threading.Thread(target=run, name=f"{self.name}-{self.port}", daemon=True)
        _install_shutdown_filter()
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if failed or not self._thread.is_alive():
                raise RuntimeError(f"{self.kind} failed to start: {failed[:1]}")
            if time.monotonic() > deadline:  # pragma: no cover
                raise RuntimeError(f"{self.kind} did not start within 10 s")
            time.sleep(0.002)

    def _stop(self) -> None:
        if self._server is not None:
            # Requests still in flight are cancelled on purpose; uvicorn would log each as
            # "Exception in ASGI application". Drop exactly those records: this server's thread, now.
            if self._thread is not None:
                _stopping_threads.add(self._thread.name)
            self._server.should_exit = True
            self._server.force_exit = True
        if self._thread is not None:
            self._thread.join(5)
            _stopping_threads.discard(self._thread.name)
            self._thread = None
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None
