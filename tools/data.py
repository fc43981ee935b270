#!/usr/bin/env python3
"""Regenerate the workbook's data files (``data/*.csv``) from the code that produces them.

    .venv/bin/python tools/data.py list                    # the files and what each one is
    .venv/bin/python tools/data.py regen                   # every file it makes (about 55 s; nginx needed for one)
    .venv/bin/python tools/data.py regen fault_outcomes    # one file
    .venv/bin/python tools/data.py regen fix_matrix        # the fault x fix matrix (streamlab.fixes._matrix, ~2.5 min)

Nothing in ``data/`` is edited by hand. Two kinds of file:

* extracted from the sources: ``prompts`` (every prompt and task text the notebooks and the
  demo apps send), ``answers`` (the mock model's seeded answers), ``words`` (its vocabulary);
* measured: ``fault_outcomes`` (every model fault against the raw openai SDK and raw httpx)
  and ``nginx_conformance`` (every proxy scenario of tests/test_nginx_conformance.py through
  real nginx and through the embedded proxy). Measured files hold outcomes, counts and
  exception classes, never times, so a rerun on any machine gives the same file.

Each builder takes ``only=`` (the row keys to build), which ``tests/test_data.py`` uses to
regenerate a fast slice and compare it with the stored file.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import csv
import io
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"


@dataclass(frozen=True)
class Dataset:
    name: str
    key: tuple[str, ...]          # the columns that name a row (what ``only=`` selects on)
    header: tuple[str, ...]
    build: Callable[..., list[tuple]]
    what: str

    @property
    def path(self) -> Path:
        return DATA / f"{self.name}.csv"


# -- extracted from the sources ------------------------------------------------------------------

PROMPT_NAMES = {"PROMPT", "MESSAGES", "ALICE", "BOB", "QUESTION", "TASK"}
PROMPT_KEYWORDS = {"task", "description", "expected_output", "prompt", "q"}
PROMPT_SOURCES = ("notebooks/src/*.py", "streamlab/apps/*.py", "streamlab/frameworks/*.py")


def _strings(node: ast.AST) -> Iterable[str]:
    """String constants in a prompt-like value: a literal, an f-string's literal parts, a message list."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        yield node.value
    elif isinstance(node, ast.JoinedStr):
        yield "".join(v.value if isinstance(v, ast.Constant) else "{...}" for v in node.values)
    elif isinstance(node, (ast.List, ast.Tuple)):
        for item in node.elts:
            yield from _strings(item)
    elif isinstance(node, ast.Dict):
        for k, v in zip(node.keys, node.values):
            if isinstance(k, ast.Constant) and k.value == "content":
                yield from _strings(v)


def build_prompts(only: Iterable[tuple] | None = None) -> list[tuple]:
    """(file, name, text) for every prompt constant and prompt-like keyword argument."""
    rows: dict[tuple, None] = {}
    for pattern in PROMPT_SOURCES:
        for path in sorted(ROOT.glob(pattern)):
            rel = path.relative_to(ROOT).as_posix()
            for node in ast.walk(ast.parse(path.read_text())):
                found: list[tuple[str, ast.AST]] = []
                if isinstance(node, ast.Assign):
                    found = [(t.id, node.value) for t in node.targets
                             if isinstance(t, ast.Name) and t.id in PROMPT_NAMES]
                elif isinstance(node, ast.Call):
                    found = [(k.arg, k.value) for k in node.keywords if k.arg in PROMPT_KEYWORDS]
                elif isinstance(node, ast.arguments):  # def handler(q: str = PROMPT) is a reference, not a text
                    continue
                for name, value in found:
                    for text in _strings(value):
                        if len(text.split()) >= 2:  # a prompt, not an id or a flag
                            rows[(rel, name, text)] = None
    out = list(rows)
    return [r for r in out if only is None or r[:2] in set(only)]


def build_answers(only: Iterable[tuple] | None = None) -> list[tuple]:
    """(seed, tokens, text): the first 40 tokens the mock streams for each seed the workbook uses."""
    from streamlab._text import generate

    seeds = [(str(s),) for s in range(5)]
    wanted = set(only) if only is not None else set(seeds)
    return [(s, "40", "".join(generate(40, int(s)))) for (s,) in seeds if (s,) in wanted]


def build_words(only: Iterable[tuple] | None = None) -> list[tuple]:
    """(index, word): the mock's vocabulary; one token is one of these words."""
    from streamlab import _text

    rows = [(str(i), w) for i, w in enumerate(_text._WORDS)]
    return [r for r in rows if only is None or r[:1] in set(only)]


# -- measured ------------------------------------------------------------------------------------

FAULT_SETTINGS = dict(tokens=40, ttft=0.5, itl=0.05)  # scenario seconds, as in 00_start_here section 4
READ_TIMEOUT = 3.0                                     # scenario seconds, both clients
FAULT_SCALE = 0.1
CLIENTS = ("openai SDK", "raw httpx")


def fault_examples() -> list:
    """One instance of every registered model fault, fired at token 12 where it takes an index."""
    from streamlab import faults

    return faults.examples(at=12)


