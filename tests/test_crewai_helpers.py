"""The CrewAI helpers of notebooks/03_crewai (streamlab.frameworks.crewai): what they count is what the
real CrewAI did against the mock, and the network watch refuses what would leave loopback."""

import asyncio
import socket

import httpx
import pytest

import streamlab as sl
from streamlab.faults import Cut
from streamlab.frameworks import crewai as slc

sl.offline()  # before crewai is imported (it reads the telemetry switches at import)
crewai = pytest.importorskip("crewai")


def small_crew(base_url, *, stream=False, max_tokens=None, crew_stream=False):
    llm = crewai.LLM(model="gpt-4o-mini", base_url=base_url, api_key="unused", stream=stream, max_tokens=max_tokens)
    agent = crewai.Agent(role="Analyst", goal="Report", backstory="An analyst.", llm=llm)
    task = crewai.Task(description="Write the report.", expected_output="A report.", agent=agent)
    return crewai.Crew(agents=[agent], tasks=[task], stream=crew_stream)


def test_network_watch_counts_lookups_and_connections_that_would_leave_loopback():
    before = socket.getaddrinfo
    watch = slc.NetworkWatch().install()
    try:
        with pytest.raises(sl.NetworkBlocked):
            socket.getaddrinfo("telemetry.crewai.com", 4319)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock, pytest.raises(sl.NetworkBlocked):
            sock.connect(("203.0.113.7", 443))   # TEST-NET-3: refused before any packet, and counted
        assert socket.getaddrinfo("localhost", 80)
        assert [(kind, target) for kind, target, _ in watch.attempts] == [("dns", "telemetry.crewai.com"),
                                                                          ("connect", "203.0.113.7")]
    finally:
        watch.uninstall()
    assert socket.getaddrinfo is before


def test_observe_counts_the_requests_and_retries_of_a_cut_crew():
    with sl.MockLLM(tokens=30) as mock:
        with mock.inject(Cut(at=10)), slc.observe(mock) as seen:
            with pytest.raises(httpx.RemoteProtocolError):
                small_crew(mock.base_url, stream=True).kickoff()
        # the SDK cannot retry a broken stream; the agent retries twice (max_retry_limit=2)
        assert len(seen.requests) == 3
        assert len(seen.agent_errors) == 3
        assert all(call.error and call.stream for call in seen.llm_calls)
        assert seen.finish_reasons == []

        with slc.observe(mock) as seen:
            result = small_crew(mock.base_url, max_tokens=12).kickoff()
        assert slc.words(result.raw) == 12
        assert seen.finish_reasons == ["length"]
        assert seen.llm_calls[0].usage["completion_tokens"] == 12
        assert seen.request_bytes[0] > 0


def test_understand_reads_a_crew_stream_and_its_result():
    with sl.MockLLM(tokens=20) as mock:
        streaming = small_crew(mock.base_url, crew_stream=True).kickoff()
        run = sl.record(slc.with_result(streaming), understand=slc.understand, expected=20)
    assert run.outcome is sl.Outcome.COMPLETE
    assert run.tokens == 20 and run.chunks == 20
    assert run.text == streaming.result.raw


def test_report_lists_requests_and_finish_reasons():
    with sl.MockLLM(tokens=5) as mock:
        with slc.observe(mock) as seen:
            run = sl.record(lambda: small_crew(mock.base_url).kickoff(), expected=5, label="crew")
    table = slc.report([("crew", run, seen)]).splitlines()
    assert table[0].split()[:6] == ["run", "outcome", "tokens", "error", "requests", "finish"]
    assert table[1].split()[:6] == ["crew", "complete", "5/5", "-", "1", "stop"]


def test_backoff_in_scenario_time_scales_the_sdk_backoff_only():
    import openai
    from openai._models import FinalRequestOptions

    client = openai.OpenAI(base_url="http://127.0.0.1:9/v1", api_key="unused")
    options = FinalRequestOptions.construct(method="post", url="/chat/completions")
    slc.backoff_in_scenario_time()
    try:
        with sl.time_scale(0.01):
            assert client._calculate_retry_timeout(2, options, None) <= 0.5 * 0.01
            # a server's Retry-After is honoured as sent
            assert client._calculate_retry_timeout(2, options, httpx.Headers({"retry-after-ms": "300"})) == 0.3
    finally:
        slc._restore_backoff()
    assert client._calculate_retry_timeout(2, options, None) >= 0.375


