"""Faults of your own (issue 11): a model fault and a hop fault written with public names only.

The model fault is the README's recipe (``SplitChunk``, the same code); it must work from a spec
string over a real socket (path prefix and header), from ``mock.script``/``mock.inject``, in
``faults.validate`` and the CLI's ``--fault``. The hop fault (``HoldHead``) uses ``streamlab.hops``'
public ``Fault``/``register``/``Head`` and goes through ``sl.Proxy`` as an object and as a spec string.

A hop fault or a model fault parses from a spec whether the module that defines it uses
``from __future__ import annotations`` or real types (a notebook cell, the README).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import httpx
import openai
import pytest

import streamlab as sl
from streamlab import faults, hops

ROOT = Path(__file__).resolve().parents[1]
MSG = [{"role": "user", "content": "hi"}]


# -- the README's recipe, word for word (registered by the fixture below, not at import: collection
# -- imports every test module first, and other modules' tests must not see these names) ------------
@dataclass(frozen=True, kw_only=True)
class SplitChunk(faults.Fault):
    """Chunk ``at`` leaves in two writes ``gap`` scenario seconds apart (an SSE event split across reads)."""

    at: int
    gap: float = 0.5
    name: ClassVar[str] = "split"
    index_arg: ClassVar[str] = "at"
    value_arg: ClassVar[str] = "gap"

    async def act(self, event: faults.Event, ex: faults.FaultContext) -> faults.Event | None:
        if event.kind == "token" and event.index == self.at and ex.stream:
            half = len(event.data) // 2
            await ex.write(event.data[:half])
            await asyncio.sleep(faults.to_real(self.gap))
            return event.replace(data=event.data[half:])
        return event
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class HoldHead(hops.Fault):
    """Hold the upstream's response head for ``seconds`` (scenario seconds), like a WAF inspecting it."""

    seconds: float = 1.0
    name: ClassVar[str] = "hold_head"
    setting: ClassVar[str] = "a WAF's response inspection"
    value_arg: ClassVar[str] = "seconds"

    async def pipe(self, items, ex):
        async for item in items:
            if type(item) is hops.Head:
                ex.note("fault", f"hold_head={self.seconds}")
                await asyncio.sleep(faults.to_real(self.seconds))
            yield item


@pytest.fixture(scope="module", autouse=True)
def our_faults_registered():
    """``@faults.register`` / ``@hops.register`` as the recipe writes them, for this module only."""
    faults.register(SplitChunk)
    hops.register(HoldHead)
    yield
    faults.REGISTRY.pop("split", None)
    hops.REGISTRY.pop("hold_head", None)


def reads_of(url: str, headers: dict | None = None) -> list[tuple[float, bytes]]:
    out = []
    with httpx.Client(timeout=10) as client, client.stream(
            "POST", url + "/chat/completions", headers=headers or {},
            json={"model": "m", "messages": MSG, "stream": True}) as response:
        t0 = time.perf_counter()
        for piece in response.iter_raw():
            out.append((time.perf_counter() - t0, piece))
    return out


def test_user_model_fault_works_from_a_spec_string_over_a_real_socket():
    assert "split" in faults.names()
    assert faults.parse("split@3=0.2") == ([SplitChunk(at=3, gap=0.2)], {})
    assert faults.validate("split", 0.2, at=3) == ([SplitChunk(at=3, gap=0.2)], {})
    assert SplitChunk(at=3, gap=0.2).spec() == "split@3=0.2"
    with pytest.raises(faults.SpecError):
        faults.parse("split@3=nan")
    with pytest.raises(faults.SpecError):
        SplitChunk(at=-1)
    with sl.MockLLM(tokens=8) as mock:
        pieces = reads_of(f"{mock.url}/s/split@3=0.2/v1")
        gaps = [b[0] - a[0] for a, b in zip(pieces, pieces[1:])]
        assert max(gaps) >= 0.18  # the split chunk's second half came 0.2 s later ...
        halves = [p for _, p in pieces if not p.endswith(b"\n\n")]
        assert len(halves) == 1 and not halves[0].startswith(b"data: [DONE]")  # ... in its own read
        client = openai.OpenAI(base_url=f"{mock.url}/s/split@3=0.2/v1", api_key="unused", max_retries=0)
        run = sl.record(lambda: client.chat.completions.create(model="m", messages=MSG, stream=True), expected=8)
        assert run.outcome is sl.Outcome.COMPLETE and run.tokens == 8  # the SDK reassembles the event
        assert mock.journal.last.faults == ["split@3=0.2"]
        headers = mock.headers_for(SplitChunk(at=1, gap=0.2))
        assert headers == {"x-streamlab": "split@1=0.2"}
        pieces = reads_of(mock.base_url, headers)
        assert max(b[0] - a[0] for a, b in zip(pieces, pieces[1:])) >= 0.18
        with mock.script(SplitChunk(at=2, gap=0.2), "split@0=0.2"), mock.inject(SplitChunk(at=5, gap=0.0)):
            reads_of(mock.base_url)
            reads_of(mock.base_url)
        assert [e.faults for e in mock.journal.chat()[-2:]] == [["split@5=0", "split@2=0.2"],
                                                                ["split@5=0", "split@0=0.2"]]


