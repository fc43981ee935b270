"""Benchmark the mock model against a minimal raw-ASGI SSE server on uvicorn (the ceiling).

    .venv/bin/python benchmarks/bench_mock.py [--seconds 5] [--mock-workers N] [--load-procs K] [--json]
    .venv/bin/python benchmarks/bench_mock.py --locust 50,100,200,400     # + one Locust worker's capacity
    .venv/bin/python benchmarks/bench_mock.py --quick --json               # tiny numbers: checks it runs

Measures, in one run, with separate server processes and this process (or ``--load-procs`` K
processes) as the load:
  1. requests/s for short (6-chunk) streams at 100 connections (``ratio_short`` = mock / ceiling),
  2. chunks/s for long (200-chunk) streams at 100 connections (``ratio_long``),
  3. inter-token lateness at 100, 200 and 1,000 concurrent streams with ITL 20 ms (arrival of
     token i minus arrival of token 0 minus i x 20 ms, as the client sees it; arrivals spread
     over one ITL),
  4. with ``--locust LEVELS``: streams held by ONE Locust process (``sl.load.run``, workers=0)
     at each user count, lateness computed the same way from each stream's gaps; the knee is
     the first level whose lateness p99 exceeds 10 ms.
``--mock-workers N`` serves the mock from N processes (``streamlab mock --workers N``) and the
ceiling from ``uvicorn --workers N``, so both sides have the same processes.
Targets: ratio_short >= 0.60; lateness p99 <= 10 ms at 1,000 streams.
``--json`` prints, as the last line, one object: ``ratio_short``, ``ratio_long``, ``lateness``
(a list of ``{"streams", "p50_ms", "p99_ms"}``), and the settings (and ``locust``, ``locust_knee``).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _load import Result, percentile, run_load  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
BODY = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "benchmark"}]}
ITL = 0.02
TARGET_RATIO, TARGET_P99_MS = 0.60, 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.time() + timeout
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
    def __init__(self, cmd: list[str], port: int, env: dict | None = None, settle: float = 0.0) -> None:
        sys.path.insert(0, str(ROOT))
        from streamlab._lifetime import popen  # the servers die with the benchmark

        self.proc = popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})},
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.port = port
        wait_port(port, self.proc)
        time.sleep(settle)  # more than one worker: let every one of them bind before the load

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def ceiling(chunks: int, workers: int = 1) -> Proc:
    port = free_port()
    return Proc([PY, "-m", "uvicorn", "benchmarks._ceiling:app", "--port", str(port), "--http", "httptools",
                 "--loop", "uvloop", "--no-access-log", "--log-level", "warning", "--backlog", "2048",
                 *(["--workers", str(workers)] if workers > 1 else [])], port,
                {"CEILING_CHUNKS": str(chunks)}, settle=1.0 if workers > 1 else 0.0)


def mock(tokens: int, itl: float = 0.0, workers: int = 1) -> Proc:
    port = free_port()
    return Proc([PY, "-m", "streamlab", "mock", "--port", str(port), "--tokens", str(tokens), "--itl", str(itl),
                 "--no-journal", "--workers", str(workers)], port, settle=0.5 if workers > 1 else 0.0)


def _load_one(args: tuple) -> Result:
    import uvloop

    port, path, connections, seconds, keep_times, spread = args
    return uvloop.run(run_load(port, path, BODY, connections=connections, seconds=seconds, keep_times=keep_times,
                               spread=spread))


def load(port: int, path: str, connections: int, seconds: float, keep_times: bool = False, spread: float = 0.0,
         procs: int = 1) -> Result:
    """``connections`` keep-alive connections from this process, or split over ``procs`` processes."""
    procs = max(1, min(procs, connections))
    if procs == 1:
        return _load_one((port, path, connections, seconds, keep_times, spread))
    shares = [connections // procs + (i < connections % procs) for i in range(procs)]
    with concurrent.futures.ProcessPoolExecutor(procs) as pool:
        parts = list(pool.map(_load_one, [(port, path, n, seconds, keep_times, spread) for n in shares]))
    merged = Result(seconds=max(p.seconds for p in parts))
    for p in parts:
        merged.responses += p.responses
        merged.events += p.events
        merged.errors += p.errors
        merged.timelines += p.timelines
    return merged


def lateness_of(timelines: list[list[float]]) -> list[float]:
    """Per token: arrival minus the stream's first token arrival minus i x ITL (seconds)."""
    out: list[float] = []
    for timeline in timelines:
        tokens = timeline[2:-2]  # skip request time and role chunk; drop finish and [DONE]
        out += [(t - tokens[0]) - i * ITL for i, t in enumerate(tokens)] if len(tokens) > 1 else []
    return out


