"""Fixes that hold: small pieces to lift into your own app, each proven against real faults.

    from streamlab.fixes import Heartbeat, heartbeat, guard

| fix | what it is | notebook |
|---|---|---|
| ``heartbeat(source, every=15)`` | SSE ``: ping`` comments into a silent generator of frames | 06_fixes |
| ``Heartbeat(app, every=15)`` | the same as plain ASGI middleware for any ``text/event-stream`` response | 06_fixes |
| ``guard(stream)`` | raise ``IncompleteStream`` when a stream ends without finish_reason, with ``length``, or short of its usage | 06_fixes |
| ``guard_model_client(client)`` | the same checks inside an AutoGen agent: wrap the model client passed to ``AssistantAgent`` | 06_fixes |
| ``ResumableRuns(store)`` | model call decoupled from the request; events with ids in a store; ``Last-Event-ID`` replay from any worker | 06_fixes |
| ``RedisStore(url)``, ``InMemoryStore()`` | the event store: one Redis Stream per run (``XADD``/``XREAD``), or one process's memory | 06_fixes |
| ``resume_stream(url)`` | Python SSE client that reconnects with ``Last-Event-ID`` and yields each event once | 06_fixes |
| ``BackgroundRun(client, ...)``, ``follow_response`` | a background Responses run followed across cuts with ``starting_after``; each event once | 06_fixes |
| ``continue_stream(client, model=, messages=)`` | after a chat stream's cut, ask for the rest with the partial answer as an assistant prefix; no duplicated tokens | 06_fixes |
| ``Idempotent(app, store=)``, ``InMemoryKeys()``, ``RedisKeys(url)`` | ASGI middleware: one run per ``Idempotency-Key``; a retry gets the kept answer or a 409 | 06_fixes |
"""

from ._background import BackgroundRun, follow_response
from ._continue import ContinuedStream, continue_response, continue_stream
from ._guard import IncompleteStream, LengthTruncation, UsageMismatch, guard, guard_model_client
from ._idempotent import Idempotent, InMemoryKeys, KeyStore, RedisKeys
from ._heartbeat import PING, Heartbeat, heartbeat
from ._resume import (EventStore, InMemoryStore, RedisStore, ResumableRuns, ResumableStream, SSEEvent, StoredEvent,
                      new_run_id, resume_stream)

__all__ = ["heartbeat", "Heartbeat", "PING", "guard", "guard_model_client", "IncompleteStream", "LengthTruncation",
           "UsageMismatch",
           "ResumableRuns", "EventStore", "InMemoryStore", "RedisStore", "StoredEvent", "resume_stream",
           "ResumableStream", "SSEEvent", "new_run_id",
           "BackgroundRun", "follow_response", "ContinuedStream", "continue_stream", "continue_response",
           "Idempotent", "KeyStore", "InMemoryKeys", "RedisKeys"]
