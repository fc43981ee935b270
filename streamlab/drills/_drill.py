"""``Drill``: one incident with a hidden cause, the ladder's steps on a clock, the answer and the debrief."""

from __future__ import annotations

import contextlib
import json
import random
import re
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator

import httpx

from .. import _diagnose as dg
from .._appserver import Gunicorn
from .._proxy import Proxy
from .._recorder import Run, record
from .._servers import ThreadedASGIServer
from .._mock import MockLLM
from .._timescale import time_scale
from .._timeline import HopLog
from ._app import DrillApp, H11Server
from ._wsgi import PREFIX
from ._kinds import CAUSES, FIXES, KINDS, LAYERS, Kind, Setup

SCALE = 0.025
"""Wall-clock seconds per scenario second while a drill runs (a 75 s stall takes 1.9 s); a kind whose stack runs
a real gunicorn sets its own (``Setup.scale``: gunicorn's timers tick in whole wall-clock seconds)."""

COSTS = {"symptom": 0, "timeline": 5, "streaming_off": 5, "raw_sdk": 5, "concurrency": 10, "bypass": 10,
         "one_worker": 10, "logs": 10, "answer": 10}
"""Minutes each step adds to ``drill.clock`` (an answer costs its re-run, right or wrong)."""

USERS = (("alice", "What is the refund policy for annual plans"),
         ("bob", "Summarise yesterday's deployment incident for the on-call team"))


class DrillError(Exception):
    """A drill was used wrongly (unknown hop, fix or layer): a message for the trainee."""


@dataclass(frozen=True, kw_only=True)
class Result:
    """A scored answer: right layer (20 points), right cause (40), the fix healed the re-run (40)."""

    layer_ok: bool
    cause_ok: bool
    fixed: bool
    fix: str
    rerun: str
    clock: int

    @property
    def points(self) -> int:
        return 20 * self.layer_ok + 40 * self.cause_ok + 40 * self.fixed

    def __str__(self) -> str:
        mark = {True: "right", False: "wrong"}
        return (f"layer {mark[self.layer_ok]}, cause {mark[self.cause_ok]}, fix {self.fix!r} "
                f"{'healed' if self.fixed else 'did not heal'} the re-run ({self.rerun}); "
                f"{self.points} points at {self.clock} min on the clock")


def draw(*, seed: int | None = None, kinds: tuple[str, ...] | None = None) -> "Drill":
    """A drill whose cause is picked by ``seed`` among ``kinds`` (default: every kind); ``seed=None`` draws one."""
    return Drill(seed=random.SystemRandom().randrange(10**6) if seed is None else seed, kinds=kinds)


