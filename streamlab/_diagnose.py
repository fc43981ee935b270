"""``streamlab diagnose``: which layer cuts, holds or truncates a stream, measured from outside.

    >>> report = sl.diagnose("http://127.0.0.1:8000/v1")            # an OpenAI-compatible base URL
    >>> report = sl.diagnose("http://127.0.0.1:8000/chat/sse")      # any SSE endpoint of your app
    >>> report.verdict, report.findings[0].cause, report.to_json()
    >>> report                                                      # in a notebook: the report inline

The same ladder a person climbs by hand, as small *steps* (functions of one
``Ladder``, each returning ``Finding``s with evidence), so the drills reuse them::

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

Causes (``CAUSES``) and the evidence each needs are in the dict below; layers are
``proxy`` (anything between the client and the app: nginx, a load balancer, a
gateway), ``app`` (the user's server and its app server), ``model`` (the
OpenAI-compatible endpoint) and ``client`` (the diagnose probe itself).

Durations in findings are scenario seconds (``time_scale=``, default the one in
force): a stack run under ``sl.time_scale(0.02)`` is diagnosed in production units,
and silences are compared with the production defaults in ``DEFAULTS``. The
tolerance of that comparison is 10 % or 1 s, and never below 0.35 s of wall clock
(real nginx fires its timers up to 0.3 s early).

Design note: each probe is a real HTTP request over httpx (``fetch``), read
chunk by chunk with ``time.perf_counter()`` stamps; nothing is inferred from a
framework's exception text. What the client alone cannot prove (a hop *held* the
stream, or the model *did* send the rest) needs the server side: ``model=``.
"""

from __future__ import annotations

import json
import re
import socket
import statistics
import threading
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import urlsplit, urlunsplit

import httpx

from ._clients import StreamResult
from ._timescale import current_time_scale

__all__ = ["diagnose", "Report", "Finding", "Observation", "Ladder", "DiagnoseError", "CAUSES", "LAYERS",
           "DEFAULTS", "STEPS", "DEFAULT_STEPS", "PRIORITY", "probe", "fetch", "observe", "classify", "match_default",
           "timeline", "health", "repeat", "concurrency", "streaming_off", "bypass_hop", "model_journal",
           "raw_sdk"]

LAYERS = ("proxy", "app", "model", "client")

CAUSES: dict[str, str] = {
    "ok": "the stream arrived complete (finish_reason / [DONE] / done event), read by read, no error",
    "buffering": "headers and events arrive together late (first byte after >= half the stream), or many "
                 "events per read with long gaps; not gzip. Proven with model=: the mock sent them earlier",
    "gzip": "as buffering, and the response has Content-Encoding: gzip (a hop compresses text/event-stream)",
    "idle_timeout": "a cut (or 504) after a silence much longer than the stream's usual gaps; stronger when the "
                    "silence matches a known default or repeats",
    "deadline": "a cut while data was still flowing, at a constant elapsed time (repeats), from a hop",
    "silent_truncation": "the body ended cleanly without finish_reason, [DONE] or a done event",
    "length_truncation": "finish_reason: length (max_tokens reached)",
    "error_event": "an error object or 'event: error' inside the stream",
    "http_error": "a 4xx/5xx status (a hop's page vs the app's or model's JSON decides the layer)",
    "blocked_loop": "a cheap request to the same server waits while a stream runs, or N streams take N times "
                    "as long as one",
    "worker_timeout": "a cut from gunicorn (Server: gunicorn) with no proxy in front: its --timeout killed the "
                      "worker (a sync worker streams without a heartbeat; an async one whose loop is blocked)",
    "client_abort": "the reader left first: not produced by the probe itself (it never aborts); reserved for "
                    "drills with a client that leaves",
    "cut": "the connection closed mid-body (incomplete chunked read) with no timing pattern",
    "reset": "the connection was reset (ECONNRESET) mid-body with no timing pattern",
    "stall": "no byte for longer than the probe's max_silence and nothing in between cut it",
}

