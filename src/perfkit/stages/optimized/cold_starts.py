"""The optimized stage's cold-start block (C13, C19): fresh servers started in interleaved rounds, order shuffled.

One cold start is one draw of a noisy figure (the same pair moved 7.2 -> 10.9 s between runs), so
each variant starts `cold_starts` times: the baseline (fp32, warm-up), the baseline without its
warm-up (C19: what preloading and warming up buy the first client) and the optimized stack with
its cold-start lever (C13). Each round starts every variant once, in a shuffled order (seeded), so
neither position nor drift favours one. Every start is split into its parts: interpreter start and
imports (spawn -> the server's modules imported), model load, warm-up, the rest until ready
(scheduler, HTTP server, health check) and the first answer after ready. Ratios are paired by round.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from perfkit.config import Config
from perfkit.measure import Spread, ratio, summary_text
from perfkit.serving.launch import ServerHandle, launch

if TYPE_CHECKING:
    import pandas as pd

BASELINE_START, NO_WARMUP, OPTIMIZED_START = "baseline", "baseline without warm-up", "optimized"
MIN_COLD_STARTS = 5  # per variant: fewer leave a saving as one draw of a noisy figure
PARTS = ("imports_s", "model_load_s", "warmup_s", "other_s", "ready_s", "first_answer_s", "cold_start_s")


@dataclass(frozen=True)
class ColdStart:
    """One fresh server: spawn -> first answer, and its parts (seconds)."""

    variant: str
    round: int
    imports_s: float
    model_load_s: float
    warmup_s: float
    ready_s: float
    cold_start_s: float

    @property
    def first_answer_s(self) -> float:
        return self.cold_start_s - self.ready_s

    @property
    def other_s(self) -> float:
        """Ready minus imports, load and warm-up: scheduler and HTTP server start, the health check."""
        return self.ready_s - self.imports_s - self.model_load_s - self.warmup_s

    @classmethod
    def from_handle(cls, variant: str, round_index: int, handle: ServerHandle) -> ColdStart:
        if handle.cold_start_s is None or handle.imports_s is None:
            raise ValueError("the launcher did not probe the cold start, or the server did not report its imports")
        return cls(variant, round_index, handle.imports_s, handle.load_s, handle.warmup_s, handle.ready_s, handle.cold_start_s)

    def row(self) -> dict[str, Any]:
        return {"variant": self.variant, "round": self.round} | {part: getattr(self, part) for part in PARTS}


@dataclass(frozen=True)
class ColdStarts:
    """Every variant's cold starts, one per round."""

    runs: dict[str, tuple[ColdStart, ...]]
    levers: tuple[str, ...]  # the optimized stack's settings that act on a cold start

    def spread(self, variant: str, part: str) -> Spread:
        return Spread(tuple(getattr(c, part) for c in self.runs[variant]), samples=len(self.runs[variant]))

    @property
    def samples(self) -> int:
        return min(len(runs) for runs in self.runs.values())

    def saving_pct(self, variant: str, over: str, part: str) -> Spread:
        """100 x (1 - variant / over) of one part, paired by round."""
        return ratio(self.spread(variant, part), self.spread(over, part)).map(lambda r: 100 * (1 - r))

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"cold_start_samples": self.samples, "cold_start_samples_enough": self.samples >= MIN_COLD_STARTS}
        for variant in self.runs:
            key = variant.replace(" ", "_").replace("-", "_")
            for part in PARTS:
                out |= self.spread(variant, part).summary(f"{key}_{part}")
        total = self.spread(BASELINE_START, "cold_start_s").mean
        out["baseline_imports_share_pct"] = 100 * self.spread(BASELINE_START, "imports_s").mean / total if total else float("nan")
        if OPTIMIZED_START in self.runs:
            out |= self.saving_pct(OPTIMIZED_START, BASELINE_START, "cold_start_s").summary("cold_start_reduction_pct")
            out |= self.saving_pct(OPTIMIZED_START, BASELINE_START, "model_load_s").summary("model_load_reduction_pct")
        if NO_WARMUP in self.runs:
            out |= self.saving_pct(BASELINE_START, NO_WARMUP, "first_answer_s").summary("first_response_saving_pct")
            out |= self.saving_pct(BASELINE_START, NO_WARMUP, "cold_start_s").summary("warmup_cold_start_saving_pct")
        return out

    def table(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame([c.row() for runs in self.runs.values() for c in runs]).sort_values(["round", "variant"])

    def text(self) -> str:
        s = self.summary()
        secs = {key: summary_text(s, key, ".2f", " s") for key in s if key.endswith("_s")}  # every duration, as written
        lines = [
            f"Cold starts (C13, C19): each variant started {self.samples} times, one per round, in a shuffled order; "
            f"spawn to first answer {secs['baseline_cold_start_s']} for the baseline, of which interpreter start "
            f"and imports {secs['baseline_imports_s']} ({s['baseline_imports_share_pct']:.0f}%), model load "
            f"{secs['baseline_model_load_s']}, warm-up {secs['baseline_warmup_s']}."
        ]
        if OPTIMIZED_START in self.runs:
            lever = ", ".join(self.levers) or "no setting that acts on a cold start"
            lines.append(
                f"The optimized stack ({lever}): {secs['optimized_cold_start_s']}, a reduction of "
                f"{summary_text(s, 'cold_start_reduction_pct', '+.1f', '%')}; its model load "
                f"{secs['optimized_model_load_s']} (a reduction of "
                f"{summary_text(s, 'model_load_reduction_pct', '+.0f', '%')}). Where imports dominate, a lever "
                "on the weights moves the whole cold start little, however much it saves on the load."
            )
        if NO_WARMUP in self.runs:
            lines.append(
                f"Without warm-up the server is ready sooner ({secs['baseline_without_warm_up_ready_s']} against "
                f"{secs['baseline_ready_s']}) and its first client waits "
                f"{secs['baseline_without_warm_up_first_answer_s']} for one token against "
                f"{secs['baseline_first_answer_s']} with it: warm-up cuts the first response by "
                f"{summary_text(s, 'first_response_saving_pct', '+.0f', '%')}."
            )
        return " ".join(lines)


def cold_start_block(
    cfg: Config, variants: Mapping[str, Mapping[str, Any]], rounds: int, *, seed: int, levers: tuple[str, ...], timeout_s: float
) -> ColdStarts:
    """Start every variant (dotted params overrides) once per round in a shuffled order; each start probed to its first
    answer and stopped."""
    rng = random.Random(seed)
    runs: dict[str, list[ColdStart]] = {name: [] for name in variants}
    for r in range(rounds):
        order = list(variants)
        rng.shuffle(order)
        for name in order:
            with launch(cfg, overrides=dict(variants[name]), probe_cold_start=True, timeout_s=timeout_s) as handle:
                runs[name].append(ColdStart.from_handle(name, r, handle))
    return ColdStarts({name: tuple(v) for name, v in runs.items()}, levers)
