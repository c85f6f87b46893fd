"""The batching stage's conclusion: sentences computed from the figures and their between-round intervals."""

from __future__ import annotations

from typing import TYPE_CHECKING

from perfkit.endpoints.base import NOT_AVAILABLE
from perfkit.measure import Spread, noise_sentence, ratio

if TYPE_CHECKING:
    from perfkit.stages.batching.result import BatchingResult
    from perfkit.stages.batching.rounds import Variant

TARGET_WORDS = {True: "met", False: "not met", None: "inconclusive (the interval straddles it)"}


def ci_text(s: Spread, fmt: str = ".1f", unit: str = "") -> str:
    """A round mean with its interval, or "(one round)" where there is none."""
    return s.text(fmt, unit, alone=" (one round)")


def external(res: BatchingResult, v: Variant) -> list[str]:
    """An endpoint perfkit did not start: what the client measured, and what cannot be known from outside."""
    described = v.endpoint.describe() if v.endpoint else v.name
    lines = [
        f"{described} served {ci_text(v.served)} output tokens/s to {res.users} closed-loop users over {len(v.rounds)} "
        f"rounds (client-side: tokens from the stream or `usage` over the measured window; latency p50 "
        f"{v.mean_of(lambda r: r.load.summary.e2e.p50 if r.load.summary.e2e else None) / 1000:.2f} s, error rate "
        f"{v.mean_of(lambda r: r.load.summary.error_rate):.1%}).",
        f"Its batch sizes, queue and fill waits, CPU and memory are {NOT_AVAILABLE} (only "
        "perfkit's reference server exports them), and there is no scheduler sweep, offline engine or target: the "
        "endpoint batches in its own way. Run the same load against `perfkit serve` to put a reference beside it.",
    ]
    if v.endpoint is not None and not v.endpoint.fixed_length:
        lines.append(
            "The endpoint refused min_tokens/ignore_eos, so output lengths are the model's own, not the fixed "
            "length the reference server gives: compare tokens/s, not requests/s."
        )
    truncated = sum(r.load.summary.truncated for r in v.rounds)
    if truncated:
        lines.append(f"{truncated} answers came back shorter than the length asked and count as failures (truncated).")
    return lines


def _per_token(res: BatchingResult) -> str:
    """What each scheduler does to the stream a reader sees: the gap between tokens, the second token, goodput."""
    parts = []
    for v in res.runs:
        serving = v.serving()
        itl, second, good = serving["itl_ms_p50"], serving["ttst_ms_p50"], serving["goodput_pct"]
        if itl is None:
            continue
        words = f"{v.name} ITL p50 {ci_text(itl, '.0f', ' ms')}"
        words += f", second token at {ci_text(second, '.0f', ' ms')}" if second is not None else ""
        words += f", {good.mean:.0f}% of requests within the SLO" if good is not None else ""
        parts.append(words)
    if not parts:
        return ""
    return "Per token, as the reader of the stream sees it (medians per round, pooled over the round's requests): " + "; ".join(parts) + "."


