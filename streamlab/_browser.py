"""A real browser as a client: headless Chromium consuming a stream with ``EventSource`` or ``fetch``.

    with sl.Browser() as browser:                                   # one Chromium for many streams
        run = browser.stream(proxy.url + "/sse", mode="eventsource", expected=20)
        run.outcome, run.net_error          # Outcome.CUT_MID_STREAM, 'net::ERR_INCOMPLETE_CHUNKED_ENCODING'
        run.console                         # the browser's own console lines
    run = sl.browser_stream(url, mode="fetch", method="POST", json=body, abort_after=5)   # one-shot

The result is a ``BrowserRun``: a ``sl.Run`` like any other client's (outcome, chunks, TTFT, ITLs,
``sl.compare``), plus what the browser said: ``net_error`` (the ``requestfailed`` text of the stream
request, ``net::ERR_...``), ``page_error`` (what the page's JavaScript saw: EventSource's ``error``
event and its ``readyState``, or fetch's ``TypeError: network error``), ``console`` (console
messages), ``protocol`` (``h2`` / ``http/1.1``), ``status`` and ``headers`` of the response.

Design notes:

* **The system browser, driven by Playwright.** Debian's ``/usr/bin/chromium`` (or
  ``STREAMLAB_CHROMIUM``), launched by Playwright's Python API with ``executable_path``: no browser
  download. Flags: no sandbox (we run as root in containers), no GPU, no QUIC, no background
  networking, a fresh ``--user-data-dir`` in a temp dir that ``stop()`` removes.
  ``browser_available()`` says why it cannot run (the tests skip with that reason).
* **Its own thread.** Playwright's sync API refuses to run inside a running asyncio loop (a Jupyter
  kernel has one), and its objects belong to the thread that made them. ``Browser`` runs the sync
  API in one worker thread of its own and hands it jobs, so the same calls work in a script, in
  pytest and in a notebook cell.
* **Same origin, no CORS.** The page (``streamlab/static/browser.html``, shipped with the package)
  is served by Playwright's router at ``<stream origin>/__streamlab__/browser.html``; the router is
  removed before the stream starts, so the stream request goes to the real servers untouched.
  TLS certificate errors are ignored (our servers use self-signed certificates, on loopback only).
* **Times from the page.** Every event is timestamped in the page with ``performance.now()`` and
  converted to the recorder's ``perf_counter`` clock (offset measured by a round trip, error under a
  millisecond on loopback); t0 is the moment the page creates the ``EventSource`` / calls ``fetch``.
* **The outcome is the recorder's.** Events are understood like raw SSE (``data: [DONE]``, OpenAI
  chunks, JSON strings, plain text; named events listed in ``events=``; ``done_events`` end the
  stream) and classified by ``Run``'s own rules. The browser's error decides the exception: a
  ``net::ERR_...`` of the stream request -> ``BrowserError`` (a cut, or no stream), an HTTP error
  status -> ``BrowserError`` with ``status_code`` (``Outcome.HTTP_ERROR``), no end within
  ``timeout`` -> ``BrowserTimeout`` (``Outcome.STALLED``). An EventSource ``error`` event on a
  stream the network layer saw end cleanly is not an exception: without ``[DONE]`` it is a silent
  truncation (the page closes the EventSource; left alone it would reconnect).
* **Closing is ours.** The page closes its EventSource on ``[DONE]`` (as apps do); a ``net::ERR_ABORTED``
  caused by that close or by ``abort_after`` is not an error.

Taught in notebooks/05_incidents.ipynb.
"""

from __future__ import annotations

import atexit
import json as _json
import os
import queue
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Callable
from urllib.parse import urlsplit

from ._recorder import Outcome, Run, inspect_chunk
from ._sse import SSEParser, parse_block
from ._timescale import current_time_scale

__all__ = ["Browser", "BrowserRun", "BrowserEvent", "BrowserError", "BrowserTimeout", "browser_stream",
           "browser_available", "CHROMIUM", "LAUNCH_ARGS"]

