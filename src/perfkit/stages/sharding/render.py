"""The sharding stage's figures and its conclusion, both computed from the result's numbers."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from perfkit.stages.sharding.result import ShardingResult


def figures(result: ShardingResult) -> dict[str, Figure]:
    import matplotlib.pyplot as plt
    import seaborn as sns

    scaling, memory, prediction = result.scaling(), result.memory(), result.prediction()
    out = {}
    fig, (left, mid, right) = plt.subplots(1, 3, figsize=(14, 3.8))
    sns.barplot(scaling, x="ranks", y="latency_ms", ax=left)
    left.set(title="one inference (prefill + new tokens, batch 1)", ylabel="ms")
    if "efficiency" in scaling:
        sns.lineplot(scaling, x="ranks", y="efficiency", marker="o", ax=mid)
        mid.axhline(1.0, color="grey", lw=0.8, ls="--")
        mid.set(title="scaling efficiency (speed-up / N)", ylim=(0, None))
    sns.barplot(scaling, x="ranks", y="comm_share", ax=right)
    right.set(title="share of each decode step inside all-reduces", ylim=(0, 1))
    fig.tight_layout()
    out["scaling"] = fig

    fig, ax = plt.subplots(figsize=(7, 3.8))
    memory = memory.assign(variant=memory["ranks"].astype(str) + " ranks, " + memory["embedding"])
    sns.barplot(memory, x="variant", y="weight_private_mb", hue="rank", ax=ax)
    ax.set(title="private weight memory per rank (RssAnon growth while loading)", ylabel="MiB", xlabel="")
    fig.tight_layout()
    out["memory"] = fig

    fig, ax = plt.subplots(figsize=(8, 4.5))
    sns.lineplot(prediction, x="ranks", y="speedup", hue="series", style="source", markers=True, ax=ax)
    devices = result.claim_model["devices"]
    ax.scatter([devices], [8.2 / 2.1], marker="*", s=200, color="black", zorder=5, label="C5 claim (8.2 s -> 2.1 s)")
    ax.plot([1, 8], [1, 8], color="grey", lw=0.8, ls=":", label="linear")
    ax.set(
        title="decode speed-up against ranks: models (labelled), published, measured",
        xscale="log",
        yscale="log",
        xticks=[1, 2, 4, 8],
        xticklabels=["1", "2", "4", "8"],
    )
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    out["prediction"] = fig
    return out


def conclusion(result: ShardingResult) -> str:
    s, runs = result.summary(), result.by_n()
    one = runs.get(1)
    paras = []
    exact = "identical" if s["tokens_identical"] else "NOT identical"
    paras.append(
        f"Tensor parallelism over ranks {s['ranks_measured']} gave {exact} greedy tokens to the 1-rank model on every "
        f"compared prompt, with a largest |logit difference| of {s['max_logit_diff']:.2g} "
        f"({'within' if s['exact'] else 'beyond'} the {result.max_logit_diff_allowed:g} allowed)."
    )
    for n, r in sorted(runs.items()):
        if n == 1 or one is None:
            continue
        faster = "faster" if r.latency_ms < one.latency_ms else "slower"
        paras.append(
            f"At {n} ranks ({r.threads_per_rank} thread each, query heads {r.q_heads}), one inference took "
            f"{r.latency_ms:.0f} ms against {one.latency_ms:.0f} ms on 1 rank of {one.threads_per_rank} threads: "
            f"{s[f'speedup_n{n}']:.2f}x ({faster}), efficiency {s[f'efficiency_n{n}']:.0%}. Prefill (TTFT) went from "
            f"{one.ttft_ms:.0f} to {r.ttft_ms:.0f} ms and a decode step from {one.step_ms:.1f} to {r.step_ms:.1f} ms, "
            f"{r.comm_share:.0%} of it inside the {r.allreduce_bytes_per_token / 1024:.1f} KiB of all-reduces per token "
            f"({r.comm_ms_per_step:.2f} ms per step). The largest rank's private weight memory was "
            f"{s[f'private_ratio_n{n}']:.2f} of the 1-rank model's ({r.weight_private_mb:.0f} MiB, embedding {r.embedding})."
        )
        if s[f"efficiency_n{n}"] > 1.0:
            paras.append(
                f"An efficiency above 100% is not a gain from sharding: the 1-rank run was slower than its parts, as when "
                f"its {one.threads_per_rank} threads are oversubscribed on a busy machine (load average up to "
                f"{one.load_avg_1m:.1f} here; 1-rank step-time CV {one.step_cv:.0%}). Rerun on a quiet machine."
            )
    other = result.other_embedding
    if other is not None:
        key = f"private_ratio_n{other['world']}_{other['embedding']}"
        paras.append(
            f"With the embedding and lm_head {'split by vocabulary' if other['embedding'] == 'vocab' else 'replicated'} "
            f"instead, the largest rank at {other['world']} ranks held {s[key]:.2f} of the 1-rank model's private memory."
        )
    for check in result.model_checks():
        if check.checked:
            paras.append(
                f"The scaling model (measured 1-rank pieces + all-reduce latency and bandwidth from the "
                f"micro-benchmark) predicted a {1e3 * check.predicted_s:.1f} ms decode step at {check.n} ranks; "
                f"measured {1e3 * check.measured_s:.1f} ms ({check.error_pct:+.0f}%, {check.status})."
            )
        else:
            paras.append(
                f"The scaling model's {check.n}-rank step ({1e3 * check.predicted_s:.1f} ms against "
                f"{1e3 * check.measured_s:.1f} ms measured) was not checked: {check.status}."
            )
    m = result.claim_model
    predictions = ", ".join(f"{s[f'model_speedup_claim_{name}']:.2f}x over {name}" for name in result.links)
    paras.append(
        f"A model, not a measurement: {m['name']} on {m['devices']} devices at {result.device_bytes_s / 1e9:g} GB/s decodes "
        f"{predictions} faster than on one; the claim C5 says {8.2 / 2.1:.1f}x, and gpt-fast published "
        f"{s['gpt_fast_speedup_4']:.2f}x for LLaMA-2-7B on 4 A100s."
    )
    paras.append(f"Load average (1 min) during the runs: up to {s['load_avg_1m']:.1f}.")
    return "\n\n".join(paras)
