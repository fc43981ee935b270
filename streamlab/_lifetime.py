"""Every process streamlab starts dies with the process that started it.

A SIGKILLed notebook kernel or test run runs no ``atexit`` and no ``finally``; what it
started must go anyway, within moments, whatever a client of that server is doing.
The tie is Linux ``PR_SET_PDEATHSIG``: the kernel sends the child SIGKILL when its
parent goes. SIGKILL, not SIGTERM: on SIGTERM uvicorn and gunicorn shut down
gracefully and wait for streams still in flight, i.e. for the client.

    die_with_parent()       preexec_fn for subprocess.Popen (between fork and exec), or call it
                            in a freshly forked child (gunicorn's post_fork hook does)
    popen(args, **kw)       subprocess.Popen(args, preexec_fn=die_with_parent, **kw), run on a
                            thread that lives as long as the process (see below)
    tie_to(pid)             in an already running process: die when ``pid`` is no longer the parent
    terminate(proc)         SIGTERM, a grace period, then SIGKILL (the process group with group=True)
    find_binary(path, name) / binary_version(binary, flag, pattern): the system servers we run
                            (nginx, redis-server): which binary, and its version or None

Design notes.

* The death signal is tied to the *thread* that forked the child, not to the process
  (prctl(2): "the parent" is the thread). A server started from a short-lived thread
  (a ``ThreadPoolExecutor`` task, a test's helper thread) would be SIGKILLed the moment
  that thread returns. ``popen()`` therefore forks from one daemon thread,
  ``streamlab-spawner``, that is started once and never returns while the process lives.
* The race: if the parent dies between fork and the prctl call, no signal will ever
  come. ``die_with_parent`` compares ``os.getppid()`` afterwards with the pid recorded
  just before the fork (an ``os.register_at_fork`` hook, which ``subprocess`` runs
  whenever a ``preexec_fn`` is given) and kills itself if they differ.
* The setting survives ``execve`` (not of set-uid binaries) and is cleared in the
  children of the child: a server's own workers need their own tie.
  gunicorn: ``streamlab/apps/_gunicorn_hooks.py`` ``post_fork`` ties each worker to
  the arbiter (the arbiter forks from its main thread). uvicorn ``--workers N``: the
  supervisor spawns workers (multiprocessing "spawn", from its main thread); streamlab
  runs it as ``python -m streamlab.apps._uvicorn_main``, and a spawned worker
  re-imports that main module as ``__mp_main__``, which calls ``tie_to(supervisor pid)``.
* Not Linux (no prctl): all of this is a no-op; ``stop()``/``atexit`` still stop servers.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import os
import queue
import re
import shutil
import signal
import subprocess
import threading
from typing import Any, Callable

__all__ = ["die_with_parent", "popen", "tie_to", "terminate", "find_binary", "binary_version", "PARENT_ENV"]

PARENT_ENV = "STREAMLAB_SUPERVISOR_PID"  # set by ``python -m streamlab.apps._uvicorn_main`` for its workers
_PR_SET_PDEATHSIG = 1

try:  # resolved now, not between fork and exec (nothing may be imported or loaded there)
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
    _prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    _prctl.restype = ctypes.c_int
except (OSError, AttributeError):  # pragma: no cover - not Linux
    _prctl = None

_forker_pid: int | None = None  # pid of the process that forked last (recorded in the parent, copied to the child)


def _record_forker() -> None:
    global _forker_pid
    _forker_pid = os.getpid()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_record_forker)


def _set_death_signal(sig: int) -> bool:
    return _prctl is not None and _prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0


def die_with_parent(parent_pid: int | None = None, sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to send ``sig`` (SIGKILL) to this process when its parent (thread) exits.

    Usable as ``subprocess.Popen(preexec_fn=die_with_parent)``. ``parent_pid``: the
    pid the parent must have; default: the process that forked us (recorded by a
    before-fork hook). If the parent is already gone, this process kills itself.
    """
    if not _set_death_signal(sig):
        return
    expected = parent_pid if parent_pid is not None else _forker_pid
    if expected is not None and expected != os.getpid() and os.getppid() != expected:
        os.kill(os.getpid(), sig)  # the parent died before the tie was made


def tie_to(parent_pid: int, sig: int = signal.SIGKILL) -> None:
    """In a running process whose parent is ``parent_pid``: die with it (at once if it is gone already)."""
    if not _set_death_signal(sig):
        return
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), sig)


# -- forking from a thread that lives as long as the process --------------------------

_jobs: "queue.SimpleQueue[tuple[Callable[[], Any], concurrent.futures.Future]]" = queue.SimpleQueue()
_spawner: threading.Thread | None = None
_spawner_lock = threading.Lock()
_spawner_pid: int | None = None


def _serve_jobs() -> None:
    while True:
        job, future = _jobs.get()
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(job())
            except BaseException as exc:  # handed to the caller
                future.set_exception(exc)


def _on_spawner(job: Callable[[], Any]) -> Any:
    global _spawner, _spawner_pid
    with _spawner_lock:
        if _spawner is None or _spawner_pid != os.getpid() or not _spawner.is_alive():
            _spawner = threading.Thread(target=_serve_jobs, name="streamlab-spawner", daemon=True)
            _spawner_pid = os.getpid()
            _spawner.start()
    if threading.current_thread() is _spawner:
        return job()
    future: concurrent.futures.Future = concurrent.futures.Future()
    _jobs.put((job, future))
    return future.result()


def popen(args: Any, **kwargs: Any) -> subprocess.Popen:
    """``subprocess.Popen(args, preexec_fn=die_with_parent, **kwargs)``, forked from ``streamlab-spawner``.

    The child gets SIGKILL when this process dies (by any signal, SIGKILL included),
    and not before, whichever thread called ``popen``.
    """
    if "preexec_fn" in kwargs:
        raise TypeError("popen() sets preexec_fn itself (die_with_parent)")
    return _on_spawner(lambda: subprocess.Popen(args, preexec_fn=die_with_parent, **kwargs))


def terminate(proc: subprocess.Popen, *, grace: float = 3.0, group: bool = False) -> None:
    """SIGTERM, up to ``grace`` s to exit, then SIGKILL, and reap it.

    ``group=True`` SIGKILLs the process group (pgid = ``proc.pid``, a ``start_new_session``
    child) even after a clean exit: a server's workers that outlived their master go too.
    """
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
    if group:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    elif proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


def find_binary(path: str, name: str) -> str | None:
    """``path`` if it is an executable file, else ``name`` found on ``PATH``, else None."""
    if os.path.isfile(path) and os.access(path, os.X_OK):
        return path
    return shutil.which(name)


def binary_version(binary: str | None, flag: str, pattern: str) -> str | None:
    """Group 1 of ``pattern`` in what ``binary flag`` prints (stdout or stderr); None if it does not run."""
    if binary is None:
        return None
    try:
        out = subprocess.run([binary, flag], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(pattern, out.stdout + out.stderr)
    return match.group(1) if match else None
