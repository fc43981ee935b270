"""Fixes that hold: small pieces to lift into your own app, each proven against real faults.

    from streamlab.fixes import Heartbeat, heartbeat

| fix | what it is | taught in |
|---|---|---|
| ``heartbeat(source, every=15)`` | SSE ``: ping`` comments into a silent generator of frames | notebooks/06_fixes |
| ``Heartbeat(app, every=15)`` | the same as plain ASGI middleware for any ``text/event-stream`` response | notebooks/06_fixes |
"""

from ._heartbeat import PING, Heartbeat, heartbeat

__all__ = ["heartbeat", "Heartbeat", "PING"]
