"""The OpenAI Responses API in the mock: streamed runs, background runs that outlive the request, resume.

    POST /v1/responses                         create; ``stream``, ``background`` (needs ``store``)
    GET  /v1/responses/{id}                    the response object as it is now
    GET  /v1/responses/{id}?stream=true&starting_after=N
                                               a background run's events after sequence number N,
                                               then the live ones until the run ends
    POST /v1/responses/{id}/cancel             stop a background run (``status: cancelled``)
    DELETE /v1/responses/{id}                  forget it
    .../s/<spec>/v1/responses...               the same routes with a behaviour spec

A run and its delivery are two things (design note). The *run* (``Run``) is a task in the mock's
event loop: it appends every event, numbered by ``sequence_number`` from 0, to its own list on
the schedule ``TTFT + i * ITL`` of the spec. A *delivery* is one HTTP response that follows a
run's list from some position and sends each event through the request's fault chain, as the
chat route does: ``response.created`` .. ``response.content_part.added`` are ``start`` events,
each ``response.output_text.delta`` a ``token`` event (numbered by the deltas *this* connection
sent: ``cut@12`` on a resume cuts after 12 more), and the closing events (``output_text.done``
.. ``response.completed``) one ``finish`` event. So ``cut@12`` cuts the connection, not the run:

    background=true    the run goes on when its follower leaves; ``GET ...?stream=true&starting_after=N``
                       replays what came after N and follows live (what OpenAI's background mode does)
    background=false   a follower that leaves ends the run (``status: cancelled``), as closing a
                       normal streaming request ends the generation; ``ondisconnect=continue`` keeps it
    stall@N=S          holds the delivery, not the run: a background run is further on meanwhile

The answer is the chat route's answer for the same spec and seed (``_text.generate``); an
``input`` whose last item is an ``assistant`` message is a continuation (``continuation``): the
run sends the rest of the answer after the words the prefix already has.

Bounds: at most ``MAX_RUNS`` runs are kept (finished ones leave first), at most ``MAX_ACTIVE``
run at once and their events take at most ``MAX_EVENT_BYTES`` in all; past that a create gets a
429. Every request is a journal entry (``entry.options["response_id"]``); the creating entry
counts ``tokens_generated`` as the run goes, after its client left too.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import random
import re
import threading
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from . import _spec
from ._events import Event
from ._mock_exchange import Ended, Exchange, Truncated
from ._text import count_tokens, echo_tokens, generate
from ._timescale import to_real
from ._validate import RequestError, content_text

if TYPE_CHECKING:  # pragma: no cover
    from ._mock import MockApp

__all__ = ["Run", "Runs", "continuation", "handles", "route", "MAX_RUNS", "MAX_ACTIVE", "MAX_EVENT_BYTES"]

MAX_RUNS = 256            # runs kept (finished ones evicted oldest first)
MAX_ACTIVE = 64           # runs generating at once
MAX_EVENT_BYTES = 64 * 1024 * 1024  # event bytes kept by all runs together
POLL = 0.05               # real seconds: a follower waiting for the next event checks its client this often
TERMINAL = ("completed", "incomplete", "cancelled", "failed")
_ROUTE = re.compile(r"^(?:/v1)?/responses(?:/(?P<id>[^/]+)(?P<cancel>/cancel)?)?$")
_ID = re.compile(r"^resp_[A-Za-z0-9_]{1,64}$")


def continuation(messages: list[dict], tokens: list[str]) -> list[str]:
    """The tokens still to send when the last message is an assistant prefix (the continue convention).

    A trailing ``assistant`` message with ``k`` words of text asks the mock to continue its own
    answer: it sends ``tokens[k:]``, so ``prefix + "".join(rest)`` is the uncut answer when the
    prefix was the first ``k`` tokens of it. Anything else returns ``tokens`` unchanged: an assistant
    message that is not last, an empty prefix, and an assistant turn that made tool calls (a finished
    turn, not a prefix).
    """
    if not messages or not isinstance(messages[-1], dict) or messages[-1].get("role") != "assistant":
        return tokens
    if messages[-1].get("tool_calls"):
        return tokens
    prefix = content_text(messages[-1].get("content"))
    return tokens[count_tokens(prefix):] if prefix else tokens


def handles(route: str) -> bool:
    return _ROUTE.match(route) is not None


# -- the request body -------------------------------------------------------------------------------
def _bad(message: str, param: str | None = None, code: str | None = "invalid_value", status: int = 400) -> RequestError:
    return RequestError(status, message, param=param, code=code)


def _no_constant(name: str) -> Any:
    raise ValueError(name)


def _depth(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        for child in (node.values() if isinstance(node, dict) else node):
            if isinstance(child, (dict, list)):
                if depth + 1 > limit:
                    return True
                stack.append((child, depth + 1))
    return False


def _text_of(content: Any, param: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise _bad(f"Invalid value for '{param}[{j}]': expected a content part object with a 'type'.",
                           f"{param}[{j}]", "invalid_type")
            text = part.get("text", "")
            if not isinstance(text, str):
                raise _bad(f"Invalid type for '{param}[{j}].text': expected a string.", f"{param}[{j}].text",
                           "invalid_type")
            parts.append(text)
        return "".join(parts)
    raise _bad(f"Invalid type for '{param}': expected a string or an array of content parts, "
               f"but got {_spec.echo(content, 40)}.", param, "invalid_type")


def parse_request(raw: bytes) -> tuple[dict, list[dict]]:
    """Check a ``POST /v1/responses`` body; return it and the conversation as chat messages."""
    try:
        body = json.loads(raw, parse_constant=_no_constant)
    except RecursionError:
        raise _bad(f"The JSON body is nested deeper than {_spec.MAX_JSON_DEPTH} levels.", code="invalid_json") from None
    except (ValueError, UnicodeDecodeError):
        raise _bad("We could not parse the JSON body of your request. The OpenAI API expects a JSON payload.",
                   code="invalid_json") from None
    if not isinstance(body, dict):
        raise _bad("The request body must be a JSON object.", code="invalid_type")
    if _depth(body, _spec.MAX_JSON_DEPTH):
        raise _bad(f"The JSON body is nested deeper than {_spec.MAX_JSON_DEPTH} levels.", code="invalid_json")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("Missing required parameter: 'model' (a non-empty string).", "model", "missing_required_parameter")
    for flag in ("stream", "background", "store"):
        if flag in body and body[flag] is not None and not isinstance(body[flag], bool):
            raise _bad(f"Invalid type for '{flag}': expected a boolean, but got {_spec.echo(body[flag], 40)}.",
                       flag, "invalid_type")
    if body.get("background") and body.get("store") is False:
        raise _bad("Background mode requires 'store' to be true.", "store")
    limit = body.get("max_output_tokens")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                              or not 1 <= limit <= _spec.MAX_TOKENS):
        raise _bad(f"Invalid 'max_output_tokens': expected an integer 1 .. {_spec.MAX_TOKENS}, "
                   f"but got {_spec.echo(limit, 40)}.", "max_output_tokens")
    messages: list[dict] = []
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise _bad("Invalid type for 'instructions': expected a string.", "instructions", "invalid_type")
        messages.append({"role": "system", "content": instructions})
    items = body.get("input")
    if isinstance(items, str):
        messages.append({"role": "user", "content": items})
    elif isinstance(items, list) and items:
        if len(items) > 10_000:
            raise _bad("Invalid 'input': at most 10000 items.", "input")
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise _bad(f"Invalid type for 'input[{i}]': expected an object.", f"input[{i}]", "invalid_type")
            role = item.get("role")
            if item.get("type", "message") != "message" or role not in ("user", "assistant", "system", "developer"):
                raise _bad(f"Invalid 'input[{i}]': the mock takes message items with a role of user, assistant, "
                           "system or developer.", f"input[{i}]")
            messages.append({"role": role, "content": _text_of(item.get("content", ""), f"input[{i}].content")})
    else:
        raise _bad("Missing required parameter: 'input' (a string or a non-empty array of messages).", "input",
                   "missing_required_parameter")
    return body, messages


# -- runs ---------------------------------------------------------------------------------------------
def _frame(kind: str, payload: dict) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


class Run:
    """One response: its events (``frames``, index = ``sequence_number``) and its state."""

    def __init__(self, rid: str, *, body: dict, model: str, tokens: list[str], finish: str,
                 options: dict[str, Any], prompt_tokens: int, entry: Any) -> None:
        self.id = rid
        self.body = body
        self.model = model
        self.tokens = tokens
        self.finish = finish  # "stop" or "length" (max_output_tokens)
        self.options = options
        self.prompt_tokens = prompt_tokens
        self.entry = entry  # the creating journal entry
        self.background = bool(body.get("background"))
        self.status = "queued" if self.background else "in_progress"
        self.created_at = int(time.time())
        self.frames: list[tuple[str, bytes]] = []  # (start | token | finish, SSE bytes)
        self.nbytes = 0
        # bytes reserved in ``Runs`` when the run is added: a bound on its events, trued up at its end
        self.reserved = 200 * len(tokens) + 5 * sum(len(t) for t in tokens) + 16_384
        self.tokens_generated = 0
        self.followers = 0
        self.task: asyncio.Task | None = None
        self.item_id = f"msg_{rid[5:]}"
        self._changed: asyncio.Event | None = None

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    def text(self) -> str:
        return "".join(self.tokens[: self.tokens_generated])

    def snapshot(self) -> dict[str, Any]:
        """The response object as it is now (what ``client.responses.retrieve(id)`` parses)."""
        text = self.text()
        status = self.status
        item_status = "completed" if status == "completed" else ("incomplete" if self.done else "in_progress")
        output = [] if status == "queued" else [{
            "id": self.item_id, "type": "message", "role": "assistant", "status": item_status,
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}]
        usage = None
        if self.done:
            usage = {"input_tokens": self.prompt_tokens, "input_tokens_details": {"cached_tokens": 0},
                     "output_tokens": self.tokens_generated, "output_tokens_details": {"reasoning_tokens": 0},
                     "total_tokens": self.prompt_tokens + self.tokens_generated}
        return {"id": self.id, "object": "response", "created_at": self.created_at, "status": status,
                "background": self.background, "error": None,
                "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
                "instructions": self.body.get("instructions"), "max_output_tokens": self.body.get("max_output_tokens"),
                "metadata": self.body.get("metadata") or {}, "model": self.model, "output": output,
                "parallel_tool_calls": True, "previous_response_id": None, "store": self.body.get("store", True),
                "temperature": 1.0, "text": {"format": {"type": "text"}}, "tool_choice": "auto", "tools": [],
                "top_p": 1.0, "truncation": "disabled", "usage": usage, "user": None}

    # -- the event list -------------------------------------------------------
    def changed(self) -> asyncio.Event:
        if self._changed is None:
            self._changed = asyncio.Event()
        return self._changed

    def _append(self, kind: str, payload: dict, runs: "Runs") -> None:
        payload["sequence_number"] = len(self.frames)
        data = _frame(payload["type"], payload)
        self.frames.append((kind, data))
        self.nbytes += len(data)

    def _wake(self) -> None:
        event, self._changed = self._changed, None
        if event is not None:
            event.set()

    async def produce(self, runs: "Runs") -> None:
        """Generate the events on the spec's schedule (a task of the mock's loop)."""
        t0 = self.entry.t_start
        ttft, itl, jitter = (to_real(float(self.options[k])) for k in ("ttft", "itl", "jitter"))
        rng = random.Random(int(self.options["seed"]))
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        where = {"item_id": self.item_id, "output_index": 0, "content_index": 0}
        try:
            self._append("start", {"type": "response.created", "response": self.snapshot()}, runs)
            self.status = "in_progress"
            self._append("start", {"type": "response.in_progress", "response": self.snapshot()}, runs)
            self._append("start", {"type": "response.output_item.added", "output_index": 0, "item": {
                "id": self.item_id, "type": "message", "role": "assistant", "status": "in_progress",
                "content": []}}, runs)
            self._append("start", {"type": "response.content_part.added", **where, "part": part}, runs)
            self._wake()
            for i, token in enumerate(self.tokens):
                due = t0 + ttft + i * itl + (rng.uniform(-jitter, jitter) if jitter else 0.0)
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                self.tokens_generated += 1
                self.entry.tokens_generated = self.tokens_generated
                self._append("token", {"type": "response.output_text.delta", **where, "delta": token,
                                       "logprobs": []}, runs)
                self._wake()
            text = self.text()
            self.status = "completed" if self.finish == "stop" else "incomplete"
            item_status = "completed" if self.finish == "stop" else "incomplete"
            self._append("finish", {"type": "response.output_text.done", **where, "text": text, "logprobs": []}, runs)
            self._append("finish", {"type": "response.content_part.done", **where, "part": {**part, "text": text}},
                         runs)
            snap = self.snapshot()
            self._append("finish", {"type": "response.output_item.done", "output_index": 0,
                                    "item": {**snap["output"][0], "status": item_status}}, runs)
            self._append("finish", {"type": f"response.{self.status}", "response": snap}, runs)
        except asyncio.CancelledError:
            if not self.done:
                self.status = "cancelled"
        finally:
            if not self.done:
                self.status = "failed"
            self._wake()
            runs.finished(self)


class Runs:
    """The runs one mock keeps: bounded in number, active runs and event bytes; thread-safe."""

    def __init__(self, *, max_runs: int = MAX_RUNS, max_active: int = MAX_ACTIVE,
                 max_bytes: int = MAX_EVENT_BYTES) -> None:
        self.max_runs, self.max_active, self.max_bytes = max_runs, max_active, max_bytes
        self._runs: "collections.OrderedDict[str, Run]" = collections.OrderedDict()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._runs)

    def __iter__(self):
        with self._lock:
            return iter(list(self._runs.values()))

    def get(self, rid: str) -> Run | None:
        with self._lock:
            return self._runs.get(rid)

    @property
    def active(self) -> int:
        with self._lock:
            return sum(1 for r in self._runs.values() if not r.done)

    def new_id(self) -> str:
        return f"resp_streamlab{next(self._ids):06d}"

    def add(self, run: Run) -> None:
        with self._lock:
            self._evict()
            active = sum(1 for r in self._runs.values() if not r.done)
            if active >= self.max_active or self.nbytes + run.reserved > self.max_bytes \
                    or len(self._runs) >= self.max_runs:
                raise RequestError(429, f"The mock keeps at most {self.max_active} running responses and "
                                   f"{self.max_bytes} bytes of events; cancel or wait for one.",
                                   type="rate_limit_error", code="rate_limit_exceeded")
            self._runs[run.id] = run
            self.nbytes += run.reserved

    def _evict(self) -> None:
        for rid in [r.id for r in self._runs.values() if r.done]:
            if len(self._runs) < self.max_runs and self.nbytes < self.max_bytes:
                return
            gone = self._runs.pop(rid)
            self.nbytes -= gone.reserved

    def finished(self, run: Run) -> None:
        """A run ended: its reservation becomes what its events take; finished runs past the bounds leave."""
        with self._lock:
            if self._runs.get(run.id) is run:  # not deleted meanwhile
                self.nbytes += run.nbytes - run.reserved
            run.reserved = run.nbytes
            self._evict()

    def delete(self, rid: str) -> Run | None:
        with self._lock:
            run = self._runs.pop(rid, None)
            if run is not None:
                self.nbytes -= run.reserved
        if run is not None and run.task is not None and not run.done:
            run.task.cancel()
        return run


# -- routes -------------------------------------------------------------------------------------------
def _not_found(rid: str) -> RequestError:
    return RequestError(404, f"Response with id {_spec.echo(rid, 80)} not found.", param="response_id",
                        code="not_found")


async def route(app: "MockApp", scope: dict, receive: Any, send: Any, path: str, spec: str) -> None:
    """Serve one Responses API request on ``path`` (the route without ``/s/<spec>``); bad input
    raises ``RequestError``, which the caller answers."""
    method = scope["method"]
    match = _ROUTE.match(path)
    if match is None:
        raise RequestError(404, f"Unknown route {_spec.echo(path)}.")
    rid, cancel = match.group("id"), match.group("cancel")
    runs: Runs = app.responses
    if rid is None:
        if method != "POST":
            raise RequestError(405, f"Method {_spec.echo(method, 20)} not allowed on /v1/responses; use POST.")
        await _create(app, scope, receive, send, spec)
        return
    if not _ID.match(rid):
        raise _not_found(rid)
    if cancel:
        if method != "POST":
            raise RequestError(405, f"Method {_spec.echo(method, 20)} not allowed on /v1/responses/{{id}}/cancel; "
                               "use POST.")
        run = runs.get(rid)
        if run is None:
            raise _not_found(rid)
        if not run.background:
            raise RequestError(400, "Only responses created with background=true can be cancelled.",
                               param="response_id", code="invalid_request")
        if not run.done and run.task is not None:
            run.task.cancel()
            for _ in range(5):
                await asyncio.sleep(0)
        app.journal.new(method, path).ended = "complete"
        await app._json(send, 200, run.snapshot())
        return
    if method == "DELETE":
        run = runs.delete(rid)
        if run is None:
            raise _not_found(rid)
        await app._json(send, 200, {"id": rid, "object": "response", "deleted": True})
        return
    if method != "GET":
        raise RequestError(405, f"Method {_spec.echo(method, 20)} not allowed on /v1/responses/{{id}}; use GET.")
    query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True))
    stream = query.get("stream", "false").lower()
    if stream not in ("true", "false"):
        raise RequestError(400, f"Invalid 'stream': expected true or false, got {_spec.echo(stream, 20)}.",
                           param="stream", code="invalid_value")
    after = -1
    if "starting_after" in query:
        text = query["starting_after"]
        if not re.fullmatch(r"-?[0-9]{1,9}", text, re.ASCII) or int(text) < -1:
            raise RequestError(400, f"Invalid 'starting_after': expected a sequence number (an integer >= -1), "
                               f"got {_spec.echo(text, 40)}.", param="starting_after", code="invalid_value")
        after = int(text)
    run = runs.get(rid)
    if run is None:
        raise _not_found(rid)
    if stream == "false":
        await app._json(send, 200, run.snapshot())
        return
    if not run.background:
        raise RequestError(400, "This response cannot be streamed because it was not created with background=true.",
                           param="stream", code="invalid_request")
    entry = app.journal.new(method, path)
    entry.options = {"response_id": rid, "starting_after": after}
    await _deliver(app, scope, receive, send, spec, entry, run, after, creator=False)


async def _create(app: "MockApp", scope: dict, receive: Any, send: Any, spec: str) -> None:
    opened = await app.open_entry(scope, receive, spec, parse_request)
    if opened is None:
        return
    entry, (body, messages), faults, options = opened
    entry.options = dict(options)
    n = int(options["tokens"])
    tokens = (echo_tokens(entry.last_user_message or next((content_text(m["content"]) for m in messages
                                                           if m["role"] == "user"), ""), n)
              if options.get("echo") else generate(n, int(options["seed"])))
    tokens = continuation(messages, tokens)
    finish = "stop"
    limit = body.get("max_output_tokens")
    if limit is not None and limit < len(tokens):
        tokens, finish = tokens[:limit], "length"
    run = Run(app.responses.new_id(), body=body, model=body["model"], tokens=tokens, finish=finish,
              options=options, prompt_tokens=sum(count_tokens(m["content"]) for m in messages), entry=entry)
    entry.options["response_id"] = run.id
    entry.tokens_planned = len(tokens)
    chat_body = {"model": body["model"], "messages": messages, "max_tokens": limit}
    stream = bool(body.get("stream"))
    ex = _exchange(app, send, receive, entry, chat_body, stream)
    try:
        await _chain(faults, Event("request"), ex)  # 429 / 500 / context / slow headers: no run starts
    except Ended:
        _close(ex, entry)
        return
    try:
        app.responses.add(run)
    except RequestError as err:
        entry.status, entry.ended = err.status, "rejected"
        raise
    run.task = asyncio.ensure_future(run.produce(app.responses))
    entry.log.add("run", note=f"run {run.id} background={run.background}", conn=entry.id)
    if run.background and not stream:  # the job id at once; the run goes on in the mock
        await ex.send_whole(200, [(b"content-type", b"application/json")], json.dumps(run.snapshot()).encode())
        entry.status, entry.ended = 200, "complete"
        entry.t_end = time.perf_counter()
        return
    await _deliver(app, scope, receive, send, spec, entry, run, -1, creator=True, ex=ex, faults=faults)


def _exchange(app: "MockApp", send: Any, receive: Any, entry: Any, body: dict, stream: bool) -> Exchange:
    entry.stream = stream
    ex = Exchange(app, send, entry, body, stream)
    ex._receive = receive
    if ex._cycle is None or not hasattr(ex._cycle, "disconnected"):
        ex.watch()
    return ex


async def _chain(faults: list, event: Event, ex: Exchange) -> Event | None:
    for fault in faults:
        event = await fault.act(event, ex)
        if event is None:
            return None
    return event


def _close(ex: Exchange, entry: Any) -> None:
    if ex._watcher is not None:
        ex._watcher.cancel()
    entry.t_end = time.perf_counter()
    if ex.is_disconnected() and entry.ended in ("open", "complete") and not getattr(ex, "closed_by_us", False):
        entry.ended = "client disconnected"
        ex.note("close", "client disconnected")


async def _deliver(app: "MockApp", scope: dict, receive: Any, send: Any, spec: str, entry: Any, run: Run,
                   after: int, *, creator: bool, ex: Exchange | None = None, faults: list | None = None) -> None:
    """Follow ``run`` from sequence number ``after`` through the fault chain, until the run ends."""
    if ex is None:
        try:
            faults, options, entry.spec = app._resolve(spec)
        except RequestError as err:
            entry.status, entry.ended = err.status, "rejected"
            raise
        entry.faults = [f.spec() for f in faults]
        ex = _exchange(app, send, receive, entry, {"model": run.model, "messages": [
            {"role": "user", "content": ""}]}, True)
        try:
            await _chain(faults, Event("request"), ex)
        except Ended:
            _close(ex, entry)
            return
    faults = faults or []
    run.followers += 1
    try:
        await _follow(ex, faults, run, after, entry)
    except Ended:
        pass
    except Truncated:  # a silent end of a non-streaming answer: what it has so far
        await ex.send_whole(200, [(b"content-type", b"application/json")], json.dumps(run.snapshot()).encode())
    finally:
        run.followers -= 1
        if creator and not run.background and not run.done and not ex.keep_generating and run.task is not None:
            run.task.cancel()  # a normal (not background) request's run ends with its connection
            entry.log.add("fault", note=f"run {run.id} cancelled: its client left", conn=entry.id)
        _close(ex, entry)


async def _wait(ex: Exchange, run: Run, pos: int) -> None:
    """Until the run has an event at ``pos`` or ends; ``left`` when the client goes meanwhile."""
    while pos >= len(run.frames) and not run.done:
        changed = run.changed()
        try:
            await asyncio.wait_for(changed.wait(), POLL)
        except asyncio.TimeoutError:
            pass
        if ex.is_disconnected() and not ex.gone:
            ex.left("waiting for the run" if ex.stream else "non-streaming wait")


async def _follow(ex: Exchange, faults: list, run: Run, after: int, entry: Any) -> None:
    pos = max(0, after + 1)
    sent = 0  # deltas this connection sent (the index faults see)
    if ex.stream:
        await ex.start_response(200, [(b"content-type", b"text/event-stream; charset=utf-8"),
                                      (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")])
    while True:
        await _wait(ex, run, pos)
        if pos >= len(run.frames):
            break  # the run ended (cancelled: no closing events)
        kind, data = run.frames[pos]
        if kind == "finish":  # the closing events are appended together: wait for the last one
            while not run.done:
                await _wait(ex, run, len(run.frames))
            data = b"".join(d for _, d in run.frames[pos:])
            pos = len(run.frames)
            reason = "stop" if run.finish == "stop" else "length"
            event = await _chain(faults, Event("finish", sent, data, reason=reason), ex)
            if ex.stream and event is not None and not ex.gone:
                await ex.write(event.data)
            entry.finish_reason = event.reason if event is not None else None
            continue
        pos += 1
        if ex.gone:
            continue
        if kind == "token":
            event = await _chain(faults, Event("token", sent, data), ex)
            sent += 1
            entry.tokens_sent += 1
        else:
            event = await _chain(faults, Event("start", 0, data), ex)
        if ex.stream and event is not None and not ex.gone:
            await ex.write(event.data)
    if ex.gone:
        return
    event = await _chain(faults, Event("done", 0, b""), ex)
    if ex.stream:
        if event is not None and event.data:
            await ex.write(event.data)
        await ex.finish_body()
    else:
        body = json.dumps(run.snapshot()).encode()
        event = await _chain(faults, Event("body", data=body[: len(body) // 2] if ex.malformed_body else body), ex)
        await ex.send_whole(200, [(b"content-type", b"application/json")], event.data if event else b"")
    if entry.ended == "open":
        entry.ended = "complete"
    ex.note("close", "complete")
