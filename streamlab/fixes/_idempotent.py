"""Idempotency keys: a retried request (a balancer's, a client's) never runs the model twice.

    app = Idempotent(app, store=RedisKeys(os.environ["STREAMLAB_REDIS_URL"]))   # InMemoryKeys(): one process

    POST /answer   Idempotency-Key: 7f3c...     first time: runs, the answer is kept under the key
    POST /answer   Idempotency-Key: 7f3c...     again, run finished: the kept answer, replayed
                                                (``Idempotent-Replayed: true``), nothing runs
    POST /answer   Idempotency-Key: 7f3c...     again, first run still going: 409 + Retry-After
                                                (or wait up to ``wait`` seconds for its answer)

Plain ASGI middleware (STYLE.md, item 9: no framework in between). Requests without the header,
or with another method than ``methods``, pass through untouched. The state per key (design note):

    claim   ``SET NX`` with a lease (``lease`` wall-clock seconds, renewed every lease/3 while
            the first request runs): exactly one request runs the app; a runner that dies
            (its worker killed) lets the lease expire, and the next retry runs it again (its
            side effects never happened, or happened without an answer: say so in your API)
    answer  status, headers and body of the first run, kept ``keep`` seconds; also when its
            client has left (a balancer gave up on a slow worker: the app finishes the run and
            keeps the answer for the retry), not when the app raised (the claim is released)
    print   a SHA-256 of method, path, query and body: the same key with another request is
            a 422 (a client bug), not a replay

A 409 is what the IETF ``Idempotency-Key`` draft and Stripe answer while the first request
runs; a balancer passes it on (it is an answer), the client retries after ``Retry-After``.
A streamed answer is kept whole and replayed at once (a retry of a stream is not a resume:
for that see ``ResumableRuns``). At most ``max_body`` bytes of answer are kept (more: the key
is released and the answer is not replayable); request bodies past ``max_body`` get a 413.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import re
import threading
import time
from typing import Any

__all__ = ["Idempotent", "KeyStore", "InMemoryKeys", "RedisKeys", "HEADER", "REPLAYED"]

HEADER = "idempotency-key"
REPLAYED = "idempotent-replayed"
_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")


class KeyStore:
    """Where claims and answers live. Every method is async; ``claim`` is atomic."""

    async def claim(self, key: str, token: str, fingerprint: str, lease: float) -> tuple[str, str | None]:
        """``("claimed", None)`` if this caller now runs ``key``; else ``("running", print)`` or
        ``("done", print)`` with the fingerprint of the request that claimed it."""
        raise NotImplementedError

    async def renew(self, key: str, token: str, lease: float) -> None:
        raise NotImplementedError

    async def release(self, key: str, token: str) -> None:
        raise NotImplementedError

    async def save(self, key: str, token: str, answer: dict, keep: float) -> None:
        raise NotImplementedError

    async def answer(self, key: str) -> dict | None:
        raise NotImplementedError


class InMemoryKeys(KeyStore):
    """One process's memory (enough for one worker; wrong behind two). At most ``max_keys`` kept."""

    def __init__(self, *, max_keys: int = 10_000) -> None:
        self.max_keys = max_keys
        self._claims: dict[str, tuple[str, str, float]] = {}  # key -> (token, print, expires)
        self._answers: dict[str, tuple[dict, str, float]] = {}  # key -> (answer, print, expires)
        self._lock = threading.Lock()

    def _sweep(self, now: float) -> None:
        for table in (self._claims, self._answers):
            for key in [k for k, v in table.items() if v[2] < now]:
                del table[key]
        while len(self._answers) > self.max_keys:
            del self._answers[next(iter(self._answers))]

    async def claim(self, key, token, fingerprint, lease):
        now = time.monotonic()
        with self._lock:
            self._sweep(now)
            if key in self._answers:
                return "done", self._answers[key][1]
            if key in self._claims:
                return "running", self._claims[key][1]
            if len(self._claims) >= self.max_keys:
                raise RuntimeError("too many requests running under idempotency keys")
            self._claims[key] = (token, fingerprint, now + lease)
            return "claimed", None

    async def renew(self, key, token, lease):
        with self._lock:
            held = self._claims.get(key)
            if held and held[0] == token:
                self._claims[key] = (token, held[1], time.monotonic() + lease)

    async def release(self, key, token):
        with self._lock:
            if self._claims.get(key, ("",))[0] == token:
                del self._claims[key]

    async def save(self, key, token, answer, keep):
        with self._lock:
            held = self._claims.pop(key, None)
            self._answers[key] = (answer, held[1] if held else "", time.monotonic() + keep)

    async def answer(self, key):
        with self._lock:
            kept = self._answers.get(key)
            return None if kept is None or kept[2] < time.monotonic() else kept[0]


