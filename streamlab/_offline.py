"""Keep everything on loopback: telemetry off, and a guard that refuses every other address.

``ensure_offline()`` runs whenever streamlab starts a server (so a user does not
have to remember any environment variable): it switches off the telemetry and
tracing of CrewAI, LangSmith, OpenTelemetry, Chroma and Hugging Face for this
process and the subprocesses it starts. It also points CrewAI's storage
(``CREWAI_STORAGE_DIR``: the task outputs ``crew.replay()`` reads, CrewAI's user file)
at a private directory of this process, ``$TMPDIR/streamlab-crewai-<pid>-XXXXXXXX`` (mode 0700),
created on the first call and removed when the interpreter exits, so nothing of a run
stays on disk; a ``CREWAI_STORAGE_DIR`` the user set is kept and never removed. A process
killed outright (nbval stops its kernel with SIGKILL) runs no exit handler: the next
streamlab process to make its directory removes those of this user whose pid is gone.
(CrewAI joins the variable to the user's data directory, and an absolute path wins.) ``offline()`` also installs the guard in
this process. What it refuses, before any packet is sent::

    OSError
     +-- ConnectionRefusedError
          +-- NetworkBlocked            .action ("connect", "send", "lookup", "reverse lookup"), .host, .port
              "connection to 93.184.216.34:443 refused by streamlab.offline() (...)"
              "datagram to 8.8.8.8:53 refused by streamlab.offline() (...)"
              "DNS lookup of example.com refused by streamlab.offline() (...)"
              "reverse DNS lookup of 192.0.2.1 refused by streamlab.offline() (...)"

A ``ConnectionRefusedError`` because that is what libraries expect of a connect
that fails: httpx raises ``httpx.ConnectError`` with this message (the
``NetworkBlocked`` is its ``__cause__``), openai ``APIConnectionError``.

Allowed: connections and datagrams to loopback, which is all of 127.0.0.0/8 in any
spelling ``inet_aton`` accepts (``127.1``), ``::1`` and IPv4-mapped loopback
(``::ffff:127.0.0.1``), plus the unspecified address (0.0.0.0, ``::``: Linux
delivers those to this host); name lookups that need no DNS query: IP literals,
``localhost`` and the names in /etc/hosts (nsswitch ``hosts: files`` comes first).
A connection to a name is checked against what the name resolves to.

The paths guarded (the workbook's libraries take all of them):

    socket.socket.connect / connect_ex / sendto / sendmsg     (sync clients, asyncio's default loop, ssl)
    socket.getaddrinfo / gethostbyname(_ex) / gethostbyaddr / getnameinfo
    asyncio loops: create_connection, create_datagram_endpoint (and its transport's sendto),
        sock_connect, sock_sendto, getaddrinfo, getnameinfo
    uvloop.Loop: the same methods. uvloop resolves names and connects in libuv, never
        through Python's socket module, so streamlab's own Proxy/Balancer upstream
        connects, httpx.AsyncClient and AsyncOpenAI under uvloop are caught only here.

Not guarded: C extensions that open sockets themselves (none in the pinned stack).
"""

from __future__ import annotations

import asyncio
import asyncio.base_events
import asyncio.selector_events
import atexit
import errno
import functools
import ipaddress
import os
import re
import shutil
import socket
import tempfile
from typing import Any, Callable

__all__ = ["ensure_offline", "offline", "NetworkBlocked", "OFFLINE_ENV", "is_loopback_host"]

OFFLINE_ENV = {
    "CREWAI_DISABLE_TELEMETRY": "true",
    "CREWAI_DISABLE_TRACKING": "true",
    "CREWAI_TRACING_ENABLED": "false",
    "OTEL_SDK_DISABLED": "true",
    "LANGCHAIN_TRACING_V2": "false",
    "LANGSMITH_TRACING": "false",
    "LANGCHAIN_CALLBACKS_BACKGROUND": "false",
    "ANONYMIZED_TELEMETRY": "False",
    "HF_HUB_OFFLINE": "1",
    "DO_NOT_TRACK": "1",
    "OPENAI_API_KEY": "sk-streamlab-offline",
    "AUTOGEN_DISABLE_RUNTIME_TRACING": "true",
}

