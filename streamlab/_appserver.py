"""Real app servers as subprocesses: ``uvicorn`` and ``gunicorn`` exactly as a reader runs them.

    >>> import streamlab as sl
    >>> with sl.Gunicorn("streamlab.apps.ticker:app", workers=2, timeout=30) as server:
    ...     print(server.command)            # the command line, as in the article
    ...     server.worker_pids()             # [4242, 4243]
    ...     server.kill_worker(0)            # SIGKILL the oldest worker mid-stream
    ...     server.log_lines("TIMEOUT")      # ['[...] [4240] [CRITICAL] WORKER TIMEOUT (pid:4243)']

Each server is a ``streamlab.Server``: it binds 127.0.0.1 on a free port, is
listed by ``running_servers()`` while up, and stops on ``with`` exit, on error, on
kernel interrupt and at interpreter exit. The process runs in a session of its
own (Ctrl-C in the kernel does not reach it; ``stop()`` signals the whole group:
SIGTERM, then SIGKILL after ``stop_grace`` seconds).

If the Python process that started it dies without stopping it (kernel killed,
``kill -9``), every process of the server goes with it, within milliseconds,
whatever its clients do: the server process, gunicorn's workers and uvicorn's
``--workers`` children all get SIGKILL (``PR_SET_PDEATHSIG``, see
``streamlab/_lifetime.py``). SIGKILL, not SIGTERM: a graceful shutdown would wait
for the streams still open. uvicorn runs as ``python -m streamlab.apps._uvicorn_main``
for that (``command`` shows ``uvicorn ...``, what a reader types).

Binding anything but loopback (``extra_args=["--host", "0.0.0.0"]``, ``-b``,
``--bind``) raises ``ValueError`` unless ``allow_non_loopback=True``; then a
``RuntimeWarning`` says the server is exposed and ``url`` shows the real address.
``--uds`` / ``--fd`` / ``unix:`` / ``fd://`` binds are refused (``url`` could not
tell the truth).

Durations are scenario seconds (``streamlab.time_scale``). uvicorn's and
gunicorn's command-line options only take whole seconds, so a converted value is
rounded up to at least 1 s; ``server.settings`` shows what was passed.

The child environment is the parent's, plus ``STREAMLAB_TIME_SCALE`` (the factor
in force at ``start()``), ``PYTHONUNBUFFERED=1``, the streamlab checkout on
``PYTHONPATH``, and whatever ``env=`` adds (e.g. ``STREAMLAB_MODEL_URL``).

What the servers do with a stream, measured on the pinned versions (gunicorn
27.0.1, uvicorn 0.54, uvicorn-worker 0.4; tests/test_appserver.py pins each):

* gunicorn ``--timeout`` is a heartbeat, not a request timeout. The arbiter gives
  each worker ``timeout / 2``; a uvicorn worker's event loop checks once a second
  and notifies when more than that has passed. The arbiter looks once a second
  and kills a worker whose last notice is older than ``timeout``. So a stream of
  any length on a healthy loop is never killed, and a loop blocked by sync code
  is killed ``timeout / 2`` to ``timeout + 1`` s after the block began (measured
  with ``--timeout 6``: 3.5 to 6.5 s). The arbiter logs
  ``[CRITICAL] WORKER TIMEOUT (pid:N)``, sends SIGABRT, which a uvicorn worker does
  not handle (``[WARNING] Worker (pid:N) was sent SIGABRT!``), and forks a new
  worker; the client gets ``httpx.RemoteProtocolError`` (incomplete chunked read).
* A sync (WSGI) worker notifies only between requests, so there ``--timeout``
  caps the length of a streamed response (``--timeout 2``: cut at 3.0 s). The
  SIGABRT handler raises SystemExit inside the app's generator: ``[ERROR] Error
  handling request`` with a traceback ending in ``SystemExit: 1``, then
  ``[INFO] Worker exiting (pid: N)``.
* uvicorn's multi-worker supervisor pings workers from a thread, so a blocked
  event loop is never killed there; a dead worker is replaced within ~0.5 s
  (``Child process [N] died``).
* uvicorn on SIGTERM with a plain stream open logs ``Waiting for connections to
  close. (CTRL+C to force quit)`` and keeps streaming until the stream ends, or
  until ``timeout_graceful_shutdown``: ``ERROR: Cancel 1 running task(s), timeout
  graceful shutdown exceeded``. sse-starlette's ``EventSourceResponse`` ends its
  streams on the shutdown signal instead (within ~0.5 s, no final event).
  Under gunicorn, SIGTERM gives workers ``graceful_timeout`` and then SIGKILLs
  them without a log line.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import psutil

from ._lifetime import popen
from ._offline import is_loopback_host
from ._servers import Server, free_port
from ._timescale import ENV_VAR, current_time_scale, to_real

__all__ = ["AppServer", "Uvicorn", "Gunicorn", "LogLine"]

_ROOT = str(Path(__file__).resolve().parent.parent)  # the checkout that holds streamlab/

def _whole_seconds(seconds: float | None) -> int:
    """Scenario seconds -> the whole wall-clock seconds a CLI option takes (0 stays 0 = off)."""
    if not seconds:
        return 0
    return max(1, math.ceil(to_real(seconds) - 1e-9))


@dataclass(frozen=True)
class LogLine:
    """One line the server printed: ``t`` is ``time.perf_counter()`` when it was read."""

    t: float
    stream: str  # "stdout" or "stderr"
    text: str

    def __str__(self) -> str:
        return self.text


class AppServer(Server):
    """Base of the subprocess app servers: command line, log capture, workers, stop.

    Subclasses build ``_command(port)`` and say how to find workers and when one is ready.
    """

    kind = "app server"
    _ready_pattern: "re.Pattern[str]"
    _gone_pattern: "re.Pattern[str] | None" = None

    def __init__(
        self,
        app: str,
        *,
        workers: int = 1,
        env: Mapping[str, str] | None = None,
        extra_args: Sequence[str] = (),
        stop_grace: float = 2.0,
        start_timeout: float = 30.0,
        allow_non_loopback: bool = False,
    ) -> None:
        super().__init__()
        if ":" not in app:
            raise ValueError(f"app must be 'module:attribute', got {app!r}")
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.app = app
        self.workers = workers
        self.env = dict(env or {})
        self.extra_args = list(extra_args)
        self.allow_non_loopback = allow_non_loopback
        self._fixed_port: int | None = None  # a port the caller's bind option asked for
        self.extra_args = self._take_binds(self.extra_args)
        self.stop_grace = stop_grace
        self.start_timeout = start_timeout
        self.settings: dict[str, object] = {}
        self.process: subprocess.Popen | None = None
        self._lines: list[LogLine] = []
        self._lines_lock = threading.Lock()
        self._readers: list[threading.Thread] = []
        self._killed: set[int] = set()

    # -- the command ---------------------------------------------------------------

    def _command(self, port: int) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _launch_command(self, port: int) -> list[str]:
        """What is executed (may differ from ``command`` in how, never in what)."""
        return self._command(port)

    def _take_binds(self, args: list[str]) -> list[str]:
        """Take the bind options out of ``extra_args`` (into ``self.host`` / the port), after checking them."""
        return args  # subclasses that know their server's bind options override this

    def _bind_host(self, host: str, option: str) -> str:
        """Check one address the caller wants bound: loopback, or opted in (then warn)."""
        if not host:
            raise ValueError(f"{self.kind}: {option} needs an address")
        if is_loopback_host(host):
            return host
        if not self.allow_non_loopback:
            raise ValueError(f"{self.kind}: {option} {host} would listen on a non-loopback address, reachable "
                             "from other machines; streamlab servers bind 127.0.0.1 (pass "
                             "allow_non_loopback=True if you mean it)")
        warnings.warn(f"{self.kind} listens on {host} ({option}): reachable from other machines, and the "
                      "demo apps have no authentication", RuntimeWarning, stacklevel=5)
        return host

    def _connect_host(self) -> str:
        """Where to check that the server accepts: a wildcard bind is reached through loopback."""
        host = self.host.strip("[]")
        return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)

    @property
    def command(self) -> str:
        """The command line as a reader would type it (``python -m`` dropped)."""
        args = self._command(self.port or 0)
        return " ".join(args[2:]) if args[1:2] == ["-m"] else " ".join(args)

    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env[ENV_VAR] = repr(current_time_scale())
        env["PYTHONUNBUFFERED"] = "1"
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_ROOT, env.get("PYTHONPATH", "")) if p)
        env.update({k: str(v) for k, v in self.env.items()})
        return env

    # -- lifecycle -----------------------------------------------------------------

    def _start(self) -> None:
        with self._lines_lock:
            self._lines.clear()
        self._killed.clear()
        self.port = self._fixed_port or free_port()
        self.process = popen(
            self._launch_command(self.port),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self._child_env(),
            cwd=_ROOT,
            start_new_session=True,
        )
        for name, pipe in (("stdout", self.process.stdout), ("stderr", self.process.stderr)):
            reader = threading.Thread(target=self._read, args=(name, pipe), name=f"{self.kind} {name}", daemon=True)
            reader.start()
            self._readers.append(reader)
        deadline = time.monotonic() + self.start_timeout
        while not (self._accepts() and len(self._ready_pids()) >= self.workers):
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.kind} exited with code {self.process.returncode}:\n{self._tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.kind} not ready after {self.start_timeout} s:\n{self._tail()}")
            time.sleep(0.01)

    def _tail(self, n: int = 20) -> str:
        return "\n".join(self.log_lines()[-n:])

    def _read(self, name: str, pipe) -> None:
        for raw in iter(pipe.readline, b""):
            line = LogLine(time.perf_counter(), name, raw.decode("utf-8", "replace").rstrip("\r\n"))
            with self._lines_lock:
                self._lines.append(line)
        pipe.close()

    def _accepts(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection((self._connect_host(), self.port), timeout=0.2):
            return True
        return False

    def _stop(self) -> None:
        proc = self.process
        if proc is None:
            return
        try:
            family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        except psutil.Error:
            family = []
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(self.stop_grace)
        workers = [p for p in family if p.pid != proc.pid]
        _, alive = psutil.wait_procs(workers, timeout=0.5 if proc.poll() is not None else 0)
        if proc.poll() is None or alive:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            for p in alive:  # a worker that left the group
                with contextlib.suppress(psutil.Error):
                    p.kill()
            proc.wait(5)
            psutil.wait_procs(alive, timeout=5)
        for reader in self._readers:
            reader.join(2)
        self._readers.clear()
        self.process = None

    @property
    def pid(self) -> int | None:
        """pid of the server process (the arbiter / supervisor, or the only process)."""
        return self.process.pid if self.process else None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    # -- logs ----------------------------------------------------------------------

    @property
    def logs(self) -> list[LogLine]:
        """Every line so far (stdout and stderr), with the time it was read."""
        with self._lines_lock:
            return list(self._lines)

    def log_lines(self, grep: str | None = None, *, since: float | None = None) -> list[str]:
        """Lines printed so far; ``grep`` is a regular expression, ``since`` a ``perf_counter()`` time."""
        pattern = re.compile(grep) if grep else None
        return [
            line.text
            for line in self.logs
            if (since is None or line.t >= since) and (pattern is None or pattern.search(line.text))
        ]

    def wait_for_log(self, grep: str, *, timeout: float = 10.0, since: float | None = None) -> LogLine:
        """Block until a line matching ``grep`` appears (wall-clock ``timeout``); return it."""
        pattern = re.compile(grep)
        deadline = time.monotonic() + timeout
        while True:
            for line in self.logs:
                if (since is None or line.t >= since) and pattern.search(line.text):
                    return line
            if time.monotonic() > deadline:
                raise TimeoutError(f"no log line matching {grep!r} within {timeout} s")
            time.sleep(0.01)

    # -- workers -------------------------------------------------------------------

    def worker_pids(self) -> list[int]:
        """pids of the processes that serve requests, oldest first."""
        if not self.alive:
            return []
        try:
            children = psutil.Process(self.pid).children()
        except psutil.Error:
            return []
        workers = []
        for proc in children:
            with contextlib.suppress(psutil.Error):  # a process may vanish while we look
                if self._is_worker(proc):
                    workers.append((proc.create_time(), proc.pid))
        return [pid for _, pid in sorted(workers)]

    def _is_worker(self, proc: psutil.Process) -> bool:
        return proc.status() != psutil.STATUS_ZOMBIE and proc.pid not in self._gone_pids()

    def _gone_pids(self) -> set[int]:
        """Workers signalled by ``kill_worker`` or reported dying in the log (they may take a moment to exit)."""
        gone = set(self._killed)
        if self._gone_pattern is not None:
            for line in self.logs:
                for match in self._gone_pattern.finditer(line.text):
                    gone.update(int(pid) for pid in match.groups() if pid)
        return gone

    def _ready_pids(self) -> set[int]:
        """Workers that have said they are ready (from the log)."""
        ready = set()
        for text in self.log_lines(self._ready_pattern.pattern):
            match = self._ready_pattern.search(text)
            if match and match.group("pid"):
                ready.add(int(match.group("pid")))
        return ready & set(self.worker_pids())

    def kill_worker(self, which: int = 0, *, sig: int = signal.SIGKILL) -> int:
        """Send ``sig`` (default SIGKILL) to one worker: an index into ``worker_pids()`` or a pid.

        The arbiter/supervisor forks a replacement; ``wait_workers()`` waits for it.
        Returns the pid that was signalled.
        """
        pids = self.worker_pids()
        pid = which if which in pids else pids[which]
        os.kill(pid, sig)
        if sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGABRT, signal.SIGQUIT, signal.SIGINT):
            self._killed.add(pid)
        return pid

    def wait_workers(self, *, timeout: float = 20.0) -> list[int]:
        """Wait until ``workers`` workers are up and ready again (after a kill or a timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            pids = self.worker_pids()
            if len(pids) == self.workers and set(pids) <= self._ready_pids():
                return pids
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(pids)}/{self.workers} workers ready after {timeout} s: {pids}")
            time.sleep(0.01)


