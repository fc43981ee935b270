"""The interactive playground (shown in ``notebooks/00_start_here``).

``playground()`` returns an ipywidgets panel: sliders for tokens, TTFT and ITL,
a fault dropdown built from ``streamlab.faults.REGISTRY`` with its token index
and value, the client's read timeout, and a hop dropdown built from the proxy
fault registry. Run redraws the timeline and the outcome in place.

Every control is checked before a run, with the same rules the mock applies to
a URL spec (``faults.validate``, ``hops.from_spec``); what is wrong is said in
the panel, in red, and Run stays off until it is fixed. Deliberate choices:

* the value and token-index boxes follow the chosen fault: switched off when
  the fault takes none, reset to the fault's default when the fault changes (a
  stall's 8 s never silently becomes ``ratelimit=8``), labelled with the
  fault's own setting name (``seconds``, ``retry_after``, ``tokens``);
* a token index at or past the end of the answer is an error: the fault would
  never fire and the run would look "complete";
* a widget panel is only a line of text (``VBox(children=...``) until its cell
  runs in a live kernel; the panel's plain-text form says so instead.

``run_scenario(...)`` is the same run without widgets; it returns a
``ScenarioResult`` (run, figure, what the model sent), so a headless kernel
(nbval) gets the same figure and outcome. It raises ``faults.SpecError`` (a
``ValueError``) for settings the panel would refuse.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, fields
from typing import Any

from . import faults as _faults
from ._mock import JournalEntry, MockLLM
from ._recorder import Run, record

__all__ = ["playground", "run_scenario", "ScenarioResult", "check_scenario"]

# value a fault's box is reset to when the fault is picked (scenario units), where the fault has no default
VALUE_DEFAULTS = {"stall": 5.0, "slowheaders": 5.0, "context": 16, "ratelimit": 1.0}
HOP_VALUE_DEFAULTS = {"read_timeout": "3", "upstream_send_timeout": "3", "send_timeout": "3", "idle_timeout": "3",
                      "deadline": "3", "kill_after": "3", "buffering": "on", "chunked": "off",
                      "cut_after_bytes": "2k", "reset_after_bytes": "2k"}
PLAIN_TEXT = ("streamlab playground: a widget panel. JupyterLab shows its controls once this cell has run "
              "in a live kernel; run the cell (or use sl.run_scenario(...) for the same run without widgets).")


@dataclass
class ScenarioResult:
    run: Run
    sent: JournalEntry | None
    figure: Any
    hop: str = "direct"

    def __repr__(self) -> str:
        sent = f"{self.sent.tokens_sent} tokens sent, ended: {self.sent.ended}" if self.sent else "nothing sent"
        return f"{self.run!r}\nmodel side: {sent}\npath: {self.hop}"


def _none(name: str | None) -> bool:
    return name in ("", "none", None)


def _fault_from(name: str, at: int, value: float | None) -> _faults.Fault | None:
    """The fault for the panel's (name, at, value), checked by ``faults.validate``; index/value only if it takes them."""
    if _none(name):
        return None
    cls = _faults.REGISTRY.get(name)
    if cls is None:
        raise _faults.SpecError(f"unknown model fault {name!r}; known: {', '.join(_faults.names())}")
    if cls.value_arg and isinstance(value, float) and value.is_integer() and "int" in str(
            {f.name: f.type for f in fields(cls)}[cls.value_arg]):
        value = int(value)  # the panel's number box holds floats; context=16.0 means 16 tokens
    found, _ = _faults.validate(name, value if cls.value_arg else None, at=int(at) if cls.index_arg else None)
    return found[0]


def _hop_spec(hop: str, hop_value: Any) -> str | None:
    if _none(hop):
        return None
    from . import hops

    cls = hops.REGISTRY.get(hop)
    if cls is None:
        raise _faults.SpecError(f"unknown proxy fault {hop!r}; known: {', '.join(hops.names())}")
    if cls.value_arg is None or hop_value in (None, ""):
        spec = hop
    elif isinstance(hop_value, (int, float)) and not isinstance(hop_value, bool):
        spec = f"{hop}={hop_value:g}"
    else:
        spec = f"{hop}={str(hop_value).strip()}"
    hops.from_spec(spec)  # raises SpecError naming what is wrong
    return spec


