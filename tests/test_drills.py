"""``sl.drills``: a seed picks a hidden cause, the trainee sees only facts, an answer is proven by a re-run.

Every drill runs a real stack on loopback (the mock model, the drill app under
uvicorn in a thread, the embedded edge proxy with ``streamlab.hops`` faults)
under ``sl.drills.SCALE``. nbval's facilitator section of notebooks/07_drills
solves every kind with its listed fix; these tests pin what the trainee must not
see, that a wrong fix does not heal, and the clock and the scoring.
"""

from __future__ import annotations

import contextlib
import io
import re

import pytest

import streamlab as sl
from streamlab import drills
from streamlab.drills._drill import _healthy


def printed(fn, *args, **kwargs) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        fn(*args, **kwargs)
    return out.getvalue()


def leaks(text: str, *, causes: bool = True) -> list[str]:
    """Kind names, debrief stories and (``causes``) cause words found in ``text`` (header names aside)."""
    plain = re.sub(r"x-accel-buffering", "", text, flags=re.I)
    words = [k.name for k in drills.KINDS.values()] + [k.story for k in drills.KINDS.values()]
    found = [w for w in words if re.search(rf"\b{re.escape(w)}\b", plain)]
    found += [c for c in drills.CAUSES if causes and re.search(rf"\b{c}\b", plain)]
    return found


@pytest.mark.parametrize("kind", list(drills.KINDS))
def test_the_symptom_of_every_kind_names_no_cause_and_shows_a_failure(kind):
    drill = drills.Drill(seed=drills.seed_for(kind))
    assert kind not in repr(drill) and str(drill.seed) in repr(drill)
    text = printed(drill.symptom)
    assert leaks(text) == [], text
    assert text.count("alice:") == 1 and text.count("bob:") == 1
    healthy, why = _healthy(drill._symptom_runs, drills.KINDS[kind].setup)
    assert not healthy, "the incident did not fail"
    assert drill.clock == 0 and sl.running_servers() == []


def test_every_step_prints_facts_without_the_cause_and_costs_minutes():
    drill = drills.Drill(seed=drills.seed_for("gateway_deadline"))
    with drill.start():
        text = "".join([printed(drill.timeline), printed(drill.streaming_off), printed(drill.raw_sdk),
                        printed(drill.concurrency, 1), printed(drill.bypass, "edge"), printed(drill.bypass, "app"),
                        printed(drill.one_worker), printed(drill.logs, "app"), printed(drill.logs, "model")])
        edge_log = printed(drill.logs, "edge")
    assert leaks(text) == [], text
    # a hop's log says what its own timer did, in the product's words (that is what reading it buys)
    assert leaks(edge_log, causes=False) == [] and "response cut" in edge_log, edge_log
    text += edge_log
    assert drill.clock == sum(drills.COSTS[s] for s in drill.steps) == 5 * 3 + 10 * 7
    assert text.count("chat request:") == 1  # the model's log of the one request logs() made
    # the facts that solve it: cut at 29 s through the edge, complete straight to the app
    assert re.search(r"\[timeline, clock 5 min\]\n  HTTP 200, ended cut after 29\.\d s", text), text
    bypass = text.split("[bypass edge")[1].split("[bypass app")[0]
    assert "ended clean" in bypass and "finish_reason stop" in bypass


def test_a_right_diagnosis_with_a_wrong_fix_scores_without_the_fix_and_the_right_fix_heals():
    drill = drills.Drill(seed=drills.seed_for("length_cut"))
    with drill.start():
        wrong = drill.answer(layer="app", cause="length_truncation", fix="heartbeat")
        right = drill.answer(layer="app", cause="length_truncation", fix="raise_max_tokens")
        miss = drill.answer(layer="edge", cause="deadline", fix="raise_max_tokens")
    assert (wrong.layer_ok, wrong.cause_ok, wrong.fixed, wrong.points) == (True, True, False, 60)
    assert "12/24 words, finish_reason length" in wrong.rerun
    assert (right.fixed, right.points) == (True, 100)
    assert (miss.layer_ok, miss.cause_ok, miss.fixed, miss.points) == (False, False, True, 40)
    assert [r.clock for r in drill.results] == [10, 20, 30]


def _debrief(kind):
    """The debrief of ``kind``'s drill: what it printed, and its figure."""
    drill = drills.Drill(seed=drills.seed_for(kind))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        figure = drill.debrief()
    return out.getvalue(), figure


def test_the_debrief_names_the_cause_and_draws_every_hop():
    printed, figure = _debrief("silent_truncation")
    assert "cause: silent_truncation at the model" in printed
    labels = [t.get_text() for t in figure.axes[0].get_yticklabels()]
    assert any("model" in t for t in labels) and any("edge" in t for t in labels) and any("client" in t for t in labels)


def test_seeds_pick_kinds_deterministically_and_draw_covers_every_kind():
    assert [drills.Drill(seed=s)._kind.name for s in range(40)] == [drills.Drill(seed=s)._kind.name
                                                                    for s in range(40)]
    assert {drills.Drill(seed=drills.seed_for(k))._kind.name for k in drills.KINDS} == set(drills.KINDS)
    only = ("blocked_loop", "shared_state")
    assert {drills.draw(kinds=only)._kind.name for _ in range(30)} <= set(only)
    assert drills.draw(seed=5).seed == 5


def test_bad_input_gets_a_clear_error_before_any_server_starts():
    drill = drills.Drill(seed=1)
    with pytest.raises(drills.DrillError, match="unknown drill kinds"):
        drills.Drill(seed=1, kinds=("nope",))
    with pytest.raises(drills.DrillError, match="bypass 'edge'"):
        drill.bypass("model")
    with pytest.raises(drills.DrillError, match="logs of"):
        drill.logs("nginx")
    with pytest.raises(drills.DrillError, match="fix is one of"):
        drill.answer(layer="edge", cause="deadline", fix="reboot")
    with pytest.raises(drills.DrillError, match="layer is one of"):
        drill.answer(layer="network", cause="deadline", fix="heartbeat")
    assert drill.clock == 0 and sl.running_servers() == []


