"""``streamlab`` command line: ``streamlab mock`` and ``streamlab proxy``."""

from __future__ import annotations

import argparse
import sys

from . import faults as _faults


def _option(name: str):
    """An argparse ``type=`` that checks a value against the mock's limits (``streamlab._spec``)."""
    def parse(text: str):
        from . import _spec

        try:
            return _spec.check_option(name, text, raw=True)
        except _faults.SpecError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    parse.__name__ = name  # argparse names the type in its messages
    return parse


def _spec_arg(text: str) -> str:
    try:
        _faults.parse(text)
    except _faults.SpecError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"a port is a whole number from 0 to 65535, not {text!r}")
    return int(text)


def _scale(text: str) -> float:
    import math

    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 < value <= 1000):
        raise argparse.ArgumentTypeError(f"the time scale is a number above 0 and at most 1000, not {text!r}")
    return value


def _mock_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("mock", help="run the mock OpenAI-compatible model server",
                       description="Run the mock model on 127.0.0.1. Clients choose faults per request with the "
                                   "URL prefix /s/<spec>/v1 or the X-Streamlab header; --fault sets a default "
                                   f"for every request. Faults: {', '.join(_faults.names())}. Limits: tokens "
                                   "0..100000, durations 0..86400 scenario seconds (see streamlab.faults).")
    p.add_argument("--port", type=_port, default=0, help="port to bind (default: a free one, printed)")
    p.add_argument("--tokens", type=_option("tokens"), default=32, help="tokens per answer (default 32, at most 100000)")
    p.add_argument("--ttft", type=_option("ttft"), default=0.0, help="time to first token, scenario seconds")
    p.add_argument("--itl", type=_option("itl"), default=0.0, help="inter-token latency, scenario seconds")
    p.add_argument("--jitter", type=_option("jitter"), default=0.0, help="bounded seeded jitter, scenario seconds")
    p.add_argument("--seed", type=_option("seed"), default=0)
    p.add_argument("--echo", action="store_true", help="answer with the words of the last user message")
    p.add_argument("--fault", type=_spec_arg, default="",
                   help="default spec for every request, e.g. 'cut@12' or 'stall@5=30'")
    p.add_argument("--time-scale", type=_scale, default=None, help="wall-clock seconds per scenario second")
    p.add_argument("--no-journal", action="store_true", help="keep no request journal (benchmarks)")
    p.add_argument("--workers", type=int, default=1,
                   help="serve from N processes on one port (SO_REUSEPORT; streamlab._mock_workers), default 1")


def run_mock(args: argparse.Namespace) -> int:
    import uvicorn

    from ._mock import MockApp
    from ._offline import ensure_offline
    from ._timescale import time_scale

    ensure_offline()
    if args.time_scale:
        time_scale(args.time_scale)
    try:
        default_faults, options = _faults.parse(args.fault)
        settings = dict(tokens=args.tokens, ttft=args.ttft, itl=args.itl, jitter=args.jitter, seed=args.seed,
                        echo=args.echo)
        settings.update({k: v for k, v in options.items() if k in settings})
        app = MockApp(faults=default_faults, journal_size=1 if args.no_journal else 2000,
                      record_events=not args.no_journal, **settings)
    except _faults.SpecError as exc:
        print(f"streamlab mock: error: {exc}", file=sys.stderr)
        return 2
    if args.workers != 1:  # several processes: streamlab/_mock_workers.py
        from ._mock_workers import MAX_WORKERS, run_cli

        if not 1 <= args.workers <= MAX_WORKERS:
            print(f"streamlab mock: error: --workers must be from 1 to {MAX_WORKERS}", file=sys.stderr)
            return 2
        return run_cli(args.workers, args.port, dict(faults=default_faults, journal_size=1 if args.no_journal
                                                     else 2000, record_events=not args.no_journal, **settings))
    from ._servers import bound_socket

    try:
        sock = bound_socket(args.port)  # bound before we announce it: a client may connect at once
    except OSError as exc:
        print(f"streamlab mock: cannot listen on 127.0.0.1:{args.port}: {exc.strerror}", file=sys.stderr)
        return 2
    port = sock.getsockname()[1]
    print(f"streamlab mock listening on http://127.0.0.1:{port}/v1 (Ctrl-C to stop)", flush=True)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, http="httptools", lifespan="off",
                            access_log=False, log_level="warning", proxy_headers=False, server_header=False,
                            date_header=False, timeout_graceful_shutdown=1, backlog=2048)
    server = uvicorn.Server(config)
    server.run(sockets=[sock])
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="streamlab", description="streamlab: streaming cutoff workbench")
    sub = parser.add_subparsers(dest="command", required=True)
    _mock_parser(sub)
    try:
        from . import _cli_proxy
    except ImportError:  # pragma: no cover - the proxy is optional while it is built
        _cli_proxy = None
    if _cli_proxy is not None:
        _cli_proxy.add_parser(sub)
    from . import _cli_load

    load_parser = _cli_load.add_parser(sub)
    from . import _cli_diagnose

    _cli_diagnose.add_parser(sub)
    args = parser.parse_args(argv)
    try:
        if args.command == "mock":
            return run_mock(args)
        if args.command == "proxy" and _cli_proxy is not None:
            return _cli_proxy.run(args)
        if args.command == "load":
            return _cli_load.run(args, load_parser)
        if args.command == "diagnose":
            return _cli_diagnose.run(args)
    except KeyboardInterrupt:
        return 0
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