def check_scenario(*, tokens: int = 40, ttft: float = 0.2, itl: float = 0.05, fault: str = "none", at: int = 10,
                   value: float | None = None, timeout: float | None = 5.0, hop: str = "none",
                   hop_value: Any = None) -> list[str]:
    """Everything wrong with these settings, one sentence each (empty: the scenario can run)."""
    problems = []
    for name, setting in (("tokens", tokens), ("ttft", ttft), ("itl", itl)):
        try:
            _faults.validate(name, setting)
        except _faults.SpecError as exc:
            problems.append(str(exc))
    if isinstance(tokens, int) and tokens < 1:
        problems.append("tokens must be at least 1")
    try:
        chosen = _fault_from(fault, at, value)
    except _faults.SpecError as exc:
        problems.append(str(exc))
    else:
        index = getattr(chosen, chosen.index_arg) if chosen is not None and chosen.index_arg else None
        if index is not None and isinstance(tokens, int) and index >= tokens:
            problems.append(f"{chosen.spec()} never fires: the answer has only {tokens} tokens "
                            f"(token indices 0 to {tokens - 1})")
    if timeout is not None and not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
        problems.append(f"client timeout must be a number of scenario seconds above 0 (0 or empty: none), "
                        f"got {timeout!r}")
    try:
        _hop_spec(hop, hop_value)
    except _faults.SpecError as exc:
        problems.append(str(exc))
    return problems


def _hop_names() -> list[str]:
    try:
        from . import hops
    except ImportError:
        return []
    names = getattr(hops, "names", None)
    return [n for n in names() if n != "noop"] if callable(names) else []


def run_scenario(*, tokens: int = 40, ttft: float = 0.2, itl: float = 0.05, fault: str = "none", at: int = 10,
                 value: float | None = None, timeout: float | None = 5.0, hop: str = "none",
                 hop_value: Any = None, plot: bool = True) -> ScenarioResult:
    """Run one streamed request against a fresh mock (and optional hop) and record it.

    Durations are scenario seconds. ``fault``/``at``/``value`` pick a model fault
    (``streamlab.faults.names()``; ``at`` and ``value`` are used only by faults that
    take them); ``hop``/``hop_value`` a proxy fault by name (``streamlab.hops.names()``,
    value as in a hop spec: ``30``, ``500ms``, ``4k``, ``on``); ``timeout`` is the
    client's read timeout (None: none). Bad settings raise ``faults.SpecError``.
    """
    import openai

    from ._plots import _show, plot_runs
    from ._timescale import to_real

    problems = check_scenario(tokens=tokens, ttft=ttft, itl=itl, fault=fault, at=at, value=value, timeout=timeout,
                              hop=hop, hop_value=hop_value)
    if problems:
        raise _faults.SpecError("; ".join(problems))
    chosen = _fault_from(fault, at, value)
    spec = _hop_spec(hop, hop_value)
    with MockLLM(tokens=tokens, ttft=ttft, itl=itl) as mock:
        base = mock.base_url_for(*(x for x in [chosen] if x))
        path = "direct"
        proxy = None
        try:
            if spec is not None:
                from ._proxy import Proxy

                proxy = Proxy(upstream=mock.url, faults=[spec]).start()
                base = base.replace(mock.url, proxy.url)
                path = f"via proxy: {spec}"
            client = openai.OpenAI(base_url=base, api_key="unused", max_retries=0,
                                   timeout=to_real(timeout) if timeout else None)
            try:
                run = record(lambda: client.chat.completions.create(
                    model="streamlab-mock", stream=True,
                    messages=[{"role": "user", "content": "Explain the streaming cutoff."}]),
                    expected=tokens, label=str(chosen or "no fault"), itl=itl or None)
            finally:
                client.close()
        finally:
            if proxy is not None:
                proxy.stop()
        sent = mock.journal.last
    figure = None
    if plot:
        figure = plot_runs(run, title=f"{chosen or 'no fault'} ({path})")
        _show(figure)
    return ScenarioResult(run, sent, figure, path)


def _default_value(name: str) -> float | None:
    cls = _faults.REGISTRY.get(name)
    if cls is None or cls.value_arg is None:
        return None
    if name in VALUE_DEFAULTS:
        return VALUE_DEFAULTS[name]
    default = {f.name: f.default for f in fields(cls)}.get(cls.value_arg, MISSING)
    return None if default is MISSING or default is None else default


