"""Start Locust in processes of its own, follow its progress, read back what it measured.

``import locust`` monkey-patches the standard library with gevent (``monkey.patch_all()`` in
its ``__init__``), which would break asyncio code in the same process: a Jupyter kernel, a
pytest run, uvicorn in a thread. So this module never imports locust. It runs
``python -m locust -f streamlab/load/_locustfile.py --headless ...``: one standalone
process, or one ``--master`` and ``workers`` ``--worker`` processes on 127.0.0.1 (a free
port), every one tied to this process (``streamlab._lifetime.popen``: SIGKILLed if we die).

The master (or standalone) process prints a progress line every 0.5 s on stdout (a thread
here reads them and moves the progress bar) and writes every stream's record to a JSON file
in a temporary directory when it quits; ``run`` returns them as a ``LoadResult``. Locust's
own log and stats table go to ``result.log`` (the last lines are shown if Locust fails).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any, Callable, Sequence

from ._result import LoadResult

__all__ = ["run", "run_worker", "LOCUSTFILE", "LoadError"]

LOCUSTFILE = str(Path(__file__).with_name("_locustfile.py"))
PROGRESS_PREFIX = "streamlab-progress "   # the same string as in _locustfile (which we must not import)
_PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])


class LoadError(RuntimeError):
    """Locust did not produce a result (it failed to start, or a worker never connected)."""


def _check(url: str, users: int, duration: float, spawn_rate: float | None, workers: int) -> None:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"url must be an http(s) URL, got {url!r}")
    if not isinstance(users, int) or users < 1:
        raise ValueError(f"users must be a positive integer, got {users!r}")
    if not float(duration).is_integer() or duration < 1:
        raise ValueError(f"duration must be a whole number of seconds >= 1 (Locust's -t), got {duration!r}")
    if spawn_rate is not None and not spawn_rate > 0:
        raise ValueError(f"spawn_rate must be > 0 users per second, got {spawn_rate!r}")
    if not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be an integer >= 0, got {workers!r}")


def with_spec(url: str, spec: Any) -> str:
    """``http://h:p/v1`` with a mock fault spec (``"cut@5"``, a ``Fault`` or a list) -> ``http://h:p/s/cut@5/v1``."""
    if not spec:
        return url
    if not isinstance(spec, str):
        from .. import faults

        spec = faults.to_spec(*(spec if isinstance(spec, (list, tuple)) else [spec]))
    parts = urllib.parse.urlsplit(url)
    path = parts.path.rstrip("/")
    if not path.endswith("/v1"):
        raise ValueError(f"spec= needs the mock's OpenAI base URL (ending in /v1), got {url!r}")
    return urllib.parse.urlunsplit(parts._replace(path=f"{path[:-3]}/s/{spec}/v1"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_PARENT, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _locust(*args: str) -> list[str]:
    return [sys.executable, "-m", "locust", "-f", LOCUSTFILE, *args]


class _Progress:
    """A progress bar: ipywidgets in a notebook, one rewritten stderr line in a terminal, or nothing."""

    def __init__(self, enabled: bool, duration: float) -> None:
        self.duration = duration
        self.widget = self.label = None
        self.enabled = enabled
        self.text = enabled and sys.stderr.isatty()
        if enabled and not self.text:
            try:
                from IPython import get_ipython

                if get_ipython() is not None and hasattr(get_ipython(), "kernel"):
                    import ipywidgets
                    from IPython.display import display

                    self.widget = ipywidgets.FloatProgress(min=0, max=duration, description="load")
                    self.label = ipywidgets.Label("starting Locust ...")
                    display(ipywidgets.HBox([self.widget, self.label]))
            except ImportError:
                pass

    def update(self, line: dict[str, Any]) -> None:
        t = min(float(line.get("t", 0)), self.duration)
        outcomes = ", ".join(f"{k} {v}" for k, v in line.get("outcomes", {}).items()) or "-"
        text = (f"{t:4.0f}/{self.duration:g} s  {line.get('users', 0)} users  "
                f"{line.get('streams', 0)} streams  {outcomes}")
        if self.widget is not None:
            self.widget.value = t
            self.label.value = text
        elif self.text:
            sys.stderr.write("\r" + text[:150].ljust(100))
            sys.stderr.flush()

    def close(self) -> None:
        if self.widget is not None:
            self.widget.value = self.duration
            self.widget.bar_style = "success"
        elif self.text:
            sys.stderr.write("\n")


def run(url: str, *, users: int, duration: float, spawn_rate: float | None = None, workers: int = 0,
        spec: Any = None, progress: bool = True, timeout: float = 30.0, wait: float = 0.0,
        body: Any = None, model: str = "streamlab-load", external_workers: bool = False,
        master_port: int | None = None, master_bind_host: str = "127.0.0.1", locust_args: Sequence[str] = (),
        on_progress: Callable[[dict], None] | None = None) -> LoadResult:
    """Run a streaming load test on Locust (headless) and return what every stream did.

        with sl.MockLLM(tokens=32, itl=0.02) as mock:
            result = sl.load.run(mock.base_url, users=20, duration=5)             # one Locust process
            result = sl.load.run(mock.base_url, users=20, duration=5, workers=2)  # a master + 2 workers
            result = sl.load.run(mock.base_url, users=20, duration=5, spec="cut@5")
        print(result.summary()); result.plot()

    Args (keyword-only; times are wall-clock seconds: a load test runs in real time):
        users: concurrent users, each streaming one request after another (``wait`` s apart).
        duration: whole seconds of load (Locust's ``-t``); start-up and shut-down add ~2-4 s.
        spawn_rate: users started per second (default: all within one second).
        workers: 0 runs one Locust process; K runs a ``--master`` and K ``--worker`` processes.
        spec: a mock fault spec for every request (``url`` must be the mock's ``.../v1``).
        timeout: seconds without a byte before a stream counts as ``stalled / timed out``.
        body: JSON to POST to a non-``/v1`` URL (default: GET it). A ``/v1`` URL gets an
            OpenAI chat request with ``stream: true`` for ``model``.
        external_workers: start only the master and wait for ``workers`` workers started
            elsewhere (``streamlab load --worker --master-host ...``) on ``master_port``
            (``master_bind_host``: 127.0.0.1 unless workers come from other hosts).
        locust_args: more Locust options, passed as they are (``["--csv", "out/run"]``).
        progress: show a progress bar (ipywidgets in a notebook, a stderr line in a terminal).
    """
    url = with_spec(url, spec)
    _check(url, users, duration, spawn_rate, workers)
    if external_workers and workers < 1:
        raise ValueError("external_workers=True needs workers >= 1 (how many the master waits for)")
    spawn_rate = float(spawn_rate or users)
    duration = int(duration)
    options = ["--streamlab-timeout", str(timeout), "--streamlab-wait", str(wait), "--streamlab-model", model]
    if body is not None:
        options += ["--streamlab-body", body if isinstance(body, str) else json.dumps(body)]
    bar = _Progress(progress, duration)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="streamlab-load-") as tmp:
        out = os.path.join(tmp, "streams.json")
        head = ["--headless", "-u", str(users), "-r", f"{spawn_rate:g}", "-t", f"{duration}s", "--host", url,
                "--only-summary", "--exit-code-on-error", "0", "--streamlab-out", out, *options, *locust_args]
        procs: list[subprocess.Popen] = []
        logs: list[Any] = []
        from .._lifetime import popen

        def start(args: list[str], name: str, stdout: Any) -> subprocess.Popen:
            log = open(os.path.join(tmp, f"{name}.log"), "w+")
            logs.append(log)
            proc = popen(args, stdout=stdout if stdout is not None else log, stderr=log, stdin=subprocess.DEVNULL,
                         env=_env(), cwd=tmp, text=True)
            procs.append(proc)
            return proc

        try:
            if workers:
                port = master_port or _free_port()
                master = start(_locust(*head, "--master", "--master-bind-host", master_bind_host, "--master-bind-port",
                                       str(port), "--expect-workers", str(workers),
                                       "--expect-workers-max-wait", "60"), "master", subprocess.PIPE)
                if not external_workers:
                    for i in range(workers):
                        start(_locust("--worker", "--master-host", "127.0.0.1", "--master-port", str(port),
                                      *options), f"worker{i + 1}", None)
            else:
                master = start(_locust(*head), "locust", subprocess.PIPE)
            summary_lines: list[str] = []
            reader = threading.Thread(target=_follow, args=(master, bar, on_progress, summary_lines),
                                      name="streamlab-load-progress", daemon=True)
            reader.start()
            deadline = None if external_workers else time.monotonic() + duration + 120
            while master.poll() is None:
                failed = [i for i, p in enumerate(procs) if i and p.poll() not in (None, 0)]
                if failed:  # (a worker that quits when told to exits 0, maybe before its master)
                    raise LoadError(f"Locust worker {failed[0]} failed (exit code {procs[failed[0]].returncode}); "
                                    f"its log:\n{_tail(tmp, failed[0])}")
                if deadline is not None and time.monotonic() > deadline:
                    raise LoadError(f"Locust did not finish within {duration + 120} s")
                time.sleep(0.1)
            reader.join(timeout=5)
            for proc in procs[1:]:
                try:
                    proc.wait(timeout=10)   # workers quit when the master tells them to
                except subprocess.TimeoutExpired:
                    proc.kill()
        except BaseException:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
            raise
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
            bar.close()
            log_text = ""
            for log in logs:
                log.seek(0)
                log_text += log.read()
                log.close()
        if not os.path.exists(out):
            tail = "\n".join((log_text + "\n".join(summary_lines)).strip().splitlines()[-15:])
            raise LoadError(f"Locust wrote no result (exit code {master.returncode}); its last lines:\n{tail}")
        with open(out) as fh:
            data = json.load(fh)
    return LoadResult(url=url, users=users, duration_s=duration, spawn_rate=spawn_rate, workers=workers,
                      records=data["records"], worker_ids=data["workers"], locust=data["locust"],
                      elapsed_s=round(time.monotonic() - started, 2), log=log_text + "\n".join(summary_lines))


def _tail(tmp: str, index: int) -> str:
    try:
        with open(os.path.join(tmp, f"worker{index}.log")) as fh:
            return "\n".join(fh.read().strip().splitlines()[-15:])
    except OSError:
        return "(no log)"


def _follow(proc: subprocess.Popen, bar: _Progress, on_progress: Callable[[dict], None] | None,
            other: list[str]) -> None:
    for line in proc.stdout:
        if line.startswith(PROGRESS_PREFIX):
            try:
                state = json.loads(line[len(PROGRESS_PREFIX):])
            except ValueError:
                continue
            bar.update(state)
            if on_progress is not None:
                on_progress(state)
        else:
            other.append(line.rstrip("\n"))


def run_worker(*, master_host: str = "127.0.0.1", master_port: int = 5557, locust_args: Sequence[str] = ()) -> int:
    """Run one Locust ``--worker`` of the streaming user in the foreground (for ``streamlab load --worker``).

    The master sends the URL, the users and the streamlab options; returns Locust's exit code."""
    proc = subprocess.run(_locust("--worker", "--master-host", master_host, "--master-port", str(master_port),
                                  *locust_args), env=_env(), stdin=subprocess.DEVNULL)
    return proc.returncode