class Drill:
    """One incident: a stack (client -> edge -> app -> model) with one hidden cause picked by ``seed``.

        >>> drill = sl.drills.Drill(seed=7)
        >>> with drill.start():
        ...     drill.symptom()                # what the users saw
        ...     drill.timeline()               # a ladder step: prints what it found, costs minutes
        ...     result = drill.answer(layer="edge", cause="buffering", fix="x_accel_buffering_no")
        >>> drill.debrief()                    # the cause and the timeline plot (for after the answer)

    Steps work without ``start()`` too (each starts and stops its own stack).
    """

    def __init__(self, *, seed: int, kinds: tuple[str, ...] | None = None) -> None:
        names = tuple(kinds) if kinds else tuple(KINDS)
        unknown = [k for k in names if k not in KINDS]
        if unknown:
            raise DrillError(f"unknown drill kinds {unknown}; known: {', '.join(KINDS)}")
        import openai  # noqa: F401 - imported now, so the first symptom's timing does not include it

        self.seed = seed
        self._kind: Kind = KINDS[random.Random(seed).choice(sorted(names))]
        self.clock = 0
        self.steps: list[str] = []
        self.results: list[Result] = []
        self._live: _Stack | None = None

    def __repr__(self) -> str:
        return f"Drill(seed={self.seed}, clock={self.clock} min, steps={len(self.steps)})"

    # -- lifecycle ---------------------------------------------------------------------
    @contextlib.contextmanager
    def start(self) -> Iterator["Drill"]:
        """Servers up for the ``with`` block (every step reuses them); stopped after, whatever happened."""
        with _Stack(self._kind.setup) as stack:
            self._live = stack
            try:
                yield self
            finally:
                self._live = None

    @contextlib.contextmanager
    def _stack(self, setup: Setup | None = None) -> Iterator["_Stack"]:
        if setup is None and self._live is not None:
            self._live.settle()
            yield self._live
            return
        with _Stack(setup or self._kind.setup) as stack:
            yield stack

    def _tick(self, step: str) -> None:
        self.clock += COSTS[step]
        self.steps.append(step)

    def _say(self, step: str, lines: list[str]) -> None:
        print(f"[{step}, clock {self.clock} min]")
        for line in lines:
            print("  " + line)

    # -- what the users saw ----------------------------------------------------------
    def symptom(self) -> None:
        """The incident as reported: two users asked at once through the usual client; what each got."""
        with self._stack() as stack:
            runs = stack.users()
        self._symptom_runs = runs  # for tests: the incident must be a failure (``_healthy`` false)
        self._tick("symptom")
        self._say("symptom", [_user_line(name, run) for name, run in runs])

    # -- the ladder ------------------------------------------------------------------
    def timeline(self) -> None:
        """One streaming request through the whole stack, every read timestamped (diagnose's timeline probe)."""
        with self._stack() as stack:
            obs = stack.probe()
        self._tick("timeline")
        self._say("timeline", _obs_lines(obs, headers=True))

    def streaming_off(self) -> None:
        """The same request with stream=false through the whole stack."""
        with self._stack() as stack:
            obs = stack.probe(stream=False)
        self._tick("streaming_off")
        self._say("streaming_off", _obs_lines(obs))

    def concurrency(self, n: int = 1) -> None:
        """``n`` streaming requests at once (1: a single user alone), each one's timing."""
        if not 1 <= n <= 8:
            raise DrillError(f"concurrency n is 1 to 8, got {n}")
        with self._stack() as stack:
            runs = stack.users(n)
        self._tick("concurrency")
        self._say(f"concurrency {n}", [_user_line(name, run) for name, run in runs])

    def bypass(self, hop: str) -> None:
        """The same streaming request without ``hop``: "edge" (straight to the app) or "app" (straight to the model)."""
        if hop not in ("edge", "app"):
            raise DrillError(f"bypass 'edge' (talk to the app) or 'app' (talk to the model), got {hop!r}")
        with self._stack() as stack:
            obs = stack.probe(url=stack.app_url if hop == "edge" else stack.mock.url)
        self._tick("bypass")
        self._say(f"bypass {hop}", _obs_lines(obs, headers=True))

    def one_worker(self) -> None:
        """The app's deployment: how many workers, and two users through exactly one of them."""
        with self._stack() as stack:
            if stack.gunicorn is None:
                runs = stack.users(2, url=stack.app_url)
                head = "the app runs 1 worker process (an async server); two users straight to it:"
            else:
                with stack.served(workers=1) as one:
                    runs = stack.users(2, url=one.url, seen=one.requests)
                head = (f"the app runs gunicorn with {stack.setup.workers} worker processes ({stack.deployment}); "
                        "two users straight to the same app under 1 worker:")
        self._tick("one_worker")
        self._say("one_worker", [head] + [_user_line(name, run) for name, run in runs])

    def raw_sdk(self) -> None:
        """The openai SDK's own view of one streaming call through the stack: exception, finish_reason."""
        with self._stack() as stack:
            run = stack.user(*USERS[0], read_timeout=600.0)
        self._tick("raw_sdk")
        error = f"raised {type(run.error).__module__.split('.')[0]}.{type(run.error).__name__}: " \
                f"{str(run.error)[:120]}" if run.error else "no exception"
        self._say("raw_sdk", [f"{run.tokens} words, finish_reason {run.finish}, {error}"])

    def logs(self, hop: str) -> None:
        """What ``hop`` ("edge", "app" or "model") logged during one streaming request through the stack."""
        if hop not in ("edge", "app", "model"):
            raise DrillError(f"logs of 'edge', 'app' or 'model', got {hop!r}")
        with self._stack() as stack:
            stack.clear()
            since = time.perf_counter()
            stack.probe()
            lines = stack.hop_lines(hop, since=since)
        self._tick("logs")
        self._say(f"logs {hop}", lines or ["(nothing logged)"])

    # -- the answer ------------------------------------------------------------------
    def answer(self, *, layer: str, cause: str, fix: str) -> Result:
        """Check the diagnosis, apply ``fix`` (``FIXES``), re-run the incident and score it."""
        if layer not in LAYERS:
            raise DrillError(f"layer is one of {LAYERS}, got {layer!r}")
        if cause not in CAUSES:
            raise DrillError(f"cause is one of {CAUSES}, got {cause!r}")
        if fix not in FIXES:
            raise DrillError(f"fix is one of {sorted(FIXES)}, got {fix!r}")
        kind = self._kind
        setup = FIXES[fix][1](kind.setup)
        with self._stack(setup) as stack:
            runs = stack.users()
        healthy, why = _healthy(runs, setup)
        self._tick("answer")
        result = Result(layer_ok=layer in kind.layers, cause_ok=cause in kind.causes, fixed=healthy, fix=fix,
                        rerun=why, clock=self.clock)
        self.results.append(result)
        print(result)
        return result

    def debrief(self) -> Any:
        """The cause, the fixes that heal it, and the incident on the multi-hop timeline (a figure)."""
        from .._plots import plot_hops

        kind = self._kind
        print(f"cause: {kind.causes[0]} at the {kind.layers[0]} ({kind.name}): {kind.story}")
        print("fixes that heal it: " + "; ".join(f"{f} ({FIXES[f][0]})" for f in kind.fixes))
        with self._stack(kind.setup) as stack:
            stack.clear()
            t0 = time.perf_counter()
            name, run = stack.users(1)[0]
            entries = stack.mock.journal.chat()
            lanes = [("edge sent", stack.edge.log, "out"), stack.app_lane()]
            if entries:
                lanes.insert(0, ("model sent", entries[-1].log, "out"))
            return plot_hops(run, lanes, title=f"drill {self.seed}: {kind.name}", t0=t0)


