"""Rules and rule sets: which faults a request runs through, and the configuration API of both engines.

``as_rules`` turns faults, ``Rule``s or spec strings into rules; ``chain_for`` picks
the chain of one request path (one fault per type, the last added wins, sorted by
stage); ``RuleSet`` holds a hop's rules; ``Configurable`` is what the embedded
proxy and real nginx share (``rules``, ``faults``, ``chain()``, ``inject()``).
"""

from __future__ import annotations

import threading
from typing import Any, Iterable

from ._hopbase import Fault, Injection, Noop, Rule

__all__ = ["as_rules", "chain_for", "RuleSet", "Configurable", "profile_rules"]


def as_rules(faults: Iterable[Any], path_prefix: str = "/") -> tuple[Rule, ...]:
    """Faults, Rules or spec strings -> Rules (``path_prefix`` for those that are not Rules yet)."""
    if isinstance(faults, (Fault, Rule, str)):
        faults = [faults]
    out: list[Rule] = []
    for item in faults:
        if isinstance(item, Rule):
            out.append(item)
        elif isinstance(item, Fault):
            out.append(Rule(fault=item, path_prefix=path_prefix))
        elif isinstance(item, str):
            from .hops import parse

            out.extend(Rule(fault=f, path_prefix=path_prefix) for f in parse(item))
        else:
            raise TypeError(f"expected a Fault, a Rule or a spec string, got {item!r}")
    return tuple(out)


def chain_for(rules: Iterable[Rule], path: str) -> list[Fault]:
    """The faults that apply to ``path``: one per type (the last added wins), sorted by stage."""
    chosen: dict[type, Fault] = {}
    for rule in rules:
        if rule.applies(path):
            chosen.pop(type(rule.fault), None)
            chosen[type(rule.fault)] = rule.fault
    return sorted(chosen.values(), key=lambda f: f.stage)


class RuleSet:
    """The rules of one hop, shared by the embedded proxy and the nginx runner."""

    def __init__(self, rules: Iterable[Rule] = ()) -> None:
        self._lock = threading.Lock()
        self._rules: tuple[Rule, ...] = tuple(rules)

    @property
    def rules(self) -> tuple[Rule, ...]:
        return self._rules

    def add(self, rules: tuple[Rule, ...]) -> None:
        with self._lock:
            self._rules = self._rules + rules

    def remove(self, rules: tuple[Rule, ...]) -> None:
        with self._lock:
            current = list(self._rules)
            for rule in rules:
                for i in range(len(current) - 1, -1, -1):  # the most recent equal rule
                    if current[i] is rule:
                        del current[i]
                        break
            self._rules = tuple(current)


class Configurable:
    """The configuration API every proxy engine shares (the embedded proxy and real nginx).

    Needs ``self._ruleset``; an engine that must act on a change (nginx reloads) overrides
    ``_apply_rules``.
    """

    _ruleset: RuleSet

    @property
    def rules(self) -> tuple[Rule, ...]:
        """Every rule in force, in the order added (profile first)."""
        return self._ruleset.rules

    @property
    def faults(self) -> list[Fault]:
        """The chain a request to ``/`` gets (after the Noop), in stage order."""
        return chain_for(self.rules, "/")

    def chain(self, path: str = "/") -> list[Fault]:
        """The faults a request to ``path`` runs through, Noop first."""
        return [Noop(), *chain_for(self.rules, path)]

    def inject(self, *faults: Any, path_prefix: str = "/") -> Injection:
        """Add faults now; use ``with proxy.inject(...):`` to remove them on exit (also on error)."""
        rules = as_rules(faults, path_prefix)
        self._check_rules(rules)
        self._ruleset.add(rules)
        try:
            self._apply_rules()
        except BaseException:
            self._ruleset.remove(rules)
            raise
        return Injection(self, rules)

    def _remove_rules(self, rules: tuple[Rule, ...]) -> None:
        self._ruleset.remove(rules)
        self._apply_rules()

    def _check_rules(self, rules: tuple[Rule, ...]) -> None:
        """Refuse rules this engine cannot carry out (the embedded proxy takes them all)."""

    def _apply_rules(self) -> None:
        """Make a change of rules take effect (the embedded proxy reads them per request)."""



def profile_rules(profile: str | None) -> tuple[Rule, ...]:
    if profile is None:
        return ()
    from .hops import PROFILES

    try:
        preset = PROFILES[profile.replace("-", "_")]  # "ingress-nginx" works too
    except KeyError:
        raise ValueError(f"unknown profile {profile!r}; known: {', '.join(PROFILES)}") from None
    return as_rules(preset())
