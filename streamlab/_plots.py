"""Timing pictures and the side-by-side table (taught in ``notebooks/00_start_here``).

``plot_runs(*runs)``      one panel per run: cumulative tokens received over time,
                          a rug of arrivals, the expected total dashed, the cut or
                          stall marked. The wait for the first token is a light
                          hatched band ("waiting for first token"); a gap in the
                          middle of the stream is a red band ("silence"); a legend
                          says which is which.
``plot_hops(run, hops)``  a swim lane per hop (model, proxy, client): every send and
                          arrival as a tick, so a hold-back or a cut shows at its hop.
``compare(broken, fixed)``  a small table and the figure for a broken/fixed pair.

Tables print times with decimals and a unit ("0.412 s"); the notebooks' sanitize
file replaces exactly those, so outcomes and counts are compared by nbval while
timings are not. ``table()`` returns a ``Table``: a ``str`` (the fixed-width text,
what ``print``, terminals and nbval's ``text/plain`` see, unchanged) that also has
``_repr_html_`` and ``_repr_markdown_``, so JupyterLab lays a wide table out as a
table instead of wrapping its lines at the window's edge.
"""

from __future__ import annotations

import html
import itertools
import textwrap
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from ._recorder import Outcome, Run
from ._text import count_tokens
from ._timeline import HopLog
from ._timescale import current_time_scale

__all__ = ["plot_runs", "plot_hops", "compare", "Comparison", "table", "Table"]

COLORS = {
    Outcome.COMPLETE: "#2a9d8f", Outcome.TRUNCATED_BY_LENGTH: "#e9c46a", Outcome.CUT_MID_STREAM: "#e63946",
    Outcome.SILENT_TRUNCATION: "#f4a261", Outcome.STALLED: "#9d4edd", Outcome.BUFFERED: "#457b9d",
    Outcome.ERROR_BEFORE_STREAM: "#6c757d", Outcome.CLIENT_ABORTED: "#adb5bd", Outcome.HTTP_ERROR: "#b5179e",
}
WAIT_COLOR = "#8d99ae"     # the wait for the first token: expected, hatched, neutral
SILENCE_COLOR = "#e63946"  # a gap in the middle of a stream: the thing to look at


def _t(value: float | None) -> str:
    """A measured duration in scenario seconds, always with decimals (the sanitizer's hook)."""
    if value is None:
        return "-"
    return f"{value:.3f} s"


