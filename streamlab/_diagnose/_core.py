"""The vocabulary of ``streamlab diagnose``: layers, causes, defaults, ``Finding``, ``Observation``, ``Ladder``."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

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
