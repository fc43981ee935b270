"""data/fix_matrix.csv is what ``python -m streamlab.fixes._matrix`` makes, and it says what issue 12 claims.

One test regenerates the fast slice (``QUICK``: model faults against the openai SDK and LangChain,
hop faults through the heartbeat demo app under real uvicorn) and compares every column but the
volatile ``seconds`` with the stored file. The others read the stored file, made by real runs, and
pin the findings the notebook 06_fixes teaches.
"""

from __future__ import annotations

import csv
import json

import pytest

from streamlab.fixes import _matrix

pytestmark = pytest.mark.usefixtures("clean_slate")

STABLE = [c for c in _matrix.COLUMNS if c != "seconds"]


@pytest.fixture(scope="module")
def stored():
    rows = _matrix.read()
    return {(r["fault"], r["fix"], r["client"]): r for r in rows}


def test_the_file_has_exactly_the_issue_columns_and_one_row_per_key():
    with _matrix.DEFAULT_OUT.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        keys = [tuple(row[:3]) for row in reader]
    assert tuple(header) == _matrix.COLUMNS
    assert len(keys) == len(set(keys)), "one row per (fault, fix, client)"
    fixes = {fix for _, fix, _ in keys}
    assert fixes <= {"none", "stream_off", "heartbeat", "guard", "resume", "background", "continue", "idempotent"}


def test_the_versions_that_made_the_file_are_beside_it():
    meta = json.loads(_matrix.DEFAULT_OUT.with_suffix(".versions.json").read_text())
    assert {"streamlab", "openai", "httpx", "langchain-openai", "langgraph"} <= set(meta["versions"])
    assert meta["time_scale"] == _matrix.SCALE and meta["tokens"] == _matrix.TOKENS


def test_the_quick_slice_regenerated_matches_the_stored_file(stored):
    cells = _matrix.run_matrix(only=_matrix.QUICK)
    assert [c.key for c in cells] == [k for k in stored if k in set(_matrix.QUICK)]
    for cell in cells:
        fresh = dict(zip(_matrix.COLUMNS, cell.row()))
        assert {c: fresh[c] for c in STABLE} == {c: stored[cell.key][c] for c in STABLE}, cell.key


def test_resume_ends_a_worker_kill_complete_with_no_duplicate_and_one_model_run(stored):
    broken, fixed = stored[("worker_kill", "none", "httpx SSE")], stored[("worker_kill", "resume", "httpx SSE")]
    assert broken["outcome"] == "cut mid-stream" and int(broken["tokens_received"]) < int(broken["tokens_expected"])
    assert fixed["outcome"] == "complete" and fixed["tokens_received"] == fixed["tokens_expected"]
    assert fixed["duplicate_tokens"] == "0" and fixed["model_runs"] == "1"


def test_heartbeat_beats_an_lb_idle_timeout_and_not_a_gateway_deadline(stored):
    def outcome(fault, fix):
        return stored[(fault, fix, "httpx SSE")]["outcome"]

    assert (outcome("lb_idle_timeout", "none"), outcome("lb_idle_timeout", "heartbeat")) == \
        ("cut mid-stream", "complete")
    assert outcome("gateway_deadline", "heartbeat") == outcome("gateway_deadline", "none") == "cut mid-stream"


def test_guard_turns_every_silent_truncation_into_an_error(stored):
    silent = [k for k, r in stored.items() if k[1] == "none" and r["outcome"] == "silent truncation"]
    assert len(silent) >= 3, "the openai SDK, LangChain and LangGraph each end a silent@12 quietly"
    for fault, _, client in silent:
        assert stored[(fault, "guard", client)]["outcome"] == "truncation detected", (fault, client)
    # and no guarded stream is left looking whole while short
    for (fault, fix, client), row in stored.items():
        if fix == "guard" and row["outcome"] == "complete":
            assert row["tokens_received"] == row["tokens_expected"], (fault, client)


def test_an_idempotency_key_keeps_a_balancer_retry_to_one_model_run(stored):
    bare, keyed = stored[("lb_retry", "none", "httpx JSON")], stored[("lb_retry", "idempotent", "httpx JSON")]
    assert bare["outcome"] == keyed["outcome"] == "complete"
    assert (bare["model_runs"], keyed["model_runs"]) == ("2", "1")


def test_streaming_off_never_keeps_more_of_an_answer_than_streaming(stored):
    for (fault, fix, client), row in stored.items():
        if fix == "stream_off":
            assert int(row["tokens_received"]) <= int(stored[(fault, "none", client)]["tokens_received"]), \
                (fault, client)
