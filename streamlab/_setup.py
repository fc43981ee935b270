"""Fail fast on the wrong library versions (the Setup cell of every notebook)."""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path

__all__ = ["require"]


class VersionMismatch(RuntimeError):
    """An installed package is not the version the notebook's stored outputs were made with."""


def require(**pinned: str) -> str:
    """Check installed versions: ``require(openai="2.54.0", httpx="0.28.1")``.

    Package names use ``_`` for ``-`` (``autogen_agentchat="0.7.5"``). Raises
    ``VersionMismatch`` naming every difference and the command that fixes it;
    returns a one-line summary otherwise.
    """
    wrong, found = [], []
    for name, version in pinned.items():
        dist = name.replace("_", "-")
        try:
            have = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            have = "not installed"
        found.append(f"{dist} {have}")
        if have != version:
            wrong.append(f"{dist}: {have}, expected {version}")
    if wrong:
        raise VersionMismatch("; ".join(wrong) + f". This kernel runs {_interpreter()}. Run `python3 tools/install.py` "
                              "(pinned versions), then pick the kernel \"streamlab (.venv)\" (Kernel > Change "
                              "Kernel) and restart it.")
    return "versions as pinned: " + ", ".join(found)


def _interpreter() -> str:
    """The kernel's interpreter: ``.venv/bin/python`` (relative to the repository) when it is the
    workbook's own venv, so a stored notebook output names no path of this machine; else the full path."""
    root = Path(__file__).resolve().parent.parent
    exe = Path(sys.executable)
    try:
        return str(exe.relative_to(root)) + " (the workbook's .venv)"
    except ValueError:
        return str(exe)
