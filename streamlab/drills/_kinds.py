"""The drill kinds (one hidden cause each) and the fixes a trainee can propose.

A kind is a ``Setup`` (what the edge does, how the app is written, how the model
behaves, how the client reads) with the layer and causes a correct diagnosis
names. A fix is a function ``Setup -> Setup``: the drill applies the one the
trainee names and re-runs the same incident, so a fix counts only if the
re-run is healthy, whichever kind it was proposed for.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable

from .. import hops
from ..faults import ContextWindow, SilentEnd, Stall
from ._app import AppConfig

LAYERS = ("client", "edge", "app", "model")
"""Where a cause can live: the user's client, the hop in front (``edge``: nginx, a load balancer, a
gateway), the app (its code and its server) and the model endpoint."""


@dataclass(frozen=True, kw_only=True)
class Setup:
    """One incident's stack. Durations are scenario seconds."""

    edge: tuple[Any, ...] = ()          # hop faults of the edge proxy
    edge_http: str = "1.1"              # the HTTP version the edge speaks to the app
    app_h11: bool = False               # the app server speaks h11 (close-delimited bodies to HTTP/1.0)
    app: AppConfig = field(default_factory=AppConfig)
    tokens: int = 24                    # the model's answer (the mock echoes the question)
    itl: float = 1.0
    ttft: float = 0.5
    model: tuple[Any, ...] = ()         # mock faults
    client_read: float | None = 600.0   # the user's client read timeout
    silent_ok: bool = False             # a re-run where the client is *told* (an error) counts as fixed
    server: str | None = None           # None: the app in-process under uvicorn; else a real gunicorn
                                        # subprocess with this --worker-class ("sync": the WSGI twin,
                                        # ``_wsgi.app``; "uvicorn_worker.UvicornWorker": ``_wsgi.asgi``)
    workers: int = 2                    # gunicorn's --workers (with ``server``)
    worker_timeout: float = 30.0        # gunicorn's --timeout (with ``server``)
    scale: float | None = None          # wall-clock seconds per scenario second (None: ``SCALE``)


@dataclass(frozen=True, kw_only=True)
class Kind:
    name: str
    layers: tuple[str, ...]   # accepted layers, the first is the one the debrief names
    causes: tuple[str, ...]   # accepted cause names, the first is the one the debrief names
    fixes: tuple[str, ...]    # fixes that heal it (the re-run decides; these are the debrief's)
    setup: Setup
    story: str                # what the debrief tells (never shown before)


def _replace_edge(kind: type, **values: Any) -> Callable[[Setup], Setup]:
    def fix(s: Setup) -> Setup:
        return replace(s, edge=tuple(replace(f, **values) if isinstance(f, kind) else f for f in s.edge))
    return fix


def _drop_edge(kind: type) -> Callable[[Setup], Setup]:
    return lambda s: replace(s, edge=tuple(f for f in s.edge if not isinstance(f, kind)))


def _app(**values: Any) -> Callable[[Setup], Setup]:
    return lambda s: replace(s, app=replace(s.app, **values))


def _async_worker(s: Setup) -> Setup:
    return replace(s, server="uvicorn_worker.UvicornWorker") if s.server else s


FIXES: dict[str, tuple[str, Callable[[Setup], Setup]]] = {
    "raise_read_timeout": ("the edge's proxy_read_timeout to 300 s", _replace_edge(hops.ReadTimeout, seconds=300.0)),
    "raise_idle_timeout": ("the edge's idle timeout to 300 s", _replace_edge(hops.IdleTimeout, seconds=300.0)),
    "raise_deadline": ("the edge's request deadline to 300 s", _replace_edge(hops.Deadline, seconds=300.0)),
    "heartbeat": ("the app sends an SSE comment after 15 s without a model chunk", _app(heartbeat=15.0)),
    "gzip_off": ("the edge stops compressing text/event-stream", _drop_edge(hops.Gzip)),
    "x_accel_buffering_no": ("the app sends X-Accel-Buffering: no", _app(x_accel_no=True)),
    "proxy_buffering_off": ("the edge's proxy_buffering off", _drop_edge(hops.Buffering)),
    "upstream_http_1_1": ("the edge speaks HTTP/1.1 to the app (chunked bodies)",
                          lambda s: replace(s, edge_http="1.1")),
    "async_client": ("the app awaits an async model client", _app(blocking=False)),
    "per_request_state": ("the app keeps each request's messages in the request", _app(shared=False)),
    "raise_client_timeout": ("the user's client read timeout to 300 s", lambda s: replace(s, client_read=300.0)),
    "check_finish_reason": ("the app checks finish_reason and tells the client when it is missing",
                            _app(check_finish=True)),
    "raise_max_tokens": ("the app stops capping max_tokens", _app(max_tokens=None)),
    "trim_history": ("the app sends only the recent history", _app(history_words=0)),
    "async_worker": ("gunicorn serves the app's ASGI version with async workers (-k uvicorn_worker.UvicornWorker)",
                     _async_worker),  # an app not under gunicorn runs an async server already: no change
    "raise_worker_timeout": ("gunicorn's --timeout to 300 s", lambda s: replace(s, worker_timeout=300.0)),
}
"""Fix name -> (what it changes, the change)."""