CHROMIUM = os.environ.get("STREAMLAB_CHROMIUM", "/usr/bin/chromium")
LAUNCH_ARGS = ("--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync")
PAGE_PATH = "/__streamlab__/browser.html"
MODES = ("eventsource", "fetch")


class BrowserError(OSError):
    """What the browser reported for a stream: a ``net::ERR_...`` text, a page error, an HTTP status.

        BrowserError            net::ERR_INCOMPLETE_CHUNKED_ENCODING, net::ERR_HTTP2_PROTOCOL_ERROR,
         |                      net::ERR_EMPTY_RESPONSE ...; ``status_code`` for an HTTP error status
         +-- BrowserTimeout     no end within the page's ``timeout`` (also a TimeoutError)
    """

    def __init__(self, message: str, *, status_code: int | None = None, net_error: str | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.net_error = net_error


class BrowserTimeout(BrowserError, TimeoutError):
    """The page saw no end of the stream within ``timeout`` scenario seconds."""


@dataclass(frozen=True)
class BrowserEvent:
    """One event as the page saw it: ``t`` in scenario seconds from t0; ``event`` is the SSE event name
    (``message`` for unnamed ones), ``open``, or ``comment`` (fetch mode only: EventSource hides them)."""

    t: float
    event: str
    data: str | None = None
    id: str | None = None


@dataclass(repr=False)
class BrowserRun(Run):
    """A ``Run`` recorded by a real browser, with what the browser said (see the module docstring).

    Its repr counts content events (``chunks``: one per token from the mock, one per app event), not
    words of text as ``Run``'s does."""

    mode: str = ""
    net_error: str | None = None
    page_error: str | None = None
    console: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)   # every requestfailed of the page: "URL net::ERR_..."
    events: list[BrowserEvent] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    protocol: str | None = None

    @property
    def comments(self) -> int:
        """SSE comments (heartbeats) the page read (fetch mode; EventSource does not expose them)."""
        return sum(e.event == "comment" for e in self.events)

    def __repr__(self) -> str:
        got = f"{self.chunks}/{self.expected}" if self.expected is not None else str(self.chunks)
        said = self.net_error or (f"status {self.status}" if self.outcome is Outcome.HTTP_ERROR else None)
        said = said or (self.error_class if self.error is not None else None)
        return (f"<BrowserRun {self.label + ': ' if self.label else ''}{self.mode}, {self.outcome}, {got} events"
                f"{', ' + said if said else ''}>")


def browser_available() -> str | None:
    """None when a browser can run here, else the reason it cannot (tests skip with it)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright; no browser download is needed)"
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium, or set STREAMLAB_CHROMIUM)"
    return None


def _page_html() -> str:
    return resources.files("streamlab").joinpath("static/browser.html").read_text(encoding="utf-8")


# --------------------------------------------------------------------------- the browser's own thread

def _chromium_pid(user_data_dir: str) -> int | None:
    """The browser's main process: our descendant whose command line names our profile directory."""
    import psutil

    for proc in psutil.Process().children(recursive=True):
        try:
            if any(arg == f"--user-data-dir={user_data_dir}" for arg in proc.cmdline()):
                return proc.pid
        except psutil.Error:
            continue
    return None


def _kill_tree(pid: int) -> None:
    import psutil

    try:
        root = psutil.Process(pid)
        procs = root.children(recursive=True) + [root]
    except psutil.Error:
        return
    for proc in procs:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=5)


_live: "set[Browser]" = set()
_live_lock = threading.Lock()


