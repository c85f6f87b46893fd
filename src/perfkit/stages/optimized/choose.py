"""Choosing the optimized stack from what the upstream stages measured, by rules written in params.

Each upstream stage's saved result is read as typed facts (`perfkit.upstream`: numbers, scheme names), never
by metrics.json keys or display strings. A choice says what was picked, the measured reason,
whether the served stack applies it (`applied`: a server setting), and why not when it is not:
the stage did not run, the measurement does not favour it, or it does nothing on this load.

Rules:
- precision: among the quantization schemes the server can load as a dtype (fp32, bf16, fp16),
  the fastest whose top-1 agreement with fp32 reaches the stage's gate (`min_top1_agreement`).
  Faster schemes the server cannot load (int8, int4) are named in the reason.
- batching: the scheduler (sequential, dynamic, continuous at the largest batch size) with the best
  served tokens/s under the same closed-loop load; where continuous batching's tokens/s cannot be told
  from the best's (the 95% interval of their per-round ratio spans 1), continuous: a request joins the
  running batch between decode steps instead of waiting for it to end, so at the same throughput its
  time to first token is shorter (a coin toss between the two once moved the capacity stage's optimized
  stack from 2.83 to 2.0 req/s at the SLO).
- cache: listed, not applied: the chat load sends distinct passages, so an answer cache has no
  repeats to hit; the cache stage's hit rate comes from its own Zipf question workload.
- cold start: where the stack changes the precision, the model is loaded from a copy saved in the
  served precision (`serving.prepared_checkpoint`) rather than cast from fp32 at every start; the
  baseline stage's measured model load and cold start are the reason given. It acts on starts
  only, so the ablation leaves it out and the cold-start block measures it.
- distillation: the student only when it keeps at least `min_accuracy_kept_pct` of the teacher's
  accuracy; otherwise (or without a student checkpoint the server can load) listed.
- transport and compression: listed as "not on this load" (~1 KB chat requests, SSE answers).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from perfkit.measure import Spread, ratio
from perfkit.upstream import BaselineFacts, Precision, Schedulers, Upstream

# quantization scheme -> the dtype `serving.dtype` loads
SERVABLE_SCHEMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
NOT_RUN = "stage not run"
NOT_ON_LOAD = "not on this load"


@dataclass(frozen=True)
class Choice:
    """One optimization: what was picked and why, and the server settings that apply it."""

    area: str
    choice: str
    reason: str
    source: str  # the stage whose numbers decided it
    overrides: dict[str, Any] = field(default_factory=dict)  # dotted params keys for the server
    status: str = "applied"  # applied | not chosen | stage not run | not on this load

    @property
    def applied(self) -> bool:
        return self.status == "applied" and bool(self.overrides)

    def row(self) -> dict[str, Any]:
        settings = ", ".join(f"{k}={v}" for k, v in self.overrides.items())
        return {
            "area": self.area,
            "choice": self.choice,
            "status": self.status,
            "reason": self.reason,
            "decided by": self.source,
            "server settings": settings or "—",
        }


def choose_precision(quant: Precision | None, batch: int = 1) -> Choice:
    """The fastest servable scheme passing the quality gate, by its speed-up at the batch width the server will
    run (where the quantization stage measured that width, else batch 1): on a CPU with AMX, bf16 gained ~1.5x at
    batch 8 while batch 1 showed no gain."""
    if quant is None:
        return Choice(
            "precision", "float32", "the quantization stage has not run: the baseline's fp32 is kept", "quantization", status=NOT_RUN
        )
    gate = quant.gate
    wide = batch > 1 and quant.widest == batch
    width = batch if wide else 1
    passing, faster_unservable = {}, []
    for name, scheme in sorted(quant.schemes.items()):
        speed = scheme.speedup_wide if wide else scheme.speedup
        if speed is None or scheme.top1_agreement < gate:
            continue
        if name in SERVABLE_SCHEMES:
            passing[name] = speed
        else:
            faster_unservable.append((name, speed))
    if not passing:
        return Choice(
            "precision",
            "float32",
            f"no servable scheme reached the quality gate (top-1 agreement >= {gate:.0%})",
            "quantization",
            status="not chosen",
        )
    best = max(passing, key=lambda k: passing[k])
    dtype = SERVABLE_SCHEMES[best]
    reason = (
        f"{best}: fastest servable scheme passing the quality gate (top-1 agreement >= {gate:.0%}): "
        f"{passing[best]:.2f}x fp32 tokens/s offline at batch {width}"
    )
    beyond = [f"{n} ({s:.2f}x)" for n, s in faster_unservable if s > passing[best]]
    if beyond:
        reason += f"; faster but not loadable by the server as a dtype: {', '.join(beyond)}"
    if dtype == "float32":
        return Choice("precision", "float32", reason, "quantization", status="not chosen")
    return Choice("precision", dtype, reason, "quantization", {"serving.dtype": dtype})


def choose_batching(batching: Schedulers | None) -> Choice:
    if batching is None:
        return Choice("batching", "sequential", "the batching stage has not run: one request at a time is kept", "batching", status=NOT_RUN)
    candidates = batching.served_tok_s
    if not candidates:
        return Choice("batching", "sequential", "the batching stage measured no scheduler", "batching", status="not chosen")
    best = max(candidates, key=lambda k: candidates[k][0])
    tie = _continuous_ties(batching, best)
    if tie:
        best = "continuous"
    tok, size = candidates[best]
    others = ", ".join(f"{k} {v[0]:.1f}" for k, v in candidates.items() if k != best)
    if best == "sequential":
        return Choice(
            "batching", "sequential", f"sequential served the most tokens/s ({tok:.1f}; {others})", "batching", status="not chosen"
        )
    name = f"{best}-b{size}"
    return Choice(
        "batching",
        name,
        tie or f"{name}: best served tokens/s under the same load ({tok:.1f} tok/s; {others})",
        "batching",
        {"serving.scheduler": best, "serving.max_batch_size": size},
    )


def _continuous_ties(batching: Schedulers, best: str) -> str:
    """Why continuous batching is chosen over `best` although its mean is lower ("" where it is not): the per-round
    ratio of their tokens/s (each over the same sequential round) has a 95% interval that spans 1."""
    rounds = batching.speedup_rounds
    if best in ("continuous", "sequential") or "continuous" not in rounds or best not in rounds:
        return ""
    if len(rounds["continuous"]) != len(rounds[best]) or len(rounds[best]) < 2:
        return ""
    between = ratio(Spread(rounds["continuous"]), Spread(rounds[best]))
    low, high = between.ci or (between.mean, between.mean)
    if not low <= 1.0 <= high:
        return ""
    size = batching.served_tok_s["continuous"][1]
    return (
        f"continuous-b{size}: its served tokens/s cannot be told from {best}'s ({between.mean:.2f}x, 95% CI {low:.2f}–{high:.2f}, "
        f"over {between.n} rounds), and a request joins its running batch between decode steps instead of waiting for "
        "the batch to end: the shorter time to first token at the same throughput"
    )


COLD_START = "cold start"  # the area of the choice that acts on a cold start, not on the load


def choose_cold_start(baseline: BaselineFacts | None, precision: Choice) -> Choice:
    """A checkpoint saved in the served precision, where the stack serves another precision than the saved fp32."""
    if not precision.applied:
        return Choice(
            COLD_START,
            "checkpoint as saved",
            "the stack serves the checkpoint's own precision: no cast to save",
            precision.source,
            status="not chosen",
        )
    dtype = precision.overrides["serving.dtype"]
    measured = (
        f" (the baseline stage measured a {baseline.model_load_s:.2f} s model load in a {baseline.cold_start_s:.1f} s cold start)"
        if baseline is not None and baseline.model_load_s is not None and baseline.cold_start_s is not None
        else ""
    )
    return Choice(
        COLD_START,
        f"{dtype} checkpoint",
        f"the stack serves {dtype}: a copy saved in {dtype} loads half the bytes and skips the cast from fp32 at every start{measured}",
        "baseline",
        {"serving.prepared_checkpoint": True},
    )


def choose_cache(ran: bool, rate: float | None) -> Choice:
    if not ran:
        return Choice("cache", "none", "the cache stage has not run", "cache", status=NOT_RUN)
    measured = f" (it measured a {rate:.0%} hit rate on its Zipf question workload)" if rate is not None else ""
    return Choice(
        "cache",
        "none",
        "the chat load sends distinct passages: an answer cache has no repeats to hit" + measured,
        "cache",
        status=NOT_ON_LOAD,
    )


def choose_distillation(distill: tuple[float | None, float | None] | None, min_kept_pct: float) -> Choice:
    """`distill`: the headline student's accuracy kept (%) and tokens/s over the fp32 teacher."""
    if distill is None:
        return Choice("distillation", "teacher", "the distillation stage has not run", "distillation", status=NOT_RUN)
    kept, speed = distill
    facts = f"accuracy kept {kept:.0f}%" if kept is not None else "no accuracy figure"
    facts += f", {speed:.2f}x fp32" if speed is not None else ""
    if kept is None or kept < min_kept_pct:
        return Choice(
            "distillation",
            "teacher",
            f"the student fails the quality gate (>= {min_kept_pct:g}% kept): {facts}",
            "distillation",
            status="not chosen",
        )
    return Choice(
        "distillation",
        "teacher",
        f"the student passes the gate ({facts}) but its checkpoint is not a served model path this stage can load yet",
        "distillation",
        status="not chosen",
    )


