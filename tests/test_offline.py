"""``sl.offline()`` refuses everything that would leave loopback, on every path the workbook's libraries take.

Issue 10: the guard missed connections made through uvloop (streamlab's own
``Proxy``/``Balancer`` upstream connects, ``AsyncOpenAI`` and ``httpx.AsyncClient``
under uvloop) and UDP ``sendto``; it refused loopback spelled ``127.1`` or
``::ffff:127.0.0.1``; and it called an IP literal "a DNS query".

The probes run in a subprocess inside a private network namespace with no route
out (``unshare -n``, loopback up), so a guard that fails can never send a packet
anywhere: there, an unguarded attempt fails with ENETUNREACH / a resolver error,
which the control run (guard off) shows for every probe, so a pass means the guard
refused it, not the namespace.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import streamlab as sl
from streamlab._offline import NetworkBlocked, is_loopback_host

ROOT = Path(__file__).resolve().parent.parent

PROBE = textwrap.dedent(r'''
    import asyncio, json, socket, sys, threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import httpx, openai, uvloop
    import streamlab as sl
    from streamlab._offline import NetworkBlocked

    class Quiet(BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"ok"
            self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers()
            self.wfile.write(body)
        def log_message(self, *args):
            pass

    class Server6(ThreadingHTTPServer):
        address_family = socket.AF_INET6

    servers = {"127.0.0.1": ThreadingHTTPServer(("127.0.0.1", 0), Quiet),
               "127.0.0.2": ThreadingHTTPServer(("127.0.0.2", 0), Quiet),
               "::1": Server6(("::1", 0), Quiet)}
    for server in servers.values():
        threading.Thread(target=server.serve_forever, daemon=True).start()
    port = {host: server.server_address[1] for host, server in servers.items()}
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); udp.bind(("127.0.0.1", 0))

    if sys.argv[1] == "guard":
        sl.offline()

    def blocked_in(exc):
        seen = set()
        while exc is not None and id(exc) not in seen:
            if isinstance(exc, NetworkBlocked):
                return exc
            seen.add(id(exc))
            exc = exc.__cause__ or exc.__context__
        return None

    results = {}
    def probe(name, fn):
        try:
            value = fn()
            if asyncio.iscoroutine(value):
                value = asyncio.run(value)
            results[name] = ["allowed", repr(value)[:80]]
        except BaseException as exc:
            hit = blocked_in(exc)
            results[name] = ["blocked", type(exc).__name__, str(hit)] if hit else ["error", type(exc).__name__, str(exc)[:200]]

    def uv(coro_fn):
        return lambda: uvloop.run(coro_fn())

    def asy(coro_fn):
        return lambda: asyncio.run(coro_fn())

    async def open_close(host, p, **kw):
        reader, writer = await asyncio.open_connection(host, p, **kw)
        writer.close()
        return "connected"

    class Errors(asyncio.DatagramProtocol):  # a transport reports a failed send to error_received()
        def __init__(self):
            self.errors = []
        def error_received(self, exc):
            self.errors.append(exc)

    async def _send(transport, protocol, *addr):
        try:
            transport.sendto(b"x", *addr)
            await asyncio.sleep(0.05)
        finally:
            transport.close()
        if protocol.errors:
            raise protocol.errors[0]
        return "sent"

    async def datagram(addr):
        loop = asyncio.get_running_loop()
        return await _send(*await loop.create_datagram_endpoint(Errors, local_addr=("127.0.0.1", 0)), addr)

    async def datagram_to(addr):
        return await _send(*await asyncio.get_running_loop().create_datagram_endpoint(Errors, remote_addr=addr))

    async def sock_connect(addr):
        loop = asyncio.get_running_loop()
        with socket.socket() as s:
            s.setblocking(False)
            await loop.sock_connect(s, addr)
        return "connected"

    async def loop_lookup(host):
        return len(await asyncio.get_running_loop().getaddrinfo(host, 443))

    async def httpx_async(url):
        async with httpx.AsyncClient(timeout=3) as client:
            return (await client.get(url)).status_code

    async def openai_async(url):
        client = openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=0, timeout=3)
        return await client.models.list()

    def tcp(host, p, family=socket.AF_INET):
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(3); s.connect((host, p))
        return "connected"

    OUT4, OUT6 = "93.184.216.34", "2001:db8::1"
    # refused: every path, to an address and to a name
    probe("socket.connect ip", lambda: tcp(OUT4, 443))
    probe("socket.connect ipv6", lambda: tcp(OUT6, 443, socket.AF_INET6))
    def connect_ex(host, p):
        rc = socket.socket().connect_ex((host, p))
        if rc:
            raise OSError(rc, f"connect_ex returned {rc}")
        return rc
    probe("socket.connect_ex ip", lambda: connect_ex(OUT4, 443))
    probe("socket.create_connection ip", lambda: socket.create_connection((OUT4, 443), timeout=3))
    probe("socket.create_connection name", lambda: socket.create_connection(("example.com", 443), timeout=3))
    probe("socket.getaddrinfo", lambda: socket.getaddrinfo("example.com", 443))
    probe("socket.gethostbyname", lambda: socket.gethostbyname("example.com"))
    probe("socket.gethostbyname_ex", lambda: socket.gethostbyname_ex("example.com"))
    probe("socket.gethostbyaddr", lambda: socket.gethostbyaddr("192.0.2.1"))
    probe("socket.getnameinfo", lambda: socket.getnameinfo(("192.0.2.1", 80), 0))
    probe("udp sendto", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("8.8.8.8", 53)))
    probe("udp sendto flags", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", 0, ("8.8.8.8", 53)))
    probe("udp sendmsg", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendmsg([b"x"], [], 0, ("8.8.8.8", 53)))
    for tag, run in (("asyncio", asy), ("uvloop", uv)):
        probe(f"{tag} open_connection ip", run(lambda: open_close(OUT4, 443)))
        probe(f"{tag} open_connection name", run(lambda: open_close("example.com", 443)))
        probe(f"{tag} sock_connect", run(lambda: sock_connect((OUT4, 443))))
        probe(f"{tag} getaddrinfo", run(lambda: loop_lookup("example.com")))
        probe(f"{tag} datagram sendto", run(lambda: datagram(("8.8.8.8", 53))))
        probe(f"{tag} datagram remote_addr", run(lambda: datagram_to(("8.8.8.8", 53))))
        probe(f"{tag} httpx.AsyncClient", run(lambda: httpx_async(f"http://{OUT4}/")))
        probe(f"{tag} AsyncOpenAI", run(lambda: openai_async("https://api.openai.com/v1")))
    probe("httpx sync ip", lambda: httpx.get(f"http://{OUT4}/", timeout=3))
    probe("httpx sync name", lambda: httpx.get("https://example.com/", timeout=3))
    probe("openai sync", lambda: openai.OpenAI(base_url="https://api.openai.com/v1", api_key="x",
                                               max_retries=0, timeout=3).models.list())

    # allowed: loopback in every spelling, against servers listening in this namespace
    p = port["127.0.0.1"]
    probe("allow 127.0.0.1", lambda: tcp("127.0.0.1", p))
    probe("allow 127.1", lambda: tcp("127.1", p))
    probe("allow 127.0.0.2", lambda: tcp("127.0.0.2", port["127.0.0.2"]))
    probe("allow ::1", lambda: tcp("::1", port["::1"], socket.AF_INET6))
    probe("allow ::ffff:127.0.0.1", lambda: tcp("::ffff:127.0.0.1", p, socket.AF_INET6))
    probe("allow localhost", lambda: socket.create_connection(("localhost", p), timeout=3).close() or "connected")
    probe("allow getaddrinfo localhost", lambda: len(socket.getaddrinfo("localhost", p)))
    probe("allow getaddrinfo ip literal", lambda: len(socket.getaddrinfo("93.184.216.34", 443)))
    probe("allow udp sendto loopback", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(
        b"x", ("127.0.0.1", udp.getsockname()[1])))
    for tag, run in (("asyncio", asy), ("uvloop", uv)):
        probe(f"allow {tag} 127.1", run(lambda: open_close("127.1", p)))
        probe(f"allow {tag} ::ffff:127.0.0.1", run(lambda: open_close("::ffff:127.0.0.1", p)))
        probe(f"allow {tag} localhost", run(lambda: open_close("localhost", p)))
        probe(f"allow {tag} ::1", run(lambda: open_close("::1", port["::1"])))
        probe(f"allow {tag} datagram loopback", run(lambda: datagram(("127.0.0.1", udp.getsockname()[1]))))
        probe(f"allow {tag} httpx.AsyncClient 127.0.0.2", run(lambda: httpx_async(
            f"http://127.0.0.2:{port['127.0.0.2']}/")))
    probe("allow httpx sync [::1]", lambda: httpx.get(f"http://[::1]:{port['::1']}/", timeout=3).status_code)
    probe("allow httpx sync localhost", lambda: httpx.get(f"http://localhost:{p}/", timeout=3).status_code)

    # streamlab's own hops connect upstream on uvloop: what their logs say about the refusal
    with sl.Proxy(upstream=f"http://{OUT4}:80") as proxy:
        status = httpx.get(proxy.url + "/", timeout=5).status_code
        results["sl.Proxy upstream"] = [str(status), *[e.note for e in proxy.log.events if e.kind == "fault"]]
    with sl.Balancer([f"http://{OUT4}:80"]) as balancer:
        status = httpx.get(balancer.url + "/", timeout=5).status_code
        results["sl.Balancer upstream"] = [str(status), *[e.note for e in balancer.log.events if e.kind in ("fault", "close")]]
    print(json.dumps(results))
''')


def _namespace_prefix() -> list[str]:
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare(1) is not installed: cannot make a network namespace with no route out")
    for prefix in ([unshare, "-n"], [unshare, "-rn"]) if os.geteuid() == 0 else ([unshare, "-rn"],):
        check = subprocess.run([*prefix, "sh", "-c", "ip link set lo up && ip route"], capture_output=True,
                               text=True, timeout=30)
        if check.returncode == 0 and not check.stdout.strip():  # loopback up, and no route at all
            return prefix
    pytest.skip(f"cannot make a network namespace without a route out (unshare -n / -rn: {check.stderr.strip()})")


def _run_probe(mode: str) -> dict[str, list[str]]:
    prefix = _namespace_prefix()
    script = f"ip link set lo up && exec {sys.executable} -c \"$0\" {mode}"
    proc = subprocess.run([*prefix, "sh", "-c", script, PROBE], capture_output=True, text=True, timeout=180,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def guarded():
    return _run_probe("guard")


@pytest.fixture(scope="module")
def unguarded():
    return _run_probe("off")


REFUSED = ["socket.connect ip", "socket.connect ipv6", "socket.connect_ex ip", "socket.create_connection ip",
           "socket.create_connection name", "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex",
           "socket.gethostbyaddr", "socket.getnameinfo", "udp sendto", "udp sendto flags", "udp sendmsg",
           *[f"{loop} {path}" for loop in ("asyncio", "uvloop")
             for path in ("open_connection ip", "open_connection name", "sock_connect", "getaddrinfo",
                          "datagram sendto", "datagram remote_addr", "httpx.AsyncClient", "AsyncOpenAI")],
           "httpx sync ip", "httpx sync name", "openai sync"]


@pytest.mark.parametrize("path", REFUSED)
def test_every_path_out_is_refused_with_network_blocked(guarded, unguarded, path):
    assert guarded[path][0] == "blocked", guarded[path]
    assert unguarded[path][0] == "error", f"control run without the guard: {unguarded[path]}"  # it did try


def test_messages_say_exactly_what_was_refused(guarded):
    assert guarded["socket.connect ip"][2].startswith("connection to 93.184.216.34:443 refused by streamlab.offline()")
    assert guarded["socket.connect ipv6"][2].startswith("connection to [2001:db8::1]:443 refused by streamlab.offline()")
    assert guarded["socket.getaddrinfo"][2].startswith("DNS lookup of example.com refused by streamlab.offline()")
    assert guarded["socket.create_connection name"][2].startswith("DNS lookup of example.com refused")
    assert guarded["uvloop open_connection ip"][2].startswith("connection to 93.184.216.34:443 refused")
    assert guarded["udp sendto"][2].startswith("datagram to 8.8.8.8:53 refused by streamlab.offline()")
    assert guarded["socket.gethostbyaddr"][2].startswith("reverse DNS lookup of 192.0.2.1 refused")
    assert guarded["uvloop AsyncOpenAI"][2].startswith("DNS lookup of api.openai.com refused")
    assert guarded["httpx sync ip"][1] == "ConnectError"  # httpx's own error, NetworkBlocked as its cause


def test_streamlab_proxy_and_balancer_upstream_connects_are_refused(guarded, unguarded):
    assert guarded["sl.Proxy upstream"][0] == "502"
    assert "connection to 93.184.216.34:80 refused by streamlab.offline()" in " ".join(guarded["sl.Proxy upstream"])
    assert "Network is unreachable" in " ".join(unguarded["sl.Proxy upstream"])
    assert "NetworkBlocked" in " ".join(guarded["sl.Balancer upstream"]), guarded["sl.Balancer upstream"]
    assert "NetworkBlocked" not in " ".join(unguarded["sl.Balancer upstream"])


ALLOWED = ["allow 127.0.0.1", "allow 127.1", "allow 127.0.0.2", "allow ::1", "allow ::ffff:127.0.0.1",
           "allow localhost", "allow getaddrinfo localhost", "allow getaddrinfo ip literal",
           "allow udp sendto loopback",
           *[f"allow {loop} {what}" for loop in ("asyncio", "uvloop")
             for what in ("127.1", "::ffff:127.0.0.1", "localhost", "::1", "datagram loopback",
                          "httpx.AsyncClient 127.0.0.2")],
           "allow httpx sync [::1]", "allow httpx sync localhost"]


@pytest.mark.parametrize("path", ALLOWED)
def test_loopback_in_every_spelling_is_allowed(guarded, path):
    assert guarded[path][0] == "allowed", guarded[path]


@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.1", True), ("127.0.0.2", True), ("127.255.255.254", True), ("::1", True),
    ("[::1]", True), ("::ffff:127.0.0.1", True), ("localhost", True), ("LOCALHOST", True),
    ("0.0.0.0", False), ("::", False), ("10.0.0.1", False), ("192.168.1.5", False), ("example.com", False),
    ("128.0.0.1", False), ("::ffff:10.0.0.1", False), ("", False),
])
def test_is_loopback_host(host, loopback):
    assert is_loopback_host(host) is loopback


def test_network_blocked_is_a_connection_refused_error_with_the_target():
    exc = NetworkBlocked("connection to 192.0.2.1:80 refused by streamlab.offline()", host="192.0.2.1", port=80)
    assert isinstance(exc, ConnectionRefusedError) and sl.NetworkBlocked is NetworkBlocked
    assert (exc.action, exc.host, exc.port) == ("connect", "192.0.2.1", 80)
    assert str(exc) == "connection to 192.0.2.1:80 refused by streamlab.offline()"
    assert exc.errno == errno.ECONNREFUSED
    copy = pickle.loads(pickle.dumps(exc))
    assert (str(copy), copy.host, copy.port) == (str(exc), "192.0.2.1", 80)


def test_offline_switches_telemetry_off_for_this_process_and_its_children():
    from streamlab._offline import OFFLINE_ENV, ensure_offline

    ensure_offline()
    assert os.environ["CREWAI_DISABLE_TELEMETRY"] == "true" and os.environ["OTEL_SDK_DISABLED"] == "true"
    child = subprocess.run([sys.executable, "-c", "import os; print(os.environ['LANGSMITH_TRACING'])"],
                           capture_output=True, text=True, timeout=30)
    assert child.stdout.strip() == OFFLINE_ENV["LANGSMITH_TRACING"] == "false"


_STORAGE_PROBE = textwrap.dedent("""
    import os, sys
    import streamlab as sl
    sl.offline()
    from crewai.memory.storage.kickoff_task_outputs_storage import KickoffTaskOutputsSQLiteStorage
    storage = KickoffTaskOutputsSQLiteStorage()          # creates CrewAI's task-output database
    print(os.getpid())
    print(os.environ["CREWAI_STORAGE_DIR"])
    print(storage.db_path)
    print(os.path.isfile(storage.db_path), oct(os.stat(os.environ["CREWAI_STORAGE_DIR"]).st_mode & 0o777))
