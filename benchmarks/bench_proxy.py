"""Relay throughput of the embedded proxy vs real nginx, on the same upstream and load.

    .venv/bin/python benchmarks/bench_proxy.py [--seconds 3] [--rounds 3] [--connections 100]

One run, four paths to the same upstream (a minimal raw-ASGI SSE app on uvicorn
in its own process): direct, real nginx (profile "nginx": buffering on, the
defaults), the embedded proxy with the same settings, and the embedded proxy
with its hop log on (what a notebook runs). Each proxy runs in its own process
(the embedded one through ``python -m streamlab._cli_proxy``); this process is
the load (benchmarks/_load.py: asyncio raw sockets, keep-alive, 100 connections).

  1. requests/s with 6-chunk streams, 2. chunks/s with 200-chunk streams, and the
  ratio of the embedded proxy to nginx (target >= 40 %);
  3. added latency per chunk at low load: the upstream stamps each event with
     time.perf_counter_ns() (CLOCK_MONOTONIC, comparable across processes) and
     the client subtracts it on arrival; p50/p99 through a proxy minus direct.

Bounded: 4 paths x 2 loads x ``--seconds`` x ``--rounds`` plus the latency probes (about 80 s).
The machine has 2 cores shared by the upstream, the proxy and the load, so the
rounds are interleaved and the best round of each path is kept.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))
from _load import percentile, run_load  # noqa: E402

PY = sys.executable
BODY = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "benchmark"}]}
CHUNK = (b'data: {"id":"c","object":"chat.completion.chunk","created":0,"model":"m","choices":[{"index":0,'
         b'"delta":{"content":" word"},"logprobs":null,"finish_reason":null}]}\n\n')


# --------------------------------------------------------------------------- the upstream (subprocess)


async def app(scope, receive, send):
    """POST /sse/<n>: n OpenAI-shaped chunks and [DONE], as fast as possible.
    GET /stamp/<n>?gap=ms: n events ``data: <perf_counter_ns>`` every ``gap`` ms (latency probe)."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    kind, _, n = scope["path"].strip("/").partition("/")
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    if kind == "stamp":
        gap = float(scope["query_string"].decode().partition("=")[2] or 10) / 1000
        for _ in range(int(n)):
            await asyncio.sleep(gap)
            await send({"type": "http.response.body", "body": b"data: %d\n\n" % time.perf_counter_ns(),
                        "more_body": True})
    else:
        for _ in range(int(n or 6)):
            await send({"type": "http.response.body", "body": CHUNK, "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 20) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"port {port} not ready")


def start_upstream() -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen(
        [PY, "-m", "uvicorn", "bench_proxy:app", "--app-dir", str(HERE), "--port", str(port), "--http", "httptools",
         "--loop", "uvloop", "--no-access-log", "--log-level", "warning", "--backlog", "2048"],
        cwd=str(ROOT), stdin=subprocess.DEVNULL)
    wait_port(port, proc)
    return proc, port


def start_embedded(upstream: str, record: bool) -> tuple[subprocess.Popen, int]:
    cmd = [PY, "-m", "streamlab._cli_proxy", "--upstream", upstream, "--profile", "nginx"]
    if not record:
        cmd.append("--no-record")
    proc = subprocess.Popen(cmd, cwd=str(ROOT), stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    match = re.search(r"http://127\.0\.0\.1:(\d+)", line)
    if not match:
        proc.kill()
        raise RuntimeError(f"embedded proxy did not start: {line!r}")
    port = int(match.group(1))
    wait_port(port, proc)
    return proc, port


async def latency_probe(port: int, events: int = 200, gap_ms: float = 5.0) -> list[float]:
    """Arrival minus emission (ms) for each event of one slow stream, one connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /stamp/{events}?gap={gap_ms} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await reader.readuntil(b"\r\n\r\n")
    out: list[float] = []
    buf = b""
    while True:
        data = await reader.read(65536)
        now = time.perf_counter_ns()
        if not data:
            break
        buf += data
        for stamp in re.findall(rb"data: (\d+)\n\n", buf):
            out.append((now - int(stamp)) / 1e6)
        buf = buf[buf.rfind(b"\n\n") + 2:] if b"\n\n" in buf else buf
        if b"\r\n0\r\n\r\n" in data or data.startswith(b"0\r\n\r\n"):
            break
    writer.close()
    return out


def measure(port: int, seconds: float, connections: int, row: dict | None = None) -> dict:
    """One round: 6-chunk and 200-chunk load, then the latency probe; keeps the best of rounds in ``row``."""
    short = asyncio.run(run_load(port, "/sse/6", BODY, connections=connections, seconds=seconds))
    long = asyncio.run(run_load(port, "/sse/200", BODY, connections=connections, seconds=seconds))
    lat = asyncio.run(latency_probe(port))
    row = row if row is not None else {"rps": 0.0, "eps200": 0.0, "errors": 0, "lat": []}
    row["rps"] = max(row["rps"], short.rps)
    row["eps200"] = max(row["eps200"], long.eps)
    row["errors"] += short.errors + long.errors
    row["lat"] += lat
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="load per scenario and round (default 3)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds, best kept (default 3)")
    parser.add_argument("--connections", type=int, default=100)
    args = parser.parse_args()

    os.environ.setdefault("PYTHONPATH", str(ROOT))
    from streamlab._nginx import NginxProxy, nginx_available

    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass

    upstream, up_port = start_upstream()
    upstream_url = f"http://127.0.0.1:{up_port}"
    rows: dict[str, dict] = {}
    nginx = embedded = logged = None
    try:
        print(f"upstream: raw ASGI SSE app on uvicorn, port {up_port}; load: {args.connections} connections, "
              f"{args.seconds:g} s per scenario, best of {args.rounds} interleaved rounds", flush=True)
        if nginx_available():
            nginx = NginxProxy(upstream=upstream_url, profile="nginx").start()
        embedded = start_embedded(upstream_url, record=False)
        logged = start_embedded(upstream_url, record=True)
        paths = [("direct (no proxy)", up_port)]
        if nginx is not None:
            paths.append((nginx.kind, nginx.port))
        paths += [("embedded proxy", embedded[1]), ("embedded proxy + hop log", logged[1])]
        for round_ in range(args.rounds):  # interleaved, so a noisy neighbour hurts every path alike
            for label, port in paths:
                rows[label] = measure(port, args.seconds, args.connections, rows.get(label))
                print(f"  round {round_ + 1}: {label:28} {rows[label]['rps']:8,.0f} req/s "
                      f"{rows[label]['eps200']:10,.0f} chunks/s", flush=True)
    finally:
        for proc in (embedded, logged):
            if proc is not None:
                proc[0].terminate()
                proc[0].wait(5)
        if nginx is not None:
            nginx.stop()
        upstream.terminate()
        upstream.wait(5)

    nginx_row = next((r for k, r in rows.items() if k.startswith("real nginx")), None)
    direct = rows["direct (no proxy)"]
    d50, d99 = percentile(direct["lat"], 50), percentile(direct["lat"], 99)
    print()
    print(f"{'path':32} {'6-chunk req/s':>13} {'200-chunk chunks/s':>19} {'vs nginx (6 / 200)':>19} "
          f"{'added ms/chunk p50':>18} {'p99':>6} {'errors':>6}")
    for label, r in rows.items():
        ratio = (f"{r['rps'] / nginx_row['rps']:.0%} / {r['eps200'] / nginx_row['eps200']:.0%}"
                 if nginx_row else "n/a")
        added = "-" if r is direct else f"{percentile(r['lat'], 50) - d50:.3f}"
        added99 = "-" if r is direct else f"{percentile(r['lat'], 99) - d99:.3f}"
        print(f"{label:32} {r['rps']:13,.0f} {r['eps200']:19,.0f} {ratio:>19} {added:>18} {added99:>6} "
              f"{r['errors']:>6}")
    print(f"\nlatency direct: p50 {d50:.3f} ms, p99 {d99:.3f} ms (one stream, an event every 5 ms)")
    if nginx_row:
        emb = rows["embedded proxy"]
        worst = min(emb["rps"] / nginx_row["rps"], emb["eps200"] / nginx_row["eps200"])
        print(f"embedded proxy vs nginx, worst of the two: {worst:.0%} (target >= 40 %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
