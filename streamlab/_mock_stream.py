"""The pipeline that shapes one answer: plan the tokens, then send them through the fault chain.

    request -> [faults] -> headers -> start -> token 0 .. token n-1 -> finish -> usage? -> done

Token ``i`` is due at ``TTFT + i * ITL`` (+ seeded, bounded jitter) after the request arrived; a
stall shifts the rest of the schedule (``Exchange.offset``). The bytes are shaped here, in plain
ASGI ``send`` calls (STYLE.md, item 9). The body reaching this module has passed
``streamlab._validate.parse_body``, so every field read here has the type the schema promises.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import TYPE_CHECKING, Any

from ._events import Event, Fault
from ._mock_exchange import Ended as _Ended
from ._mock_exchange import Exchange
from ._mock_exchange import Truncated as _Truncated
from ._mock_journal import MAX_ENTRY_SAMPLES
from ._mock_responses import continuation
from ._text import echo_tokens, generate
from ._timescale import to_real
from ._validate import content_text as _content_text

if TYPE_CHECKING:  # pragma: no cover
    from ._mock import MockApp

__all__ = ["plan", "respond", "run_chain", "example_arguments"]


def plan(app: "MockApp", ex: Exchange, options: dict[str, Any]) -> tuple[list[str], dict | None, str]:
    """The tokens to send, an optional tool call, and the finish reason."""
    body = ex.body
    n = int(options["tokens"])
    last = body["messages"][-1]
    tools = body.get("tools") or []
    tool_mode = str(options.get("tools") or "auto")
    if tools and tool_mode != "off" and body.get("tool_choice") != "none" and last.get("role") != "tool":
        names = [t.get("function", {}).get("name") for t in tools if isinstance(t, dict)]
        name = tool_mode if tool_mode in names else names[0]
        schema = next(t["function"].get("parameters") or {} for t in tools if t["function"].get("name") == name)
        arguments = json.dumps(app.tool_arguments.get(name) or example_arguments(schema))
        pieces = [arguments[i:i + 8] for i in range(0, len(arguments), 8)] or [""]
        call = {"id": f"call_{ex.entry.id}_0", "name": name, "arguments": arguments}
        return pieces, call, "tool_calls"
    if last.get("role") == "tool":
        result = _content_text(last.get("content"))
        lead = ["Tool", " result:"] + [" " + w for w in result.split()[:8]] + [" ."]
        rest = generate(n, int(options["seed"]))
        tokens = (lead + [" " + rest[0]] + rest[1:])[:n] if rest else lead[:n]
    elif options.get("echo"):
        tokens = echo_tokens(ex.entry.last_user_message, n)
    else:
        tokens = generate(n, int(options["seed"]))
    tokens = continuation(body["messages"], tokens)  # a trailing assistant prefix: only the rest
    finish = "stop"
    if ex.max_tokens is not None and ex.max_tokens < len(tokens):
        tokens, finish = tokens[: ex.max_tokens], "length"
    return tokens, None, finish

async def run_chain(faults: list[Fault], event: Event, ex: Exchange) -> Event | None:
    for fault in faults:
        event = await fault.act(event, ex)
        if event is None:
            return None
    return event

async def respond(app: "MockApp", ex: Exchange, faults: list[Fault], options: dict[str, Any]) -> None:
    t0 = ex.entry.t_start
    await run_chain(faults, Event("request"), ex)
    tokens, call, finish = plan(app, ex, options)
    ex.entry.tokens_planned = len(tokens)
    ex.planned_finish = finish
    ttft, itl, jitter = (to_real(float(options[k])) for k in ("ttft", "itl", "jitter"))
    rng = random.Random(int(options["seed"]))
    cid = f"chatcmpl-streamlab-{ex.entry.id}"
    created = int(time.time())
    model = json.dumps(ex.body.get("model") or app.model).encode()
    include_usage = bool((ex.body.get("stream_options") or {}).get("include_usage"))

    def deadline(i: int) -> float:
        jit = rng.uniform(-jitter, jitter) if jitter else 0.0
        return t0 + ex.offset + ttft + i * itl + jit

    async def wait_for_token(i: int) -> None:
        due = deadline(i)
        if due > time.perf_counter():
            if await ex.wait_until(due):
                ex.left(("ttft wait" if i == 0 else f"at token {i}") if ex.stream else "non-streaming wait")
        elif not ex.gone and ex.is_disconnected():  # (the no-wait path: no await, as before)
            ex.left(f"at token {i}" if ex.stream else "non-streaming wait")
        ex.entry.tokens_generated += 1
        if ex.gone:
            return
        late = time.perf_counter() - due
        if len(ex.entry.lateness) < MAX_ENTRY_SAMPLES:
            ex.entry.lateness.append(late)
        app.lateness.append(late)

    usage = lambda: {"prompt_tokens": ex.prompt_tokens, "completion_tokens": ex.entry.tokens_sent,  # noqa: E731
                     "total_tokens": ex.prompt_tokens + ex.entry.tokens_sent}

    if not ex.stream:
        content: list[str] = []
        finish_reason: str | None = finish
        try:
            for i, token in enumerate(tokens):
                await wait_for_token(i)
                if ex.gone:  # ondisconnect=continue: generate (and count) the rest, send nothing
                    continue
                await run_chain(faults, Event("token", i), ex)
                content.append(token)
                ex.entry.tokens_sent += 1
            if ex.gone:
                return
            ended = await run_chain(faults, Event("finish", len(tokens), reason=finish), ex)
            finish_reason = ended.reason if ended is not None else None
        except _Truncated:
            finish_reason = None
        message: dict[str, Any] = {"role": "assistant", "content": None if call else "".join(content)}
        if call:
            message["tool_calls"] = [{"id": call["id"], "type": "function",
                                      "function": {"name": call["name"], "arguments": "".join(content)}}]
        payload = {"id": cid, "object": "chat.completion", "created": created, "model": json.loads(model),
                   "choices": [{"index": 0, "message": message, "logprobs": None,
                                "finish_reason": finish_reason}],
                   "usage": usage(), "system_fingerprint": None}
        data = json.dumps(payload).encode()
        if ex.malformed_body:
            data = data[: len(data) // 2]
        event = await run_chain(faults, Event("body", data=data), ex)
        await ex.send_whole(200, [(b"content-type", b"application/json")], event.data if event else b"")
        ex.note("out", nbytes=len(event.data if event else b""))
        ex.entry.finish_reason = finish_reason
        if ex.entry.ended == "open":
            ex.entry.ended = "complete"
        return

    await ex.start_response(200, [(b"content-type", b"text/event-stream; charset=utf-8"),
                                  (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")])
    head = b'data: {"id":"' + cid.encode() + b'","object":"chat.completion.chunk","created":' + \
        str(created).encode() + b',"model":' + model + b',"system_fingerprint":null,"choices":['

    def choice(delta: bytes, reason: str | None = None) -> bytes:
        fr = b"null" if reason is None else json.dumps(reason).encode()
        return b'{"index":0,"delta":' + delta + b',"logprobs":null,"finish_reason":' + fr + b"}"

    def chunk(delta: bytes, reason: str | None = None) -> bytes:
        return head + choice(delta, reason) + b"]}\n\n"

    start = await run_chain(faults, Event("start", 0, chunk(b'{"role":"assistant","content":""}')), ex)
    if start is not None:
        await ex.write(start.data)
    for i, token in enumerate(tokens):
        await wait_for_token(i)
        if ex.gone:  # ondisconnect=continue: generate (and count) the rest, send nothing
            continue
        if call is None:
            delta = b'{"content":' + json.dumps(token).encode() + b"}"
        else:
            function = {"arguments": token}
            if i == 0:
                function = {"name": call["name"], "arguments": token}
            tc: dict[str, Any] = {"index": 0, "function": function}
            if i == 0:
                tc.update(id=call["id"], type="function")
            delta = json.dumps({"tool_calls": [tc]}).encode()
        data: bytes | None = chunk(delta)
        if faults:  # the common no-fault path skips building an Event per token
            event = await run_chain(faults, Event("token", i, data), ex)
            data = None if event is None else event.data
        if data is not None:
            await ex.write(data)
        if not ex.gone:  # (a fault that left the stream with the client gone sent nothing)
            ex.entry.tokens_sent += 1
    if ex.gone:
        return
    finish_data = chunk(b"{}", finish)
    event = await run_chain(faults, Event("finish", len(tokens), finish_data, reason=finish), ex)
    if event is not None:
        if event.reason != finish and event.data is finish_data:  # a fault changed the reason only
            event = event.replace(data=chunk(b"{}", event.reason))
        await ex.write(event.data)
        ex.entry.finish_reason = event.reason
    if include_usage or faults:
        usage_data = head + b'],"usage":' + json.dumps(usage()).encode() + b"}\n\n" if include_usage else b""
        event = await run_chain(faults, Event("usage", 0, usage_data), ex)
        if event is not None and event.reason is not None and event.data is usage_data:
            # the finish_reason rides on the usage chunk (sent even if the client did not ask for usage)
            event = event.replace(data=head + choice(b"{}", event.reason) + b'],"usage":'
                                  + json.dumps(usage()).encode() + b"}\n\n")
            ex.entry.finish_reason = event.reason
        if event is not None and event.data:
            await ex.write(event.data)
    event = await run_chain(faults, Event("done", 0, b"data: [DONE]\n\n"), ex)
    if event is not None:
        await ex.write(event.data)
    await ex.finish_body()
    if ex.entry.ended == "open":
        ex.entry.ended = "complete"
    ex.note("close", "complete")


def example_arguments(schema: dict) -> dict:
    """Deterministic arguments that satisfy a JSON schema's required properties."""
    examples = {"string": "demo", "integer": 1, "number": 1.0, "boolean": True, "array": [], "object": {}}
    props = schema.get("properties") or {}
    required = schema.get("required") or list(props)
    return {k: examples.get(_type_of(props.get(k)), "demo") for k in required}


def _type_of(prop: Any) -> str:
    """A property's JSON type: ``"string"`` unless it names one (``["integer", "null"]`` -> ``"integer"``)."""
    kind = prop.get("type", "string") if isinstance(prop, dict) else "string"
    if isinstance(kind, list):
        kind = next((k for k in kind if isinstance(k, str) and k != "null"), "string")
    return kind if isinstance(kind, str) else "string"


_example_arguments = example_arguments
