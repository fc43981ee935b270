"""Audit ``streamlab mock`` with ~200 bad inputs over a real socket and count how it answers.

    .venv/bin/python tools/audit_mock.py [--verbose] [--python PATH] [--root SOURCE_TREE]

Starts ``python -m streamlab mock`` as a subprocess (its stderr captured), sends every case of
``cases()`` as raw HTTP bytes (bodies, headers, specs, methods, paths, content types, huge, nested and
invalid JSON, wrong types per field), each with a 5 s budget, and after each one checks that a normal
streaming request still completes. Prints counts:

    4xx with an OpenAI-style JSON error | other 4xx | 2xx | 5xx | hangs | tracebacks in stderr
    | normal request OK after every input

Targets: 0 answers of 5xx, 0 hangs, 0 tracebacks, a normal request OK after every input. A case that
freezes the server makes the audit restart it (counted). ``tests/test_mock_validation.py`` runs a
compact subset of the same cases against an in-process ``sl.MockLLM``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BUDGET = 5.0  # seconds per case before it counts as a hang
CHAT = "/v1/chat/completions"
GOOD = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}


@dataclass
class Case:
    label: str
    raw: bytes  # the whole HTTP request as sent
    ok_statuses: tuple[int, ...] = ()  # statuses that are a right answer besides a 4xx JSON error
    waits: bool = False  # the server is right to wait: the client has not sent what it announced


@dataclass
class Answer:
    status: int | None = None
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    hang: bool = False
    error: str = ""
    seconds: float = 0.0

    @property
    def json_error(self) -> bool:
        try:
            err = json.loads(self.body)["error"]
            return isinstance(err, dict) and isinstance(err.get("message"), str) and "type" in err
        except (ValueError, KeyError, TypeError):
            return False


def request(method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
            *, content_type: str | None = "application/json", version: str = "HTTP/1.1") -> bytes:
    lines = [f"{method} {path} {version}", "Host: 127.0.0.1", "Connection: close"]
    if content_type and body is not None:
        lines.append(f"Content-Type: {content_type}")
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    head = "\r\n".join(lines).encode("utf-8") + b"\r\n\r\n"  # raw bytes, as a careless client sends
    return head + (body or b"")


def chat(body: Any, *, path: str = CHAT, headers: dict[str, str] | None = None, raw: bool = False,
         **kw: Any) -> bytes:
    data = body if raw else json.dumps(body).encode()
    return request("POST", path, data, headers, **kw)


def with_(**fields: Any) -> dict:
    return {**GOOD, **fields}


def cases() -> list[Case]:
    out: list[Case] = []
    add = lambda label, raw, *ok: out.append(Case(label, raw, tuple(ok)))  # noqa: E731

    # -- JSON itself -------------------------------------------------------------------------
    for label, data in [
        ("empty body", b""), ("not json", b"{not json"), ("json null", b"null"), ("json array", b"[1,2]"),
        ("json string", b'"hi"'), ("json number", b"1"), ("json true", b"true"),
        ("truncated object", b'{"model": "m", "messages": ['), ("trailing garbage", json.dumps(GOOD).encode() + b"xx"),
        ("NaN literal", b'{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":NaN}'),
        ("Infinity literal", b'{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":Infinity}'),
        ("-Infinity literal", b'{"model":"m","messages":[{"role":"user","content":"x"}],"top_p":-Infinity}'),
        ("nested arrays 100k", b"[" * 100_000 + b"]" * 100_000),
        ("nested objects 50k", b'{"a":' * 50_000 + b"1" + b"}" * 50_000),
        ("nested field 10k", b'{"model":"m","messages":[{"role":"user","content":"x"}],"x":' + b"[" * 10_000
         + b"]" * 10_000 + b"}"),
        ("nested content 5k", b'{"model":"m","messages":[{"role":"user","content":' + b"[" * 5000 + b"]" * 5000
         + b"}]}"),
        ("huge int 5000 digits", b'{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":'
         + b"9" * 5000 + b"}"),
        ("float 1e400", b'{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":1e400}'),
        ("invalid utf-8", b'{"model":"m","messages":[{"role":"user","content":"\xff\xfe"}]}'),
        ("lone surrogate", b'{"model":"m","messages":[{"role":"user","content":"\\ud800"}]}'),
        ("utf-16 body", json.dumps(GOOD).encode("utf-16")),
        ("bom utf-8", b"\xef\xbb\xbf" + json.dumps(GOOD).encode()),
        ("control chars", b'{"model":"m","messages":[{"role":"user","content":"a\x00b"}]}'),
        ("duplicate keys", b'{"model":"m","model":1,"messages":[{"role":"user","content":"x"}]}'),
    ]:
        add(label, chat(data, raw=True), 200)
    # -- wrong types per field -----------------------------------------------------------------
    for v in (None, 1, [], {}, "", "x" * 100_000, True):
        add(f"model={str(v)[:20]!r}", chat(with_(model=v)), 200)
    add("model missing", chat({"messages": GOOD["messages"]}))
    for v in (None, {}, "x", [], [1], [None], [{}], [{"role": 1}], [{"role": "nosuch", "content": "x"}],
              [{"role": "user"}], [{"content": "x"}], [{"role": "user", "content": "x"}] * 100_000):
        add(f"messages={str(v)[:30]}", chat(with_(messages=v)), 200)
    for v in (1, 1.5, {}, True, [1], [{}], [None], [{"type": "text"}], [{"type": "text", "text": 1}],
              [{"type": 1}], [{"text": "x"}], [{"type": "image_url", "image_url": {"url": "data:,x"}}],
              [{"type": "image_url"}], None, [], "x" * 1_000_000):
        add(f"user content={str(v)[:30]}", chat(with_(messages=[{"role": "user", "content": v}])), 200)
    add("assistant content null with tool_calls", chat(with_(messages=[
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function",
                                                               "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "ok"}])), 200)
    add("assistant tool_calls not a list", chat(with_(messages=[{"role": "assistant", "tool_calls": "x"},
                                                                 {"role": "user", "content": "x"}])), 200)
    add("message name not str", chat(with_(messages=[{"role": "user", "content": "x", "name": 5}])), 200)
    add("tool message content int", chat(with_(messages=[{"role": "user", "content": "x"},
                                                          {"role": "tool", "content": 5}])), 200)
    for v in ("yes", 1, 0, [], {}, "true"):
        add(f"stream={v!r}", chat(with_(stream=v)))
    for v in ("x", [], 1, True, {"include_usage": "yes"}, {"include_usage": 1}):
        add(f"stream_options={v!r}", chat(with_(stream=True, stream_options=v)), 200)
    for key in ("max_tokens", "max_completion_tokens"):
        for v in (0, -1, 1.5, "5", True, 10**12, 1e308, 10**100, [], 100_001):
            add(f"{key}={str(v)[:20]}", chat(with_(**{key: v})))
    for v in (2, 0, -1, "1", 1.5, 100, 10**9, None):
        add(f"n={v!r}", chat(with_(n=v)), 200)
    for key, bad in (("temperature", (-1, 2.5, "hot", [], {}, True, 1e308)), ("top_p", (-0.1, 1.5, "x")),
                     ("presence_penalty", (-3, 3, "x")), ("frequency_penalty", (-3, 3, "x")),
                     ("seed", ("x", 1.5, 10**30)), ("top_logprobs", (-1, 50, "x")), ("logprobs", ("x", 1)),
                     ("stop", (1, [1], ["a"] * 10, {}, "x" * 100_000)), ("user", (1, [], {})),
                     ("parallel_tool_calls", ("x", 1)), ("response_format", ("x", 1, [])),
                     ("logit_bias", ("x", [], {"a": "b"})), ("metadata", ("x", 1))):
        for v in bad:
            add(f"{key}={str(v)[:20]}", chat(with_(**{key: v})), 200)
    # -- tools ---------------------------------------------------------------------------------------
    fn = lambda **f: [{"type": "function", "function": {"name": "f", **f}}]  # noqa: E731
    for label, tools in [
        ("string", "x"), ("object", {"type": "function"}), ("[{}]", [{}]), ("[1]", [1]), ("[null]", [None]),
        ("no function", [{"type": "function"}]), ("function string", [{"type": "function", "function": "f"}]),
        ("function {}", [{"type": "function", "function": {}}]),
        ("name int", [{"type": "function", "function": {"name": 1}}]),
        ("name empty", [{"type": "function", "function": {"name": ""}}]),
        ("name bad chars", [{"type": "function", "function": {"name": "a b/c"}}]),
        ("name 1000 chars", [{"type": "function", "function": {"name": "a" * 1000}}]),
        ("no parameters", fn()), ("parameters string", fn(parameters="x")), ("parameters list", fn(parameters=[])),
        ("properties string", fn(parameters={"type": "object", "properties": "x"})),
        ("property string", fn(parameters={"type": "object", "properties": {"a": "x"}})),
        ("type list", fn(parameters={"type": "object", "properties": {"a": {"type": ["string", "null"]}}})),
        ("type object", fn(parameters={"type": "object", "properties": {"a": {"type": {}}}})),
        ("required string", fn(parameters={"type": "object", "properties": {}, "required": "a"})),
        ("required [1]", fn(parameters={"type": "object", "properties": {}, "required": [1]})),
        ("required [[]]", fn(parameters={"type": "object", "properties": {}, "required": [[]]})),
        ("type not function", [{"type": "retrieval", "function": {"name": "f"}}]),
        ("500 tools", [{"type": "function", "function": {"name": f"f{i}"}} for i in range(500)]),
        ("description int", fn(description=1)),
    ]:
        add(f"tools {label}", chat(with_(tools=tools)), 200)
        add(f"tools {label} stream", chat(with_(tools=tools, stream=True)), 200)
    for v in ("x", 1, [], {"type": "function"}, {"type": "function", "function": {"name": "nosuch"}},
              {"type": "function", "function": "f"}):
        add(f"tool_choice={str(v)[:30]}", chat(with_(tools=fn(), tool_choice=v)), 200)
    # -- behaviour specs (path prefix and header) ----------------------------------------------
    specs = ["ratelimit=nan", "stall@1=nan", "stall@1=1e300", "stall@1=inf", "stall@1=-1", "slowheaders=1e12",
             "slowheaders=-1", "slowheaders=nan", "ttft=1e308", "itl=nan", "jitter=inf", "ttft=-0",
             "tokens=1000000000000", "tokens=100001", "tokens=1e3", "tokens=", "tokens=x", "seed=-1",
             "seed=" + "9" * 5000, "cut@", "cut@-1", "cut@99999999999999999999", "cut@1.5", "cut@1=2",
             "context=0", "context=nan", "context=" + "9" * 99, "first=x", "first=" + "9" * 30, "echo=maybe",
             "tools=" + "x" * 10_000, "x" * 200_000, ",".join(["cut@1"] * 10_000), "nosuch", "cüt@1",
             "error@1=x", "nodone@3", "servererror=1", "ratelimit=1e400", "ratelimit=-5", "stall@１=1",
             "itl=0.5e", "ttft=1_000", "%00", "tokens=3,,,", ",", "tokens=5;seed=2=", "=", "@", "@1=2",
             "tokens=100000,itl=1e-9"]
    for spec in specs:
        from urllib.parse import quote

        path = "/s/" + quote(spec, safe="@=,;") + CHAT
        add(f"path spec {spec[:40]!r}", chat(GOOD, path=path), 200)
        add(f"header spec {spec[:40]!r}", chat(GOOD, headers={"X-Streamlab": spec}), 200)
    add("header spec latin-1 bytes", chat(GOOD, raw=False, headers={"X-Streamlab": "cut@\xe9"}))
    add("header spec 100 KB", chat(GOOD, headers={"X-Streamlab": "a" * 100_000}), 431, 413)
    add("two spec headers", chat(GOOD, headers={"X-Streamlab": "tokens=1e12"}) .replace(
        b"\r\n\r\n", b"\r\nX-Streamlab: cut@nan\r\n\r\n", 1))
    add("spec on /v1/models", request("GET", "/s/tokens=1e12/v1/models"), 200)
    add("empty spec prefix", chat(GOOD, path="/s//v1/chat/completions"), 200)
    add("prefix without route", chat(GOOD, path="/s/cut@1"))
    add("prefix only", request("GET", "/s/"))
    # -- methods, paths, content types, HTTP level ----------------------------------------------
    for method in ("GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "FOO"):
        add(f"{method} chat", request(method, CHAT), 405, 400)
    add("POST models", chat(GOOD, path="/v1/models"), 405)
    for path in ("/nope", "//v1/chat/completions", "/v1/../v1/chat/completions", "/v1/chat/completions/",
                 "/v2/chat/completions", "/" + "a" * 50_000, "/v1/chat/completions?x=%zz", "/%ff%fe", "/s/%ff/v1/models"):
        add(f"GET {path[:40]}", request("GET", path), 200, 405, 414)
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                  "application/json; charset=latin-1", None, "application/json" + "x" * 5000):
        add(f"content-type {str(ctype)[:30]}", chat(GOOD, content_type=ctype), 200)
    add("form body", request("POST", CHAT, b"model=m&messages=x", content_type="application/x-www-form-urlencoded"))
    add("gzip body", chat(__import__("gzip").compress(json.dumps(GOOD).encode()), raw=True,
                          headers={"Content-Encoding": "gzip"}))
    body = json.dumps(GOOD).encode()
    add("chunked request body", b"POST " + CHAT.encode() + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Transfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n"
        + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body), 200)
    out.append(Case("content-length too large (short body)", b"POST " + CHAT.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                    b"Connection: close\r\nContent-Length: 10\r\n\r\n{}", waits=True))
    add("body over 8 MiB", chat(b"x" * (8 * 1024 * 1024 + 10), raw=True), 413)
    add("garbage request line", b"HELLO\r\n\r\n", 400)
    add("binary garbage", bytes(range(256)) * 4, 400)
    add("HTTP/1.0", chat(GOOD, version="HTTP/1.0"), 200)
    add("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400, 505)
    add("no host", b"POST " + CHAT.encode() + b" HTTP/1.1\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
        % len(body) + body, 200)
    add("expect 100-continue", chat(GOOD, headers={"Expect": "100-continue"}), 200)
    add("header 60 KB", chat(GOOD, headers={"X-Pad": "a" * 60_000}), 200, 431, 400)
    return out


def probe(port: int, raw: bytes, budget: float = BUDGET) -> Answer:
    """Send ``raw`` and read until the server closes (every case sends Connection: close)."""
    answer = Answer()
    t0 = time.perf_counter()
    data = bytearray()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=budget) as sock:
            try:
                sock.sendall(raw)
            except OSError:
                pass  # the server may answer (413, 400) before reading everything
            while True:
                left = budget - (time.perf_counter() - t0)
                if left <= 0:
                    answer.hang = True
                    break
                sock.settimeout(left)
                try:
                    chunk = sock.recv(65536)
                except socket.timeout:
                    answer.hang = True
                    break
                except OSError as exc:
                    answer.error = type(exc).__name__
                    break
                if not chunk:
                    break
                data += chunk
    except OSError as exc:
        answer.error = f"connect: {type(exc).__name__}"
    answer.seconds = time.perf_counter() - t0
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    m = re.match(rb"HTTP/1\.[01] (\d{3})", head)
    if m:
        answer.status = int(m.group(1))
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.decode("latin-1").partition(":")
            answer.headers[k.strip().lower()] = v.strip()
        if answer.headers.get("transfer-encoding") == "chunked":
            body = _dechunk(body)
        answer.body = body
    return answer


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size, _, rest = data.partition(b"\r\n")
        try:
            n = int(size.split(b";")[0], 16)
        except ValueError:
            break
        if n == 0:
            break
        out += rest[:n]
        data = rest[n + 2:]
    return bytes(out)


def normal_ok(port: int) -> bool:
    answer = probe(port, chat({**GOOD, "stream": True}))
    return answer.status == 200 and b"data: [DONE]" in answer.body


TRACEBACK = re.compile(r"^Traceback \(most recent call last\)", re.M)


class MockProcess:
    """``python -m streamlab mock`` in a subprocess, stderr collected by a thread."""

    def __init__(self, python: str, root: Path = ROOT) -> None:
        self.python = python
        self.root = root
        self.stderr: list[str] = []
        self.proc: subprocess.Popen | None = None
        self.port = 0

    def start(self) -> None:
        def limit() -> None:  # a runaway case must not take the machine's memory
            resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))

        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([self.python, "-m", "streamlab", "mock", "--port", "0"], cwd=self.root,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                     preexec_fn=limit, errors="replace")
        line = self.proc.stdout.readline()
        m = re.search(r"127\.0\.0\.1:(\d+)", line)
        if not m:
            raise RuntimeError(f"mock did not start: {line!r} {self.proc.stderr.read()[:2000]}")
        self.port = int(m.group(1))
        threading.Thread(target=self._drain, args=(self.proc.stderr,), daemon=True).start()
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()

    def _drain(self, stream: Any) -> None:
        for line in stream:
            self.stderr.append(line)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def tracebacks(self) -> int:
        return len(TRACEBACK.findall("".join(self.stderr)))


def classify(case: Case, answer: Answer) -> str:
    if answer.hang:
        return "waits (right)" if case.waits else "hang"
    if answer.status is None:
        return "no answer"
    if answer.status >= 500:
        return "5xx"
    if 400 <= answer.status < 500:
        return "4xx json" if answer.json_error else "4xx other"
    return f"{answer.status // 100}xx"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--python", default=str(ROOT / ".venv" / "bin" / "python"))
    parser.add_argument("--root", type=Path, default=ROOT, help="source tree whose streamlab to run "
                        "(e.g. an old checkout, to compare)")
    parser.add_argument("--verbose", "-v", action="store_true", help="print every case")
    args = parser.parse_args(argv)
    server = MockProcess(args.python, args.root)
    server.start()
    counts: dict[str, int] = {}
    bad_after: list[str] = []
    restarts = 0
    tracebacks_by_case: list[str] = []
    all_cases = cases()
    try:
        for case in all_cases:
            before = server.tracebacks()
            answer = probe(server.port, case.raw)
            kind = classify(case, answer)
            counts[kind] = counts.get(kind, 0) + 1
            tb = server.tracebacks() - before
            healthy = normal_ok(server.port)
            if tb:
                tracebacks_by_case.append(f"{case.label} ({tb})")
            if not healthy:
                bad_after.append(case.label)
                server.stop()
                server.start()
                restarts += 1
            if args.verbose or kind in ("5xx", "hang", "no answer") or tb or not healthy:
                detail = answer.body[:160].decode("utf-8", "replace").replace("\n", " ")
                print(f"  {kind:9s} {answer.status}  {answer.seconds:5.2f}s  {case.label[:60]:60s} "
                      f"{'TRACEBACK ' if tb else ''}{'SERVER DOWN ' if not healthy else ''}{detail}")
    finally:
        server.stop()
    time.sleep(0.2)
    total = len(all_cases)
    print(f"\n{total} bad inputs to `streamlab mock`:")
    for kind in ("4xx json", "4xx other", "2xx", "5xx", "hang", "no answer", "waits (right)"):
        print(f"  {kind:10s} {counts.get(kind, 0)}")
    print(f"  tracebacks in the server's stderr: {server.tracebacks()}"
          + (f" ({', '.join(tracebacks_by_case[:10])})" if tracebacks_by_case else ""))
    print(f"  normal request OK after every input: {'yes' if not bad_after else 'no'}"
          + (f" (failed after {len(bad_after)}: {', '.join(bad_after[:10])}; {restarts} restarts)" if bad_after else ""))
    clean = not (counts.get("5xx") or counts.get("hang") or counts.get("no answer") or server.tracebacks()
                 or bad_after)
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
