"""One probe: a request on a fresh httpx connection, every raw read stamped, turned into an ``Observation``."""

from __future__ import annotations

import json
import time
import zlib
from typing import Any

import httpx

from .._clients import StreamResult
from ._core import Ladder, Observation, _event_info, _parse_event, _split_events


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
