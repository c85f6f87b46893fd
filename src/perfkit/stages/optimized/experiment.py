"""The optimized stage's run: choose the stack; serve every ablation arm under the same load in interleaved rounds (the
case study on the arms' servers after their load); then the cold-start block."""

from __future__ import annotations

import os
from typing import Any

from perfkit import tracking, upstream
from perfkit.config import Config
from perfkit.load.runner import served_prompts
from perfkit.load.served import BASELINE, serve_under_load
from perfkit.measure import interleaved
from perfkit.stages.optimized import UPSTREAM
from perfkit.stages.optimized.ablation import AblationStep, ablated, ablation_plan, arm_name
from perfkit.stages.optimized.case_study import FP32_STACK, case_study_run
from perfkit.stages.optimized.choose import COLD_START, choose, stack_overrides
from perfkit.stages.optimized.cold_starts import BASELINE_START, NO_WARMUP, OPTIMIZED_START, WITHOUT_LEVER, cold_start_block
from perfkit.stages.optimized.result import COLD_START_SETTINGS, OptimizedResult


def run(cfg: Config) -> OptimizedResult:
    own = cfg.optimized
    measured = upstream.read(cfg.experiments_dir, UPSTREAM)
    choices = choose(measured, min_kept_pct=own.min_accuracy_kept_pct, pinned=own.pinned)
    applied = [c for c in choices if c.applied]
    full = BASELINE | stack_overrides(applied)
    prompts = served_prompts(cfg)
    requests = max(cfg.load.requests, own.min_requests)
    load_start = os.getloadavg()[0]

    # Every set of optimizations the ablation needs is an arm of the same interleaved rounds (with two, a 2 x 2
    # factorial: baseline, each alone, both), so each step has its own rounds and interval.
    on_load = ablated(applied)
    every = tuple(c.area for c in on_load)
    by_area = {c.area: c for c in on_load}
    plan = ablation_plan(applied) if own.ablation and on_load else []
    arms = {"baseline": BASELINE, "optimized": full}
    for _, _, areas in plan:
        arms.setdefault(arm_name(areas, every), BASELINE | stack_overrides([by_area[a] for a in areas]))
    steps = [AblationStep(name, kind, areas, arm_name(areas, every)) for name, kind, areas in plan]

    # C20 runs on the arms' own servers after their load: the optimized stack, the baseline and, where the stack changes
    # the precision, the arm that serves the rest of it in fp32 (the fastest stack that may pass the similarity gate).
    study = case_study_run(cfg)
    lossless = BASELINE | stack_overrides([c for c in on_load if c.area != "precision"])
    study_stacks = {"baseline": "baseline", "optimized": "optimized"}
    fp32_arm = next((name for name, overrides in arms.items() if overrides == lossless), None)
    if fp32_arm is None and lossless != full:  # no ablation arm serves it: an arm of its own
        fp32_arm = FP32_STACK
        arms[fp32_arm] = lossless
    if fp32_arm not in (None, "baseline", "optimized"):
        study_stacks[fp32_arm] = FP32_STACK

    def serve(name: str, overrides: dict[str, Any]):
        then = study.on(study_stacks[name]) if study is not None and name in study_stacks else None
        # one request at a time varies little between rounds (the baseline's tokens/s within 1%): fewer requests do
        n = own.sequential_requests if overrides.get("serving.scheduler") == "sequential" else requests
        return lambda r: serve_under_load(
            cfg, name, overrides, prompts, round_index=r, requests=n, timeout_s=own.launch_timeout_s, then=then
        )

    rounds = interleaved({name: serve(name, overrides) for name, overrides in arms.items()}, cfg.measure.rounds)
    levers = tuple(key for key in stack_overrides(applied) if key in COLD_START_SETTINGS)
    starts = {BASELINE_START: BASELINE, NO_WARMUP: BASELINE | {"serving.warmup": False}}
    if full != BASELINE:  # a stack that changes nothing starts like the baseline
        starts[OPTIMIZED_START] = full
    without = BASELINE | stack_overrides([c for c in applied if c.area != COLD_START])
    if levers and without != full:  # what the lever alone buys: the same stack cast at load
        starts[WITHOUT_LEVER] = without
    cold = (
        cold_start_block(cfg, starts, own.cold_starts, seed=cfg.workload.seed, levers=levers, timeout_s=own.launch_timeout_s)
        if own.cold_starts
        else None
    )
    result = OptimizedResult(
        choices=choices,
        missing=measured.missing,
        rounds=rounds,
        ablation=tuple(steps),
        case_study=study.result() if study is not None else None,
        cold_starts=cold,
        baseline_stage_tok_s=measured.baseline.tok_s if measured.baseline is not None else None,
        cost=cfg.cost,
        requests_per_round=requests,
        load_avg=(load_start, os.getloadavg()[0]),
    )
    for name, metrics in result.variant_metrics().items():
        tracking.log_variant(name, metrics, arms.get(name))
    return result