def test_plot_counts_tokens_not_chunks_when_an_answer_arrives_in_one_piece():
    run = sl.record(lambda: "one two three four", expected=4)     # a crew's result: one value, four tokens
    figure = sl.plot_runs(run)
    step = figure.axes[0].lines[0]
    assert list(step.get_ydata()) == [0, 4]
    figure.clf()


def test_serve_runs_an_asgi_app_in_a_thread():
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})

    server = slc.serve(app)
    try:
        assert httpx.get(server.url + "/").text == "ok"
        assert server in sl.running_servers()
    finally:
        server.stop()


def two_task_crew(base_url):
    """plan, then write; the agents' own retry is off so a cut LLM call fails the kickoff."""
    llm = crewai.LLM(model="gpt-4o-mini", base_url=base_url, api_key="unused", stream=True, max_retries=0)
    planner = crewai.Agent(role="Planner", goal="Plan", backstory="A planner.", llm=llm, max_retry_limit=0)
    writer = crewai.Agent(role="Writer", goal="Write", backstory="A writer.", llm=llm, max_retry_limit=0)
    plan = crewai.Task(description="Plan the report.", expected_output="A plan.", agent=planner)
    write = crewai.Task(description="Write the report.", expected_output="A report.", agent=writer)
    return crewai.Crew(agents=[planner, writer], tasks=[plan, write], stream=True), plan, write


def test_replay_after_a_cut_has_no_stored_output_for_the_cut_task_and_reruns_from_the_first():
    with sl.MockLLM(tokens=20) as mock:
        crew, plan, write = two_task_crew(mock.base_url)
        with mock.script(None, Cut(at=8)), slc.streamed_text() as text:
            with pytest.raises(httpx.RemoteProtocolError):
                for _ in crew.kickoff():
                    pass
        assert {k: len(v) for k, v in text.items()} == {str(plan.id): 20, str(write.id): 8}
        assert [(t.task_index, t.task_id, t.words) for t in slc.stored_tasks(crew)] == [(0, str(plan.id), 20)]

        missing = slc.replay(crew, write.id)   # the cut task: CrewAI stored nothing to start from
        assert isinstance(missing.error, ValueError) and "not found" in missing.error_line
        assert missing.output is None and missing.text == {}

        before = len(mock.journal.chat())
        async def in_a_notebook():  # a running event loop on this thread, as in a kernel
            return slc.replay(crew, plan.id)

        again = asyncio.run(in_a_notebook())   # the only stored task: it runs again, and so does write
        assert again.error is None and slc.words(again.output.raw) == 20
        assert {k: len(v) for k, v in again.text.items()} == {str(plan.id): 20, str(write.id): 20}
        assert len(mock.journal.chat()) - before == 2
        assert [t.task_id for t in again.stored_before] == [str(plan.id)]


def test_quiet_records_crewais_first_run_in_streamlabs_private_storage_so_no_tracing_panel_prints():
    import os

    from crewai.events.listeners.tracing.utils import is_first_execution

    from streamlab._offline import crewai_storage_dir

    if crewai_storage_dir() is None:
        pytest.skip("CREWAI_STORAGE_DIR was set before streamlab started: quiet() leaves it alone")
    assert os.environ["CREWAI_STORAGE_DIR"] == crewai_storage_dir()
    slc.quiet()
    assert not is_first_execution()


def test_quiet_clears_the_first_run_latch_crewai_set_at_import():
    """``import crewai`` builds the trace listener, which reads "first execution?" once; a fresh private
    storage says yes, and the panel would print from a handler thread at the first crew's end."""
    from crewai.events.listeners.tracing.trace_listener import TraceCollectionListener

    from streamlab._offline import crewai_storage_dir

    if crewai_storage_dir() is None:
        pytest.skip("CREWAI_STORAGE_DIR was set before streamlab started: quiet() leaves it alone")
    handler = TraceCollectionListener().first_time_handler   # the singleton import crewai made
    handler.is_first_time = True                              # what import crewai latches in fresh storage
    slc.quiet()
    assert handler.is_first_time is False
