"""The capacity stage's run: each stack's server and rate search, interleaved point by point."""

from __future__ import annotations

import os
import statistics
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from perfkit import tracking, upstream
from perfkit.config import Config, override
from perfkit.load.runner import LoadError, run_load, served_prompts
from perfkit.load.slo import MAX, RatePoint, RateSearch, judge_point, start_index
from perfkit.load.workloads import RequestStream, request_stream
from perfkit.serving.launch import ServerHandle, launch
from perfkit.stages.capacity.result import PACED_SHARE, CapacityResult, StackSearch, stack_label
from perfkit.workload import Prompt

# The unoptimized deployment with the per-key rate limiter off: the load measures the server, not a client quota.
# The queue bound (serving.max_queue_wait_s) stays as params.yaml gives it: past capacity the server answers 503.
BASELINE = {"serving.scheduler": "sequential", "serving.dtype": "float32", "serving.rate_limit.enabled": False}
MULTI_TURN = "optimized_multi_turn"  # the optimized stack on multi-turn conversations, its prefix store on
SCHEDULE_MARGIN = 1.5  # a point's time limit: this x its arrival schedule and any fill (room for a lag) + drain_s
# A ceiling is this x the best closed-loop round: that window ends with the last answers, their batches emptying, and
# one round of 40 requests moves +-10% (2.45, 1.93, 2.22 req/s in one run), so the estimate gets room above it.
CEILING_MARGIN = 1.1


def optimized_stack(cfg: Config) -> tuple[dict[str, Any], str]:
    """The optimized stage's settings over the baseline (from its saved result), and where they came from."""
    own = cfg.capacity
    fallback = {
        "serving.scheduler": own.fallback_scheduler,
        "serving.max_batch_size": own.fallback_max_batch_size,
        "serving.dtype": own.fallback_dtype,
    }
    chosen, why = upstream.optimized_stack(cfg.experiments_dir)
    if chosen is None:
        instead = f"the fallback stack {stack_label(fallback)} (capacity.fallback_*) is measured instead"
        if why is not None:
            return BASELINE | fallback, f"the optimized stage's saved result cannot be read ({why}): {instead}"
        return BASELINE | fallback, f"the optimized stage had not run (no experiments/optimized/result.json): {instead}"
    if not chosen:
        return dict(BASELINE), "the optimized stage applied no change: the optimized stack is the baseline"
    return BASELINE | chosen, f"chosen by the optimized stage ({stack_label(chosen)})"


class StackServer:
    """One stack's server: launched when first needed, relaunched after a point that may have left requests queued."""

    def __init__(self, cfg: Config, overrides: dict[str, Any]) -> None:
        self.cfg, self.overrides = cfg, overrides
        self._exit: ExitStack | None = None
        self._handle: ServerHandle | None = None

    def handle(self) -> ServerHandle:
        if self._handle is None:
            self._exit = ExitStack()
            self._handle = self._exit.enter_context(
                launch(self.cfg, overrides=self.overrides, probe_cold_start=False, timeout_s=self.cfg.capacity.launch_timeout_s)
            )
        return self._handle

    def close(self) -> None:
        if self._exit is not None:
            self._exit.close()
        self._exit = self._handle = None


def fill_time_s(turns: int, turn_gap_s: float) -> float:
    """About how long a multi-turn open loop's conversations take to reach a steady state with `turn_gap_s` between
    turns (an answer and the user's pause) at the slowest (the waits for the first arrivals come on top).

    Conversations arrive at rate / turns and send turn k at k x the gap, so for the first (turns - 1) gaps the later
    turns have not come due and turns arrive at a fraction of the rate (a 20 s point at 4 req/s measured from the start
    was answered at 2.1 turns/s). The locustfile measures from the last turn of a conversation started when the first
    one reached its own (`_last_turn`): two conversations' lifetimes. This sizes the point's time limit only.
    """
    return 2 * (turns - 1) * turn_gap_s


