"""The Locust side of ``streamlab load``: a streaming user, and how its records reach the master.

The only streamlab module that imports locust, and so the only one run under gevent's
monkey-patching (``import locust`` calls ``gevent.monkey.patch_all()``). It runs in Locust's
own processes, started by ``streamlab.load.run`` / ``streamlab load``, or by hand::

    locust -f "$(python -c 'import streamlab.load as l; print(l.LOCUSTFILE)')" --host http://127.0.0.1:8000/v1

(with Locust's web UI, its stats and its ``--master`` / ``--worker`` flags, unchanged).

``StreamingUser`` makes one streaming request per task (``streamlab.load._stream.Client``)
and reports it through Locust's ``events.request`` (name: the route, ``response_time``: the
whole stream in ms, ``response_length``: its bytes, ``exception``: a ``StreamOutcome`` naming
the outcome when it is not ``complete``), so Locust's stats count streams and their
failures. The full record (TTFT, every ITL, outcome) goes to the process that writes the
result (``--streamlab-out``):

    standalone      records stay in this process; written at ``quitting``
    worker          a greenlet sends new records to the master every 0.5 s (custom message
                    ``streamlab_streams``); when the master stops the test it asks each
                    worker to flush (``streamlab_flush``), and a worker answers with its last
                    records (``final``). From then on it neither records nor reports a stream,
                    so Locust's counts and ours agree.
    master          collects, prints progress, waits (at most 10 s) in ``test_stopping`` for
                    every worker's final batch, writes at ``quitting``.

Why the handshake: a headless master quits by sending ``quit`` and sleeping 0.5 s for the
workers' last stats report; on a busy machine that can miss a worker. Streams still in flight
when the test stops are cut off by Locust itself (their greenlets are killed) and are not
counted: they say nothing about the server.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import gevent
from locust import User, events, task
from locust.runners import LocalRunner, MasterRunner, WorkerRunner


def _stream_module():
    """``streamlab/load/_stream.py`` loaded from its file, without ``import streamlab``: the package
    would pull the mock, the proxies, starlette and asyncio code into every gevent-patched Locust
    process (and ~0.4 s of CPU into each start-up); ``_stream`` needs only the standard library."""
    path = Path(__file__).with_name("_stream.py")
    spec = importlib.util.spec_from_file_location("_streamlab_load_stream", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # (dataclasses look their module up while the class is built)
    spec.loader.exec_module(module)
    return module


_stream = _stream_module()
COMPLETE, ERROR_BEFORE_STREAM, Client, Target = (_stream.COMPLETE, _stream.ERROR_BEFORE_STREAM, _stream.Client,
                                                 _stream.Target)

PROGRESS_PREFIX = "streamlab-progress "
_FLUSH_WAIT_S = 10.0


class StreamOutcome(Exception):
    """A stream that did not end ``complete``: its outcome, as Locust's failure table shows it."""


class _Collector:
    def __init__(self) -> None:
        self.records: list[dict] = []     # standalone / master: everything; worker: not yet sent
        self.total = 0
        self.closed = False
        self.flushed: set[str] = set()    # master: workers whose final batch arrived
        self.workers: set[str] = set()
        self.t_start: float | None = None

    def add(self, record: dict) -> None:
        self.records.append(record)
        self.total += 1


_collector = _Collector()


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    group = parser  # (argument groups do not take Locust's include_in_web_ui)
    group.add_argument("--streamlab-out", default="", include_in_web_ui=False,
                       help="write every stream's record (JSON) to this file when Locust quits")
    group.add_argument("--streamlab-timeout", type=float, default=30.0,
                       help="seconds without a byte before a stream counts as stalled (default 30)")
    group.add_argument("--streamlab-body", default="", help="JSON body to POST instead of a GET (non-/v1 URLs)")
    group.add_argument("--streamlab-model", default="streamlab-load", help="model name sent to a /v1 URL")
    group.add_argument("--streamlab-wait", type=float, default=0.0, help="seconds a user waits between streams")
    group.add_argument("--streamlab-progress", type=float, default=0.5, include_in_web_ui=False,
                       help="seconds between progress lines on stdout (0: none)")


def _emit(environment, record: dict, route: str, method: str) -> None:
    exc = None
    if record["outcome"] != COMPLETE:
        exc = StreamOutcome(record["outcome"] + (f" ({record['error'].split(':')[0]})" if record["error"] else ""))
    environment.events.request.fire(request_type=method, name=route, response_time=record["e2e_ms"],
                                    response_length=record["bytes"], response=None, context={}, exception=exc)