# --------------------------------------------------------------------------- the stack


class _Stack:
    """Mock model, app, edge proxy, all on 127.0.0.1 under the setup's scale (``SCALE`` by default).

    The app is ``DrillApp`` under uvicorn in a thread, or (``Setup.server``) a real gunicorn
    subprocess serving ``_wsgi``'s relay (``_Served``).
    """

    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        self.scale = setup.scale or SCALE
        self.gunicorn: _Served | None = None
        self.app: DrillApp | None = None
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> "_Stack":
        s = self.setup
        try:
            self._stack.enter_context(time_scale(self.scale))
            self.mock = self._stack.enter_context(MockLLM(tokens=s.tokens, itl=s.itl, ttft=s.ttft, echo=True,
                                                          faults=s.model))
            _warm_sdk(self.mock.url)
            if s.server:
                self.gunicorn = self._stack.enter_context(self.served())
                self.app_url = self.gunicorn.url
            else:
                self.app = DrillApp(model_url=self.mock.url + "/v1", config=s.app)
                server = self._stack.enter_context(H11Server(self.app) if s.app_h11 else
                                                   ThreadedASGIServer(self.app, name="app"))
                self.app_url = server.url
            self.edge = self._stack.enter_context(Proxy(upstream=self.app_url, faults=s.edge, name="edge",
                                                        proxy_http_version=s.edge_http))
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def served(self, *, workers: int | None = None) -> "_Served":
        """The app under a real gunicorn with the setup's worker class and timeout (not started)."""
        s = self.setup
        return _Served(model_url=self.mock.url + "/v1", setup=s, workers=workers or s.workers, scale=self.scale)

    @property
    def deployment(self) -> str:
        s = self.setup
        return f"--worker-class {s.server}, --timeout {s.worker_timeout:g} s"

    def settle(self) -> None:
        """Before a step reuses the stack: gunicorn has replaced every worker it killed."""
        if self.gunicorn is not None:
            self.gunicorn.settle()

    def requests(self) -> int:
        """How many chat requests the app has taken so far."""
        return self.gunicorn.requests() if self.gunicorn is not None else self.app._ids

    def clear(self) -> None:
        self.edge.log.clear()
        if self.gunicorn is not None:
            self.gunicorn.clear()
        else:
            self.app.log.clear()
            self.app.hoplog.clear()

    def app_lane(self) -> tuple[str, HopLog, str]:
        if self.gunicorn is not None:
            return ("app (gunicorn's log)", self.gunicorn.hoplog(), "out")
        return ("app sent", self.app.hoplog, "out")

    def ladder(self, url: str | None = None, **body: Any) -> dg.Ladder:
        base = (url or self.edge.url) + "/v1"
        return dg.Ladder.for_url(base, scale=self.scale, max_silence=150.0, model_name="gpt-4o-mini",
                                 body={"messages": [{"role": "user", "content": USERS[0][1]}], **body})

    def probe(self, *, stream: bool = True, url: str | None = None) -> dg.Observation:
        lad = self.ladder(url)
        if stream:
            dg.timeline(lad)
            return lad.observations["timeline"]
        return dg.probe(lad, stream=False, label="streaming_off")

    def user(self, name: str, question: str, *, read_timeout: float | None = None, url: str | None = None) -> Run:
        import openai

        read = self.setup.client_read if read_timeout is None else read_timeout
        client = openai.OpenAI(base_url=(url or self.edge.url) + "/v1", api_key="unused", max_retries=0,
                               timeout=httpx.Timeout(connect=5.0, read=None if read is None else read * self.scale,
                                                     write=5.0, pool=5.0))
        try:
            return record(lambda: client.chat.completions.create(
                model="gpt-4o-mini", stream=True, user=name,
                messages=[{"role": "user", "content": question}]), label=name)
        finally:
            client.close()

    def users(self, n: int = 2, *, url: str | None = None,
              seen: Callable[[], int] | None = None) -> list[tuple[str, Run]]:
        people = [(USERS[i % 2][0] + ("" if i < 2 else str(i + 1)), USERS[i % 2][1]) for i in range(n)]
        out: list[Run | None] = [None] * n
        seen = seen or self.requests

        def one(i: int) -> None:
            out[i] = self.user(*people[i], url=url)

        threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
        for i, t in enumerate(threads):
            before = seen()
            t.start()
            deadline = time.perf_counter() + 1.0
            while seen() == before and time.perf_counter() < deadline:  # the next user once the app has
                time.sleep(0.001)                                        # this one's request: an overlap
        for t in threads:
            t.join(60)
        return [(people[i][0], run) for i, run in enumerate(out) if run is not None]

    def hop_lines(self, hop: str, *, since: float = 0.0) -> list[str]:
        if hop == "app":
            return self.gunicorn.lines() if self.gunicorn is not None else list(self.app.log)
        if hop == "model":
            lines = []
            for e in self.mock.journal.chat():
                if e.t_start < since:
                    continue
                e = e.wait_closed(2.0)
                lines.append(f"chat request: {e.tokens_sent}/{e.tokens_planned} tokens sent, finish_reason "
                             f"{e.finish_reason}, ended {e.ended}, status {e.status}")
            return lines
        t0 = min((e.t for e in self.edge.log.events), default=0.0)
        lines = []
        for e in self.edge.log.events:
            if e.kind in ("fault", "close", "error") or e.kind == "open":
                text = e.note.split(": ", 1)[1] if e.kind == "fault" and ": " in e.note else e.note
                note = f": {text}" if text else ""  # the fault's own name (a cause word) is not a log line
                lines.append(f"[{(e.t - t0) / self.scale:7.1f} s] conn {e.conn} {e.kind}{note}")
        return lines


