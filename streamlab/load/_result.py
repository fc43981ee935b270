"""What a load test measured: one record per finished stream, and its summaries.

No locust import here: a ``LoadResult`` is built from the JSON the Locust process wrote.
All times are wall clock (milliseconds for TTFT/ITL/E2E, seconds on the time axis): a load
test runs in real time, and ``sl.time_scale`` does not apply to it.

Concurrency, for the figure: how many streams were in flight when a stream started, counted
from the records themselves (each stream is an interval [start, start + E2E]), so it is the
same figure whether the streams came from one process or from several workers.
"""

from __future__ import annotations

import bisect
import json
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

from ._stream import OUTCOMES

__all__ = ["LoadResult", "percentiles"]

_QS = (50, 90, 99)


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default, ``statistics``' "inclusive")."""
    if len(sorted_values) == 1:
        return float(sorted_values[0])
    pos = (len(sorted_values) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return float(sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo))


def percentiles(values: Sequence[float], qs: Sequence[int] = _QS) -> dict[str, float | None]:
    """``{"p50": .., "p90": .., "p99": ..}`` of ``values`` (None each when there are none), rounded to 0.1."""
    data = sorted(v for v in values if v is not None)
    return {f"p{q}": (round(_quantile(data, q), 1) if data else None) for q in qs}


