"""The README works as written, and the repository stands on its own.

* Every ```python block of README.md runs, in order, in one kernel (a reader pasting them into one
  notebook): nbclient executes them on the ``streamlab`` kernel, in a subprocess, and the last cell
  checks that nothing is left running.
* Every command of a ```bash block (and every inline ``.venv/bin/...`` command) names a program that
  exists, and a subcommand and options that its ``--help`` lists.
* No tracked file points outside the repository (to the workspace's shared folder or its articles).
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```$", re.M | re.S)


def blocks(language: str) -> list[str]:
    return [body for lang, body in BLOCK.findall(README) if lang == language]


def test_python_blocks_run_in_order_in_one_kernel(tmp_path):
    import nbformat
    from nbclient import NotebookClient

    code = blocks("python")
    assert len(code) >= 3
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in code]
    nb.cells.append(nbformat.v4.new_code_cell(
        "import psutil\n"
        "assert sl.running_servers() == [], sl.running_servers()\n"
        "assert [p for p in psutil.Process().children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE] == []\n"
        "print('nothing left running')"))
    client = NotebookClient(nb, timeout=120, kernel_name="streamlab", allow_errors=False,
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError with the cell and its traceback
    text = "\n".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
                     for cell in nb.cells for o in cell.outputs)
    # the outcomes the README's comments promise
    for promised in ("cut mid-stream 12 httpx.RemoteProtocolError", "complete 200", "stalled / timed out",
                     "cut mid-stream 5 httpx.RemoteProtocolError", "read_timeout", "aborted",
                     "CLIENT DISCONNECT", "2 workers", "broken", "fixed", "40 tokens, 0 duplicates",
                     "complete 8 ['split@3=0.2']", "HTTP/2",
                     "cut mid-stream 5 net::ERR_INCOMPLETE_CHUNKED_ENCODING",
                     "cut mid-stream 3 2 workers", "fixes that heal it", "nothing left running"):
        assert promised in text, f"README output lacks {promised!r}:\n{text}"


def commands() -> list[str]:
    lines = [line for body in blocks("bash") for line in body.splitlines() if line.strip()]
    lines += re.findall(r"`(\.venv/bin/[^`]+)`", README)
    return [re.split(r"\s+#", line)[0].strip() for line in lines]


def help_of(argv: list[str]) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, f"{' '.join(argv)}: {result.stderr[-800:]}"
    return result.stdout + result.stderr


@pytest.mark.parametrize("command", sorted(set(commands())))
def test_commands_exist_with_the_options_named(command):
    argv = shlex.split(command)
    program = ROOT / argv[0] if not argv[0].startswith("python") else None
    options = [a.split("=")[0] for a in argv[1:] if a.startswith("--")]
    if program is None:                            # python3 tools/install.py: not run here
        assert (ROOT / argv[1]).is_file()
        return
    assert program.exists(), f"{argv[0]} does not exist (run tools/install.py)"
    if argv[0].endswith("/python"):
        if argv[1] == "-m":                        # python -m pytest ...
            help_of([str(program), "-m", argv[2], "--version"])
            return
        script = [str(program), argv[1]] + [a for a in argv[2:3] if not a.startswith("-") and a.isidentifier()]
        text = help_of(script + ["--help"])
    elif argv[0].endswith("/jupyter"):
        text = help_of([str(program), argv[1], "--help-all"])
    else:                                          # .venv/bin/streamlab SUBCOMMAND ...
        text = help_of([str(program), argv[1], "--help"])
    for option in options:
        assert option in text, f"{command}: {option} is not an option of {' '.join(argv[:2])}"


def test_no_tracked_file_points_outside_the_repository():
    pointers = ["../" + "shared", "/work/" + "shared", "seeds" + "/"]
    listed = subprocess.run(["git", "ls-files"], capture_output=True, text=True, cwd=ROOT)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    found = []
    for name in listed.stdout.splitlines():
        path = ROOT / name
        try:
            text = path.read_text()
        except (UnicodeDecodeError, FileNotFoundError, IsADirectoryError):
            continue
        for number, line in enumerate(text.splitlines(), 1):
            found += [f"{name}:{number}: {p}" for p in pointers if p in line]
    assert not found, "files that point outside the repository:\n" + "\n".join(found)


def test_jupyter_lab_starts_as_the_readme_says_on_loopback(tmp_path):
    """``.venv/bin/jupyter lab notebooks/ --no-browser`` starts (as root too) and answers on 127.0.0.1 only."""
    import os
    import signal
    import time

    import httpx

    from streamlab._servers import free_port

    port = free_port()
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")}
    proc = subprocess.Popen([str(ROOT / ".venv" / "bin" / "jupyter"), "lab", "notebooks/", "--no-browser",
                             f"--port={port}", "--ServerApp.port_retries=0"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        answer = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/api", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.5)
        assert proc.poll() is None, f"jupyter lab exited: {proc.stderr.read()[-1500:]}"
        assert answer is not None and answer.status_code == 200 and "version" in answer.json()
        import psutil

        listening = {c.laddr.ip for c in psutil.Process(proc.pid).net_connections("inet")
                     if c.status == psutil.CONN_LISTEN}
        assert listening == {"127.0.0.1"}, listening
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        proc.stderr.close()
