"""The limits of the mock model and the spec grammar's value rules, in one place.

Every bound a spec, a fault, an option or a request body is checked against is here, so the
URL prefix, the ``X-Streamlab`` header, ``mock.script``/``mock.inject``, ``MockLLM(...)``, the CLI
and the playground all fail the same way: ``SpecError`` (a ``ValueError``) in Python, an
OpenAI-style JSON ``400`` on the wire. Imports run one way: ``_mock`` -> ``faults`` -> ``_events``
-> ``_spec`` (this module imports nothing of streamlab).

    limit              value        applies to
    -----------------  -----------  -------------------------------------------------------------
    MAX_TOKENS         100 000      tokens=N, a token index @N, max_tokens, max_completion_tokens
    MAX_SECONDS        86 400       every duration, scenario seconds: ttft itl jitter, stall@N=S,
                                    slowheaders=S, ratelimit=S (finite, 0 <= S <= 86 400)
    MAX_CONTEXT        10 000 000   context=N
    MAX_SEED           2**32 - 1    seed=N
    MAX_FIRST          1 000 000    first=N
    MAX_SPEC_CHARS     4 096        one spec (path prefix and header together)
    MAX_SPEC_ITEMS     64           items in one spec
    MAX_NUMBER_CHARS   32           one number in a spec (digits, '.', 'e', sign; no nan, inf, '_')
    MAX_TEXT           1 000        a fault's text (ErrorEvent.message)
    MAX_NAME           64           tools=NAME and a tool's function name ([A-Za-z0-9_-])
    MAX_ECHO           120          characters of a bad value an error message quotes
    MAX_MESSAGE        1 000        characters of any error message
    MAX_BODY           8 MiB        request body (413 above)
    MAX_JSON_DEPTH     64           nesting of the request body's JSON
    MAX_TOOLS          128          entries in ``tools``
    MAX_STOP           4            entries in ``stop``

A fault whose value is a word (``accel=absent``, ``transfer=close``) names its words in a
``Choice``; any other word is refused the same way.
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass

__all__ = ["SpecError", "Bound", "Choice", "LIMITS", "echo", "check_option", "check_name", "check_text", "split"]

MAX_TOKENS = 100_000
MAX_SECONDS = 86_400.0
MAX_CONTEXT = 10_000_000
MAX_SEED = 2**32 - 1
MAX_FIRST = 1_000_000
MAX_SPEC_CHARS = 4096
MAX_SPEC_ITEMS = 64
MAX_NUMBER_CHARS = 32
MAX_TEXT = 1000
MAX_NAME = 64
MAX_ECHO = 120
MAX_MESSAGE = 1000
MAX_BODY = 8 * 1024 * 1024
MAX_JSON_DEPTH = 64
MAX_TOOLS = 128
MAX_STOP = 4

LIMITS = {name: value for name, value in globals().items() if name.startswith("MAX_")}


class SpecError(ValueError):
    """A behaviour spec, fault or option that cannot be used (bad name, index or value)."""


def echo(value: object, limit: int = MAX_ECHO) -> str:
    """``repr`` of a bad value for an error message, cut to ``limit`` characters."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) > limit:
        text = f"{text[:limit]}... ({len(text)} characters)"
    return repr(text) if isinstance(value, str) else text


_INT = re.compile(r"[+-]?[0-9]+", re.ASCII)
_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)
_NAME = re.compile(r"[A-Za-z0-9_-]{1,%d}" % MAX_NAME, re.ASCII)


@dataclass(frozen=True)
class Bound:
    """A number's kind and its closed range, e.g. ``Bound(float, 0, 86400, "scenario seconds")``."""

    kind: type  # int or float
    low: float
    high: float
    unit: str

    def describe(self) -> str:
        kind = "a whole number" if self.kind is int else "a finite number"
        unit = f" of {self.unit}" if self.unit else ""
        return f"{kind}{unit} from {_plain(self.low)} to {_plain(self.high)}"

    def check(self, value: object, where: str) -> object:
        """Return ``value`` if it is a number of this kind within range, else raise ``SpecError``."""
        if isinstance(value, bool) or not isinstance(value, numbers.Integral if self.kind is int else numbers.Real):
            raise SpecError(f"{where} must be {self.describe()}, not {echo(value)}")
        if self.kind is float and not math.isfinite(value):
            raise SpecError(f"{where} must be {self.describe()}, not {value}")
        if not self.low <= value <= self.high:
            raise SpecError(f"{where} must be {self.describe()}, got {_plain(value)}")
        return value

    def parse(self, raw: str, where: str) -> object:
        """Parse the text of a number in a spec (strict: ASCII digits, no nan/inf/underscores)."""
        pattern = _INT if self.kind is int else _FLOAT
        if len(raw) > MAX_NUMBER_CHARS or not pattern.fullmatch(raw):
            raise SpecError(f"{where}: {echo(raw)} is not {self.describe()}")
        return self.check(int(raw) if self.kind is int else float(raw), where)


