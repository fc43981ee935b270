"""Fixes that hold: small pieces to lift into your own app, each proven against real faults.

    from streamlab.fixes import Heartbeat, heartbeat, guard

| fix | what it is | notebook |
|---|---|---|
| ``heartbeat(source, every=15)`` | SSE ``: ping`` comments into a silent generator of frames | 06_fixes (planned) |
| ``Heartbeat(app, every=15)`` | the same as plain ASGI middleware for any ``text/event-stream`` response | 06_fixes (planned) |
| ``guard(stream)`` | raise ``IncompleteStream`` when a stream ends without finish_reason, with ``length``, or short of its usage | 06_fixes (planned) |
"""

from ._guard import IncompleteStream, LengthTruncation, UsageMismatch, guard
from ._heartbeat import PING, Heartbeat, heartbeat

__all__ = ["heartbeat", "Heartbeat", "PING", "guard", "IncompleteStream", "LengthTruncation", "UsageMismatch"]