class _Served:
    """The drill app under a real gunicorn subprocess (``streamlab.Gunicorn``), its log read as an operator would.

    ``--worker-class sync`` serves ``_wsgi.app`` (a sync client, one request at a time per worker);
    a uvicorn worker class serves ``_wsgi.asgi`` (``DrillApp``).
    """

    _DATE = re.compile(r"^\[\d{4}-\d\d-\d\d [\d:]+ [+-]\d{4}\] |\[\d\d/\w{3}/\d{4}:[\d:]+ [+-]\d{4}\] ")
    _HEADER = re.compile(r"\[INFO\] (Starting gunicorn|Using worker)")

    def __init__(self, *, model_url: str, setup: Setup, workers: int, scale: float) -> None:
        sync = setup.server == "sync"
        self.scale = scale
        self.server = Gunicorn("streamlab.drills._wsgi:" + ("app" if sync else "asgi"), worker_class=setup.server,
                               workers=workers, timeout=setup.worker_timeout, stop_grace=1.0,
                               env={"STREAMLAB_MODEL_URL": model_url,
                                    "STREAMLAB_DRILL_APP": json.dumps(asdict(setup.app))})
        self._since = 0.0

    def __enter__(self) -> "_Served":
        self.server.start()
        self._since = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()

    @property
    def url(self) -> str:
        return self.server.url

    def requests(self) -> int:
        return sum(1 for line in self.server.logs if line.text.startswith(PREFIX) and " user=" in line.text)

    def settle(self) -> None:
        if self.server.log_lines("WORKER TIMEOUT|Worker \\(pid:\\d+\\) was sent"):
            self.server.wait_workers(timeout=20)

    def clear(self) -> None:
        self._since = time.perf_counter()

    def lines(self) -> list[str]:
        """gunicorn's start-up header, then every line since ``clear()``, stamped in scenario seconds from then.

        Dates (gunicorn's own) are replaced by the stamp; a traceback is folded to its last frame and
        its exception; streamlab's own worker-hook lines are left out (no real gunicorn prints them).
        """
        self.settle()  # the replacement worker's boot line belongs to the request that killed its predecessor
        logs = self.server.logs
        out = [f"[  start] {self._DATE.sub('', line.text, count=1)}" for line in logs
               if line.t < self._since and self._HEADER.search(line.text)]
        trace: list[str] = []
        for line in (ln for ln in logs if ln.t >= self._since):
            text = line.text
            if text.startswith("streamlab.gunicorn "):
                continue
            stamp = f"[{(line.t - self._since) / self.scale:7.1f} s]"
            if text.startswith("Traceback ") or (trace and (text.startswith(" ") or text.startswith("^"))):
                trace.append(text)
                continue
            if trace:
                frames = [t.strip() for t in trace if t.strip().startswith("File ")]
                last = frames[-1] if frames else ""
                last = re.sub(r'"[^"]*site-packages/', '"', last)
                code = next((t.strip() for t in reversed(trace) if t.strip().strip("^~")), "")
                code = "" if code.startswith("File ") else code
                out.append(f"{stamp} Traceback (most recent call last): {len(frames)} frames, the last {last}: "
                           f"{code}")
                trace = []
            text = text[len(PREFIX):] if text.startswith(PREFIX) else text
            out.append(f"{stamp} {self._DATE.sub('', text, count=1)}")
        return out

    def hoplog(self) -> HopLog:
        """The lane of the debrief's figure: the moments gunicorn's arbiter killed a worker."""
        log = HopLog("app")
        for line in self.server.logs:
            if line.t >= self._since and "WORKER TIMEOUT" in line.text:
                log.add("fault", note="WORKER TIMEOUT", t=line.t)
        return log


