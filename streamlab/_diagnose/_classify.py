"""From one ``Observation`` to one ``Finding``: the evidence each cause needs (``CAUSES``)."""

from __future__ import annotations

import statistics

from ._core import DEFAULTS, Finding, Ladder, Observation


# --------------------------------------------------------------------------- classification


def _tolerance(value: float, scale: float) -> float:
    return max(0.1 * value, 1.0, 0.35 / scale)


def match_default(seconds: float, kind: str, scale: float) -> str | None:
    """The production default this duration matches (``DEFAULTS``), or None."""
    hits = [what for value, what, k in DEFAULTS if k == kind and abs(seconds - value) <= _tolerance(value, scale)]
    return " or ".join(hits) or None


def _held(obs: Observation) -> str | None:
    """Evidence that the stream was held back and released in bursts, or None."""
    n = len(obs.events)
    if n < 4 or obs.elapsed < 1.0 or obs.elapsed < obs.wall_floor():
        return None
    first = obs.events[0][0]
    last = obs.events[-1][0]
    few_reads = len(obs.reads) <= max(2, n // 4)  # a slow start that then streams read by read is not a hold
    if few_reads and first >= 0.5 * obs.elapsed and (last - first) <= 0.25 * obs.elapsed + 0.001:
        head = f"headers at {obs.t_headers:.1f} s, " if obs.t_headers is not None else ""
        when = f"at {first:.1f} s" if last - first <= 0.05 * obs.elapsed else f"between {first:.1f} s and {last:.1f} s"
        return f"{head}all {n} events arrived {when} of a {obs.elapsed:.1f} s exchange, in {len(obs.reads)} reads"
    per_read = n / max(1, len(obs.reads))
    gaps = obs.gaps
    if per_read >= 4 and gaps and max(gaps) >= max(1.0, 0.2 * obs.elapsed, obs.wall_floor()):
        return (f"{n} events in {len(obs.reads)} reads ({per_read:.0f} per read), gaps up to {max(gaps):.1f} s "
                f"between bursts")
    return None


def _headers_note(obs: Observation) -> str:
    names = ("content-type", "content-encoding", "transfer-encoding", "content-length", "x-accel-buffering",
             "server", "via")
    shown = [f"{n}: {obs.headers[n]}" for n in names if n in obs.headers]
    return "; ".join(shown)


def classify(obs: Observation, ladder: Ladder) -> Finding:
    """The finding of one streaming observation (see ``CAUSES`` for the evidence each cause needs)."""
    step = obs.label
    origin = ladder.origin_layer
    proxy = obs.proxy_signature()
    appserver = obs.app_server()
    here = "proxy" if proxy else origin
    by = f" ({proxy})" if proxy else ""

    if obs.ended == "connect_error":
        return Finding(step=step, layer="client", cause="http_error", evidence=f"cannot connect: {obs.error}")
    if obs.status is not None and obs.status >= 400:
        text = obs.body[:300].decode("utf-8", "replace").strip().replace("\n", " ")
        looks_json_error = text.startswith("{") and '"error"' in text
        layer = origin if looks_json_error and not proxy else here
        if obs.status == 504 and ("Endpoint request timed out" in text):
            return Finding(step=step, layer="proxy", cause="deadline",
                           evidence=f"504 from an API gateway after {obs.elapsed:.1f} s: {text[:120]}")
        if obs.status in (504, 524) and looks_json_error and not proxy:
            return Finding(step=step, layer=origin, cause="http_error",
                           evidence=f"HTTP {obs.status} from the {origin} itself (its JSON error body, no proxy "
                                    f"headers) after {obs.elapsed:.2f} s: {text[:160]}")
        if obs.status in (504, 524) and obs.elapsed >= max(1.0, obs.wall_floor()):
            known = match_default(obs.elapsed, "idle", obs.scale)
            return Finding(step=step, layer="proxy", cause="idle_timeout",
                           evidence=f"{obs.status} before the headers after {obs.elapsed:.1f} s of silence{by}"
                                    + (f"; matches {known}" if known else ""))
        return Finding(step=step, layer=layer, cause="http_error",
                       evidence=f"HTTP {obs.status}{by} after {obs.elapsed:.2f} s: {text[:160]}")
    if obs.error_event:
        return Finding(step=step, layer=origin, cause="error_event",
                       evidence=f"after {obs.tokens} tokens an error event ended the stream: {obs.error_event}")
    if obs.finish_reason == "length":
        return Finding(step=step, layer="model", cause="length_truncation",
                       evidence=f"finish_reason: length after {obs.tokens} tokens (max_tokens reached)")

    if obs.ended in ("cut", "reset", "timeout"):
        silence = obs.silence_before_end
        gaps = obs.gaps
        typical = statistics.median(gaps) if gaps else 0.0
        long_silence = silence >= max(1.0, 5 * typical + 0.5, obs.wall_floor())
        what = {"cut": "cut (incomplete chunked read)", "reset": "reset (ECONNRESET)",
                "timeout": "still silent"}[obs.ended]
        base = (f"{obs.tokens} tokens in {len(obs.reads)} reads, then {silence:.1f} s of silence, {what} at "
                f"{obs.elapsed:.1f} s (usual gap {typical:.2f} s)")
        if obs.ended == "timeout":
            return Finding(step=step, layer=origin, cause="stall",
                           evidence=f"{base}: no byte for the probe's max_silence {ladder.max_silence:.0f} s and "
                                    "no hop cut it; a hop with a shorter idle timeout would")
        if appserver and "gunicorn" in appserver.lower() and not proxy:
            why = ("a blocked worker sends no heartbeat" if long_silence
                   else "a sync worker streams without a heartbeat")
            return Finding(step=step, layer="app", cause="worker_timeout",
                           evidence=f"{base}; Server: {appserver} with no proxy in front: its worker was killed "
                                    f"({why})")
        if long_silence:
            known = match_default(silence, "idle", obs.scale)
            return Finding(step=step, layer="proxy", cause="idle_timeout",
                           evidence=f"{base}{by}" + (f"; silence matches {known}" if known else ""))
        known = match_default(obs.elapsed, "deadline", obs.scale)
        if proxy or known:
            return Finding(step=step, layer="proxy", cause="deadline",
                           evidence=f"{base}: data was flowing when it was cut{by}"
                                    + (f"; elapsed matches {known}" if known else ""))
        return Finding(step=step, layer=origin, cause=obs.ended, evidence=base)

    if obs.ended == "error":
        return Finding(step=step, layer="client", cause="http_error", evidence=f"the probe failed: {obs.error}")

    # clean end
    held = _held(obs)
    if held:
        if obs.encoding in ("gzip", "deflate"):
            return Finding(step=step, layer="proxy" if proxy or not appserver else "app", cause="gzip",
                           evidence=f"Content-Encoding: {obs.encoding}; {held}{by}")
        accel = obs.headers.get("x-accel-buffering")
        return Finding(step=step, layer=here if not (appserver and not proxy) else "app", cause="buffering",
                       evidence=f"{held}{by}; {_headers_note(obs)}" + ("" if accel else "; no X-Accel-Buffering"))
    if obs.stream and "event-stream" not in obs.content_type and obs.elapsed >= max(1.0, obs.wall_floor()) \
            and len(obs.reads) <= 2 and obs.ttfb is not None and obs.ttfb >= 0.5 * obs.elapsed:
        return Finding(step=step, layer=here, cause="buffering",
                       evidence=f"asked for a stream, got {obs.content_type or 'no content-type'} in "
                                f"{len(obs.reads)} reads at {obs.ttfb:.1f} s{by}")
    if not (obs.done or obs.finish_reason):
        kind = "finish_reason, [DONE]" if ladder.kind == "openai" else "[DONE] or a done event"
        return Finding(step=step, layer=origin, cause="silent_truncation",
                       evidence=f"the body ended cleanly after {obs.tokens} tokens at {obs.elapsed:.1f} s without "
                                f"{kind}")
    gaps = obs.gaps
    note = ""
    if gaps and max(gaps) >= 1.0:
        risk = [what for value, what, k in DEFAULTS if k == "idle" and max(gaps) >= value]
        note = f"; longest silence {max(gaps):.1f} s" + (f" (a hop with {risk[0]} would cut it)" if risk else "")
    if obs.encoding:
        note += f"; Content-Encoding: {obs.encoding} flushed per read"
    ttft = obs.ttft
    return Finding(step=step, layer=origin, cause="ok",
                   evidence=f"{obs.tokens} tokens in {len(obs.reads)} reads, first byte {obs.ttfb or 0:.2f} s, "
                            f"first token {ttft if ttft is not None else 0:.2f} s, end {obs.elapsed:.2f} s, "
                            f"{'[DONE]' if obs.done else 'finish_reason ' + str(obs.finish_reason)}{note}")
