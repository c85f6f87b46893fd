"""What a stage reads of another stage's result: typed facts, loaded from the other's saved result (result.json, through
`results.load`: the object its run returned), never metrics.json keys rebuilt as strings.

The loaders live here, outside the stage packages, so no stage package imports another: the optimized stage reads the
five measuring stages' facts (`read`), the capacity stage the stack the optimized stage chose (`optimized_stack`). Each
returns None where the stage has not run or saved a result this code cannot read (said by the caller).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from perfkit import results
from perfkit.measure import ratio


@dataclass(frozen=True)
class SchemeSpeed:
    """One quantization scheme: tokens/s over fp32 at batch 1 and at the widest batch measured, and its agreement."""

    speedup: float
    top1_agreement: float  # a fraction of fp32's next tokens
    speedup_wide: float | None = None  # at `Precision.widest`
    speedup_rounds: tuple[float, ...] = ()  # the per-round paired ratios behind `speedup` (empty: one round or none)


@dataclass(frozen=True)
class Precision:
    gate: float  # the least top-1 agreement a scheme needs (a fraction)
    widest: int  # the widest batch the stage timed every scheme at
    schemes: dict[str, SchemeSpeed] = field(default_factory=dict)


@dataclass(frozen=True)
class Schedulers:
    """Served tokens/s under the batching stage's one closed-loop load, and the batch width, by scheduler."""

    served_tok_s: dict[str, tuple[float, int]] = field(default_factory=dict)
    # per scheduler, its tokens/s over the sequential server's in each round (paired by round; empty where not paired)
    speedup_rounds: dict[str, tuple[float, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class BaselineFacts:
    """The baseline stage's served tokens/s and, where it started its own server, the model load and cold start."""

    tok_s: float
    model_load_s: float | None = None
    cold_start_s: float | None = None


@dataclass(frozen=True)
class Upstream:
    """Everything the optimized stage decides from; None for a stage that has not run (named in `missing`)."""

    quantization: Precision | None = None
    batching: Schedulers | None = None
    baseline: BaselineFacts | None = None
    cache_hit_rate: float | None = None
    distillation: tuple[float | None, float | None] | None = None  # (accuracy kept %, tokens/s over fp32)
    transport: tuple[dict[str, float], float | None] | None = None  # (gRPC's time saving % by payload kind, at KB)
    compression: bool = False  # ran; nothing of it applies to a chat load
    missing: tuple[str, ...] = ()


def _attempt(experiments: Path, stage: str) -> tuple[Any | None, str | None]:
    """(the stage's saved result, None), or (None, why it cannot be read); (None, None) where it has not run."""
    try:
        return results.load(experiments / stage), None
    except (results.ResultFileError, OSError, ValueError) as exc:
        return None, str(exc) if (experiments / stage / results.RESULT_FILE).is_file() else None


def _load(experiments: Path, stage: str) -> Any | None:
    return _attempt(experiments, stage)[0]


def _precision(result: Any) -> Precision:
    """Each scheme timed against fp32 (one that was not has no speed-up and is left out); the widest batch's speed-up
    only where that width was timed in the same rounds as fp32's (else None, never the batch-1 figure)."""
    ok = result.ok()
    widest = max(result.batch_sizes)
    fp32 = ok.get("fp32")
    schemes = {}
    for name, run in ok.items():
        if run.speedup is None:
            continue
        paired = run.paired_speedup(fp32, widest) if widest > 1 and fp32 is not None else None
        rounds = tuple(run.speedup_spread.values) if run.speedup_spread is not None else ()
        schemes[name] = SchemeSpeed(float(run.speedup), float(run.top1_agreement or 0.0), paired.mean if paired else None, rounds)
    return Precision(float(result.min_agreement), widest, schemes)


def _schedulers(result: Any) -> Schedulers:
    chosen = {"sequential": result.sequential, "dynamic": result.best_dynamic, "continuous": result.continuous}
    seq = result.sequential
    paired = {
        name: ratio(v.served, seq.served).values
        for name, v in chosen.items()
        if v is not None and seq is not None and v is not seq and v.served.n == seq.served.n
    }
    return Schedulers({name: (v.served.mean, int(v.max_batch_size)) for name, v in chosen.items() if v is not None}, paired)


def _baseline(result: Any) -> BaselineFacts:
    warm, tok_s = result.warm, float(result.load.summary.throughput_tok_s)
    return BaselineFacts(tok_s, warm.model_load_s, warm.cold_start_s) if warm is not None else BaselineFacts(tok_s)


def _transport(result: Any) -> tuple[dict[str, float], float | None]:
    return result.c6_by_kind(), result.c6_size_kb()


READERS: dict[str, Callable[[Any], Any]] = {
    "quantization": _precision,
    "batching": _schedulers,
    "baseline": _baseline,
    "cache": lambda r: r.hit_rate(),
    "distillation": lambda r: r.student_kept_and_speedup(),
    "transport": _transport,
    "compression": lambda r: True,
}


def read(experiments: Path, stages: tuple[str, ...]) -> Upstream:
    """The facts of each of `stages` whose saved result loads (a stage not run is left None and named in `missing`)."""
    loaded = {stage: _load(experiments, stage) for stage in stages}
    facts = {stage: READERS[stage](result) for stage, result in loaded.items() if result is not None}
    named = {"cache": "cache_hit_rate"}
    return Upstream(
        **{named.get(stage, stage): value for stage, value in facts.items()},
        missing=tuple(stage for stage, result in loaded.items() if result is None),
    )


def optimized_stack(experiments: Path) -> tuple[dict[str, Any] | None, str | None]:
    """The server settings the optimized stage applied over the baseline, and None; (None, why) when its saved result
    cannot be read; (None, None) when it has not run."""
    result, why = _attempt(experiments, "optimized")
    return (None, why) if result is None else (result.stack_overrides(), None)


@dataclass(frozen=True)
class ClosedLoop:
    """What one arm of the optimized stage answered under its closed-loop load: requests/s per round, the users, and
    the most rows its server batches (1 for the sequential scheduler)."""

    rps: tuple[float, ...]
    users: int
    width: int | None  # None: the arm's scheduler not recorded

    @property
    def saturated(self) -> bool:
        """Every user's request in the server at once fills its batch: the server was never idle nor part-full."""
        return self.width is not None and self.users >= self.width


def closed_loop(experiments: Path) -> dict[str, ClosedLoop]:
    """Each arm of the optimized stage under its closed-loop load, by arm ("baseline", "optimized", ...); empty where
    that stage has not run or its result cannot be read."""
    result = _load(experiments, "optimized")
    if result is None:
        return {}
    out = {}
    for arm, runs in result.rounds.items():
        if not runs:
            continue
        scheduler, size = runs[0].overrides.get("serving.scheduler"), runs[0].overrides.get("serving.max_batch_size")
        width = 1 if scheduler == "sequential" else int(size) if scheduler is not None and size is not None else None
        users = min(r.load.summary.users for r in runs)
        out[arm] = ClosedLoop(tuple(r.load.summary.throughput_rps for r in runs), users, width)
    return out
