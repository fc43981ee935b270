"""``streamlab diagnose``: which layer cuts, holds or truncates a stream, measured from outside.

    >>> report = sl.diagnose("http://127.0.0.1:8000/v1")            # an OpenAI-compatible base URL
    >>> report = sl.diagnose("http://127.0.0.1:8000/chat/sse")      # any SSE endpoint of your app
    >>> report.verdict, report.findings[0].cause, report.to_json()
    >>> report                                                      # in a notebook: the report inline

The same ladder a person climbs by hand, as small *steps* (functions of one
``Ladder``, each returning ``Finding``s with evidence), so the drills reuse them
(``lad = Ladder.for_url(url, scale=0.02); timeline(lad); repeat(lad); lad.findings``)::

    timeline        one streaming request, every read timestamped: TTFB, TTFT, gaps, bursts,
                    headers, end markers, how it ended -> the main finding
    health          (during the timeline) a cheap request to the same server, timed: a loop that
                    cannot answer it while streaming is blocked
    repeat          when the stream was cut: once more; the same silence twice = idle timeout,
                    the same elapsed time with different silences = deadline
    concurrency     N streams at once vs one: N x slower = one stream at a time (blocked loop)
    streaming_off   (OpenAI URLs) the same request with stream=false
    bypass_hop      (``direct=``) the same request without the hop in front: does it go away?
    model_journal   (``model=``, a streamlab mock the app talks to) server-side send times
                    against client receive times: a hop held it, or cut what the model sent
    raw_sdk         (opt-in) the openai SDK's own view: exception class, finish reason

Causes and the evidence each needs are in ``CAUSES`` (``_core.py``); layers are
``proxy`` (anything between the client and the app: nginx, a load balancer, a
gateway), ``app`` (the user's server and its app server), ``model`` (the
OpenAI-compatible endpoint) and ``client`` (the diagnose probe itself).

Durations in findings are scenario seconds (``time_scale=``, default the one in
force): a stack run under ``sl.time_scale(0.02)`` is diagnosed in production units,
and silences are compared with the production defaults in ``DEFAULTS``. The
tolerance of that comparison is 10 % or 1 s, and never below 0.35 s of wall clock
(real nginx fires its timers up to 0.3 s early).

Layout: ``_core`` (layers, causes, defaults, ``Finding``, ``Observation``, ``Ladder``), ``_probe``
(one request -> ``Observation``), ``_classify`` (``Observation`` -> ``Finding``), ``_steps`` (the
ladder), ``_report`` (verdict, text, JSON, figure); ``diagnose()`` here runs them.

Design note: each probe is a real HTTP request over httpx (``fetch``), read
chunk by chunk with ``time.perf_counter()`` stamps; nothing is inferred from a
framework's exception text. What the client alone cannot prove (a hop *held* the
stream, or the model *did* send the rest) needs the server side: ``model=``.
"""

from __future__ import annotations

import socket
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from .._timescale import current_time_scale
from ._classify import classify, match_default
from ._core import CAUSES, DEFAULTS, LAYERS, PRIORITY, DiagnoseError, Finding, Ladder, Observation, _target
from ._probe import fetch, observe, probe
from ._report import Report, _pick
from ._steps import (DEFAULT_STEPS, STEPS, bypass_hop, concurrency, health, model_journal, raw_sdk, repeat,
                     streaming_off, timeline)

__all__ = ["diagnose", "Report", "Finding", "Observation", "Ladder", "DiagnoseError", "CAUSES", "LAYERS",
           "DEFAULTS", "STEPS", "DEFAULT_STEPS", "PRIORITY", "probe", "fetch", "observe", "classify", "match_default",
           "timeline", "health", "repeat", "concurrency", "streaming_off", "bypass_hop", "model_journal",
           "raw_sdk"]