def test_register_refuses_bad_or_taken_names():
    for bad_name in ("cut", "tokens", "accel", "has space", ""):
        cls = dataclass(frozen=True, kw_only=True)(type("Bad", (faults.Fault,), {"name": bad_name,
                                                                                "__annotations__": {}}))
        with pytest.raises(faults.SpecError):
            faults.register(cls)
    with pytest.raises(faults.SpecError):
        faults.register(int)
    again = faults.register(SplitChunk)  # the same class again (a notebook cell run twice) is fine
    assert again is SplitChunk and faults.REGISTRY["split"] is SplitChunk


CLI = ("import sys; sys.path.insert(0, 'tests'); import test_custom_faults as t; from streamlab import _cli; "
       "t.faults.register(t.SplitChunk); sys.exit(_cli.main(['mock', '--tokens', '4', '--fault', sys.argv[1]]))")


def test_user_model_fault_from_the_cli_fault_flag():
    proc = subprocess.Popen([sys.executable, "-c", CLI, "split@1=0.3"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline().split("127.0.0.1:")[1].split("/")[0])
        pieces = reads_of(f"http://127.0.0.1:{port}/v1")
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stdout.close()
    assert max(b[0] - a[0] for a, b in zip(pieces, pieces[1:])) >= 0.28
    bad = subprocess.run([sys.executable, "-c", CLI, "split@x"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "token index" in bad.stderr and "Traceback" not in bad.stderr


def test_user_hop_fault_through_proxy_as_object_and_spec_string():
    assert "hold_head" in hops.names()
    assert hops.from_spec("hold_head=0.3") == HoldHead(seconds=0.3)
    with sl.MockLLM(tokens=3) as mock:
        for chain in ([HoldHead(seconds=0.3)], ["hold_head=0.3"]):
            with sl.Proxy(upstream=mock.url, faults=chain) as proxy:
                t0 = time.perf_counter()
                r = httpx.post(proxy.url + "/v1/chat/completions", json={"model": "m", "messages": MSG}, timeout=10)
                took = time.perf_counter() - t0
            assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] == "stop"
            assert took >= 0.28
        with sl.Proxy(upstream=mock.url) as proxy:
            with proxy.inject(HoldHead(seconds=0.3)):
                t0 = time.perf_counter()
                httpx.post(proxy.url + "/v1/chat/completions", json={"model": "m", "messages": MSG}, timeout=10)
                assert time.perf_counter() - t0 >= 0.28
            t0 = time.perf_counter()
            httpx.post(proxy.url + "/v1/chat/completions", json={"model": "m", "messages": MSG}, timeout=10)
            assert time.perf_counter() - t0 < 0.28


def without_future(source: str):
    """Compile ``source`` as a reader's own module would be: without this file's future import."""
    return compile(source, "<a reader's module>", "exec", dont_inherit=True)


def test_hop_fault_defined_without_future_annotations_parses_from_a_spec():
    namespace: dict = {}
    exec(without_future("from dataclasses import dataclass\nfrom typing import ClassVar\nfrom streamlab import hops\n"
         "@dataclass(frozen=True, kw_only=True)\nclass Hold2(hops.Fault):\n    seconds: float = 1.0\n"
         "    name: ClassVar[str] = 'hold_head_real_types'\n    value_arg: ClassVar[str] = 'seconds'\n"), namespace)
    hops.register(namespace["Hold2"])
    try:
        assert hops.from_spec("hold_head_real_types=0.3").seconds == 0.3
    finally:
        hops.REGISTRY.pop("hold_head_real_types", None)


def test_readme_recipe_runs_without_future_annotations():
    """The README block runs in a kernel without the future import: the model fault's checks still apply."""
    namespace: dict = {}
    exec(without_future("import asyncio\nfrom dataclasses import dataclass\nfrom typing import ClassVar\n"
         "from streamlab import faults\n"
         "@dataclass(frozen=True, kw_only=True)\nclass Split2(faults.Fault):\n    at: int\n    gap: float = 0.5\n"
         "    name: ClassVar[str] = 'split_real_types'\n    index_arg: ClassVar[str] = 'at'\n"
         "    value_arg: ClassVar[str] = 'gap'\n"), namespace)
    faults.register(namespace["Split2"])
    try:
        assert faults.parse("split_real_types@2=0.1")[0][0].gap == 0.1
        with pytest.raises(faults.SpecError):
            faults.parse("split_real_types@2=inf")
    finally:
        faults.REGISTRY.pop("split_real_types", None)