def slowest_passing_turn_gap_s(cfg: Config, stream: RequestStream) -> float:
    """The longest gap between a conversation's turns at a point that passes the SLO: the user's pause, then an
    answer of the longest turn with its first token and every later one at their bounds. A slower point fails the SLO
    whatever its time limit, so a limit sized on this cuts no point that could pass."""
    tokens = max((n for c in stream.conversations for n in c.max_tokens), default=1)
    return stream.think_time_s + (cfg.slo.ttft_p99_ms + cfg.slo.tpot_p99_ms * (tokens - 1)) / 1000.0


def measure_point(
    cfg: Config, server: StackServer, name: str, rate: float, prompts: list[Prompt], stream: RequestStream | None = None
) -> RatePoint:
    """`slo.point_requests(rate)` open-loop requests at `rate` req/s against the stack's server (the workload's prompts,
    or `stream`'s requests), judged against the SLO. Conversations measure from their steady state on, the turns before
    it warm-up, so their time limit allows for the longest a passing point's conversations take to fill."""
    slo = cfg.slo
    requests = slo.point_requests(rate)
    fill_s = 0.0
    if stream is not None and stream.kind == "multi_turn":
        fill_s = fill_time_s(max(len(c.turns) for c in stream.conversations), slowest_passing_turn_gap_s(cfg, stream))
    limit = SCHEDULE_MARGIN * ((requests + slo.warmup_requests) / rate + fill_s) + cfg.capacity.drain_s
    try:
        with TemporaryDirectory() as folder:
            load = run_load(
                cfg,
                server.handle(),
                prompts,
                Path(folder),
                mode="open",
                rate_rps=rate,
                requests=requests,
                warmup_requests=slo.warmup_requests,
                duration_s=limit,
                key_prefix=f"{name}-client",
                stream=stream,
            )
    except LoadError as exc:  # nothing measured: the server is gone or wedged, or conversations never filled
        server.close()
        return RatePoint(rate, requests, 0, 0, None, None, None, MAX, 0.0, False, f"nothing measured ({str(exc).splitlines()[0]})")
    if load.summary.requests < requests:  # the time limit cut the point: the server may still hold its queue
        server.close()
    point = replace(judge_point(rate, requests, load.summary, slo), run=load)
    if stream is not None and stream.kind == "multi_turn" and (paced := paced_flag(point.offered_rps, rate)):
        point = replace(point, flags=(*point.flags, paced))
    return point


def paced_flag(offered_rps: float | None, rate_rps: float) -> str | None:
    """What a multi-turn point says when its turns arrived below `PACED_SHARE` of its rate, else None."""
    if offered_rps is None or offered_rps >= PACED_SHARE * rate_rps:
        return None
    return (
        f"the conversations offered {offered_rps:.3g} turns/s of {rate_rps:.3g}: their answers (or failed turns, which "
        "end a conversation) paced their later turns"
    )


def conversations(cfg: Config) -> RequestStream:
    """The `multi_turn` workload's conversations (workload.turns turns each, the workload's seed and lengths)."""
    from perfkit.models import load_tokenizer

    return request_stream(override(cfg, {"workload.kind": "multi_turn"}), load_tokenizer(cfg.resolve(cfg.model.path)))