class Browser:
    """One headless Chromium, driven from a thread of its own; ``with Browser() as b: b.stream(url)``.

    ``launch_timeout`` is wall-clock seconds. ``stop()`` (also on ``with`` exit and at interpreter
    exit) closes the browser, ends its processes and removes its profile directory.
    """

    def __init__(self, *, executable: str | None = None, launch_timeout: float = 60.0) -> None:
        self.executable = executable or CHROMIUM
        self.launch_timeout = launch_timeout
        self.user_data_dir: str | None = None
        self.pid: int | None = None
        self._jobs: "queue.Queue[tuple[Callable[[], Any], queue.Queue] | None]" = queue.Queue()
        self._thread: threading.Thread | None = None
        self._context: Any = None

    # -- lifetime ---------------------------------------------------------------
    def start(self) -> "Browser":
        if self._thread is not None:
            return self
        why = browser_available() if self.executable == CHROMIUM else None
        if why:
            raise RuntimeError(why)
        self.user_data_dir = tempfile.mkdtemp(prefix="streamlab-chromium-")
        ready: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._main, args=(ready,), name="streamlab-browser", daemon=True)
        self._thread.start()
        try:
            ok, value = ready.get(timeout=self.launch_timeout)
        except queue.Empty:
            self.stop()
            raise RuntimeError(f"Chromium did not start within {self.launch_timeout} s") from None
        if not ok:
            self.stop()
            raise RuntimeError(f"Chromium did not start: {value}") from value
        with _live_lock:
            _live.add(self)
        return self

    def _main(self, ready: queue.Queue) -> None:
        from playwright.sync_api import sync_playwright

        try:
            pw = sync_playwright().start()
        except Exception as exc:  # noqa: BLE001 - reported to start()
            ready.put((False, exc))
            return
        try:
            self._context = pw.chromium.launch_persistent_context(
                self.user_data_dir, executable_path=self.executable, headless=True, chromium_sandbox=False,
                args=list(LAUNCH_ARGS), ignore_https_errors=True)
            self.pid = _chromium_pid(self.user_data_dir)
            ready.put((True, None))
            while (job := self._jobs.get()) is not None:
                fn, reply = job
                try:
                    reply.put((True, fn()))
                except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                    reply.put((False, exc))
        except Exception as exc:  # noqa: BLE001 - a launch failure is reported to start()
            ready.put((False, exc))
        finally:
            try:
                if self._context is not None:
                    self._context.close()
            finally:
                self._context = None
                pw.stop()

    def _call(self, fn: Callable[[], Any]) -> Any:
        if self._thread is None or not self._thread.is_alive():
            raise RuntimeError("the browser is not running (use `with Browser() as b:` or b.start())")
        reply: queue.Queue = queue.Queue()
        self._jobs.put((fn, reply))
        ok, value = reply.get()
        if not ok:
            raise value
        return value

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            self._jobs.put(None)
            thread.join(timeout=30)
        if self.pid is not None:            # Playwright closed it; make sure (a hung close, a crash)
            _kill_tree(self.pid)
            self.pid = None
        if self.user_data_dir is not None:
            shutil.rmtree(self.user_data_dir, ignore_errors=True)
            self.user_data_dir = None
        with _live_lock:
            _live.discard(self)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> "Browser":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- one stream ---------------------------------------------------------------
    def stream(self, url: str, *, mode: str = "eventsource", method: str = "GET", json: Any = None,
               body: str | None = None, headers: dict[str, str] | None = None, events: tuple[str, ...] = (),
               done_events: tuple[str, ...] = ("done",), abort_after: int | None = None,
               abort_after_s: float | None = None, timeout: float = 600.0, expected: int | None = None,
               itl: float | None = None, label: str = "") -> BrowserRun:
        """Load the page on ``url``'s origin and consume ``url`` once; the browser's ``BrowserRun``.

        ``mode`` is ``"eventsource"`` (GET only; ``events`` names the SSE event types to listen to
        besides unnamed ones) or ``"fetch"`` (``method``, ``json`` or ``body``, ``headers``; the body
        read with a stream reader, an ``AbortController`` to stop). ``abort_after`` stops after N
        data events (``[DONE]`` not counted), ``abort_after_s`` after T scenario seconds, like a user
        leaving the page. ``timeout`` (scenario seconds): the page gives up, ``Outcome.STALLED``.
        """
        if mode not in MODES:
            raise ValueError(f"mode is one of {MODES}, got {mode!r}")
        if mode == "eventsource" and (method != "GET" or json is not None or body is not None):
            raise ValueError("EventSource can only GET (use mode='fetch' for a POST)")
        if json is not None and body is not None:
            raise ValueError("pass json= or body=, not both")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"url must be an absolute http(s) URL, got {url!r}")
        headers = dict(headers or {})
        if json is not None:
            body = _json.dumps(json)
            headers.setdefault("content-type", "application/json")
        scale = current_time_scale()
        options = {"url": url, "mode": mode, "method": method, "headers": headers, "body": body,
                   "events": list(events), "done_events": list(done_events), "abort_after": abort_after,
                   "abort_after_ms": None if abort_after_s is None else abort_after_s * scale * 1000,
                   "timeout_ms": timeout * scale * 1000}
        origin = f"{parts.scheme}://{parts.netloc}"
        raw = self._call(lambda: self._run_page(origin, url, options))
        return _to_run(raw, mode=mode, url=url, scale=scale, expected=expected, itl=itl, label=label,
                       timeout=timeout, abort=abort_after is not None or abort_after_s is not None)

    def _run_page(self, origin: str, url: str, options: dict[str, Any]) -> dict[str, Any]:
        """In the browser thread: one fresh page, the stream, everything the browser said."""
        page = self._context.new_page()
        said: dict[str, Any] = {"console": [], "failures": [], "net_error": None, "settled": False,
                                "status": None, "headers": {}, "response": None}

        def is_stream(request: Any) -> bool:
            return request.url == url

        def on_failed(request: Any) -> None:
            text = request.failure or "failed"
            said["failures"].append(f"{request.url} {text}")
            if is_stream(request):
                said["net_error"], said["settled"] = text, True

        def on_finished(request: Any) -> None:
            if is_stream(request):
                said["settled"] = True

        def on_response(response: Any) -> None:
            if is_stream(response.request):
                said["status"], said["headers"], said["response"] = response.status, dict(response.headers), response

        page.on("console", lambda m: said["console"].append(f"{m.type}: {m.text}"))
        page.on("requestfailed", on_failed)
        page.on("requestfinished", on_finished)
        page.on("response", on_response)
        try:
            html = _page_html()
            page.route(origin + PAGE_PATH, lambda route: route.fulfill(status=200, content_type="text/html",
                                                                       body=html))
            page.goto(origin + PAGE_PATH)
            page.unroute_all()
            before = time.perf_counter()
            now_ms = page.evaluate("performance.now()")
            after = time.perf_counter()
            offset = (before + after) / 2 - now_ms / 1000
            result = page.evaluate("(o) => window.streamlabRun(o)", options)
            deadline = time.perf_counter() + 2.0      # the network layer's verdict comes after the page's
            while not said["settled"] and time.perf_counter() < deadline and result["end"] != "timeout":
                page.wait_for_timeout(20)
            result["protocol"] = page.evaluate(
                "(u) => { const e = performance.getEntriesByName(u); return e.length ? e[e.length - 1].nextHopProtocol"
                " || null : null; }", url)
            body = None
            if said["status"] is not None and said["status"] >= 400 and said["response"] is not None:
                try:
                    body = said["response"].text()
                except Exception:  # noqa: BLE001 - a body the browser did not keep
                    body = None
            return {**result, "offset": offset, "console": said["console"], "failures": said["failures"],
                    "net_error": said["net_error"], "net_status": said["status"], "headers": said["headers"],
                    "body": body}
        finally:
            page.close()


