"""The wait batching adds (C17), where queueing does not swamp it: one light open-loop load served twice.

A dynamic batcher holds a request until its batch fills or `serving.max_wait_ms` passes; under the closed loop the
stage's rounds use, the queue in front of it is minutes long and the fill wait is capped by that setting, so neither
measures what batching itself adds. Here the same Poisson arrivals (seeded: the same schedule and prompts) at a small
share of the sequential server's capacity for short answers reach a sequential server and a batching one; each
request's time to first token on the batching server, less the same request's on the sequential one, is the wait
batching added to it (paired by request, with a bootstrap interval over requests).

Both servers stay up and the load runs in blocks, in the order sequential, batched, batched, sequential (ABBA, and
so on for more blocks): the machine's speed drifts over minutes (one run served every request of the later server
faster, which no scheduler explains), and a linear drift falls on both servers alike in this order, where one run
after the other would charge it all to the difference. A request is paired with the same request of the same block;
every block has its own arrivals and prompts, so no request is measured twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from perfkit.load.runner import LoadRun
from perfkit.stats import bootstrap_paired

if TYPE_CHECKING:
    import pandas as pd

T = TypeVar("T")

MIN_PAIRS = 30  # requests answered on both servers below which the wait is not judged
MAX_SHARE = 0.3  # the claim's wait is read at a load at most this share of the sequential capacity


def abba(block: int, pair: Sequence[T]) -> list[T]:
    """The two servers' order in `block`: as given in even blocks, swapped in odd ones (AB BA AB ...)."""
    return list(pair) if block % 2 == 0 else list(pair)[::-1]


@dataclass(frozen=True)
class LightLoad:
    rate_rps: float  # the arrival rate both servers saw
    service_s: float  # one short request alone on the engine (prefill and its tokens): capacity = 1 / service_s
    max_new_tokens: int
    width: int  # the batching server's max_batch_size
    scheduler: str  # the batching server's scheduler
    max_wait_ms: float  # its fill window (serving.max_wait_ms)
    sequential: tuple[LoadRun, ...]  # one run per block, the same schedule as the batched server's block of that number
    batched: tuple[LoadRun, ...]

    def runs(self) -> list[tuple[str, LoadRun]]:
        """Every block's run, named by server and block, in the order the blocks ran (ABBA)."""
        named = []
        for block, (seq, bat) in enumerate(zip(self.sequential, self.batched)):
            pair = [("sequential", seq), (self.scheduler, bat)]
            named += [(f"light load, {name}, block {block + 1}", run) for name, run in abba(block, pair)]
        return named

    @property
    def share(self) -> float:
        """The load as a share of the sequential server's capacity, as the server served these requests: the arrival
        rate times its median time to answer one (the engine alone, `service_s`, leaves out HTTP and scheduling)."""
        served = [r.e2e_s for run in self.sequential for r in run.timings if not r.warmup and r.ok]
        return self.rate_rps * float(np.median(served)) if served else self.rate_rps * self.service_s

    def pairs_ms(self) -> tuple[np.ndarray, np.ndarray]:
        """Time to first token (ms) of each measured request answered by both servers in the same block, sequential then
        batched."""

        def ttft(runs: tuple[LoadRun, ...]) -> dict[tuple[int, int], float]:
            return {
                (block, r.index): 1000 * r.ttft_s
                for block, run in enumerate(runs)
                for r in run.timings
                if not r.warmup and r.ok and r.ttft_s is not None
            }

        seq, bat = ttft(self.sequential), ttft(self.batched)
        both = sorted(seq.keys() & bat.keys())
        return np.array([seq[i] for i in both]), np.array([bat[i] for i in both])

    def added_wait_ms(self) -> tuple[float, float, float] | None:
        """Mean extra time to first token on the batching server, paired by request: (mean, low, high); None below two."""
        return self._added_wait_ms

    @cached_property
    def _added_wait_ms(self) -> tuple[float, float, float] | None:  # a bootstrap: drawn once, read by summary and text
        seq, bat = self.pairs_ms()
        if len(seq) < 2:
            return None
        return bootstrap_paired([seq, bat], lambda s, b: b.mean(1) - s.mean(1))

    def table(self) -> pd.DataFrame:
        """Each paired request: its time to first token on both servers and the difference (ms)."""
        import pandas as pd

        seq, bat = self.pairs_ms()
        return pd.DataFrame({"sequential_ttft_ms": seq, "batched_ttft_ms": bat, "added_ms": bat - seq})

    def summary(self) -> dict[str, float | int | bool]:
        seq, _ = self.pairs_ms()
        out: dict[str, float | int | bool] = {
            "light_load_rate_rps": self.rate_rps,
            "light_load_share_pct": 100 * self.share,
            "light_load_pairs": len(seq),
            "light_load_blocks": len(self.sequential),
            "light_load_max_new_tokens": self.max_new_tokens,
            "light_load_tests_wait": len(seq) >= MIN_PAIRS and self.share <= MAX_SHARE,
        }
        wait = self.added_wait_ms()
        if wait is not None:
            key = f"added_wait_ms_mean_batch{self.width}"
            out |= {key: wait[0], f"{key}_ci_low": wait[1], f"{key}_ci_high": wait[2]}
            out["light_load_sequential_ttft_ms_mean"] = float(seq.mean())
        return out

    def text(self) -> str:
        s = self.summary()
        wait = self.added_wait_ms()
        if wait is None:
            return "The light-load check of the wait batching adds answered too few requests on both servers to pair them."
        mean, low, high = wait
        judged = (
            ""
            if s["light_load_tests_wait"]
            else (f" (below {MIN_PAIRS} pairs or above {100 * MAX_SHARE:.0f}% of capacity: not a test of the claim's wait)")
        )
        if low <= self.max_wait_ms <= high:
            why = "about the fill window: at this load a lone request waits it out for companions that do not come"
        elif high < self.max_wait_ms:
            why = "less than the fill window: companions often arrived within it"
        else:
            why = "more than the fill window: a batched request also waits for the batch ahead of it to end"
        return (
            f"At a light open-loop load ({self.rate_rps:.2f} req/s of {self.max_new_tokens}-token answers, "
            f"{100 * self.share:.0f}% of the sequential server's capacity for them as it served them), the "
            f"{self.scheduler}-b{self.width} server answered the first token {mean:+.1f} ms later than the sequential one "
            f"(95% CI {low:+.1f} to {high:+.1f} ms, {s['light_load_pairs']} requests paired; both servers up, "
            f"{len(self.sequential)} blocks each, alternating ABBA){judged}, against a fill window "
            f"of {self.max_wait_ms:g} ms: {why}."
        )
