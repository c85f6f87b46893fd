"""The cache stage's figures and the sentences of its conclusion, computed from the result."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from perfkit.stages.cache.result import CacheResult


def figures(result: CacheResult) -> dict[str, Figure]:
    import matplotlib.pyplot as plt
    import seaborn as sns

    tables = result.tables()
    out: dict[str, Figure] = {}
    points = tables["points"]
    if not points.empty:
        fig, ax = plt.subplots(figsize=(7, 4))
        sns.scatterplot(data=points, x="hit_rate", y="latency_ms_mean", hue="variant", style="variant", s=70, ax=ax)
        for variant in points["variant"].unique():
            model = result.model(variant)
            if model is not None:
                h = np.linspace(0, 1, 50)
                ax.plot(h, [model.predict_ms(x) for x in h], lw=1, alpha=0.6, label=f"{variant}: h*t_hit + (1-h)*t_miss")
        ax.set(xlabel="measured hit rate", ylabel="mean latency (ms)", yscale="log", title="Mean latency against measured hit rate")
        ax.legend(fontsize=7)
        out["latency_vs_hit_rate"] = fig
    sweep = tables["thresholds"]
    if not sweep.empty:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        long = sweep.melt(id_vars="threshold", value_vars=["precision", "hit_rate", "wrong_hit_rate"], var_name="measure")
        sns.lineplot(data=long, x="threshold", y="value", hue="measure", marker="o", ax=ax)
        ax.set(ylabel="share", title="Semantic cache: precision, hits and wrong hits against threshold (offline replay)")
        out["semantic_threshold"] = fig
    prefix = tables["prefix"]
    if not prefix.empty:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        prefix = prefix.assign(run=prefix["where"] + np.where(prefix["reuse"], " with reuse", " without reuse"))
        sns.lineplot(data=prefix, x="prefix_tokens", y="ttft_ms_mean", hue="run", marker="o", ax=ax)
        ax.set(xlabel="shared prefix (tokens)", ylabel="TTFT (ms)", title="Time to first token against shared prefix length")
        out["prefix_ttft"] = fig
    turns = tables["turns"]
    if not turns.empty:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        turns = turns.assign(run=np.where(turns["reuse"], "history cached", "history not cached"))
        sns.lineplot(data=turns, x="turn", y="ttft_ms_mean", hue="run", marker="o", ax=ax)
        ax.set(xlabel="turn of the conversation", ylabel="TTFT (ms)", title="Time to first token per turn, history re-sent")
        ax.xaxis.get_major_locator().set_params(integer=True)
        out["turns_ttft"] = fig
    return out


def conclusion(result: CacheResult) -> str:
    s = result.summary()
    lines = []
    if "mean_latency_reduction_pct" in s:
        needed = s.get("c2_needed_hit_rate_pct")
        need = (
            f"; by the fitted model (t_hit {s['t_hit_ms']:.1f} ms, t_miss {s['t_miss_ms']:.0f} ms) a 75% cut needs {needed:.0f}% hits"
            if needed is not None
            else "; no hit rate reaches a 75% cut by the fitted model"
        )
        lines.append(
            f"With {result.claim_variant} at a measured hit rate of {s['c2_hit_rate_pct']:.1f}%, the mean response fell "
            f"{s['mean_latency_reduction_pct']:.0f}% (95% interval {s['mean_latency_reduction_pct_ci_low']:.0f} to "
            f"{s['mean_latency_reduction_pct_ci_high']:.0f}%) against {s['latency_ms_mean_uncached']:.0f} ms without a cache{need}: "
            f"the claimed 1.2 s -> 0.3 s is a statement about the hit rate as much as about Redis."
        )
    if "model_max_error_pct" in s and np.isfinite(s["model_max_error_pct"]):
        err = s["model_max_error_pct"]
        lines.append(
            f"The straight line h * t_hit + (1 - h) * t_miss through the lowest and highest points predicts every "
            f"{result.claim_variant} point within {err:.0f}%"
            + (" (target 10%: met)." if err <= 10 else f" (target 10%: not met). {_worst_point_text(s)}")
        )
    if "redis_hit_latency_ms_p50_client" in s:
        lines.append(
            f"A Redis hit took {s['redis_hit_latency_ms_p50_client']:.1f} ms p50 at the client (target <= 10 ms) and "
            f"{s.get('redis_lookup_ms_mean_server', float('nan')):.2f} ms mean for the lookup at the server (target <= 5 ms); "
            f"a round trip to Redis on loopback (ECHO of 128 bytes) is {s.get('redis_rtt_ms_p50', float('nan')):.2f} ms p50, and storing a "
            f"miss's answer {s.get('redis_store_ms_mean_server', float('nan')):.2f} ms mean."
        )
    if "miss_overhead_ms_p50_server" in s:
        overhead = s["miss_overhead_ms_p50_server"]
        lines.append(
            f"On a miss the cache adds its lookup and the store of the answer (after the last token went out, before the "
            f"stream's end): {overhead:.2f} ms at their medians (target <= 1 ms: {'met' if overhead <= 1 else 'not met'})."
        )
    if "semantic_hit_rate_pct" in s:
        search = s.get("semantic_search_ms_mean")
        lines.append(
            f"Semantic lookup at threshold {result.threshold:g} hit {s['semantic_hit_rate_pct']:.0f}% of a stream with "
            f"paraphrases and near-misses, {s['semantic_wrong_hits']} of them wrong (precision {s['semantic_precision']:.2f}); "
            f"each lookup pays an embedding ({s.get('semantic_embed_ms_mean', float('nan')):.1f} ms) plus the search "
            f"({search if search is not None else float('nan'):.2f} ms)."
        )
    if result.sweep:
        best = max(result.sweep, key=lambda c: (c.precision >= 0.99, c.hit_rate))
        lo, hi = result.sweep[0], result.sweep[-1]
        lines.append(
            f"Offline over thresholds {lo.threshold:g}-{hi.threshold:g}: hits {lo.hit_rate:.0%} -> {hi.hit_rate:.0%}, wrong hits "
            f"{lo.wrong_hit_rate:.1%} -> {hi.wrong_hit_rate:.1%} of requests; the highest hit rate at >= 99% precision is at "
            f"{best.threshold:g} ({best.hit_rate:.0%})."
            if best.precision >= 0.99
            else f"Offline over thresholds {lo.threshold:g}-{hi.threshold:g}: hits {lo.hit_rate:.0%} -> {hi.hit_rate:.0%}, wrong "
            f"hits {lo.wrong_hit_rate:.1%} -> {hi.wrong_hit_rate:.1%}; no threshold here reaches 99% precision: questions that "
            f"differ in one name embed almost alike."
        )
    if "fault_5xx" in s:
        rec = s.get("fault_recovery_s")
        lines.append(
            f"Redis killed mid-run: {s['fault_5xx']} server errors and {s['fault_lost_requests']} lost requests over "
            f"{result.redis.fault.requests if result.redis.fault else 0}; {s['fault_cache_errors']:.0f} requests went uncached "
            f"(counted as cache errors), the slowest during the outage took {s['fault_slowest_ms']:.0f} ms"
            + (
                f", and lookups were error-free {rec:.2f} s after Redis was back (target <= 1 s)."
                if rec is not None
                else "; Redis was not seen back within the run."
            )
        )
    if "flood_evictions" in s:
        lines.append(
            f"Past maxmemory ({s['flood_max_memory_mb']:.0f} MB), Redis used {s['flood_redis_used_mb']:.1f} MB after "
            f"{s['flood_evictions']:.0f} evictions, and the server's RSS changed by {s['flood_server_rss_growth_mb']:+.1f} MB."
        )
    for where in ("offline", "served"):
        key = f"prefix_ttft_cut_pct_{where}"
        if key in s:
            same = "" if where == "served" else (" with identical tokens" if s.get("prefix_same_tokens") else " but NOT identical tokens")
            lines.append(f"Reusing a {s['prefix_tokens_max']}-token shared prefix cut TTFT by {s[key]:.0f}% {where}{same} (target >= 80%).")
    if "multi_turn_ttft_cut_pct" in s:
        matched = s.get("multi_turn_matched_pct")
        lines.append(
            f"Over {s['multi_turn_conversations']} conversations of {s['multi_turn_turns']} turns (the history re-sent each "
            f"turn, {s['multi_turn_prompt_tokens_last']:.0f} tokens by the last), keeping the previous turn's prompt and answer "
            f"cut the time to first token of turns 2 on by {s['multi_turn_ttft_cut_pct']:.0f}% (95% CI "
            f"{s['multi_turn_ttft_cut_pct_ci_low']:.0f} to {s['multi_turn_ttft_cut_pct_ci_high']:.0f}): "
            f"{s['multi_turn_ttft_ms_cold']:.0f} -> {s['multi_turn_ttft_ms_warm']:.0f} ms"
            + (f", with {matched:.0f}% of those prompts' tokens found in the store." if matched is not None else ".")
        )
    lines.append(f"Load average {result.load_avg[0]:.2f} at the start and {result.load_avg[1]:.2f} at the end.")
    return "\n\n".join(x for x in lines if x)


def _worst_point_text(s: dict[str, Any]) -> str:
    """Why the line misses its worst point, from that point's own misses (`CacheResult.worst_point`)."""
    if "model_error_from_miss_cost_pct" not in s:
        return "The worst point had no misses to compare with the fitted miss cost."
    t_miss, miss = s["t_miss_ms"], s["model_worst_point_miss_ms"]
    text = (
        f"At {s['model_worst_point_hit_rate_pct']:.0f}% hits the mean is {s['model_worst_point_error_pct']:+.1f}% off the "
        f"line; its {s['model_worst_point_misses']:.0f} misses averaged {miss:.0f} ms against the fitted t_miss "
        f"{t_miss:.0f} ms, which accounts for {s['model_error_from_miss_cost_pct']:+.1f} points of it (its hits for the rest)"
    )
    low, high = s.get("model_worst_point_miss_ms_ci_low"), s.get("model_worst_point_miss_ms_ci_high")
    if low is None or high is None:
        return text + "."
    if low <= t_miss <= high:
        return text + (
            f"; t_miss lies inside those misses' 95% interval ({low:.0f}-{high:.0f} ms), so their cost is "
            f"within their own spread: more misses per point (cache.min_misses) would narrow it."
        )
    return text + (
        f"; t_miss lies outside those misses' 95% interval ({low:.0f}-{high:.0f} ms): misses at this point "
        f"really cost {'more' if miss > t_miss else 'less'}, so one miss cost for every point does not hold "
        f"here (which questions miss changes as the popular ones get cached)."
    )
