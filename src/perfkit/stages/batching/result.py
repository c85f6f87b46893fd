"""The batching stage's result: one typed row per server variant, the offline engine beside them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from perfkit.claims import Check
from perfkit.stages.base import StageResult
from perfkit.stages.batching import STAGE

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from perfkit.hardware import ResourceUsage
    from perfkit.load.runner import LoadRun

# A server cannot beat the same engine run in-process on the same batches; above this ratio the offline
# run was disturbed (shared cores, thread oversubscription), and the offline target is not judged.
PLAUSIBLE_RATIO = 1.1


@dataclass(frozen=True)
class Variant:
    """One server configuration under load, and what its /metrics said it did."""

    name: str
    scheduler: str
    max_batch_size: int
    load: LoadRun
    server: ResourceUsage
    batches: float  # prefill passes: dynamic batches, or groups of newcomers joining a continuous batch
    mean_batch_size: float  # rows per decode step
    queue_wait_ms_mean: float | None
    batch_histogram: dict[str, float] = field(default_factory=dict)
    offline_tok_s: float | None = None
    requests_per_prefill: float = 1.0  # requests prefilled together: a whole dynamic batch, or a continuous join
    overrides: dict[str, Any] = field(default_factory=dict)  # the serving settings this variant ran with

    @property
    def served_vs_offline(self) -> float | None:
        return self.load.summary.throughput_tok_s / self.offline_tok_s if self.offline_tok_s else None

    def metrics(self) -> dict[str, Any]:
        out = self.load.summary.as_metrics() | self.server.as_metrics()
        out |= {"scheduler": self.scheduler, "max_batch_size": self.max_batch_size, "batches": self.batches,
                "mean_batch_size": self.mean_batch_size, "requests_per_prefill": self.requests_per_prefill}
        if self.queue_wait_ms_mean is not None:
            out["queue_wait_ms_mean"] = self.queue_wait_ms_mean
        if self.offline_tok_s is not None:
            out["offline_tok_s"] = self.offline_tok_s
            out["served_vs_offline_ratio"] = self.served_vs_offline
        return out


@dataclass(frozen=True)
class BatchingResult(StageResult):
    spec = STAGE
    runs: tuple[Variant, ...]
    offline: dict[int, float]  # batch size -> offline output tokens/s
    users: int
    prompt_tokens: int
    target_offline_ratio: float
    target_speedup: float
    max_wait_ms: float
    offline_prefill_s: dict[int, float] = field(default_factory=dict)  # batch size -> seconds to prefill the batch
    checks: tuple[Check, ...] = ()

    def variants(self) -> tuple[Variant, ...]:
        return self.runs

    def _get(self, scheduler: str) -> list[Variant]:
        return [v for v in self.runs if v.scheduler == scheduler]

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

    def variant_table(self) -> pd.DataFrame:
        """Every variant's figures, one row each (the per-variant detail metrics.json leaves out)."""
        import pandas as pd

        return pd.DataFrame([{"variant": v.name} | v.metrics() for v in self.runs])

    def batch_sizes(self) -> pd.DataFrame:
        """Decode steps per batch size (rows in the step; histogram buckets), per variant."""
        import pandas as pd

        rows = [{"variant": v.name, "batch_size": size, "decode_steps": n}
                for v in self.runs for size, n in v.batch_histogram.items()]
        return pd.DataFrame(rows, columns=["variant", "batch_size", "decode_steps"])

    def tables(self) -> dict[str, pd.DataFrame]:
        return {"variants": self.variant_table(), "batch_sizes": self.batch_sizes()}

    def figures(self) -> dict[str, Figure]:
        import matplotlib.pyplot as plt
        import seaborn as sns

        table = self.variant_table()
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
        bars = table.melt(id_vars="variant", value_vars=["throughput_tok_s", "offline_tok_s"], var_name="where",
                          value_name="output tokens/s")
        bars["where"] = bars["where"].map({"throughput_tok_s": "served", "offline_tok_s": "offline engine"})
        sns.barplot(data=bars, x="variant", y="output tokens/s", hue="where", ax=left)
        left.set(title="served vs the offline engine at the batch size formed", xlabel="")
        left.tick_params(axis="x", rotation=20)
        sns.barplot(data=self.batch_sizes(), x="batch_size", y="decode_steps", hue="variant", ax=right)
        right.set(title="rows per decode step (from /metrics)", xlabel="rows (bucket upper bound)", ylabel="decode steps")
        fig.tight_layout()
        return {"batching": fig}

    def summary(self) -> dict[str, Any]:
        summary: dict[str, Any] = {"users": self.users, "prompt_tokens": self.prompt_tokens}
        summary |= {f"offline_tok_s_batch{b}": tok for b, tok in sorted(self.offline.items())}
        summary |= {f"offline_prefill_ms_per_row_batch{b}": 1000 * s / b for b, s in sorted(self.offline_prefill_s.items())}
        for v in self._get("dynamic"):
            if v.queue_wait_ms_mean is not None:
                summary[f"queue_wait_ms_mean_batch{v.max_batch_size}"] = v.queue_wait_ms_mean
        seq, dyn = self.sequential, self.best_dynamic
        if seq is not None:
            summary["sequential_tok_s"] = seq.load.summary.throughput_tok_s
        if dyn is not None:
            summary |= {"dynamic_tok_s": dyn.load.summary.throughput_tok_s, "dynamic_mean_batch_size": dyn.mean_batch_size,
                        "dynamic_max_batch_size": dyn.max_batch_size,
                        "target_offline_ratio": self.target_offline_ratio}
            if dyn.served_vs_offline is not None:
                summary["served_vs_offline_ratio"] = dyn.served_vs_offline
                if dyn.served_vs_offline > PLAUSIBLE_RATIO:
                    summary["offline_suspect"] = True
                else:
                    summary["offline_target_met"] = dyn.served_vs_offline >= self.target_offline_ratio
        if seq is not None and dyn is not None and seq.load.summary.throughput_tok_s > 0:
            speedup = dyn.load.summary.throughput_tok_s / seq.load.summary.throughput_tok_s
            summary |= {"speedup_vs_sequential": speedup, "target_speedup": self.target_speedup,
                        "speedup_target_met": speedup >= self.target_speedup}
        cont = self.continuous
        if cont is not None:
            summary |= {"continuous_tok_s": cont.load.summary.throughput_tok_s, "continuous_max_batch_size": cont.max_batch_size,
                        "continuous_mean_batch_size": cont.mean_batch_size}
            if cont.served_vs_offline is not None:
                summary["continuous_served_vs_offline_ratio"] = cont.served_vs_offline
            if seq is not None and seq.load.summary.throughput_tok_s > 0:
                summary["continuous_speedup_vs_sequential"] = cont.load.summary.throughput_tok_s / seq.load.summary.throughput_tok_s
            if dyn is not None and dyn.load.summary.throughput_tok_s > 0:
                ratio = cont.load.summary.throughput_tok_s / dyn.load.summary.throughput_tok_s
                summary |= {"continuous_vs_dynamic": ratio, "continuous_beats_dynamic": ratio > 1.0}
        return summary

    def verdict(self) -> str:
        seq, dyn = self.sequential, self.best_dynamic
        if seq is None or dyn is None or seq.load.summary.throughput_tok_s <= 0:
            return "needs both a sequential and a dynamic variant to compare"
        speedup = dyn.load.summary.throughput_tok_s / seq.load.summary.throughput_tok_s
        return f"{dyn.name}: {speedup:.2f}x sequential tokens/s at mean batch {dyn.mean_batch_size:.1f}"

    def conclusion(self) -> str:
        lines = []
        seq, dyn = self.sequential, self.best_dynamic
        if seq is not None and dyn is not None and seq.load.summary.throughput_tok_s > 0:
            s, d = seq.load.summary, dyn.load.summary
            speedup = d.throughput_tok_s / s.throughput_tok_s
            ratio = dyn.served_vs_offline or 0.0
            if ratio > PLAUSIBLE_RATIO:
                judged = ("which cannot be: the offline run was slowed by something else on the machine (shared cores, "
                          "thread oversubscription), so the offline target is not judged on this run")
            else:
                judged = f"target >= {self.target_offline_ratio:.0%}: " + (
                    "met" if ratio >= self.target_offline_ratio else "not met")
                if ratio > 1.0:
                    judged += ("; above 100% is not a server beating its engine but the two measurements, minutes "
                               "apart on a shared machine, differing by its run-to-run noise")
            lines.append(
                f"At {self.users} users, {dyn.name} served {d.throughput_tok_s:.1f} output tokens/s against "
                f"{s.throughput_tok_s:.1f} sequential ({speedup:.2f}x; target >= {self.target_speedup:g}x: "
                f"{'met' if speedup >= self.target_speedup else 'not met'}), forming batches of {dyn.mean_batch_size:.1f} "
                f"on average; the offline engine reaches {dyn.offline_tok_s or 0:.1f} tokens/s at that batch size, so the "
                f"server delivers {ratio:.0%} of it ({judged})."
            )
            p50 = (d.e2e.p50 if d.e2e else float("nan"), s.e2e.p50 if s.e2e else float("nan"))
            lines.append(
                f"Latency p50 went from {p50[1] / 1000:.2f} s to {p50[0] / 1000:.2f} s, and the server's CPU from "
                f"{seq.server.cpu_util_pct:.0f}% to {dyn.server.cpu_util_pct:.0f}% (100% = one core) while tokens/s changed "
                f"{speedup:.2f}x: utilization alone says little about useful work (C17's 65% -> 92% is a GPU figure)."
            )
        cont = self.continuous
        if cont is not None and dyn is not None and dyn.load.summary.throughput_tok_s > 0:
            c, d = cont.load.summary, dyn.load.summary
            ratio = c.throughput_tok_s / d.throughput_tok_s
            prefill = ""
            if 1 in self.offline_prefill_s and len(self.offline_prefill_s) > 1:
                b = max(self.offline_prefill_s)
                alone, batched = 1000 * self.offline_prefill_s[1], 1000 * self.offline_prefill_s[b] / b
                tpot = (c.tpot.p50 if c.tpot else float("nan"), d.tpot.p50 if d.tpot else float("nan"))
                prefill = (
                    f" What continuous batching pays instead: a {self.prompt_tokens}-token prompt takes {alone:.0f} ms to "
                    f"prefill alone and {batched:.0f} ms per row in a batch of {b}; {dyn.name} prefilled "
                    f"{dyn.requests_per_prefill:.1f} requests at a time, {cont.name} {cont.requests_per_prefill:.1f}, and "
                    f"each join is a forward pass of its own while the running rows wait (time per output token p50 "
                    f"{tpot[0]:.0f} ms against {tpot[1]:.0f} ms)."
                )
            lines.append(
                f"{cont.name} served {c.throughput_tok_s:.1f} output tokens/s at {cont.mean_batch_size:.1f} rows per decode "
                f"step, {ratio:.2f}x {dyn.name} ({'beats it' if ratio > 1 else 'does not beat it'}) and "
                f"{cont.served_vs_offline or 0:.0%} of the offline engine at that batch size. Refilling a slot at the next "
                f"step pays off when rows end at different times; with a fixed output length every row of a batch ends "
                f"together, so dynamic batching wastes no slot here (bench/continuous.py runs both with varied "
                f"lengths).{prefill}"
            )
        eight = [v for v in self._get("dynamic") if v.max_batch_size == 8 and v.queue_wait_ms_mean is not None]
        if eight:
            wait = eight[0].queue_wait_ms_mean or 0.0
            lines.append(
                f"The mean queue wait with max_batch_size 8 was {wait:.0f} ms; the fill window is at most "
                f"{self.max_wait_ms:g} ms, so about {max(0.0, wait - self.max_wait_ms):.0f} ms of it is waiting for the "
                f"batch ahead to finish."
            )
        if 1 in self.offline and len(self.offline) > 1:
            b = max(self.offline)
            gain = self.offline[b] / self.offline[1]
            lines.append(
                f"Prefill barely batches on a CPU, so the prompt length decides the gain: offline, batch {b} gives "
                f"{gain:.1f}x the output tokens/s of batch 1 with these {self.prompt_tokens}-token prompts; shorter prompts "
                f"gain more, longer ones less."
            )
        capped = [v.name for v in self.runs if v.max_batch_size > self.users]
        if capped:
            lines.append(f"{', '.join(capped)}: max_batch_size above the {self.users} users in flight cannot fill.")
        weak = [v.name for v in self.runs if not v.load.summary.p99_reliable]
        if weak:
            lines.append(f"p99 rests on fewer than 100 requests in {', '.join(weak)}: read it as a rough upper tail.")
        flagged = [f"{v.name}: {'; '.join(v.load.summary.flags)}" for v in self.runs if v.load.summary.flags]
        if flagged:
            lines.append("Load run checks: " + " | ".join(flagged) + "; read those variants with that in mind.")
        lines.append(self.claims_text())
        return "\n\n".join(lines)


