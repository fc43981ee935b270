"""The mock model: an OpenAI-compatible Chat Completions server in plain ASGI.

    POST /v1/chat/completions      streaming (SSE) and non-streaming
    GET  /v1/models
    GET  /healthz
    .../s/<spec>/v1/...             the same routes with a behaviour spec (see ``streamlab.faults``)

Each request runs this pipeline; every fault in the chain sees every event::

    request -> [faults] -> headers -> start -> token 0 .. token n-1 -> finish -> usage? -> done
                 |                                 |
          429/500/400/slow headers     cut / reset / silent end / stall / malformed / framing / error

Timing follows the vocabulary of ``vllm bench serve``: TTFT (time to first
token), ITL (inter-token latency), TPOT (time per output token) and E2EL
(end-to-end latency). Token ``i`` is scheduled at ``TTFT + i * ITL`` (+ seeded,
bounded jitter) after the request arrived; a stall shifts the rest of the
schedule. Lateness (actual send time minus schedule) is kept per request for the
benchmark.

Bad input never reaches the pipeline: the body passes one schema (``streamlab._validate``), a spec
the grammar and its limits (``streamlab._spec``, tabulated in ``streamlab.faults``); both answer an
OpenAI-style JSON 4xx. Python-side settings (``MockLLM(...)``, ``inject``, ``script``) are checked
when they are given and raise ``faults.SpecError``.

The module is split along its seams; every name stays importable from here::

    _mock.py           MockApp (routing, behaviour resolution, inject/script), MockLLM (the server)
    _mock_stream.py    plan the tokens and shape the stream through the fault chain
    _mock_exchange.py  Exchange: one request on the wire, the actions a fault may take
    _mock_journal.py   Journal, JournalEntry (bounded)
    _validate.py       request body schema, RequestError, OpenAI-style error bodies
    _events.py         Event, Fault base, FaultContext (below faults.py: no import cycle)
    _spec.py           every limit, the spec grammar's value rules, SpecError

The bytes are shaped in ``send`` calls, on purpose (STYLE.md, item 9): a
framework or middleware in between could buffer the stream or hide a
disconnect. Cut and reset reach for uvicorn's transport so the client sees a
real FIN or RST; under any other ASGI server they fall back to raising, which
makes the server drop the connection.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import threading
import time
from typing import Any, Iterable, Iterator

from . import _spec
from . import faults as _faults
from . import _mock_responses as _responses
from ._events import Event
from ._mock_exchange import Ended as _Ended
from ._mock_exchange import Exchange
from ._mock_exchange import Truncated as _Truncated  # noqa: F401 - importable from here, as before
from ._mock_journal import Journal, JournalEntry
from ._mock_stream import example_arguments as _example_arguments  # noqa: F401
from ._mock_stream import plan as _plan
from ._mock_stream import respond as _respond
from ._mock_stream import run_chain as _run_chain
from ._servers import ThreadedASGIServer
from ._spec import MAX_BODY, SpecError
from ._validate import RequestError, parse_body
from ._validate import content_text as _content_text  # noqa: F401
from ._validate import error_body as _error_body

__all__ = ["MockLLM", "MockApp", "Journal", "JournalEntry", "Event", "Exchange", "RequestError"]

DEFAULT_MODEL = "streamlab-mock"
HEADER = "x-streamlab"
MAX_FIRST_SPECS = 10_000  # distinct specs with first=N whose request counts are kept
_log = logging.getLogger("streamlab.mock")


def _check_step(step: Any, where: str) -> None:
    """A script step: None, a Fault, a spec string, or a list/tuple of those (``SpecError`` if not)."""
    for item in (step if isinstance(step, (list, tuple)) else [step]):
        if item is None or isinstance(item, _faults.Fault):
            continue
        if isinstance(item, str):
            try:
                _faults.parse(item)
            except SpecError as exc:
                raise SpecError(f"{where}: {exc}") from None
            continue
        raise SpecError(f"{where} must be None, a Fault or a spec string, not {_spec.echo(item)}")


class MockApp:
    """The ASGI application behind ``MockLLM`` (also served by ``streamlab mock``).

    Keyword-only defaults apply to every request unless a spec, a script step
    or an injected fault says otherwise. Durations are scenario seconds.
    """

    def __init__(self, *, tokens: int = 32, ttft: float = 0.0, itl: float = 0.0, jitter: float = 0.0,
                 seed: int = 0, echo: bool = False, model: str = DEFAULT_MODEL,
                 faults: Iterable[_faults.Fault] = (), tool_arguments: dict[str, dict] | None = None,
                 max_body: int = MAX_BODY, journal_size: int = 2000, record_events: bool = True) -> None:
        self.defaults: dict[str, Any] = {"tokens": tokens, "ttft": ttft, "itl": itl, "jitter": jitter,
                                         "seed": seed, "echo": echo, "tools": "auto"}
        _faults.to_spec(**self.defaults)  # SpecError now, not in a request: e.g. tokens=10**12, ttft=nan
        if not isinstance(model, str) or not model:
            raise SpecError(f"model must be a non-empty string, not {_spec.echo(model)}")
        for name, value, low in (("max_body", max_body, 1), ("journal_size", journal_size, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise SpecError(f"{name} must be a positive integer, not {_spec.echo(value)}")
        faults = tuple(faults)
        self._check_faults(faults, "faults")
        self.model = model
        self.tool_arguments = dict(tool_arguments or {})
        self.max_body = max_body
        self.journal = Journal(journal_size)
        self.record_events = record_events  # per-chunk "out" events in the journal (off for benchmarks)
        self.lateness: collections.deque[float] = collections.deque(maxlen=200_000)
        self._injected: tuple[_faults.Fault, ...] = faults
        self._script: collections.deque[Any] = collections.deque()
        self._script_then: Any = None
        self._scripted = False
        self._lock = threading.Lock()
        self._first_counts: collections.Counter[str] = collections.Counter()
        self.responses = _responses.Runs()  # the Responses API's runs (streamlab/_mock_responses.py)

    # -- configuration from Python -------------------------------------------
    @staticmethod
    def _check_faults(faults: tuple, where: str) -> None:
        for fault in faults:
            if not isinstance(fault, _faults.Fault):
                raise SpecError(f"{where}: expected Fault objects (e.g. faults.Cut(at=5)), not {_spec.echo(fault)}")

    def inject(self, *faults: _faults.Fault) -> contextlib.AbstractContextManager[None]:
        """Apply ``faults`` to every request inside the ``with`` block (checked now: ``SpecError``)."""
        self._check_faults(faults, "inject")
        return self._inject(faults)

    @contextlib.contextmanager
    def _inject(self, faults: tuple[_faults.Fault, ...]) -> Iterator[None]:
        with self._lock:
            before = self._injected
            self._injected = before + tuple(faults)
        try:
            yield
        finally:
            with self._lock:
                self._injected = before

    def script(self, *steps: Any, then: Any = None) -> contextlib.AbstractContextManager[None]:
        """Give request 1 the behaviour ``steps[0]``, request 2 ``steps[1]``, ... then ``then``.

        A step is None (clean), a fault, a spec string, or a list of those; each is checked now
        (``SpecError``), not when its request arrives.

            with mock.script(Cut(at=5), None):   # first request cut, the retry succeeds
                ...
        """
        for i, step in enumerate(steps):
            _check_step(step, f"script step {i + 1}")
        _check_step(then, "script then=")
        return self._run_script(steps, then)

    @contextlib.contextmanager
    def _run_script(self, steps: tuple, then: Any) -> Iterator[None]:
        with self._lock:
            self._script = collections.deque(steps)
            self._script_then = then
            self._scripted = True
        try:
            yield
        finally:
            with self._lock:
                self._script.clear()
                self._script_then = None
                self._scripted = False

    def _next_step(self) -> Any:
        with self._lock:
            if not self._scripted:
                return None
            return self._script.popleft() if self._script else self._script_then

    # -- ASGI -----------------------------------------------------------------
    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        try:
            await self._route(scope, receive, send)
        except Exception as exc:  # a bug of the mock: one JSON 500 (if still possible) and one log record
            _log.error("streamlab mock: internal error on %s %s: %s: %s", scope.get("method"),
                       _spec.echo(scope.get("path"), 80), type(exc).__name__, exc, exc_info=True)
            with contextlib.suppress(Exception):
                await self._json(send, 500, None, error=RequestError(
                    500, f"streamlab mock internal error: {type(exc).__name__}", type="server_error",
                    code="mock_internal_error"))

    async def _route(self, scope: dict, receive: Any, send: Any) -> None:
        method, path = scope["method"], scope["path"]
        spec = ""
        route = path
        if path.startswith("/s/"):
            spec, slash, rest = path[3:].partition("/")
            route = "/" + rest if slash else "/"
        for name, value in scope.get("headers", ()):
            if name == HEADER.encode():
                spec = ",".join(filter(None, (value.decode("latin-1"), spec)))
        try:
            if route in ("/v1/chat/completions", "/chat/completions"):
                if method != "POST":
                    raise RequestError(405, f"Method {_spec.echo(method, 20)} not allowed on {route}; use POST.")
                await self._chat(scope, receive, send, spec)
            elif _responses.handles(route):  # POST /v1/responses, GET .../{id}?stream=true&starting_after=N, cancel
                await _responses.route(self, scope, receive, send, route, spec)
            elif route in ("/v1/models", "/models"):
                if method != "GET":
                    raise RequestError(405, f"Method {_spec.echo(method, 20)} not allowed on {route}; use GET.")
                await self._json(send, 200, {"object": "list", "data": [
                    {"id": self.model, "object": "model", "created": 0, "owned_by": "streamlab"}]})
            elif route in ("/healthz", "/health"):
                await self._json(send, 200, {"status": "ok"})
            elif route == "/streamlab/stats":
                await self._json(send, 200, self.stats())
            else:
                raise RequestError(404, f"Unknown route {_spec.echo(method, 20)} {_spec.echo(route)}. The mock serves POST "
                                   "/v1/chat/completions, /v1/responses and GET /v1/models "
                                   "(optionally under /s/<spec>/).")
        except RequestError as err:
            await self._json(send, err.status, None, error=err)

    def stats(self) -> dict[str, Any]:
        """Token send lateness (actual minus scheduled, seconds) over the recent requests."""
        values = sorted(self.lateness)
        pick = lambda q: values[min(len(values) - 1, round(q * (len(values) - 1)))] if values else None  # noqa: E731
        return {"tokens": len(values), "lateness_p50": pick(0.5), "lateness_p99": pick(0.99),
                "lateness_max": values[-1] if values else None, "requests": len(self.journal)}

    async def _json(self, send: Any, status: int, payload: Any, *, error: RequestError | None = None) -> None:
        body = (_error_body(error.message, error.type, error.param, error.code) if error
                else json.dumps(payload).encode())
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            + ([(b"connection", b"close")] if status == 413 else [])})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    async def _read_body(self, receive: Any) -> bytes:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Ended
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise RequestError(413, f"Request body larger than {self.max_body} bytes.",
                                   code="request_too_large")
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)

    def _resolve(self, spec: str) -> tuple[list[_faults.Fault], dict[str, Any], str]:
        """Merge defaults < injected < script step < header/path spec."""
        faults: list[_faults.Fault] = list(self._injected)
        options = dict(self.defaults)
        specs: list[str] = []
        step = self._next_step()
        for item in (step if isinstance(step, (list, tuple)) else [step]):
            if item is None:
                continue
            if isinstance(item, _faults.Fault):
                faults.append(item)
                specs.append(item.spec())
            else:  # a spec string, checked when the script was given
                f, o = _faults.parse(item)
                faults += f
                options.update(o)
                specs.append(item)
        if spec:
            try:
                f, o = _faults.parse(spec)
            except SpecError as exc:
                raise RequestError(400, f"Bad streamlab behaviour spec: {exc}", param="x-streamlab",
                                   code="invalid_streamlab_spec") from None
            if "first" in o:
                with self._lock:
                    if spec not in self._first_counts and len(self._first_counts) >= MAX_FIRST_SPECS:
                        del self._first_counts[next(iter(self._first_counts))]
                    self._first_counts[spec] += 1
                    if self._first_counts[spec] > int(o["first"]):
                        f = []
            faults += f
            options.update(o)
            specs.append(spec)
        return faults, options, ",".join([f.spec() for f in self._injected] + specs)

    async def open_entry(self, scope: dict, receive: Any, spec: str,
                         parse: Any) -> "tuple[JournalEntry, Any, list, dict] | None":
        """Journal a new request, read and check its body with ``parse(raw)``, resolve its behaviour.

        Returns ``(entry, parsed, faults, options)``, or None when the client left while its body
        was read. A ``RequestError`` (a bad body or spec) marks the entry rejected and propagates.
        ``parse`` returns the body, or ``(body, more)`` for an API that derives more from it."""
        entry = self.journal.new(scope["method"], scope["path"])
        entry.log.add("open", note=f"{scope['method']} {scope['path']}", conn=entry.id)
        try:
            raw = await self._read_body(receive)
            parsed = parse(raw)
            entry.body = parsed[0] if isinstance(parsed, tuple) else parsed
            self.journal.charge(entry, len(raw))
            faults, options, entry.spec = self._resolve(spec)
        except RequestError as err:
            entry.status, entry.ended = err.status, "rejected"
            raise
        except _Ended:
            entry.ended = "client disconnected"
            return None
        entry.faults = [f.spec() for f in faults]
        return entry, parsed, faults, options

    async def _chat(self, scope: dict, receive: Any, send: Any, spec: str) -> None:
        opened = await self.open_entry(scope, receive, spec, parse_body)
        if opened is None:
            return
        entry, body, faults, options = opened
        entry.options = options
        stream = bool(body.get("stream"))
        entry.stream = stream
        ex = Exchange(self, send, entry, body, stream)
        ex._receive = receive
        if ex._cycle is None or not hasattr(ex._cycle, "disconnected"):
            ex.watch()  # not under uvicorn: listen for the disconnect the portable way
        try:
            await self._respond(ex, faults, options)
        except _Ended:
            pass
        finally:
            if ex._watcher is not None:
                ex._watcher.cancel()
            entry.t_end = time.perf_counter()
            if ex.is_disconnected() and entry.ended in ("open", "complete") and not ex.closed_by_us:
                entry.ended = "client disconnected"
                ex.note("close", "client disconnected")

    def _validate(self, raw: bytes) -> dict:
        return parse_body(raw)

    # -- the answer (streamlab/_mock_stream.py) ---------------------------------------
    def _plan(self, ex: Exchange, options: dict[str, Any]) -> tuple[list[str], dict | None, str]:
        return _plan(self, ex, options)

    async def _run_chain(self, faults: list[_faults.Fault], event: Event, ex: Exchange) -> Event | None:
        return await _run_chain(faults, event, ex)

    async def _respond(self, ex: Exchange, faults: list[_faults.Fault], options: dict[str, Any]) -> None:
        await _respond(self, ex, faults, options)

    # -- the answer -------------------------------------------------------------
class MockURLs:
    """The URLs and headers that select a behaviour, for any server whose ``url`` is the mock's
    (``MockLLM`` and ``MockCluster`` share them)."""

    @property
    def base_url(self) -> str:
        """OpenAI base URL: ``http://127.0.0.1:PORT/v1``."""
        return self.url + "/v1"

    def base_url_for(self, *faults: "_faults.Fault | str", **options: Any) -> str:
        """Base URL whose requests carry ``faults`` and ``options`` (for clients that only take a URL)."""
        spec = _faults.to_spec(*faults, **options)
        return f"{self.url}/s/{spec}/v1" if spec else self.base_url

    def headers_for(self, *faults: "_faults.Fault | str", **options: Any) -> dict[str, str]:
        """Request headers that select ``faults`` and ``options`` (for clients that take default headers)."""
        return {HEADER: _faults.to_spec(*faults, **options)}