def build_fault_outcomes(only: Iterable[tuple] | None = None) -> list[tuple]:
    """(fault, client, outcome, tokens, expected, finish_reason, error_class, http_status) per fault and client."""
    import httpx
    import openai

    import streamlab as sl

    wanted = set(only) if only is not None else None
    rows = []
    with sl.time_scale(FAULT_SCALE), sl.MockLLM(**FAULT_SETTINGS) as mock:
        body = {"model": "streamlab-mock", "stream": True,
                "messages": [{"role": "user", "content": "Summarize this 20-page insurance claim."}]}
        for fault in fault_examples():
            spec = fault.spec()
            url = mock.base_url_for(fault)
            for client_name in CLIENTS:
                if wanted is not None and (spec, client_name) not in wanted:
                    continue
                if client_name == "openai SDK":
                    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0,
                                           timeout=httpx.Timeout(sl._timescale.to_real(READ_TIMEOUT)))
                    try:
                        run = sl.record(lambda: client.chat.completions.create(**body),
                                        expected=FAULT_SETTINGS["tokens"])
                    finally:
                        client.close()
                else:
                    run = sl.record(lambda: sl.sse_events(url + "/chat/completions", body=body, timeout=READ_TIMEOUT),
                                    expected=FAULT_SETTINGS["tokens"])
                rows.append((spec, client_name, str(run.outcome), str(run.tokens), str(run.expected),
                             run.finish or "", run.error_class or "", str(run.status or "")))
    return rows


@contextlib.contextmanager
def _logging_restored():
    import logging

    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def build_nginx_conformance(only: Iterable[tuple] | None = None) -> list[tuple]:
    """(scenario, engine, outcome, events, headers_held, events_held) through real nginx and the embedded proxy."""
    import logging

    sys.path.insert(0, str(ROOT / "tests"))
    try:
        import test_nginx_conformance as conf
    finally:
        sys.path.remove(str(ROOT / "tests"))
    from streamlab._nginx import NginxProxy, nginx_available, nginx_version
    from streamlab._proxy import Proxy
    from streamlab._timescale import time_scale

    if not nginx_available():
        raise SystemExit("nginx_conformance needs real nginx (apt-get install nginx-light)")
    wanted = {k[0] for k in only} if only is not None else None
    engines = ((f"nginx {nginx_version()}", NginxProxy), ("embedded proxy", Proxy))
    rows = []
    logging.disable(logging.ERROR)  # the "upstream crashes" scenarios crash their upstream on purpose
    with time_scale(conf.SCALE), _logging_restored():
        for scenario in conf.SCENARIOS:
            if wanted is not None and scenario.name not in wanted:
                continue
            with conf.upstream_for(scenario) as url:
                for engine, cls in engines:
                    seen = conf.run(cls, scenario, url)
                    events = "" if seen.events is None else str(seen.events)
                    rows.append((scenario.name, engine, seen.outcome, events, str(seen.head_held).lower(),
                                 str(seen.events_held).lower()))
    return rows


DATASETS = {d.name: d for d in [
    Dataset("prompts", ("file", "name"), ("file", "name", "text"), build_prompts,
            "every prompt and task text the notebooks and the demo apps send (extracted from the sources)"),
    Dataset("answers", ("seed",), ("seed", "tokens", "text"), build_answers,
            "the mock model's answer, first 40 tokens, for seeds 0-4 (the seeds the workbook uses)"),
    Dataset("words", ("index",), ("index", "word"), build_words,
            "the mock's vocabulary: a token is one of these words (streamlab/_text.py)"),
    Dataset("fault_outcomes", ("fault", "client"),
            ("fault", "client", "outcome", "tokens", "expected", "finish_reason", "error_class", "http_status"),
            build_fault_outcomes,
            "every model fault (streamlab.faults.REGISTRY) against the raw openai SDK and raw httpx "
            "(sl.sse_events): 40 tokens, faults at token 12, read timeout 3 s, no retries"),
    Dataset("nginx_conformance", ("scenario", "engine"),
            ("scenario", "engine", "outcome", "events", "headers_held", "events_held"), build_nginx_conformance,
            "every proxy scenario of tests/test_nginx_conformance.py through real nginx and the embedded proxy"),
]}


# Data files another module writes (and its own test checks): regenerated by name only, they take minutes.
EXTERNAL = {
    "fix_matrix": (("-m", "streamlab.fixes._matrix"),
                   "every fault x fix x client (openai SDK, LangChain, LangGraph, AutoGen, CrewAI, httpx), each "
                   "cell a real run (streamlab/fixes/_matrix.py; checked by tests/test_fix_matrix.py; versions "
                   "in fix_matrix.versions.json; 267 cells, about 2.5 min)"),
}


def to_csv(header: tuple, rows: list[tuple]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def read(name: str) -> list[dict[str, str]]:
    """The stored rows of ``data/<name>.csv`` as dicts."""
    with DATASETS[name].path.open(newline="") as f:
        return list(csv.DictReader(f))


def regen(names: list[str]) -> int:
    import subprocess

    DATA.mkdir(exist_ok=True)
    for name in names or list(DATASETS):
        if name in EXTERNAL:
            started = time.monotonic()
            subprocess.run([sys.executable, *EXTERNAL[name][0]], cwd=ROOT, check=True)
            print(f"wrote data/{name}.csv in {time.monotonic() - started:.1f} s")
            continue
        if name not in DATASETS:
            print(f"unknown data file {name!r}; one of: {', '.join([*DATASETS, *EXTERNAL])}", file=sys.stderr)
            return 2
        dataset = DATASETS[name]
        started = time.monotonic()
        rows = dataset.build()
        dataset.path.write_text(to_csv(dataset.header, rows))
        print(f"wrote {dataset.path.relative_to(ROOT)}: {len(rows)} rows in {time.monotonic() - started:.1f} s")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("regen", help="rebuild data/<name>.csv (all when no name is given)")
    r.add_argument("names", nargs="*", metavar="NAME")
    sub.add_parser("list", help="the data files and what each one is")
    args = parser.parse_args()
    if args.cmd == "list":
        for d in DATASETS.values():
            print(f"data/{d.name}.csv  {d.what}")
        for name, (_, what) in EXTERNAL.items():
            print(f"data/{name}.csv  {what} (regen {name}: not part of a plain regen)")
        return 0
    return regen(args.names)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
