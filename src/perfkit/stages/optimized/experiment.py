"""The optimized stage's run: choose the stack, serve both under the same load in interleaved rounds, then ablate."""

from __future__ import annotations

import os
from typing import Any

from perfkit import tracking
from perfkit.config import Config
from perfkit.load.runner import served_prompts
from perfkit.load.served import BASELINE, serve_under_load
from perfkit.measure import interleaved
from perfkit.stages.optimized import UPSTREAM
from perfkit.stages.optimized.ablation import AblationStep, ablation_plan, arm_name
from perfkit.stages.optimized.case_study import case_study
from perfkit.stages.optimized.choose import choose, read_summaries, stack_overrides
from perfkit.stages.optimized.result import OptimizedResult


def run(cfg: Config) -> OptimizedResult:
    own = cfg.optimized
    summaries = read_summaries(cfg.experiments_dir, UPSTREAM)
    choices = choose(
        summaries, fallback_batch=cfg.serving.max_batch_size, min_kept_pct=own.min_accuracy_kept_pct, pinned=own.pinned
    )
    applied = [c for c in choices if c.applied]
    full = BASELINE | stack_overrides(applied)
    prompts = served_prompts(cfg)
    requests = max(cfg.load.requests, own.min_requests)
    load_start = os.getloadavg()[0]

    def serve(name: str, overrides: dict[str, Any]):
        return lambda r: serve_under_load(cfg, name, overrides, prompts, round_index=r, requests=requests,
                                          timeout_s=own.launch_timeout_s)

    # Every set of optimizations the ablation needs is an arm of the same interleaved rounds (with two, a 2 x 2
    # factorial: baseline, each alone, both), so each step has its own rounds and interval.
    every = tuple(c.area for c in applied)
    by_area = {c.area: c for c in applied}
    plan = ablation_plan(applied) if own.ablation and applied else []
    arms = {"baseline": BASELINE, "optimized": full}
    for _, _, areas in plan:
        arms.setdefault(arm_name(areas, every), BASELINE | stack_overrides([by_area[a] for a in areas]))
    rounds = interleaved({name: serve(name, overrides) for name, overrides in arms.items()}, cfg.measure.rounds)
    steps = [AblationStep(name, kind, areas, arm_name(areas, every)) for name, kind, areas in plan]

    stacks = {"baseline": BASELINE, "optimized": full}
    lossless = BASELINE | stack_overrides([c for c in applied if c.area != "precision"])
    if lossless not in (full, BASELINE):  # the stack without its precision change: the fastest that may pass the gate
        stacks["fp32 batched"] = lossless
    study = case_study(cfg, stacks)
    result = OptimizedResult(
        choices=choices, missing=tuple(s for s in UPSTREAM if s not in summaries), rounds=rounds, ablation=tuple(steps),
        case_study=study, baseline_stage_tok_s=summaries.get("baseline", {}).get("throughput_tok_s"),
        cost=cfg.cost, requests_per_round=requests, load_avg=(load_start, os.getloadavg()[0]),
    )
    settings = arms
    for name, metrics in result.variant_metrics().items():
        tracking.log_variant(name, metrics, settings.get(name))
    return result
