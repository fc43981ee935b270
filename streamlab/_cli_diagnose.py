"""``streamlab diagnose URL``: which layer cuts, holds or truncates a stream (see ``streamlab._diagnose``).

    streamlab diagnose http://127.0.0.1:8000/v1                 # an OpenAI-compatible base URL
    streamlab diagnose http://127.0.0.1:8000/chat/sse --json    # an SSE endpoint of your app
    streamlab diagnose http://127.0.0.1:8080/chat/sse --model itl=0.05 --model-port 9100
                                                                # start a mock model for your app first

Exit status: 0 the stream is healthy, 1 a problem was found (the verdict says which),
2 bad input or nobody listening (a one-line message, no traceback).
"""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["add_parser", "run", "main"]


def add_parser(subparsers: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    """Add the ``diagnose`` subcommand to a ``streamlab`` argument parser."""
    from ._diagnose import CAUSES, STEPS

    p = subparsers.add_parser(
        "diagnose", help="find which layer cuts, holds or truncates a stream (any OpenAI URL or SSE endpoint)",
        description="Probe URL with real streaming requests and report which layer (proxy, app, model, client) "
                    "cuts, holds or truncates the stream. Durations are scenario seconds (--time-scale).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="causes: " + ", ".join(CAUSES) + "\nsteps: " + ", ".join(STEPS)
               + "\nexit status: 0 healthy, 1 a problem found, 2 bad input or unreachable")
    p.add_argument("url", help="an OpenAI-compatible base URL (http://host:port/v1) or any SSE endpoint")
    p.add_argument("--json", action="store_true", help='print one JSON object {"verdict", "findings"}')
    p.add_argument("--kind", choices=("openai", "sse"), default=None,
                   help="default: openai when the path ends in /v1 or /chat/completions, else sse")
    p.add_argument("--method", default="GET", help="HTTP method of an SSE probe (POST when --data is given)")
    p.add_argument("--data", default=None, help="JSON request body (SSE: sent as is; OpenAI: merged into the request)")
    p.add_argument("-H", "--header", action="append", default=[], metavar="'NAME: VALUE'", help="extra request header")
    p.add_argument("--time-scale", type=float, default=None, help="wall-clock seconds per scenario second of the stack")
    p.add_argument("--max-silence", type=float, default=120.0, help="give up after this long without a byte (120)")
    p.add_argument("--health", default=None, metavar="URL",
                   help="a cheap URL of the same server, timed while streaming")
    p.add_argument("--direct", default=None, metavar="URL", help="the same endpoint without the hop in front")
    p.add_argument("--model", nargs="?", const="", default=None, metavar="SPEC",
                   help="start a streamlab mock model (optional spec, e.g. 'itl=0.05,tokens=40'), print its base "
                        "URL for your app, and compare its send times with what the probe receives")
    p.add_argument("--model-port", type=int, default=0, help="port of the --model mock (default: a free one)")
    p.add_argument("--max-tokens", type=int, default=None, help="max_tokens for OpenAI probes")
    p.add_argument("--model-name", default=None, help="model name for OpenAI probes (default: the first of /models)")
    p.add_argument("--concurrency", type=int, default=3, help="streams at once in the concurrency step (3)")
    p.add_argument("--steps", default=None, help="comma-separated steps to run (default: all that apply)")
    p.add_argument("--sdk", action="store_true", help="also run the raw openai SDK step")
    p.set_defaults(func=run)
    return p


def _fail(message: str) -> int:
    print(f"streamlab diagnose: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    from ._diagnose import DEFAULT_STEPS, DiagnoseError, diagnose

    headers = {}
    for raw in args.header:
        name, sep, value = raw.partition(":")
        if not sep or not name.strip():
            return _fail(f"--header wants 'Name: value', got {raw!r}")
        headers[name.strip()] = value.strip()
    body = None
    if args.data is not None:
        try:
            body = json.loads(args.data)
        except ValueError as exc:
            return _fail(f"--data is not JSON: {exc}")
    if args.time_scale is not None and not args.time_scale > 0:
        return _fail(f"--time-scale must be > 0, got {args.time_scale}")
    if args.concurrency < 1 or args.max_silence <= 0:
        return _fail("--concurrency must be >= 1 and --max-silence > 0")
    steps = tuple(s.strip() for s in args.steps.split(",") if s.strip()) if args.steps else DEFAULT_STEPS
    if args.sdk and "raw_sdk" not in steps:
        steps += ("raw_sdk",)
    mock = None
    try:
        if args.model is not None:
            mock = _start_model(args)
            if mock is None:
                return 2
        report = diagnose(args.url, kind=args.kind, method=args.method, body=body, headers=headers,
                          time_scale=args.time_scale, max_silence=args.max_silence, health_url=args.health,
                          direct=args.direct, model=mock, max_tokens=args.max_tokens, model_name=args.model_name,
                          concurrency_n=args.concurrency, steps=steps)
    except DiagnoseError as exc:
        return _fail(str(exc))
    finally:
        if mock is not None:
            mock.stop()
    print(report.to_json(indent=2) if args.json else report.text(), flush=True)
    return 0 if report.cause == "ok" else 1


def _start_model(args: argparse.Namespace):
    from . import faults as _faults
    from ._mock import MockLLM
    from ._timescale import time_scale

    try:
        chain, options = _faults.parse(args.model)
    except _faults.SpecError as exc:
        _fail(f"--model: {exc}")
        return None
    if args.time_scale:
        time_scale(args.time_scale)
    settings = {k: v for k, v in options.items() if k in ("tokens", "ttft", "itl", "jitter", "seed", "echo")}
    mock = (_FixedPortMock(args.model_port, faults=chain, **settings) if args.model_port
            else MockLLM(faults=chain, **settings))
    try:
        mock.start()
    except OSError as exc:
        _fail(f"--model: cannot listen on 127.0.0.1:{args.model_port}: {exc}")
        return None
    print(f"streamlab diagnose: mock model at {mock.base_url} -- point your app at it "
          f"(e.g. STREAMLAB_MODEL_URL={mock.base_url} or OPENAI_BASE_URL)", file=sys.stderr, flush=True)
    if sys.stdin is not None and sys.stdin.isatty():
        try:
            input("press Enter when your app uses it ... ")
        except EOFError:
            pass
    return mock


def _fixed_port_mock():
    from . import _servers
    from ._mock import MockLLM

    class FixedPortMock(MockLLM):
        """A MockLLM on a given port (``ThreadedASGIServer`` always binds a free one; the CLI needs a port
        the user's app can be configured with before it starts)."""

        def __init__(self, port: int, **settings):
            super().__init__(**settings)
            self.wanted_port = port

        def _start(self) -> None:
            original = _servers.bound_socket
            _servers.bound_socket = lambda port=0: original(self.wanted_port)
            try:
                super()._start()
            finally:
                _servers.bound_socket = original

    return FixedPortMock


def _FixedPortMock(port: int, **settings):  # noqa: N802 - a class factory
    return _fixed_port_mock()(port, **settings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="streamlab")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = parser.parse_args(["diagnose", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