def conclusion(res: BatchingResult) -> str:
    lines = [line for v in res.external() for line in external(res, v)]
    seq, dyn, cont = res.sequential, res.best_dynamic, res.continuous
    rounds = res.summary()["rounds"]
    speedup = res.speedup()
    if seq is not None and dyn is not None and speedup is not None:
        engine = dyn.offline
        served_ratio = dyn.served_vs_offline
        if engine is not None and served_ratio is not None:
            if dyn.served_above_engine:
                judged = (
                    f"a measurement fault: the server cannot beat its own engine on the same batches, and its "
                    f"{dyn.served.mean:.1f} tokens/s lies above the engine's interval, so something else slowed the "
                    f"offline batches; the offline target is not judged on this run"
                )
            else:
                judged = f"target >= {res.target_offline_ratio:.0%}: {TARGET_WORDS[served_ratio.at_least(res.target_offline_ratio)]}"
            offline_part = (
                f"; the offline engine, run in the same rounds at the width each round formed with the same "
                f"tokens and as many batches, reaches {ci_text(engine)} tokens/s, so the server delivers "
                f"{ci_text(served_ratio.scaled(100), '.0f', '%')} of it ({judged})"
            )
        else:
            offline_part = ""
        lines.append(
            f"Over {rounds} interleaved rounds at {res.users} users, {dyn.name} served {ci_text(dyn.served)} output tokens/s "
            f"against {ci_text(seq.served)} sequential: {ci_text(speedup, '.2f', 'x')} (paired by round; target >= "
            f"{res.target_speedup:g}x: {TARGET_WORDS[speedup.at_least(res.target_speedup)]}), forming batches of "
            f"{dyn.mean_batch_size:.1f} on average{offline_part}."
        )
        p50 = (
            dyn.mean_of(lambda r: r.load.summary.e2e.p50 if r.load.summary.e2e else None),
            seq.mean_of(lambda r: r.load.summary.e2e.p50 if r.load.summary.e2e else None),
        )
        cpu = (seq.mean_of(lambda r: r.server.cpu_util_pct), dyn.mean_of(lambda r: r.server.cpu_util_pct))
        lines.append(
            f"Latency p50 went from {p50[1] / 1000:.2f} s to {p50[0] / 1000:.2f} s, and the server's CPU from {cpu[0]:.0f}% "
            f"to {cpu[1]:.0f}% (100% = one core) while tokens/s changed {speedup.mean:.2f}x: utilization alone says little "
            f"about useful work (C17's 65% -> 92% is a GPU figure)."
        )
    if cont is not None and dyn is not None:
        versus = ratio(cont.served, dyn.served)
        beats = versus.at_least(1.0)
        word = {True: "beats it", False: "does not beat it", None: "neither clearly beats the other"}[beats]
        prefill = ""
        per_row = res.offline_prefill_ms_per_row
        if 1 in per_row and len(per_row) > 1:
            b = max(per_row)
            tpot = (
                cont.mean_of(lambda r: r.load.summary.tpot.p50 if r.load.summary.tpot else None),
                dyn.mean_of(lambda r: r.load.summary.tpot.p50 if r.load.summary.tpot else None),
            )
            prefill = (
                f" What continuous batching pays instead: a {res.prompt_tokens}-token prompt takes {per_row[1].mean:.0f} ms "
                f"to prefill alone and {per_row[b].mean:.0f} ms per row in a batch of {b}; {dyn.name} prefilled "
                f"{dyn.requests_per_prefill:.1f} requests at a time, {cont.name} {cont.requests_per_prefill:.1f}, and each "
                f"join is a forward pass of its own while the running rows wait (time per output token p50 {tpot[0]:.0f} ms "
                f"against {tpot[1]:.0f} ms)."
            )
        lines.append(
            f"{cont.name} served {ci_text(cont.served)} output tokens/s at {cont.mean_batch_size:.1f} rows per decode step, "
            f"{ci_text(versus, '.2f', 'x')} {dyn.name} ({word}). Refilling a slot at the next step pays off when rows end at "
            f"different times; with a fixed output length every row of a batch ends together, so dynamic batching wastes "
            f"no slot here (bench/continuous.py runs both with varied lengths).{prefill}"
        )
        if cont.served_above_engine:
            lines.append(f"{cont.name}'s served rate lies above its engine's interval: a measurement fault, not a result.")
    eight = [v for v in res._get("dynamic") if v.max_batch_size == 8 and v.fill_wait is not None and v.queue_wait is not None]
    if eight:
        v = eight[0]
        lines.append(
            f"Under the closed loop, with max_batch_size 8, the idle engine held a request {ci_text(v.fill_wait, '.1f', ' ms')} "
            f"for its batch to fill (window {res.max_wait_ms:g} ms, warm-up excluded: a figure the window caps, shown as "
            f"context); the whole queue wait was "
            f"{ci_text(v.queue_wait, '.0f', ' ms')}, the rest of it spent behind the batch ahead."  # type: ignore[arg-type]
        )
    lines.append(_per_token(res))
    if res.light is not None:
        lines.append(res.light.text())
    if 1 in res.offline and len(res.offline) > 1:
        b = max(res.offline)
        gain = res.offline[b].mean / res.offline[1].mean
        lines.append(
            f"Prefill barely batches on a CPU, so the prompt length decides the gain: offline, batch {b} gives {gain:.1f}x "
            f"the output tokens/s of batch 1 with these {res.prompt_tokens}-token prompts; shorter prompts gain more, "
            f"longer ones less."
        )
    capped = [v.name for v in res.runs if v.max_batch_size > res.users]
    if capped:
        lines.append(f"{', '.join(capped)}: max_batch_size above the {res.users} users in flight cannot fill.")
    flagged = [
        f"{v.name}: {'; '.join(sorted({f for r in v.rounds for f in r.load.summary.flags}))}"
        for v in res.runs
        if any(r.load.summary.flags for r in v.rounds)
    ]
    if flagged:
        lines.append("Load run checks: " + " | ".join(flagged) + "; read those variants with that in mind.")
    noise = noise_sentence(res.headline() | {f"{v.name}_tok_s": v.served for v in res.external()}, res.noisy_cv, res.min_repeats)
    if noise:
        lines.append(noise)
    return "\n\n".join(line for line in lines if line)
