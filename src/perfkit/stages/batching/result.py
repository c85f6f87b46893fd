"""The batching stage's result: each server variant over its rounds, the offline engine beside it, like for like.

Headline figures carry the between-round 95% interval (`<key>_ci_low`/`_ci_high`), ratios from the
per-round paired ratios; perfkit.claims judges the intervals, and the targets are called met or not
met only when the interval clears them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from perfkit.measure import Spread, ratio
from perfkit.stages.base import StageResult, named_runs
from perfkit.stages.batching import STAGE
from perfkit.stages.batching.light_load import LightLoad
from perfkit.stages.batching.render import TARGET_WORDS, ci_text, conclusion
from perfkit.stages.batching.rounds import EXTERNAL, Offline, Round, Variant

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from perfkit.load.runner import LoadRun

__all__ = ["BatchingResult", "Offline", "Round", "Variant"]


@dataclass(frozen=True)
class BatchingResult(StageResult):
    spec = STAGE
    runs: tuple[Variant, ...]
    offline: dict[int, Spread]  # batch width -> offline output tokens/s over the rounds
    users: int
    prompt_tokens: int
    target_offline_ratio: float
    target_speedup: float
    max_wait_ms: float
    offline_prefill_ms_per_row: dict[int, Spread] = field(default_factory=dict)
    noisy_cv: float = 0.05
    min_repeats: int = 5
    light: LightLoad | None = None  # C17's wait at a light open-loop load (None: not run)

    def variants(self) -> tuple[Variant, ...]:
        return self.runs

    def load_runs(self) -> dict[str, LoadRun]:
        runs = [(f"{v.name} r{r.index}", r.load) for v in self.runs for r in v.rounds]
        if self.light is not None:
            runs += self.light.runs()
        return named_runs(runs)

    def _get(self, scheduler: str) -> list[Variant]:
        return [v for v in self.runs if v.scheduler == scheduler]

    def external(self) -> list[Variant]:
        """Endpoints perfkit did not start (`load.target_url`)."""
        return self._get(EXTERNAL)

    @property
    def sequential(self) -> Variant | None:
        found = self._get("sequential")
        return found[0] if found else None

    @property
    def best_dynamic(self) -> Variant | None:
        """The dynamic variant with the largest max_batch_size: the one the targets are about."""
        found = self._get("dynamic")
        return max(found, key=lambda v: v.max_batch_size) if found else None

    @property
    def continuous(self) -> Variant | None:
        found = self._get("continuous")
        return found[0] if found else None

    def speedup(self) -> Spread | None:
        seq, dyn = self.sequential, self.best_dynamic
        return ratio(dyn.served, seq.served) if seq is not None and dyn is not None else None

    def variant_table(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame([{"variant": v.name} | v.metrics(self.noisy_cv, self.min_repeats) for v in self.runs])

    def round_table(self) -> pd.DataFrame:
        """The raw rounds: one row per variant and round, the order they ran in."""
        import pandas as pd

        rows = []
        for v in self.runs:
            for r in v.rounds:
                rows.append(
                    {
                        "variant": v.name,
                        "round": r.index,
                        "window_s": r.window_s,
                        "served_tok_s": r.served_tok_s,
                        "client_tok_s": r.load.summary.throughput_tok_s,
                        "mean_batch_size": r.mean_batch_size,
                        "batches": r.batches,
                        "queue_wait_ms_mean": r.queue_wait_ms_mean,
                        "fill_wait_ms_mean": r.fill_wait_ms_mean,
                        "offline_width": r.offline.width if r.offline else None,
                        "offline_batches": len(r.offline.seconds) if r.offline else None,
                        "offline_tok_s": r.offline.tok_s if r.offline else None,
                        "offline_cv": r.offline.cv if r.offline else None,
                    }
                )
        return pd.DataFrame(rows)

    def batch_sizes(self) -> pd.DataFrame:
        """Decode steps per batch size (rows in the step; histogram buckets) in the measured windows, per variant."""
        import pandas as pd

        rows = [{"variant": v.name, "batch_size": size, "decode_steps": n} for v in self.runs for size, n in v.histogram().items()]
        return pd.DataFrame(rows, columns=["variant", "batch_size", "decode_steps"])

    def tables(self) -> dict[str, pd.DataFrame]:
        out = {"variants": self.variant_table(), "rounds": self.round_table(), "batch_sizes": self.batch_sizes()}
        return out | ({"light_load": self.light.table()} if self.light is not None else {})

    def figures(self) -> dict[str, Figure]:
        import matplotlib.pyplot as plt
        import seaborn as sns

        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
        width = 0.38
        for i, v in enumerate(self.runs):
            for offset, label, s, color in ((-width / 2, "served", v.served, "C0"), (width / 2, "offline engine", v.offline, "C1")):
                if s is None:
                    continue
                low, high = s.ci if s.ci is not None else (s.mean, s.mean)
                left.bar(
                    i + offset,
                    s.mean,
                    width,
                    yerr=[[s.mean - low], [high - s.mean]],
                    color=color,
                    capsize=3,
                    label=label if i == 0 else None,
                )
                if s.flags(self.noisy_cv, self.min_repeats):  # the noise rule's marker
                    left.annotate("!", (i + offset, high), ha="center", va="bottom", color="red", fontweight="bold")
        left.set_xticks(range(len(self.runs)), [v.name for v in self.runs], rotation=20)
        left.set(title="served vs the offline engine, like for like (95% CI; ! = noisy)", ylabel="output tokens/s")
        left.legend()
        steps = self.batch_sizes()
        if steps.empty:
            right.text(
                0.5, 0.5, "not available: only the reference server\nexports /metrics", ha="center", va="center", transform=right.transAxes
            )
            right.set_axis_off()
        else:
            sns.barplot(data=steps, x="batch_size", y="decode_steps", hue="variant", ax=right)
            right.set(title="rows per decode step (from /metrics)", xlabel="rows (bucket upper bound)", ylabel="decode steps")
        fig.tight_layout()
        return {"batching": fig}

    def headline(self) -> dict[str, Spread]:
        """Every figure the summary, the claims and the conclusion use, by summary key."""
        out: dict[str, Spread] = {}
        out |= {f"offline_tok_s_batch{b}": s for b, s in sorted(self.offline.items())}
        out |= {f"offline_prefill_ms_per_row_batch{b}": s for b, s in sorted(self.offline_prefill_ms_per_row.items())}
        for v in self._get("dynamic"):
            for key, s in (
                (f"queue_wait_ms_mean_batch{v.max_batch_size}", v.queue_wait),
                (f"fill_wait_ms_mean_batch{v.max_batch_size}", v.fill_wait),
                (f"batch_utilization_pct_batch{v.max_batch_size}", v.utilization),
            ):
                if s is not None:
                    out[key] = s
        seq, dyn, cont = self.sequential, self.best_dynamic, self.continuous
        for prefix, v in (("sequential", seq), ("dynamic", dyn), ("continuous", cont)):
            out |= {f"{prefix}_{key}": value for key, value in (v.serving().items() if v else ()) if value is not None}
        if seq is not None:
            out["sequential_tok_s"] = seq.served
        for prefix, v in (("dynamic", dyn), ("continuous", cont)):
            if v is None:
                continue
            out[f"{prefix}_tok_s"] = v.served
            if v.offline is not None:
                out[f"{prefix}_offline_tok_s"] = v.offline
                out["served_vs_offline_ratio" if prefix == "dynamic" else "continuous_served_vs_offline_ratio"] = v.served_vs_offline  # type: ignore[assignment]
            if seq is not None:
                out["speedup_vs_sequential" if prefix == "dynamic" else "continuous_speedup_vs_sequential"] = ratio(v.served, seq.served)
        if cont is not None and dyn is not None:
            out["continuous_vs_dynamic"] = ratio(cont.served, dyn.served)
        return out

    def summary(self) -> dict[str, Any]:
        summary: dict[str, Any] = {
            "users": self.users,
            "prompt_tokens": self.prompt_tokens,
            "rounds": max((len(v.rounds) for v in self.runs), default=0),
        }
        for v in self.external():  # an endpoint perfkit did not start (load.target_url): client figures only
            summary |= (v.endpoint.as_metrics() if v.endpoint else {}) | v.served.summary("external_tok_s")
        figures = self.headline()
        for key, s in figures.items():
            summary |= s.summary(key)
        dyn = self.best_dynamic
        if dyn is not None:
            summary |= {
                "dynamic_mean_batch_size": dyn.mean_batch_size,
                "dynamic_max_batch_size": dyn.max_batch_size,
                "target_offline_ratio": self.target_offline_ratio,
                "served_above_engine": dyn.served_above_engine,
            }
            ratio_ = dyn.served_vs_offline
            if ratio_ is not None and not dyn.served_above_engine:
                summary["offline_target"] = TARGET_WORDS[ratio_.at_least(self.target_offline_ratio)].split(" (")[0]
        if (speedup := self.speedup()) is not None:
            summary |= {
                "target_speedup": self.target_speedup,
                "speedup_target": TARGET_WORDS[speedup.at_least(self.target_speedup)].split(" (")[0],
            }
        if (cont := self.continuous) is not None:
            summary |= {"continuous_mean_batch_size": cont.mean_batch_size, "continuous_max_batch_size": cont.max_batch_size}
        summary["max_wait_ms"] = self.max_wait_ms
        flagged = [k for k, s in figures.items() if s.flags(self.noisy_cv, self.min_repeats)]
        summary["noisy_figures"] = len(flagged)
        if self.light is not None:
            summary |= self.light.summary()
        return summary

    def verdict(self) -> str:
        for v in self.external():
            where = v.endpoint.base_url if v.endpoint else "?"
            return f"external endpoint {where}: {ci_text(v.served)} output tokens/s (client-side)"
        speedup, dyn = self.speedup(), self.best_dynamic
        if speedup is None or dyn is None:
            return "needs both a sequential and a dynamic variant to compare"
        return f"{dyn.name}: {ci_text(speedup, '.2f', 'x')} sequential tokens/s at mean batch {dyn.mean_batch_size:.1f}"

    def conclusion(self) -> str:
        return conclusion(self)
