"""The capacity stage's result: each stack's rate search, its capacity at the SLO, and what that capacity costs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from perfkit.config import CostConfig, SloConfig
from perfkit.costs import cost_of
from perfkit.load.slo import AT_LEAST, BELOW, BRACKETED, MAX, Capacity, RatePoint
from perfkit.stages.base import StageResult, named_runs
from perfkit.stages.capacity import STAGE

# A multi-turn point whose turns arrived below this share of its rate says so: each turn waits on the last answer.
PACED_SHARE = 0.8
GOODPUT_SHARE_PCT = 99.0  # the attainment the capacity is also read at: the rate where 99% of requests meet the SLO

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from perfkit.load.runner import LoadRun


def stack_label(overrides: dict[str, Any]) -> str:
    """`sequential, float32` / `dynamic-b8, bfloat16`: the settings that tell the stacks apart."""
    scheduler = overrides.get("serving.scheduler", "sequential")
    size = overrides.get("serving.max_batch_size")
    batch = f"-b{size}" if scheduler != "sequential" and size is not None else ""
    store = ", prefix store" if overrides.get("serving.cache.prefix_mb", 0) > 0 else ""
    return f"{scheduler}{batch}, {overrides.get('serving.dtype', 'float32')}{store}"


@dataclass(frozen=True)
class StackSearch:
    """One stack's bounded rate search: its points in the order measured and the capacity they bracket."""

    name: str  # baseline | optimized | optimized_multi_turn
    overrides: dict[str, Any]
    points: tuple[RatePoint, ...]
    capacity: Capacity
    source: str = ""  # where the stack's settings came from
    reused_from: str | None = None  # the same settings as another stack: its search, not measured twice
    workload: str = "single"  # the request stream: single turns, or multi_turn conversations

    @property
    def label(self) -> str:
        return stack_label(self.overrides)

    @property
    def title(self) -> str:
        return self.name.replace("_", " ").replace("multi turn", "on multi-turn conversations")

    def at_capacity(self) -> RatePoint | None:
        return next((p for p in self.points if p.passed and p.rate_rps == self.capacity.rate_rps), None)

    def goodput_at(self, share_pct: float) -> RatePoint | None:
        """The highest rate whose requests met both bounds in at least `share_pct`% of cases (the point estimate)."""
        met = [p for p in self.points if p.goodput_pct is not None and p.goodput_pct >= share_pct]
        return max(met, key=lambda p: p.rate_rps, default=None)

    def metrics(self, cost: CostConfig) -> dict[str, Any]:
        """The stack's headline figures (no prefix): capacity, its bound, and the fleet for the target QPS."""
        c = self.capacity
        instances, bound = c.instances_for(cost.target_qps)
        out: dict[str, Any] = {
            "capacity_rps": c.rate_rps,
            "capacity_bound": c.bound,
            "points": c.points,
            "instances_at_target": instances,
            "instances_bound": bound,
            "usd_per_month_at_target": instances * cost_of(c.rate_rps, cost).usd_per_month,
        }
        if c.first_failing_rps is not None:
            out["first_failing_rps"] = c.first_failing_rps
            out["first_failing_measured"] = c.ceiling_rps is None  # else the stack's closed-loop ceiling
        point = self.at_capacity()
        good = self.goodput_at(GOODPUT_SHARE_PCT)
        if good is not None:
            out |= {
                "goodput99_rps": good.rate_rps,
                "goodput99_requests": good.sent,
                "goodput99_pct_low95": good.goodput_pct_low95,
                "goodput99_shown": (good.goodput_pct_low95 or 0.0) >= GOODPUT_SHARE_PCT,  # needs >= 299 requests unmissed
            }
        if point is not None:
            priced = cost_of(c.rate_rps, cost)
            out |= {
                "cost_usd_per_1k_req_at_capacity": priced.cost_usd_per_1k_req,
                "qps_per_usd_month_at_capacity": priced.qps_per_usd_month,
                f"ttft_ms_{point.stat}_at_capacity": point.ttft_ms,
                f"tpot_ms_{point.stat}_at_capacity": point.tpot_ms,
                "offered_rps_at_capacity": point.offered_rps,
            }
        return {k: v for k, v in out.items() if v is not None}


