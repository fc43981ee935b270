"""The trainee edition of the notebooks: solutions and the facilitator's section removed (``tools/nb.py trainee``).

nbgrader's student version is the model: a cell tagged ``solution`` keeps its
place and its tags but gets the stub ``# your answer here`` as source and no
outputs; a cell tagged ``facilitator`` is dropped whole. Every other cell is
copied as stored. The written notebooks carry ``metadata.streamlab.edition =
"trainee"``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

STUB = "# your answer here"


def trainee_notebook(nb: dict) -> dict:
    """A copy of ``nb`` without solutions (stubbed, no outputs) and without facilitator cells."""
    out = copy.deepcopy(nb)
    cells = []
    for cell in out["cells"]:
        tags = cell.get("metadata", {}).get("tags", [])
        if "facilitator" in tags:
            continue
        if "solution" in tags:
            cell["source"] = STUB
            if cell["cell_type"] == "code":
                cell["outputs"] = []
                cell["execution_count"] = None
        cells.append(cell)
    out["cells"] = cells
    out.setdefault("metadata", {}).setdefault("streamlab", {})["edition"] = "trainee"
    return out


def write_trainee(notebooks: list[Path], outdir: Path) -> list[Path]:
    """Write the trainee edition of every notebook into ``outdir`` (created); the paths written."""
    outdir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in notebooks:
        nb = json.loads(path.read_text())
        target = outdir / path.name
        target.write_text(json.dumps(trainee_notebook(nb), indent=1, ensure_ascii=False) + "\n")
        written.append(target)
    return written