# the verdict is the first cause in this order among the non-ok findings
PRIORITY = ("worker_timeout", "blocked_loop", "idle_timeout", "deadline", "gzip", "buffering", "error_event",
            "length_truncation", "silent_truncation", "http_error", "cut", "reset", "stall", "client_abort", "ok")

# production defaults, scenario seconds: (seconds, what, kind) -- kind "idle" counts silence, "deadline" total
DEFAULTS: tuple[tuple[float, str, str], ...] = (
    (29.0, "AWS API Gateway integration timeout 29 s", "deadline"),
    (30.0, "gunicorn --timeout 30 s", "deadline"),
    (60.0, "nginx proxy_read_timeout 60 s", "idle"),
    (60.0, "AWS ALB idle timeout 60 s", "idle"),
    (100.0, "Cloudflare proxy read timeout 100 s", "idle"),
)

_PROXY_SERVERS = re.compile(r"nginx|openresty|envoy|cloudflare|awselb|streamlab-proxy|apache|traefik|caddy|"
                            r"haproxy|istio|varnish|squid|cloudfront|google frontend|gfe|akamai", re.I)
_APP_SERVERS = re.compile(r"uvicorn|gunicorn|hypercorn|daphne|waitress|werkzeug|granian|tornado", re.I)
_PROXY_HEADERS = ("via", "cf-ray", "x-amz-apigw-id", "x-amzn-requestid", "x-cache", "x-served-by")
_PROMPT = "Write a summary of streaming response cutoffs"


class DiagnoseError(Exception):
    """The target cannot be diagnosed at all (not a URL, nobody listening): a message for the user."""


# --------------------------------------------------------------------------- findings and observations


@dataclass(frozen=True, kw_only=True)
class Finding:
    """One conclusion of one ladder step: which layer, which cause (``CAUSES``), and the evidence."""

    step: str
    layer: str
    cause: str
    evidence: str

    def __post_init__(self) -> None:
        if self.layer not in LAYERS:
            raise ValueError(f"layer must be one of {LAYERS}, got {self.layer!r}")
        if self.cause not in CAUSES:
            raise ValueError(f"cause must be one of {sorted(CAUSES)}, got {self.cause!r}")

    def to_dict(self) -> dict[str, str]:
        return {"layer": self.layer, "cause": self.cause, "evidence": self.evidence, "step": self.step}

    def __str__(self) -> str:
        return f"{self.cause} at {self.layer}: {self.evidence}"


@dataclass
class Observation:
    """One probe as the client saw it. Times are scenario seconds since the request was sent."""

    label: str
    url: str
    method: str
    stream: bool
    scale: float
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    t_headers: float | None = None
    reads: list[tuple[float, int]] = field(default_factory=list)    # (time, bytes on the wire)
    events: list[tuple[float, dict]] = field(default_factory=list)  # (time, parsed SSE event)
    body: bytes = b""                                                # decoded (gzip undone)
    ended: str = "open"  # clean | cut | reset | timeout | connect_error | error
    error: str | None = None
    elapsed: float = 0.0
    t_start_wall: float = 0.0
    t_end_wall: float = 0.0
    tokens: int = 0
    finish_reason: str | None = None
    done: bool = False
    error_event: str | None = None

    # -- derived ---------------------------------------------------------------------
    @property
    def ttfb(self) -> float | None:
        return self.reads[0][0] if self.reads else None

    @property
    def ttft(self) -> float | None:
        for t, event in self.events:
            if _is_token(event):
                return t
        return None

    @property
    def gaps(self) -> list[float]:
        """Silences between consecutive reads (the first one counts from the headers)."""
        times = [t for t, _ in self.reads]
        start = self.t_headers if self.t_headers is not None else 0.0
        return [b - a for a, b in zip([start] + times[:-1], times)]

    @property
    def silence_before_end(self) -> float:
        last = self.reads[-1][0] if self.reads else (self.t_headers or 0.0)
        return max(0.0, self.elapsed - last)

    @property
    def encoding(self) -> str:
        return self.headers.get("content-encoding", "").lower()

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").lower()

    @property
    def complete(self) -> bool:
        return self.ended == "clean" and (self.done or self.finish_reason is not None)

    def wall_floor(self) -> float:
        """Scenario seconds that are 0.2 s of wall clock: shorter effects cannot be told from load."""
        return 0.2 / self.scale

    def proxy_signature(self) -> str | None:
        """What says a proxy answered (Server, Via, CDN headers, a proxy's error page), or None."""
        server = self.headers.get("server", "")
        if _PROXY_SERVERS.search(server):
            return f"Server: {server}"
        for name in _PROXY_HEADERS:
            if name in self.headers:
                return f"{name}: {self.headers[name]}"
        text = self.body[:2000].decode("utf-8", "replace")
        if "Endpoint request timed out" in text:
            return "API gateway error body"
        m = re.search(r"<center>([^<]*(?:nginx|awselb|streamlab-proxy)[^<]*)</center>", text)
        if m:
            return f"error page of {m.group(1)}"
        return None

    def app_server(self) -> str | None:
        server = self.headers.get("server", "")
        return server if _APP_SERVERS.search(server) else None

    def summary(self) -> dict[str, Any]:
        gaps = self.gaps
        return {"label": self.label, "status": self.status, "ended": self.ended, "error": self.error,
                "elapsed": round(self.elapsed, 3), "ttfb": _r(self.ttfb), "ttft": _r(self.ttft),
                "reads": len(self.reads), "events": len(self.events), "tokens": self.tokens,
                "max_gap": _r(max(gaps) if gaps else None), "silence_before_end": _r(self.silence_before_end),
                "finish_reason": self.finish_reason, "done": self.done}


