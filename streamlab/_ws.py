"""A WebSocket client that records a token stream and names how it ended (``ws_record``).

The WebSocket twin of ``record()`` for ``streamlab.apps.ws`` (one JSON text message
per token, then ``{"type": "done"}``). Every message's arrival time is kept, and so is
how the socket ended: the close code and reason from the close frame, or the exception
(a refused handshake, a connection that died without a close frame). Outcomes, in the
order they are checked, with the names of ``streamlab.Outcome``::

    handshake answered with an HTTP status >= 400 ... HTTP_ERROR          (run.status: 400, 404, 502 ...)
    handshake failed otherwise, no socket ........... ERROR_BEFORE_STREAM  (refused, reset, a 200 not a 101)
    the "done" message arrived ...................... COMPLETE
    our own timeout while waiting for a message ..... STALLED
    an {"type": "error"} message, or closed without
      a close frame (1006) or with an error code:
        after some tokens ........................... CUT_MID_STREAM
        before any token ............................ ERROR_BEFORE_STREAM
    a clean close (1000/1001) without "done" ........ SILENT_TRUNCATION

Code 1006 ("abnormal closure") is never sent on the wire: it is what a client
reports when the TCP connection ended without a close frame, e.g. a hop that cut
the tunnel at its idle timeout. Times are scenario seconds from the handshake's
start (``streamlab.time_scale``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

from ._recorder import Outcome
from ._timescale import to_real, to_scenario

__all__ = ["WSRun", "ws_record"]


@dataclass
class WSRun:
    """What ``ws_record`` saw: messages with arrival times and how the socket ended."""

    url: str
    outcome: Outcome = Outcome.ERROR_BEFORE_STREAM
    messages: list[Any] = field(default_factory=list)   # decoded JSON (or the raw text)
    times: list[float] = field(default_factory=list)    # scenario seconds from the handshake's start
    tokens: list[str] = field(default_factory=list)
    token_times: list[float] = field(default_factory=list)  # arrival of each token message
    done: bool = False
    pings: int = 0                     # application keep-alive messages ({"type": "ping"})
    status: int | None = None          # the handshake's HTTP status (101, or the refusal)
    close_code: int | None = None      # from the close frame; 1006 when there was none
    close_reason: str = ""
    error: str | None = None           # the exception that ended it (type: message)
    elapsed: float = 0.0               # scenario seconds until the end

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    def summary(self) -> str:
        end = f"close {self.close_code} {self.close_reason!r}" if self.close_code is not None else self.error
        return (f"{self.outcome.value}: {len(self.tokens)} tokens, status {self.status}, {end}, "
                f"{self.elapsed:.2f} s")


def ws_record(url: str, *, timeout: float = 60.0, open_timeout: float = 10.0,
              ping_interval: float | None = None, ping_timeout: float | None = None,
              headers: Mapping[str, str] | None = None) -> WSRun:
    """Connect to ``url`` (``ws://...``), read until the socket ends, and name the outcome.

    Args (keyword-only; ``timeout`` and ``open_timeout`` are scenario seconds, the ping
    settings are the ``websockets`` client's own, real seconds):
        timeout: the longest wait for one message before giving up (STALLED).
        open_timeout: the longest wait for the handshake.
        ping_interval: send protocol pings this often (``None``: never, so only the
            server's pings, if any, cross the hops).
        ping_timeout: give up when a pong is this late (``None``: never).
        headers: extra handshake headers (``X-Streamlab`` for a spec, ...).
    """
    from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
    from websockets.sync.client import connect

    run = WSRun(url)
    t0 = time.perf_counter()

    def now() -> float:
        return to_scenario(time.perf_counter() - t0)

    try:
        ws = connect(url, open_timeout=to_real(open_timeout), ping_interval=ping_interval,
                     ping_timeout=ping_timeout, close_timeout=to_real(10.0), proxy=None,
                     additional_headers=dict(headers or {}))
    except InvalidStatus as exc:
        run.status = exc.response.status_code
        run.error = f"InvalidStatus: {exc}"
        run.outcome = Outcome.HTTP_ERROR if run.status >= 400 else Outcome.ERROR_BEFORE_STREAM
        run.elapsed = now()
        return run
    except (InvalidHandshake, OSError, TimeoutError, EOFError) as exc:
        run.error = f"{type(exc).__name__}: {exc}"
        run.outcome = Outcome.STALLED if isinstance(exc, TimeoutError) else Outcome.ERROR_BEFORE_STREAM
        run.elapsed = now()
        return run
    run.status = ws.response.status_code if ws.response is not None else None
    failed: str | None = None
    try:
        with ws:
            while True:
                try:
                    raw = ws.recv(timeout=to_real(timeout))
                except TimeoutError:
                    run.error = f"TimeoutError: no message for {timeout:g} s"
                    run.outcome = Outcome.STALLED
                    break
                except ConnectionClosed as exc:
                    run.error = f"{type(exc).__name__}: {exc}"
                    break
                run.times.append(now())
                try:
                    message = json.loads(raw)
                except (TypeError, ValueError):
                    message = raw
                run.messages.append(message)
                kind = message.get("type") if isinstance(message, dict) else None
                if kind == "token":
                    run.tokens.append(str(message.get("text", "")))
                    run.token_times.append(run.times[-1])
                elif kind == "ping":
                    run.pings += 1
                elif kind == "done":
                    run.done = True
                elif kind == "error":
                    failed = str(message.get("message", ""))
    finally:
        run.elapsed = now()
    received = ws.protocol.close_rcvd
    if received is not None:
        run.close_code, run.close_reason = received.code, received.reason
    elif run.outcome is not Outcome.STALLED:
        run.close_code = 1006  # no close frame: what every client reports as "abnormal closure"
    if run.outcome is Outcome.STALLED:
        return run
    if run.done:
        run.outcome = Outcome.COMPLETE
    elif failed is not None or run.close_code not in (1000, 1001):
        if failed is not None:
            run.error = f"error message: {failed}"
        run.outcome = Outcome.CUT_MID_STREAM if run.tokens else Outcome.ERROR_BEFORE_STREAM
    else:
        run.outcome = Outcome.SILENT_TRUNCATION
    return run
