"""Timing pictures and the side-by-side table (taught in ``notebooks/00_start_here``).

``plot_runs(*runs)``      one panel per run: cumulative tokens received over time,
                          a rug of arrivals, the expected total dashed, the cut or
                          stall marked.
``plot_hops(run, hops)``  a swim lane per hop (model, proxy, client): every send and
                          arrival as a tick, so a hold-back or a cut shows at its hop.
``compare(broken, fixed)``  a small table and the figure for a broken/fixed pair.

Tables print times with decimals and a unit ("0.412 s"); the notebooks' sanitize
file replaces exactly those, so outcomes and counts are compared by nbval while
timings are not.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from ._recorder import Outcome, Run
from ._text import count_tokens
from ._timeline import HopLog
from ._timescale import current_time_scale

__all__ = ["plot_runs", "plot_hops", "compare", "Comparison", "table"]

COLORS = {
    Outcome.COMPLETE: "#2a9d8f", Outcome.TRUNCATED_BY_LENGTH: "#e9c46a", Outcome.CUT_MID_STREAM: "#e63946",
    Outcome.SILENT_TRUNCATION: "#f4a261", Outcome.STALLED: "#9d4edd", Outcome.BUFFERED: "#457b9d",
    Outcome.ERROR_BEFORE_STREAM: "#6c757d", Outcome.CLIENT_ABORTED: "#adb5bd",
}


def _t(value: float | None) -> str:
    """A measured duration in scenario seconds, always with decimals (the sanitizer's hook)."""
    if value is None:
        return "-"
    return f"{value:.3f} s"


def table(runs: Sequence[Run]) -> str:
    """A plain-text table of runs: outcome, tokens got/expected, error, TTFT, ITL p50/p99, E2E, bytes."""
    header = ("run", "outcome", "tokens", "error", "TTFT", "ITL p50", "ITL p99", "E2E")
    rows = [header]
    for i, run in enumerate(runs):
        got = f"{run.tokens}/{run.expected}" if run.expected is not None else str(run.tokens)
        rows.append((run.label or f"run {i + 1}", str(run.outcome), got, run.error_class,
                     _t(run.ttft), _t(run.itl_p50), _t(run.itl_p99), _t(run.e2e)))
    # Timing columns are fixed-width so sanitized text lines up the same way on every run.
    widths = [max(len(r[i]) for r in rows) if i < 4 else 10 for i in range(len(header))]
    lines = []
    for row in rows:
        cells = [c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


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


def _draw_run(ax: Any, run: Run, *, title: str | None = None) -> None:
    times = run.relative()
    color = COLORS.get(run.outcome, "black")
    counts = list(itertools.accumulate(count_tokens(text) for text in run.texts))  # a chunk may hold many tokens
    got = counts[-1] if counts else 0
    if times:
        ax.step([0.0] + times, [0] + counts, where="post", color=color, lw=2)
        ax.plot(times, [0] * len(times), "|", color=color, ms=10, alpha=0.6)
    end = run.e2e
    if run.expected:
        ax.axhline(run.expected, ls="--", color="grey", lw=1)
        ax.text(0, run.expected, " expected", va="bottom", fontsize=8, color="grey")
    if run.error is not None or run.outcome in (Outcome.SILENT_TRUNCATION, Outcome.CLIENT_ABORTED):
        ax.plot([end], [got], "X", color=color, ms=12)
        ax.annotate(run.error_class if run.error is not None else str(run.outcome), (end, got),
                    textcoords="offset points", xytext=(-5, 8), ha="right", fontsize=8, color=color)
    # the longest silence, when it is much longer than the typical gap
    gaps = [(b - a, a, b) for a, b in zip([0.0] + times, times + ([end] if run.error is not None else []))]
    if len(gaps) >= 2:
        typical = sorted(g for g, _, _ in gaps)[len(gaps) // 2]
        longest = max(gaps)
        if longest[0] > 5 * max(typical, 1e-9) and longest[0] > 0.05 * max(end, 1e-9):
            ax.axvspan(longest[1], longest[2], color=color, alpha=0.12)
            ax.text((longest[1] + longest[2]) / 2, 0.5 * max(counts or [1]), "silence", ha="center",
                    fontsize=8, color=color)
    ax.set_xlim(left=0, right=max(end, 1e-6) * 1.05)
    ax.set_ylim(bottom=0, top=max(run.expected or 0, got, 1) * 1.15)
    ax.set_title(title or f"{run.label or 'run'}: {run.outcome}", fontsize=10, color=color)
    ax.set_xlabel("scenario seconds since request" + ("" if current_time_scale() == 1 else
                                                     f" (x{current_time_scale():g} wall clock)"))
    ax.set_ylabel("tokens received")
    ax.grid(alpha=0.3)


def plot_runs(*runs: Run, title: str | None = None, sharex: bool = True):
    """One panel per run, side by side: cumulative tokens over time with cuts and silences marked."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(runs), figsize=(5.2 * len(runs), 3.4), sharex=sharex, squeeze=False)
    for ax, run in zip(axes[0], runs):
        _draw_run(ax, run)
    if sharex and runs:  # each panel set its own right edge; on a shared axis the last one would win
        axes[0][0].set_xlim(left=0, right=max(max(run.e2e, 1e-6) for run in runs) * 1.05)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
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
    fig, ax = plt.subplots(figsize=(9, 0.9 + 0.8 * len(lanes)))
    end = 0.0
    for row, (label, ticks, marks, color) in enumerate(reversed(lanes)):
        xs = [(t - start) / scale for t in ticks]
        ax.plot(xs, [row] * len(xs), "|", color=color, ms=16, mew=1.5)
        for t, note in marks:
            x = (t - start) / scale
            ax.plot([x], [row], "X", color="#e63946", ms=11)
            short = note if len(note) <= 34 else note[:32] + "…"
            ax.annotate(short, (x, row), textcoords="offset points", xytext=(-4, 9), ha="right", fontsize=8,
                        color="#e63946")
            end = max(end, x)
        end = max([end] + xs)
    ax.set_yticks(range(len(lanes)), [label for label, *_ in reversed(lanes)])
    ax.set_ylim(-0.7, len(lanes) - 0.3)
    ax.set_xlim(left=0, right=max(end, 1e-6) * 1.12)
    ax.set_xlabel("scenario seconds since the request")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(title or "what each hop saw")
    fig.tight_layout()
    return fig


@dataclass
class Comparison:
    """A broken/fixed pair (or more runs): ``.table`` text, ``.figure``, and the runs."""

    runs: list[Run]
    table: str
    figure: Any = None

    def __repr__(self) -> str:
        return self.table

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
