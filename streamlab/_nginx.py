"""Real nginx, driven by the same fault settings as the embedded proxy.

    >>> from streamlab import hops
    >>> with proxy_for(upstream=mock.url, faults=hops.nginx(proxy_read_timeout=30)) as proxy:
    ...     proxy.kind                       # 'real nginx 1.22.1' or 'embedded proxy (nginx not installed)'
    ...     print(proxy.config)              # (real nginx) the nginx.conf generated from the faults
    ...     proxy.log_lines("timed out")     # (real nginx) nginx's own error log lines

``nginx_conf()`` turns rules (faults + path prefixes) into an nginx.conf: one
``location`` per path prefix, every directive written out explicitly, so that a
fault that is absent means the same for both ("no Buffering fault" is
``proxy_buffering off``, "no ReadTimeout" is a one-day timeout). Faults nginx has
no directive for (a load balancer's idle timeout, a gateway deadline, byte
limits, resets) raise ``NginxUnsupported``; ``proxy_for`` then falls back to the
embedded proxy and says why in ``.kind``.

``NginxProxy`` runs ``nginx -g 'daemon off;'``-style in the foreground: a master
and one worker, pid file, temp dirs and logs in a private temp directory,
``listen 127.0.0.1:<free port>``, error log captured line by line. ``inject()``
rewrites the config and reloads (SIGHUP; streams in flight finish on the old
worker) and waits until the new config answers. Works as root (workers run as
root) and as a normal user.

The request limits have the embedded proxy's names and defaults (nginx's own):
``client_header_timeout``, ``client_body_timeout``, ``large_client_header_buffers``,
``client_max_body_size``, and ``proxy_buffer_size`` for responses when no
``Buffering`` fault applies (``streamlab/_http.py`` has what nginx does with each).

Lifetime: nothing outlives the Python process, however it ends.

* The master is forked by ``_lifetime.popen`` (``PR_SET_PDEATHSIG`` SIGKILL, from a
  thread that lives as long as the process): it dies with its parent.
* nginx *workers* do not notice a dead master (measured on 1.22.1: a worker was
  still serving 3 s after ``kill -9`` of its master), and the death signal is not
  inherited by them. So each ``NginxProxy`` also starts a watchdog, a ``sh`` in a
  session of its own blocked reading a pipe whose only writer is this process: when
  the process goes (SIGKILL, SIGTERM, a crash), the pipe reports EOF and the
  watchdog SIGKILLs nginx's process group (master and workers) and removes the
  temp dir. A clean ``stop()`` (also at ``atexit``) stops nginx itself, removes
  the dir and then the watchdog.
* Each temp dir (``streamlab-nginx-*``) holds ``owner`` (this process's pid and
  nginx's process group); ``start()`` sweeps the dirs of owners that are gone
  (and any nginx still running in them), in case a watchdog was killed too.

TLS and HTTP/2 toward the client (``NginxProxy(..., http2=True)`` or ``tls=True``): a
self-signed certificate for 127.0.0.1/::1/localhost is made at start (``_tls.py``) into the
temp dir, nginx listens ``ssl http2`` (1.22 syntax), ``ca_path`` / ``ssl_context()`` let a
client verify it. Toward the upstream nginx speaks HTTP/1.x as before. Measured on 1.22.1
with httpx 0.28 + h2 4.x: a model cut (FIN or RST) or a ``proxy_read_timeout`` mid-stream
is ``RST_STREAM`` INTERNAL_ERROR on that stream only (httpx ``RemoteProtocolError(<StreamReset
stream_id:N, error_code:2, remote_reset:True>)``, Chromium ``net::ERR_HTTP2_PROTOCOL_ERROR``);
the connection lives on. Over HTTP/1.1 the same cut is an unterminated chunked body
("incomplete chunked read") and the connection is closed.

Load balancing (``NginxBalancer``, or ``sl.balancer_for(..., prefer="nginx")``): the
``Balancer``'s settings written as an ``upstream`` block (``nginx_upstream``); the two are
held to the same client-side outcomes by ``tests/test_nginx_upstream.py``.

Durations are scenario seconds, converted with ``to_real()`` when the config is
written. nginx's timers are lazy by up to 300 ms (``NGX_TIMER_LAZY_DELAY``): a
timeout can fire up to 0.3 s of *wall-clock* time early, so keep scaled timeouts
well above 0.3 s when comparing against real nginx.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from functools import lru_cache
from typing import Any, Iterable

from . import _lifetime
from ._hopbase import Fault, Noop, Rule
from ._http import UNBUFFERED_RESPONSE_HEAD, _parse_upstream, check_bind_host, parse_size
from ._proxy import Proxy
from ._rules import Configurable, RuleSet, as_rules, chain_for, profile_rules
from ._servers import Server, free_port
from ._timeline import HopLog
from ._timescale import to_real

__all__ = ["NginxProxy", "NginxBalancer", "NginxUnsupported", "nginx_available", "nginx_version", "nginx_conf",
           "nginx_upstream", "nginx_has_http2", "proxy_for", "NGINX_BINARY", "sweep_stale_workdirs"]

NGINX_BINARY = os.environ.get("STREAMLAB_NGINX", "/usr/sbin/nginx")
GENERATION_PATH = "/__streamlab__/generation"
TIMER_SLACK = 0.3  # seconds nginx may fire a timer early (NGX_TIMER_LAZY_DELAY)
_FOREVER = "1d"    # "no such timeout": nginx needs some value

TEMP_PREFIX = "streamlab-nginx-"
OWNER_FILE = "owner"  # "<owner pid> <nginx process group>" in every temp dir
# the watchdog: blocks on a pipe only this process writes; EOF = this process is gone
_WATCHDOG = 'read _ ; kill -KILL -"$1" 2>/dev/null; rm -rf -- "$2"'  # dash: no "--" before a -pgid


class NginxUnsupported(ValueError):
    """A fault that nginx has no directive for (use the embedded proxy for it)."""


def _binary() -> str | None:
    return _lifetime.find_binary(NGINX_BINARY, "nginx")


@lru_cache(maxsize=1)
def nginx_version() -> str | None:
    """The installed nginx's version ("1.22.1"), or None when there is none."""
    return _lifetime.binary_version(_binary(), "-v", r"nginx/(\S+)")