WORKER_SCALE = 0.1
"""The time scale of the gunicorn kind: ``--timeout 30`` is 3 s of wall clock, three times the second gunicorn's
arbiter sleeps between checks (a kill comes 30 to 40 scenario seconds after the request reached the worker)."""

_STALL = (Stall(at=8, seconds=75.0),)  # a tool call of 75 s in the middle of the answer

KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind(name="upstream_read_timeout", layers=("edge",), causes=("idle_timeout", "read_timeout"),
         fixes=("heartbeat", "raise_read_timeout"),
         setup=Setup(edge=(hops.ReadTimeout(seconds=60.0),), model=_STALL),
         story="nginx proxy_read_timeout 60 s: the model was silent for 75 s (a tool call) after 8 words; nginx "
               "closed the stream 60 s into the silence"),
    Kind(name="lb_idle_timeout", layers=("edge",), causes=("idle_timeout",),
         fixes=("heartbeat", "raise_idle_timeout"),
         setup=Setup(edge=(hops.IdleTimeout(seconds=60.0),), model=_STALL),
         story="a load balancer's idle timeout (AWS ALB 60 s): no byte for 60 s and it closed the connection"),
    Kind(name="gateway_deadline", layers=("edge",), causes=("deadline",), fixes=("raise_deadline",),
         setup=Setup(edge=(hops.Deadline(seconds=29.0),), tokens=40),
         story="an API gateway's 29 s integration timeout: the answer still flowing at 29 s was cut, however "
               "fast the words came"),
    Kind(name="gzip_sse", layers=("edge",), causes=("gzip", "buffering"),
         fixes=("gzip_off", "x_accel_buffering_no", "proxy_buffering_off"),
         setup=Setup(edge=(hops.Buffering(), hops.Gzip())),
         story="the edge gzips text/event-stream into full buffers: the whole answer left the edge at the end"),
    Kind(name="buffering", layers=("edge",), causes=("buffering",),
         fixes=("x_accel_buffering_no", "proxy_buffering_off", "upstream_http_1_1"),
         setup=Setup(edge=(hops.Buffering(),), edge_http="1.0", app_h11=True),
         story="nginx proxy_buffering with proxy_http_version 1.0: the app server answered HTTP/1.0 with a "
               "close-delimited body (no chunked framing), so nginx held it in full 4k buffers until the end"),
    Kind(name="blocked_loop", layers=("app",), causes=("blocked_loop",), fixes=("async_client",),
         setup=Setup(app=AppConfig(blocking=True)),
         story="the app read the model with a sync client inside async def: one user's stream stopped the event "
               "loop, the other user waited for it to finish"),
    Kind(name="shared_state", layers=("app",), causes=("shared_state",), fixes=("per_request_state",),
         setup=Setup(app=AppConfig(shared=True)),
         story="the app kept the current request's messages in one dict for all requests: the second user's "
               "question overwrote the first's during the user lookup"),
    Kind(name="client_abort", layers=("client",), causes=("client_abort", "client_timeout"),
         fixes=("raise_client_timeout", "heartbeat"),
         setup=Setup(client_read=30.0, model=(Stall(at=3, seconds=60.0),)),
         story="the user's client had a 30 s read timeout and gave up during a 60 s pause of the model; every "
               "server would have finished the answer"),
    Kind(name="silent_truncation", layers=("model",), causes=("silent_truncation",), fixes=("check_finish_reason",),
         setup=Setup(model=(SilentEnd(at=10),), silent_ok=True),
         story="the model ended its stream cleanly after 10 words, without finish_reason or [DONE]; nobody "
               "checked, so the user saw a short answer and no error"),
    Kind(name="length_cut", layers=("app", "model"), causes=("length_truncation",), fixes=("raise_max_tokens",),
         setup=Setup(app=AppConfig(max_tokens=12)),
         story="the app capped max_tokens at 12: the model stopped with finish_reason length"),
    Kind(name="sync_worker_timeout", layers=("app",), causes=("worker_timeout",),
         fixes=("async_worker", "raise_worker_timeout"),
         setup=Setup(server="sync", workers=2, worker_timeout=30.0, tokens=48, scale=WORKER_SCALE),
         story="gunicorn --timeout 30 with sync workers: a sync worker tells the arbiter it is alive only between "
               "requests, so every answer still streaming 30 to 40 s after its request reached the worker was "
               "killed with the worker (WORKER TIMEOUT, SIGABRT, SystemExit in the relay)"),
    Kind(name="context_window", layers=("app", "model"), causes=("context_window",), fixes=("trim_history",),
         setup=Setup(app=AppConfig(history_words=5000), model=(ContextWindow(tokens=4096),)),
         story="the app prepended 5000 words of history: the model's 4096-token context window rejected every "
               "request with 400 context_length_exceeded"),
)}
"""Every drill kind by name."""

CAUSES = tuple(sorted({c for k in KINDS.values() for c in k.causes}))
"""Every cause name an answer may give."""