""")


def test_crewai_storage_is_a_private_directory_of_the_process_removed_at_exit(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "CREWAI_STORAGE_DIR"}
    child = subprocess.run([sys.executable, "-c", _STORAGE_PROBE], capture_output=True, text=True, timeout=120,
                           env=env)
    assert child.returncode == 0, child.stderr[-2000:]
    pid, directory, db_path, facts = child.stdout.strip().splitlines()[-4:]
    assert Path(directory).name.startswith(f"streamlab-crewai-{pid}-")  # not the shared /tmp/streamlab-crewai
    assert Path(db_path).parent == Path(directory)
    assert facts == "True 0o700"  # it was written, privately ...
    assert not Path(directory).exists()  # ... and is gone once the interpreter exited


def test_a_crewai_storage_dir_the_user_set_is_kept_and_never_removed(tmp_path):
    mine = tmp_path / "my-crewai"
    mine.mkdir()
    (mine / "keep.txt").write_text("mine")
    probe = "import os, streamlab as sl; sl.offline(); print(os.environ['CREWAI_STORAGE_DIR'])"
    child = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                           env={**os.environ, "CREWAI_STORAGE_DIR": str(mine)})
    assert child.returncode == 0, child.stderr[-2000:]
    assert child.stdout.strip() == str(mine)
    assert (mine / "keep.txt").read_text() == "mine"


def test_a_killed_processs_crewai_storage_is_swept_by_the_next_process(tmp_path):
    # nbval stops a kernel with SIGKILL: no exit handler runs, so the next streamlab process sweeps
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          timeout=30)
    dead = int(gone.stdout)
    import tempfile

    stale = Path(tempfile.mkdtemp(prefix=f"streamlab-crewai-{dead}-"))
    (stale / "latest_kickoff_task_outputs.db").write_bytes(b"")
    alive = Path(tempfile.mkdtemp(prefix=f"streamlab-crewai-{os.getpid()}-"))  # this process: alive, kept
    try:
        env = {k: v for k, v in os.environ.items() if k != "CREWAI_STORAGE_DIR"}
        child = subprocess.run([sys.executable, "-c", "import streamlab as sl; sl.offline()"], capture_output=True,
                               text=True, timeout=60, env=env)
        assert child.returncode == 0, child.stderr[-2000:]
        assert not stale.exists()
        assert alive.exists()
    finally:
        shutil.rmtree(stale, ignore_errors=True)
        shutil.rmtree(alive, ignore_errors=True)
