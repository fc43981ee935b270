"""The notebooks are generated from notebooks/src and hold no machine-specific output."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_notebooks_match_their_sources_and_are_clean():
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "nb.py"), "check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