class Uvicorn(AppServer):
    """``uvicorn <app> --workers N --timeout-keep-alive K`` in a subprocess.

    Args (keyword-only, durations in scenario seconds):
        app: "module:attribute", e.g. "streamlab.apps.chat:app".
        workers: 1 runs one process, which is the worker (``kill_worker(0)`` kills the
            server; nothing restarts it). More runs uvicorn's supervisor, which restarts
            a dead worker within about 0.5 s.
        timeout_keep_alive: idle keep-alive connections are closed after this (uvicorn: 5).
        timeout_graceful_shutdown: on SIGTERM, streams still open after this are cut
            (uvicorn: None = wait for them; ``stop()`` SIGKILLs after ``stop_grace``).
        env: extra environment for the app (``{"STREAMLAB_MODEL_URL": mock.base_url}``).
        log_level: uvicorn's ``--log-level`` ("info" shows start, access log, shutdown).
        extra_args: more command-line options, passed as they are (``--host``/``--port`` replace
            streamlab's own; a non-loopback ``--host`` needs ``allow_non_loopback``).
        stop_grace: wall-clock seconds between SIGTERM and SIGKILL in ``stop()``.
        allow_non_loopback: let ``--host`` name an address other machines can reach (warns).
    """

    kind = "uvicorn"
    _ready_pattern = re.compile(r"Started server process \[(?P<pid>\d+)\]")
    _gone_pattern = re.compile(r"Child process \[(\d+)\] died|Finished server process \[(\d+)\]")

    def __init__(
        self,
        app: str,
        *,
        workers: int = 1,
        timeout_keep_alive: float = 5,
        timeout_graceful_shutdown: float | None = None,
        env: Mapping[str, str] | None = None,
        log_level: str = "info",
        extra_args: Sequence[str] = (),
        stop_grace: float = 2.0,
        start_timeout: float = 30.0,
        allow_non_loopback: bool = False,
    ) -> None:
        super().__init__(app, workers=workers, env=env, extra_args=extra_args, stop_grace=stop_grace,
                         start_timeout=start_timeout, allow_non_loopback=allow_non_loopback)
        self.timeout_keep_alive = timeout_keep_alive
        self.timeout_graceful_shutdown = timeout_graceful_shutdown
        self.log_level = log_level

    def _command(self, port: int) -> list[str]:
        self.settings = {
            "workers": self.workers,
            "timeout_keep_alive": _whole_seconds(self.timeout_keep_alive),
            "timeout_graceful_shutdown": (
                None if self.timeout_graceful_shutdown is None else _whole_seconds(self.timeout_graceful_shutdown)
            ),
        }
        cmd = [sys.executable, "-m", "uvicorn", self.app, "--host", self.host, "--port", str(port),
               "--workers", str(self.workers), "--timeout-keep-alive", str(self.settings["timeout_keep_alive"]),
               "--log-level", self.log_level]
        if self.settings["timeout_graceful_shutdown"] is not None:
            cmd += ["--timeout-graceful-shutdown", str(self.settings["timeout_graceful_shutdown"])]
        return cmd + self.extra_args

    def _launch_command(self, port: int) -> list[str]:
        cmd = self._command(port)  # [python, -m, uvicorn, ...]: the same options, through our entry point
        return [cmd[0], "-m", "streamlab.apps._uvicorn_main", *cmd[3:]]

    def _take_binds(self, args: list[str]) -> list[str]:
        rest: list[str] = []
        items = iter(args)
        for arg in items:
            option, eq, value = arg.partition("=")
            if option not in ("--host", "--port", "--uds", "--fd"):
                rest.append(arg)
                continue
            if not eq:
                value = next(items, "")
            if option in ("--uds", "--fd"):
                raise ValueError(f"uvicorn {option} is not supported by streamlab.Uvicorn: it listens on the "
                                 "TCP port it reports in .url (use --host/--port)")
            if option == "--host":
                self.host = self._bind_host(value, "--host")
            else:
                try:
                    self._fixed_port = int(value)
                except ValueError:
                    raise ValueError(f"uvicorn --port needs a number, got {value!r}") from None
        return rest

    def worker_pids(self) -> list[int]:
        if self.workers == 1:
            return [self.pid] if self.alive else []
        return super().worker_pids()

    def _is_worker(self, proc: psutil.Process) -> bool:
        # multiprocessing "spawn" children; skip the resource tracker
        return super()._is_worker(proc) and "spawn_main" in " ".join(proc.cmdline())

    def _ready_pids(self) -> set[int]:
        # "Started server process [pid]" comes before the app's startup; count the
        # "Application startup complete." lines that follow as well.
        started = super()._ready_pids()
        complete = len(self.log_lines(r"Application startup complete|lifespan' protocol appears unsupported"))
        return started if complete >= len(self.log_lines(self._ready_pattern.pattern)) else set()