_warmed = threading.Event()


def _warm_sdk(model_url: str) -> None:
    """One openai SDK call per process before the users' (its first call spends ~1 s of wall clock in lazy
    set-up, 40 scenario seconds: the users' requests would start far apart and in any order)."""
    if _warmed.is_set():
        return
    import openai

    with openai.OpenAI(base_url=model_url + "/v1", api_key="unused", max_retries=0) as client:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "warm up"}],
                                       max_tokens=1)
    _warmed.set()


# --------------------------------------------------------------------------- what is printed


def _user_line(name: str, run: Run) -> str:
    words = run.text.split()
    shown = " ".join(words[:8]) + (" ..." if len(words) > 8 else "")
    first = f"first word after {run.ttft:.1f} s" if run.ttft is not None else "no word"
    total = _total(run)
    end = (f"then {type(run.error).__module__.split('.')[0]}.{type(run.error).__name__}: {str(run.error)[:90]}"
           if run.error else "then the answer stopped")
    return f"{name}: {len(words)} words, {first}, {total:.1f} s in all, {end} | {shown!r}"


def _obs_lines(obs: dg.Observation, *, headers: bool = False) -> list[str]:
    s = obs.summary()
    lines = [f"HTTP {obs.status}, ended {obs.ended} after {obs.elapsed:.1f} s"
             + (f" ({obs.error[:100]})" if obs.error else "")]
    if obs.stream:
        gaps = obs.gaps
        lines.append(f"first byte {_f(s['ttfb'])}, first token {_f(s['ttft'])}, {len(obs.reads)} reads, "
                     f"{len(obs.events)} events, {obs.tokens} tokens, longest gap {_f(max(gaps) if gaps else None)}, "
                     f"silence before the end {obs.silence_before_end:.1f} s")
        lines.append(f"finish_reason {obs.finish_reason}, [DONE] {'yes' if obs.done else 'no'}"
                     + (f", error event {obs.error_event[:80]}" if obs.error_event else ""))
    else:
        lines.append(f"{obs.tokens} words, finish_reason {obs.finish_reason}"
                     + ("" if obs.status == 200 else f", body {obs.body[:120].decode('utf-8', 'replace')!r}"))
    if headers:
        keep = ("content-type", "content-encoding", "transfer-encoding", "content-length", "x-accel-buffering",
                "server", "via")
        shown = {k: v for k, v in obs.headers.items() if k in keep}
        lines.append("headers: " + (", ".join(f"{k}: {v}" for k, v in shown.items()) or "(none of interest)"))
    return lines


