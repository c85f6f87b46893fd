"""Admission control: a token bucket per client, and a queue bounded by expected wait.

A server that accepts every request degrades for everyone when one client floods it. Two gates
run before a request may queue for the model:

- *Rate*: each client key (its bearer key, else its address) owns a bucket of `burst` tokens
  refilled at `tokens_per_second`; a request takes one token. With an empty bucket the request is
  refused at once (HTTP 429) with `Retry-After` = the seconds until the next token, so a burst of
  60 requests on one key gets `burst` answers and 429 for the rest without queueing, while other
  keys keep their own budget. The bucket counts requests, or generated tokens (`unit: tokens`: a
  request costs its `max_tokens`, so a key asking for long answers is slowed sooner; a request
  larger than the whole burst is let through from a full bucket and leaves it in debt).
- *Queue*: a request that would wait longer than `max_queue_wait_s` before the model starts on it
  is refused (HTTP 503) with `Retry-After` = that expected wait. The wait is counted in tokens,
  not requests: the decode steps the running rows may still take and the prompt and output
  tokens of every request queued ahead, priced at the measured time of one decode step and of one
  prefilled prompt token. The scheduler seeds both prices at warm-up, at its full batch width, so
  an opening burst is priced before the first request has finished; the bound follows the machine
  and the requests' sizes instead of a fixed queue length.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

PRUNE_AT = 10_000  # keys held before full buckets are dropped, so many distinct clients cannot grow memory


def client_key(authorization: str | None, host: str | None) -> str:
    """Who a request comes from, the same over REST and gRPC: "key:" + its bearer key, else "addr:" + its host.

    `authorization` is the HTTP header or the gRPC metadata of that name; the host carries no port,
    so one client's connections are one client.
    """
    auth = authorization or ""
    if auth.lower().startswith("bearer ") and auth[7:].strip():
        return "key:" + auth[7:].strip()
    return "addr:" + (host or "unknown")


def grpc_peer_host(peer: str) -> str:
    """The host of a gRPC peer string ("ipv4:127.0.0.1:5050", "ipv6:[::1]:5050", "unix:/path")."""
    scheme, _, address = peer.partition(":")
    if scheme not in ("ipv4", "ipv6"):
        return peer
    return address.rsplit(":", 1)[0].strip("[]")


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

    def take(self, cost: float = 1.0) -> float:
        """Take `cost` tokens: 0.0 if granted, else the seconds until they are available (nothing taken).

        A cost above the capacity is granted from a full bucket, which it leaves in debt: the key
        then waits as long as the cost takes to refill, instead of being refused forever.
        """
        self._refill()
        need = min(cost, self.capacity)
        if self.tokens >= need:
            self.tokens -= cost
            return 0.0
        return (need - self.tokens) / self.rate


class RateLimiter:
    """One token bucket per client key; `check(key, cost)` raises RateLimited when that key is out of tokens.

    `unit` names what a token stands for ("requests" or "tokens"), for the refusal's message.
    """

    def __init__(self, tokens_per_second: float, burst: int, clock: Callable[[], float] = time.monotonic, unit: str = "requests") -> None:
        self.rate = tokens_per_second
        self.burst = burst
        self.clock = clock
        self.unit = unit
        self.buckets: dict[str, TokenBucket] = {}

    def check(self, key: str, cost: float = 1.0) -> None:
        if len(self.buckets) >= PRUNE_AT:
            self.prune()
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = self.buckets[key] = TokenBucket(self.rate, float(self.burst), self.clock)
        wait = bucket.take(cost)
        if wait > 0:
            raise RateLimited(f"rate limit: {self.burst} {self.unit} burst, {self.rate:g} {self.unit}/s per key", wait)

    def prune(self) -> None:
        """Forget buckets that have refilled: a full bucket is what a new key gets, so nothing changes."""
        t = self.clock()
        self.buckets = {k: b for k, b in self.buckets.items() if b.tokens + (t - b.stamp) * b.rate < b.capacity}


@dataclass
class ServicePrices:
    """Measured costs the queue bound extrapolates from: moving averages the scheduler keeps up to date.

    Each measurement weighs by the engine time it covers (weight 1 - exp(-seconds / horizon_s)),
    so the prices average over the last `horizon_s` of work whatever a step costs. A short memory
    would let the bound admit exactly when a few fast steps happen to dip the price, and those
    requests would then wait longer than promised.
    """

    step_s: float = 0.0  # one decode step at the width the server runs
    prefill_s_per_token: float = 0.0  # one prompt token of a prefill
    horizon_s: float = 5.0  # engine seconds a price averages over

    def observe_step(self, seconds: float) -> None:
        self.step_s = self._blend(self.step_s, seconds, seconds)

    def observe_prefill(self, seconds: float, tokens: int) -> None:
        if tokens > 0:
            self.prefill_s_per_token = self._blend(self.prefill_s_per_token, seconds / tokens, seconds)

    def _blend(self, old: float, new: float, covered_s: float) -> float:
        if old == 0.0:
            return new
        weight = 1.0 - math.exp(-max(covered_s, 0.0) / self.horizon_s)
        return (1 - weight) * old + weight * new


def expected_wait_s(
    running: Sequence[int],
    queued: Sequence[tuple[int, int]],
    capacity: int,
    refill: bool,
    prices: ServicePrices,
    joining: Sequence[tuple[int, int]] = (),
) -> float:
    """Seconds before a newcomer's prefill starts.

    `running`: the decode steps each running row may still take; `queued`: (prompt tokens,
    max_new_tokens) of each request ahead, in order; `joining`: the same for requests out of the
    queue whose prefill is under way (counted whole: rows about to run). Without `refill` (sequential, dynamic) a
    batch runs until its longest row ends, and the queue leaves in batches of `capacity`; with it
    (continuous) a request takes the first slot that frees. Output lengths are the requests'
    maxima, so a queue of requests that stop early is overestimated, never under.
    """
    prefill_tokens = sum(prompt for prompt, _ in joining)
    running = [*running, *(new for _, new in joining)]
    if refill:
        slots = sorted(list(running) + [0] * max(0, capacity - len(running)))  # steps until each slot frees
        for prompt, new in queued:
            prefill_tokens += prompt
            heapq.heappush(slots, heapq.heappop(slots) + new)
        steps = slots[0]
    else:
        steps = max(running, default=0)
        full = len(queued) - len(queued) % capacity  # the newcomer rides with the partial batch at the end
        for start in range(0, full, capacity):
            group = queued[start : start + capacity]
            steps += max(new for _, new in group)
            prefill_tokens += sum(prompt for prompt, _ in group)
    return steps * prices.step_s + prefill_tokens * prices.prefill_s_per_token


def check_queue(wait_s: float, limit_s: float) -> None:
    """Raise QueueFull when a newcomer's expected wait exceeds `limit_s`."""
    if wait_s > limit_s:
        raise QueueFull(f"server overloaded: expected queue wait {wait_s:.1f} s > {limit_s:g} s", wait_s)
