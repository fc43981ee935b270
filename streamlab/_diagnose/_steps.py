"""The ladder's steps: ``step(ladder) -> list[Finding]``, each one probe (or a few) and its conclusion."""

from __future__ import annotations

import statistics
import threading
import time
from typing import Callable

import httpx

from ._classify import _tolerance, classify
from ._core import DiagnoseError, Finding, Ladder, Observation, _is_token, _target
from ._probe import probe


# --------------------------------------------------------------------------- steps


def timeline(ladder: Ladder) -> list[Finding]:
    """The main probe: one streaming request, classified; ``health`` polls run alongside when known."""
    poller = _HealthPoller(ladder) if ladder.health_url else None
    if poller:
        poller.baseline()
        poller.start()
    try:
        obs = probe(ladder, label="timeline")
    finally:
        if poller:
            poller.stop()
    ladder.observations["timeline"] = obs
    if obs.ended == "connect_error":
        raise DiagnoseError(f"nobody answers at {ladder.endpoint}: {obs.error}")
    return [classify(obs, ladder)]


class _HealthPoller:
    """Times a cheap request to the same server, one after another, while the main probe runs."""

    def __init__(self, ladder: Ladder) -> None:
        self.ladder = ladder
        self.url = ladder.health_url
        self.idle: list[float] = []
        self.busy: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="streamlab-diagnose-health", daemon=True)

    def _once(self, client: httpx.Client) -> float | None:
        t0 = time.perf_counter()
        try:
            client.get(self.url)
        except httpx.HTTPError:
            return None
        return (time.perf_counter() - t0) / self.ladder.scale

    def baseline(self) -> None:
        with httpx.Client(timeout=5.0) as client:
            for _ in range(2):
                latency = self._once(client)
                if latency is not None:
                    self.idle.append(latency)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        time.sleep(0.02)
        with httpx.Client(timeout=self.ladder.wall(self.ladder.max_silence)) as client:
            while not self._stop.is_set() and len(self.busy) < 200:
                latency = self._once(client)
                if latency is not None:
                    self.busy.append(latency)
                self._stop.wait(0.03)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self.ladder.wall(self.ladder.max_silence) + 5)
        self.ladder.observations["health"] = {"url": self.url, "idle": self.idle, "busy": self.busy}


def health(ladder: Ladder) -> list[Finding]:
    """Blocked loop: the health request polled during ``timeline`` waited far longer than when idle."""
    seen = ladder.observations.get("health")
    if not seen or not seen["idle"] or not seen["busy"]:
        return []
    idle, worst = min(seen["idle"]), max(seen["busy"])
    floor = 0.5 / ladder.scale  # half a second of wall clock: a busy machine delays a poll, not that much
    evidence = (f"{seen['url']} answered in {idle:.2f} s when idle, up to {worst:.2f} s while a stream ran "
                f"({len(seen['busy'])} polls)")
    if worst >= max(1.0, floor, 10 * idle):
        return [Finding(step="health", layer=ladder.origin_layer, cause="blocked_loop",
                        evidence=evidence + ": the server could not answer while it streamed (sync code in "
                                            "async def, or one worker busy)")]
    return [Finding(step="health", layer=ladder.origin_layer, cause="ok", evidence=evidence)]


def repeat(ladder: Ladder) -> list[Finding]:
    """A cut stream, once more: same silence twice = idle timeout; same elapsed, other silence = deadline."""
    first = ladder.observations.get("timeline")
    if first is None or not (first.ended in ("cut", "reset") or first.status == 504):
        return []
    second = probe(ladder, label="repeat")
    ladder.observations["repeat"] = second
    found = classify(second, ladder)
    tol_s = _tolerance(first.silence_before_end, ladder.scale)
    tol_e = _tolerance(first.elapsed, ladder.scale)
    same_silence = abs(second.silence_before_end - first.silence_before_end) <= tol_s
    same_elapsed = abs(second.elapsed - first.elapsed) <= tol_e
    pair = (f"run 1: {first.ended} at {first.elapsed:.1f} s after {first.silence_before_end:.1f} s of silence; "
            f"run 2: {second.ended} at {second.elapsed:.1f} s after {second.silence_before_end:.1f} s")
    if found.cause in ("idle_timeout", "deadline", "worker_timeout") and second.ended == first.ended:
        if found.cause == "idle_timeout" and same_silence:
            pair += ": the same silence twice"
        elif same_elapsed and not same_silence and found.cause == "idle_timeout":
            found = Finding(step="repeat", layer="proxy", cause="deadline", evidence=pair)
            pair += ": the same elapsed time with different silences"
        elif same_elapsed:
            pair += ": the same elapsed time twice"
    elif found.cause in ("cut", "reset") and second.ended == first.ended and same_elapsed \
            and second.tokens != first.tokens:
        found = Finding(step="repeat", layer="proxy", cause="deadline", evidence=pair)
        pair += (f": the same elapsed time after {first.tokens} and {second.tokens} tokens (a cut by time, not at "
                 "a token)")
    return [Finding(step="repeat", layer=found.layer, cause=found.cause, evidence=pair)]


