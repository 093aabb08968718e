"""A token bucket: ``burst`` events at once, refilled at ``rate`` per second."""

from __future__ import annotations

import time


class TokenBucket:
    """Per-key rate limiting without timers: the refill is computed when a token is taken.

    :param rate: tokens added per second.
    :param burst: most tokens held (and so the largest burst allowed).
    """

    __slots__ = ("_stamp", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._stamp = time.monotonic()

    def take(self, now: float | None = None) -> float:
        """Take one token.

        :return: 0.0 when allowed; otherwise the seconds until a token will be available.
        """
        now = time.monotonic() if now is None else now
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate if self.rate > 0 else float("inf")

    def full_at(self) -> float | None:
        """When (``time.monotonic``) the bucket will have refilled to ``burst``; None when it
        never refills (``rate`` 0)."""
        if self.rate <= 0:
            return None
        return self._stamp + max(0.0, self.burst - self._tokens) / self.rate

    def full(self, now: float | None = None) -> bool:
        """Whether the bucket has refilled to ``burst`` (its owner went quiet: it may be forgotten)."""
        now = time.monotonic() if now is None else now
        return self._tokens + (now - self._stamp) * self.rate >= self.burst
