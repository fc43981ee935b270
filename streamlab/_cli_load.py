"""``streamlab load``: a streaming load test on Locust against the mock, your app or any URL.

    streamlab load http://127.0.0.1:8000/v1 --users 50 --duration 10            # one Locust process
    streamlab load http://127.0.0.1:8000/v1 -u 50 -t 10 --workers 2 --json      # master + 2 workers
    streamlab load http://127.0.0.1:8000/v1 -u 50 -t 10 --spec cut@5           # a mock fault on every request
    streamlab load http://127.0.0.1:8001/sse -u 20 -t 10                        # GET your app's SSE route
    streamlab load http://127.0.0.1:8000/v1 -u 200 -t 60 --master --expect-workers 4   # by hand, across hosts:
    streamlab load --worker --master-host 10.0.0.5                                       # ... on each worker host

A URL ending in ``/v1`` gets OpenAI chat requests (``stream: true``); any other URL is
fetched with GET (or POSTed ``--body``). ``--json`` prints exactly one JSON object, on the last
line of stdout: streams, outcomes, TTFT/ITL/E2E percentiles (ms), users, duration_s, workers.
Durations are wall-clock seconds: a load test runs in real time. The ``streamlab`` CLI
(``streamlab/_cli.py``) calls ``add_parser`` and ``run``.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.parse
from typing import Callable

__all__ = ["add_parser", "run", "main"]


def _number(parse: type, what: str, ok: "Callable[[float], bool]", rule: str) -> "Callable[[str], float]":
    """An argparse ``type``: ``parse(text)``, or "expected <what>"; then ``ok(value)``, or "must be <rule>"."""
    def convert(text: str):
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {value if parse is int else text}")
        return value

    return convert


_positive_int = _number(int, "a whole number", lambda v: v >= 1, "at least 1")
_count = _number(int, "a whole number", lambda v: v >= 0, "0 or more")
_positive_float = _number(float, "a number", lambda v: v > 0, "greater than 0")
_seconds = _number(float, "a number of seconds", lambda v: not v < 0, "0 or more")


def _url(text: str) -> str:
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"expected an http(s) URL such as http://127.0.0.1:8000/v1, got {text!r}")
    try:
        parts.port
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad port in {text!r}") from None
    return text


def add_parser(subparsers: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    """Add the ``load`` subcommand to a ``streamlab`` argument parser."""
    p = subparsers.add_parser(
        "load", help="streaming load test on Locust (users streaming at once; outcomes, TTFT, ITL)",
        description="Run Locust headless with streaming users against URL and name every stream's outcome "
                    "like sl.record does. A URL ending in /v1 gets OpenAI chat requests (stream: true); any "
                    "other URL is fetched with GET (or POSTed --body). Times are wall clock.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Distributed by hand: 'streamlab load URL -u N -t S --master --expect-workers K' on one host, "
               "'streamlab load --worker --master-host HOST' on each of K others (Locust's --master/--worker).")
    p.add_argument("url", nargs="?", type=_url, help="the mock's or your server's /v1 base URL, or an SSE URL")
    p.add_argument("-u", "--users", type=_positive_int, default=10, help="concurrent streaming users (default 10)")
    p.add_argument("-t", "--duration", type=_positive_int, default=10,
                   help="whole seconds of load, wall clock (default 10)")
    p.add_argument("-r", "--spawn-rate", type=_positive_float, default=None,
                   help="users started per second (default: all within one second)")
    p.add_argument("--workers", type=_count, default=0,
                   help="run a Locust master and this many worker processes here (default 0: one process)")
    p.add_argument("--spec", default="", help="mock fault spec for every request, e.g. cut@5 (URL must end in /v1)")
    p.add_argument("--timeout", type=_positive_float, default=30.0,
                   help="seconds without a byte before a stream counts as stalled (default 30)")
    p.add_argument("--wait", type=_seconds, default=0.0, help="seconds each user waits between streams (default 0)")
    p.add_argument("--body", default=None, help="JSON to POST to a non-/v1 URL instead of a GET")
    p.add_argument("--model", default="streamlab-load", help="model name sent to a /v1 URL")
    p.add_argument("--json", action="store_true", help="print one JSON object (the last line of stdout)")
    dist = p.add_argument_group("Locust distributed mode (passed to Locust)")
    dist.add_argument("--master", action="store_true", help="run only a master; workers connect from elsewhere")
    dist.add_argument("--worker", action="store_true", help="run only a worker of a master started with --master")
    dist.add_argument("--master-host", default="127.0.0.1", help="master to connect to (--worker; default 127.0.0.1)")
    dist.add_argument("--master-port", type=_positive_int, default=5557, help="master port (--worker; default 5557)")
    dist.add_argument("--master-bind-port", type=_positive_int, default=5557,
                      help="port the master listens on (--master; default 5557)")
    dist.add_argument("--master-bind-host", default="127.0.0.1",
                      help="address the master listens on (--master; default 127.0.0.1, use * for other hosts)")
    dist.add_argument("--expect-workers", type=_positive_int, default=1,
                      help="workers the master waits for before it starts (--master; default 1)")
    return p


def run(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> int:
    from . import load

    def fail(message: str) -> int:
        if parser is not None:
            parser.error(message)   # exits 2
        print(f"streamlab load: {message}", file=sys.stderr)
        return 2

    if args.worker:
        if args.master:
            return fail("--master and --worker exclude each other")
        return load.run_worker(master_host=args.master_host, master_port=args.master_port)
    if args.url is None:
        return fail("a URL is needed (the mock's /v1 base URL, your app's /v1 or an SSE URL)")
    if args.body is not None:
        try:
            json.loads(args.body)
        except ValueError as exc:
            return fail(f"--body is not JSON: {exc}")
    url = args.url
    if args.spec:
        from . import faults

        try:
            faults.parse(args.spec)
            url = load.with_spec(url, args.spec)
        except (faults.SpecError, ValueError) as exc:
            return fail(f"--spec: {exc}")
    if args.master and args.workers:
        return fail("--master starts no workers here: use --expect-workers for how many connect")
    try:
        result = load.run(url, users=args.users, duration=args.duration, spawn_rate=args.spawn_rate,
                          workers=args.expect_workers if args.master else args.workers,
                          external_workers=args.master, master_port=args.master_bind_port if args.master else None,
                          master_bind_host=args.master_bind_host,
                          timeout=args.timeout, wait=args.wait, body=args.body, model=args.model,
                          progress=not args.json, locust_args=[])
    except load.LoadError as exc:
        print(f"streamlab load: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(result.to_json(), flush=True)
    else:
        print(result.summary())
        print(f"(Locust counted {result.locust.get('requests')} requests, {result.locust.get('failures')} "
              f"failed; the run took {result.elapsed_s:g} s with start-up and shut-down)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="streamlab")
    sub = parser.add_subparsers(dest="command", required=True)
    p = add_parser(sub)
    args = parser.parse_args(["load", *(sys.argv[1:] if argv is None else argv)])
    try:
        return run(args, p)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