@atexit.register
def _stop_all() -> None:
    with _live_lock:
        browsers = list(_live)
    for browser in browsers:
        browser.stop()


def browser_stream(url: str, **kwargs: Any) -> BrowserRun:
    """One stream in a browser of its own (launched and closed around it): ``Browser.stream``'s arguments."""
    with Browser() as browser:
        return browser.stream(url, **kwargs)


# --------------------------------------------------------------------------- the page's events -> a Run

def _understand(event: str, data: str) -> Any:
    """What the recorder understands of one event's data (same rules as raw SSE, plus JSON strings)."""
    if data == "[DONE]":
        return inspect_chunk("data: [DONE]\n\n")
    try:
        value = _json.loads(data)
    except ValueError:
        value = None
    if isinstance(value, dict):
        return inspect_chunk(f"data: {data}\n\n")
    info = inspect_chunk("")
    return type(info)(text=value if isinstance(value, str) else data, nbytes=len(data.encode()))


def _to_run(raw: dict[str, Any], *, mode: str, url: str, scale: float, expected: int | None, itl: float | None,
            label: str, timeout: float, abort: bool) -> BrowserRun:
    offset = raw["offset"]

    def clock(ms: float) -> float:
        return ms / 1000 + offset

    t0 = clock(raw["t0"])
    run = BrowserRun(label=label, expected=expected, t_start=t0, t_call=t0, itl_hint=itl, scale=scale, mode=mode,
                     console=list(raw["console"]), failures=list(raw["failures"]), headers=dict(raw["headers"]),
                     protocol=raw.get("protocol"))
    run.status = raw.get("net_status") or raw.get("status")
    done_events = {"done"}
    seen: list[tuple[float, str, str | None, str | None]] = []   # (t, event, data, id)
    if mode == "eventsource":
        for e in raw["events"]:
            seen.append((clock(e["t"]), e["event"], e.get("data"), e.get("id")))
    else:
        parser = SSEParser()
        for e in raw["events"]:
            if e["event"] != "read":
                seen.append((clock(e["t"]), e["event"], None, None))
                continue
            for block in parser.feed(e["data"]):
                sse = parse_block(block)
                if sse.data is None:
                    if sse.comments:
                        seen.append((clock(e["t"]), "comment", "\n".join(sse.comments), None))
                    continue
                seen.append((clock(e["t"]), sse.event or "message", sse.data, sse.id))
    text_body: list[str] = []
    for t, event, data, event_id in seen:
        run.events.append(BrowserEvent(t=(t - t0) / scale, event=event, data=data, id=event_id))
        if event in ("open", "comment") or data is None:
            continue
        info = _understand(event, data)
        if event in done_events:
            info = type(info)(text=None, terminal=True, nbytes=info.nbytes)
        text_body.append(data)
        run.take(info, t)
    run.t_end = clock(raw["t_end"])

    end = raw["end"]
    detail = raw.get("detail") or {}
    net_error = raw.get("net_error")
    if net_error == "net::ERR_ABORTED" and end in ("done", "aborted", "timeout"):
        net_error = None                      # our own close: after [DONE], the abort asked for, the timeout
    run.net_error = net_error
    if end == "error":
        if mode == "eventsource":
            state = {0: "CONNECTING: it would reconnect", 2: "CLOSED: it gave up"}.get(detail.get("ready_state"),
                                                                                        "?")
            run.page_error = f"EventSource error event, readyState {state}"
        else:
            run.page_error = detail.get("js_error")
    if run.status is not None and run.status >= 400:
        if mode == "fetch" and raw.get("body") is None:
            run.body = "".join(e["data"] for e in raw["events"] if e["event"] == "read") or None
        else:
            run.body = raw.get("body")
        if mode == "eventsource" and run.error is None:
            run.error = BrowserError(f"HTTP {run.status}", status_code=run.status, net_error=net_error)
    elif end == "timeout":
        run.error = BrowserTimeout(f"no end of the stream within {timeout:g} s", net_error=net_error)
    elif net_error is not None and run.error is None:
        run.error = BrowserError(net_error, net_error=net_error)
    elif end == "error" and mode == "fetch" and run.error is None:
        run.error = BrowserError(run.page_error or "fetch failed")
    run.aborted = end == "aborted" and abort
    run.outcome = run._classify()
    return run