class MockLLM(MockURLs, ThreadedASGIServer):
    """The mock model on a real loopback socket, in a background thread.

        with MockLLM(tokens=200, ttft=0.5, itl=0.02) as mock:      # scenario seconds
            client = openai.OpenAI(base_url=mock.base_url, api_key="unused")
            client.chat.completions.create(model="m", messages=[...], stream=True)
            url = mock.base_url_for(Cut(at=12))                        # .../s/cut@12/v1
            with mock.script(Cut(at=5), None): ...                     # request 1 cut, then clean
            with mock.inject(Stall(at=3, seconds=30)): ...             # every request in the block
            mock.journal.last.summary()                                # what the server did
            mock.responses.get(response_id)                            # a Responses API run's state

    All keyword arguments are those of ``MockApp``. Stops on ``with`` exit, on
    error, on kernel interrupt (the ``with`` block unwinds) and at interpreter exit.
    """

    kind = "mock model"

    def __init__(self, **settings: Any) -> None:
        self.app_ = MockApp(**settings)
        super().__init__(self.app_, name="streamlab-mock")


    @property
    def journal(self) -> Journal:
        return self.app_.journal

    @property
    def responses(self) -> "_responses.Runs":
        """The Responses API's runs (``POST /v1/responses``): ``mock.responses.get(response_id)``."""
        return self.app_.responses

    def inject(self, *faults: _faults.Fault):
        return self.app_.inject(*faults)

    def script(self, *steps: Any, then: Any = None):
        return self.app_.script(*steps, then=then)
