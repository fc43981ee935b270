"""Deterministic answer text for the mock model.

Token unit: one token is one word with its leading space (the first token has
none). ``generate(n, seed)`` always returns the same ``n`` tokens for the same
seed, so token counts, cut positions and stored notebook outputs are stable.
Prompt size is counted in the same unit: whitespace-separated words.
"""

from __future__ import annotations

import random
from functools import lru_cache

__all__ = ["generate", "count_tokens"]

_WORDS = (
    "the stream carries each token from the model through every hop to the reader and "
    "a proxy may hold bytes back while a worker waits for its timeout so the answer "
    "arrives late or stops before its end unless each layer keeps the connection open "
    "claim policy report summary section clause premium coverage incident root cause "
    "impacted system recommended fix latency buffer gateway balancer client server "
    "request response chunk event marker budget window context history agent tool "
    "result graph node state worker process thread loop queue job status retry deadline"
).split()


@lru_cache(maxsize=256)
def _words(n: int, seed: int) -> tuple[str, ...]:
    rng = random.Random(seed)
    out: list[str] = []
    sentence = 0
    for _ in range(n):
        word = rng.choice(_WORDS)
        if sentence == 0:
            word = word.capitalize()
        sentence += 1
        if sentence >= rng.randint(8, 14):
            word += "."
            sentence = 0
        out.append(word)
    return tuple(out)


def generate(n: int, seed: int = 0) -> list[str]:
    """``n`` tokens of seeded text; token ``i`` is ``" " + word`` except token 0."""
    words = _words(n, seed)
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def echo_tokens(text: str, n: int) -> list[str]:
    """``n`` tokens that repeat the words of ``text`` (to spot cross-talk between requests)."""
    words = text.split() or ["(empty)"]
    return [(" " if i else "") + words[i % len(words)] for i in range(n)]


def count_tokens(text: str) -> int:
    return len(text.split())