@dataclass(frozen=True)
class Choice:
    """A word out of a fixed set, e.g. ``Choice(("no", "yes", "absent"))`` for ``accel=absent``."""

    words: tuple[str, ...]

    def describe(self) -> str:
        return "one of " + ", ".join(self.words)

    def check(self, value: object, where: str) -> str:
        if not isinstance(value, str) or value not in self.words:
            raise SpecError(f"{where} must be {self.describe()}, not {echo(value)}")
        return value

    def parse(self, raw: str, where: str) -> str:
        return self.check(raw.lower(), where)


def _plain(value: float) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    return str(value)


TOKEN_INDEX = Bound(int, 0, MAX_TOKENS, "tokens")
TOKENS = Bound(int, 0, MAX_TOKENS, "tokens")
SECONDS = Bound(float, 0, MAX_SECONDS, "scenario seconds")
CONTEXT = Bound(int, 0, MAX_CONTEXT, "tokens")
SEED = Bound(int, 0, MAX_SEED, "")
FIRST = Bound(int, 0, MAX_FIRST, "requests")

# Options share the grammar with faults; they set timing and content. bool: on/off; str: a name.
OPTION_RULES: dict[str, Bound | type] = {
    "tokens": TOKENS, "ttft": SECONDS, "itl": SECONDS, "jitter": SECONDS, "seed": SEED,
    "echo": bool, "tools": str, "first": FIRST,
}
_ON, _OFF = ("", "1", "true", "on"), ("0", "false", "off")


def check_name(value: object, where: str) -> str:
    """A tool or function name: 1 to 64 of ``A-Z a-z 0-9 _ -``."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise SpecError(f"{where} must be 1 to {MAX_NAME} characters of A-Z, a-z, 0-9, '_' or '-', "
                        f"not {echo(value)}")
    return value


def check_option(name: str, value: object, *, raw: bool = False, where: str | None = None) -> object:
    """Validate one option (``raw=True``: ``value`` is the spec text after ``=``); return its value."""
    where = where or name
    rule = OPTION_RULES.get(name)
    if rule is None:
        raise SpecError(f"unknown option {echo(name)}; known: {', '.join(OPTION_RULES)}")
    if rule is bool:
        if raw:
            if value not in _ON + _OFF:
                raise SpecError(f"{where} is on or off, not {echo(value)}")
            return value in _ON
        if not isinstance(value, bool):
            raise SpecError(f"{where} is True or False, not {echo(value)}")
        return value
    if rule is str:
        if value in ("", "auto", "off"):
            return value
        return check_name(value, where)
    if raw:
        if value == "":
            raise SpecError(f"{where} needs a value, like {name}=1")
        return rule.parse(value, where)  # type: ignore[union-attr]
    return rule.check(value, where)  # type: ignore[union-attr]


def check_text(value: object, where: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise SpecError(f"{where} must be a string of at most {MAX_TEXT} characters, not {echo(value)}")
    return value


def split(spec: object) -> list[str]:
    """The items of a spec string, after the length checks."""
    if not isinstance(spec, str):
        raise SpecError(f"a spec is a string, not {echo(spec)}")
    if len(spec) > MAX_SPEC_CHARS:
        raise SpecError(f"the spec is {len(spec)} characters long; the limit is {MAX_SPEC_CHARS} "
                        f"(it starts {echo(spec, 60)})")
    items = [part.strip() for part in spec.replace(";", ",").split(",")]
    items = [item for item in items if item]
    if len(items) > MAX_SPEC_ITEMS:
        raise SpecError(f"the spec has {len(items)} items; the limit is {MAX_SPEC_ITEMS}")
    return items
