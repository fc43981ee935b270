"""``streamlab`` command line: ``streamlab mock`` and ``streamlab proxy``."""

from __future__ import annotations

import argparse
import sys

from . import faults as _faults


def _mock_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("mock", help="run the mock OpenAI-compatible model server",
                       description="Run the mock model on 127.0.0.1. Clients choose faults per request with the "
                                   "URL prefix /s/<spec>/v1 or the X-Streamlab header; --fault sets a default "
                                   f"for every request. Faults: {', '.join(_faults.names())}.")
    p.add_argument("--port", type=int, default=0, help="port to bind (default: a free one, printed)")
    p.add_argument("--tokens", type=int, default=32, help="tokens per answer (default 32)")
    p.add_argument("--ttft", type=float, default=0.0, help="time to first token, scenario seconds")
    p.add_argument("--itl", type=float, default=0.0, help="inter-token latency, scenario seconds")
    p.add_argument("--jitter", type=float, default=0.0, help="bounded seeded jitter, scenario seconds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--echo", action="store_true", help="answer with the words of the last user message")
    p.add_argument("--fault", default="", help="default spec for every request, e.g. 'cut@12' or 'stall@5=30'")
    p.add_argument("--time-scale", type=float, default=None, help="wall-clock seconds per scenario second")
    p.add_argument("--no-journal", action="store_true", help="keep no request journal (benchmarks)")


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
    except _faults.SpecError as exc:
        print(f"streamlab mock: {exc}", file=sys.stderr)
        return 2
    settings = dict(tokens=args.tokens, ttft=args.ttft, itl=args.itl, jitter=args.jitter, seed=args.seed,
                    echo=args.echo)
    settings.update({k: v for k, v in options.items() if k in settings})
    app = MockApp(faults=default_faults, journal_size=1 if args.no_journal else 2000,
                  record_events=not args.no_journal, **settings)
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
    args = parser.parse_args(argv)
    try:
        if args.command == "mock":
            return run_mock(args)
        if args.command == "proxy" and _cli_proxy is not None:
            return _cli_proxy.run(args)
    except KeyboardInterrupt:
        return 0
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