def concurrency(ladder: Ladder) -> list[Finding]:
    """``n`` streams at once vs the single ``timeline`` one: ~n times as long = one stream at a time."""
    single = ladder.observations.get("timeline")
    if single is None or not single.complete or ladder.n < 2:
        return []
    out: list[Observation | None] = [None] * ladder.n

    def one(i: int) -> None:
        out[i] = probe(ladder, label=f"concurrent {i + 1}")

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(ladder.n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(ladder.wall(ladder.max_silence) * 3 + 10)
    runs = [o for o in out if o is not None]
    ladder.observations["concurrency"] = runs
    if not runs:
        return []
    slowest = max(o.elapsed for o in runs)
    complete = sum(o.complete for o in runs)
    evidence = (f"{ladder.n} at once: {complete}/{ladder.n} complete, slowest {slowest:.2f} s vs "
                f"{single.elapsed:.2f} s alone")
    serialized = (slowest >= 0.8 * ladder.n * single.elapsed
                  and slowest - single.elapsed >= max(1.0, 0.5 / ladder.scale))
    if serialized:
        return [Finding(step="concurrency", layer="app", cause="blocked_loop",
                        evidence=evidence + ": the streams were served one after another")]
    if complete < len(runs):
        bad = next(o for o in runs if not o.complete)
        found = classify(bad, ladder)
        return [Finding(step="concurrency", layer=found.layer, cause=found.cause, evidence=evidence + "; "
                        + found.evidence)]
    return [Finding(step="concurrency", layer=ladder.origin_layer, cause="ok", evidence=evidence)]


def streaming_off(ladder: Ladder) -> list[Finding]:
    """(OpenAI URLs) the same request with ``stream: false``: does the whole answer come back?"""
    if ladder.kind != "openai":
        return []
    obs = probe(ladder, stream=False, label="streaming_off")
    ladder.observations["streaming_off"] = obs
    if obs.status == 200 and obs.ended == "clean" and obs.finish_reason:
        cause = "length_truncation" if obs.finish_reason == "length" else "ok"
        return [Finding(step="streaming_off", layer="model", cause=cause,
                        evidence=f"stream=false: {obs.tokens} words, finish_reason {obs.finish_reason}, in "
                                 f"{obs.elapsed:.2f} s (silent until the answer was complete)")]
    found = classify(obs, ladder)
    if found.cause == "ok" or found.cause == "silent_truncation" and obs.status == 200:
        found = Finding(step="streaming_off", layer="model", cause="silent_truncation",
                        evidence=f"stream=false answered {obs.status} without a finish_reason")
    return [Finding(step="streaming_off", layer=found.layer, cause=found.cause,
                    evidence="stream=false: " + found.evidence)]


def bypass_hop(ladder: Ladder) -> list[Finding]:
    """(``direct=``) the same probe against the server behind the hop: if the problem goes, the hop made it."""
    if not ladder.direct:
        return []
    direct = _target(ladder.direct, kind=ladder.kind)
    obs = probe(ladder, label="bypass_hop", url=direct.endpoint)
    ladder.observations["bypass_hop"] = obs
    found = classify(obs, ladder)
    front = ladder.observations.get("timeline")
    front_bad = front is not None and classify(front, ladder).cause != "ok"
    if found.cause == "ok" and front_bad:
        return [Finding(step="bypass_hop", layer="proxy", cause=classify(front, ladder).cause,
                        evidence=f"direct to {ladder.direct}: {found.evidence}; through the hop it was not: the "
                                 "hop in between causes it")]
    return [Finding(step="bypass_hop", layer=found.layer, cause=found.cause,
                    evidence=f"direct to {ladder.direct}: {found.evidence}")]


def model_journal(ladder: Ladder) -> list[Finding]:
    """(``model=``) the mock's journal against the client: who held, who cut, who ended early."""
    mock = ladder.model
    obs = ladder.observations.get("timeline")
    if mock is None or obs is None:
        return []
    entries = [e for e in mock.journal.chat() if obs.t_start_wall - 0.001 <= e.t_start <= obs.t_end_wall]
    if not entries:
        return [Finding(step="model_journal", layer="app", cause="ok",
                        evidence="the model got no chat request during the probe (the app answered alone)")]
    entry = entries[-1].wait_closed(2.0)
    outs = [ev.t for ev in entry.log.of("out")]
    sent = (f"the model sent {entry.tokens_sent}/{entry.tokens_planned} tokens, finish_reason "
            f"{entry.finish_reason}, ended {entry.ended}")
    got = f"the client got {obs.tokens} tokens, ended {obs.ended}"
    front = "proxy" if obs.proxy_signature() else "app"
    main = classify(obs, ladder)
    if entry.ended in ("cut", "reset"):
        hidden = ("; the client saw a clean end: a hop hid the cut (a close-delimited body: nginx "
                  "chunked_transfer_encoding off, or HTTP/1.0)" if obs.ended == "clean" else "")
        return [Finding(step="model_journal", layer="model", cause=entry.ended, evidence=f"{sent}; {got}{hidden}")]
    if entry.ended == "silent":
        return [Finding(step="model_journal", layer="model", cause="silent_truncation", evidence=f"{sent}; {got}")]
    if entry.ended == "error":
        return [Finding(step="model_journal", layer="model", cause="error_event", evidence=f"{sent}; {got}")]
    if entry.finish_reason == "length":
        return [Finding(step="model_journal", layer="model", cause="length_truncation", evidence=f"{sent}; {got}")]
    streamed = "event-stream" in obs.content_type
    lost = entry.ended in ("complete", "client disconnected") and (
        obs.ended in ("cut", "reset", "timeout") or obs.ended == "clean" and streamed and not obs.complete)
    if lost:
        cause = main.cause if main.cause not in ("ok", "cut", "reset") else \
            "silent_truncation" if obs.ended == "clean" else obs.ended if obs.ended in ("cut", "reset") else "cut"
        return [Finding(step="model_journal", layer=front, cause=cause,
                        evidence=f"{sent}; {got}: lost between the model and the client ({front})")]
    # server-sent vs client-received, chunk by chunk (scenario seconds since the probe's request)
    rel = [(t - obs.t_start_wall) / ladder.scale for t in outs]
    ladder.observations["model_sent"] = rel
    token_outs = rel[1:1 + entry.tokens_sent] if len(rel) > entry.tokens_sent else rel[:entry.tokens_sent]
    got_times = [t for t, e in obs.events if _is_token(e)] or [t for t, _ in obs.reads[:1]]
    lags = [g - o for g, o in zip(got_times, token_outs)]
    ladder.observations["lags"] = lags
    if lags and len(token_outs) >= 2:
        span = token_outs[-1] - token_outs[0]
        median = statistics.median(lags)
        timing = (f"model sent {len(token_outs)} token chunks from {token_outs[0]:.1f} s to {token_outs[-1]:.1f} s; "
                  f"the client got them {median:.2f} s later (median), {max(lags):.2f} s at most")
        if span >= max(1.0, 0.2 / ladder.scale) and median >= 0.5 * span:
            cause = "gzip" if obs.encoding in ("gzip", "deflate") else "buffering"
            return [Finding(step="model_journal", layer=front, cause=cause,
                            evidence=f"{timing}: held at the {front}")]
        return [Finding(step="model_journal", layer="model", cause="ok", evidence=f"{sent}; {got}; {timing}")]
    return [Finding(step="model_journal", layer="model", cause="ok", evidence=f"{sent}; {got}")]


def raw_sdk(ladder: Ladder) -> list[Finding]:
    """(opt-in, OpenAI URLs) the openai SDK's own view of one streaming call: exception class, finish reason."""
    if ladder.kind != "openai":
        return []
    import openai

    base = ladder.endpoint[: -len("/chat/completions")]
    client = openai.OpenAI(base_url=base, api_key="unused", max_retries=0,
                           timeout=httpx.Timeout(ladder.wall(ladder.max_silence), connect=5.0))
    _, _, body = ladder.request(stream=True)
    body.pop("stream", None)
    tokens, finish = 0, None
    try:
        for chunk in client.chat.completions.create(stream=True, **body):
            for choice in chunk.choices:
                tokens += bool(choice.delta and choice.delta.content)
                finish = choice.finish_reason or finish
    except Exception as exc:  # noqa: BLE001 - the exception is the observation
        return [Finding(step="raw_sdk", layer=ladder.origin_layer, cause="cut" if tokens else "http_error",
                        evidence=f"openai SDK raised {type(exc).__module__.split('.')[0]}.{type(exc).__name__} "
                                 f"after {tokens} tokens")]
    finally:
        client.close()
    cause = "ok" if finish and finish != "length" else "length_truncation" if finish else "silent_truncation"
    return [Finding(step="raw_sdk", layer="model", cause=cause,
                    evidence=f"openai SDK: {tokens} tokens, finish_reason {finish}, no exception")]


STEPS: dict[str, Callable[[Ladder], list[Finding]]] = {
    "timeline": timeline, "health": health, "repeat": repeat, "concurrency": concurrency,
    "streaming_off": streaming_off, "bypass_hop": bypass_hop, "model_journal": model_journal, "raw_sdk": raw_sdk,
}
DEFAULT_STEPS = ("timeline", "health", "repeat", "concurrency", "streaming_off", "bypass_hop", "model_journal")
