"""What ``diagnose`` returns: the verdict, the findings, a text report with a timeline, JSON, a figure."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ._classify import _headers_note, _tolerance
from ._core import DEFAULTS, PRIORITY, Finding, Observation


# --------------------------------------------------------------------------- the report


@dataclass
class Report:
    """What ``diagnose`` found: ``verdict``, ``findings``, the probes' ``observations``."""

    url: str
    kind: str
    scale: float
    verdict: str
    findings: list[Finding]
    observations: dict[str, Any]
    main: Finding | None = None
    took: float = 0.0

    @property
    def cause(self) -> str:
        return self.main.cause if self.main else "ok"

    @property
    def layer(self) -> str:
        return self.main.layer if self.main else "model"

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "findings": [f.to_dict() for f in self.findings]}

    def to_json(self, **kw: Any) -> str:
        return json.dumps(self.to_dict(), **kw)

    def figure(self, width: int = 64) -> str:
        """A text timeline of each probe: one column per time slice; | a read, . silence, X a cut."""
        rows = [(k, o) for k, o in self.observations.items() if isinstance(o, Observation)]
        rows += [(o.label, o) for o in self.observations.get("concurrency") or []]
        if not rows:
            return ""
        sent = self.observations.get("model_sent") or []
        span = max([o.elapsed for _, o in rows] + sent) or 1.0
        lines = [f"  {'':<14}0 s{'':{width - 6}}{span:.1f} s"]
        if sent:
            cells = [" "] * width
            for t in sent:
                cells[max(0, min(width - 1, int(t / span * width)))] = "|"
            lines.append(f"  {'model sent':<14}{''.join(cells)}  (the mock's journal)")
        for name, o in rows:
            cells = [" "] * width
            end = o.elapsed
            for i in range(width):
                t = (i + 0.5) * span / width
                if t <= end:
                    cells[i] = "."
            for t, _ in o.reads:
                cells[min(width - 1, int(t / span * width))] = "|"
            mark = {"clean": "]", "cut": "X", "reset": "X", "timeout": "?"}.get(o.ended, "!")
            if o.status is not None and o.status >= 400:
                mark = "E"
            cells[min(width - 1, int(end / span * width))] = mark
            status = "" if o.status in (None, 200) else f" {o.status}"
            lines.append(f"  {name[:14]:<14}{''.join(cells)}  {o.ended}{status}")
        lines.append("  (| a read, . waiting, ] clean end, X cut or reset, E HTTP error, ? still silent)")
        return "\n".join(lines)

    def text(self) -> str:
        out = [f"streamlab diagnose {self.url}  ({'OpenAI-compatible' if self.kind == 'openai' else 'SSE'}, "
               f"times in scenario seconds, time_scale {self.scale:g})", "", f"verdict: {self.verdict}", ""]
        main = self.observations.get("timeline")
        if isinstance(main, Observation):
            s = main.summary()
            out.append(f"stream: status {s['status']}, ended {s['ended']}"
                       + (f" ({main.error})" if main.error else "")
                       + f", {s['tokens']} tokens / {s['events']} events / {s['reads']} reads, "
                         f"TTFB {s['ttfb']} s, TTFT {s['ttft']} s, max gap {s['max_gap']} s, "
                         f"silence before end {s['silence_before_end']} s, end {s['elapsed']} s")
            out.append(f"end markers: finish_reason {main.finish_reason}, [DONE] {'yes' if main.done else 'no'}")
            if main.ended in ("cut", "reset") or main.status in (504, 524):
                silence = main.silence_before_end if main.ended in ("cut", "reset") else main.elapsed
                marks = []
                for value, what, kind in DEFAULTS:
                    measured = silence if kind == "idle" else main.elapsed
                    near = abs(measured - value) <= _tolerance(value, self.scale)
                    marks.append(f"{what}{' <- matches' if near else ''}")
                out.append(f"silence before the end {silence:.1f} s, elapsed {main.elapsed:.1f} s; defaults: "
                           + ", ".join(marks))
            out.append(f"headers: {_headers_note(main) or '-'}")
            out.append("")
        out.append("findings:")
        for f in self.findings:
            out.append(f"  [{f.step}] {f.cause} at {f.layer}: {f.evidence}")
        fig = self.figure()
        if fig:
            out += ["", "timeline:", fig]
        return "\n".join(out)

    def __str__(self) -> str:
        return self.text()

    def plot(self, ax: Any = None):
        """A matplotlib figure of the same timeline: one lane per probe, a tick per read, the end marked."""
        import matplotlib.pyplot as plt

        rows = [(k, o) for k, o in self.observations.items() if isinstance(o, Observation)]
        rows += [(o.label, o) for o in self.observations.get("concurrency") or []]
        if ax is None:
            fig, ax = plt.subplots(figsize=(8, 0.5 + 0.45 * max(1, len(rows))))
        for y, (name, o) in enumerate(reversed(rows)):
            ax.hlines(y, o.t_headers or 0.0, o.elapsed, color="#ccc", lw=1)
            ax.plot([t for t, _ in o.reads], [y] * len(o.reads), "|", color="#457b9d", ms=12)
            bad = o.ended != "clean" or (o.status or 200) >= 400
            ax.plot([o.elapsed], [y], "x" if bad else "o", color="#e63946" if bad else "#2a9d8f", ms=9)
        ax.set_yticks(range(len(rows)), [name for name, _ in reversed(rows)])
        ax.set_xlabel("scenario seconds since the request")
        ax.set_title(self.verdict[:90], fontsize=9)
        return ax.figure

    def _repr_html_(self) -> str:
        import html

        return f"<pre>{html.escape(self.text())}</pre>"


def _pick(findings: list[Finding]) -> Finding | None:
    """The verdict: the model's journal when it found something (server-side truth beats inference),
    else the first non-ok finding in ``PRIORITY`` order, else the first finding."""
    bad = [f for f in findings if f.cause != "ok"]
    if not bad:
        return findings[0] if findings else None
    journal = [f for f in bad if f.step == "model_journal"]
    return journal[0] if journal else min(bad, key=lambda f: PRIORITY.index(f.cause))
