"""The optimized stage's cold-start block (C13, C19): fresh servers started in interleaved rounds, order shuffled.

One cold start is one draw of a noisy figure (the same pair moved 7.2 -> 10.9 s between runs), so
each variant starts `cold_starts` times: the baseline (fp32, warm-up), the baseline without its
warm-up (C19: what preloading and warming up buy the first client), the optimized stack with
its cold-start lever (C13) and the same stack without it (what the lever alone buys). Each round
starts every variant once, in a shuffled order (seeded), so neither position nor drift favours
one. Every start is split into its parts: interpreter start and imports (spawn -> the server's
modules imported), model load, warm-up, the rest until ready (scheduler, HTTP server, health
check) and the first answer after ready. Ratios are paired by round.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from perfkit.config import Config
from perfkit.measure import Spread, ratio, summary_text
from perfkit.serving.launch import ColdStart, launch

if TYPE_CHECKING:
    import pandas as pd

BASELINE_START, NO_WARMUP, OPTIMIZED_START = "baseline", "baseline without warm-up", "optimized"
WITHOUT_LEVER = "optimized without its lever"  # the stack's other settings: what the lever alone buys a start
MIN_COLD_STARTS = 5  # per variant: fewer leave a saving as one draw of a noisy figure
PARTS = tuple(ColdStart(0, 0, 0, 0, 0).row())  # imports, model load, warm-up, the rest, ready, first answer, whole


@dataclass(frozen=True)
class ColdStarts:
    """Every variant's cold starts, one per round."""

    runs: dict[str, tuple[ColdStart, ...]]  # by variant, one a round
    levers: tuple[str, ...]  # the optimized stack's settings that act on a cold start

    def spread(self, variant: str, part: str) -> Spread:
        return Spread(tuple(c.row()[part] for c in self.runs[variant]), samples=len(self.runs[variant]))

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
        if OPTIMIZED_START in self.runs and WITHOUT_LEVER in self.runs:
            out |= self.saving_pct(OPTIMIZED_START, WITHOUT_LEVER, "cold_start_s").summary("lever_cold_start_reduction_pct")
            out |= self.saving_pct(OPTIMIZED_START, WITHOUT_LEVER, "model_load_s").summary("lever_model_load_reduction_pct")
        if NO_WARMUP in self.runs:
            out |= self.saving_pct(BASELINE_START, NO_WARMUP, "first_answer_s").summary("first_response_saving_pct")
            out |= self.saving_pct(BASELINE_START, NO_WARMUP, "cold_start_s").summary("warmup_cold_start_saving_pct")
        return out

    def table(self) -> pd.DataFrame:
        import pandas as pd

        rows = [{"variant": name, "round": r} | c.row() for name, runs in self.runs.items() for r, c in enumerate(runs)]
        return pd.DataFrame(rows).sort_values(["round", "variant"])

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
        if WITHOUT_LEVER in self.runs:
            lines.append(
                f"Against the same stack without its lever (the fp32 checkpoint cast at load): model load "
                f"{secs['optimized_without_its_lever_model_load_s']} without it, a reduction of "
                f"{summary_text(s, 'lever_model_load_reduction_pct', '+.0f', '%')} with it; the whole start "
                f"{summary_text(s, 'lever_cold_start_reduction_pct', '+.1f', '%')}."
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
    for _ in range(rounds):
        order = list(variants)
        rng.shuffle(order)
        for name in order:
            with launch(cfg, overrides=dict(variants[name]), probe_cold_start=True, timeout_s=timeout_s) as handle:
                runs[name].append(ColdStart.from_handle(handle))
    return ColdStarts({name: tuple(v) for name, v in runs.items()}, levers)
