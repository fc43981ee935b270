"""``streamlab proxy``: the fault-injecting reverse proxy in front of any local server.

    streamlab proxy --upstream http://127.0.0.1:8000 --profile nginx --read-timeout 30
    streamlab proxy --upstream http://127.0.0.1:8000 --buffering on --gzip --engine nginx
    streamlab proxy --upstream http://127.0.0.1:8000 --fault "buffering=on:buffer_size=8k" --deadline 29
    streamlab proxy --upstream http://127.0.0.1:8000 --profile cloudflare --on-timeout end --x-accel pass

One flag per registered hop fault (``streamlab.hops.REGISTRY``), so a new fault
gets its flag without touching this file. Prints the listening URL, runs until
Ctrl-C (or SIGTERM). The lead's ``streamlab/_cli.py`` calls ``add_parser`` and
``run``; ``python -m streamlab._cli_proxy ...`` works on its own too.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

__all__ = ["add_parser", "run", "main"]


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_parser(subparsers: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    """Add the ``proxy`` subcommand to a ``streamlab`` argument parser."""
    from . import hops

    p = subparsers.add_parser(
        "proxy", help="run the fault-injecting reverse proxy (or real nginx) in front of a server",
        description="Run a reverse proxy on 127.0.0.1 in front of --upstream, with hop faults "
                    "(durations in scenario seconds; nginx units like 500ms or 2m work too).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Spec grammar for --fault: name[=value][:key=value...], e.g. read_timeout=30, "
               "buffering=on:buffer_size=8k:buffers=8x8k, gzip:types=text/event-stream.\n"
               f"Faults: {', '.join(n for n in hops.names() if n != 'noop')}.")
    p.add_argument("--upstream", required=True, help="URL of the server to forward to, e.g. http://127.0.0.1:8000")
    p.add_argument("--port", type=int, default=0, help="port to listen on (default: a free one, printed)")
    p.add_argument("--profile", choices=sorted(hops.PROFILES), type=lambda v: v.replace("-", "_"),
                   help="start from a product's documented defaults (see streamlab.hops)")
    p.add_argument("--on-timeout", choices=hops.ACTIONS, default=None,
                   help="what every timer does to a response already streaming: cut (default), end "
                        "(clean end, a silent truncation), error-event (an SSE error object), reset (TCP RST)")
    p.add_argument("--x-accel", choices=("strip", "pass"), default="strip",
                   help="X-Accel-* response headers: strip (like nginx, default) or pass them on (like a "
                        "non-nginx hop in the middle)")
    p.add_argument("--engine", choices=("embedded", "nginx"), default="embedded",
                   help="embedded proxy (default) or real nginx from the same settings")
    p.add_argument("--proxy-http-version", choices=("1.0", "1.1"), default="1.0",
                   help="HTTP version toward the upstream (nginx default 1.0)")
    p.add_argument("--path-prefix", default="/", help="apply the fault flags only to paths with this prefix")
    p.add_argument("--fault", action="append", default=[], metavar="SPEC", help="a fault spec (repeatable)")
    p.add_argument("--time-scale", type=float, default=None, help="wall-clock seconds per scenario second")
    p.add_argument("--no-record", action="store_true", help="keep no hop log (benchmarks)")
    limits = p.add_argument_group("request limits (nginx names and defaults)")
    limits.add_argument("--client-header-timeout", type=float, default=60.0, metavar="SECONDS",
                        help="the whole request head must arrive within this (default 60)")
    limits.add_argument("--client-body-timeout", type=float, default=60.0, metavar="SECONDS",
                        help="idle time between request body reads (default 60)")
    limits.add_argument("--keepalive-timeout", type=float, default=75.0, metavar="SECONDS",
                        help="idle time of a kept-alive client connection (default 75)")
    limits.add_argument("--large-client-header-buffers", default="4x8k", metavar="NxSIZE",
                        help="request head limit: line > SIZE -> 414/400, head > 1k + N x SIZE -> 400 "
                             "(default 4x8k)")
    limits.add_argument("--client-max-body-size", default="1m", metavar="SIZE",
                        help="larger request bodies get 413; 0: no limit (default 1m)")
    limits.add_argument("--proxy-buffer-size", default="64k", metavar="SIZE",
                        help="largest upstream response head, else 502 (default 64k; --buffering sets its own)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; others need --allow-non-loopback)")
    p.add_argument("--allow-non-loopback", action="store_true",
                   help="really listen on a non-loopback --host (the proxy has no authentication)")
    group = p.add_argument_group("hop faults (one flag per registered fault)")
    for name, cls in hops.REGISTRY.items():
        if name == "noop":
            continue
        summary = (cls.__doc__ or "").strip().splitlines()[0].replace("``", "")
        if cls.value_arg is None:
            group.add_argument(_flag(name), action="store_true", help=f"{summary} [{cls.setting}]")
        else:
            metavar = {"seconds": "SECONDS", "nbytes": "BYTES", "on": "on|off"}.get(cls.value_arg, "VALUE")
            group.add_argument(_flag(name), metavar=metavar, default=None, help=f"{summary} [{cls.setting}]")
    p.set_defaults(func=run)
    return p


def _faults(args: argparse.Namespace) -> list:
    from . import hops

    out = []
    for name, cls in hops.REGISTRY.items():
        value = getattr(args, name, None)
        if value in (None, False) or name == "noop":
            continue
        out.append(hops.from_spec(name if value is True else f"{name}={value}"))
    for spec in args.fault:
        out.extend(hops.parse(spec))
    return out


def run(args: argparse.Namespace) -> int:
    """Start the proxy from parsed arguments and serve until Ctrl-C / SIGTERM."""
    from . import hops
    from ._nginx import NginxProxy, nginx_available
    from ._proxy import Proxy, Rule
    from ._timescale import time_scale

    if args.time_scale:
        time_scale(args.time_scale)
    try:
        faults = [Rule(fault=f, path_prefix=args.path_prefix) for f in _faults(args)]
    except hops.SpecError as exc:
        print(f"streamlab proxy: {exc}", file=sys.stderr)
        return 2
    profile = args.profile
    if args.on_timeout is not None:  # re-arm every timer, the profile's too
        faults = hops.with_action([*(hops.PROFILES[profile]() if profile else []), *faults], args.on_timeout)
        profile = None
        if args.engine == "nginx" and args.on_timeout != "cut":
            print("streamlab proxy: real nginx can only cut at a timeout; --on-timeout "
                  f"{args.on_timeout} needs --engine embedded", file=sys.stderr)
            return 2
    if args.engine == "nginx" and args.x_accel != "strip":
        print("streamlab proxy: nginx always consumes X-Accel-* headers; --x-accel pass needs --engine embedded",
              file=sys.stderr)
        return 2
    try:
        count, _, size = args.large_client_header_buffers.lower().partition("x")
        settings = dict(upstream=args.upstream, faults=faults, profile=profile,
                        proxy_http_version=args.proxy_http_version, record=not args.no_record, port=args.port,
                        client_header_timeout=args.client_header_timeout,
                        client_body_timeout=args.client_body_timeout, keepalive_timeout=args.keepalive_timeout,
                        large_client_header_buffers=(int(count), size or "8k"),
                        client_max_body_size=args.client_max_body_size, proxy_buffer_size=args.proxy_buffer_size,
                        host=args.host, allow_non_loopback=args.allow_non_loopback)
    except ValueError as exc:
        print(f"streamlab proxy: {exc}", file=sys.stderr)
        return 2
    try:
        if args.engine == "nginx":
            if not nginx_available():
                print("streamlab proxy: nginx is not installed (apt-get install nginx-light)", file=sys.stderr)
                return 2
            proxy = NginxProxy(**settings)
        else:
            proxy = Proxy(**settings, x_accel=args.x_accel)
    except ValueError as exc:
        print(f"streamlab proxy: {exc}", file=sys.stderr)
        return 2

    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with proxy:
        chain = ", ".join(f.spec() for f in proxy.faults) or "none"
        print(f"streamlab proxy ({proxy.kind}) listening on {proxy.url} -> {args.upstream} (Ctrl-C to stop)",
              flush=True)
        print(f"faults: {chain}", flush=True)
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="streamlab")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["proxy", *(sys.argv[1:] if argv is None else argv)])
    try:
        return run(args)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":  # pragma: no cover - `python -m streamlab._cli_proxy --upstream ...`
    sys.exit(main())
