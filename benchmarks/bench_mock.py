"""Benchmark the mock model against a minimal raw-ASGI SSE server on uvicorn (the ceiling).

    .venv/bin/python benchmarks/bench_mock.py [--seconds 5]

Measures, in one run, with a separate server process and this process as the load:
  1. requests/s for short (6-chunk) streams at 100 connections,
  2. chunks/s for long (200-chunk) streams at 100 connections,
  3. inter-token lateness at 200 concurrent streams with ITL 20 ms (arrival of token i minus
     arrival of token 0 minus i x 20 ms, as the client sees it).
Targets: mock >= 50 % of the ceiling; lateness p99 <= 5 ms. Prints a table.
"""

from __future__ import annotations

import argparse
import json
import urllib.request
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _load import percentile, run_load  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
BODY = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "benchmark"}]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen) -> None:
    deadline = time.time() + 20
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server did not start")


class Proc:
    def __init__(self, cmd: list[str], port: int, env: dict | None = None) -> None:
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})},
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.port = port
        wait_port(port, self.proc)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def ceiling(chunks: int) -> Proc:
    port = free_port()
    return Proc([PY, "-m", "uvicorn", "benchmarks._ceiling:app", "--port", str(port), "--http", "httptools",
                 "--loop", "uvloop", "--no-access-log", "--log-level", "warning", "--backlog", "2048"], port,
                {"CEILING_CHUNKS": str(chunks)})


def mock(tokens: int, itl: float = 0.0) -> Proc:
    port = free_port()
    return Proc([PY, "-m", "streamlab", "mock", "--port", str(port), "--tokens", str(tokens), "--itl", str(itl),
                 "--no-journal"], port)


def load(port: int, path: str, connections: int, seconds: float, keep_times: bool = False, spread: float = 0.0):
    import uvloop

    return uvloop.run(run_load(port, path, BODY, connections=connections, seconds=seconds, keep_times=keep_times,
                               spread=spread))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    rows = []
    for chunks, label in ((6, "short streams (6 chunks), 100 conns"), (200, "long streams (200 chunks), 100 conns")):
        with ceiling(chunks) as c:
            load(c.port, "/v1/chat/completions", 100, 1.0)  # warm up
            ceil = load(c.port, "/v1/chat/completions", 100, args.seconds)
        with mock(chunks - 2) as m:  # role chunk + tokens + finish chunk ~ chunks events
            load(m.port, "/v1/chat/completions", 100, 1.0)
            mk = load(m.port, "/v1/chat/completions", 100, args.seconds)
        if chunks == 6:
            rows.append((label, "requests/s", ceil.rps, mk.rps))
        else:
            rows.append((label, "chunks/s", ceil.eps, mk.eps))
    lateness_rows = []
    for streams, spread, how in ((200, 0.02, "arrivals spread over one ITL"), (200, 0.0, "all started at once"),
                                 (100, 0.02, "100 streams, spread")):
        with mock(50, itl=0.02) as m:
            res = load(m.port, "/v1/chat/completions", streams, 3.0, keep_times=True, spread=spread)
            server = json.load(urllib.request.urlopen(f"http://127.0.0.1:{m.port}/streamlab/stats"))
        client = []
        for timeline in res.timelines:
            tokens = timeline[2:-2]  # skip request time and role chunk; drop finish and [DONE]
            client += [(t - tokens[0]) - i * 0.02 for i, t in enumerate(tokens)] if len(tokens) > 1 else []
        lateness_rows.append((how, server, client, res.responses))
    print(f"\nstreamlab mock vs raw-ASGI ceiling on uvicorn ({os.cpu_count()} cores, load in a separate process)\n")
    print(f"{'workload':40} {'metric':11} {'ceiling':>10} {'mock':>10} {'mock/ceiling':>13}")
    for label, metric, a, b in rows:
        print(f"{label:40} {metric:11} {a:10.0f} {b:10.0f} {b / a:12.0%}")
    print("\ninter-token lateness, concurrent streams x 50 tokens, ITL 20 ms (ms; server: send time minus "
          "schedule; client: arrival minus first arrival minus i x ITL)")
    print(f"{'arrivals':32} {'streams':>8} {'server p50':>11} {'server p99':>11} {'client p50':>11} {'client p99':>11}")
    for how, server, client, streams in lateness_rows:
        print(f"{how:32} {streams:8d} {server['lateness_p50'] * 1000:11.2f} {server['lateness_p99'] * 1000:11.2f} "
              f"{percentile(client, 50) * 1000:11.2f} {percentile(client, 99) * 1000:11.2f}")
    print("targets: mock >= 50% of the ceiling; lateness p99 <= 5 ms")


if __name__ == "__main__":
    main()
