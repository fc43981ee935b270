"""Streaming load tests on Locust: many users, each streaming, every stream named like ``sl.record`` names it.

    import streamlab as sl

    with sl.MockLLM(tokens=32, itl=0.02) as mock:
        result = sl.load.run(mock.base_url, users=50, duration=10)              # one Locust process
        result = sl.load.run(mock.base_url, users=50, duration=10, workers=2)   # master + 2 workers
        result = sl.load.run(mock.base_url, users=50, duration=10, spec="cut@5")
    result.outcomes        # {"complete": 1180, ...}
    print(result.summary()); result.plot()

From the shell: ``streamlab load URL --users N --duration S [--workers K] [--json]``.

Locust runs in processes of its own, never in the calling one: ``import locust`` monkey-patches
the standard library with gevent, which would break asyncio code (a Jupyter kernel, pytest,
the mock's own server thread). Importing ``streamlab.load`` does not import locust; only
``_locustfile.py``, run by Locust, does. ``LOCUSTFILE`` is its path, for ``locust -f`` by hand
(web UI, Locust's stats, ``--master``/``--worker`` across machines).

Durations and latencies here are wall clock: a load test runs in real time, and
``sl.time_scale`` does not shorten it. Layout: ``_stream.py`` reads one stream (no locust),
``_locustfile.py`` is the Locust user, ``_runner.py`` starts Locust, ``_result.py`` summarises.
"""

from ._result import LoadResult, percentiles
from ._runner import LOCUSTFILE, LoadError, run, run_worker, with_spec
from ._stream import OUTCOMES, Client, Target

__all__ = ["run", "run_worker", "LoadResult", "LoadError", "LOCUSTFILE", "Target", "Client", "OUTCOMES",
           "percentiles", "with_spec"]
