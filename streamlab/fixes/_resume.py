"""Resumable SSE: the model call runs apart from the request; a reconnect picks up where it left.

    from streamlab.fixes import RedisStore, InMemoryStore, ResumableRuns, resume_stream

    runs = ResumableRuns(RedisStore(os.environ["STREAMLAB_REDIS_URL"]))   # InMemoryStore(): one process

    @app.post("/runs")
    async def create(q: str):
        run_id = new_run_id()
        await runs.start(run_id, lambda: model_events(q))   # background producer, once per run id
        return {"run_id": run_id}

    @app.get("/runs/{run_id}/stream")
    async def stream(request: Request, run_id: str):
        return await runs.response(request, run_id)          # replay after Last-Event-ID, then follow

    for event in resume_stream(base + f"/runs/{run_id}/stream"):   # client: reconnects, each event once
        print(event.id, event.event, event.data)

Three parts, the least shared state that works:

* A **store** keeps every event of a run under an id that is strictly increasing
  per run and never repeats, even for many events within one millisecond (the
  LangGraph bug langgraph#8112: ids made from a millisecond timestamp collide, and
  a resume after a duplicate id skips or repeats events). ``RedisStore`` uses one
  Redis Stream per run: ``XADD key *`` makes ids ``<ms>-<seq>`` that Redis itself
  keeps increasing (the sequence part counts within a millisecond, and a clock
  that goes back is ignored); ``XREAD BLOCK`` after an id is exactly "what came
  after Last-Event-ID", from any worker. ``InMemoryStore`` numbers events 1, 2, 3
  in one process: enough for one uvicorn process, wrong behind any second worker.
* A **producer** per run (``ResumableRuns.start``) runs the model call as a
  background task of the worker that got the request, decoupled from any
  client: a cut client does not cancel the model run. ``SET NX`` on a
  ``created`` key makes the run start once per run id whichever worker is asked;
  a lease (``producer`` key, renewed every ``lease/3``) says the producer lives.
* A **reader** per connection (``ResumableRuns.response``) replays what the store
  has after ``Last-Event-ID`` (header, or ``?last_event_id=`` for clients that
  cannot set headers) and then follows new events as they are appended, until
  ``done`` or ``error``. A partly received event was never dispatched by the
  client, so its id was not kept and it is sent again whole: each event arrives
  exactly once.

Redis calls (``INFO commandstats``; tests/test_fixes_resume.py pins the per-event
bounds): per event, one ``XADD`` by the producer and at most one ``XREAD`` per
connected reader (measured: 115 for 41 events and 3 readers; a reader that is
behind gets up to 500 events per ``XREAD``).
Per run: two ``SET`` (created, lease), one ``EVALSHA`` per ``lease/3`` seconds to
renew, one ``EVALSHA`` to release and two ``EXPIRE`` at the end. Per reader
connection: one ``EXISTS``, plus one ``EXISTS`` per ``poll`` second of silence to see
whether the producer still lives. A waiting reader holds one Redis connection.

What it cannot cure: a producer that dies (its worker killed, a deploy) ends the
run: readers get ``event: error`` with ``"producer lost"`` once its lease has
expired (``lease`` seconds); restarting the model call is a continuation, not a
resume. Nor a model that stops or errors (the error is stored and replayed like
any event), nor a client that cannot reconnect (a plain ``fetch`` reader; the
browser's ``EventSource`` reconnects by itself and sends ``Last-Event-ID``).
Without ``ping`` a silent model still trips a proxy read timeout; the client then
reconnects and loses nothing (3 reconnects in a 30 s stall behind a 10 s nginx
timeout); ``ping=15`` (or ``streamlab.fixes.heartbeat``) saves those reconnects.

Compare ids with ``event_id_key`` (integers), never as strings: ``"...-10" < "...-9"``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, AsyncIterable, AsyncIterator, Callable, Iterator, Mapping

from .._sse import parse_block
from .._timescale import to_real

__all__ = ["StoredEvent", "EventStore", "InMemoryStore", "RedisStore", "ResumableRuns", "resume_stream",
           "ResumableStream", "SSEEvent", "event_id_key", "new_run_id", "TERMINAL"]

TERMINAL = frozenset({"done", "error"})
RUN_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
READ_BATCH = 500


@dataclass(frozen=True)
class StoredEvent:
    """One event of a run: ``id`` as the store made it, SSE ``event`` name, ``data`` text."""

    id: str
    event: str
    data: str

    def frame(self) -> bytes:
        """The SSE frame: ``id:``, ``event:``, one ``data:`` line per line of data."""
        lines = ([f"id: {self.id}"] if self.id else []) + [f"event: {self.event}"]
        lines += [f"data: {part}" for part in self.data.split("\n")]
        return ("\n".join(lines) + "\n\n").encode()


def event_id_key(event_id: str) -> tuple[int, int]:
    """Sort key of an event id of either store (``"17"`` or Redis ``"1733086522123-4"``)."""
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq or 0)


def new_run_id() -> str:
    return uuid.uuid4().hex[:16]


def check_run_id(run_id: str) -> str:
    if not isinstance(run_id, str) or not RUN_ID.match(run_id):
        raise ValueError(f"a run id is 1-64 characters of A-Z a-z 0-9 _ . : -, got {run_id!r}")
    return run_id


class EventStore:
    """What a resumable run needs from shared state (async; all methods are per ``run_id``).

    ``create`` once per run id (True the first time), a producer lease
    (``claim``/``renew``/``release``/``producing``), ``append`` an event (returns
    its id), ``read`` what came after an id, waiting up to ``timeout`` seconds when
    there is nothing yet, ``finished`` when the producer is done. ``check_id``
    rejects a malformed Last-Event-ID (ValueError). Subclass it for another backend
    (Postgres ``LISTEN``, NATS JetStream); ids must be strictly increasing per run.
    """

    async def create(self, run_id: str) -> bool: raise NotImplementedError
    async def exists(self, run_id: str) -> bool: raise NotImplementedError
    async def claim(self, run_id: str, owner: str, lease: float) -> bool: raise NotImplementedError
    async def renew(self, run_id: str, owner: str, lease: float) -> bool: raise NotImplementedError
    async def release(self, run_id: str, owner: str) -> None: raise NotImplementedError
    async def producing(self, run_id: str) -> bool: raise NotImplementedError
    async def append(self, run_id: str, event: str, data: str) -> str: raise NotImplementedError

    async def read(self, run_id: str, after: str | None, *, timeout: float) -> list[StoredEvent]:
        raise NotImplementedError

    def check_id(self, event_id: str) -> str: raise NotImplementedError

    async def ping(self) -> None:
        """Connect now (an app's startup), not on the first request."""
        return None

    async def finished(self, run_id: str) -> None:
        """The run's producer ended (its last event is stored): start the clock of its expiry."""
        return None

    async def aclose(self) -> None:
        return None


class InMemoryStore(EventStore):
    """Events in this process's memory, ids ``1, 2, 3...`` per run. One event loop, one process.

    ``keep``: seconds a run is kept after it was created (pruned when a new one is created).
    """

    def __init__(self, *, keep: float = 3600.0) -> None:
        self.keep = keep
        self._events: dict[str, list[StoredEvent]] = {}
        self._created: dict[str, float] = {}
        self._leases: dict[str, tuple[str, float]] = {}
        self._waiters: dict[str, list[asyncio.Future]] = {}

    def _prune(self) -> None:
        cutoff = time.monotonic() - self.keep
        for run_id in [r for r, t in self._created.items() if t < cutoff]:
            for d in (self._events, self._created, self._leases, self._waiters):
                d.pop(run_id, None)

    async def create(self, run_id: str) -> bool:
        self._prune()
        if run_id in self._created:
            return False
        self._created[run_id] = time.monotonic()
        self._events[run_id] = []
        return True

    async def exists(self, run_id: str) -> bool:
        return run_id in self._created

    async def claim(self, run_id: str, owner: str, lease: float) -> bool:
        if await self.producing(run_id):
            return False
        self._leases[run_id] = (owner, time.monotonic() + lease)
        return True

    async def renew(self, run_id: str, owner: str, lease: float) -> bool:
        held = self._leases.get(run_id)
        if held is None or held[0] != owner:
            return False
        self._leases[run_id] = (owner, time.monotonic() + lease)
        return True

    async def release(self, run_id: str, owner: str) -> None:
        if self._leases.get(run_id, ("",))[0] == owner:
            del self._leases[run_id]
        self._wake(run_id)

    async def producing(self, run_id: str) -> bool:
        held = self._leases.get(run_id)
        return held is not None and held[1] > time.monotonic()

    async def append(self, run_id: str, event: str, data: str) -> str:
        events = self._events.setdefault(run_id, [])
        stored = StoredEvent(str(len(events) + 1), event, data)
        events.append(stored)
        self._wake(run_id)
        return stored.id

    def _wake(self, run_id: str) -> None:
        for waiter in self._waiters.pop(run_id, []):
            if not waiter.done():
                waiter.set_result(None)

    async def read(self, run_id: str, after: str | None, *, timeout: float) -> list[StoredEvent]:
        start = int(after) if after else 0
        events = self._events.get(run_id, [])
        if len(events) <= start and timeout > 0:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.setdefault(run_id, []).append(waiter)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(waiter, timeout)
            events = self._events.get(run_id, [])
        return events[start:start + READ_BATCH]

    def check_id(self, event_id: str) -> str:
        if not re.fullmatch(r"\d{1,18}", event_id):
            raise ValueError(f"Last-Event-ID must be an event number like '17', got {event_id!r}")
        return event_id


_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    redis.call('pexpire', KEYS[1], ARGV[2])
    redis.call('expire', KEYS[2], ARGV[3])
    redis.call('expire', KEYS[3], ARGV[3])
    return 1
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


class RedisStore(EventStore):
    """One Redis Stream per run (``XADD *`` ids, ``XREAD BLOCK`` to follow), via redis-py's asyncio client.

    Keys (``prefix`` = "streamlab:run"): ``<prefix>:<id>:events`` (the stream),
    ``<prefix>:<id>:created`` (``SET NX``: the run exists), ``<prefix>:<id>:producer``
    (the lease: the owner's token, with a TTL). Everything expires ``keep`` seconds
    after the last renewal.
    """

    def __init__(self, url: str, *, prefix: str = "streamlab:run", keep: float = 3600.0,
                 client: Any = None) -> None:
        self.url = url
        self.prefix = prefix
        self.keep = int(keep)
        self._client = client
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scripts: dict[str, Any] = {}

    def _redis(self):
        loop = asyncio.get_running_loop()
        if self._client is None or (self._loop is not None and self._loop is not loop):
            import redis.asyncio as aioredis

            self._client = aioredis.Redis.from_url(self.url, decode_responses=True)
            self._scripts = {}
        self._loop = loop
        if not self._scripts:
            self._scripts = {"renew": self._client.register_script(_RENEW),
                             "release": self._client.register_script(_RELEASE)}
        return self._client

    def _key(self, run_id: str, part: str) -> str:
        return f"{self.prefix}:{run_id}:{part}"

    async def ping(self) -> None:
        await self._redis().ping()

    async def create(self, run_id: str) -> bool:
        return bool(await self._redis().set(self._key(run_id, "created"), "1", nx=True, ex=self.keep))

    async def exists(self, run_id: str) -> bool:
        return bool(await self._redis().exists(self._key(run_id, "created")))

    async def claim(self, run_id: str, owner: str, lease: float) -> bool:
        return bool(await self._redis().set(self._key(run_id, "producer"), owner, nx=True,
                                            px=max(1, int(lease * 1000))))

    async def renew(self, run_id: str, owner: str, lease: float) -> bool:
        self._redis()
        keys = [self._key(run_id, "producer"), self._key(run_id, "events"), self._key(run_id, "created")]
        return bool(await self._scripts["renew"](keys=keys, args=[owner, max(1, int(lease * 1000)), self.keep]))

    async def release(self, run_id: str, owner: str) -> None:
        self._redis()
        await self._scripts["release"](keys=[self._key(run_id, "producer")], args=[owner])

    async def producing(self, run_id: str) -> bool:
        return bool(await self._redis().exists(self._key(run_id, "producer")))

    async def append(self, run_id: str, event: str, data: str) -> str:
        return await self._redis().xadd(self._key(run_id, "events"), {"e": event, "d": data})

    async def read(self, run_id: str, after: str | None, *, timeout: float) -> list[StoredEvent]:
        block = int(timeout * 1000) if timeout > 0 else None
        if block == 0:
            block = 1  # BLOCK 0 would mean "forever"
        reply = await self._redis().xread({self._key(run_id, "events"): after or "0-0"}, count=READ_BATCH,
                                          block=block)
        out = []
        for _key, entries in reply or []:  # RESP2 (redis-py's default): [[key, [(id, fields), ...]]]
            for event_id, fields in entries:
                out.append(StoredEvent(event_id, fields.get("e", "message"), fields.get("d", "")))
        return out

    async def finished(self, run_id: str) -> None:
        """A finished run's keys expire ``keep`` seconds from now."""
        r = self._redis()
        async with r.pipeline(transaction=False) as pipe:
            for part in ("events", "created"):
                pipe.expire(self._key(run_id, part), self.keep)
            await pipe.execute()

    def check_id(self, event_id: str) -> str:
        if not re.fullmatch(r"\d{1,20}(-\d{1,20})?", event_id):
            raise ValueError(f"Last-Event-ID must be a Redis stream id like '1733086522123-0', got {event_id!r}")
        return event_id

    async def aclose(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.aclose()
            self._client = None


EventSource = Callable[[], AsyncIterable["tuple[str, str] | str"]]


class ResumableRuns:
    """Runs whose events live in ``store``: ``start()`` a producer, ``response()`` / ``events()`` to read.

    Args (keyword-only):
        lease: wall-clock seconds a producer's lease lasts without renewal (renewed every
            ``lease/3``); a dead producer is noticed by readers after at most this.
        poll: wall-clock seconds a reader waits in one store read before it checks that
            the producer still lives.
        ping: scenario seconds of silence before a ``: ping`` comment (None: no pings,
            so a proxy read timeout cuts the connection and the client resumes).
        retry: scenario seconds a client should wait before it reconnects, sent as the SSE
            ``retry:`` field first on every connection (None: the client's default; an
            ``EventSource`` waits about 3 s).
        log: ``log(run_id, message)`` for lifecycle lines (default: none).
    """

    def __init__(self, store: EventStore, *, lease: float = 10.0, poll: float = 1.0, ping: float | None = None,
                 retry: float | None = None, log: Callable[[str, str], None] | None = None) -> None:
        if not lease > 0 or not poll > 0:
            raise ValueError("lease and poll must be > 0 seconds")
        if retry is not None and not retry >= 0:
            raise ValueError("retry must be >= 0 seconds")
        self.retry = retry
        self.store = store
        self.lease = lease
        self.poll = poll
        self.ping = ping
        self._log = log or (lambda run_id, message: None)
        self._tasks: set[asyncio.Task] = set()

    async def start(self, run_id: str, source: EventSource) -> bool:
        """Start the producer of ``run_id`` unless the run exists (anywhere). True if this call started it.

        ``source()`` makes an async iterable of ``(event, data)`` pairs (or data strings,
        sent as ``token``). Every item is appended to the store; ``done`` is appended at
        the end unless the source yielded ``done`` or ``error`` itself; an exception
        becomes an ``error`` event.
        """
        check_run_id(run_id)
        if not await self.store.create(run_id):
            return False
        owner = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        if not await self.store.claim(run_id, owner, self.lease):  # pragma: no cover - created just now
            return False
        task = asyncio.get_running_loop().create_task(self._produce(run_id, owner, source))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _keep_lease(self, run_id: str, owner: str) -> None:
        while True:
            await asyncio.sleep(self.lease / 3)
            if not await self.store.renew(run_id, owner, self.lease):
                self._log(run_id, "producer LEASE LOST")
                return

    async def _produce(self, run_id: str, owner: str, source: EventSource) -> None:
        keeper = asyncio.ensure_future(self._keep_lease(run_id, owner))
        n, ended = 0, False
        self._log(run_id, "producer start")
        items = source()
        try:
            try:
                async for item in items:
                    event, data = ("token", item) if isinstance(item, str) else item
                    await self.store.append(run_id, event, data)
                    n += 1
                    if event in TERMINAL:
                        ended = True
                        break
            finally:
                closer = getattr(items, "aclose", None)
                if closer is not None:
                    with contextlib.suppress(Exception):
                        await closer()
            if not ended:
                await self.store.append(run_id, "done", "[DONE]")
            self._log(run_id, f"producer done {n} events")
        except asyncio.CancelledError:
            self._log(run_id, f"producer CANCELLED after {n} events (server shutting down)")
            with contextlib.suppress(BaseException):
                await asyncio.shield(self.store.append(run_id, "error", json.dumps(
                    {"message": "producer stopped: the server is shutting down"})))
            raise
        except Exception as exc:  # the model call failed: the readers learn it as an event
            self._log(run_id, f"producer ERROR {type(exc).__name__}: {exc} after {n} events")
            with contextlib.suppress(Exception):
                await self.store.append(run_id, "error", json.dumps({"message": f"{type(exc).__name__}: {exc}"}))
        finally:
            keeper.cancel()
            with contextlib.suppress(BaseException):
                await keeper
            with contextlib.suppress(BaseException):
                await asyncio.shield(self.store.release(run_id, owner))
            with contextlib.suppress(BaseException):
                await asyncio.shield(self.store.finished(run_id))

    async def events(self, run_id: str, last_event_id: str | None = None) -> AsyncIterator[StoredEvent | None]:
        """Stored events after ``last_event_id``, then live ones, up to ``done``/``error``.

        Yields None when ``ping`` scenario seconds passed without an event. If the
        producer is gone with no final event, yields one ``error`` event (no id) and ends.
        """
        after = last_event_id
        ping = to_real(self.ping) if self.ping else None
        wait = min(self.poll, ping) if ping else self.poll
        last_sent = time.monotonic()
        while True:
            batch = await self.store.read(run_id, after, timeout=wait)
            if not batch:
                if ping and time.monotonic() - last_sent >= ping:
                    last_sent = time.monotonic()
                    yield None
                if await self.store.producing(run_id):
                    continue
                batch = await self.store.read(run_id, after, timeout=0)  # appended just before the release?
                if not batch:
                    self._log(run_id, f"reader: producer lost after id {after}")
                    yield StoredEvent("", "error", json.dumps({"message": "producer lost: the run ended "
                                                               "without a final event"}))
                    return
            for event in batch:
                yield event
                after = event.id
                last_sent = time.monotonic()
                if event.event in TERMINAL:
                    return

    async def frames(self, run_id: str, last_event_id: str | None = None) -> AsyncIterator[bytes]:
        """``events()`` as SSE frames (a ping is ``: ping``), after a ``retry:`` field if one is set."""
        if self.retry is not None:
            yield f"retry: {max(0, round(to_real(self.retry) * 1000))}\n\n".encode()
        async for event in self.events(run_id, last_event_id):
            yield b": ping\n\n" if event is None else event.frame()

    def last_event_id(self, request: Any) -> str | None:
        """``Last-Event-ID`` header, else ``?last_event_id=``, checked (ValueError if malformed)."""
        value = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
        return self.store.check_id(value.strip()) if value else None

    async def response(self, request: Any, run_id: str, *, headers: Mapping[str, str] | None = None) -> Any:
        """A Starlette response: the SSE stream of ``run_id`` after the client's Last-Event-ID.

        400 for a malformed run id or Last-Event-ID, 404 for a run the store does not
        have (never started, or expired), 503 when the store cannot be reached, as
        JSON ``{"error": {...}}``.
        """
        from starlette.responses import JSONResponse, StreamingResponse

        try:
            check_run_id(run_id)
            after = self.last_event_id(request)
        except ValueError as exc:
            return JSONResponse(_error(str(exc), "invalid_request_error", "last_event_id"), status_code=400)
        try:
            known = await self.store.exists(run_id)
        except Exception as exc:  # noqa: BLE001 - Redis down or unreachable: say so, not a 500
            return JSONResponse(_error(f"event store unavailable: {type(exc).__name__}: {exc}",
                                       "service_unavailable", None), status_code=503)
        if not known:
            return JSONResponse(_error(f"no run {run_id!r} (never started, or expired)", "not_found", "run_id"),
                                status_code=404)
        self._log(run_id, f"serve after {after or '-'}")
        return StreamingResponse(self.frames(run_id, after), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no",
                                          **dict(headers or {})})

    async def aclose(self) -> None:
        """Cancel producers still running in this process (server shutdown) and close the store."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.store.aclose()


def _error(message: str, type: str, param: str | None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": None}}


# --------------------------------------------------------------------------- the client


@dataclass(frozen=True)
class SSEEvent:
    """One dispatched SSE event. ``id`` is the event's own ``id:`` field, None when it had none
    (unlike ``EventSource.lastEventId``, which carries the last id over to later events)."""

    id: str | None
    event: str
    data: str


@dataclass
class ResumableStream:
    """What ``resume_stream`` read: delivered events, connections, reconnects, outcome.

    ``outcome``: ``complete`` (a ``done`` event), ``error`` (an ``error`` event),
    ``http error`` (a 4xx answer: not retried), ``gave up`` (``max_reconnects`` spent),
    ``open`` while reading.
    """

    url: str
    events: list[SSEEvent] = field(default_factory=list)
    connections: list[dict] = field(default_factory=list)
    duplicates: int = 0
    last_event_id: str | None = None
    outcome: str = "open"
    error: BaseException | None = None

    @property
    def reconnects(self) -> int:
        return max(0, len(self.connections) - 1)

    def data(self, event: str = "token") -> list[str]:
        return [e.data for e in self.events if e.event == event]


def _parse_lines(lines: Iterator[str], state: dict) -> Iterator[SSEEvent]:
    """The SSE parsing algorithm (WHATWG) on the package's block parser (``streamlab._sse``).

    An event is dispatched at its blank line, and only then does its ``id`` become the
    last event id that a reconnect sends: an event cut before its blank line is dropped
    *and its id with it*, so the server replays it. ``retry:`` applies as soon as it is read.
    """
    block: list[str] = []
    for line in lines:
        if line != "":
            block.append(line)
            continue
        if not block:
            continue
        parsed = parse_block("\n".join(block))
        block = []
        if parsed.retry is not None:
            state["retry"] = parsed.retry / 1000
        if parsed.id is not None:
            state["id"] = parsed.id or None
        if parsed.data is not None:
            yield SSEEvent(state["id"] if parsed.id is not None else None, parsed.event or "message", parsed.data)


def resume_stream(url: str, *, last_event_id: str | None = None, max_reconnects: int = 10, retry: float = 0.5,
                  read_timeout: float | None = 60.0, headers: Mapping[str, str] | None = None,
                  result: ResumableStream | None = None, client: Any = None) -> Iterator[SSEEvent]:
    """GET ``url`` as SSE and yield every event once, reconnecting with ``Last-Event-ID`` after a cut.

    A cut is any transport error (the server, a hop or the network closed or reset the
    connection; ``read_timeout`` scenario seconds without a byte), a 5xx/429 answer
    (nginx's 502/504), or a body that ends without ``done``/``error``. Each reconnect
    waits ``retry`` scenario seconds (or what the server's ``retry:`` field says) and
    sends the last id seen. Events whose id was seen already are skipped (counted in
    ``result.duplicates``). Pass ``result=ResumableStream(url)`` to read the counts.
    """
    import httpx

    state: dict[str, Any] = {"id": last_event_id, "retry": to_real(retry)}
    out = result if result is not None else ResumableStream(url)
    seen: set[str] = set()
    own = client is None
    timeout = httpx.Timeout(to_real(read_timeout) if read_timeout else None, connect=5.0)
    client = client or httpx.Client(timeout=timeout)
    try:
        while True:
            conn = {"status": None, "events": 0, "ended": "open", "last_event_id": state["id"], "pid": None}
            out.connections.append(conn)
            request_headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache", **dict(headers or {})}
            if state["id"]:
                request_headers["Last-Event-ID"] = state["id"]
            try:
                with client.stream("GET", url, headers=request_headers) as response:
                    conn["status"] = response.status_code
                    conn["pid"] = response.headers.get("x-streamlab-pid")
                    if 400 <= response.status_code < 500 and response.status_code != 429:
                        response.read()
                        conn["ended"] = f"http {response.status_code}"
                        out.outcome = "http error"
                        out.error = httpx.HTTPStatusError(f"{response.status_code}: {response.text[:200]}",
                                                          request=response.request, response=response)
                        return
                    if response.status_code >= 400:
                        response.read()
                        conn["ended"] = f"http {response.status_code}"
                    else:
                        for event in _parse_lines(response.iter_lines(), state):
                            if event.id is not None and event.id in seen:
                                out.duplicates += 1
                                continue
                            if event.id is not None:
                                seen.add(event.id)
                                out.last_event_id = event.id
                            conn["events"] += 1
                            out.events.append(event)
                            yield event
                            if event.event in TERMINAL:
                                conn["ended"] = event.event
                                out.outcome = "complete" if event.event == "done" else "error"
                                return
                        conn["ended"] = "closed without done"
            except httpx.TransportError as exc:
                conn["ended"] = f"cut: {type(exc).__name__}"
                out.error = exc
            if len(out.connections) > max_reconnects:
                out.outcome = "gave up"
                return
            time.sleep(state["retry"])
    finally:
        if out.outcome == "open":
            out.outcome = "closed by the caller"
        if own:
            client.close()