def nginx_available() -> bool:
    """True when an nginx binary is installed and runs."""
    return nginx_version() is not None


@lru_cache(maxsize=1)
def nginx_has_http2() -> bool:
    """True when the installed nginx was built with the HTTP/2 and SSL modules (``nginx -V``)."""
    binary = _binary()
    if binary is None:
        return False
    try:
        out = subprocess.run([binary, "-V"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    flags = out.stderr + out.stdout
    return "--with-http_v2_module" in flags and "--with-http_ssl_module" in flags


# --------------------------------------------------------------------------- config generation


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return _FOREVER
    return f"{max(1, round(to_real(seconds) * 1000))}ms"


def _size(n: int) -> str:
    return f"{n // 1024}k" if n and n % 1024 == 0 else str(n)


def _directives(faults: list[Fault], proxy_buffer_size: int = UNBUFFERED_RESPONSE_HEAD) -> list[str]:
    """nginx directives for one location, every one explicit (absent fault = no such behaviour)."""
    from . import hops

    by_type = {type(f): f for f in faults}
    check_supported(Rule(fault=f) for f in faults)
    read = by_type.get(hops.ReadTimeout)
    send_up = by_type.get(hops.UpstreamSendTimeout)
    send = by_type.get(hops.SendTimeout)
    out = [
        f"proxy_read_timeout {_ms(read.seconds if read else None)};",
        f"proxy_send_timeout {_ms(send_up.seconds if send_up else None)};",
        f"send_timeout {_ms(send.seconds if send else None)};",
    ]
    buffering = by_type.get(hops.Buffering)
    if buffering is None:
        # unbuffered; proxy_buffer_size bounds the response head (nginx checks the sizes against each other)
        size = max(proxy_buffer_size, 4096)
        out += ["proxy_buffering off;", f"proxy_buffer_size {_size(size)};", f"proxy_buffers 4 {_size(size)};",
                f"proxy_busy_buffers_size {_size(2 * size)};"]
    else:
        count, size = buffering.buffers
        if count < 2:
            raise NginxUnsupported("nginx needs at least 2 proxy_buffers")
        biggest = max(buffering.buffer_size, size)
        busy = min(2 * biggest, (count - 1) * size)
        if busy < biggest:
            raise NginxUnsupported(f"proxy_buffers {count} {size} cannot hold proxy_buffer_size "
                                   f"{buffering.buffer_size} (nginx: proxy_busy_buffers_size)")
        max_temp = buffering.max_temp_file_size
        out += [f"proxy_buffering {'on' if buffering.on else 'off'};",
                f"proxy_buffer_size {_size(buffering.buffer_size)};",
                f"proxy_buffers {count} {_size(size)};",
                f"proxy_busy_buffers_size {_size(busy)};",
                f"proxy_max_temp_file_size {_size(max_temp) if max_temp == 0 or max_temp >= biggest else _size(biggest)};"]
    gzip = by_type.get(hops.Gzip)
    if gzip is None:
        out.append("gzip off;")
    else:
        types = [t for t in gzip.types if t != "text/html"]  # nginx always includes text/html
        out += ["gzip on;", "gzip_proxied off;", "gzip_http_version 1.1;",
                f"gzip_comp_level {gzip.comp_level};",
                f"gzip_buffers {gzip.buffers[0]} {_size(gzip.buffers[1])};",
                f"gzip_min_length {gzip.min_length};"]
        if "*" in types:
            out.append("gzip_types *;")
        elif types:
            out.append("gzip_types " + " ".join(types) + ";")
    chunked = by_type.get(hops.ChunkedEncoding)
    out.append(f"chunked_transfer_encoding {'on' if chunked is None or chunked.on else 'off'};")
    return out


@lru_cache(maxsize=1)
def _supported() -> frozenset[type]:
    """The fault types nginx has directives for (imported late: hops imports _proxy)."""
    from . import hops

    return frozenset({Noop, hops.ReadTimeout, hops.UpstreamSendTimeout, hops.SendTimeout, hops.Buffering,
                      hops.Gzip, hops.ChunkedEncoding})


def check_supported(rules: Iterable[Rule]) -> None:
    """Raise ``NginxUnsupported`` if any rule's fault cannot be written as nginx directives."""
    rules = tuple(rules)
    bad = [r.fault for r in rules if type(r.fault) not in _supported()]
    if bad:
        raise NginxUnsupported(
            "nginx has no directive for " + ", ".join(f"{f.name} ({f.setting})" for f in bad))
    # nginx's timers always cut (or answer 504 before the head); another hop action is the embedded proxy's
    acting = [r.fault for r in rules if getattr(r.fault, "action", "cut") != "cut"]
    if acting:
        raise NginxUnsupported(
            "nginx can only cut when a timer fires; action " + ", ".join(
                f"{f.action!r} of {f.name}" for f in acting) + " needs the embedded proxy")


def nginx_conf(*, upstream: Any, port: int, rules: Iterable[Rule] = (), workdir: str = "/tmp/streamlab-nginx",
               proxy_http_version: str = "1.0", keepalive_timeout: float = 75.0,
               client_header_timeout: float = 60.0, client_body_timeout: float = 60.0,
               large_client_header_buffers: tuple[int, Any] = (4, "8k"), client_max_body_size: Any = "1m",
               proxy_buffer_size: Any = UNBUFFERED_RESPONSE_HEAD, host: str = "127.0.0.1",
               generation: int = 1, tls: tuple[str, str] | None = None, http2: bool = False,
               websocket: bool = False, worker_connections: int = 1024) -> str:
    """The nginx.conf for these rules (see the module docstring). Pure: nothing is started.

    ``worker_connections`` (an int >= 1, nginx's ``events`` setting, 1024 by default) caps
    the open connections of the one worker, and nginx counts all of them: the listening socket, each client connection and each connection to
    the upstream, so one proxied stream holds two.

    ``websocket=True`` writes what nginx needs to pass a WebSocket upgrade (its "WebSocket
    proxying" page): ``proxy_http_version 1.1``, ``proxy_set_header Upgrade $http_upgrade``
    and ``Connection $connection_upgrade`` (a ``map``: "upgrade", or "close" for a plain request).
    Without them nginx sends the upstream no ``Upgrade`` header and ``Connection: close``.

    ``upstream`` is a URL or a ``streamlab._balancer.Pool`` (then an ``upstream`` block,
    see ``nginx_upstream``). ``tls=(cert_path, key_path)`` makes the listener
    ``ssl`` (``http2`` adds ``http2``: nginx 1.22 syntax ``listen ADDR:PORT ssl http2;``).
    """
    from ._balancer import Pool

    if http2 and tls is None:
        raise ValueError("http2 toward the client needs tls (browsers and httpx speak h2 over TLS only)")
    rules = tuple(rules)
    connections = _worker_connections(worker_connections)
    count, size = large_client_header_buffers
    buffers = f"{int(count)} {_size(parse_size(size, 'large_client_header_buffers'))}"
    max_body = _size(parse_size(client_max_body_size, "client_max_body_size"))
    head_size = parse_size(proxy_buffer_size, "proxy_buffer_size")
    listen = f"[{host}]" if ":" in host else host
    check_supported(rules)
    pool_lines: list[str] = []
    pool_location: list[str] = []
    if isinstance(upstream, Pool):
        pool_lines, target, pool_location = nginx_upstream(upstream)
    else:
        host, up_port, base = _parse_upstream(upstream)
        target = f"http://{host}:{up_port}{base}$request_uri" if base else f"http://{host}:{up_port}"
    prefixes = sorted({"/", *(r.path_prefix for r in rules)})
    user = "user root;\n" if os.geteuid() == 0 else ""
    w = workdir
    lines = [
        "# generated by streamlab from the same faults as the embedded proxy",
        f"{user}daemon off;",
        "worker_processes 1;",
        "error_log stderr info;",
        f"pid {w}/nginx.pid;",
        f"events {{ worker_connections {connections}; }}",
        "http {",
        "    log_format streamlab '$msec $connection $status $bytes_sent $request_time "
        "$upstream_status \"$request\" \"$upstream_addr\" $server_protocol';",
        f"    access_log {w}/access.log streamlab;",
        f"    client_body_temp_path {w}/client_body;",
        f"    proxy_temp_path {w}/proxy;",
        f"    fastcgi_temp_path {w}/fastcgi;",
        f"    uwsgi_temp_path {w}/uwsgi;",
        f"    scgi_temp_path {w}/scgi;",
        f"    client_max_body_size {max_body};",
        f"    large_client_header_buffers {buffers};",
        f"    keepalive_timeout {_ms(keepalive_timeout)};",
        f"    client_header_timeout {_ms(client_header_timeout)};",
        f"    client_body_timeout {_ms(client_body_timeout)};",
        *pool_lines,
        *(["    map $http_upgrade $connection_upgrade { default upgrade; '' close; }"] if websocket else []),
        "    server {",
        f"        listen {listen}:{port}{' ssl' if tls else ''}{' http2' if http2 else ''};",
        *([f"        ssl_certificate {tls[0]};", f"        ssl_certificate_key {tls[1]};",
           "        ssl_protocols TLSv1.2 TLSv1.3;", "        ssl_session_cache off;"] if tls else []),
        f"        location = {GENERATION_PATH} {{ access_log off; return 200 \"{generation}\"; }}",
    ]
    for prefix in prefixes:
        faults = chain_for(rules, prefix)
        lines.append(f"        location {prefix} {{")
        lines.append(f"            proxy_pass {target};")
        lines.append(f"            proxy_http_version {'1.1' if websocket else proxy_http_version};")
        directives = _directives(faults, head_size)
        if pool_location:  # the pool's timeouts replace the fault defaults of the same name
            names = {d.split()[0] for d in pool_location}
            directives = [d for d in directives if d.split()[0] not in names] + pool_location
        if websocket:  # the upgrade headers replace a pool's Connection header
            directives = [d for d in directives if not d.startswith("proxy_set_header Connection ")]
            directives += ["proxy_set_header Upgrade $http_upgrade;",
                           "proxy_set_header Connection $connection_upgrade;"]
        lines.extend(f"            {d}" for d in directives)
        lines.append("        }")
    lines += ["    }", "}", ""]
    return "\n".join(lines)


def _worker_connections(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"worker_connections must be an int >= 1 (nginx counts the listening socket, "
                         f"each client and each upstream connection), got {value!r}")
    return value


def nginx_upstream(pool: Any) -> tuple[list[str], str, list[str]]:
    """A ``Pool`` (``streamlab._balancer``) as nginx config: (http-level lines, proxy_pass target,
    location directives). Same settings, nginx's names:

        round robin               upstream streamlab_pool { server A max_fails=N fail_timeout=T; ... }
        sticky="X-Session-Id"     hash $http_x_session_id consistent;   (no header: round robin)
        sticky="ip"               ip_hash;                              (IPv4: by the first 3 octets)
        sticky="cookie"           one group per upstream (the pinned one, the others as backup),
                                  chosen by a map on $cookie_streamlab_upstream; Set-Cookie added
        retry                     proxy_next_upstream error timeout [non_idempotent];  (else off)
        idle_timeout              proxy_read_timeout / proxy_send_timeout / send_timeout
        connect_timeout           proxy_connect_timeout
        keepalive=K               keepalive K; + proxy_set_header Connection "";  (0: Connection: close)

    Every answer says which upstream served it (``X-Streamlab-Upstream: <index>``, from
    ``$upstream_addr``) and every request gets an ``X-Request-ID`` unless it has one.
    """
    addrs = [f"{h}:{p}" for h, p in pool.addresses]
    # nginx reads fail_timeout in whole seconds ("10s"; no "ms" there): rounded, at least 1 s
    opts = f" max_fails={int(pool.max_fails)} fail_timeout={max(1, round(to_real(pool.fail_timeout)))}s"
    lines = ["    upstream streamlab_pool {"]
    if pool.sticky == "ip":
        lines.append("        ip_hash;")
    elif pool.sticky and pool.sticky != "cookie":
        lines.append(f"        hash $http_{pool.sticky.lower().replace('-', '_')} consistent;")
    lines += [f"        server {a}{opts};" for a in addrs]
    if pool.keepalive:
        lines.append(f"        keepalive {int(pool.keepalive)};")
    lines.append("    }")
    target = "http://streamlab_pool"
    if pool.sticky == "cookie":
        for i in range(len(addrs)):
            lines.append(f"    upstream streamlab_pin_{i} {{")
            for k in range(len(addrs)):
                j = (i + k) % len(addrs)
                lines.append(f"        server {addrs[j]}{opts}{' backup' if k else ''};")
            if pool.keepalive:
                lines.append(f"        keepalive {int(pool.keepalive)};")
            lines.append("    }")
        lines.append("    map $cookie_streamlab_upstream $streamlab_group {")
        lines.append("        default streamlab_pool;")
        lines += [f'        "{i}" streamlab_pin_{i};' for i in range(len(addrs))]
        lines.append("    }")
        target = "http://$streamlab_group"
    lines.append("    map $upstream_addr $streamlab_upstream_index {")
    lines.append('        default "";')
    lines += ['        "~(^|, )' + re.escape(a) + f'$" {i};' for i, a in enumerate(addrs)]
    lines.append("    }")
    lines.append("    map $http_x_request_id $streamlab_request_id {")
    lines.append('        "" "lb-$connection-$connection_requests";')
    lines.append("        default $http_x_request_id;")
    lines.append("    }")
    next_up = "error timeout" + (" non_idempotent" if pool.non_idempotent else "") if pool.retry else "off"
    idle = _ms(pool.idle_timeout)
    location = [f"proxy_next_upstream {next_up};", "proxy_next_upstream_tries 0;",
                f"proxy_connect_timeout {_ms(pool.connect_timeout)};",
                f"proxy_read_timeout {idle};", f"proxy_send_timeout {idle};", f"send_timeout {idle};",
                "proxy_set_header Host $http_host;",
                "proxy_set_header X-Request-ID $streamlab_request_id;",
                f"proxy_set_header Connection {chr(34) * 2 if pool.keepalive else 'close'};",
                "add_header X-Streamlab-Upstream $streamlab_upstream_index always;"]
    if pool.sticky == "cookie":
        location.append('add_header Set-Cookie "streamlab_upstream=$streamlab_upstream_index; Path=/" always;')
    return lines, target, location


# --------------------------------------------------------------------------- the runner


class NginxProxy(Configurable, Server):
    """Real nginx in front of ``upstream``, configured from faults (the embedded proxy's settings).

    Keyword-only settings, the same as ``Proxy``: ``upstream``, ``faults``, ``profile``,
    ``proxy_http_version``, ``keepalive_timeout``, ``client_header_timeout``,
    ``client_body_timeout``, ``large_client_header_buffers``, ``client_max_body_size``,
    ``proxy_buffer_size``, ``name``, ``port``, ``host`` + ``allow_non_loopback``
    (``record`` is accepted and ignored: nginx keeps its own logs).

    ``tls=True`` listens with TLS on a self-signed certificate made at start
    (``streamlab._tls``; key and cert in nginx's private temp dir), ``http2=True``
    (implies ``tls``) also speaks HTTP/2 to clients (ALPN h2, HTTP/1.1 still offered).
    Then ``url``/``https_url`` is ``https://127.0.0.1:PORT``, ``ca_path`` the certificate
    to trust and ``ssl_context()`` an ``ssl.SSLContext`` for ``httpx.Client(verify=...)``.
    Toward the upstream nginx still speaks HTTP/1.x (``proxy_http_version``).

    ``config`` is the generated nginx.conf, ``log_lines(grep)`` nginx's error log,
    ``log`` a ``HopLog`` built from nginx's access log (one open/status/out/close
    per request) and error log (``fault`` events for timeouts and failures).
    """

    kind = "real nginx"
    start_timeout = 10.0

    def __init__(self, *, upstream: Any, faults: Iterable[Any] = (), profile: str | None = None,
                 proxy_http_version: str = "1.0", keepalive_timeout: float = 75.0,
                 client_header_timeout: float = 60.0, client_body_timeout: float = 60.0,
                 large_client_header_buffers: tuple[int, Any] = (4, "8k"), client_max_body_size: Any = "1m",
                 proxy_buffer_size: Any = UNBUFFERED_RESPONSE_HEAD, record: bool = True, name: str = "nginx",
                 port: int = 0, host: str = "127.0.0.1", allow_non_loopback: bool = False,
                 tls: bool = False, http2: bool = False, websocket: bool = False,
                 worker_connections: int = 1024) -> None:
        super().__init__()
        self.worker_connections = _worker_connections(worker_connections)
        self.websocket = bool(websocket)  # pass WebSocket upgrades (nginx_conf(websocket=True))
        self.http2 = bool(http2)
        self.tls = bool(tls) or self.http2
        if self.tls:
            from ._tls import tls_backend

            if self.http2 and nginx_available() and not nginx_has_http2():
                raise RuntimeError("this nginx has no HTTP/2 module (nginx -V: --with-http_v2_module)")
            if tls_backend() is None:
                raise RuntimeError("tls=True needs the cryptography package or the openssl command")
        self.ca_path: str | None = None
        self._key_path: str | None = None
        self.host = check_bind_host(host, allow_non_loopback, "nginx (NginxProxy)")
        if not nginx_available():
            raise RuntimeError("nginx is not installed (apt-get install nginx-light); use the embedded Proxy")
        self.kind = f"real nginx {nginx_version()}"
        self.upstream = upstream
        self.name = name
        self.proxy_http_version = proxy_http_version
        self.keepalive_timeout = keepalive_timeout
        self.client_header_timeout = client_header_timeout
        self.client_body_timeout = client_body_timeout
        self.large_client_header_buffers = large_client_header_buffers
        self.client_max_body_size = client_max_body_size
        self.proxy_buffer_size = proxy_buffer_size
        self._ruleset = RuleSet(profile_rules(profile) + as_rules(faults))
        check_supported(self._ruleset.rules)
        nginx_conf(upstream=upstream, port=1, rules=self._ruleset.rules,  # bad settings fail here
                   large_client_header_buffers=large_client_header_buffers,
                   client_max_body_size=client_max_body_size, proxy_buffer_size=proxy_buffer_size)
        self._watchdog: subprocess.Popen | None = None
        self._watch_fd: int | None = None
        self.process: subprocess.Popen | None = None
        self.workdir: str | None = None
        self.config = ""
        self.generation = 0
        self._lines: list[tuple[float, str]] = []
        self._lines_lock = threading.Lock()
        self._reader: threading.Thread | None = None
        self._log = HopLog(name)
        self._access_offset = 0
        self._records: list[dict] = []
        self._clock = (time.time(), time.perf_counter())
        self._reload_lock = threading.Lock()
        self._fixed_port = port

    # -- configuration: the API of Configurable; inject() rewrites the config and reloads nginx
    def _check_rules(self, rules: tuple[Rule, ...]) -> None:
        check_supported(rules)

    def _apply_rules(self) -> None:
        self._reload()

    # -- lifecycle
    def _write_config(self) -> None:
        assert self.workdir is not None and self.port is not None
        self.generation += 1
        self.config = nginx_conf(upstream=self.upstream, port=self.port, rules=self.rules, workdir=self.workdir,
                                 proxy_http_version=self.proxy_http_version,
                                 keepalive_timeout=self.keepalive_timeout,
                                 client_header_timeout=self.client_header_timeout,
                                 client_body_timeout=self.client_body_timeout,
                                 large_client_header_buffers=self.large_client_header_buffers,
                                 client_max_body_size=self.client_max_body_size,
                                 proxy_buffer_size=self.proxy_buffer_size, host=self.host,
                                 generation=self.generation, http2=self.http2, websocket=self.websocket,
                                 worker_connections=self.worker_connections,
                                 tls=(self.ca_path, self._key_path) if self.tls else None)
        path = os.path.join(self.workdir, "nginx.conf")
        with open(path + ".new", "w") as fh:
            fh.write(self.config)
        os.replace(path + ".new", path)

    def _start(self) -> None:
        binary = _binary()
        if binary is None:
            raise RuntimeError("nginx is not installed")
        sweep_stale_workdirs()
        self.workdir = tempfile.mkdtemp(prefix=TEMP_PREFIX)
        _write_owner(self.workdir, None)
        if self.tls:
            from ._tls import make_self_signed

            self.ca_path, self._key_path = make_self_signed(self.workdir)
        self._clock = (time.time(), time.perf_counter())
        last_error = ""
        for _attempt in range(3):  # nginx binds the port itself: retry if someone took it meanwhile
            self.port = self._fixed_port or free_port()
            self.generation = 0
            self._write_config()
            with self._lines_lock:
                self._lines.clear()
            # a session (and process group) of its own; SIGKILLed by the kernel if we die
            self.process = _lifetime.popen(
                [binary, "-p", self.workdir, "-c", os.path.join(self.workdir, "nginx.conf"), "-e", "stderr"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                start_new_session=True, cwd=self.workdir,
            )
            _write_owner(self.workdir, self.process.pid)
            self._start_watchdog(self.process.pid)
            self._reader = threading.Thread(target=self._read_stderr, args=(self.process.stderr,),
                                            name="streamlab-nginx-log", daemon=True)
            self._reader.start()
            if self._wait_generation(self.start_timeout):
                return
            if self.process.poll() is not None and self._reader is not None:
                self._reader.join(2)  # let the reader catch nginx's last words
            last_error = "\n".join(self.log_lines()[-10:])
            self._kill()
            if "Address already in use" not in last_error:
                break
        raise RuntimeError(f"nginx did not start:\n{last_error}")

    def _read_stderr(self, pipe: Any) -> None:
        for raw in iter(pipe.readline, b""):
            text = raw.decode("utf-8", "replace").rstrip("\r\n")
            now = time.perf_counter()
            with self._lines_lock:
                self._lines.append((now, text))
            match = re.search(r"\[(error|warn|crit|alert)\] \d+#\d+: \*(\d+) (.*?)(?:, client:|$)", text)
            if match:
                self._log.add("fault", 0, f"nginx: {match.group(3)}", int(match.group(2)), t=now)
        pipe.close()

    def _probe(self) -> str | None:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as raw:
                sock = self._probe_context().wrap_socket(raw, server_hostname=self.host) if self.tls else raw
                sock.sendall(f"GET {GENERATION_PATH} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
                data = b""
                while chunk := sock.recv(4096):
                    data += chunk
        except (OSError, ValueError):  # ssl.SSLError is an OSError
            return None
        head, _, body = data.partition(b"\r\n\r\n")
        return body.decode() if head.startswith(b"HTTP/1.1 200") else None

    def _wait_generation(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        want = str(self.generation)
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                return False
            if self._probe() == want:
                return True
            time.sleep(0.003)
        return False

    def _reload(self) -> None:
        if not self.running or self.process is None:
            return
        with self._reload_lock:
            retired = len(self.log_lines("gracefully shutting down"))
            self._write_config()
            os.kill(self.process.pid, signal.SIGHUP)
            # the new worker answers with the new generation, and the old one has closed its
            # listening socket (until then it may still accept a connection with the old config)
            deadline = time.monotonic() + self.start_timeout
            while len(self.log_lines("gracefully shutting down")) <= retired and time.monotonic() < deadline:
                time.sleep(0.002)
            if not self._wait_generation(max(0.0, deadline - time.monotonic())):
                raise RuntimeError("nginx did not take the new config:\n" + "\n".join(self.log_lines()[-10:]))

    def _start_watchdog(self, pgid: int) -> None:
        """A ``sh`` that SIGKILLs nginx's process group and removes the temp dir when we are gone."""
        self._stop_watchdog()
        read_end, write_end = os.pipe()  # both non-inheritable: only the watchdog gets the read end
        try:
            self._watchdog = subprocess.Popen(
                ["/bin/sh", "-c", _WATCHDOG, "streamlab-nginx-watchdog", str(pgid), self.workdir or ""],
                stdin=read_end, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        except BaseException:
            os.close(write_end)
            raise
        finally:
            os.close(read_end)
        self._watch_fd = write_end

    def _stop_watchdog(self) -> None:
        """Stop the watchdog first, then close its pipe (so it never acts after a clean stop)."""
        dog, self._watchdog = self._watchdog, None
        if dog is not None:
            with contextlib.suppress(ProcessLookupError):
                dog.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                dog.wait(5)
        fd, self._watch_fd = self._watch_fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _kill(self) -> None:
        proc, self.process = self.process, None
        if proc is None:
            self._stop_watchdog()
            return
        # SIGTERM = fast shutdown (the master stops its worker), then SIGKILL to the group: the
        # worker too, if it outlived its master
        _lifetime.terminate(proc, group=True)
        if self._reader is not None:
            self._reader.join(2)
            self._reader = None

    def _stop(self) -> None:
        self._kill()
        if self.workdir is not None:
            self._read_access_log()
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
        self._stop_watchdog()

    def _probe_context(self) -> Any:
        import ssl

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # our own probe: the cert may be rewritten mid-start
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx

    # -- TLS
    @property
    def url(self) -> str:
        plain = super().url
        return "https" + plain[4:] if self.tls else plain

    @property
    def https_url(self) -> str:
        """``https://127.0.0.1:PORT`` (``tls=True`` or ``http2=True`` only)."""
        if not self.tls:
            raise RuntimeError("this nginx listens without TLS; use NginxProxy(..., tls=True) or http2=True")
        return self.url

    def ssl_context(self, *, http2: bool | None = None) -> Any:
        """An ``ssl.SSLContext`` trusting this nginx's certificate (``ca_path``), ALPN h2 + http/1.1
        (``http2=False``: http/1.1 only)."""
        from ._tls import client_context

        if not self.tls or self.ca_path is None:
            raise RuntimeError("no certificate: start an NginxProxy with tls=True or http2=True first")
        return client_context(self.ca_path, http2=self.http2 if http2 is None else http2)

    # -- what nginx saw
    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def log_lines(self, grep: str | None = None) -> list[str]:
        """nginx's error log (stderr) so far, optionally only lines containing ``grep``."""
        with self._lines_lock:
            lines = [text for _, text in self._lines]
        return [line for line in lines if grep is None or grep in line]

    def _read_access_log(self) -> None:
        if self.workdir is None:
            return
        path = os.path.join(self.workdir, "access.log")
        with contextlib.suppress(OSError), open(path, "rb") as fh:
            fh.seek(self._access_offset)
            data = fh.read()
            end = data.rfind(b"\n") + 1
            self._access_offset += end
            wall0, perf0 = self._clock
            for line in data[:end].decode("utf-8", "replace").splitlines():
                match = re.match(r"(\S+) (\d+) (\d+) (\d+) (\S+) (.+?) \"(.*)\" \"(.*)\" (\S+)$", line)
                if not match:
                    continue
                self._records.append({"status": int(match.group(3)), "request": match.group(7),
                                      "upstream_status": match.group(6), "protocol": match.group(9),
                                      "upstream_addr": [] if match.group(8) in ("-", "") else
                                      [a.strip() for a in re.split(r"[,:] (?=\d|unix|\[)", match.group(8))
                                       if a.strip()]})
                t_end = perf0 + float(match.group(1)) - wall0
                conn = int(match.group(2))
                status, sent, took, up_status = match.group(3), int(match.group(4)), float(match.group(5)), match.group(6)
                self._log.add("open", 0, match.group(7), conn, t=t_end - took)
                self._log.add("status", 0, status, conn, t=t_end - took)
                self._log.add("out", sent, "", conn, t=t_end)
                self._log.add("close", 0, f"status {status}, upstream {up_status}", conn, t=t_end)

    @property
    def log(self) -> HopLog:
        """A ``HopLog`` of what nginx logged so far (access log lines are written when a request ends)."""
        self._read_access_log()
        return self._log

    def __repr__(self) -> str:
        where = f"{self.host}:{self.port}" if self.port else "not started"
        return f"<NginxProxy {self.kind} {where} faults={self.faults}>"


# --------------------------------------------------------------------------- temp dirs of dead owners


def _write_owner(workdir: str, pgid: int | None) -> None:
    with open(os.path.join(workdir, OWNER_FILE), "w") as fh:
        fh.write(f"{os.getpid()} {pgid or 0}\n")


def _alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie does not count: it is dead, only not yet reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def _nginx_in(workdir: str) -> list[int]:
    """Pids of nginx masters whose command line names ``workdir``."""
    found = []
    needle = workdir.encode()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    if needle in fh.read():
                        found.append(int(entry))
    return found


def sweep_stale_workdirs(tmp: str | None = None) -> list[str]:
    """Remove the ``streamlab-nginx-*`` temp dirs whose owner process is gone (killing any nginx
    still running in one, workers included); return the dirs removed."""
    tmp = tmp or tempfile.gettempdir()
    removed: list[str] = []
    try:
        names = [n for n in os.listdir(tmp) if n.startswith(TEMP_PREFIX)]
    except OSError:
        return removed
    for name in names:
        path = os.path.join(tmp, name)
        try:
            with open(os.path.join(path, OWNER_FILE)) as fh:
                owner, pgid = (int(x) for x in fh.read().split()[:2])
        except (OSError, ValueError):
            owner, pgid = 0, 0  # from before owner files, or mid-start: judged by its nginx only
            with contextlib.suppress(OSError):
                if time.time() - os.stat(path).st_mtime < 60:
                    continue  # may be a start in progress in another process
        if owner and _alive(owner):
            continue
        masters = _nginx_in(path)
        if not owner and masters:
            continue  # an nginx of an older streamlab, still in use
        for group in {pgid, *masters} - {0}:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def proxy_for(*, upstream: Any, faults: Iterable[Any] = (), profile: str | None = None, prefer: str = "nginx",
              **settings: Any) -> Server:
    """Real nginx when it is installed and can express the faults, else the embedded proxy.

    ``prefer="embedded"`` always gives the embedded proxy. The result is not
    started (use ``with``); its ``.kind`` says which one you got and why:
    ``"real nginx 1.22.1"``, ``"embedded proxy (nginx not installed)"``,
    ``"embedded proxy (nginx has no directive for idle_timeout ...)"``.
    ``tls=True`` / ``http2=True`` need real nginx (``RuntimeError`` when it cannot be used).
    """
    if prefer not in ("nginx", "embedded"):
        raise ValueError(f"prefer is 'nginx' or 'embedded', got {prefer!r}")
    faults = list(faults)
    if prefer == "nginx":
        if not nginx_available():
            why = "nginx not installed"
        else:
            try:
                check_supported(profile_rules(profile) + as_rules(faults))
            except NginxUnsupported as exc:
                why = str(exc)
            else:
                return NginxProxy(upstream=upstream, faults=faults, profile=profile, **settings)
    else:
        why = "asked for"
    if settings.get("tls") or settings.get("http2"):
        raise RuntimeError(f"tls/http2 toward the client needs real nginx ({why}); "
                           "the embedded proxy speaks plain HTTP/1.1 only")
    settings.pop("tls", None)
    settings.pop("http2", None)
    settings.pop("worker_connections", None)  # nginx's own cap; the embedded proxy has none
    proxy = Proxy(upstream=upstream, faults=faults, profile=profile, **settings)
    proxy.kind = f"embedded proxy ({why})"
    return proxy


# --------------------------------------------------------------------------- nginx as the load balancer


class NginxBalancer(NginxProxy):
    """Real nginx load-balancing ``upstreams`` with a ``Balancer``'s settings (an ``upstream`` block).

    Same keyword-only settings as ``Balancer`` (``sticky``, ``retry``, ``non_idempotent``,
    ``max_fails``, ``fail_timeout``, ``idle_timeout``, ``connect_timeout``), plus
    ``keepalive`` (idle kept-alive upstream connections per worker; 0 = one connection per
    request, like the Balancer) and the ``NginxProxy`` settings (``tls``, ``http2``,
    ``faults``, ...). Upstream URLs are read at start, so streamlab servers may be passed
    before they are started. ``stats()`` has the Balancer's shape, from nginx's access log
    (``$upstream_addr``: one address per attempt).
    """

    def __init__(self, upstreams: Any, *, sticky: str | None = None, retry: bool = False,
                 non_idempotent: bool = False, max_fails: int = 1, fail_timeout: float = 10.0,
                 idle_timeout: float | None = None, connect_timeout: float = 5.0, keepalive: int = 0,
                 name: str = "nginx-lb", proxy_http_version: str = "1.1", **settings: Any) -> None:
        from ._balancer import Pool

        upstreams = list(upstreams)
        if not upstreams:
            raise ValueError("a balancer needs at least one upstream")
        self.upstreams = upstreams
        self._pool_settings = dict(sticky=sticky.lower() if sticky else None, retry=retry,
                                   non_idempotent=non_idempotent, max_fails=max_fails, fail_timeout=fail_timeout,
                                   idle_timeout=idle_timeout, connect_timeout=connect_timeout, keepalive=keepalive)
        placeholder = Pool(upstreams=tuple(f"http://127.0.0.1:{i + 1}" for i in range(len(upstreams))),
                           **self._pool_settings)  # settings checked now; real ports at start
        super().__init__(upstream=placeholder, name=name, proxy_http_version=proxy_http_version, **settings)
        self.kind = f"real nginx {nginx_version()} (upstream)"

    @property
    def upstream_urls(self) -> list[str]:
        return [u.url if isinstance(u, Server) else str(u).rstrip("/") for u in self.upstreams]

    @property
    def pool(self) -> Any:
        from ._balancer import Pool

        return Pool(upstreams=tuple(self.upstream_urls), **self._pool_settings)

    def _write_config(self) -> None:
        self.upstream = self.pool
        super()._write_config()

    def _settle_access_log(self, quiet: float = 0.03, timeout: float = 1.0) -> None:
        """Read the access log once it has stopped growing for ``quiet`` s: nginx writes a request's
        line when it finalizes the request, a moment after the client may have read the whole answer."""
        if self.workdir is None:
            return
        path = os.path.join(self.workdir, "access.log")
        deadline = time.monotonic() + timeout
        size = -1
        while time.monotonic() < deadline:
            try:
                now = os.stat(path).st_size
            except OSError:
                now = 0
            if now == size:
                break
            size = now
            time.sleep(quiet)
        self._read_access_log()

    def stats(self) -> dict:
        """Attempts per upstream (retries included), answers served per upstream, retries."""
        self._settle_access_log()
        urls = self.upstream_urls
        where = {u.split("://", 1)[-1]: i for i, u in enumerate(urls)}
        requests = [0] * len(urls)
        served = [0] * len(urls)
        retries = 0
        for record in self._records:
            tried = [where[a] for a in record["upstream_addr"] if a in where]
            for i in tried:
                requests[i] += 1
            retries += max(0, len(tried) - 1)
            last = record["upstream_status"].split(", ")[-1]
            if tried and last.isdigit() and last not in ("502", "504"):  # 502/504: nginx's own (or relayed)
                served[tried[-1]] += 1
        return {"requests": dict(zip(urls, requests)), "served": dict(zip(urls, served)), "retries": retries}

    def reset_stats(self) -> None:
        self._settle_access_log()
        self._records.clear()
        self._log.clear()

    def __repr__(self) -> str:
        where = f"{self.host}:{self.port}" if self.port else "not started"
        return f"<NginxBalancer {self.kind} {where} {self._pool_settings}>"