class Gunicorn(AppServer):
    """``gunicorn <app> -w N -k <worker_class> --timeout T`` in a subprocess.

    Args (keyword-only, durations in scenario seconds):
        app: "module:attribute". A WSGI app needs ``worker_class="sync"`` (or "gthread").
        workers: worker processes forked by the arbiter; a dead one is replaced.
        worker_class: "uvicorn_worker.UvicornWorker" (ASGI, the article's ``-k``), "sync", "gthread".
        timeout: gunicorn's worker heartbeat timeout (gunicorn: 30; 0 = off). Not a
            request timeout: see the module docstring for when it cuts a stream.
        graceful_timeout: on SIGTERM, workers still busy after this are killed (gunicorn: 30).
        keepalive: seconds an idle keep-alive connection is held (gunicorn: 2).
        env, log_level, extra_args, stop_grace, allow_non_loopback: as for ``Uvicorn``; a ``-b`` /
            ``--bind`` in ``extra_args`` replaces streamlab's own bind (more than one: all are bound,
            ``url`` names the first).

    The command adds ``--no-control-socket`` (gunicorn 27 would otherwise open one
    shared socket in $HOME for every instance), ``--access-logfile -`` (so requests
    show in ``log_lines()``) and a hooks module that logs ``worker ready (pid:N)``.
    A worker counts as ready (``start()``, ``wait_workers()``) at that line, and a uvicorn
    worker only once it has also logged its app startup ("Application startup complete.",
    after the lifespan startup) unless logging is turned down or away (``log_level`` above
    info, ``--error-logfile``, ``--log-config`` ... in ``extra_args``).
    """

    kind = "gunicorn"
    _ready_pattern = re.compile(r"streamlab\.gunicorn worker ready \(pid:(?P<pid>\d+)\)")
    # a uvicorn worker's app startup (lifespan) ends after the fork's "ready" line; its INFO lines
    # carry the worker's pid ("[4242] [INFO] Application startup complete.")
    _app_started_pattern = re.compile(
        r"\[(?P<pid>\d+)\] \[INFO\] (?:Application startup complete|ASGI 'lifespan' protocol appears unsupported)")
    _gone_pattern = re.compile(
        r"WORKER TIMEOUT \(pid:(\d+)\)|Worker \(pid:(\d+)\) was sent|worker (?:exited|aborted) \(pid:(\d+)\)")

    def __init__(
        self,
        app: str,
        *,
        workers: int = 1,
        worker_class: str = "uvicorn_worker.UvicornWorker",
        timeout: float = 30,
        graceful_timeout: float = 30,
        keepalive: float = 2,
        env: Mapping[str, str] | None = None,
        log_level: str = "info",
        extra_args: Sequence[str] = (),
        stop_grace: float = 2.0,
        start_timeout: float = 30.0,
        allow_non_loopback: bool = False,
    ) -> None:
        self._more_binds: list[str] = []
        super().__init__(app, workers=workers, env=env, extra_args=extra_args, stop_grace=stop_grace,
                         start_timeout=start_timeout, allow_non_loopback=allow_non_loopback)
        self.worker_class = worker_class
        self.timeout = timeout
        self.graceful_timeout = graceful_timeout
        self.keepalive = keepalive
        self.log_level = log_level

    def _command(self, port: int) -> list[str]:
        self.settings = {
            "workers": self.workers,
            "worker_class": self.worker_class,
            "timeout": _whole_seconds(self.timeout),
            "graceful_timeout": _whole_seconds(self.graceful_timeout),
            "keepalive": _whole_seconds(self.keepalive),
        }
        return [
            sys.executable, "-m", "gunicorn", self.app, "--bind", _host_port(self.host, port),
            *[arg for bind in self._more_binds for arg in ("--bind", bind)],
            "--workers", str(self.workers), "--worker-class", self.worker_class,
            "--timeout", str(self.settings["timeout"]), "--graceful-timeout", str(self.settings["graceful_timeout"]),
            "--keep-alive", str(self.settings["keepalive"]), "--log-level", self.log_level,
            "--access-logfile", "-", "--no-control-socket", "--config", "python:streamlab.apps._gunicorn_hooks",
            *self.extra_args,
        ]

    def _waits_for_app_startup(self) -> bool:
        """True when uvicorn workers will print their app startup line where we read it (INFO, stderr)."""
        logging_args = ("--log-level", "--error-logfile", "--log-file", "--log-config", "--log-syslog",
                        "--logger-class")
        return ("uvicorn" in self.worker_class.lower() and self.log_level.lower() in ("debug", "info")
                and not any(a.split("=")[0] in logging_args for a in self.extra_args))

    def _ready_pids(self) -> set[int]:
        """Workers that are forked and, for uvicorn workers, past the app's startup (lifespan)."""
        ready = super()._ready_pids()
        if not ready or not self._waits_for_app_startup():
            return ready
        started = set()
        for text in self.log_lines(self._app_started_pattern.pattern):
            match = self._app_started_pattern.search(text)
            if match:
                started.add(int(match.group("pid")))
        return ready & started

    def _take_binds(self, args: list[str]) -> list[str]:
        rest: list[str] = []
        binds: list[str] = []
        items = iter(args)
        for arg in items:
            option, eq, value = arg.partition("=")
            if arg.startswith("-b") and not arg.startswith("--"):
                binds.append(arg[2:] or next(items, ""))
            elif len(option) >= 4 and "--bind".startswith(option):  # argparse takes --bi, --bin too
                binds.append(value if eq else next(items, ""))
            else:
                rest.append(arg)
        for index, bind in enumerate(binds):
            host, port = _parse_bind(bind)
            self._bind_host(host, f"--bind {bind}")
            if index == 0:
                self.host, self._fixed_port = host, port
            else:
                self._more_binds.append(bind)
        return rest


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _parse_bind(bind: str) -> "tuple[str, int | None]":
    """A gunicorn bind address (HOST, HOST:PORT, [V6]:PORT, tcp://...) -> (host, port or None)."""
    if bind.startswith(("unix:", "fd://")):
        raise ValueError(f"gunicorn --bind {bind} is not supported by streamlab.Gunicorn: it listens on the "
                         "TCP port it reports in .url")
    netloc = bind.removeprefix("tcp://")
    if netloc.startswith("["):
        host, _, port = netloc[1:].partition("]")
        port = port.removeprefix(":")
    elif netloc.count(":") == 1:
        host, port = netloc.split(":")
    else:
        host, port = netloc, ""
    host = host or "0.0.0.0"  # gunicorn reads an empty host as every interface
    try:
        return host, (int(port) if port else None)
    except ValueError:
        raise ValueError(f"gunicorn --bind {bind}: {port!r} is not a port number") from None
