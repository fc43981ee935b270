"""Playground, CLI, offline guard, time scale and version checks."""

import os
import subprocess
import sys
import time

import httpx
import pytest

import streamlab as sl


def test_run_scenario_headless_gives_the_same_outcome_as_the_fault():
    result = sl.run_scenario(tokens=20, ttft=0.0, itl=0.001, fault="cut", at=6, plot=False)
    assert result.run.outcome is sl.Outcome.CUT_MID_STREAM and result.run.tokens == 6
    assert result.sent.ended == "cut"
    assert sl.run_scenario(tokens=10, itl=0.0, fault="none", plot=False).run.outcome is sl.Outcome.COMPLETE
    with pytest.raises(ValueError):
        sl.run_scenario(fault="context", value=None, plot=False)


def test_playground_builds_its_dropdown_from_the_registry():
    panel = sl.playground()
    dropdowns = [w for w in panel.children[0].children[1].children if hasattr(w, "options")]
    assert list(dropdowns[0].options) == ["none"] + sl.faults.names()


def test_cli_mock_serves_and_rejects_bad_specs():
    bad = subprocess.run([sys.executable, "-m", "streamlab", "mock", "--fault", "nosuch@1"],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "unknown fault" in bad.stderr
    port = sl._servers.free_port()
    proc = subprocess.Popen([sys.executable, "-m", "streamlab", "mock", "--port", str(port), "--tokens", "7",
                             "--fault", "cut@3"], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert f"127.0.0.1:{port}/v1" in line
        with pytest.raises(httpx.RemoteProtocolError):
            with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/chat/completions",
                              json=sl.chat_request()) as response:
                for _ in response.iter_lines():
                    pass
    finally:
        proc.terminate()
        proc.wait(10)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz")


def test_time_scale_scope_and_env():
    before = sl.current_time_scale()
    with sl.time_scale(0.5):
        assert sl.current_time_scale() == 0.5 and os.environ["STREAMLAB_TIME_SCALE"] == "0.5"
    assert sl.current_time_scale() == before
    with pytest.raises(ValueError):
        sl.time_scale(0)


def test_require_names_the_mismatch():
    assert "openai" in sl.require(openai=__import__("importlib.metadata").metadata.version("openai"))
    with pytest.raises(sl.VersionMismatch, match="expected 0.0.1"):
        sl.require(httpx="0.0.1")


def test_mock_inside_a_running_event_loop():
    import asyncio

    async def main():
        with sl.MockLLM(tokens=3) as mock:  # started from a coroutine, like a Jupyter cell
            async with httpx.AsyncClient() as client:
                r = await client.post(mock.base_url + "/chat/completions", json=sl.chat_request(stream=False))
                return r.json()["choices"][0]["finish_reason"]

    t = time.perf_counter()
    assert asyncio.run(main()) == "stop"
    assert time.perf_counter() - t < 5


def test_sdk_backoff_runs_on_the_scenario_clock_and_can_be_undone():
    import openai
    from openai._base_client import BaseClient

    client = openai.OpenAI(base_url="http://127.0.0.1:9/v1", api_key="unused")
    options = openai._models.FinalRequestOptions(method="post", url="/x")
    was_on = sl._timescale._sdk_original_backoff is not None  # another test may have switched it on
    sl.scale_sdk_backoff(False)
    original = BaseClient._calculate_retry_timeout
    wall = [client._calculate_retry_timeout(1, options, None) for _ in range(20)]
    try:
        with sl.time_scale(0.01):
            sl.scale_sdk_backoff()
            sl.scale_sdk_backoff()  # idempotent
            scaled = [client._calculate_retry_timeout(1, options, None) for _ in range(20)]
        assert max(scaled) < 0.02 < 0.25 < min(wall)  # jittered 0.75-1.0 s, scaled by 0.01
    finally:
        sl.scale_sdk_backoff(False)
        client.close()
    assert BaseClient._calculate_retry_timeout is original
    if was_on:
        sl.scale_sdk_backoff()
