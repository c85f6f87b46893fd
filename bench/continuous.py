"""Continuous vs dynamic batching when rows end at different times.

The batching stage uses a fixed output length, so every row of a dynamic batch ends at the same
step and dynamic batching wastes no slot; continuous batching then only adds prefill cost (a
newcomer is prefilled with the few that arrived with it instead of with a whole batch). Real
traffic has varied lengths: a dynamic batch then runs until its longest row ends while its
finished rows' slots idle, and continuous batching refills them at the next decode step. This
script runs both schedulers at the largest `batching.max_batch_sizes` under the same closed-loop
load with output lengths drawn uniformly within +-`--spread` of `workload.max_new_tokens` (seeded
per request, so both see the same lengths), and prints one JSON object last.

    .venv/bin/python bench/continuous.py [--spread 0.75] [--smoke]
"""

from __future__ import annotations

import argparse
import json

from perfkit import config
from perfkit.load.runner import served_prompts
from perfkit.stages.batching.experiment import serve_round


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spread", type=float, default=0.75, help="output lengths within +-this share of max_new_tokens")
    parser.add_argument("--smoke", action="store_true", help="params.yaml's smoke overrides (seconds, not minutes)")
    args = parser.parse_args(argv)
    cfg = config.load("batching", smoke=args.smoke)
    cfg = cfg.model_copy(update={"workload": cfg.workload.model_copy(update={"output_spread": args.spread})})
    prompts = served_prompts(cfg)
    size = max(cfg.batching.max_batch_sizes)
    out: dict[str, object] = {
        "spread": args.spread,
        "output_tokens_range": list(cfg.workload.output_range),
        "users": cfg.load.users,
        "max_batch_size": size,
    }
    for scheduler in ("dynamic", "continuous"):
        r = serve_round(cfg, 0, scheduler, size, prompts)  # one fresh server under the load, /metrics over its window
        s = r.load.summary
        out[scheduler] = {
            "served_tok_s": r.served_tok_s,
            "throughput_rps": s.throughput_rps,
            "latency_ms_p50": s.e2e.p50 if s.e2e else None,
            "mean_batch_size": r.mean_batch_size,
            "requests_per_prefill": r.requests_per_prefill,
            "error_rate": s.error_rate,
        }
        print(f"{scheduler}-b{size}: {r.served_tok_s:.1f} tok/s at {r.mean_batch_size:.1f} rows per step", flush=True)
    dyn, cont = out["dynamic"], out["continuous"]
    out["continuous_vs_dynamic"] = cont["served_tok_s"] / dyn["served_tok_s"]  # type: ignore[index]
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
