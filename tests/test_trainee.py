"""``tools/nb.py trainee OUTDIR``: nothing of a solution or of the facilitator's section survives."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def edition(tmp_path_factory):
    out = tmp_path_factory.mktemp("trainee")
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "nb.py"), "trainee", str(out)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return out


def text_of(cell: dict) -> str:
    parts = ["".join(cell.get("source", ""))]
    for o in cell.get("outputs", []):
        parts.append("".join(o.get("text", "")))
        parts += ["".join(v) if isinstance(v, list) else str(v) for v in o.get("data", {}).values()]
    return "\n".join(parts)


def test_every_notebook_is_written_as_a_trainee_edition(edition):
    assert sorted(p.name for p in edition.glob("*.ipynb")) == [p.name for p in NOTEBOOKS]
    for path in edition.glob("*.ipynb"):
        assert json.loads(path.read_text())["metadata"]["streamlab"]["edition"] == "trainee"


def test_no_solution_source_or_output_and_no_facilitator_cell_survives(edition):
    for original in NOTEBOOKS:
        before = json.loads(original.read_text())["cells"]
        after = json.loads((edition / original.name).read_text())["cells"]
        solutions = [c for c in before if "solution" in c["metadata"].get("tags", [])]
        stubs = [c for c in after if "solution" in c["metadata"].get("tags", [])]
        assert len(stubs) == len(solutions)
        for cell in stubs:
            assert "".join(cell["source"]) == "# your answer here" and cell.get("outputs", []) == []
        assert not [c for c in after if "facilitator" in c["metadata"].get("tags", [])]
        kept = "\n".join(text_of(c) for c in after)
        others = "\n".join(text_of(c) for c in before if c not in solutions)
        for cell in solutions:  # no line only a solution had (its source or output) is left anywhere
            for line in text_of(cell).splitlines():
                if len(line.strip()) > 30 and line.strip() not in others:
                    assert line.strip() not in kept, (original.name, line)


def test_the_00_answer_is_gone(edition):
    stored = (ROOT / "notebooks" / "00_start_here.ipynb").read_text()
    assert "smallest read timeout that survives" in stored
    assert "smallest read timeout that survives" not in (edition / "00_start_here.ipynb").read_text()


def test_the_trainee_07_shows_no_cause_kind_story_or_facilitator_text(edition):
    """What the trainee's drill printed (sections 1-2) names no kind and no cause; no debrief story anywhere."""
    import re

    from streamlab.drills import CAUSES, KINDS

    cells = json.loads((edition / "07_drills.ipynb").read_text())["cells"]
    answer = next(i for i, c in enumerate(cells) if "## 3. Your answer" in "".join(c["source"]))
    # header names and values are facts the ladder shows (a gzip drill's timeline prints content-encoding: gzip)
    drill_part = re.sub(r"x-accel-buffering|content-encoding: gzip", "",
                        "\n".join(text_of(c) for c in cells[:answer]), flags=re.I)
    for word in list(CAUSES) + list(KINDS):
        assert not re.search(rf"\b{word}\b", drill_part), word
    everything = "\n".join(text_of(c) for c in cells)
    for kind in KINDS.values():
        assert kind.story not in everything
    assert "## 4. Facilitator" not in everything and "seed_for(kind) for kind" not in everything
    assert "symptom" in drill_part and "[timeline, clock 5 min]" in drill_part  # the drill did run


def test_the_trainee_07_keeps_the_gunicorn_exercise_but_none_of_its_clues_or_answer(edition):
    """Exercise 4 (a gateway deadline or a gunicorn sync worker's timeout?) stays a question: no gunicorn log
    line, no heartbeat verdict of its solution survives; the stored notebook has them (nbval ran them)."""
    stored = (ROOT / "notebooks" / "07_drills.ipynb").read_text()
    trainee = (edition / "07_drills.ipynb").read_text()
    assert "Exercise 4." in trainee and "sync_worker_timeout" in trainee  # the question names the two kinds
    for clue in ("WORKER TIMEOUT", "SystemExit", "Using worker: sync", "fix 'heartbeat' did not heal",
                 "fix 'async_worker' healed"):
        assert clue in stored, clue
        assert clue not in trainee, clue