def _split_events(text: str) -> tuple[list[str], str]:
    """Complete SSE blocks in ``text`` and the unfinished rest (own copy: the probe must not change with a client)."""
    *blocks, rest = text.replace("\r\n", "\n").split("\n\n")
    return [b for b in blocks if b.strip()], rest


def _parse_event(block: str) -> dict[str, str]:
    event: dict[str, str] = {}
    data = []
    for line in block.split("\n"):
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            data.append(value)
        elif name in ("event", "id"):
            event[name] = value
    if data:
        event["data"] = "\n".join(data)
    return event


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def _is_token(event: dict) -> bool:
    return bool(_event_info(event)[0])


def _event_info(event: dict) -> tuple[int, str | None, bool, str | None]:
    """(tokens, finish_reason, done, error) carried by one SSE event."""
    data = event.get("data")
    name = event.get("event")
    if name == "error":
        return 0, None, False, (data or "error event")[:200]
    if data is None:
        return 0, None, False, None
    if data.strip() == "[DONE]" or name == "done":
        return 0, None, True, None
    try:
        obj = json.loads(data)
    except ValueError:
        return 1, None, False, None  # an app's plain-text token
    if isinstance(obj, dict):
        if "error" in obj:
            return 0, None, False, json.dumps(obj["error"])[:200]
        tokens, finish = 0, None
        for choice in obj.get("choices") or []:
            delta = choice.get("delta") or choice.get("message") or {}
            if delta.get("content") or delta.get("tool_calls"):
                tokens += 1
            finish = choice.get("finish_reason") or finish
        if "choices" in obj:
            return tokens, finish, False, None
    return 1, None, False, None


# --------------------------------------------------------------------------- the target


@dataclass
class Ladder:
    """One diagnose run: the target, its settings, what each step observed and found.

    A step is ``step(ladder) -> list[Finding]``; it may read and add ``observations``.
    """

    url: str
    kind: str  # "openai" | "sse"
    endpoint: str
    method: str = "GET"
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    scale: float = 1.0
    max_silence: float = 120.0
    health_url: str | None = None
    direct: str | None = None
    model: Any = None  # a streamlab MockLLM the app talks to
    max_tokens: int | None = None
    model_name: str | None = None
    n: int = 3
    observations: dict[str, Any] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)

    @classmethod
    def for_url(cls, url: str, **options: Any) -> "Ladder":
        """A ladder for ``url`` (same options as ``diagnose``'s fields), to run single steps:
        ``lad = Ladder.for_url(u, scale=0.02); timeline(lad); repeat(lad)``."""
        return _target(url, **options)

    @property
    def origin_layer(self) -> str:
        return "model" if self.kind == "openai" else "app"

    def wall(self, scenario: float) -> float:
        return scenario * self.scale

    def request(self, *, stream: bool = True, url: str | None = None) -> tuple[str, str, Any]:
        """(method, url, json body) of one probe."""
        endpoint = url or self.endpoint
        if self.kind != "openai":
            return self.method, endpoint, self.body
        body = dict(self.body or {})
        body.setdefault("model", self.model_name or "gpt-4o-mini")
        body.setdefault("messages", [{"role": "user", "content": _PROMPT}])
        body["stream"] = stream
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        return "POST", endpoint, body


