"""Deterministic answer text for the mock model.

Token unit: one token is one word with its leading space (the first token has
none). ``generate(n, seed)`` always returns the same ``n`` tokens for the same
seed, so token counts, cut positions and stored notebook outputs are stable.
Prompt size is counted in the same unit: whitespace-separated words.
"""

from __future__ import annotations

import collections
import random
import threading

__all__ = ["generate", "echo_tokens", "count_tokens", "cache_info"]

_WORDS = (
    "the stream carries each token from the model through every hop to the reader and "
    "a proxy may hold bytes back while a worker waits for its timeout so the answer "
    "arrives late or stops before its end unless each layer keeps the connection open "
    "claim policy report summary section clause premium coverage incident root cause "
    "impacted system recommended fix latency buffer gateway balancer client server "
    "request response chunk event marker budget window context history agent tool "
    "result graph node state worker process thread loop queue job status retry deadline"
).split()


# Memory: one cached stream per seed, the tokens generated so far (a prefix: generate(k, seed) is
# generate(n, seed)[:k]), each token one of a few hundred interned strings, so a token costs one
# 8-byte list slot. At most CACHE_SEEDS seeds (least recently used out) and CACHE_TOKENS tokens per
# seed are kept: under 7 MB in all. Longer answers continue the sequence without caching it.
CACHE_SEEDS = 8
CACHE_TOKENS = 100_000  # = streamlab._spec.MAX_TOKENS, the longest answer a spec may ask for


class _Seeded:
    """The seeded word sequence of one seed, extended on demand."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.sentence = 0
        self.tokens: list[str] = []  # " " + word, interned

    def extend(self, n: int, out: list[str] | None = None) -> None:
        out = self.tokens if out is None else out
        sentence, choice, randint, intern = self.sentence, self.rng.choice, self.rng.randint, _SPACED
        for _ in range(n):
            word = choice(_WORDS)
            if sentence == 0:
                word = word.capitalize()
            sentence += 1
            if sentence >= randint(8, 14):
                word += "."
                sentence = 0
            spaced = intern.get(word)
            if spaced is None:
                spaced = intern.setdefault(word, " " + word)
            out.append(spaced)
        self.sentence = sentence

    def clone(self) -> "_Seeded":
        other = _Seeded.__new__(_Seeded)
        other.rng = random.Random()
        other.rng.setstate(self.rng.getstate())
        other.sentence = self.sentence
        other.tokens = []
        return other


_SPACED: dict[str, str] = {}
_cache: "collections.OrderedDict[int, _Seeded]" = collections.OrderedDict()
_lock = threading.Lock()


def generate(n: int, seed: int = 0) -> list[str]:
    """``n`` tokens of seeded text; token ``i`` is ``" " + word`` except token 0."""
    if n <= 0:
        return []
    with _lock:
        stream = _cache.get(seed)
        if stream is None:
            stream = _cache[seed] = _Seeded(seed)
            while len(_cache) > CACHE_SEEDS:
                _cache.popitem(last=False)
        else:
            _cache.move_to_end(seed)
        have = len(stream.tokens)
        if have < n and have < CACHE_TOKENS:
            stream.extend(min(n, CACHE_TOKENS) - have)
        out = stream.tokens[:n]
        tail = stream.clone() if n > len(out) else None
    if tail is not None:  # beyond the cache: continue the same sequence, uncached
        tail.extend(n - len(out), out)
    out[0] = out[0][1:]
    return out


def cache_info() -> dict[str, int]:
    """What the text cache holds: seeds, tokens and an estimate of its bytes."""
    with _lock:
        tokens = sum(len(s.tokens) for s in _cache.values())
        return {"seeds": len(_cache), "tokens": tokens, "bytes": 8 * tokens + 80 * len(_SPACED),
                "max_seeds": CACHE_SEEDS, "max_tokens_per_seed": CACHE_TOKENS}


def echo_tokens(text: str, n: int) -> list[str]:
    """``n`` tokens that repeat the words of ``text`` (to spot cross-talk between requests)."""
    words = text.split() or ["(empty)"]
    return [(" " if i else "") + words[i % len(words)] for i in range(n)]


def count_tokens(text: str) -> int:
    return len(text.split())
