"""Where one eager decode step's time goes, at batch 1 and at batch 8: matrix products, attention, the rest.

The question before compiling the reference engine: if the matrix products alone take most of a
step, compilation cannot close the gap to llama.cpp without prepacked weights; if dispatch and
Python take a large share, a compiled (or graph-captured) step can. Each width runs `--steps`
decode steps of the engine's own loop (`engine.RunningBatch.step`, the path the servers run) after
a prefill and `--warmup` untimed steps, first timed plainly (wall per step), then under
`torch.profiler` (operator self CPU time, grouped). "other ops" is every other operator's self time;
"outside operators" is the wall time no operator accounts for (Python, the loop, dispatch between
ops), taken from the profiled steps. The weights' bytes over the plain step time give the read rate
a step achieves, to set beside the machine's bandwidth.

    .venv/bin/python bench/decode_profile.py --steps 32
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from perfkit import config
from perfkit.engine import Engine, RunningBatch
from perfkit.hardware import pin_threads
from perfkit.models import load_causal_lm

GROUPS = {  # operator name -> group; everything else is "other ops"
    "aten::mm": "matrix products",
    "aten::addmm": "matrix products",
    "aten::bmm": "matrix products",
    "aten::linear": "matrix products",
    "aten::matmul": "matrix products",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "attention",
    "aten::scaled_dot_product_attention": "attention",
    "aten::_softmax": "attention",
}


def running(engine: Engine, width: int, prompt: list[int], warmup: int) -> RunningBatch:
    batch = RunningBatch(engine)
    batch.join([(row, prompt, 1_000, False) for row in range(width)], [0] * width)
    for _ in range(warmup):
        batch.step()
    return batch


def profile_width(engine: Engine, width: int, prompt: list[int], steps: int, warmup: int) -> dict[str, float]:
    batch = running(engine, width, prompt, warmup)
    walls = []
    for _ in range(steps):
        t0 = time.perf_counter()
        batch.step()
        walls.append(time.perf_counter() - t0)
    batch = running(engine, width, prompt, warmup)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            batch.step()
        profiled_wall = time.perf_counter() - t0
    groups: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():  # self times: each microsecond counted once, in the operator that spent it
        groups[GROUPS.get(event.key, "other ops")] += event.self_cpu_time_total / 1e6
    ms = {f"{name} (ms/step)": 1000 * seconds / steps for name, seconds in groups.items()}
    ops = sum(groups.values())
    ms["outside operators (ms/step)"] = 1000 * max(0.0, profiled_wall - ops) / steps
    return {"width": width, "step_ms_p50": 1000 * statistics.median(walls), "profiled_step_ms": 1000 * profiled_wall / steps} | ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()
    cfg = config.load("quantization")
    threads = pin_threads(cfg.hardware.threads)
    model, tokenizer = load_causal_lm(cfg.resolve(cfg.model.path), "cpu", args.dtype)
    engine = Engine(model, tokenizer, "cpu")
    prompt = engine.encode("Summarize: " + "the quick brown fox jumps over the lazy dog " * 40)[: args.prompt_tokens]
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    rows = []
    with torch.inference_mode():
        for width in args.widths:
            row = profile_width(engine, width, prompt, args.steps, args.warmup)
            row["weights_gb_per_s"] = weight_bytes / 1e9 / (row["step_ms_p50"] / 1000)
            rows.append(row)
    print(json.dumps({"threads": threads, "dtype": args.dtype, "weight_mb": weight_bytes / 2**20, "rows": rows}))


if __name__ == "__main__":
    main()
