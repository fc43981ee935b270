"""Gunicorn server hooks that ``streamlab.Gunicorn`` loads with ``-c python:streamlab.apps._gunicorn_hooks``.

They only log, so a notebook can see a worker's life next to gunicorn's own lines::

    streamlab.gunicorn worker ready (pid:4242)          after the worker imported the app
    streamlab.gunicorn worker aborted (pid:4242)        SIGABRT received (sync workers; uvicorn
                                                        workers reset SIGABRT and just die)
    streamlab.gunicorn worker exited (pid:4242)         seen by the arbiter

``streamlab.Gunicorn`` waits for the "ready" line of every worker before it
returns from ``start()``.

``post_fork`` ties each worker's life to the arbiter (``PR_SET_PDEATHSIG`` SIGKILL,
``streamlab/_lifetime.py``): the tie the arbiter has to the notebook is cleared in
its forked children, and an orphaned worker would go on serving under init. The
arbiter forks from its main thread, so the signal comes when the arbiter dies, not
before.
"""

import sys

from streamlab._lifetime import die_with_parent


def _say(text: str) -> None:
    # One write per line: workers share the stderr pipe, and print() writes the text and the
    # newline separately, so two workers' lines could run together and hide a "ready" line.
    sys.stderr.write(f"streamlab.gunicorn {text}\n")
    sys.stderr.flush()


def post_fork(server, worker) -> None:
    die_with_parent(parent_pid=worker.ppid)  # in the worker, right after the fork


def post_worker_init(worker) -> None:
    _say(f"worker ready (pid:{worker.pid})")


def worker_abort(worker) -> None:
    _say(f"worker aborted (pid:{worker.pid})")


def child_exit(server, worker) -> None:
    _say(f"worker exited (pid:{worker.pid})")