def playground(**initial: Any):
    """An ipywidgets panel around ``run_scenario``; ``initial`` presets its controls (same names)."""
    import ipywidgets as w
    from IPython.display import display

    class Panel(w.VBox):
        """The playground's box; ``controls``, ``message``, ``run_button``, ``output``, ``result`` for code and tests."""

        def _repr_mimebundle_(self, **kwargs: Any) -> Any:
            data = super()._repr_mimebundle_(**kwargs)
            if isinstance(data, dict):
                data["text/plain"] = PLAIN_TEXT
            return data

        def __repr__(self) -> str:
            return PLAIN_TEXT

    style = {"description_width": "110px"}
    fault_name = initial.get("fault", "none")
    hop_names = _hop_names()
    c = {
        "tokens": w.IntSlider(value=initial.get("tokens", 40), min=1, max=400, description="tokens", style=style),
        "ttft": w.FloatSlider(value=initial.get("ttft", 0.2), min=0, max=5, step=0.05, description="TTFT (s)",
                              style=style),
        "itl": w.FloatSlider(value=initial.get("itl", 0.05), min=0, max=1, step=0.01, description="ITL (s)",
                             style=style),
        "timeout": w.FloatText(value=initial.get("timeout", 5.0), description="client timeout", style=style),
        "fault": w.Dropdown(options=["none"] + _faults.names(), value=fault_name, description="model fault",
                            style=style),
        "at": w.IntText(value=initial.get("at", 10), description="at token", style=style),
        "value": w.FloatText(value=initial.get("value", _default_value(fault_name) or 0.0), description="value",
                             style=style),
        "hop": w.Dropdown(options=["none"] + hop_names, value=initial.get("hop", "none"), description="proxy fault",
                          style=style, disabled=not hop_names),
        "hop_value": w.Text(value=str(initial.get("hop_value", "")), description="proxy value", style=style,
                            placeholder="30, 500ms, 4k, on"),
    }
    button = w.Button(description="Run", button_style="primary", icon="play")
    message = w.HTML()
    out = w.Output()
    panel = Panel([w.HBox([w.VBox([c["tokens"], c["ttft"], c["itl"], c["timeout"]]),
                           w.VBox([c["fault"], c["at"], c["value"], c["hop"], c["hop_value"]])]),
                   w.HBox([button, message]), out])
    panel.controls, panel.message, panel.run_button, panel.output, panel.result = c, message, button, out, None

    def settings() -> dict[str, Any]:
        cls = _faults.REGISTRY.get(c["fault"].value)
        return dict(tokens=c["tokens"].value, ttft=c["ttft"].value, itl=c["itl"].value, fault=c["fault"].value,
                    at=c["at"].value, value=c["value"].value if cls is not None and cls.value_arg else None,
                    timeout=c["timeout"].value or None, hop=c["hop"].value, hop_value=c["hop_value"].value or None)

    def follow_fault() -> None:
        cls = _faults.REGISTRY.get(c["fault"].value)
        c["at"].disabled = cls is None or cls.index_arg is None
        c["value"].disabled = cls is None or cls.value_arg is None
        c["value"].description = cls.value_arg if cls is not None and cls.value_arg else "value"
        from . import hops

        hop_cls = hops.REGISTRY.get(c["hop"].value)
        c["hop_value"].disabled = hop_cls is None or hop_cls.value_arg is None
        c["hop_value"].description = hop_cls.value_arg if hop_cls is not None and hop_cls.value_arg else "proxy value"

    def check(_: Any = None) -> list[str]:
        problems = check_scenario(**settings())
        message.value = ("" if not problems else "<span style='color:#c0392b'>" + "<br>".join(
            _html(p) for p in problems) + "</span>")
        button.disabled = bool(problems)
        return problems

    def on_fault(change: dict) -> None:
        default = _default_value(change["new"])
        if default is not None:
            c["value"].value = default  # a leftover value of the previous fault is never carried over
        follow_fault()
        check()

    def on_hop(change: dict) -> None:
        c["hop_value"].value = HOP_VALUE_DEFAULTS.get(change["new"], "") if change["new"] != "none" else ""
        follow_fault()
        check()

    def on_click(_: Any) -> None:
        if check():
            return
        button.disabled = True
        out.clear_output(wait=True)
        with out:
            try:
                panel.result = run_scenario(**settings())
                print(panel.result)
            except Exception as exc:  # noqa: BLE001 - shown to the user in the panel
                message.value = f"<span style='color:#c0392b'>{_html(type(exc).__name__)}: {_html(str(exc))}</span>"
            finally:
                button.disabled = False

    c["fault"].observe(on_fault, names="value")
    c["hop"].observe(on_hop, names="value")
    for name, control in c.items():
        if name not in ("fault", "hop"):
            control.observe(check, names="value")
    button.on_click(on_click)
    follow_fault()
    check()
    display(panel)
    return panel


def _html(text: str) -> str:
    import html

    return html.escape(text)
