"""The interactive playground (shown in ``notebooks/00_start_here``).

``playground()`` returns an ipywidgets panel: sliders for tokens, TTFT and ITL,
a fault dropdown built from ``streamlab.faults.REGISTRY`` with its token index
and value, the client's read timeout, and a hop dropdown built from the proxy
fault registry when ``streamlab.hops`` is available. Run redraws the timeline
and the outcome in place.

``run_scenario(...)`` is the same run without widgets; it returns a
``ScenarioResult`` (run, figure, what the model sent), so a headless kernel
(nbval) gets the same figure and outcome.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import faults as _faults
from ._mock import JournalEntry, MockLLM
from ._recorder import Run, record

__all__ = ["playground", "run_scenario", "ScenarioResult"]


@dataclass
class ScenarioResult:
    run: Run
    sent: JournalEntry | None
    figure: Any
    hop: str = "direct"

    def __repr__(self) -> str:
        sent = f"{self.sent.tokens_sent} tokens sent, ended: {self.sent.ended}" if self.sent else "nothing sent"
        return f"{self.run!r}\nmodel side: {sent}\npath: {self.hop}"


def _fault_from(name: str, at: int, value: float | None) -> _faults.Fault | None:
    if name in ("", "none", None):
        return None
    cls = _faults.REGISTRY[name]
    kwargs: dict[str, Any] = {}
    if cls.index_arg:
        kwargs[cls.index_arg] = int(at)
    if cls.value_arg and value is not None:
        kwargs[cls.value_arg] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ValueError(f"fault {name!r} needs a value ({cls.value_arg}): {exc}") from None


def _hop_names() -> list[str]:
    try:
        from . import hops
    except ImportError:
        return []
    names = getattr(hops, "names", None)
    return list(names()) if callable(names) else []


def run_scenario(*, tokens: int = 40, ttft: float = 0.2, itl: float = 0.05, fault: str = "none", at: int = 10,
                 value: float | None = None, timeout: float | None = 5.0, hop: str = "none",
                 hop_value: float | None = None, plot: bool = True) -> ScenarioResult:
    """Run one streamed request against a fresh mock (and optional hop) and record it.

    Durations are scenario seconds. ``fault``/``at``/``value`` pick a model fault
    (``streamlab.faults.names()``); ``hop``/``hop_value`` a proxy fault by name
    (``streamlab.hops.names()``); ``timeout`` is the client's read timeout.
    """
    import openai

    from ._plots import _show, plot_runs
    from ._timescale import to_real

    chosen = _fault_from(fault, at, value)
    with MockLLM(tokens=tokens, ttft=ttft, itl=itl) as mock:
        base = mock.base_url_for(*(x for x in [chosen] if x))
        path = "direct"
        proxy = None
        try:
            if hop not in ("", "none", None):
                from . import hops
                from ._proxy import Proxy

                spec = hop if hop_value is None or hops.REGISTRY[hop].value_arg is None else f"{hop}={hop_value:g}"
                proxy = Proxy(upstream=mock.url, faults=[spec]).start()
                base = base.replace(mock.url, proxy.url)
                path = f"via proxy: {hop}"
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


def playground(**initial: Any):
    """An ipywidgets panel around ``run_scenario``; ``initial`` presets its controls."""
    import ipywidgets as w
    from IPython.display import display

    style = {"description_width": "110px"}
    tokens = w.IntSlider(value=initial.get("tokens", 40), min=1, max=400, description="tokens", style=style)
    ttft = w.FloatSlider(value=initial.get("ttft", 0.2), min=0, max=5, step=0.05, description="TTFT (s)", style=style)
    itl = w.FloatSlider(value=initial.get("itl", 0.05), min=0, max=1, step=0.01, description="ITL (s)", style=style)
    fault = w.Dropdown(options=["none"] + _faults.names(), value=initial.get("fault", "none"),
                       description="model fault", style=style)
    at = w.IntSlider(value=initial.get("at", 10), min=0, max=400, description="at token", style=style)
    value = w.FloatText(value=initial.get("value", 2.0), description="fault value", style=style)
    timeout = w.FloatText(value=initial.get("timeout", 5.0), description="client timeout", style=style)
    hop_names = _hop_names()
    hop = w.Dropdown(options=["none"] + hop_names, value=initial.get("hop", "none"), description="proxy fault",
                     style=style, disabled=not hop_names)
    hop_value = w.FloatText(value=initial.get("hop_value", 1.0), description="proxy value", style=style)
    button = w.Button(description="Run", button_style="primary", icon="play")
    out = w.Output()

    def on_click(_: Any) -> None:
        button.disabled = True
        out.clear_output(wait=True)
        with out:
            try:
                result = run_scenario(tokens=tokens.value, ttft=ttft.value, itl=itl.value, fault=fault.value,
                                      at=at.value, value=value.value, timeout=timeout.value or None,
                                      hop=hop.value, hop_value=hop_value.value)
                print(result)
            except Exception as exc:  # noqa: BLE001 - shown to the user in the panel
                print(f"{type(exc).__name__}: {exc}")
            finally:
                button.disabled = False

    button.on_click(on_click)
    panel = w.VBox([w.HBox([w.VBox([tokens, ttft, itl, timeout]), w.VBox([fault, at, value, hop, hop_value])]),
                    button, out])
    display(panel)
    return panel