_CLAIM = """
local answer = redis.call('GET', KEYS[2])
if answer then return {'done', cjson.decode(answer)['print']} end
local held = redis.call('GET', KEYS[1])
if held then return {'running', cjson.decode(held)['print']} end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {'claimed', ''}
"""
_RENEW = """
local held = redis.call('GET', KEYS[1])
if held and cjson.decode(held)['token'] == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
local held = redis.call('GET', KEYS[1])
if held and cjson.decode(held)['token'] == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisKeys(KeyStore):
    """Claims and answers in Redis (shared by every worker): ``<prefix>:<key>:claim`` (``SET NX``
    semantics in one Lua script, with a lease TTL) and ``<prefix>:<key>:answer`` (TTL ``keep``)."""

    def __init__(self, url: str, *, prefix: str = "streamlab:idem") -> None:
        self.url = url
        self.prefix = prefix
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scripts: dict[str, Any] = {}

    def _redis(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            import redis.asyncio as aioredis

            self._client = aioredis.Redis.from_url(self.url, decode_responses=True)
            self._scripts = {name: self._client.register_script(src)
                             for name, src in (("claim", _CLAIM), ("renew", _RENEW), ("release", _RELEASE))}
            self._loop = loop
        return self._client

    def _keys(self, key: str) -> list[str]:
        digest = hashlib.sha256(key.encode()).hexdigest()[:32]
        return [f"{self.prefix}:{digest}:claim", f"{self.prefix}:{digest}:answer"]

    async def claim(self, key, token, fingerprint, lease):
        self._redis()
        state, seen = await self._scripts["claim"](
            keys=self._keys(key), args=[json.dumps({"token": token, "print": fingerprint}), int(lease * 1000)])
        return state, (seen or None)

    async def renew(self, key, token, lease):
        self._redis()
        await self._scripts["renew"](keys=self._keys(key)[:1], args=[token, int(lease * 1000)])

    async def release(self, key, token):
        self._redis()
        await self._scripts["release"](keys=self._keys(key)[:1], args=[token])

    async def save(self, key, token, answer, keep):
        client = self._redis()
        claim, kept = self._keys(key)
        held = await client.get(claim)
        fingerprint = json.loads(held)["print"] if held else ""
        async with client.pipeline(transaction=True) as pipe:
            pipe.set(kept, json.dumps({**answer, "print": fingerprint}), px=int(keep * 1000))
            pipe.delete(claim)
            await pipe.execute()

    async def answer(self, key):
        raw = await self._redis().get(self._keys(key)[1])
        return None if raw is None else json.loads(raw)


def _error(status: int, message: str, code: str, headers: list[tuple[bytes, bytes]] = ()) -> tuple[int, list, bytes]:
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error", "param": HEADER,
                                 "code": code}}).encode()
    return status, [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    *headers], body


class Idempotent:
    """ASGI middleware: one run per ``Idempotency-Key``; repeats get the kept answer.

    Keyword-only (durations in wall-clock seconds): ``store`` (default ``InMemoryKeys()``),
    ``methods`` ("POST",), ``lease`` 30 (renewed while running), ``keep`` 86 400 (answers),
    ``wait`` 0 (a repeat while the first runs: wait this long for its answer, then 409),
    ``retry_after`` 1 (the 409's ``Retry-After``), ``max_body`` 8 MiB. ``stats`` counts
    ``runs``, ``replays``, ``conflicts`` and ``mismatches``.
    """

    def __init__(self, app: Any, *, store: KeyStore | None = None, methods: tuple[str, ...] = ("POST",),
                 lease: float = 30.0, keep: float = 86_400.0, wait: float = 0.0, retry_after: float = 1.0,
                 max_body: int = 8 * 1024 * 1024, poll: float = 0.05) -> None:
        for name, value in (("lease", lease), ("keep", keep), ("wait", wait), ("retry_after", retry_after),
                            ("poll", poll)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 10**7:
                raise ValueError(f"{name} must be a number of seconds >= 0, not {value!r}")
        if lease <= 0 or poll <= 0:
            raise ValueError("lease and poll must be > 0")
        self.app = app
        self.store = store if store is not None else InMemoryKeys()
        self.methods = tuple(m.upper() for m in methods)
        self.lease, self.keep, self.wait, self.retry_after, self.poll = lease, keep, wait, retry_after, poll
        self.max_body = max_body
        self.stats = {"runs": 0, "replays": 0, "conflicts": 0, "mismatches": 0}
        self._tokens = 0

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] not in self.methods:
            return await self.app(scope, receive, send)
        key = next((v.decode("latin-1") for n, v in scope.get("headers", ()) if n.lower() == HEADER.encode()), None)
        if key is None:
            return await self.app(scope, receive, send)
        if not _KEY.match(key):
            return await self._reply(send, *_error(400, "Idempotency-Key must be 1 to 255 visible ASCII characters.",
                                                   "invalid_idempotency_key"))
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body:
                return await self._reply(send, *_error(413, f"Request body larger than {self.max_body} bytes.",
                                                       "request_too_large"))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        digest = hashlib.sha256()
        for part in (scope["method"].encode(), scope.get("path", "").encode(), scope.get("query_string", b""), body):
            digest.update(len(part).to_bytes(8, "big") + part)
        fingerprint = digest.hexdigest()
        self._tokens += 1
        token = f"{id(self):x}-{self._tokens}-{time.time_ns()}"
        deadline = time.monotonic() + self.wait
        while True:
            state, seen = await self.store.claim(key, token, fingerprint, self.lease)
            if state != "claimed" and seen and seen != fingerprint:
                self.stats["mismatches"] += 1
                return await self._reply(send, *_error(
                    422, "This Idempotency-Key was used with another request (method, path or body differ).",
                    "idempotency_key_reused"))
            if state == "done":
                answer = await self.store.answer(key)
                if answer is not None:
                    self.stats["replays"] += 1
                    headers = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in answer["headers"]]
                    return await self._reply(send, answer["status"], headers + [(REPLAYED.encode(), b"true")],
                                             base64.b64decode(answer["body"]))
                continue  # expired between the two calls: claim again
            if state == "claimed":
                break
            if time.monotonic() >= deadline:
                self.stats["conflicts"] += 1
                return await self._reply(send, *_error(
                    409, "A request with this Idempotency-Key is still running; retry after Retry-After seconds.",
                    "idempotency_key_in_use", [(b"retry-after", str(max(1, round(self.retry_after))).encode())]))
            await asyncio.sleep(self.poll)
        await self._run(scope, body, send, key, token)

    async def _run(self, scope: dict, body: bytes, send: Any, key: str, token: str) -> None:
        self.stats["runs"] += 1
        record: dict[str, Any] = {"status": None, "headers": [], "body": []}
        size = 0
        complete = False
        delivered = [False]

        async def replay_receive() -> dict:
            if not delivered[0]:
                delivered[0] = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.Event().wait()  # the app waits for a disconnect: never one we know of
            return {"type": "http.disconnect"}  # pragma: no cover

        async def recording_send(message: dict) -> None:
            nonlocal size, complete
            if message["type"] == "http.response.start":
                record["status"] = message["status"]
                record["headers"] = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in message.get("headers", ())]
            elif message["type"] == "http.response.body":
                chunk = message.get("body", b"")
                size += len(chunk)
                if size <= self.max_body:
                    record["body"].append(chunk)
                complete = not message.get("more_body", False)
            with contextlib.suppress(Exception):  # the client may have left: the run goes on, the answer is kept
                await send(message)

        async def renew() -> None:
            while True:
                await asyncio.sleep(self.lease / 3)
                await self.store.renew(key, token, self.lease)

        renewer = asyncio.ensure_future(renew())
        try:
            await self.app(scope, replay_receive, recording_send)
        except BaseException:
            renewer.cancel()
            await self.store.release(key, token)
            raise
        renewer.cancel()
        if not complete or size > self.max_body or record["status"] is None:
            await self.store.release(key, token)
            return
        answer = {"status": record["status"], "body": base64.b64encode(b"".join(record["body"])).decode(),
                  "headers": [(n, v) for n, v in record["headers"] if n.lower() not in ("date", "server")]}
        await self.store.save(key, token, answer, self.keep)

    @staticmethod
    async def _reply(send: Any, status: int, headers: list, body: bytes) -> None:
        headers = [h for h in headers if h[0].lower() not in (b"content-length", b"transfer-encoding")]
        await send({"type": "http.response.start", "status": status,
                    "headers": headers + [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body, "more_body": False})
