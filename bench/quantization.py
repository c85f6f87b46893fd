"""The quantization stage's speed targets against what this machine measures now.

Targets from issue 2, seen on a 2-core CPU with a model of SmolLM2-135M's shape: fp32 ~17 tokens/s
at batch 1, int8-dynamic ~30, torchao int8 weight-only ~10, quanto qint8 ~5; the harness's own
clock reads under 1% of the end-to-end time; at least `measure.min_repeats` timed repeats per
scheme. Each scheme is measured in a fresh process exactly as the stage does
(`perfkit.stages.quantization.measure.spawn_measurement`). Timings move with whatever else the machine runs: a
ratio to fp32 measured in the same sitting is steadier than an absolute tokens/s.

    .venv/bin/python bench/quantization.py [--smoke] [--schemes fp32 int8-dynamic]

Prints one line per scheme, then one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import json

from perfkit import config
from perfkit.stages.quantization.measure import spawn_measurement

TARGET_TOK_S = {"fp32": 17.0, "int8-dynamic": 30.0, "int8-weight-only-torchao": 10.0, "quanto-qint8": 5.0}
MAX_HARNESS_OVERHEAD_PCT = 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="params.yaml's smoke overrides (seconds, not minutes)")
    parser.add_argument("--schemes", nargs="+", default=list(TARGET_TOK_S), choices=list(TARGET_TOK_S))
    args = parser.parse_args()
    cfg = config.load("quantization", smoke=args.smoke)
    batch = f"batch{cfg.quantization.batch_sizes[0]}"
    b1 = f"throughput_tok_s_{batch}"
    rows = {}
    for scheme in args.schemes:
        r = spawn_measurement(cfg, scheme)
        row = {"status": r["status"], "target_tok_s": TARGET_TOK_S[scheme]}
        if r["status"] == "ok":
            row |= {
                "measured_tok_s": round(r[b1], 2),
                "meets_speed": r[b1] >= TARGET_TOK_S[scheme],
                "harness_overhead_pct": round(r["harness_overhead_pct"], 4),
                "meets_overhead": r["harness_overhead_pct"] < MAX_HARNESS_OVERHEAD_PCT,
                "repeats": r[f"repeats_{batch}"],
                "meets_repeats": r[f"repeats_{batch}"] >= cfg.measure.min_repeats,
                "cv": round(r[f"cv_{batch}"], 4),
            }
        else:
            row["reason"] = r.get("reason")
        rows[scheme] = row
        print(scheme, row, flush=True)
    fp32 = rows.get("fp32", {}).get("measured_tok_s")
    ratios = {k: round(v["measured_tok_s"] / fp32, 2) for k, v in rows.items() if fp32 and "measured_tok_s" in v}
    print(json.dumps({"bench": "quantization", "batch": cfg.quantization.batch_sizes[0], "speedup_vs_fp32": ratios, "schemes": rows}))


if __name__ == "__main__":
    main()
