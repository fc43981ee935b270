"""Scenario time vs wall-clock time.

The articles speak in production units: a 30 s proxy timeout, a 300 s stream,
a 3600 s setting. A notebook cannot wait that long, so every duration that a
streamlab object takes (model timing, stalls, proxy and gateway timeouts,
client timeouts created through streamlab) is written in *scenario seconds* and
run at ``scenario seconds * factor`` of wall-clock time.

    >>> import streamlab as sl
    >>> sl.time_scale(0.01)            # 30 s of scenario time take 0.3 s
    >>> with sl.time_scale(0.001):     # or for a block only
    ...     ...

Measurements taken by the recorder are converted back, so a table still shows
"cut at 30.0 s". The factor travels to subprocesses (app servers) in the
``STREAMLAB_TIME_SCALE`` environment variable. The default factor is 1.0.
"""

from __future__ import annotations

import os

__all__ = ["time_scale", "current_time_scale", "to_real", "to_scenario", "scale_sdk_backoff"]

ENV_VAR = "STREAMLAB_TIME_SCALE"


def _from_env() -> float:
    raw = os.environ.get(ENV_VAR, "1")
    try:
        value = float(raw)
    except ValueError as exc:  # pragma: no cover - a user typo
        raise ValueError(f"{ENV_VAR}={raw!r} is not a number") from exc
    if value <= 0:
        raise ValueError(f"{ENV_VAR} must be > 0, got {value}")
    return value


_factor = _from_env()


class time_scale:  # noqa: N801 - used like a function
    """Set the time scale; also usable as ``with time_scale(f): ...`` to restore it after."""

    def __init__(self, factor: float) -> None:
        global _factor
        factor = float(factor)
        if not factor > 0:
            raise ValueError(f"time scale must be > 0, got {factor}")
        self.previous = _factor
        self.factor = factor
        _factor = factor
        os.environ[ENV_VAR] = repr(factor)

    def __enter__(self) -> "time_scale":
        return self

    def __exit__(self, *exc: object) -> None:
        global _factor
        _factor = self.previous
        os.environ[ENV_VAR] = repr(self.previous)

    def __repr__(self) -> str:
        return f"time_scale({self.factor})"


def current_time_scale() -> float:
    """The factor in force: wall-clock seconds per scenario second."""
    return _factor


def to_real(seconds: float | None) -> float | None:
    """Scenario seconds -> wall-clock seconds (None stays None)."""
    return None if seconds is None else seconds * _factor


def to_scenario(seconds: float | None) -> float | None:
    """Wall-clock seconds -> scenario seconds (None stays None)."""
    return None if seconds is None else seconds / _factor


_sdk_original_backoff = None


def scale_sdk_backoff(enable: bool = True) -> None:
    """Run the openai SDK's retry backoff on the scenario clock (idempotent; ``False`` undoes it).

    The SDK sleeps 0.5 s, 1 s, 2 s ... (jittered, capped at 8 s) between retries in
    wall-clock time, while every other duration in a streamlab run is scaled by
    ``time_scale``; without this a retry would count 1/scale times too long in the
    scenario seconds a table prints. The number of retries and the formula stay the
    SDK's own, and a server's ``Retry-After`` is left alone (the mock scales it already).
    Taught in notebooks/01_autogen and 03_crewai.
    """
    global _sdk_original_backoff
    from openai._base_client import BaseClient

    if not enable:
        if _sdk_original_backoff is not None:
            BaseClient._calculate_retry_timeout = _sdk_original_backoff  # type: ignore[method-assign]
            _sdk_original_backoff = None
        return
    if _sdk_original_backoff is not None:
        return
    original = BaseClient._calculate_retry_timeout

    def scaled(self, remaining_retries, options, response_headers=None):  # type: ignore[no-untyped-def]
        seconds = original(self, remaining_retries, options, response_headers)
        if self._parse_retry_after_header(response_headers) is not None:
            return seconds
        return seconds * _factor

    _sdk_original_backoff = original
    BaseClient._calculate_retry_timeout = scaled  # type: ignore[method-assign]