def test_start_stops_every_server_when_the_block_fails():
    drill = drills.Drill(seed=0)
    with pytest.raises(ZeroDivisionError):
        with drill.start():
            assert len(sl.running_servers()) >= 2
            1 / 0
    assert sl.running_servers() == []


# --------------------------------------------------------------------------- the gunicorn sync worker's timeout


def test_the_sync_worker_drill_runs_a_real_gunicorn_and_its_steps_print_facts_without_the_cause():
    drill = drills.Drill(seed=drills.seed_for("sync_worker_timeout"))
    with drill.start():
        assert {type(s).__name__ for s in sl.running_servers()} >= {"Gunicorn", "MockLLM"}
        text = "".join([printed(drill.timeline), printed(drill.bypass, "edge"), printed(drill.logs, "app"),
                        printed(drill.one_worker)])
    assert leaks(text) == [], text
    assert sl.running_servers() == []
    # through the edge and straight to the app alike: cut while the words still flowed, 30 to 40 s in
    # (gunicorn --timeout 30 at time scale 0.1, the arbiter looks once a wall-clock second)
    cuts = [float(x) for x in re.findall(r"HTTP 200, ended cut after (\d+\.\d) s", text)]
    assert len(cuts) == 2 and all(30.0 <= c <= 46.0 for c in cuts), text
    assert "server: gunicorn" in text.split("[bypass edge")[1]
    app_log = text.split("[logs app")[1].split("[one_worker")[0]
    assert "Using worker: sync" in app_log and re.search(r"\[CRITICAL\] WORKER TIMEOUT \(pid:\d+\)", app_log)
    assert "SystemExit raised in the worker" in app_log and "SystemExit: 1" in app_log
    assert re.search(r"Booting worker with pid: \d+", app_log), app_log  # the arbiter replaced the worker
    one = text.split("[one_worker")[1]
    assert "gunicorn with 2 worker processes (--worker-class sync, --timeout 30 s)" in one
    bob = float(re.search(r"bob: \d+ words, first word after (\d+\.\d) s", one).group(1))
    assert bob > 25.0, one  # one sync worker serves one request at a time: bob waited for alice's to end


def test_the_sync_worker_drill_is_healed_by_an_async_worker_or_a_longer_timeout_not_a_heartbeat_or_deadline():
    drill = drills.Drill(seed=drills.seed_for("sync_worker_timeout"))
    assert drills.KINDS["sync_worker_timeout"].fixes == ("async_worker", "raise_worker_timeout")
    results = {fix: drill.answer(layer="app", cause="worker_timeout", fix=fix)
               for fix in ("async_worker", "raise_worker_timeout", "heartbeat", "raise_deadline")}
    assert results["async_worker"].fixed and results["raise_worker_timeout"].fixed, results
    assert results["async_worker"].points == 100
    for wrong in ("heartbeat", "raise_deadline"):  # the words never paused, and no gateway counts the seconds
        assert not results[wrong].fixed and "RemoteProtocolError" in results[wrong].rerun, results[wrong]
    assert sl.running_servers() == []


def test_a_heartbeat_does_not_keep_a_sync_worker_alive_through_a_stall():
    """The app sends SSE comments through the model's 60 s pause; the worker still does not notify the arbiter."""
    from streamlab.drills._drill import _Stack
    from streamlab.drills._kinds import WORKER_SCALE
    from streamlab.faults import Stall

    setup = drills.Setup(server="sync", workers=1, worker_timeout=30.0, scale=WORKER_SCALE,
                         app=drills.AppConfig(heartbeat=5.0, lookup=0.0), model=(Stall(at=2, seconds=60.0),))
    with _Stack(setup) as stack:
        obs = stack.probe(url=stack.app_url)
        log = "\n".join(stack.hop_lines("app"))
    assert obs.ended == "cut" and obs.tokens == 2 and 30.0 <= obs.elapsed <= 46.0, obs.summary()
    assert len(obs.reads) > obs.tokens + 3, "the heartbeat's comments reached the client"
    assert "WORKER TIMEOUT" in log
    assert sl.running_servers() == []


def test_the_wsgi_relay_answers_bad_requests_with_a_clear_json_error():
    import io as _io
    import json

    from streamlab.drills import _wsgi

    def call(method, path, body=b""):
        seen = {}
        out = b"".join(_wsgi.app({"REQUEST_METHOD": method, "PATH_INFO": path, "CONTENT_LENGTH": str(len(body)),
                                  "wsgi.input": _io.BytesIO(body)}, lambda status, headers: seen.update(s=status)))
        return seen["s"], json.loads(out)

    assert call("GET", "/health") == ("200 OK", {"status": "ok"})
    status, body = call("POST", "/v1/chat/completions", b"not json")
    assert status == "400 Bad Request" and body["error"]["param"] == "messages"
    status, body = call("GET", "/v1/models")
    assert status == "404 Not Found" and "no route GET /v1/models" in body["error"]["message"]


def test_the_sync_worker_debrief_marks_gunicorns_kill_on_the_app_lane():
    printed, figure = _debrief("sync_worker_timeout")
    assert "cause: worker_timeout at the app" in printed
    labels = [t.get_text() for t in figure.axes[0].get_yticklabels()]
    assert "app (gunicorn's log)" in labels, labels
    assert "WORKER TIMEOUT" in [t.get_text() for t in figure.axes[0].texts]
    assert sl.running_servers() == []