class StreamingUser(User):
    """One user: stream, record, report, repeat (``--streamlab-wait`` seconds apart)."""

    def wait_time(self) -> float:
        return self._wait

    def on_start(self) -> None:
        opts = self.environment.parsed_options
        body = getattr(opts, "streamlab_body", "") or None
        self._target = Target.from_url(self.host, body=json.loads(body) if body else None,
                                       model=getattr(opts, "streamlab_model", "streamlab-load"))
        self._client = Client(self._target, timeout=getattr(opts, "streamlab_timeout", 30.0))
        self._wait = float(getattr(opts, "streamlab_wait", 0.0) or 0.0)
        runner = self.environment.runner
        self._worker = runner.client_id if isinstance(runner, WorkerRunner) else "local"

    def on_stop(self) -> None:
        self._client.close()

    @task
    def stream(self) -> None:
        record = self._client.stream()
        if _collector.closed:
            return
        record["worker"] = self._worker
        _collector.add(record)
        _emit(self.environment, record, self._target.route, self._target.method)
        if record["outcome"] == ERROR_BEFORE_STREAM:
            gevent.sleep(0.1)  # nobody listening: do not spin a core on refused connections


# -- getting the records to the process that writes them ---------------------------------------

def _progress_line(environment) -> None:
    counts: dict[str, int] = {}
    for r in _collector.records:
        counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
    elapsed = time.time() - (_collector.t_start or time.time())
    line = {"t": round(elapsed, 2), "users": environment.runner.user_count, "streams": len(_collector.records),
            "outcomes": counts}
    sys.stdout.write(PROGRESS_PREFIX + json.dumps(line) + "\n")
    sys.stdout.flush()


def _progress_loop(environment, every: float) -> None:
    while True:
        gevent.sleep(every)
        if _collector.t_start is not None:
            _progress_line(environment)


def _send_loop(environment) -> None:
    while True:
        gevent.sleep(0.5)
        _send_batch(environment, final=False)


def _send_batch(environment, *, final: bool) -> None:
    batch, _collector.records = _collector.records, []
    if batch or final:
        environment.runner.send_message("streamlab_streams", {"records": batch, "final": final})


def _on_streams(environment, msg, **_kw) -> None:   # master
    _collector.records.extend(msg.data["records"])
    _collector.workers.add(msg.node_id)
    if msg.data.get("final"):
        _collector.flushed.add(msg.node_id)


def _on_flush(environment, msg, **_kw) -> None:     # worker
    _collector.closed = True
    _send_batch(environment, final=True)


@events.init.add_listener
def _on_init(environment, **_kw) -> None:
    runner = environment.runner
    opts = environment.parsed_options
    # gevent's loop caches "now"; nothing has run it since start-up (imports take ~0.5 s), so
    # Locust's -t timer, scheduled from that stale time, would fire that much early.
    gevent.get_hub().loop.update_now()
    every = getattr(opts, "streamlab_progress", 0.5) if opts is not None else 0.5
    if isinstance(runner, WorkerRunner):
        runner.register_message("streamlab_flush", _on_flush)
        gevent.spawn(_send_loop, environment)
    elif isinstance(runner, (MasterRunner, LocalRunner)):
        if isinstance(runner, MasterRunner):
            runner.register_message("streamlab_streams", _on_streams)
        if every and every > 0:
            gevent.spawn(_progress_loop, environment, every)


@events.test_start.add_listener
def _on_test_start(environment, **_kw) -> None:
    _collector.t_start = time.time()
    _collector.closed = False


@events.test_stopping.add_listener
def _on_test_stopping(environment, **_kw) -> None:
    runner = environment.runner
    if isinstance(runner, LocalRunner):
        _collector.closed = True
    if not isinstance(runner, MasterRunner):
        return
    expected = {c.id for c in runner.clients.all}
    _collector.flushed.clear()
    runner.send_message("streamlab_flush")
    deadline = time.monotonic() + _FLUSH_WAIT_S
    while not expected <= _collector.flushed and time.monotonic() < deadline:
        gevent.sleep(0.05)
    missing = expected - _collector.flushed
    if missing:
        sys.stderr.write(f"streamlab: no final records from {len(missing)} worker(s) within {_FLUSH_WAIT_S:g} s\n")


@events.quitting.add_listener
def _on_quitting(environment, **_kw) -> None:
    runner = environment.runner
    opts = environment.parsed_options
    out = getattr(opts, "streamlab_out", "") if opts is not None else ""
    if isinstance(runner, WorkerRunner) or not out:
        return
    total = runner.stats.total
    workers = sorted(_collector.workers) if isinstance(runner, MasterRunner) else ["local"]
    payload = {"records": _collector.records, "workers": workers, "t_start": _collector.t_start,
               "locust": {"requests": total.num_requests, "failures": total.num_failures,
                          "workers_connected": len(runner.clients.all) if isinstance(runner, MasterRunner) else 0}}
    tmp = out + ".part"
    with open(tmp, "w") as fh:
        json.dump(payload, fh)
    os.replace(tmp, out)
