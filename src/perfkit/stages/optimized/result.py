"""The optimized stage's result: baseline and optimized over interleaved rounds, relative figures with intervals."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from perfkit.config import CostConfig
from perfkit.costs import cost_of, instances_for
from perfkit.load.served import ServedRun, stack_keys
from perfkit.measure import Latency, Spread, ratio
from perfkit.stages.base import StageResult, named_runs
from perfkit.stages.optimized import STAGE, render
from perfkit.stages.optimized.ablation import AblationStep
from perfkit.stages.optimized.case_study import CaseStudy
from perfkit.stages.optimized.choose import Choice, stack_overrides
from perfkit.stages.optimized.cold_starts import ColdStarts

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from perfkit.load.runner import LoadRun

# (row label, per-round key, unit, lower is better, the article's before, after) -- its tables 3.2 and 3.3
ROWS = (
    ("mean latency", "latency_ms_mean", "ms", True, 2800.0, 700.0),
    ("p50 latency", "latency_ms_p50", "ms", True, None, None),
    ("p50 time to first token", "ttft_ms_p50", "ms", True, None, None),
    ("p50 time per output token", "tpot_ms_p50", "ms", True, None, None),
    ("requests/s", "throughput_rps", "req/s", False, 12.0, 45.0),
    ("output tokens/s", "throughput_tok_s", "tok/s", False, None, None),
    ("peak server memory", "peak_rss_mb", "MB", True, 28_000.0, 19_000.0),
    ("$ per 1k requests", "cost_usd_per_1k_req", "$", True, None, None),
    ("monthly cost at the target QPS", "usd_per_month_at_target", "$", True, 1200.0, 850.0),
    ("QPS per $ per month", "qps_per_usd_month", "QPS/$", False, 0.01, 0.053),
)
# relative summary key -> (per-round key, how a round's optimized/baseline ratio r becomes it)
RELATIVE = {
    "latency_reduction_pct": ("latency_ms_mean", lambda r: 100 * (1 - r)),
    "throughput_gain_pct": ("throughput_rps", lambda r: 100 * (r - 1)),
    "throughput_tok_s_gain": ("throughput_tok_s", lambda r: r),
    "peak_memory_reduction_pct": ("peak_rss_mb", lambda r: 100 * (1 - r)),
    "monthly_cost_reduction_pct": ("usd_per_month_at_target", lambda r: 100 * (1 - r)),
    "qps_per_usd_gain": ("qps_per_usd_month", lambda r: r),
}


# Server settings that act on a cold start (imports, model load, warm-up): a stack changing none of them cannot test
# a cold-start claim (C13), whatever its cold starts measure.
COLD_START_SETTINGS = ("serving.warmup", "serving.prepared_checkpoint")


def round_figures(run: ServedRun, cost: CostConfig) -> dict[str, float]:
    """One run's headline figures, cost included: instances for the target QPS at this run's req/s."""
    s = run.load.summary
    out: dict[str, float] = {
        "throughput_rps": s.throughput_rps,
        "throughput_tok_s": s.throughput_tok_s,
        "peak_rss_mb": run.server.peak_rss_mb,
        "error_rate": s.error_rate,
    }
    for prefix, lat in (("latency", s.e2e), ("ttft", s.ttft), ("tpot", s.tpot)):
        if lat is not None:
            out |= {f"{prefix}_ms_mean": lat.mean, f"{prefix}_ms_p50": lat.p50}
    for prefix, per_token in (("itl", s.itl), ("ttst", s.ttst)):
        if per_token is not None:
            out[f"{prefix}_ms_p50"] = per_token.latency.p50
    if s.goodput is not None:
        out["goodput_pct"] = 100.0 * s.goodput.share
        out["goodput_rps"] = s.goodput.rate_rps
    if run.cold_start_s is not None:
        out["cold_start_s"] = run.cold_start_s
    out |= {"model_load_s": run.load_s, "ready_s": run.ready_s}
    priced = cost_of(s.throughput_rps, cost)
    instances = instances_for(cost.target_qps, s.throughput_rps)
    out |= {
        "cost_usd_per_1k_req": priced.cost_usd_per_1k_req,
        "qps_per_usd_month": priced.qps_per_usd_month,
        "instances_at_target": instances,
        "usd_per_month_at_target": instances * priced.usd_per_month,
    }
    return out


def pooled(runs: list[ServedRun], field: str) -> Latency | None:
    """A latency over every round's measured, answered requests (p99 from all rounds together)."""
    values = [getattr(t, field) for r in runs for t in r.load.timings if not t.warmup and t.ok and getattr(t, field) is not None]
    return Latency.from_samples(values) if values else None