def _target(url: str, **options: Any) -> Ladder:
    if not isinstance(url, str) or not re.match(r"^https?://[^/\s]+", url.strip()):
        raise DiagnoseError(f"not an http(s) URL: {url!r} (e.g. http://127.0.0.1:8000/v1 or "
                            "http://127.0.0.1:8000/chat/sse)")
    url = url.strip()
    parts = urlsplit(url)
    if not parts.hostname:
        raise DiagnoseError(f"no host in {url!r}")
    try:
        parts.port
    except ValueError:
        raise DiagnoseError(f"bad port in {url!r}") from None
    path = parts.path.rstrip("/")
    kind = options.pop("kind", None)
    if kind is None:
        kind = "openai" if path.endswith("/v1") or path.endswith("/chat/completions") else "sse"
    if kind not in ("openai", "sse"):
        raise DiagnoseError(f"kind must be 'openai' or 'sse', got {kind!r}")
    endpoint = url
    if kind == "openai" and not path.endswith("/chat/completions"):
        endpoint = urlunsplit(parts._replace(path=path + "/chat/completions"))
    ladder = Ladder(url=url, kind=kind, endpoint=endpoint, **options)
    if ladder.body is not None and ladder.method == "GET":
        ladder.method = "POST"
    return ladder


# --------------------------------------------------------------------------- one probe


def probe(ladder: Ladder, *, stream: bool = True, label: str = "stream", url: str | None = None) -> Observation:
    """One request, read to the end (or ``max_silence`` without a byte); every read timestamped."""
    method, endpoint, body = ladder.request(stream=stream, url=url)
    headers = {"Accept": "text/event-stream" if stream else "application/json", "Accept-Encoding": "gzip, deflate",
               **ladder.headers}
    timeout = httpx.Timeout(connect=5.0, read=ladder.wall(ladder.max_silence), write=10.0, pool=10.0)
    return observe(fetch(method, endpoint, headers=headers, json=body, timeout=timeout), label=label,
                   stream=stream, scale=ladder.scale)


def fetch(method: str, url: str, *, headers: dict[str, str], json: Any, timeout: httpx.Timeout) -> StreamResult:
    """One request on a fresh connection, every raw read stamped with ``time.perf_counter()``.

    The clock starts when the request is sent, after the client is built (building an httpx
    client with its TLS context takes 20-100 ms, which would count as time to first byte).
    Errors are kept in ``result.error``, not raised.
    """
    result = StreamResult(url=url, method=method)
    with httpx.Client(timeout=timeout, transport=httpx.HTTPTransport(retries=0)) as client:
        request = client.build_request(method, url, headers=headers, json=json)
        result.t_start = time.perf_counter()
        try:
            response = client.send(request, stream=True)
            try:
                result.status, result.t_headers = response.status_code, time.perf_counter()
                result.headers = dict(response.headers)
                for chunk in response.iter_raw():
                    result.chunks.append(chunk)
                    result.times.append(time.perf_counter())
            finally:
                response.close()
        except Exception as exc:  # noqa: BLE001 - the error is the observation
            result.error = exc
        finally:
            result.t_end = time.perf_counter()
    return result


