"""The optimized stage's run: choose the stack, serve both under the same load in interleaved rounds, then ablate."""

from __future__ import annotations

import os
from typing import Any

from perfkit import claims, tracking
from perfkit.config import Config
from perfkit.load.runner import served_prompts
from perfkit.load.served import BASELINE, ServedRun, serve_under_load
from perfkit.measure import interleaved
from perfkit.stages.optimized import STAGE, UPSTREAM
from perfkit.stages.optimized.case_study import case_study
from perfkit.stages.optimized.choose import Choice, choose, read_summaries, stack_overrides
from perfkit.stages.optimized.result import AblationStep, OptimizedResult


def ablation_plan(applied: list[Choice]) -> list[tuple[str, str, tuple[str, ...]]]:
    """(step name, kind, areas on) for the waterfall (one added at a time, in order) and each left out of the full stack."""
    areas = [c.area for c in applied]
    plan = [("baseline" if i == 0 else "+ " + areas[i - 1], "add", tuple(areas[:i])) for i in range(len(areas) + 1)]
    if len(areas) > 1:
        plan += [(f"full − {a}", "leave out", tuple(x for x in areas if x != a)) for a in areas]
    return plan


def run(cfg: Config) -> OptimizedResult:
    checks = claims.checks_for(cfg.claims_path, STAGE.name)  # before minutes of load: a bad claims file fails fast
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

    rounds = interleaved({"baseline": serve("baseline", BASELINE), "optimized": serve("optimized", full)}, cfg.measure.rounds)

    steps: list[AblationStep] = []
    if own.ablation and applied:
        by_area = {c.area: c for c in applied}
        done: dict[frozenset[str], ServedRun] = {frozenset(): rounds["baseline"][0],
                                                 frozenset(by_area): rounds["optimized"][0]}
        for name, kind, areas in ablation_plan(applied):
            key = frozenset(areas)
            if key not in done:
                overrides = BASELINE | stack_overrides([by_area[a] for a in areas])
                done[key] = serve_under_load(cfg, name, overrides, prompts, requests=own.ablation_requests,
                                             probe_cold_start=False, timeout_s=own.launch_timeout_s)
            steps.append(AblationStep(name, kind, areas, done[key]))

    study = case_study(cfg, {"baseline": BASELINE, "optimized": full})
    result = OptimizedResult(
        choices=choices, missing=tuple(s for s in UPSTREAM if s not in summaries), rounds=rounds, ablation=tuple(steps),
        case_study=study, baseline_stage_tok_s=summaries.get("baseline", {}).get("throughput_tok_s"),
        cost=cfg.cost, requests_per_round=requests, load_avg=(load_start, os.getloadavg()[0]), checks=checks,
    )
    settings = {"baseline": BASELINE, "optimized": full} | {f"ablation {st.name}": st.run.overrides for st in steps}
    for name, metrics in result.variant_metrics().items():
        tracking.log_variant(name, metrics, settings.get(name))
    return result
