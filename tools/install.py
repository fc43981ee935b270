#!/usr/bin/env python3
"""The one install command: ``python3 tools/install.py``.

Creates ``.venv/`` at the repository root with Python 3.11, installs the exact
versions in ``requirements.lock`` (stored notebook outputs depend on them) and
streamlab itself (editable). When run as root on Debian/Ubuntu it also installs
nginx with apt-get, so the notebooks and tests can compare against the real
thing; elsewhere streamlab falls back to its embedded proxy and says so.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"


def step(message: str) -> None:
    print(f"==> {message}", flush=True)


def run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, cwd=ROOT)


def main() -> int:
    if sys.version_info[:2] != (3, 11):
        print(f"streamlab needs Python 3.11 (this is {sys.version.split()[0]}); run it with python3.11.",
              file=sys.stderr)
        return 2
    started = time.monotonic()
    python = VENV / "bin" / "python"
    if not python.exists():
        step(f"creating {VENV.relative_to(ROOT)}/")
        run(sys.executable, "-m", "venv", str(VENV))
    step("installing pinned packages from requirements.lock (a few minutes the first time)")
    run(str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r", "requirements.lock")
    step("installing streamlab (editable)")
    run(str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps", "-e", ".")
    if shutil.which("nginx") or Path("/usr/sbin/nginx").exists():
        step("nginx found: notebooks and tests will compare against real nginx")
    elif hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        step("installing nginx with apt-get (real-nginx parity checks)")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "nginx-light"], check=True, env=env)
    else:
        step("nginx not installed and not root: the embedded proxy stands in for it "
             "(install nginx to run the real-nginx checks)")
    step(f"done in {time.monotonic() - started:.0f} s. Test: .venv/bin/python -m pytest   "
         "Workbook: .venv/bin/jupyter lab notebooks/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