@dataclass(frozen=True)
class CapacityResult(StageResult):
    spec = STAGE
    stacks: tuple[StackSearch, ...]
    slo: SloConfig
    cost: CostConfig
    queue_bound_s: float
    load_avg: tuple[float, float]
    remarks: tuple[str, ...] = ()  # how the stacks were chosen (an optimized stage that had not run)

    def variants(self) -> list[StackSearch]:
        return list(self.stacks)

    def load_runs(self) -> dict[str, LoadRun]:
        measured = [s for s in self.stacks if s.reused_from is None]  # a reused stack's points are another's runs
        return named_runs((f"{s.name} {p.rate_rps:.4g} req/s", p.run) for s in measured for p in s.points if p.run is not None)

    def stack(self, name: str) -> StackSearch:
        return next(s for s in self.stacks if s.name == name)

    @property
    def statistic(self) -> str:
        stats = {p.stat for s in self.stacks for p in s.points}
        return stats.pop() if len(stats) == 1 else "p99 where a point had 299 answers, else max"

    def summary(self) -> dict[str, Any]:
        s: dict[str, Any] = {
            "slo_ttft_p99_ms": self.slo.ttft_p99_ms,
            "slo_tpot_p99_ms": self.slo.tpot_p99_ms,
            "slo_max_error_rate": self.slo.max_error_rate,
            "search_low_rps": min(self.slo.rates),
            "search_high_rps": max(self.slo.rates),
            "requests_per_point": self.slo.requests,
            "min_point_s": self.slo.min_point_s,
            "tail_statistic": self.statistic,
            "queue_bound_s": self.queue_bound_s,
            "target_qps": self.cost.target_qps,
            "load_avg_start": self.load_avg[0],
            "load_avg_end": self.load_avg[1],
        }
        for stack in self.stacks:
            s[f"{stack.name}_stack"] = stack.label
            s |= {f"{stack.name}_{k}": v for k, v in stack.metrics(self.cost).items()}
        opt = next((st for st in self.stacks if st.name == "optimized"), None)
        if opt is not None:
            s["optimized_stack_source"] = opt.source
        caps = {st.name: st.capacity for st in self.stacks}
        if "optimized" in caps and caps["baseline"].bound == BRACKETED:  # a ratio needs the baseline's capacity found
            s["capacity_gain"] = caps["optimized"].rate_rps / caps["baseline"].rate_rps
            s["capacity_gain_bound"] = "at least" if caps["optimized"].bound == AT_LEAST else "about"
        return s

    # -- tables --------------------------------------------------------------------------------------

    def capacity_table(self) -> pd.DataFrame:
        import pandas as pd

        rows = []
        for st in self.stacks:
            m = st.metrics(self.cost)
            rows.append(
                {
                    "stack": st.name,
                    "settings": st.label,
                    "capacity (req/s)": st.capacity.rate_rps,
                    "capacity": st.capacity.text(),
                    "first failing (req/s)": st.capacity.first_failing_rps,
                    "first failing measured": st.capacity.first_failing_rps is not None and st.capacity.ceiling_rps is None,
                    "points": st.capacity.points,
                    f"instances for {self.cost.target_qps:g} QPS": f"{m['instances_bound']} {m['instances_at_target']}",
                    "$ per month": m["usd_per_month_at_target"],
                }
            )
        return pd.DataFrame(rows)

    def curve(self) -> pd.DataFrame:
        """Every point: offered rate, the tail latencies judged (p99 or max), errors, 503s and the verdict."""
        import pandas as pd

        rows = [{"stack": st.name, "order": i + 1} | p.row() for st in self.stacks for i, p in enumerate(st.points)]
        return pd.DataFrame(rows)

    def tables(self) -> dict[str, pd.DataFrame]:
        return {"capacity": self.capacity_table(), "curve": self.curve()}

    # -- figures and words ---------------------------------------------------------------------------

    def figures(self) -> dict[str, Figure]:
        import matplotlib.pyplot as plt
        import seaborn as sns

        curve = self.curve().sort_values(["stack", "rate_rps"])
        curve["verdict"] = curve["pass"].map({True: "within SLO", False: "breaks SLO"})
        fig, axes = plt.subplots(1, 2, figsize=(12, 4))
        for ax, (key, slo, label) in zip(
            axes, (("ttft_ms", self.slo.ttft_p99_ms, "time to first token"), ("tpot_ms", self.slo.tpot_p99_ms, "time per output token"))
        ):
            sns.lineplot(data=curve, x="rate_rps", y=key, hue="stack", ax=ax, legend=False)
            sns.scatterplot(
                data=curve, x="rate_rps", y=key, hue="stack", style="verdict", ax=ax, s=80, markers={"within SLO": "o", "breaks SLO": "X"}
            )
            ax.axhline(slo, color="red", linestyle="--", linewidth=1, label=f"SLO {slo:g} ms")
            ax.set(
                xscale="log",
                xlabel="nominal rate (requests/s, Poisson)",
                ylabel=f"{label} ({self.statistic}, ms)",
                title=f"{label} against the nominal rate",
            )
            ax.legend(fontsize=8)
        fig.tight_layout()
        return {"curve": fig}

    def verdict(self) -> str:
        return "; ".join(f"{st.title} ({st.label}): {st.capacity.text()}" for st in self.stacks)

    def conclusion(self) -> str:
        s = self.summary()
        slo = (
            f"p99 TTFT ≤ {self.slo.ttft_p99_ms:g} ms, p99 TPOT ≤ {self.slo.tpot_p99_ms:g} ms and at most "
            f"{self.slo.max_error_rate:.0%} failed requests (503s included)"
        )
        lines = [
            f"SLO: {slo}; rates from {min(self.slo.rates):g} to {max(self.slo.rates):g} req/s (slo.rates) "
            f"(open-loop Poisson, each point {self.slo.requests} measured requests or {self.slo.min_point_s:g} s of "
            f"arrivals, whichever is more; rate limiter off, queue bound "
            f"{self.queue_bound_s:g} s)."
        ]
        lines += list(self.remarks)
        for st in self.stacks:
            lines.append(self._stack_text(st))
        lines.append(self._multi_turn_text())
        base = self.stack("baseline").capacity
        if "capacity_gain" in s:
            lines.append(
                f"The optimized stack serves {s['capacity_gain_bound']} {s['capacity_gain']:.2f}x the baseline's "
                f"rate within the SLO (each capacity is its highest passing rate)."
            )
        elif base.bound == BELOW:
            lines.append(
                "The baseline has no capacity within the SLO at the rates tried, so no ratio can be given: "
                "lower rates, or a looser SLO, would measure it."
            )
        elif base.bound == AT_LEAST:
            lines.append(
                "The baseline held the SLO at every rate tried, so no ratio can be given: higher rates in "
                "slo.rates would find where it stops."
            )
        lines.append(self._fleet_text())
        lines.append(self._goodput_text())
        if self.statistic == MAX:
            lines.append(
                "Each point had fewer than 299 answered requests, so its maximum is judged instead of a p99: "
                "stricter than the SLO's p99, so the capacities above are conservative."
            )
        lines.append(
            f"One search per stack (no between-round interval); stacks interleaved point by point. Load average "
            f"{self.load_avg[0]:.2f} at the start, {self.load_avg[1]:.2f} at the end."
        )
        return "\n\n".join(line for line in lines if line)

    def _goodput_text(self) -> str:
        """Per stack, the highest rate whose requests met both bounds 99% of the time, and whether its count shows it."""
        parts = []
        for st in self.stacks:
            if st.reused_from is not None or all(p.goodput_pct is None for p in st.points):  # a result saved before goodput
                continue
            good = st.goodput_at(GOODPUT_SHARE_PCT)
            if good is None:
                parts.append(f"the {st.title} met the SLO per request 99% of the time at no rate tried")
                continue
            shown = "shown" if (good.goodput_pct_low95 or 0.0) >= GOODPUT_SHARE_PCT else "not shown by the count"
            parts.append(
                f"the {st.title} at up to {good.rate_rps:.3g} req/s ({good.goodput_pct:.1f}% of {good.sent} requests, at least "
                f"{good.goodput_pct_low95 or 0.0:.1f}% at 95%: {shown})"
            )
        return (
            "Goodput (requests within both bounds, each request held to them): "
            + "; ".join(parts)
            + ". A 99% share is shown only from 299 requests without a miss."
            if parts
            else ""
        )

    def _stack_text(self, st: StackSearch) -> str:
        title = st.title[0].upper() + st.title[1:]
        if st.reused_from is not None:
            return f"{title} ({st.label}) is the same server as the {st.reused_from}: its search is reused."
        failing = min((p for p in st.points if not p.passed), key=lambda p: p.rate_rps, default=None)
        why = f"; the lowest failing rate ({failing.rate_rps:.3g} req/s) broke it by {failing.why}" if failing else ""
        return f"{title} ({st.label}): capacity {st.capacity.text()} after {st.capacity.points} points{why}."

    def _multi_turn_text(self) -> str:
        """The optimized stack's capacity on conversations beside its single-turn one, and what the search was."""
        multi = next((st for st in self.stacks if st.workload == "multi_turn"), None)
        single = next((st for st in self.stacks if st.name == "optimized"), None)
        if multi is None or single is None:
            return ""
        text = (
            f"On conversations, {multi.source}: {multi.capacity.text()} within the SLO, against {single.capacity.text()} on "
            f"single turns. A turn's prompt holds the whole history, so it is longer than a single turn's, and the store "
            f"spares its prefill the part an earlier turn computed; each turn's latency is judged like any request's."
        )
        if all(p.offered_rps is None for p in multi.points):  # saved before points recorded the rate their turns came at
            return text
        point = multi.at_capacity()
        offered = point.offered_rps if point is not None else None
        return (
            f"{text} Until a conversation's later turns come due, turns arrive at a fraction of the rate: each point's "
            f"ramp is warm-up, its turns measured from the last turn of the first conversation started after the first "
            f"one reached its last turn, so that they arrive at the rate itself where the answers keep up; a point "
            f"whose turns arrived below {PACED_SHARE:.0%} of its rate says so, as its answers were slow enough to pace "
            f"the users." + (f" At that rate its measured turns arrived at {offered:.3g} turns/s." if offered is not None else "")
        )

    def _fleet_text(self) -> str:
        parts = []
        for st in self.stacks:
            m = st.metrics(self.cost)
            parts.append(
                f"the {st.title} needs {m['instances_bound']} {m['instances_at_target']} instance(s) "
                f"(${m['usd_per_month_at_target']:.0f}/month)"
            )
        below = any(st.capacity.bound == BELOW for st in self.stacks)
        return (
            f"To serve {self.cost.target_qps:g} QPS within the SLO at ${self.cost.usd_per_hour:.2f}/h, "
            + " and ".join(parts)
            + ": ceil(target / capacity), an upper bound since the true capacity lies at or above "
            "the highest passing rate" + ("; where nothing passed, a lower bound from the lowest rate tried." if below else ".")
        )