_WHO = "refused by streamlab.offline()"
_ONLY = "only loopback is allowed: 127.0.0.0/8, ::1, localhost"


class NetworkBlocked(ConnectionRefusedError):
    """``streamlab.offline()`` refused a connection, a datagram or a name lookup that would leave the machine.

    ``action`` is "connect", "send", "lookup" or "reverse lookup"; ``host`` and ``port``
    say where to (``port`` is None for lookups).
    """

    def __init__(self, message: str, *, action: str = "connect", host: Any = None, port: Any = None) -> None:
        super().__init__(errno.ECONNREFUSED, message)  # errno for code that checks it; str() is the message
        self.action, self.host, self.port = action, host, port

    def __str__(self) -> str:
        return self.strerror

    def __reduce__(self):
        return (type(self), (self.strerror,), {"action": self.action, "host": self.host, "port": self.port})


def ensure_offline() -> None:
    """Switch off telemetry for this process and its children (idempotent; keeps values a user set),
    and give CrewAI a private storage directory (``crewai_storage_dir()``)."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    _private_crewai_storage()


_crewai_storage: "str | None" = None  # the directory this process made (None: none, or the user's own)


def _private_crewai_storage() -> None:
    """Set ``CREWAI_STORAGE_DIR`` to a fresh private directory unless it is set (by the user, or by a
    streamlab parent process whose directory this child shares); remove it at interpreter exit."""
    global _crewai_storage
    if _crewai_storage is not None or os.environ.get("CREWAI_STORAGE_DIR"):
        return
    _sweep_crewai_storage()
    path = tempfile.mkdtemp(prefix=f"{_STORAGE_PREFIX}{os.getpid()}-")
    os.environ["CREWAI_STORAGE_DIR"] = path
    _crewai_storage = path
    atexit.register(_remove_crewai_storage, path, os.getpid())


_STORAGE_PREFIX = "streamlab-crewai-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _sweep_crewai_storage() -> None:
    """Remove the private directories that processes of this user left when they were killed."""
    base = tempfile.gettempdir()
    try:
        entries = list(os.scandir(base))
    except OSError:
        return
    for entry in entries:
        pid = entry.name[len(_STORAGE_PREFIX):].split("-", 1)[0]
        if not entry.name.startswith(_STORAGE_PREFIX) or not pid.isdigit():
            continue
        try:
            if not entry.is_dir(follow_symlinks=False) or entry.stat(follow_symlinks=False).st_uid != os.getuid():
                continue
        except OSError:
            continue
        if int(pid) != os.getpid() and not _pid_alive(int(pid)):
            shutil.rmtree(entry.path, ignore_errors=True)


def _remove_crewai_storage(path: str, owner: int) -> None:
    # Only the process that made it: a forked child (a gunicorn worker, multiprocessing) runs the
    # parent's atexit handlers too, and must not pull the directory from under the parent.
    if os.getpid() == owner:
        shutil.rmtree(path, ignore_errors=True)


def crewai_storage_dir() -> "str | None":
    """The private CrewAI storage directory this process made (None when the user set their own)."""
    return _crewai_storage


# -- what counts as loopback -------------------------------------------------------------

_INET_ATON_FORM = re.compile(r"(0[xX][0-9a-fA-F]+|[0-9]+)(\.(0[xX][0-9a-fA-F]+|[0-9]+)){0,3}")


def _text(host: Any) -> str:
    if isinstance(host, (bytes, bytearray)):
        return bytes(host).decode("ascii", "replace")
    return str(host)


def _ip(host: Any) -> "ipaddress.IPv4Address | ipaddress.IPv6Address | None":
    """The address an IP literal denotes (``127.1`` and ``[::1]`` included), or None for a name."""
    text = _text(host).strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    text = text.split("%", 1)[0]  # fe80::1%eth0
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    if _INET_ATON_FORM.fullmatch(text):  # the forms the C resolver reads as numbers, without a query
        try:
            return ipaddress.IPv4Address(socket.inet_aton(text))
        except OSError:
            return None
    return None


def _is_loopback_ip(ip: "ipaddress.IPv4Address | ipaddress.IPv6Address") -> bool:
    if ip.is_loopback or ip.is_unspecified:
        return True
    mapped = getattr(ip, "ipv4_mapped", None)  # Python 3.11: ::ffff:127.0.0.1 is not .is_loopback
    return mapped is not None and (mapped.is_loopback or mapped.is_unspecified)


@functools.lru_cache(maxsize=1)
def _etc_hosts() -> "tuple[frozenset[str], frozenset[str]]":
    """(names, addresses) listed in /etc/hosts: looked up in the file, no query sent."""
    names, addresses = {"localhost"}, set()
    try:
        with open("/etc/hosts", encoding="utf-8", errors="replace") as hosts:
            for line in hosts:
                fields = line.split("#", 1)[0].split()
                if len(fields) >= 2 and _ip(fields[0]) is not None:
                    addresses.add(str(_ip(fields[0])))
                    names.update(name.lower() for name in fields[1:])
    except OSError:
        pass
    return frozenset(names), frozenset(addresses)


def _local_name(host: Any) -> bool:
    return _text(host).lower() in _etc_hosts()[0]


def is_loopback_host(host: Any) -> bool:
    """True for a loopback IP literal (any spelling) or ``localhost``; False for any other host.

    (Names from /etc/hosts count only if they resolve to loopback alone.)
    """
    if host is None:
        return False
    ip = _ip(host)
    if ip is not None:
        return _is_loopback_ip(ip) and not ip.is_unspecified and not (
            getattr(ip, "ipv4_mapped", None) is not None and ip.ipv4_mapped.is_unspecified)
    if _text(host).lower() == "localhost":
        return True
    if not _local_name(host):
        return False
    try:
        infos = _original["getaddrinfo"](_text(host), None) if "getaddrinfo" in _original else \
            socket.getaddrinfo(_text(host), None)
    except OSError:
        return False
    return bool(infos) and all(_is_loopback_ip(ipaddress.ip_address(info[4][0].split("%")[0])) for info in infos)


def _where(host: Any, port: Any) -> str:
    text = _text(host)
    if port is None:
        return text
    return f"[{text}]:{port}" if ":" in text else f"{text}:{port}"


def _check_lookup(host: Any) -> None:
    """A forward name lookup: allowed if no DNS query is needed."""
    if host is None or _text(host) == "" or _ip(host) is not None or _local_name(host):
        return
    raise NetworkBlocked(f"DNS lookup of {_text(host)} {_WHO} (no DNS query leaves the machine; "
                         "only IP literals, localhost and names in /etc/hosts are looked up)",
                         action="lookup", host=_text(host))


def _check_reverse(host: Any) -> None:
    """A reverse lookup (address -> name): allowed for addresses and names /etc/hosts answers."""
    ip = _ip(host)
    if ip is None:
        _check_lookup(host)
        return
    if str(ip) in _etc_hosts()[1]:
        return
    raise NetworkBlocked(f"reverse DNS lookup of {ip} {_WHO} (not in /etc/hosts: it would query DNS)",
                         action="reverse lookup", host=str(ip))


def _check_peer(host: Any, port: Any, *, action: str = "connect") -> None:
    """A connection (``action="connect"``) or datagram (``"send"``) to host:port."""
    if host is None or _text(host) == "":
        return  # "" is INADDR_ANY: this host
    ip = _ip(host)
    if ip is None:
        if _text(host) == "<broadcast>":
            ip = ipaddress.IPv4Address("255.255.255.255")
        else:
            _check_lookup(host)  # a name outside /etc/hosts: the lookup is what would leave first
            if is_loopback_host(host):
                return
            ip = _resolve_first(host)
    if ip is not None and _is_loopback_ip(ip):
        return
    what = "connection" if action == "connect" else "datagram"
    shown = _where(host, port) if ip is None or _text(host) == str(ip) else f"{_where(host, port)} ({ip})"
    raise NetworkBlocked(f"{what} to {shown} {_WHO} ({_ONLY})", action=action, host=_text(host), port=port)


def _resolve_first(host: Any) -> "ipaddress.IPv4Address | ipaddress.IPv6Address | None":
    try:
        infos = _original["getaddrinfo"](_text(host), None)
    except (OSError, KeyError):
        return None
    return ipaddress.ip_address(infos[0][4][0].split("%")[0]) if infos else None


def _inet(sock: Any) -> bool:
    return getattr(sock, "family", None) in (socket.AF_INET, socket.AF_INET6)


def _address_parts(address: Any) -> "tuple[Any, Any]":
    if isinstance(address, (tuple, list)) and address:
        return address[0], (address[1] if len(address) > 1 else None)
    return address, None


# -- the guards ---------------------------------------------------------------------------

_original: dict[str, Callable[..., Any]] = {}


def _sock_connect(name: str) -> Callable[..., Any]:
    original = getattr(socket.socket, name)

    def guarded(self: socket.socket, address: Any):
        if _inet(self):
            _check_peer(*_address_parts(address))
        return original(self, address)

    guarded.__name__ = guarded.__qualname__ = name
    return guarded


def _sock_sendto() -> Callable[..., Any]:
    original = socket.socket.sendto

    def sendto(self: socket.socket, data: Any, *args: Any):  # sendto(data, address) / (data, flags, address)
        if _inet(self) and args:
            _check_peer(*_address_parts(args[-1]), action="send")
        return original(self, data, *args)

    return sendto


def _sock_sendmsg() -> Callable[..., Any]:
    original = socket.socket.sendmsg

    def sendmsg(self: socket.socket, buffers: Any, *args: Any, **kwargs: Any):  # (buffers, ancdata, flags, address)
        address = args[2] if len(args) > 2 else kwargs.get("address")
        if _inet(self) and address is not None:
            _check_peer(*_address_parts(address), action="send")
        return original(self, buffers, *args, **kwargs)

    return sendmsg


def _lookup(original: Callable[..., Any], check: Callable[[Any], None]) -> Callable[..., Any]:
    def guarded(host: Any, *args: Any, **kwargs: Any):
        check(host)
        return original(host, *args, **kwargs)

    guarded.__name__ = guarded.__qualname__ = getattr(original, "__name__", "lookup")
    guarded.__doc__ = getattr(original, "__doc__", None)
    return guarded


def _getnameinfo(original: Callable[..., Any]) -> Callable[..., Any]:
    def getnameinfo(sockaddr: Any, flags: int, *args: Any):
        if not flags & socket.NI_NUMERICHOST:
            _check_reverse(_address_parts(sockaddr)[0])
        return original(sockaddr, flags, *args)

    return getnameinfo


class _GuardedDatagramTransport:
    """A datagram transport whose ``sendto`` to a non-loopback address raises ``NetworkBlocked``.

    Needed for uvloop (its UDP transport sends in libuv); on asyncio's own loop it also
    turns a refusal into an exception at the call instead of ``error_received()``.
    """

    def __init__(self, transport: Any) -> None:
        self._transport = transport

    def sendto(self, data: Any, addr: Any = None) -> None:
        if addr is not None:
            _check_peer(*_address_parts(addr), action="send")
        self._transport.sendto(data, addr)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def __repr__(self) -> str:
        return f"<guarded {self._transport!r}>"


class _GuardedDatagramProtocol(asyncio.DatagramProtocol):
    """Stands between a datagram transport and the caller's protocol: hands it a guarded transport."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.transport: _GuardedDatagramTransport | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = _GuardedDatagramTransport(transport)
        self.inner.connection_made(self.transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.inner.datagram_received(data, addr)

    def error_received(self, exc: Exception) -> None:
        self.inner.error_received(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


def _loop_methods(cls: type, names: "tuple[str, ...]") -> None:
    for name in names:
        key = f"{cls.__module__}.{cls.__qualname__}.{name}"
        if key in _original or not hasattr(cls, name):
            continue
        original = getattr(cls, name)
        _original[key] = original
        setattr(cls, name, _LOOP_GUARDS[name](original))


def _create_connection(original: Callable[..., Any]) -> Callable[..., Any]:
    async def create_connection(self, protocol_factory, host=None, port=None, *args, **kwargs):
        if host is not None:
            _check_peer(host, port)
        return await original(self, protocol_factory, host, port, *args, **kwargs)

    return create_connection


def _create_datagram_endpoint(original: Callable[..., Any]) -> Callable[..., Any]:
    async def create_datagram_endpoint(self, protocol_factory, local_addr=None, remote_addr=None, *args, **kwargs):
        if remote_addr is not None:
            _check_peer(*_address_parts(remote_addr), action="send")
        made: list[_GuardedDatagramProtocol] = []

        def factory():
            made.append(_GuardedDatagramProtocol(protocol_factory()))
            return made[-1]

        transport, _ = await original(self, factory, local_addr, remote_addr, *args, **kwargs)
        return made[-1].transport or _GuardedDatagramTransport(transport), made[-1].inner

    return create_datagram_endpoint


def _loop_getaddrinfo(original: Callable[..., Any]) -> Callable[..., Any]:
    async def getaddrinfo(self, host, port, *args, **kwargs):
        _check_lookup(host)
        return await original(self, host, port, *args, **kwargs)

    return getaddrinfo


def _loop_getnameinfo(original: Callable[..., Any]) -> Callable[..., Any]:
    async def getnameinfo(self, sockaddr, flags=0):
        if not flags & socket.NI_NUMERICHOST:
            _check_reverse(_address_parts(sockaddr)[0])
        return await original(self, sockaddr, flags)

    return getnameinfo


def _loop_sock_connect(original: Callable[..., Any]) -> Callable[..., Any]:
    async def sock_connect(self, sock, address):
        if _inet(sock):
            _check_peer(*_address_parts(address))
        return await original(self, sock, address)

    return sock_connect


def _loop_sock_sendto(original: Callable[..., Any]) -> Callable[..., Any]:
    async def sock_sendto(self, sock, data, address):
        if _inet(sock):
            _check_peer(*_address_parts(address), action="send")
        return await original(self, sock, data, address)

    return sock_sendto


_LOOP_GUARDS = {
    "create_connection": _create_connection,
    "create_datagram_endpoint": _create_datagram_endpoint,
    "getaddrinfo": _loop_getaddrinfo,
    "getnameinfo": _loop_getnameinfo,
    "sock_connect": _loop_sock_connect,
    "sock_sendto": _loop_sock_sendto,
}
_LOOP_LEVEL = ("create_connection", "create_datagram_endpoint", "getaddrinfo", "getnameinfo")
_SOCK_LEVEL = ("sock_connect", "sock_sendto")


def _install_guard() -> None:
    if "getaddrinfo" not in _original:
        _original["getaddrinfo"] = socket.getaddrinfo
        socket.socket.connect = _sock_connect("connect")  # type: ignore[method-assign]
        socket.socket.connect_ex = _sock_connect("connect_ex")  # type: ignore[method-assign]
        socket.socket.sendto = _sock_sendto()  # type: ignore[method-assign]
        socket.socket.sendmsg = _sock_sendmsg()  # type: ignore[method-assign]
        socket.getaddrinfo = _lookup(socket.getaddrinfo, _check_lookup)  # the DNS query is the first packet out
        socket.gethostbyname = _lookup(socket.gethostbyname, _check_lookup)
        socket.gethostbyname_ex = _lookup(socket.gethostbyname_ex, _check_lookup)
        socket.gethostbyaddr = _lookup(socket.gethostbyaddr, _check_reverse)
        socket.getnameinfo = _getnameinfo(socket.getnameinfo)
    _loop_methods(asyncio.base_events.BaseEventLoop, _LOOP_LEVEL)
    _loop_methods(asyncio.selector_events.BaseSelectorEventLoop, _SOCK_LEVEL)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is pinned
        return
    _loop_methods(uvloop.Loop, _LOOP_LEVEL + _SOCK_LEVEL)


def offline(guard: bool = True) -> None:
    """Telemetry off and (with ``guard``) refuse, in this process, everything that would leave loopback.

    Idempotent. See the module docstring (``streamlab._offline``) for what is refused,
    what is allowed and which code paths are guarded.
    """
    ensure_offline()
    if guard:
        _install_guard()
