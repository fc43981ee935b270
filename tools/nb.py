#!/usr/bin/env python3
"""Build the notebooks from their sources, execute them, and check they are in sync.

    .venv/bin/python tools/nb.py build notebooks/src/00_start_here.py   # -> notebooks/00_start_here.ipynb, executed
    .venv/bin/python tools/nb.py build --all
    .venv/bin/python tools/nb.py check                                   # sources == notebooks, outputs clean

A source is a Python file with cells separated by ``# %%`` lines (jupytext's
"percent" format). ``# %% [markdown]`` starts a Markdown cell whose lines are
``# ``-prefixed; ``# %% tags=["raises-exception", "solution"]`` sets cell tags.
The notebook is generated: edit the source, never the .ipynb (STYLE.md, item 15).

Every notebook names the kernel ``streamlab`` ("streamlab (.venv)", registered
by tools/install.py), so JupyterLab and nbval start the venv's interpreter.
Stored outputs must hold no machine-specific text: absolute paths, keys, ports
and process ids. The app servers' log lines carry pids (``streamlab.app
pid=4242``, gunicorn's ``WORKER TIMEOUT (pid:4242)`` and ``[4242] [INFO]``);
``build`` masks them (``pid=PID``) before it writes the notebook, the same way
tools/sanitize.cfg masks them before nbval compares, and ``check`` refuses any
that are left.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
SOURCES = NOTEBOOKS / "src"
MARK = re.compile(r"^# %%(?P<md> \[markdown\])?(?: tags=(?P<tags>\[.*\]))?\s*$")
FORBIDDEN = re.compile(r"(/root/|/tmp/|/work/|/home/|sk-[A-Za-z0-9]{16,}|127\.0\.0\.1:\d{4,5}|localhost:\d{4,5}"
                       r"|\bpid[:=] ?\d+|\[\d+\] \[(?:DEBUG|INFO|WARNING|ERROR|CRITICAL)\])")
# (pattern, replacement) applied to every stored output by build: the pid shapes of FORBIDDEN
PIDS = [(re.compile(r"\b(pid[:=] ?)\d+"), r"\1PID"),
        (re.compile(r"\[\d+\] (\[(?:DEBUG|INFO|WARNING|ERROR|CRITICAL)\])"), r"[PID] \1")]
KERNEL = {"display_name": "streamlab (.venv)", "language": "python", "name": "streamlab"}


def parse(source: Path) -> list[dict]:
    cells: list[dict] = []
    current: dict | None = None
    for line in source.read_text().splitlines():
        m = MARK.match(line)
        if m:
            current = {"markdown": bool(m.group("md")), "tags": json.loads(m.group("tags") or "[]"), "lines": []}
            cells.append(current)
            continue
        if current is None:
            continue  # a header before the first cell (a docstring for the author) is not part of the notebook
        current["lines"].append(line)
    out = []
    for cell in cells:
        lines = cell["lines"]
        while lines and not lines[-1].strip():
            lines.pop()
        while lines and not lines[0].strip():
            lines.pop(0)
        if cell["markdown"]:
            lines = [re.sub(r"^# ?", "", x) for x in lines]
        out.append({"markdown": cell["markdown"], "tags": cell["tags"], "source": "\n".join(lines)})
    return out


def to_notebook(cells: list[dict]):
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata = {
        "kernelspec": dict(KERNEL),
        "language_info": {"name": "python", "version": "3.11"},
    }
    for i, cell in enumerate(cells):
        if cell["markdown"]:
            new = nbformat.v4.new_markdown_cell(cell["source"])
        else:
            new = nbformat.v4.new_code_cell(cell["source"])
        new.id = f"cell-{i:03d}"
        if cell["tags"]:
            new.metadata["tags"] = cell["tags"]
            if "solution" in cell["tags"]:
                new.metadata["jupyter"] = {"source_hidden": True}
        nb.cells.append(new)
    return nb


def target(source: Path) -> Path:
    return NOTEBOOKS / (source.stem + ".ipynb")


def build(source: Path, execute: bool = True) -> Path:
    import nbformat
    from nbclient import NotebookClient

    nb = to_notebook(parse(source))
    if execute:
        from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

        try:
            KernelSpecManager().get_kernel_spec(KERNEL["name"])
        except NoSuchKernel:
            raise SystemExit(f"no Jupyter kernel {KERNEL['name']!r}: run python3 tools/install.py (it registers "
                             f"the venv's interpreter as {KERNEL['display_name']!r})") from None
        client = NotebookClient(nb, timeout=300, kernel_name=KERNEL["name"], allow_errors=False,
                                resources={"metadata": {"path": str(NOTEBOOKS)}})
        # cells tagged raises-exception may fail; nbclient honours the tag itself
        client.execute()
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.metadata.pop("execution", None)
            for output in cell.outputs:
                mask_pids(output)
    out = target(source)
    nbformat.write(nb, out)
    problems = hygiene(out)
    if problems:
        print("\n".join(problems), file=sys.stderr)
    print(f"built {out.relative_to(ROOT)}")
    return out


def mask(text: str) -> str:
    for pattern, replacement in PIDS:
        text = pattern.sub(replacement, text)
    return text


def mask_pids(output: dict) -> None:
    """Replace process ids in one stored output (stream text, text/plain, text/html, text/markdown)."""
    if "text" in output:
        output["text"] = mask(output["text"] if isinstance(output["text"], str) else "".join(output["text"]))
    for key, value in output.get("data", {}).items():
        if key.startswith("text/"):
            output["data"][key] = mask(value if isinstance(value, str) else "".join(value))
    if "evalue" in output:  # an error output (cells tagged raises-exception)
        output["evalue"] = mask(output["evalue"])
        output["traceback"] = [mask(line) for line in output.get("traceback", [])]


def hygiene(notebook: Path) -> list[str]:
    nb = json.loads(notebook.read_text())
    problems = []
    for i, cell in enumerate(nb["cells"]):
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            text = json.dumps(output.get("text", "")) + json.dumps(output.get("evalue", "")) + "".join(
                json.dumps(data.get(k, "")) for k in ("text/plain", "text/html", "text/markdown"))
            for hit in set(FORBIDDEN.findall(text)):
                problems.append(f"{notebook.name} cell {i}: stored output holds machine-specific text {hit!r}")
    return problems


def check() -> int:
    problems = []
    for source in sorted(SOURCES.glob("*.py")):
        nb_path = target(source)
        if not nb_path.exists():
            problems.append(f"{nb_path.name}: missing; run tools/nb.py build {source.relative_to(ROOT)}")
            continue
        stored = json.loads(nb_path.read_text())
        wanted = parse(source)
        got = [{"markdown": c["cell_type"] == "markdown", "tags": c.get("metadata", {}).get("tags", []),
                "source": "".join(c["source"]) if isinstance(c["source"], list) else c["source"]}
               for c in stored["cells"]]
        if got != wanted:
            problems.append(f"{nb_path.name}: out of sync with {source.name}; rebuild it with tools/nb.py build")
        kernel = stored.get("metadata", {}).get("kernelspec", {}).get("name")
        if kernel != KERNEL["name"]:
            problems.append(f"{nb_path.name}: kernelspec {kernel!r}, expected {KERNEL['name']!r}; rebuild it")
        code = [c for c in stored["cells"] if c["cell_type"] == "code"]
        if code and not any(c.get("outputs") for c in code):
            problems.append(f"{nb_path.name}: no stored outputs")
        problems += hygiene(nb_path)
    print("\n".join(problems) or "notebooks in sync and clean")
    return 1 if problems else 0


def main() -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("sources", nargs="*", type=Path)
    b.add_argument("--all", action="store_true")
    b.add_argument("--no-execute", action="store_true")
    sub.add_parser("check")
    sub.add_parser("trainee").add_argument("outdir", type=Path)  # tools/_trainee.py: solutions removed
    args = parser.parse_args()
    if args.cmd == "check":
        return check()
    if args.cmd == "trainee":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from _trainee import write_trainee

        for path in write_trainee(sorted(NOTEBOOKS.glob("*.ipynb")), args.outdir):
            print("wrote", path)
        return 0
    sources = sorted(SOURCES.glob("*.py")) if args.all else [s.resolve() for s in args.sources]
    for source in sources:
        build(source, execute=not args.no_execute)
    return 0


if __name__ == "__main__":
    sys.exit(main())
