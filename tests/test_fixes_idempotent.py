"""``streamlab.fixes.Idempotent``: a request the balancer retries runs the model once with a key.

The stack is real: ``redis-server``, the mock model, two uvicorn processes of
``streamlab.apps.idempotent:app`` (one worker each, so the retry lands in another process),
and ``sl.Balancer(retry=True, non_idempotent=True, idle_timeout=...)`` in front (nginx's
``proxy_next_upstream error timeout non_idempotent``: without it a sent POST is not retried;
``max_fails=0``: a worker that timed out once is not skipped in the next scenario). The first model call of a scenario
stalls (``stall@0=S,first=1``) longer than the balancer waits for a first byte, so the balancer
gives up on that worker and sends the same request to the other one, while the first run is
still going: the duplicate a retrying balancer makes. Counted: model runs, the mock's chat
requests for the scenario's prompt.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import pytest

import streamlab as sl
from streamlab.fixes import Idempotent, InMemoryKeys, RedisKeys

APP = "streamlab.apps.idempotent:app"
STALL = 2.5   # scenario seconds the first model call stalls
IDLE = 1.0    # balancer idle timeout before the first byte: the retry comes while the first run goes on

pytestmark = pytest.mark.skipif(not sl.redis_available(), reason="redis-server is not installed")


@pytest.fixture(scope="module")
def stack():
    with sl.RedisServer() as redis, sl.MockLLM(tokens=12) as mock:
        env = {"STREAMLAB_MODEL_URL": mock.base_url, "STREAMLAB_REDIS_URL": redis.url}
        with sl.Uvicorn(APP, env=env) as a, sl.Uvicorn(APP, env=env) as b, \
                sl.Balancer([a, b], retry=True, non_idempotent=True, max_fails=0, idle_timeout=IDLE) as lb:
            for worker in (a, b):  # warm each worker's first model call (imports, client): the retry must be quick
                reply = httpx.post(worker.url + "/answer", params={"q": "warm up", "spec": "tokens=1"}, timeout=30)
                assert reply.status_code == 200, reply.text
            yield {"mock": mock, "lb": lb, "redis": redis, "workers": [a, b]}


def _scenario() -> tuple[str, dict]:
    tag = uuid.uuid4().hex[:8]
    # a spec string of its own per scenario: first=1 counts requests per spec
    return f"incident {tag}", {"spec": f"stall@0={STALL},first=1,seed={int(tag, 16) % 1000}"}


def _model_runs(mock, prompt: str) -> int:
    return sum(1 for entry in mock.journal.chat() if entry.last_user_message == prompt)


def _post(lb, prompt: str, params: dict, headers: dict | None = None) -> httpx.Response:
    return httpx.post(lb.url + "/answer", params={"q": prompt, **params}, headers=headers or {}, timeout=30)


def test_balancer_retry_without_a_key_runs_the_model_twice(stack):
    prompt, params = _scenario()
    retries = stack["lb"].stats()["retries"]
    reply = _post(stack["lb"], prompt, params)
    assert reply.status_code == 200
    assert stack["lb"].stats()["retries"] == retries + 1
    assert _model_runs(stack["mock"], prompt) == 2  # one for the worker the balancer gave up on, one for the retry


def test_balancer_retry_with_a_key_runs_the_model_once_and_replays_the_answer(stack):
    prompt, params = _scenario()
    key = {"Idempotency-Key": uuid.uuid4().hex}
    retries = stack["lb"].stats()["retries"]
    first = _post(stack["lb"], prompt, params, key)
    # the balancer's retry reached the other worker while the first run went on: 409, passed on
    assert first.status_code == 409 and first.headers["retry-after"] == "1"
    assert first.json()["error"]["code"] == "idempotency_key_in_use"
    assert stack["lb"].stats()["retries"] == retries + 1
    deadline = time.monotonic() + 15
    reply = first
    while reply.status_code == 409 and time.monotonic() < deadline:  # the client retries after Retry-After
        time.sleep(float(reply.headers["retry-after"]))
        reply = _post(stack["lb"], prompt, params, key)
    assert reply.status_code == 200 and reply.headers["idempotent-replayed"] == "true"
    assert reply.json()["text"]
    assert _model_runs(stack["mock"], prompt) == 1
    again = _post(stack["lb"], prompt, params, key)  # any later repeat: the same answer, no run
    assert again.json() == reply.json() and _model_runs(stack["mock"], prompt) == 1


def test_same_key_with_another_body_is_a_422_and_runs_nothing(stack):
    prompt, params = _scenario()
    key = {"Idempotency-Key": uuid.uuid4().hex}
    params = {"spec": "tokens=5"}
    assert _post(stack["lb"], prompt, params, key).status_code == 200
    other = _post(stack["lb"], prompt + " (edited)", params, key)
    assert other.status_code == 422 and other.json()["error"]["code"] == "idempotency_key_reused"
    assert _model_runs(stack["mock"], prompt + " (edited)") == 0


@pytest.mark.parametrize("key", ["", "x" * 256, "caf\u00e9"])
def test_bad_keys_get_a_400(stack, key):
    reply = httpx.post(stack["lb"].url + "/answer", headers={"Idempotency-Key": key.encode("utf-8")}, timeout=10)
    assert reply.status_code == 400 and reply.json()["error"]["code"] == "invalid_idempotency_key"


async def _asgi_call(app, body: bytes, key: str) -> tuple[int, dict, bytes]:
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/x", "query_string": b"",
             "headers": [(b"idempotency-key", key.encode())]}
    await app(scope, receive, send)
    head = sent[0]
    return head["status"], dict(head["headers"]), b"".join(m.get("body", b"") for m in sent[1:])


@pytest.mark.parametrize("make_store", [InMemoryKeys, "redis"])
def test_a_runner_that_raises_releases_its_key_and_the_next_request_runs(stack, make_store):
    calls = []

    async def flaky(scope, receive, send):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("model down")
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok", "more_body": False})

    store = RedisKeys(stack["redis"].url) if make_store == "redis" else make_store()
    app = Idempotent(flaky, store=store)
    key = uuid.uuid4().hex

    async def scenario():
        with pytest.raises(RuntimeError):
            await _asgi_call(app, b"{}", key)
        status, _, body = await _asgi_call(app, b"{}", key)
        replay = await _asgi_call(app, b"{}", key)
        return status, body, replay

    status, body, (replay_status, replay_headers, replay_body) = asyncio.run(scenario())
    assert (status, body) == (200, b"ok") and (replay_status, replay_body) == (200, b"ok")
    assert replay_headers[b"idempotent-replayed"] == b"true" and len(calls) == 2
    assert app.stats == {"runs": 2, "replays": 1, "conflicts": 0, "mismatches": 0}


def test_idempotent_checks_its_settings():
    with pytest.raises(ValueError):
        Idempotent(None, lease=0)
    with pytest.raises(ValueError):
        Idempotent(None, wait=float("nan"))