def _health_candidates(ladder: Ladder) -> list[str]:
    parts = urlsplit(ladder.endpoint)
    origin = urlunsplit((parts.scheme, parts.netloc, "", "", ""))
    if ladder.kind == "openai":
        return [ladder.endpoint[: -len("/chat/completions")] + "/models"]
    return [origin + "/health", origin + "/healthz", origin + "/"]


def _find_health(ladder: Ladder) -> str | None:
    for url in _health_candidates(ladder):
        try:
            httpx.get(url, timeout=2.0)
        except httpx.HTTPError:
            continue
        return url
    return None


def _model_name(ladder: Ladder) -> str:
    try:
        data = httpx.get(ladder.endpoint[: -len("/chat/completions")] + "/models", timeout=2.0).json()
        return data["data"][0]["id"]
    except Exception:  # noqa: BLE001 - any answer without a model list: use a common name
        return "gpt-4o-mini"


def diagnose(url: str, *, kind: str | None = None, method: str = "GET", body: Any = None,
             headers: dict[str, str] | None = None, time_scale: float | None = None, max_silence: float = 120.0,
             health_url: str | None = None, direct: str | None = None, model: Any = None,
             max_tokens: int | None = None, model_name: str | None = None, concurrency_n: int = 3,
             steps: tuple[str, ...] | None = None) -> Report:
    """Run the ladder against ``url`` and say which layer cuts, holds or truncates the stream.

    Args (keyword-only, durations in scenario seconds):
        kind: "openai" (POST chat completions; default when the path ends in /v1) or "sse" (GET, or POST
            ``body``, any SSE endpoint).
        time_scale: wall-clock seconds per scenario second of the stack under test (default: the one in force).
        max_silence: the probe gives up after this long without a byte (120 s: beyond Cloudflare's 100 s).
        health_url: a cheap URL of the same server, timed while streaming (default: /health, /healthz, / of
            an SSE URL's origin; /v1/models of an OpenAI URL).
        direct: the same endpoint without the hop in front (``bypass_hop``).
        model: a streamlab ``MockLLM`` the app talks to (``model_journal``).
        max_tokens: sent with OpenAI requests.
        steps: names from ``STEPS`` (default ``DEFAULT_STEPS``; add "raw_sdk" for the SDK's view).

    Raises ``DiagnoseError`` for a URL that is not one, or nobody listening.
    """
    started = time.perf_counter()
    scale = current_time_scale() if time_scale is None else float(time_scale)
    if not scale > 0:
        raise DiagnoseError(f"time_scale must be > 0, got {time_scale}")
    ladder = _target(url, kind=kind, method=method.upper(), body=body, headers=dict(headers or {}), scale=scale,
                     max_silence=max_silence, direct=direct, model=model, max_tokens=max_tokens,
                     model_name=model_name, n=concurrency_n)
    names = tuple(steps or DEFAULT_STEPS)
    unknown = [n for n in names if n not in STEPS]
    if unknown:
        raise DiagnoseError(f"unknown steps {unknown}; known: {', '.join(STEPS)}")
    _reachable(ladder)
    if ladder.kind == "openai" and not ladder.model_name:
        ladder.model_name = _model_name(ladder)
    if "health" in names:
        ladder.health_url = health_url or _find_health(ladder)
    if "timeline" not in names:
        names = ("timeline",) + names
    for name in names:
        ladder.findings.extend(STEPS[name](ladder))
    main = _pick(ladder.findings)
    if main is None:
        verdict = "ok"
    elif main.cause == "ok":
        verdict = f"ok: {main.evidence}"
    else:
        verdict = f"{main.cause} at {main.layer}: {main.evidence}"
    return Report(url=ladder.url, kind=ladder.kind, scale=scale, verdict=verdict, findings=ladder.findings,
                  observations=ladder.observations, main=main, took=time.perf_counter() - started)


def _reachable(ladder: Ladder) -> None:
    parts = urlsplit(ladder.endpoint)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=5.0):
            pass
    except OSError as exc:
        raise DiagnoseError(f"nobody answers at {parts.hostname}:{port} ({exc.strerror or exc})") from None
