"""Gunicorn server hooks that ``streamlab.Gunicorn`` loads with ``-c python:streamlab.apps._gunicorn_hooks``.

They only log, so a notebook can see a worker's life next to gunicorn's own lines::

    streamlab.gunicorn worker ready (pid:4242)          after the worker imported the app
    streamlab.gunicorn worker aborted (pid:4242)        SIGABRT received (sync workers; uvicorn
                                                        workers reset SIGABRT and just die)
    streamlab.gunicorn worker exited (pid:4242)         seen by the arbiter

``streamlab.Gunicorn`` waits for the "ready" line of every worker before it
returns from ``start()``.
"""

import sys


def _say(text: str) -> None:
    # One write per line: workers share the stderr pipe, and print() writes the text and the
    # newline separately, so two workers' lines could run together and hide a "ready" line.
    sys.stderr.write(f"streamlab.gunicorn {text}\n")
    sys.stderr.flush()


def post_worker_init(worker) -> None:
    _say(f"worker ready (pid:{worker.pid})")


def worker_abort(worker) -> None:
    _say(f"worker aborted (pid:{worker.pid})")


def child_exit(server, worker) -> None:
    _say(f"worker exited (pid:{worker.pid})")
