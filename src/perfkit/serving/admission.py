"""Admission control: a token bucket per client, and a queue bounded by expected wait.

A server that accepts every request degrades for everyone when one client floods it. Two gates
run before a request may queue for the model:

- *Rate*: each client key (its bearer key, else its address) owns a bucket of `burst` tokens
  refilled at `tokens_per_second`; a request takes one token. With an empty bucket the request is
  refused at once (HTTP 429) with `Retry-After` = the seconds until the next token, so a burst of
  60 requests on one key gets `burst` answers and 429 for the rest without queueing, while other
  keys keep their own budget.
- *Queue*: a request that would wait longer than `max_queue_wait_s` before the model starts on it
  is refused (HTTP 503) with `Retry-After` = that expected wait. The wait is estimated from the
  requests ahead of it and the measured service time of recent batches, so the bound follows the
  machine instead of a fixed queue length.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field


PRUNE_AT = 10_000  # keys held before full buckets are dropped, so many distinct clients cannot grow memory


class Refused(Exception):
    """A request turned away before queueing; `retry_after_s` tells the client when to come back."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    @property
    def retry_after_header(self) -> str:
        return str(max(1, math.ceil(self.retry_after_s)))


class RateLimited(Refused):
    """The client's token bucket is empty (HTTP 429)."""


class QueueFull(Refused):
    """The expected queue wait exceeds `max_queue_wait_s` (HTTP 503)."""


@dataclass
class TokenBucket:
    """`capacity` tokens, refilled continuously at `rate` per second, starting full."""

    rate: float
    capacity: float
    clock: Callable[[], float] = time.monotonic
    tokens: float = field(init=False)
    stamp: float = field(init=False)

    def __post_init__(self) -> None:
        self.tokens = self.capacity
        self.stamp = self.clock()

    def _refill(self) -> None:
        t = self.clock()
        self.tokens = min(self.capacity, self.tokens + (t - self.stamp) * self.rate)
        self.stamp = t

    def take(self) -> float:
        """Take one token: 0.0 if granted, else the seconds until one is available (nothing taken)."""
        self._refill()
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class RateLimiter:
    """One token bucket per client key; `check(key)` raises RateLimited when that key is out of tokens."""

    def __init__(self, tokens_per_second: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = tokens_per_second
        self.burst = burst
        self.clock = clock
        self.buckets: dict[str, TokenBucket] = {}

    def check(self, key: str) -> None:
        if len(self.buckets) >= PRUNE_AT:
            self.prune()
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = self.buckets[key] = TokenBucket(self.rate, float(self.burst), self.clock)
        wait = bucket.take()
        if wait > 0:
            raise RateLimited(f"rate limit: {self.burst} requests burst, {self.rate:g}/s per key", wait)

    def prune(self) -> None:
        """Forget buckets that have refilled: a full bucket is what a new key gets, so nothing changes."""
        t = self.clock()
        self.buckets = {
            k: b for k, b in self.buckets.items() if b.tokens + (t - b.stamp) * b.rate < b.capacity
        }


def expected_wait_s(queued: int, running: bool, batch_capacity: int, batch_s: float) -> float:
    """Seconds a newcomer waits before its batch starts: the batch now running, then the full batches ahead."""
    return (1.0 if running else 0.0) * batch_s + (queued // batch_capacity) * batch_s


def check_queue(queued: int, running: bool, batch_capacity: int, batch_s: float, limit_s: float) -> None:
    """Raise QueueFull when the expected wait of one more request exceeds `limit_s`."""
    wait = expected_wait_s(queued, running, batch_capacity, batch_s)
    if wait > limit_s:
        raise QueueFull(f"server overloaded: expected queue wait {wait:.1f} s > {limit_s:g} s", wait)