class Table(str):
    """A text table that is also an HTML (and Markdown) table in a notebook.

    It *is* the fixed-width text (a ``str``): ``print(t)``, ``repr`` in a terminal and nbval's
    ``text/plain`` comparison see exactly that. JupyterLab prefers ``_repr_html_``, which it lays
    out as a real table (no wrapping at 1400 px). Rows and header are kept for both.
    """

    header: tuple[str, ...]
    rows: list[tuple[str, ...]]
    numeric: tuple[int, ...]

    def __new__(cls, text: str, header: Sequence[str] = (), rows: Sequence[Sequence[str]] = (),
                numeric: Sequence[int] = ()) -> "Table":
        obj = super().__new__(cls, text)
        obj.header, obj.rows, obj.numeric = tuple(header), [tuple(r) for r in rows], tuple(numeric)
        return obj

    def __repr__(self) -> str:
        return str.__str__(self)

    def _repr_html_(self) -> str:
        def cell(tag: str, i: int, value: str) -> str:
            align = "right" if i in self.numeric else "left"
            return f'<{tag} style="text-align:{align}; white-space:nowrap">{html.escape(value)}</{tag}>'

        head = "".join(cell("th", i, h) for i, h in enumerate(self.header))
        body = "".join("<tr>" + "".join(cell("td", i, c) for i, c in enumerate(row)) + "</tr>" for row in self.rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def _repr_markdown_(self) -> str:
        def esc(value: str) -> str:
            return value.replace("|", "\\|") or " "

        lines = ["| " + " | ".join(esc(h) for h in self.header) + " |",
                 "|" + "|".join("---:" if i in self.numeric else "---" for i in range(len(self.header))) + "|"]
        lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in self.rows]
        return "\n".join(lines)


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]], *, numeric: Sequence[int] = (),
               fixed: dict[int, int] | None = None) -> Table:
    """A ``Table`` of string cells: left-aligned text, right-aligned ``numeric`` columns, ``fixed``
    widths for some columns (timings, so sanitized text lines up the same way on every run)."""
    fixed = fixed or {}
    allrows = [tuple(header)] + [tuple(r) for r in rows]
    widths = [fixed.get(i, max(len(r[i]) for r in allrows)) for i in range(len(header))]
    lines = []
    for row in allrows:
        cells = [c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
    return Table("\n".join(lines), header, rows, numeric)


def table(runs: Sequence[Run]) -> Table:
    """A table of runs: outcome, tokens got/expected, error, TTFT, ITL p50/p99, E2E (text; HTML in a notebook)."""
    header = ("run", "outcome", "tokens", "error", "TTFT", "ITL p50", "ITL p99", "E2E")
    rows = []
    for i, run in enumerate(runs):
        got = f"{run.tokens}/{run.expected}" if run.expected is not None else str(run.tokens)
        rows.append((run.label or f"run {i + 1}", str(run.outcome), got, run.error_class,
                     _t(run.ttft), _t(run.itl_p50), _t(run.itl_p99), _t(run.e2e)))
    # Timing columns are fixed-width so sanitized text lines up the same way on every run.
    return text_table(header, rows, numeric=(4, 5, 6, 7), fixed={4: 10, 5: 10, 6: 10, 7: 10})


def _plt():
    import matplotlib

    if matplotlib.get_backend().lower() not in ("module://matplotlib_inline.backend_inline", "inline"):
        try:
            from IPython import get_ipython

            if get_ipython() is None:
                matplotlib.use("Agg")
        except ImportError:  # pragma: no cover
            matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _note(ax: Any, x: float, y: float, text: str, color: str, *, right_edge: float) -> None:
    """An annotation that stays inside the axes: right of the point in the left half, left of it after."""
    left_half = x < 0.5 * right_edge
    ax.annotate(text, (x, y), textcoords="offset points", xytext=(7 if left_half else -7, 8),
                ha="left" if left_half else "right", fontsize=8, color=color, clip_on=False,
                annotation_clip=False)


def _wrap(title: str, width: int = 58) -> str:
    return "\n".join(textwrap.wrap(title, width)) or title


def _draw_run(ax: Any, run: Run, *, title: str | None = None, right: float | None = None) -> list[str]:
    """Draw one run; returns the legend entries it used ("wait", "silence")."""
    times = run.relative()
    color = COLORS.get(run.outcome, "black")
    counts = list(itertools.accumulate(count_tokens(text) for text in run.texts))  # a chunk may hold many tokens
    got = counts[-1] if counts else 0
    end = run.e2e
    right = max(right if right is not None else end, 1e-6) * 1.05
    used: list[str] = []
    # the wait for the first token (TTFT): expected, so neutral and hatched
    first = times[0] if times else end
    if first > 0.01 * right:
        ax.axvspan(0, first, facecolor="none", edgecolor=WAIT_COLOR, hatch="///", lw=0, alpha=0.55, zorder=0)
        used.append("wait")
    if times:
        ax.step([0.0] + times, [0] + counts, where="post", color=color, lw=2, zorder=3)
        ax.plot(times, [0] * len(times), "|", color=color, ms=10, alpha=0.6, zorder=3)
    if run.expected:
        ax.axhline(run.expected, ls="--", color="grey", lw=1)
        ax.text(0, run.expected, " expected", va="bottom", fontsize=8, color="grey")
    if run.error is not None or run.outcome in (Outcome.SILENT_TRUNCATION, Outcome.CLIENT_ABORTED,
                                                  Outcome.HTTP_ERROR):
        ax.plot([end], [got], "X", color=color, ms=12, zorder=4, clip_on=False)
        if run.outcome is Outcome.HTTP_ERROR and run.status is not None:
            label = f"HTTP {run.status}" + (f" · {run.error_class}" if run.error is not None else "")
        else:
            label = run.error_class if run.error is not None else str(run.outcome)
        _note(ax, end, got, label, color, right_edge=right)
    # the longest silence *between* tokens (or after the last one, up to an error), when it is much
    # longer than the typical gap: red, the thing to look at
    if len(times) >= 2:
        gaps = [(b - a, a, b) for a, b in zip(times, times[1:] + ([end] if run.error is not None else []))]
        typical = sorted(g for g, _, _ in gaps)[len(gaps) // 2]
        longest = max(gaps)
        if longest[0] > 5 * max(typical, 1e-9) and longest[0] > 0.05 * max(end, 1e-9):
            ax.axvspan(longest[1], longest[2], color=SILENCE_COLOR, alpha=0.13, lw=0, zorder=1)
            ax.text((longest[1] + longest[2]) / 2, 0.5 * max(counts or [1]), "silence", ha="center",
                    fontsize=8, color=SILENCE_COLOR)
            used.append("silence")
    ax.set_xlim(left=0, right=right)
    ax.set_ylim(bottom=0, top=max(run.expected or 0, got, 1) * 1.15)
    ax.set_title(_wrap(title or f"{run.label or 'run'}: {run.outcome}"), fontsize=10, color=color)
    ax.set_xlabel("scenario seconds since the request" + ("" if run.scale == 1 else
                                                         f" (x{run.scale:g} wall clock)"))
    ax.set_ylabel("tokens received")
    ax.grid(alpha=0.3)
    return used


def _legend(fig: Any, used: set[str]) -> None:
    from matplotlib.patches import Patch

    handles = []
    if "wait" in used:
        handles.append(Patch(facecolor="none", edgecolor=WAIT_COLOR, hatch="///", label="waiting for first token"))
    if "silence" in used:
        handles.append(Patch(facecolor=SILENCE_COLOR, alpha=0.25, label="silence mid-stream"))
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8, frameon=False)


def plot_runs(*runs: Run, title: str | None = None, sharex: bool = True):
    """One panel per run, side by side: cumulative tokens over time, the wait for the first token
    hatched, a mid-stream silence in red, cuts and errors marked (labels kept inside the panels)."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(runs), figsize=(5.2 * len(runs), 3.7), sharex=sharex, squeeze=False,
                             layout="constrained")
    right = max((max(run.e2e, 1e-6) for run in runs), default=1e-6) if sharex else None
    used: set[str] = set()
    for ax, run in zip(axes[0], runs):
        used.update(_draw_run(ax, run, right=right))
    if title:
        fig.suptitle(title)
    _legend(fig, used)
    return fig


def plot_hops(run: Run | None, hops: Iterable[HopLog | tuple[str, HopLog, str]], *, title: str | None = None,
              t0: float | None = None):
    """A swim lane per hop: a tick for every send (or receive), faults and closes marked.

    ``hops`` are HopLogs (their "out" events: what the hop sent on) or ``(label, log, kind)``
    triples to pick another kind ("in": what the hop received). The client's ``run`` is the
    bottom lane: one tick per chunk received, an X where it broke. Lanes share the time axis,
    so a stream held back at a hop shows as ticks that bunch up below it, and a cut as lanes
    that stop at different moments.
    """
    plt = _plt()
    lanes: list[tuple[str, list[float], list[tuple[float, str]], str]] = []
    for hop in hops:
        label, log, kind = (hop.name + " sent", hop, "out") if isinstance(hop, HopLog) else hop
        ticks = [e.t for e in log.of(kind)]
        marks = [(e.t, e.note) for e in log.events if e.kind == "fault" and e.note]
        if not marks:  # no fault at this hop: show how its exchange closed, when it did not end cleanly
            marks = [(e.t, e.note) for e in log.events if e.kind == "close" and e.note not in ("complete", "eof")]
        lanes.append((label, ticks, marks, "#264653"))
    if run is not None:
        marks = [(run.t_end, run.error_class)] if run.error is not None else []
        lanes.append((f"client got ({run.outcome})", list(run.arrivals), marks,
                      COLORS.get(run.outcome, "black")))
    start = t0 if t0 is not None else (run.t_start if run is not None else
                                       min((ticks[0] for _, ticks, _, _ in lanes if ticks), default=0.0))
    scale = current_time_scale() if run is None else run.scale
    fig, ax = plt.subplots(figsize=(9, 1.1 + 0.8 * len(lanes)), layout="constrained")
    rows = []
    end = 0.0
    for row, (label, ticks, marks, color) in enumerate(reversed(lanes)):
        xs = [(t - start) / scale for t in ticks]
        points = [((t - start) / scale, note) for t, note in marks]
        rows.append((row, xs, points, color))
        end = max([end] + xs + [x for x, _ in points])
    right = max(end, 1e-6) * 1.12
    for row, xs, points, color in rows:
        ax.plot(xs, [row] * len(xs), "|", color=color, ms=16, mew=1.5)
        for x, note in points:
            ax.plot([x], [row], "X", color="#e63946", ms=11)
            _note(ax, x, row, note if len(note) <= 34 else note[:32] + "…", "#e63946", right_edge=right)
    ax.set_yticks(range(len(lanes)), [label for label, *_ in reversed(lanes)])
    ax.set_ylim(-0.7, len(lanes) - 0.3)
    ax.set_xlim(left=0, right=right)
    ax.set_xlabel("scenario seconds since the request" + ("" if scale == 1 else f" (x{scale:g} wall clock)"))
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(title or "what each hop saw")
    return fig


@dataclass
class Comparison:
    """A broken/fixed pair (or more runs): ``.table`` text, ``.figure``, and the runs."""

    runs: list[Run]
    table: str
    figure: Any = None

    def __repr__(self) -> str:
        return str(self.table)

    def _repr_html_(self) -> str | None:
        html_of = getattr(self.table, "_repr_html_", None)
        return html_of() if callable(html_of) else None

    def _repr_markdown_(self) -> str | None:
        markdown_of = getattr(self.table, "_repr_markdown_", None)
        return markdown_of() if callable(markdown_of) else None

    def __getitem__(self, label: str) -> Run:
        for run in self.runs:
            if run.label == label:
                return run
        raise KeyError(label)


def compare(*runs: Run, title: str | None = None, plot: bool = True, **named: Run) -> Comparison:
    """Show runs side by side: ``compare(broken=run_a, fixed=run_b)`` prints a table and draws the timelines.

    Keyword names become the run labels. Returns a ``Comparison`` whose repr is
    the table (what nbval compares); the figure is displayed and closed.
    """
    all_runs = list(runs)
    for label, run in named.items():
        run.label = label
        all_runs.append(run)
    text = table(all_runs)
    figure = None
    if plot:
        figure = plot_runs(*all_runs, title=title)
        _show(figure)
    return Comparison(all_runs, text, figure)


def _show(figure: Any) -> None:
    """Display a figure in a notebook (and close it so it is not shown twice); no-op elsewhere."""
    try:
        from IPython import get_ipython
        from IPython.display import display

        if get_ipython() is not None:
            display(figure)
    except ImportError:  # pragma: no cover
        pass
    _plt().close(figure)