@dataclass(frozen=True)
class OptimizedResult(StageResult):
    spec = STAGE
    choices: tuple[Choice, ...]
    missing: tuple[str, ...]  # upstream stages with no saved result
    rounds: dict[str, list[ServedRun]]  # "baseline" / "optimized" -> one run per round, interleaved
    ablation: tuple[AblationStep, ...]
    cost: CostConfig
    requests_per_round: int  # per arm that batches; a sequential arm serves `sequential_requests`
    load_avg: tuple[float, float]
    case_study: CaseStudy | None = None
    cold_starts: ColdStarts | None = None
    baseline_stage_tok_s: float | None = None  # the baseline stage's own tokens/s: a consistency check, not a figure used

    def variants(self) -> list[ServedRun]:
        return [r for runs in self.rounds.values() for r in runs]

    def load_runs(self) -> dict[str, LoadRun]:
        return named_runs((f"{arm} r{run.round}", run.load) for arm, runs in self.rounds.items() for run in runs)

    def figures_by_round(self, variant: str) -> list[dict[str, float]]:
        return [round_figures(r, self.cost) for r in self.rounds[variant]]

    def spread(self, variant: str, key: str) -> Spread | None:
        values = [f[key] for f in self.figures_by_round(variant) if key in f and math.isfinite(f[key])]
        return Spread(tuple(values), samples=len(values)) if values and len(values) == len(self.rounds[variant]) else None

    def relative(self, key: str) -> Spread | None:
        """The optimized/baseline paired per-round ratio of a figure, mapped to its summary key's form."""
        figure, form = RELATIVE[key]
        opt, base = self.spread("optimized", figure), self.spread("baseline", figure)
        if opt is None or base is None or any(v == 0 for v in base.values):
            return None
        return ratio(opt, base).map(form)

    def variant_metrics(self) -> dict[str, dict[str, Any]]:
        """The same keys for every variant (MLflow's compare view lines them up): round means with intervals, pooled p99s."""
        out = {}
        for variant, runs in self.rounds.items():
            means: dict[str, Any] = {}
            for key in self.figures_by_round(variant)[0]:
                spread = self.spread(variant, key)
                if spread is not None:
                    means |= spread.summary(key)  # the round mean and its interval: `perfkit compare` judges with it
            for prefix, field in (("latency", "e2e_s"), ("ttft", "ttft_s")):
                lat = pooled(runs, field)
                if lat is not None and lat.p99_reliable:
                    means[f"{prefix}_ms_p99"] = lat.p99
            out[variant] = means | {"rounds": len(runs), "requests": sum(r.load.summary.requests for r in runs)}
        return out

    def load_flags(self) -> list[str]:
        """Each run the load generator flagged (time limit, busy client), by variant and round or step."""
        runs = [(f"{r.name} round {r.round + 1}", r) for runs in self.rounds.values() for r in runs]
        return [f"{label}: {'; '.join(r.load.summary.flags)}" for label, r in runs if r.load.summary.flags]

    @property
    def stack(self) -> str:
        return ", ".join(c.choice for c in self.choices if c.applied) or "nothing (no upstream measurement favoured a change)"

    def stack_overrides(self) -> dict[str, Any]:
        """The server settings the stack applies over the baseline (what the capacity stage serves)."""
        return stack_overrides(self.choices)

    def summary(self) -> dict[str, Any]:
        metrics = self.variant_metrics()
        s: dict[str, Any] = {
            "stack": self.stack,
            "rounds": len(self.rounds["baseline"]),
            "requests_per_round": self.requests_per_round,
            "baseline_requests_per_round": self.rounds["baseline"][0].load.summary.requests,
            "target_qps": self.cost.target_qps,
            "missing_stages": ", ".join(self.missing) or "none",
            "load_avg_start": self.load_avg[0],
            "load_avg_end": self.load_avg[1],
        }
        stack = self.stack_overrides()
        s |= stack_keys(stack)  # typed: the capacity stage serves this stack
        levers = [key for key in stack if key in COLD_START_SETTINGS]
        s |= {"stack_cold_start_levers": ", ".join(levers) or "none", "stack_has_cold_start_lever": bool(levers)}
        for variant in ("baseline", "optimized"):
            for key in (
                "latency_ms_mean",
                "latency_ms_p50",
                "latency_ms_p99",
                "ttft_ms_p50",
                "ttft_ms_p99",
                "tpot_ms_p50",
                "itl_ms_p50",
                "ttst_ms_p50",
                "goodput_pct",
                "goodput_rps",
                "throughput_rps",
                "throughput_tok_s",
                "peak_rss_mb",
                "cost_usd_per_1k_req",
                "instances_at_target",
                "usd_per_month_at_target",
                "qps_per_usd_month",
                "error_rate",
            ):
                if key in metrics[variant]:
                    s[f"{variant}_{key}"] = metrics[variant][key]
        for key in RELATIVE:
            spread = self.relative(key)
            if spread is not None:
                s |= spread.summary(key)
        if self.case_study is not None:
            s |= self.case_study.summary()
        if self.cold_starts is not None:
            s |= self.cold_starts.summary()
        s.setdefault("cold_start_samples", 0)  # no block run: C13's and C19's why says so
        s["cold_start_claim_tested"] = bool(levers) and bool(s.get("cold_start_samples_enough"))
        if self.baseline_stage_tok_s:
            s["baseline_stage_tok_s"] = self.baseline_stage_tok_s
        flags = self.load_flags()
        if flags:
            s["load_flags"] = " | ".join(flags)
        best_single = self.best_single()
        if best_single is not None:
            s["best_single"] = best_single
            s |= self.arm_ratio("optimized", best_single).summary("tok_s_vs_best_single")
        interaction = self.interaction()
        if interaction is not None:
            s |= interaction.summary("ablation_interaction")
        return s

    def arm_tok_s(self, arm: str) -> Spread:
        spread = self.spread(arm, "throughput_tok_s")
        if spread is None:
            raise ValueError(f"ablation arm {arm!r} has no tokens/s in every round")
        return spread

    def arm_ratio(self, arm: str, over: str = "baseline") -> Spread:
        """Tokens/s of one arm over another's, paired round by round."""
        return ratio(self.arm_tok_s(arm), self.arm_tok_s(over))

    def singles(self) -> list[str]:
        """The arms that serve one optimization alone."""
        return sorted({st.arm for st in self.ablation if len(st.areas) == 1})

    def best_single(self) -> str | None:
        singles = self.singles()
        return max(singles, key=lambda arm: self.arm_tok_s(arm).mean) if len(singles) > 1 else None

    def interaction(self) -> Spread | None:
        """With two optimizations (a 2 x 2 factorial): the full stack's gain over the product of the two single gains,
        per round. 1: they compose multiplicatively; below 1: they share what they speed up."""
        singles = self.singles()
        if len(singles) != 2 or len({st.areas for st in self.ablation}) != 4:  # baseline, each alone, both
            return None
        first, second = singles
        return ratio(self.arm_ratio("optimized", first), self.arm_ratio(second))

    # -- tables --------------------------------------------------------------------------------------

    def comparison(self) -> pd.DataFrame:
        """The article's before/after tables beside what was measured here, with the change's interval."""
        import pandas as pd

        rows = []
        for label, key, unit, _lower, before, after in ROWS:
            base, opt = self.spread("baseline", key), self.spread("optimized", key)
            row = {
                "measure": f"{label} ({unit})",
                "baseline": base.mean if base else None,
                "optimized": opt.mean if opt else None,
                "change (%)": None,
                "change 95% CI (%)": "—",
                "article before": before,
                "article after": after,
            }
            rel = self.relative_change(key)
            if rel is not None:
                row["change (%)"] = rel.mean
                if rel.ci is not None:
                    row["change 95% CI (%)"] = f"{rel.ci[0]:+.1f} to {rel.ci[1]:+.1f}"
            rows.append(row)
        return pd.DataFrame(rows)

    def relative_change(self, key: str) -> Spread | None:
        """Per-round paired % change optimized vs baseline of any per-round figure."""
        opt, base = self.spread("optimized", key), self.spread("baseline", key)
        if opt is None or base is None or any(v == 0 for v in base.values):
            return None
        return ratio(opt, base).map(lambda r: 100 * (r - 1))

    def choice_table(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame([c.row() for c in self.choices])

    def round_table(self) -> pd.DataFrame:
        import pandas as pd

        rows = [{"variant": r.name, "round": r.round} | round_figures(r, self.cost) for runs in self.rounds.values() for r in runs]
        return pd.DataFrame(rows).sort_values(["round", "variant"], kind="stable")

    def ablation_table(self) -> pd.DataFrame:
        import pandas as pd

        rows = []
        for i, step in enumerate(self.ablation):
            tok, gain, latency = self.arm_tok_s(step.arm), self.arm_ratio(step.arm), self.spread(step.arm, "latency_ms_mean")
            rows.append(
                {
                    "step": i,
                    "name": step.name,
                    "kind": step.kind,
                    "optimizations on": " + ".join(step.areas) or "none",
                    "arm": step.arm,
                    **tok.columns("throughput_tok_s", 1.0, 0),
                    **gain.summary("tok_s_vs_baseline"),
                    "latency_ms_mean": latency.mean if latency else None,
                    "requests": sum(r.load.summary.requests for r in self.rounds[step.arm]),
                }
            )
        return pd.DataFrame(rows, columns=None if rows else ["step", "name", "kind", "throughput_tok_s"])

    def tables(self) -> dict[str, pd.DataFrame]:
        out = {
            "comparison": self.comparison(),
            "choices": self.choice_table(),
            "rounds": self.round_table(),
            "ablation": self.ablation_table(),
        }
        if self.case_study is not None:
            out["case_study"] = self.case_study.table()
        if self.cold_starts is not None:
            out["cold_starts"] = self.cold_starts.table()
        return out

    # -- figures and words ---------------------------------------------------------------------------

    def figures(self) -> dict[str, Figure]:
        return render.figures(self)

    def verdict(self) -> str:
        s = self.summary()
        if "throughput_tok_s_gain" not in s:
            return f"optimized ({self.stack}) could not be compared with the baseline"
        return (
            f"optimized ({self.stack}): {s['throughput_tok_s_gain']:.2f}x the baseline's tokens/s, mean latency "
            f"{s['baseline_latency_ms_mean'] / 1000:.2f} → {s['optimized_latency_ms_mean'] / 1000:.2f} s over {s['rounds']} rounds"
        )

    def conclusion(self) -> str:
        return render.conclusion(self)

    def headline_table(self) -> tuple[str, pd.DataFrame]:
        return render.headline(self)