def locust_levels(levels: list[int], seconds: int, mock_workers: int) -> list[dict]:
    """One Locust process (``sl.load.run``, workers=0) at each user count, against the mock."""
    sys.path.insert(0, str(ROOT))
    import streamlab as sl

    rows = []
    with mock(50, itl=ITL, workers=mock_workers) as m:
        for users in levels:
            result = sl.load.run(f"http://127.0.0.1:{m.port}/v1", users=users, duration=seconds, progress=False)
            late = []
            for record in result.records:
                gaps = record.get("itl_ms") or []
                total = 0.0
                for i, gap in enumerate(gaps, start=1):
                    total += gap
                    late.append(total - i * ITL * 1000)
            rows.append({"users": users, "streams": result.streams, "outcomes": result.outcomes,
                         "itl_p99_ms": result.itl_ms["p99"],
                         "lateness_p50_ms": round(percentile(late, 50), 2) if late else None,
                         "lateness_p99_ms": round(percentile(late, 99), 2) if late else None})
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds of load per throughput measurement")
    parser.add_argument("--mock-workers", type=int, default=1, help="mock processes (and ceiling workers)")
    parser.add_argument("--load-procs", type=int, default=1, help="load-generator processes (split connections)")
    parser.add_argument("--levels", default="100,200,1000", help="concurrent streams for the lateness runs")
    parser.add_argument("--locust", default="", help="user counts for one Locust process, e.g. 50,100,200,400")
    parser.add_argument("--locust-seconds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="tiny numbers (a few seconds in all): checks it runs")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args(argv)
    conns, seconds, warm, late_s = 100, args.seconds, 1.0, 3.0
    levels = [int(x) for x in args.levels.split(",") if x]
    if args.quick:
        conns, seconds, warm, late_s, levels = 4, 0.3, 0.1, 0.3, [2, 4, 8]
    procs = args.load_procs
    rows = []
    ratios = {}
    for chunks, key in ((6, "short"), (200, "long")):
        with ceiling(chunks, args.mock_workers) as c:
            load(c.port, "/v1/chat/completions", conns, warm, procs=procs)  # warm up
            ceil = load(c.port, "/v1/chat/completions", conns, seconds, procs=procs)
        with mock(chunks - 2, workers=args.mock_workers) as m:  # role chunk + tokens + finish chunk ~ chunks events
            load(m.port, "/v1/chat/completions", conns, warm, procs=procs)
            mk = load(m.port, "/v1/chat/completions", conns, seconds, procs=procs)
        a, b = (ceil.rps, mk.rps) if key == "short" else (ceil.eps, mk.eps)
        ratios[key] = b / a if a else float("nan")
        rows.append((f"{key} streams ({chunks} chunks), {conns} conns", "requests/s" if key == "short" else "chunks/s",
                     a, b, mk.errors))
    lateness = []
    for streams in levels:
        with mock(50, itl=ITL, workers=args.mock_workers) as m:
            res = load(m.port, "/v1/chat/completions", streams, late_s, keep_times=True, spread=ITL, procs=procs)
        client = lateness_of(res.timelines)
        lateness.append({"streams": streams, "p50_ms": round(percentile(client, 50) * 1000, 2),
                         "p99_ms": round(percentile(client, 99) * 1000, 2), "responses": res.responses,
                         "errors": res.errors})
    out = {"ratio_short": round(ratios["short"], 3), "ratio_long": round(ratios["long"], 3), "lateness": lateness,
           "mock_workers": args.mock_workers, "load_procs": procs, "cores": os.cpu_count(), "quick": args.quick,
           "targets": {"ratio_short": TARGET_RATIO, "lateness_p99_ms_at_1000": TARGET_P99_MS}}
    if args.locust:
        users = [int(x) for x in args.locust.split(",") if x]
        out["locust"] = locust_levels(users, 1 if args.quick else args.locust_seconds, args.mock_workers)
        over = [r["users"] for r in out["locust"] if r["lateness_p99_ms"] is None
                or r["lateness_p99_ms"] > TARGET_P99_MS]
        held = [r["users"] for r in out["locust"] if r["users"] not in over]
        out["locust_held"] = max(held) if held else None  # most users with lateness p99 <= 10 ms
        out["locust_knee"] = over[0] if over else None     # first level past 10 ms
    print(f"\nstreamlab mock vs raw-ASGI ceiling on uvicorn ({os.cpu_count()} cores, mock workers "
          f"{args.mock_workers}, load processes {procs})\n")
    print(f"{'workload':40} {'metric':11} {'ceiling':>10} {'mock':>10} {'mock/ceiling':>13} {'errors':>7}")
    for label, metric, a, b, errors in rows:
        print(f"{label:40} {metric:11} {a:10.0f} {b:10.0f} {b / a if a else float('nan'):12.0%} {errors:7d}")
    print(f"\ninter-token lateness, concurrent streams x 50 tokens, ITL 20 ms, arrivals spread over one ITL (ms; "
          "client: arrival minus first arrival minus i x ITL)")
    print(f"{'streams':>8} {'p50':>8} {'p99':>8} {'responses':>10} {'errors':>7}")
    for row in lateness:
        print(f"{row['streams']:8d} {row['p50_ms']:8.2f} {row['p99_ms']:8.2f} {row['responses']:10d} {row['errors']:7d}")
    for row in out.get("locust", []):
        print(f"one Locust process, {row['users']:5d} users: {row['streams']} streams, lateness p50 "
              f"{row['lateness_p50_ms']} ms, p99 {row['lateness_p99_ms']} ms, outcomes {row['outcomes']}")
    if "locust" in out:
        print(f"one Locust process holds {out['locust_held']} users at lateness p99 <= 10 ms; knee at "
              f"{out['locust_knee']}")
    print(f"targets: ratio_short >= {TARGET_RATIO:.0%}; lateness p99 <= {TARGET_P99_MS:g} ms at 1,000 streams")
    if args.json:
        print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    main()
