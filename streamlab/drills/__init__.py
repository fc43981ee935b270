"""Incident drills for team training (Wheel of Misfortune): one hidden cause per seed, the ladder on a clock.

    >>> drill = sl.drills.draw()                # a seed drawn now: its cause is printed nowhere
    >>> with drill.start():
    ...     drill.symptom()                     # what the users saw
    ...     drill.timeline(); drill.bypass("edge"); drill.logs("app")      # each costs minutes
    ...     drill.answer(layer="edge", cause="idle_timeout", fix="heartbeat")  # checked, fixed, re-run, scored
    >>> drill.debrief()                         # the cause on the multi-hop timeline

Kinds (``KINDS``, ``_kinds.py``) and fixes (``FIXES``) are data; the stack is the
mock model, a small app (``_app.py``, in-process uvicorn; for ``sync_worker_timeout``
its WSGI twin ``_wsgi.py`` under a real gunicorn subprocess with sync workers, at
``WORKER_SCALE``) and an embedded edge proxy with ``streamlab.hops`` faults, under
``SCALE``. The steps reuse
``streamlab._diagnose``'s probe and timeline (one engine with ``streamlab
diagnose``), but print facts only: never a cause name. Taught in
notebooks/07_drills.ipynb; the facilitator guide is docs/facilitator.md.
"""

from ._app import AppConfig, DrillApp
from ._drill import COSTS, SCALE, USERS, Drill, DrillError, Result, draw, score_table, seed_for
from ._kinds import CAUSES, FIXES, KINDS, LAYERS, WORKER_SCALE, Kind, Setup

__all__ = ["Drill", "draw", "seed_for", "score_table", "Result", "DrillError", "KINDS", "FIXES", "CAUSES", "LAYERS",
           "COSTS", "SCALE", "WORKER_SCALE", "Kind", "Setup", "AppConfig", "DrillApp", "USERS"]
