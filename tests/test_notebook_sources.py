"""The notebooks are generated from notebooks/src and hold no machine-specific output."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_notebooks_match_their_sources_and_are_clean():
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "nb.py"), "check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _nb_tool():
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import nb
    finally:
        sys.path.remove(str(ROOT / "tools"))
    return nb


def test_build_masks_the_pids_of_app_server_logs_and_check_refuses_raw_ones(tmp_path):
    """Pinned: 20 raw pids were stored (``streamlab.app pid=N``, gunicorn's ``(pid:N)``) in 02 and 04."""
    import json

    nb = _nb_tool()
    lines = ("streamlab.app pid=18196 rid=p1 /chat/sse done 40 tokens\n"
             "[CRITICAL] WORKER TIMEOUT (pid:18398)\n"
             "[2026-01-01 10:00:00 +0000] [4242] [INFO] Booting worker\n"
             "tasks_output [1200], 40/40 tokens\n")
    raw = {"cells": [{"cell_type": "code", "outputs": [{"output_type": "stream", "name": "stdout", "text": lines}]}]}
    path = tmp_path / "raw.ipynb"
    path.write_text(json.dumps(raw))
    assert len(nb.hygiene(path)) == 3
    output = dict(raw["cells"][0]["outputs"][0])
    nb.mask_pids(output)
    assert output["text"] == lines.replace("18196", "PID").replace("18398", "PID").replace("[4242]", "[PID]")
    path.write_text(json.dumps({"cells": [{"cell_type": "code", "outputs": [output]}]}))
    assert nb.hygiene(path) == []
