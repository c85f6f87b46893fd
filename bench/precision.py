"""Is bf16 faster than fp32 on this CPU, at batch 1 and at batch 8? Side by side, interleaved, per round.

The quantization stage's timing path (`spawn_measurement`: a fresh interpreter per scheme and round,
threads pinned), fp32 and bf16 alternating over `--rounds` rounds so that drift hits both alike; the
ratio's 95% interval is t over the per-round paired ratios. Native bf16 instructions (AVX512-BF16, AMX)
are read from the CPU flags and printed beside the result, not assumed.

    .venv/bin/python bench/precision.py [--rounds 3] [--repeats 3]

Prints one line per round, then one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import json
import os

from perfkit import config, provenance
from perfkit.stages.quantization.measure import spawn_measurement
from perfkit.stats import t_interval

SCHEMES = ("fp32", "bf16")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="timed generations per batch size and round")
    args = parser.parse_args()
    cfg = config.override(config.load("quantization"), {"quantization.repeats": args.repeats})
    sizes = cfg.quantization.batch_sizes
    load_start = provenance.load_average()
    per_round: dict[int, list[float]] = {b: [] for b in sizes}
    for r in range(args.rounds):
        got = {scheme: spawn_measurement(cfg, scheme) for scheme in SCHEMES}
        line = {}
        for b in sizes:
            key = f"throughput_tok_s_batch{b}"
            fp32, bf16 = got["fp32"][key], got["bf16"][key]
            per_round[b].append(bf16 / fp32)
            line[f"batch{b}"] = f"fp32 {fp32:.1f} / bf16 {bf16:.1f} tok/s = {bf16 / fp32:.2f}x"
        print(f"round {r}: {line}", flush=True)
    out = {}
    for b, ratios in per_round.items():
        mean, low, high = t_interval(ratios)
        out[f"bf16_over_fp32_batch{b}"] = {"mean": round(mean, 3), "ci": [round(low, 3), round(high, 3)], "rounds": ratios}
    print(
        json.dumps(
            {
                "bench": "precision",
                "cpu_flags": provenance.cpu_flags(),
                "threads": cfg.hardware.threads,
                "new_tokens": cfg.quantization.new_tokens,
                "repeats": args.repeats,
                "cpu_count": os.cpu_count(),
                "load_avg_1m_start": load_start,
                "load_avg_1m_end": provenance.load_average(),
            }
            | out
        )
    )


if __name__ == "__main__":
    main()
