"""The playground checks what it is given and says what is wrong in the panel (no browser needed).

Pinned: a stall of -3 s was run and called "complete"; a fault's leftover value silently became
another fault's setting (stall 8 s -> ``ratelimit=8``); a fault index past the end of the answer never
fired and looked complete; before its cell ran, JupyterLab showed the panel as ``VBox(children=...``.
"""

import pytest

import streamlab as sl
from streamlab.faults import SpecError


@pytest.fixture(autouse=True)
def fast():
    with sl.time_scale(0.05):
        yield


@pytest.mark.parametrize("settings,said", [
    (dict(fault="stall", at=5, value=-3), "seconds must be a finite number"),
    (dict(fault="stall", at=5, value=float("nan")), "seconds must be a finite number"),
    (dict(fault="cut", at=40, tokens=40), "cut@40 never fires: the answer has only 40 tokens"),
    (dict(fault="context", value=16.5), "whole number of tokens"),
    (dict(fault="nosuch"), "unknown model fault 'nosuch'"),
    (dict(timeout=-1), "client timeout must be a number of scenario seconds above 0"),
    (dict(ttft=-0.5), "ttft must be a finite number"),
    (dict(hop="read_timeout", hop_value="-3"), "is not a duration"),
    (dict(hop="gzip", hop_value="3"), None),  # gzip takes no value: the box is ignored, not an error
])
def test_run_scenario_refuses_nonsense_before_starting_anything(settings, said):
    problems = sl._playground.check_scenario(**settings)
    if said is None:
        assert problems == []
        return
    assert any(said in p for p in problems), problems
    with pytest.raises(SpecError, match=said.split(":")[0][:20]):
        sl.run_scenario(plot=False, **settings)
    assert sl.running_servers() == []


def test_run_scenario_runs_what_it_was_given():
    stalled = sl.run_scenario(tokens=20, ttft=0.0, itl=0.05, fault="stall", at=5, value=5, timeout=2, plot=False)
    assert stalled.run.outcome is sl.Outcome.STALLED and stalled.run.tokens == 5
    assert stalled.run.error_class == "httpx.ReadTimeout"
    via = sl.run_scenario(tokens=20, ttft=0.0, itl=0.05, fault="stall", at=5, value=8, timeout=None,
                          hop="read_timeout", hop_value=3, plot=False)
    assert via.hop == "via proxy: read_timeout=3"
    assert via.run.outcome is sl.Outcome.CUT_MID_STREAM and via.run.tokens == 5


def test_the_panel_says_what_is_wrong_and_keeps_run_off():
    panel = sl.playground(tokens=40, fault="stall", at=10, value=5.0, timeout=2.0)
    c = panel.controls
    assert panel.message.value == "" and not panel.run_button.disabled
    c["value"].value = -3
    assert "seconds must be a finite number" in panel.message.value and panel.run_button.disabled
    panel.run_button.click()  # refused: nothing runs
    assert panel.result is None and sl.running_servers() == []
    c["value"].value = 5
    c["at"].value = 40
    assert "never fires" in panel.message.value and panel.run_button.disabled
    c["at"].value = 10
    c["timeout"].value = -1
    assert "client timeout" in panel.message.value
    c["timeout"].value = 0  # 0: no timeout, allowed
    assert panel.message.value == "" and not panel.run_button.disabled


def test_switching_faults_never_carries_a_value_over():
    panel = sl.playground(fault="stall", at=10, value=8.0)
    c = panel.controls
    assert c["value"].description == "seconds" and not c["at"].disabled
    c["fault"].value = "ratelimit"
    assert c["value"].value == 1.0, "the stall's 8 s must not become ratelimit=8"
    assert c["value"].description == "retry_after" and c["at"].disabled
    c["fault"].value = "cut"
    assert c["value"].disabled and not c["at"].disabled
    c["fault"].value = "context"
    assert c["value"].description == "tokens" and c["value"].value == 16
    assert panel.message.value == ""


def test_run_in_the_panel_gives_the_same_outcome_as_run_scenario():
    panel = sl.playground(tokens=20, ttft=0.0, itl=0.05, fault="cut", at=6, timeout=5.0)
    panel.controls["hop"].value = "buffering"
    assert panel.controls["hop_value"].value == "on" and panel.message.value == ""
    panel.run_button.click()
    headless = sl.run_scenario(tokens=20, ttft=0.0, itl=0.05, fault="cut", at=6, timeout=5.0, hop="buffering",
                               hop_value="on", plot=False)
    assert panel.result.run.outcome is headless.run.outcome is sl.Outcome.CUT_MID_STREAM
    assert panel.result.run.tokens == headless.run.tokens == 6
    assert panel.result.hop == headless.hop == "via proxy: buffering=on"
    assert sl.running_servers() == []


def test_dropdowns_come_from_the_registries():
    panel = sl.playground()
    assert list(panel.controls["fault"].options) == ["none"] + sl.faults.names()
    assert list(panel.controls["hop"].options) == ["none"] + [n for n in sl.hops.names() if n != "noop"]


def test_before_its_cell_runs_the_panel_says_so_instead_of_vbox_text():
    bundle = sl.playground()._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert "VBox" not in bundle["text/plain"] and "run the cell" in bundle["text/plain"]
