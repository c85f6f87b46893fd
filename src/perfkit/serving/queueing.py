"""The scheduler's waiting line: first come first served, or fair across client keys.

With one FIFO line, a client that sends ten times its share fills the queue and everyone else
waits behind it, up to the queue bound. Fair queueing gives each client key its own line and
serves the lines in turn, so a key gets at most its share of the batch slots while other keys
are waiting, and a burst only delays the key that sent it.

The fair policy is start-time fair queueing (Goyal et al., 1996), the virtual-clock form of
weighted fair queueing: each request gets a start tag S = max(V, F_key) and its key's finish tag
becomes F_key = S + cost, where V is the start tag of the last request taken out of the line and
cost is 1 (`requests`: keys share requests, a round-robin) or the request's output tokens
(`tokens`: keys share generated tokens). The line is served in order of start tags, ties by
arrival. A key that was idle restarts at V: it gets no credit for its silence, so it cannot
burst past the others later. The order of the line is also what the queue bound reads: a
newcomer's expected wait counts only the requests whose tags come before the tag it would get,
so a burster's next request is priced behind its own backlog (and refused with 503 first) while a
quiet key's is priced near the head.

A request can be overtaken after admission by a later one with a smaller tag (a quiet key
arriving): under fair queueing the queue bound's estimate is what the line looked like at
admission, not a promise.

Order alone is not enough on a batching server. Generation is not preemptive: a slot given to a
burster while no quiet request waits stays the burster's for its whole answer, so a burster that
always has work queued keeps every batch full, every decode step at its widest, and the server
never idle, and a quiet request arriving waits behind a full batch it would not have met
undisturbed. With `share_window_s` > 0 a key also holds at most its share of the
batch slots, ceil(slots / active keys), where a key is active if it sent a request within the
window; the slots a capped burster cannot take stay free, which is the price of fairness: the
server does less work than it could while the quiet keys are between requests. A lone key (or
every key of one tenant) is never capped below the whole batch.
"""

from __future__ import annotations

import bisect
import collections
import itertools
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

FairQueueing = Literal["off", "requests", "tokens"]
PRUNE_AT = 10_000  # keys with a finish tag held before those with nothing waiting are dropped
E = TypeVar("E")


@dataclass(order=True)
class _Slot(Generic[E]):
    tag: float
    seq: int
    entry: E = field(compare=False)


class RequestQueue(Generic[E]):
    """Waiting requests in service order; `policy` "off" is FIFO, "requests"/"tokens" fair across keys.

    `key(entry)` names an entry's client, `cost(entry)` its size in the policy's unit (read only
    by "tokens"). Under a fair policy with `share_window_s` > 0, `take` gives a key at most
    ceil(`slots` / active keys) slots, counting those it already `held` (see the module's docstring).
    Not thread-safe: the scheduler holds its lock around every call.
    """

    def __init__(
        self,
        policy: FairQueueing,
        key: Callable[[E], str],
        cost: Callable[[E], float],
        slots: int = 1,
        share_window_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self.slots, self.share_window_s = slots, share_window_s
        self._key, self._cost, self._clock = key, cost, clock
        self._seen: dict[str, float] = {}  # key -> its last arrival, for the active keys of the slot share
        self._slots: list[_Slot[E]] = []
        self._seq = itertools.count()
        self._virtual = 0.0  # V: start tag of the last request taken
        self._finish: dict[str, float] = {}  # F per key with requests at or past V

    def __len__(self) -> int:
        return len(self._slots)

    def __bool__(self) -> bool:
        return bool(self._slots)

    def __iter__(self) -> Iterator[E]:
        return (s.entry for s in self._slots)

    def __contains__(self, entry: object) -> bool:
        return any(s.entry is entry for s in self._slots)

    def _price(self, entry: E) -> float:
        return max(1.0, float(self._cost(entry))) if self.policy == "tokens" else 1.0

    def tag_for(self, key: str) -> float:
        """The start tag a request of `key` would get now (FIFO: behind everything)."""
        if self.policy == "off":
            return float("inf")
        return max(self._virtual, self._finish.get(key, 0.0))

    def append(self, entry: E) -> None:
        seq = next(self._seq)
        if self.policy == "off":
            tag = float(seq)
        else:
            key = self._key(entry)
            tag = self.tag_for(key)
            self._finish[key] = tag + self._price(entry)
            if self.share_window_s > 0:
                self._seen[key] = self._clock()
        bisect.insort(self._slots, _Slot(tag, seq, entry))

    def ahead_of(self, key: str) -> list[E]:
        """The waiting requests a newcomer of `key` would be served after, in service order."""
        tag = self.tag_for(key)
        return [s.entry for s in self._slots if s.tag <= tag]

    @property
    def shares_slots(self) -> bool:
        """Whether `take` caps each key at its share of the slots (a fair policy with a window)."""
        return self.policy != "off" and self.share_window_s > 0

    def share(self) -> int:
        """The most slots one key may hold now: all of them, or ceil(slots / active keys) under the slot share."""
        if not self.shares_slots:
            return self.slots
        since = self._clock() - self.share_window_s
        self._seen = {k: t for k, t in self._seen.items() if t >= since}
        return math.ceil(self.slots / max(1, len(self._seen)))

    def take(self, n: int, held: Mapping[str, int] | None = None) -> list[E]:
        """Up to `n` requests off the head of the line, each key within its share counting the slots it `held`."""
        cap = self.share()
        if cap >= self.slots:
            taken, self._slots = self._slots[:n], self._slots[n:]
        else:
            holding = collections.Counter(held or {})
            taken, left = [], []
            for s in self._slots:
                key = self._key(s.entry)
                if len(taken) < n and holding[key] < cap:
                    holding[key] += 1
                    taken.append(s)
                else:
                    left.append(s)
            self._slots = left
        if taken and self.policy != "off":
            self._virtual = max(self._virtual, max(s.tag for s in taken))
            self._forget()
        return [s.entry for s in taken]

    def _forget(self) -> None:
        """Drop finish tags that no longer matter, so that many distinct keys cannot grow memory.

        A key whose finish tag V has passed restarts at V anyway. With the line empty nobody is
        waiting, so nobody can be treated unfairly: the clock moves to the last finish tag and every
        key starts even. Past `PRUNE_AT` keys, those with nothing waiting are dropped, which gives each
        at most one request's worth of credit.
        """
        if not self._slots:
            self._virtual = max([self._virtual, *self._finish.values()])
            self._finish = {}
            return
        self._finish = {k: f for k, f in self._finish.items() if f > self._virtual}
        if len(self._finish) > PRUNE_AT:
            waiting = {self._key(s.entry) for s in self._slots}
            self._finish = {k: f for k, f in self._finish.items() if k in waiting}

    def remove(self, entry: E) -> bool:
        """Drop a request whose client left; its key keeps the tags it was given (the share was claimed)."""
        for i, s in enumerate(self._slots):
            if s.entry is entry:
                del self._slots[i]
                return True
        return False

    def oldest(self) -> E:
        """The request that has waited longest (the fill window counts from its arrival)."""
        return min(self._slots, key=lambda s: s.seq).entry