def choose_transport(transport: tuple[dict[str, float], float | None] | None) -> Choice:
    """`transport`: gRPC's time saving against REST's best encoding (%) by payload kind, and the size (KB) measured."""
    if transport is None:
        return Choice("transport", "REST", "the transport stage has not run", "transport", status=NOT_RUN)
    gains, size = transport
    at = f" at {size:,.0f} KB" if size is not None else ""
    measured = (
        (f" (gRPC cut the time{at} by " + ", ".join(f"{v:.0f}% for {k.replace('_', ' ')}" for k, v in sorted(gains.items())) + ")")
        if gains
        else ""
    )
    return Choice(
        "transport", "REST", "chat requests are ~1 KB, where the protocol is a rounding error" + measured, "transport", status=NOT_ON_LOAD
    )


def choose_compression(ran: bool) -> Choice:
    if not ran:
        return Choice("compression", "none", "the compression stage has not run", "compression", status=NOT_RUN)
    return Choice(
        "compression",
        "none",
        "chat answers are short token streams (uncompressed SSE): no codec applies",
        "compression",
        status=NOT_ON_LOAD,
    )


def pinned_choices(pinned: Any) -> tuple[Choice, Choice]:
    """Batching and precision as `optimized.pinned` fixes them (an `optimized.PinnedStack`), not as measured."""
    why = "pinned by optimized.pinned, not chosen from the upstream stages"
    if pinned.scheduler == "sequential":  # the baseline's own scheduler: nothing to apply or ablate
        batching = Choice("batching", "sequential", why, "params", status="not chosen")
    else:
        name = f"{pinned.scheduler}-b{pinned.max_batch_size}"
        batching = Choice(
            "batching", name, why, "params", {"serving.scheduler": pinned.scheduler, "serving.max_batch_size": pinned.max_batch_size}
        )
    if pinned.dtype == "float32":
        return batching, Choice("precision", "float32", why, "params", status="not chosen")
    return batching, Choice("precision", pinned.dtype, why, "params", {"serving.dtype": pinned.dtype})


def choose(upstream: Upstream, *, min_kept_pct: float, pinned: Any = None) -> tuple[Choice, ...]:
    """Every choice in ablation order (batching first: it is the largest single gain measured here); batching and
    precision as `pinned` (`optimized.pinned`) fixes them when given."""
    batching = choose_batching(upstream.batching)
    width = int(batching.overrides.get("serving.max_batch_size", 1))
    precision = choose_precision(upstream.quantization, width)
    if pinned is not None:
        batching, precision = pinned_choices(pinned)
    return (
        batching,
        precision,
        choose_cold_start(upstream.baseline, precision),
        choose_cache("cache" not in upstream.missing, upstream.cache_hit_rate),
        choose_distillation(upstream.distillation, min_kept_pct),
        choose_transport(upstream.transport),
        choose_compression(upstream.compression),
    )


def stack_overrides(choices: tuple[Choice, ...] | list[Choice]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for c in choices:
        if c.applied:
            out |= c.overrides
    return out
