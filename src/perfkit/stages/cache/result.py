"""The cache stage's result: the latency curve per variant with its fitted model, semantic wrong hits, faults, prefix reuse."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from perfkit.load.prefix import TurnTimes
from perfkit.questions import SemanticCount
from perfkit.serving.metrics import histogram_quantile
from perfkit.stages.base import StageResult
from perfkit.stages.cache import STAGE, render
from perfkit.stages.cache.model import HitRateModel, reduction_ci
from perfkit.stages.cache.prefix import PrefixRow
from perfkit.stages.cache.served import Fault, Flood, PointRun
from perfkit.stats import mean_ci

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

CLAIMED_REDUCTION = 0.75  # C2: 1.2 s -> 0.3 s


@dataclass(frozen=True)
class Redis:
    rtt_ms: tuple[float, ...] = ()
    flood: Flood | None = None
    fault: Fault | None = None


def _ms(run: PointRun, cache: str | None = None) -> list[float]:
    return [t.latency_s * 1000 for t in run.requests if cache is None or t.cache == cache]


def _mean(xs: list[float]) -> float:
    return float(np.mean(xs)) if xs else float("nan")


def _step_ms(run: PointRun, step: str) -> float | None:
    count = run.server.get(f"perfkit_cache_lookup_seconds_count.{step}", 0.0)
    return 1000 * run.server[f"perfkit_cache_lookup_seconds_sum.{step}"] / count if count else None


def _step_p50_ms(run: PointRun, step: str) -> float | None:
    """A cache step's median at the server, from its histogram's sub-millisecond buckets."""
    prefix = f"perfkit_cache_lookup_seconds_bucket.{step}."
    p50 = histogram_quantile({k[len(prefix) :]: v for k, v in run.server.items() if k.startswith(prefix)}, 0.5)
    return None if p50 is None else 1000 * p50


@dataclass(frozen=True)
class CacheResult(StageResult):
    spec = STAGE
    runs: tuple[PointRun, ...]
    semantic: PointRun | None
    sweep: tuple[SemanticCount, ...]
    redis: Redis
    prefix: tuple[PrefixRow, ...]
    claim_variant: str
    claim_target: float
    threshold: float
    max_tokens: int
    load_avg: tuple[float, float]
    turns: tuple[TurnTimes, ...] = ()  # multi-turn conversations, per turn (results saved before them have none)

    def variants(self) -> tuple[PointRun, ...]:
        return self.runs

    def of(self, variant: str) -> list[PointRun]:
        return [r for r in self.runs if r.variant == variant]

    def model(self, variant: str) -> HitRateModel | None:
        return HitRateModel.fit([(r.hit_rate, _mean(_ms(r))) for r in self.of(variant)])

    @property
    def none_ms(self) -> list[float]:
        return [x for r in self.of("none") for x in _ms(r)]

    def hit_rate(self) -> float | None:
        """The hit rate of the claim's run (its Zipf question workload); None where that run is missing."""
        claim = self.claim_run()
        return claim.hit_rate if claim is not None else None

    def claim_run(self) -> PointRun | None:
        found = [r for r in self.of(self.claim_variant) if r.target == self.claim_target]
        return found[0] if found else None

    def prefix_cut_pct(self, where: str) -> tuple[int, float] | None:
        rows = {(p.prefix_tokens, p.reuse): p.ttft_ms_mean for p in self.prefix if p.where == where}
        longest = max((n for n, _ in rows), default=None)
        if longest is None or (longest, True) not in rows or (longest, False) not in rows:
            return None
        return longest, 100 * (1 - rows[(longest, True)] / rows[(longest, False)])

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"load_avg_start": self.load_avg[0], "load_avg_end": self.load_avg[1]}
        if self.none_ms:
            out["latency_ms_mean_uncached"] = _mean(self.none_ms)
        claim, model = self.claim_run(), self.model(self.claim_variant)
        if model is not None:
            out |= {"t_hit_ms": model.t_hit_ms, "t_miss_ms": model.t_miss_ms, "model_max_error_pct": self.model_error_pct()}
            out |= self.worst_point()
        if claim is not None and self.none_ms:
            after = _ms(claim)
            reduction = 100 * (1 - _mean(after) / _mean(self.none_ms))
            low, high = reduction_ci(self.none_ms, after)
            out |= {
                "cache_hit_rate": claim.hit_rate,
                "c2_hit_rate_pct": 100 * claim.hit_rate,
                "mean_latency_reduction_pct": reduction,
                "mean_latency_reduction_pct_ci_low": low,
                "mean_latency_reduction_pct_ci_high": high,
            }
            if model is not None:
                needed = model.needed_hit_rate((1 - CLAIMED_REDUCTION) * _mean(self.none_ms))
                if needed is not None:
                    out["c2_needed_hit_rate_pct"] = 100 * needed
        hits = [x for r in self.of("redis-exact") for x in _ms(r, "hit")]
        if hits:
            out["redis_hit_latency_ms_p50_client"] = float(np.median(hits))
        exact = [r for r in self.of("redis-exact") if _step_ms(r, "exact") is not None]
        if exact:
            out["redis_lookup_ms_mean_server"] = _mean([_step_ms(r, "exact") or 0.0 for r in exact])
            out["redis_store_ms_mean_server"] = _mean([v for r in exact if (v := _step_ms(r, "store")) is not None])
            # What the cache adds to a miss: its GET that found nothing, and the SET of the answer (which runs
            # after the last token went out, before the stream's end), each at its median.
            overhead = [
                lookup + store
                for r in exact
                if (lookup := _step_p50_ms(r, "exact")) is not None and (store := _step_p50_ms(r, "store")) is not None
            ]
            if overhead:
                out["miss_overhead_ms_p50_server"] = _mean(overhead)
        if self.redis.rtt_ms:
            out["redis_rtt_ms_p50"] = float(np.median(self.redis.rtt_ms))
        if self.semantic is not None:
            s = self.semantic
            hits_n = sum(t.cache == "hit" for t in s.requests)
            wrong = sum(t.wrong for t in s.requests)
            out |= {
                "semantic_hit_rate_pct": 100 * s.hit_rate,
                "semantic_wrong_hits": wrong,
                "semantic_wrong_hit_rate_pct": 100 * wrong / len(s.requests),
                "semantic_precision": (hits_n - wrong) / hits_n if hits_n else 1.0,
            }
        sem = [r for r in self.of("redis-semantic") if _step_ms(r, "embed") is not None]
        if sem:
            out["semantic_embed_ms_mean"] = _mean([_step_ms(r, "embed") or 0.0 for r in sem])
            out["semantic_search_ms_mean"] = _mean([v for r in sem if (v := _step_ms(r, "semantic")) is not None])
        if (f := self.redis.fault) is not None:
            out |= {
                "fault_5xx": f.server_errors,
                "fault_lost_requests": f.lost,
                "fault_cache_errors": f.cache_errors,
                "fault_slowest_ms": f.slowest_during_outage_ms,
            }
            if f.recovery_s is not None:
                out["fault_recovery_s"] = f.recovery_s
        if (fl := self.redis.flood) is not None:
            out |= {
                "flood_redis_used_mb": fl.redis_used_bytes / 2**20,
                "flood_max_memory_mb": fl.max_memory_bytes / 2**20,
                "flood_evictions": fl.evictions,
                "flood_server_rss_growth_mb": fl.server_rss_mb_after - fl.server_rss_mb_before,
            }
        for where in ("offline", "served"):
            if (cut := self.prefix_cut_pct(where)) is not None:
                out[f"prefix_ttft_cut_pct_{where}"] = cut[1]
                out["prefix_tokens_max"] = cut[0]
        same = [p.same_tokens for p in self.prefix if p.same_tokens is not None]
        if same:
            out["prefix_same_tokens"] = all(same)
        return out | self.turn_figures()

    def turn_figures(self) -> dict[str, Any]:
        """Time to first token from the second turn on, cold and warm, and the share of the warm prompts matched."""
        later = [t for t in self.turns if t.turn > 1]
        if not later:
            return {}
        cold = [x for t in later for x in t.cold_ms]
        warm = [x for t in later for x in t.warm_ms]
        low, high = reduction_ci(cold, warm)
        out = {
            "multi_turn_turns": max(t.turn for t in self.turns),
            "multi_turn_conversations": len(self.turns[0].warm_ms),
            "multi_turn_ttft_ms_cold": _mean(cold),
            "multi_turn_ttft_ms_warm": _mean(warm),
            "multi_turn_ttft_cut_pct": 100 * (1 - _mean(warm) / _mean(cold)),
            "multi_turn_ttft_cut_pct_ci_low": low,
            "multi_turn_ttft_cut_pct_ci_high": high,
            "multi_turn_prompt_tokens_last": _mean([float(n) for n in self.turns[-1].prompt_tokens]),
        }
        if all(t.reused_tokens for t in later):
            prompt = sum(n for t in later for n in t.prompt_tokens)
            out["multi_turn_matched_pct"] = 100 * sum(x for t in later for x in t.reused_tokens) / prompt if prompt else 0.0
        return out

    def worst_point(self) -> dict[str, float]:
        """Where the fitted line misses most, split into what that point's misses and its hits each contribute.

        A point's mean is exactly h * (its hits' mean) + (1 - h) * (its misses' mean), and the line predicts
        h * t_hit + (1 - h) * t_miss, so the error splits exactly: (1 - h)(misses' mean - t_miss) comes from its
        misses costing other than the fitted miss, the rest from its hits. The misses' 95% interval says whether
        they cost other than t_miss beyond their own spread.
        """
        model = self.model(self.claim_variant)
        runs = self.of(self.claim_variant)
        if model is None or not runs:
            return {}

        def error(run: PointRun) -> float:
            return _mean(_ms(run)) / model.predict_ms(run.hit_rate) - 1

        worst = max(runs, key=lambda r: abs(error(r)))
        out = {"model_worst_point_hit_rate_pct": 100 * worst.hit_rate, "model_worst_point_error_pct": 100 * error(worst)}
        misses = _ms(worst, "miss")
        if misses:
            out |= {
                "model_worst_point_misses": float(len(misses)),
                "model_worst_point_miss_ms": _mean(misses),
                "model_error_from_miss_cost_pct": 100
                * (1 - worst.hit_rate)
                * (_mean(misses) - model.t_miss_ms)
                / model.predict_ms(worst.hit_rate),
            }
            if (ci := mean_ci(misses)) is not None:
                out["model_worst_point_miss_ms_ci_low"], out["model_worst_point_miss_ms_ci_high"] = ci
        return out

    def model_error_pct(self) -> float:
        """The largest |error| of the fitted line over the claim variant's points, in %; NaN without a model."""
        worst = self.worst_point()
        return abs(worst["model_worst_point_error_pct"]) if worst else float("nan")

    def tables(self) -> dict[str, pd.DataFrame]:
        import pandas as pd

        points = []
        for r in self.runs:
            ms, model = _ms(r), self.model(r.variant)
            points.append(
                {
                    "variant": r.variant,
                    "target": r.target,
                    "hit_rate": r.hit_rate,
                    "planned_hit_rate": r.planned_hit_rate,
                    "requests": len(ms),
                    "misses": sum(t.cache != "hit" for t in r.requests),
                    "warm": r.warm,
                    "zipf_s": r.zipf_s,
                    "latency_ms_mean": _mean(ms),
                    "latency_ms_p50": float(np.median(ms)),
                    "latency_ms_p99": float(np.percentile(ms, 99)),
                    "hit_ms_mean": _mean(_ms(r, "hit")),
                    "miss_ms_mean": _mean(_ms(r, "miss") or _ms(r, "")),
                    "model_ms": model.predict_ms(r.hit_rate) if model else None,
                    "server_lookup_ms_mean": _step_ms(r, "exact"),
                    "errors_5xx": sum(t.status >= 500 for t in r.requests),
                }
            )
        thresholds = [
            {
                "threshold": s.threshold,
                "hit_rate": s.hit_rate,
                "precision": s.precision,
                "wrong_hit_rate": s.wrong_hit_rate,
                "hits": s.hits,
                "wrong_hits": s.wrong_hits,
                "requests": s.requests,
            }
            for s in self.sweep
        ]
        prefix = [
            {
                "where": p.where,
                "prefix_tokens": p.prefix_tokens,
                "reuse": p.reuse,
                "ttft_ms_mean": p.ttft_ms_mean,
                "ttft_ms_min": min(p.ttft_ms),
                "samples": len(p.ttft_ms),
                "same_tokens": p.same_tokens,
            }
            for p in self.prefix
        ]
        turns = [
            {
                "turn": t.turn,
                "reuse": reuse,
                "prompt_tokens_mean": _mean([float(n) for n in t.prompt_tokens]),
                "ttft_ms_mean": _mean(list(ms)),
                "ttft_ms_min": min(ms),
                "conversations": len(ms),
                "matched_pct": 100 * sum(t.reused_tokens) / sum(t.prompt_tokens)
                if reuse and t.reused_tokens and sum(t.prompt_tokens)
                else None,
            }
            for t in self.turns
            for reuse, ms in ((False, t.cold_ms), (True, t.warm_ms))
        ]
        return {
            "points": pd.DataFrame(points),
            "thresholds": pd.DataFrame(thresholds),
            "prefix": pd.DataFrame(prefix),
            "turns": pd.DataFrame(turns),
        }

    def figures(self) -> dict[str, Figure]:
        return render.figures(self)

    def verdict(self) -> str:
        s = self.summary()
        if "mean_latency_reduction_pct" not in s:
            return "the claim's variant and point were not measured"
        return (
            f"{self.claim_variant} at {s['c2_hit_rate_pct']:.0f}% measured hits: mean response "
            f"{s['mean_latency_reduction_pct']:.0f}% below no cache"
        )

    def conclusion(self) -> str:
        return render.conclusion(self)