def observe(result: StreamResult, *, label: str, stream: bool, scale: float) -> Observation:
    """An ``Observation`` (scenario seconds, SSE events, end markers) from a ``fetch`` (or ``HTTPStream``) result."""
    t0 = result.t_start or 0.0

    def rel(t: float) -> float:
        return (t - t0) / scale

    obs = Observation(label=label, url=result.url, method=result.method, stream=stream, scale=scale,
                      status=result.status, headers={k.lower(): v for k, v in result.headers.items()},
                      t_headers=None if result.t_headers is None else rel(result.t_headers),
                      t_start_wall=t0, t_end_wall=result.t_end or t0)
    obs.elapsed = rel(result.t_end) if result.t_end else 0.0
    encoding = obs.encoding
    decoder = (zlib.decompressobj(16 + zlib.MAX_WBITS) if encoding == "gzip"
               else zlib.decompressobj() if encoding == "deflate" else None)
    pending, decoded = "", []
    for chunk, t in zip(result.chunks, result.times):
        obs.reads.append((rel(t), len(chunk)))
        if decoder is not None:
            try:
                chunk = decoder.decompress(chunk)
            except zlib.error:
                decoder = None
                continue
        decoded.append(chunk)
        blocks, pending = _split_events(pending + chunk.decode("utf-8", "replace"))
        for block in blocks:
            obs.events.append((rel(t), _parse_event(block)))
    obs.body = b"".join(decoded)
    for _, event in obs.events:
        tokens, finish, done, error = _event_info(event)
        obs.tokens += tokens
        obs.finish_reason = finish or obs.finish_reason
        obs.done = obs.done or done
        obs.error_event = obs.error_event or error
    if not stream and obs.status == 200:
        try:
            answer = json.loads(obs.body)
            choice = (answer.get("choices") or [{}])[0]
            obs.finish_reason = choice.get("finish_reason")
            obs.tokens = len(((choice.get("message") or {}).get("content") or "").split())
        except (ValueError, AttributeError, IndexError):
            pass
    error = result.error
    if error is None:
        obs.ended = "clean" if not result.aborted else "cut"
    else:
        obs.error = f"{type(error).__module__.split('.')[0]}.{type(error).__name__}: {error}"[:300]
        if isinstance(error, (httpx.ConnectError, httpx.ConnectTimeout)):
            obs.ended = "connect_error"
        elif isinstance(error, httpx.TimeoutException):
            obs.ended = "timeout"
        elif isinstance(error, httpx.RemoteProtocolError):
            obs.ended = "cut"
        elif isinstance(error, httpx.ReadError):
            obs.ended = "reset"
        else:
            obs.ended = "error"
    return obs


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


# --------------------------------------------------------------------------- the report