@dataclass
class LoadResult:
    """The streams of one ``streamlab.load.run`` (or ``streamlab load``): counts, percentiles, figures.

        result.streams                 # finished streams
        result.outcomes                # {"complete": 412, "cut mid-stream": 3, ...}
        result.ttft_ms, result.itl_ms  # {"p50": .., "p90": .., "p99": ..}, wall-clock ms
        print(result.summary())        # the table
        result.plot()                  # outcomes over time; TTFT/ITL percentiles against concurrency
        result.to_json()               # what ``streamlab load --json`` prints

    ``records`` holds one dict per stream (see ``streamlab.load._stream.Client``), each with the
    ``worker`` that ran it. Streams still in flight when the test stopped are not counted.
    """

    url: str
    users: int
    duration_s: float
    spawn_rate: float
    workers: int = 0
    records: list[dict[str, Any]] = field(default_factory=list, repr=False)
    worker_ids: list[str] = field(default_factory=list, repr=False)
    locust: dict[str, Any] = field(default_factory=dict, repr=False)   # Locust's own request/failure counts
    elapsed_s: float = 0.0         # wall clock of the whole run, start-up and shut-down included
    log: str = field(default="", repr=False)   # Locust's own log and stats tables

    # -- figures ------------------------------------------------------------------------------
    @property
    def streams(self) -> int:
        return len(self.records)

    @property
    def outcomes(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in self.records:
            counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
        order = {name: i for i, name in enumerate(OUTCOMES)}
        return dict(sorted(counts.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))

    @property
    def ttft_ms(self) -> dict[str, float | None]:
        return percentiles([r["ttft_ms"] for r in self.records])

    @property
    def itl_ms(self) -> dict[str, float | None]:
        return percentiles([g for r in self.records for g in r["itl_ms"]])

    @property
    def e2e_ms(self) -> dict[str, float | None]:
        return percentiles([r["e2e_ms"] for r in self.records])

    @property
    def span_s(self) -> float:
        """Wall-clock seconds from the first stream's start to the last one's end (Locust's ``-t``
        timer starts before the users do, so this is often a little shorter than ``duration_s``)."""
        if not self.records:
            return 0.0
        return round(max(r["start"] + r["e2e_ms"] / 1000 for r in self.records)
                     - min(r["start"] for r in self.records), 2)

    def by_worker(self) -> dict[str, int]:
        """Streams per Locust process (``"local"`` for a run without workers)."""
        counts: dict[str, int] = {}
        for r in self.records:
            counts[r.get("worker", "local")] = counts.get(r.get("worker", "local"), 0) + 1
        return counts

    def concurrency(self) -> list[int]:
        """For each record (in order): streams in flight when it started, itself included."""
        starts = sorted(r["start"] for r in self.records)
        ends = sorted(r["start"] + r["e2e_ms"] / 1000 for r in self.records)
        return [bisect.bisect_right(starts, r["start"]) - bisect.bisect_right(ends, r["start"])
                for r in self.records]

    # -- output -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"streams": self.streams, "outcomes": self.outcomes, "ttft_ms": self.ttft_ms,
                "itl_ms": self.itl_ms, "e2e_ms": self.e2e_ms, "users": self.users, "duration_s": self.duration_s,
                "span_s": self.span_s,
                "spawn_rate": self.spawn_rate, "workers": self.workers,
                "streams_per_process": sorted(self.by_worker().values(), reverse=True),
                "locust_requests": self.locust.get("requests")}

    def to_json(self) -> str:
        """One line of JSON: streams, outcomes, TTFT/ITL/E2E percentiles (ms), users, duration, workers."""
        return json.dumps(self.to_dict())

    def summary(self) -> str:
        """A plain-text table: streams per outcome, then TTFT / ITL / E2E p50, p90, p99 (wall-clock ms)."""
        lines = [f"{self.streams} streams, {self.users} users, {self.duration_s:g} s"
                 + (f", {self.workers} workers" if self.workers else "") + "  (wall clock)"]
        width = max([len(k) for k in self.outcomes] + [len("outcome")])
        lines.append(f"{'outcome'.ljust(width)}  {'streams':>8}")
        for name, n in self.outcomes.items():
            lines.append(f"{name.ljust(width)}  {n:>8}")
        lines.append("")
        lines.append(f"{'ms'.ljust(6)}{'p50':>10}{'p90':>10}{'p99':>10}")
        for label, pct in (("TTFT", self.ttft_ms), ("ITL", self.itl_ms), ("E2E", self.e2e_ms)):
            cells = "".join(f"{'-' if v is None else format(v, '.1f'):>10}" for v in pct.values())
            lines.append(f"{label.ljust(6)}{cells}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:  # IPython shows the table
        p.text(self.summary())

    def plot(self, *, bin_s: float = 1.0):
        """Two panels: finished streams per outcome over time (stacked, ``bin_s`` bins); TTFT and
        ITL p50/p99 against concurrency (streams in flight at each stream's start). Returns the figure."""
        plt = _pyplot()
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
        if not self.records:
            left.set_title("no finished streams")
            return fig
        t0 = min(r["start"] for r in self.records)
        ends = [r["start"] + r["e2e_ms"] / 1000 - t0 for r in self.records]
        nbins = max(1, math.ceil(max(ends) / bin_s))
        edges = [i * bin_s for i in range(nbins + 1)]
        bottom = [0] * nbins
        for name in self.outcomes:
            counts = [0] * nbins
            for r, end in zip(self.records, ends):
                if r["outcome"] == name:
                    counts[min(int(end // bin_s), nbins - 1)] += 1
            left.bar(edges[:-1], counts, width=bin_s, bottom=bottom, align="edge", label=name,
                     color=_COLOURS.get(name))
            bottom = [b + c for b, c in zip(bottom, counts)]
        left.set_xlabel("time since the first stream started (s, wall clock)")
        left.set_ylabel(f"streams finished per {bin_s:g} s")
        left.set_title("outcomes over time")
        left.legend(fontsize=8)

        conc = self.concurrency()
        levels = sorted(set(conc))
        step = max(1, math.ceil(len(levels) / 12))   # at most ~12 points per line
        groups: dict[int, list[dict]] = {}
        for r, c in zip(self.records, conc):
            groups.setdefault((c - 1) // step * step + 1, []).append(r)
        xs = sorted(groups)
        for key, label, colour in (("ttft", "TTFT", "tab:blue"), ("itl", "ITL", "tab:green")):
            for q, marker, style in ((50, "o", "-"), (99, "^", "--")):
                ys = []
                for x in xs:
                    vals = ([r["ttft_ms"] for r in groups[x]] if key == "ttft"
                            else [g for r in groups[x] for g in r["itl_ms"]])
                    ys.append(percentiles(vals, (q,))[f"p{q}"])
                right.plot(xs, [math.nan if y is None else y for y in ys], style, marker=marker, color=colour,
                           label=f"{label} p{q}")
        right.set_xlabel("streams in flight at the stream's start")
        right.set_ylabel("ms (wall clock)")
        right.set_title("TTFT and ITL against concurrency")
        right.legend(fontsize=8)
        fig.tight_layout()
        return fig


def _pyplot():
    import matplotlib

    try:
        from IPython import get_ipython
        interactive = get_ipython() is not None
    except ImportError:  # pragma: no cover
        interactive = False
    if not interactive and "inline" not in matplotlib.get_backend().lower():
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


_COLOURS = {"complete": "tab:green", "cut mid-stream": "tab:red", "silent truncation": "tab:orange",
            "stalled / timed out": "tab:purple", "http error": "tab:brown", "error before stream": "tab:gray",
            "truncated by length": "tab:olive"}