def search_starts(cfg: Config, names: list[str]) -> tuple[dict[str, int], dict[str, float | None], str]:
    """Each search's first rate (an index in `slo.rates`) and ceiling, from the requests/s the optimized stage's closed
    loop got from the same stack, and the sentence that says so. The start is `start_share` of the mean over its rounds;
    the ceiling, `CEILING_MARGIN` x the best round, with `capacity.closed_loop_ceiling`, and only where that closed loop
    kept the server saturated (as many users as its batch has rows). The multi-turn search takes both from the
    optimized arm's single turns: a turn sends at least a single turn's new tokens (its passage, after the last answer)
    and attends over a longer history, so the stack completes no more turns/s than single requests."""
    rates, share = cfg.slo.rates, cfg.capacity.start_share
    answered = upstream.closed_loop(cfg.experiments_dir)
    starts: dict[str, int] = {}
    ceilings: dict[str, float | None] = {}
    parts = []
    for name in names:
        arm = "baseline" if name == "baseline" else "optimized"
        loop = answered.get(arm)
        rps = statistics.fmean(loop.rps) if loop else None
        starts[name] = start_index(rates, rps, share)
        bounded = loop is not None and cfg.capacity.closed_loop_ceiling
        ceilings[name] = CEILING_MARGIN * max(loop.rps) if bounded and loop.saturated and max(loop.rps) > 0 else None
        if not rps or share <= 0:
            why = "the lowest rate: the optimized stage's closed-loop rate is unknown" if share > 0 else "the lowest rate"
        else:
            on = "on single turns, " if name == MULTI_TURN else ""
            why = f"{share:g} x {rps:.3g} req/s, what the {arm} arm answered {on}closed-loop in the optimized stage"
            if starts[name] == 0 and rates[0] > share * rps:
                why += ": below the lowest rate"
        if ceilings[name] is not None:
            why += f"; walking up to {ceilings[name]:.3g} req/s at most, {CEILING_MARGIN:g} x its best closed-loop round"
            why += " of single turns (a turn costs no less)" if name == MULTI_TURN else ""
        elif bounded and not loop.saturated:
            why += "; no ceiling: " + (
                f"its closed loop's {loop.users} users do not fill a batch of {loop.width}"
                if loop.width is not None
                else "its scheduler is not recorded"
            )
        parts.append(f"{name} at {rates[starts[name]]:g} req/s ({why})")
    return starts, ceilings, "Searches started: " + "; ".join(parts) + "."


def run(cfg: Config) -> CapacityResult:
    optimized, source = optimized_stack(cfg)
    stacks = {"baseline": BASELINE, "optimized": optimized}
    measured = [name for name, overrides in stacks.items() if name == "baseline" or overrides != BASELINE]
    streams: dict[str, RequestStream] = {}
    w = cfg.workload
    sources = {
        "baseline": "the unoptimized deployment",
        MULTI_TURN: f"the optimized stack with a prefix KV store, on conversations of {w.turns} turns (the history re-sent "
        f"each turn, {w.think_time_s:g} s between an answer and the next turn; conversations arrive at the rate / {w.turns})",
    }
    if cfg.capacity.multi_turn:
        stacks[MULTI_TURN] = optimized | {"serving.cache.prefix_mb": cfg.capacity.multi_turn_prefix_mb}
        streams[MULTI_TURN] = conversations(cfg)
        measured.append(MULTI_TURN)
    prompts = served_prompts(cfg)
    load_start = os.getloadavg()[0]
    starts, ceilings, started = search_starts(cfg, measured)
    searches = {
        name: RateSearch(cfg.slo.rates, cfg.slo.bisect_points, cfg.slo.max_points, starts[name], ceilings[name]) for name in measured
    }
    servers = {name: StackServer(cfg, stacks[name]) for name in measured}
    try:
        while pending := [(name, rate) for name, s in searches.items() if (rate := s.next_rate()) is not None]:
            for name, rate in pending:  # interleaved: each stack's next point in turn
                point = measure_point(cfg, servers[name], name, rate, prompts, streams.get(name))
                searches[name].record(point)
                if searches[name].done:
                    servers[name].close()
    finally:
        for server in servers.values():
            server.close()
    results = []
    for name, overrides in stacks.items():
        measured_as = name if name in searches else "baseline"
        search = searches[measured_as]
        results.append(
            StackSearch(
                name,
                overrides,
                tuple(search.points),
                search.capacity(),
                sources.get(name, source),
                None if measured_as == name else measured_as,
                "multi_turn" if name in streams else "single",
            )
        )
    result = CapacityResult(
        tuple(results),
        cfg.slo,
        cfg.cost,
        cfg.serving.max_queue_wait_s,
        (load_start, os.getloadavg()[0]),
        remarks=(f"Optimized stack: {source}.", started),
    )
    for stack in results:
        tracking.log_variant(stack.name, stack.metrics(cfg.cost) | {"stack": stack.label}, stack.overrides)
    return result