@dataclass
class Report:
    """What ``diagnose`` found: ``verdict``, ``findings``, the probes' ``observations``."""

    url: str
    kind: str
    scale: float
    verdict: str
    findings: list[Finding]
    observations: dict[str, Any]
    main: Finding | None = None
    took: float = 0.0

    @property
    def cause(self) -> str:
        return self.main.cause if self.main else "ok"

    @property
    def layer(self) -> str:
        return self.main.layer if self.main else "model"

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "findings": [f.to_dict() for f in self.findings]}

    def to_json(self, **kw: Any) -> str:
        return json.dumps(self.to_dict(), **kw)

    def figure(self, width: int = 64) -> str:
        """A text timeline of each probe: one column per time slice; | a read, . silence, X a cut."""
        rows = [(k, o) for k, o in self.observations.items() if isinstance(o, Observation)]
        rows += [(o.label, o) for o in self.observations.get("concurrency") or []]
        if not rows:
            return ""
        sent = self.observations.get("model_sent") or []
        span = max([o.elapsed for _, o in rows] + sent) or 1.0
        lines = [f"  {'':<14}0 s{'':{width - 6}}{span:.1f} s"]
        if sent:
            cells = [" "] * width
            for t in sent:
                cells[max(0, min(width - 1, int(t / span * width)))] = "|"
            lines.append(f"  {'model sent':<14}{''.join(cells)}  (the mock's journal)")
        for name, o in rows:
            cells = [" "] * width
            end = o.elapsed
            for i in range(width):
                t = (i + 0.5) * span / width
                if t <= end:
                    cells[i] = "."
            for t, _ in o.reads:
                cells[min(width - 1, int(t / span * width))] = "|"
            mark = {"clean": "]", "cut": "X", "reset": "X", "timeout": "?"}.get(o.ended, "!")
            if o.status is not None and o.status >= 400:
                mark = "E"
            cells[min(width - 1, int(end / span * width))] = mark
            status = "" if o.status in (None, 200) else f" {o.status}"
            lines.append(f"  {name[:14]:<14}{''.join(cells)}  {o.ended}{status}")
        lines.append("  (| a read, . waiting, ] clean end, X cut or reset, E HTTP error, ? still silent)")
        return "\n".join(lines)

    def text(self) -> str:
        out = [f"streamlab diagnose {self.url}  ({'OpenAI-compatible' if self.kind == 'openai' else 'SSE'}, "
               f"times in scenario seconds, time_scale {self.scale:g})", "", f"verdict: {self.verdict}", ""]
        main = self.observations.get("timeline")
        if isinstance(main, Observation):
            s = main.summary()
            out.append(f"stream: status {s['status']}, ended {s['ended']}"
                       + (f" ({main.error})" if main.error else "")
                       + f", {s['tokens']} tokens / {s['events']} events / {s['reads']} reads, "
                         f"TTFB {s['ttfb']} s, TTFT {s['ttft']} s, max gap {s['max_gap']} s, "
                         f"silence before end {s['silence_before_end']} s, end {s['elapsed']} s")
            out.append(f"end markers: finish_reason {main.finish_reason}, [DONE] {'yes' if main.done else 'no'}")
            if main.ended in ("cut", "reset") or main.status in (504, 524):
                silence = main.silence_before_end if main.ended in ("cut", "reset") else main.elapsed
                marks = []
                for value, what, kind in DEFAULTS:
                    measured = silence if kind == "idle" else main.elapsed
                    near = abs(measured - value) <= _tolerance(value, self.scale)
                    marks.append(f"{what}{' <- matches' if near else ''}")
                out.append(f"silence before the end {silence:.1f} s, elapsed {main.elapsed:.1f} s; defaults: "
                           + ", ".join(marks))
            out.append(f"headers: {_headers_note(main) or '-'}")
            out.append("")
        out.append("findings:")
        for f in self.findings:
            out.append(f"  [{f.step}] {f.cause} at {f.layer}: {f.evidence}")
        fig = self.figure()
        if fig:
            out += ["", "timeline:", fig]
        return "\n".join(out)

    def __str__(self) -> str:
        return self.text()

    def plot(self, ax: Any = None):
        """A matplotlib figure of the same timeline: one lane per probe, a tick per read, the end marked."""
        import matplotlib.pyplot as plt

        rows = [(k, o) for k, o in self.observations.items() if isinstance(o, Observation)]
        rows += [(o.label, o) for o in self.observations.get("concurrency") or []]
        if ax is None:
            fig, ax = plt.subplots(figsize=(8, 0.5 + 0.45 * max(1, len(rows))))
        for y, (name, o) in enumerate(reversed(rows)):
            ax.hlines(y, o.t_headers or 0.0, o.elapsed, color="#ccc", lw=1)
            ax.plot([t for t, _ in o.reads], [y] * len(o.reads), "|", color="#457b9d", ms=12)
            bad = o.ended != "clean" or (o.status or 200) >= 400
            ax.plot([o.elapsed], [y], "x" if bad else "o", color="#e63946" if bad else "#2a9d8f", ms=9)
        ax.set_yticks(range(len(rows)), [name for name, _ in reversed(rows)])
        ax.set_xlabel("scenario seconds since the request")
        ax.set_title(self.verdict[:90], fontsize=9)
        return ax.figure

    def _repr_html_(self) -> str:
        import html

        return f"<pre>{html.escape(self.text())}</pre>"


def _pick(findings: list[Finding]) -> Finding | None:
    """The verdict: the model's journal when it found something (server-side truth beats inference),
    else the first non-ok finding in ``PRIORITY`` order, else the first finding."""
    bad = [f for f in findings if f.cause != "ok"]
    if not bad:
        return findings[0] if findings else None
    journal = [f for f in bad if f.step == "model_journal"]
    return journal[0] if journal else min(bad, key=lambda f: PRIORITY.index(f.cause))


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
