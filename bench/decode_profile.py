"""Where one decode step's time goes, per engine, at batch 1 and 8; and the engines timed side by side.

The question before compiling the reference engine: if the matrix products alone take most of a step, compilation
cannot close the gap to llama.cpp without prepacked weights; if dispatch and Python take a large share, a compiled
step can. Engines: `dynamic` (transformers' dynamic KV cache, eager, torch's nn.Linear), `packed` (the same with its
linear weights prepacked for oneDNN and sibling projections fused, `perfkit.prepack`: what the stages run,
`hardware.prepack`), `packed-unfused` (prepacked, each projection its own product), `slots` (perfkit's
slot cache, eager) and `compiled` (the slot cache with the decode step under torch.compile, `--compile` mode). Each width
runs `--steps` decode steps of the engine's own batch (`Engine.new_batch`, the path the servers run) after a prefill
and `--warmup` untimed steps (the compiled engine's one graph is compiled first, by `Engine.warm_compiled`: timed
apart as compile_s).
The plain timings run in `--rounds` rounds, the engines interleaved within each round (machines drift); then each
engine's steps run once under `torch.profiler` (operator self CPU time, grouped). "other ops" is every other
operator's self time (a compiled graph's fused kernels land there); "outside operators" is the wall time no operator
accounts for (Python, the loop, dispatch). The weights' bytes over the step time give the read rate a step achieves,
set beside this machine's read bandwidth measured here (`hardware.memory_read_gb_s`).

    .venv/bin/python bench/decode_profile.py --steps 16 --rounds 3

The compiled engine stacks the linear layers that read one input into one product (inductor's
`cpp.enable_concat_linear`, which `perfkit.slots.compiled_step` turns on: what `packed` does eagerly); `--cpp-wrapper`
turns on another option torch leaves off by default: the graph's kernels called from generated C++ instead of a
Python wrapper (less of the "outside operators" time).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict

import torch
import torch._inductor.config as inductor_config
from torch.profiler import ProfilerActivity, profile

from perfkit import config
from perfkit.engine import Engine
from perfkit.hardware import memory_read_gb_s, pin_threads
from perfkit.models import load_causal_lm
from perfkit.prepack import prepack_linears

GROUPS = {  # operator name -> group; everything else is "other ops"
    "aten::mm": "matrix products",
    "aten::addmm": "matrix products",
    "aten::bmm": "matrix products",
    "aten::linear": "matrix products",
    "aten::matmul": "matrix products",
    "mkl::_mkl_linear": "matrix products",
    "mkldnn::_linear_pointwise": "matrix products",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "attention",
    "aten::scaled_dot_product_attention": "attention",
    "aten::_softmax": "attention",
}


def running(engine: Engine, width: int, prompt: list[int], warmup: int):
    batch = engine.new_batch(width)
    batch.join([(row, prompt, 100_000, False) for row in range(width)])
    for _ in range(warmup):
        batch.step()
    return batch


def step_ms(engine: Engine, width: int, prompt: list[int], steps: int, warmup: int) -> float:
    batch = running(engine, width, prompt, warmup)
    walls = []
    for _ in range(steps):
        started = time.perf_counter()
        batch.step()
        walls.append(time.perf_counter() - started)
    return 1000 * statistics.median(walls)


def profiled(engine: Engine, width: int, prompt: list[int], steps: int, warmup: int) -> dict[str, float]:
    batch = running(engine, width, prompt, warmup)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        started = time.perf_counter()
        for _ in range(steps):
            batch.step()
        wall = time.perf_counter() - started
    groups: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():  # self times: each microsecond counted once, in the operator that spent it
        if not event.key.startswith(("## Call CompiledFxGraph", "Torch-Compiled Region")):  # wrappers around the kernels
            groups[GROUPS.get(event.key, "other ops")] += event.self_cpu_time_total / 1e6
    ms = {f"{name} (ms/step)": 1000 * seconds / steps for name, seconds in groups.items()}
    ms["outside operators (ms/step)"] = 1000 * max(0.0, wall - sum(groups.values())) / steps
    return {"profiled_step_ms": 1000 * wall / steps} | ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[1, 8])
    names = ["dynamic", "packed", "packed-unfused", "slots", "compiled"]
    parser.add_argument("--engines", nargs="+", default=names, choices=names)
    parser.add_argument("--compile", default="default", choices=["default", "max-autotune-no-cudagraphs"])
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument(
        "--cpp-wrapper",
        action="store_true",
        help="inductor's cpp_wrapper: the compiled step's kernels called from generated C++ rather than Python",
    )
    args = parser.parse_args()
    inductor_config.cpp_wrapper = args.cpp_wrapper
    cfg = config.load("quantization")
    threads = pin_threads(cfg.hardware.threads)
    bandwidth = memory_read_gb_s()
    model, tokenizer = load_causal_lm(cfg.resolve(cfg.model.path), "cpu", args.dtype)
    options = {
        "dynamic": {},
        "packed": {"prepack": True},
        "slots": {"kv_cache": "slots"},
        "compiled": {"kv_cache": "slots", "compile": args.compile},
    }

    def own_copy(name: str) -> torch.nn.Module:  # packing works in place
        copy = load_causal_lm(cfg.resolve(cfg.model.path), "cpu", args.dtype)[0]
        if name == "packed-unfused":  # packed here, not by the engine, which fuses
            prepack_linears(copy, fuse=False)
        return copy

    models = {name: own_copy(name) if name.startswith("packed") else model for name in args.engines}
    engines = {name: Engine(models[name], tokenizer, "cpu", **options.get(name, {})) for name in args.engines}
    prompt = next(iter(engines.values())).encode("Summarize: " + "the quick brown fox jumps over the lazy dog " * 40)
    prompt = prompt[: args.prompt_tokens]
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())  # as loaded: the output layer tied
    compile_s = None
    with torch.inference_mode():
        if "compiled" in engines:
            started = time.perf_counter()
            engines["compiled"].warm_compiled(prompt)
            compile_s = time.perf_counter() - started
        times: dict[tuple[str, int], list[float]] = defaultdict(list)
        for _ in range(args.rounds):
            for width in args.widths:
                for name, engine in engines.items():
                    times[name, width].append(step_ms(engine, width, prompt, args.steps, args.warmup))
        rows = []
        for width in args.widths:
            for name, engine in engines.items():
                ms = statistics.median(times[name, width])
                row = {"engine": name, "width": width, "step_ms_median": ms, "step_ms_rounds": times[name, width]}
                row |= {
                    "weights_gb_per_s": weight_bytes / 1e9 / (ms / 1000),
                    "share_of_bandwidth": weight_bytes / 1e9 / (ms / 1000) / bandwidth,
                }
                rows.append(row | profiled(engine, width, prompt, args.steps, args.warmup))
    concat = inductor_config.cpp.enable_concat_linear  # as the compiled step set it
    report = {"threads": threads, "dtype": args.dtype, "compile": args.compile, "concat_linear": concat}
    report |= {"cpp_wrapper": args.cpp_wrapper}
    report |= {"compile_s": compile_s, "weight_mb": weight_bytes / 2**20}
    print(json.dumps(report | {"memory_read_gb_s": bandwidth, "rows": rows}))


if __name__ == "__main__":
    main()
