"""A real Redis server for the resumable-stream fix: Debian's ``redis-server``, on loopback.

    >>> with sl.RedisServer() as redis:
    ...     redis.url                        # 'redis://127.0.0.1:PORT/0'
    ...     redis.client().ping()            # a redis-py client (decode_responses=True)
    ...     redis.command_calls()            # {'xadd': 40, 'xread': 12, ...} from INFO commandstats

Like nginx (``streamlab._nginx``), the server is a subprocess started here and
stopped for sure: ``redis-server`` in the foreground, bound to 127.0.0.1 on a free
port, ``--save '' --appendonly no`` (nothing is ever written to disk), ready when it
answers ``PING``. It is stopped on ``with`` exit, on error, on KeyboardInterrupt and
at interpreter exit like every ``streamlab.Server``, and it dies with this process
even on SIGKILL: it is forked through ``streamlab._lifetime.popen`` (``preexec_fn`` =
``die_with_parent``, Linux ``PR_SET_PDEATHSIG``).

Design notes.

* Its working directory is a fresh temp dir, removed as soon as the server answers
  ``PING`` (Redis has chdir'ed into it and, with no RDB and no AOF, writes nothing
  there), and again on stop. So even a SIGKILLed parent leaves nothing on disk.
* ``redis-server`` binds the port itself: a port taken between ``free_port()`` and
  the bind is retried on another port (3 attempts), as for nginx.
* Missing binary: ``RedisUnavailable`` says how to install it
  (``apt-get install -y redis-server`` as root on Debian/Ubuntu, which
  ``python3 tools/install.py`` does when run as root), or point
  ``STREAMLAB_REDIS_SERVER`` at a binary.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from functools import lru_cache
from typing import Any

from ._lifetime import binary_version, find_binary, popen, terminate
from ._servers import Server, free_port

__all__ = ["RedisServer", "RedisUnavailable", "redis_available", "redis_version", "REDIS_BINARY"]

REDIS_BINARY = os.environ.get("STREAMLAB_REDIS_SERVER", "/usr/bin/redis-server")
INSTALL_HINT = ("redis-server is not installed: `apt-get install -y redis-server` (Debian/Ubuntu, as root; "
                "`python3 tools/install.py` does it when run as root), or set STREAMLAB_REDIS_SERVER to a "
                "redis-server binary. Without Redis the resumable app uses its in-process store "
                "(one process only).")


class RedisUnavailable(RuntimeError):
    """No ``redis-server`` binary to run (the message says how to install one)."""


def _binary() -> str | None:
    return find_binary(REDIS_BINARY, "redis-server")


@lru_cache(maxsize=1)
def redis_version() -> str | None:
    """The installed redis-server's version ("7.0.15"), or None when there is none."""
    return binary_version(_binary(), "--version", r"v=(\S+)")


def redis_available() -> bool:
    """True when a redis-server binary is installed and runs."""
    return redis_version() is not None


class RedisServer(Server):
    """``redis-server`` on 127.0.0.1:<free port>, no persistence, private temp dir (see the module docstring).

    Args (keyword-only):
        maxmemory: e.g. "64mb" (default: Redis's own, unlimited).
        start_timeout: wall-clock seconds to wait for ``PING``.
        extra_args: more ``redis-server`` options, passed as they are (``["--loglevel", "debug"]``).
    """

    kind = "redis"

    def __init__(self, *, maxmemory: str | None = None, start_timeout: float = 10.0,
                 extra_args: tuple[str, ...] | list[str] = ()) -> None:
        super().__init__()
        self.maxmemory = maxmemory
        self.start_timeout = start_timeout
        self.extra_args = list(extra_args)
        self.process: subprocess.Popen | None = None
        self.workdir: str | None = None
        self._lines: list[str] = []
        self._lines_lock = threading.Lock()
        self._reader: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("redis is not started; use `with` or call .start()")
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def _command(self, binary: str, port: int) -> list[str]:
        cmd = [binary, "--bind", self.host, "--port", str(port), "--save", "", "--appendonly", "no",
               "--dir", self.workdir or ".", "--daemonize", "no", "--protected-mode", "yes",
               "--logfile", "", "--databases", "1"]
        if self.maxmemory:
            cmd += ["--maxmemory", self.maxmemory]
        return cmd + self.extra_args

    def _start(self) -> None:
        binary = _binary()
        if binary is None:
            raise RedisUnavailable(INSTALL_HINT)
        self.workdir = tempfile.mkdtemp(prefix="streamlab-redis-")
        last = ""
        for _attempt in range(3):
            self.port = free_port()
            with self._lines_lock:
                self._lines.clear()
            self.process = popen(self._command(binary, self.port), stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=self.workdir,
                                 start_new_session=True)
            self._reader = threading.Thread(target=self._read, args=(self.process.stdout,),
                                            name="streamlab-redis-log", daemon=True)
            self._reader.start()
            if self._wait_ready():
                shutil.rmtree(self.workdir, ignore_errors=True)  # nothing will be written there
                return
            self._kill()
            last = "\n".join(self.log_lines()[-10:])
            if "Address already in use" not in last:
                break
        raise RuntimeError(f"redis-server did not start:\n{last}")

    def _read(self, pipe: Any) -> None:
        for raw in iter(pipe.readline, b""):
            with self._lines_lock:
                self._lines.append(raw.decode("utf-8", "replace").rstrip("\r\n"))
        pipe.close()

    def log_lines(self, grep: str | None = None) -> list[str]:
        """What redis-server printed so far, optionally only lines containing ``grep``."""
        with self._lines_lock:
            lines = list(self._lines)
        return [line for line in lines if grep is None or grep in line]

    def ping(self, timeout: float = 0.5) -> bool:
        """True when the server answers ``PING`` with ``+PONG`` (a raw RESP exchange, no client library)."""
        if self.port is None:
            return False
        try:
            with socket.create_connection((self.host, self.port), timeout=timeout) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                if self._reader is not None:
                    self._reader.join(2)
                return False
            if self.ping(0.2):
                return True
            time.sleep(0.005)
        return False

    def _kill(self) -> None:
        proc, self.process = self.process, None
        if proc is None:
            return
        terminate(proc)  # with --save '' a SIGTERM exits at once, no dump
        if self._reader is not None:
            self._reader.join(2)
            self._reader = None

    def _stop(self) -> None:
        self._kill()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    # -- for tests and notebooks ----------------------------------------------------------

    def client(self, **options: Any):
        """A sync redis-py client on this server (``decode_responses=True`` unless given)."""
        import redis

        options.setdefault("decode_responses", True)
        return redis.Redis.from_url(self.url, **options)

    def command_calls(self) -> dict[str, int]:
        """Calls per command since start (or the last ``reset_stats()``), from ``INFO commandstats``.

        The ``INFO`` and ``CONFIG`` calls made by this method and ``reset_stats`` are left out.
        """
        with contextlib.closing(self.client()) as r:
            stats = r.info("commandstats")
        out: dict[str, int] = {}
        for key, value in stats.items():
            name = key.removeprefix("cmdstat_").lower()
            if name.startswith(("info", "config")):
                continue
            out[name] = int(value["calls"])
        return out

    def reset_stats(self) -> None:
        """``CONFIG RESETSTAT``: start counting ``command_calls()`` from zero."""
        with contextlib.closing(self.client()) as r:
            r.config_resetstat()

    def __repr__(self) -> str:
        where = f"{self.host}:{self.port}" if self.port else "not started"
        return f"<RedisServer {where}{'' if self._started else ' (stopped)'}>"