def _total(run: Run) -> float:
    """Scenario seconds from the request's first send (else from the call) to the end of the read."""
    if not run.t_end:
        return 0.0
    return (run.t_end - (run.t_start or run.t_call)) / run.scale


def _f(x: float | None) -> str:
    return "never" if x is None else f"{x:.1f} s"


def _healthy(runs: list[tuple[str, Run]], setup: Setup) -> tuple[bool, str]:
    """Every user got their own complete answer as it was written, or (``silent_ok``) was told it was not."""
    for name, run in runs:
        own = dict(USERS)[name].split()[0]
        if run.error is not None:
            if setup.silent_ok and "finish_reason" in str(run.error):
                continue
            return False, f"{name}: {type(run.error).__name__}"
        if run.finish != "stop" or run.tokens < setup.tokens:
            return False, f"{name}: {run.tokens}/{setup.tokens} words, finish_reason {run.finish}"
        if own not in run.text:
            return False, f"{name} got another user's answer"
        spread = (run.content_arrivals[-1] - run.content_arrivals[0]) / run.scale if run.content_arrivals else 0.0
        natural = (setup.tokens - 1) * setup.itl
        if spread < 0.5 * natural:  # held back: the words came in a burst, not as they were written
            return False, f"{name}: {setup.tokens} words within {spread:.1f} s (written over {natural:.0f} s)"
    firsts = [run.content_arrivals[0] for _, run in runs if run.content_arrivals]
    lasts = [run.content_arrivals[-1] for _, run in runs if run.error is None]
    if len(firsts) > 1 and lasts and max(firsts) > min(lasts):  # one stream at a time: nobody overlapped
        return False, "one user's first word came after another user's last: the streams did not overlap"
    return True, "every user got a complete answer as it was written" if not setup.silent_ok else \
        "every user got a complete answer or was told it was incomplete"


def seed_for(kind: str, *, kinds: tuple[str, ...] | None = None) -> int:
    """The smallest seed whose drill (among ``kinds``, default all) is ``kind``: a facilitator's seed table."""
    if kind not in KINDS:
        raise DrillError(f"unknown drill kind {kind!r}; known: {', '.join(KINDS)}")
    if kinds and kind not in kinds:
        raise DrillError(f"{kind!r} is not among {kinds}")
    seed = 0
    while Drill(seed=seed, kinds=kinds)._kind.name != kind:
        seed += 1
    return seed


def score_table(rows: list[tuple[str, "Drill"]]) -> Any:
    """A Markdown table (team, drill seed, steps, clock, points of the best answer) for a room's drills."""
    from IPython.display import Markdown

    lines = ["| team | seed | steps | clock (min) | points |", "|---|---|---|---|---|"]
    for team, drill in rows:
        best = max((r.points for r in drill.results), default=0)
        lines.append(f"| {team} | {drill.seed} | {', '.join(drill.steps)} | {drill.clock} | {best} |")
    return Markdown("\n".join(lines))
