"""Keep everything on loopback: telemetry off, and a guard that refuses other addresses.

``ensure_offline()`` runs whenever streamlab starts a server (so a user does not
have to remember any environment variable): it switches off the telemetry and
tracing of CrewAI, LangSmith, OpenTelemetry, Chroma and Hugging Face for this
process and the subprocesses it starts. ``offline()`` also installs a socket
guard in this process: a name lookup of anything but localhost, or a connection to
anything but 127.0.0.0/8 or ::1, raises ``NetworkBlocked`` at once instead of
leaving the machine.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import tempfile

__all__ = ["ensure_offline", "offline", "NetworkBlocked", "OFFLINE_ENV"]

OFFLINE_ENV = {
    "CREWAI_DISABLE_TELEMETRY": "true",
    "CREWAI_DISABLE_TRACKING": "true",
    "CREWAI_TRACING_ENABLED": "false",
    # an absolute path: CrewAI joins it to the user's data dir, so task-output databases land in /tmp, not ~
    "CREWAI_STORAGE_DIR": os.path.join(tempfile.gettempdir(), "streamlab-crewai"),
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


class NetworkBlocked(ConnectionRefusedError):
    """A connection to a non-loopback address was attempted while streamlab's guard was on."""


def ensure_offline() -> None:
    """Switch off telemetry for this process and its children (idempotent; keeps values a user set)."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)


def _loopback(address: object) -> bool:
    if isinstance(address, tuple) and address:
        host = address[0]
    elif isinstance(address, (str, bytes)):
        return True  # AF_UNIX path
    else:
        return True
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name that is not localhost would need DNS: refuse


_original_connect = socket.socket.connect
_original_connect_ex = socket.socket.connect_ex
_original_getaddrinfo = socket.getaddrinfo


def _loopback_name(host: object) -> bool:
    if host is None:
        return True  # a passive lookup (binding), no query leaves the machine
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    host = str(host)
    if host in ("", "localhost", "localhost.localdomain", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _guarded_getaddrinfo(host, *args, **kwargs):
    if not _loopback_name(host):
        raise NetworkBlocked(f"streamlab offline guard: refused to look up {host!r} (a DNS query would leave "
                             "the machine; only loopback allowed)")
    return _original_getaddrinfo(host, *args, **kwargs)


def _guarded_connect(self: socket.socket, address: object):
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address):
        raise NetworkBlocked(f"streamlab offline guard: refused a connection to {address!r} (only loopback allowed)")
    return _original_connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: object):
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address):
        raise NetworkBlocked(f"streamlab offline guard: refused a connection to {address!r} (only loopback allowed)")
    return _original_connect_ex(self, address)


def offline(guard: bool = True) -> None:
    """Telemetry off and (with ``guard``) refuse non-loopback connections from this process."""
    ensure_offline()
    if guard:
        socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
        socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign]
        socket.getaddrinfo = _guarded_getaddrinfo  # name lookups too: the DNS query is the first packet out
