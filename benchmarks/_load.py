"""A small, fast HTTP/1.1 load generator for SSE streams (asyncio + uvloop, raw sockets).

Each connection keeps alive and sends the same POST again and again; a response
is read until its terminating zero-length chunk. For every response it records
the arrival time of each SSE event (a blank-line boundary), so both throughput and
per-chunk timing come out of one pass. Bounded by a duration, never unbounded.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field


@dataclass
class Result:
    responses: int = 0
    events: int = 0
    errors: int = 0
    seconds: float = 0.0
    timelines: list[list[float]] = field(default_factory=list)  # per response: event arrival times

    @property
    def rps(self) -> float:
        return self.responses / self.seconds if self.seconds else 0.0

    @property
    def eps(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


def request_bytes(path: str, body: dict, host: str = "127.0.0.1") -> bytes:
    data = json.dumps(body).encode()
    return (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n").encode() + data


async def _one_response(reader: asyncio.StreamReader, keep_times: bool) -> tuple[int, list[float]]:
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(head.split(b"\r\n", 1)[0].decode())
    events = 0
    times: list[float] = []
    tail = b""
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.strip().split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return events, times
        chunk = await reader.readexactly(size + 2)
        now = time.perf_counter()
        data = tail + chunk[:-2]
        n = data.count(b"\n\n")
        events += n
        if keep_times:
            times.extend([now] * n)
        tail = data[data.rfind(b"\n\n") + 2:] if n else data


async def run_load(port: int, path: str, body: dict, *, connections: int, seconds: float,
                   keep_times: bool = False, max_responses: int | None = None, spread: float = 0.0) -> Result:
    """Drive ``connections`` keep-alive connections for ``seconds`` (or ``max_responses`` in total).

    ``spread`` staggers the connections' first requests evenly over that many seconds.
    """
    result = Result()
    payload = request_bytes(path, body)
    stop_at = time.perf_counter() + seconds
    budget = [max_responses if max_responses is not None else 10**12]

    async def worker(i: int) -> None:
        if spread:
            await asyncio.sleep(spread * i / connections)
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        try:
            while time.perf_counter() < stop_at and budget[0] > 0:
                budget[0] -= 1
                sent_at = time.perf_counter()
                writer.write(payload)
                try:
                    events, times = await _one_response(reader, keep_times)
                except (asyncio.IncompleteReadError, ConnectionError, RuntimeError):
                    result.errors += 1
                    return
                result.responses += 1
                result.events += events
                if keep_times:
                    result.timelines.append([sent_at] + times)
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(connections)))
    result.seconds = time.perf_counter() - started
    return result


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
    return values[k]
