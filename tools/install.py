#!/usr/bin/env python3
"""The one install command: ``python3 tools/install.py``.

Creates ``.venv/`` at the repository root with Python 3.11, installs the exact
versions in ``requirements.lock`` (stored notebook outputs depend on them) and
streamlab itself (editable). When run as root on Debian/Ubuntu it also installs
nginx, redis-server and chromium with apt-get, so the notebooks and tests can
compare against the real thing; elsewhere streamlab falls back to its embedded
proxy (and skips the Redis and browser tests) and says so.

It registers the venv's interpreter as the Jupyter kernel ``streamlab``
("streamlab (.venv)"), which every notebook names in its metadata (JupyterLab
and nbval start that kernel), and writes the venv's Jupyter server config:
listen on 127.0.0.1 only, and start as root too (training VMs run as root;
``jupyter lab`` otherwise refuses with "Running as root is not recommended").
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
KERNEL = "streamlab"
KERNEL_DISPLAY = "streamlab (.venv)"
SERVER_CONFIG = {  # merged into .venv/etc/jupyter/jupyter_server_config.json
    "ServerApp": {"ip": "127.0.0.1", "allow_root": True},
    "MappingKernelManager": {"default_kernel_name": KERNEL},
}


def step(message: str) -> None:
    print(f"==> {message}", flush=True)


def run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, cwd=ROOT)


def system_package(binary: str, package: str, found: str, missing: str) -> None:
    """A system program the tests use: found, installed with apt-get when root on Debian/Ubuntu, or skipped."""
    global _apt_updated
    if shutil.which(binary) or Path("/usr/sbin", binary).exists() or Path("/usr/bin", binary).exists():
        step(f"{binary} found: {found}")
    elif hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        step(f"installing {package} with apt-get ({found})")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        if not _apt_updated:
            subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
            _apt_updated = True
        subprocess.run(["apt-get", "install", "-y", "-qq", package], check=True, env=env)
    else:
        step(f"{binary} not installed and not root: {missing}")


_apt_updated = False


def jupyter_setup(python: Path) -> None:
    """The named kernel and the venv's server config (both inside .venv/, nothing in $HOME)."""
    run(str(python), "-m", "ipykernel", "install", "--sys-prefix", "--name", KERNEL,
        "--display-name", KERNEL_DISPLAY)
    path = VENV / "etc" / "jupyter" / "jupyter_server_config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    config = json.loads(path.read_text()) if path.exists() else {}
    for section, values in SERVER_CONFIG.items():
        config.setdefault(section, {}).update(values)
    path.write_text(json.dumps(config, indent=2) + "\n")


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
    step(f"registering the Jupyter kernel {KERNEL!r} ({KERNEL_DISPLAY}) and the server config (127.0.0.1)")
    jupyter_setup(python)
    system_package("nginx", "nginx-light", "notebooks and tests will compare against real nginx",
                   "the embedded proxy stands in for it (install nginx to run the real-nginx checks)")
    system_package("redis-server", "redis-server", "the resumable-stream tests run on real Redis",
                   "the resumable-stream tests on Redis are skipped (install redis-server to run them)")
    system_package("chromium", "chromium", "the browser tests and 05_incidents drive a real headless Chromium",
                   "the browser tests are skipped and 05_incidents cannot run (install chromium)")
    step(f"done in {time.monotonic() - started:.0f} s. Test: .venv/bin/python -m pytest   "
         "Workbook: .venv/bin/jupyter lab notebooks/  (headless: add --no-browser)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
