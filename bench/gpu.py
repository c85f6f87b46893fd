"""perfkit's GPU paths on a CUDA machine: every scheme's speed, and the baseline against the optimized stack under load.

The stages pick CUDA when one is visible (`hardware.device: auto`); this script runs their timing paths
there, interleaved, in one sitting, and writes one JSON object:

1. *speed*: each scheme in a fresh process per round (`spawn_measurement`, the quantization stage's path:
   `torch.cuda.synchronize()` before every clock read), schemes interleaved over `--rounds`: tokens/s at
   every batch size, TTFT/TPOT at the first, and each scheme's paired per-round ratio to fp32 with its
   95% interval;
2. *served*: the baseline (sequential, fp32) against the optimized stack (dynamic batching, bf16) under
   the same closed-loop Locust load, a fresh server per run (`serve_under_load`), rounds interleaved:
   requests/s, tokens/s, TTFT/TPOT/E2E, cold start, the server's peak GPU memory (NVML);
3. *gauges*: the accelerator-memory series the server exports on /metrics, which the
   `PerfkitAcceleratorMemoryHigh` alert reads.

`--random-weights FOLDER` is for a GPU machine the checkpoint cannot reach (the device tool here carries
64 MiB; the fp32 default is 540 MB): FOLDER holds `lm/` and `embedding/` with only config.json and the
tokenizer files; the script writes seeded random weights of exactly that architecture with
`save_pretrained` (safetensors) and every process loads them through the usual `from_pretrained(local_dir)`.
Every request decodes a fixed number of tokens (`min_tokens` = `max_tokens`, `ignore_eos`), so speed,
batching and memory are those of the real shape; quality would be meaningless and none is measured.

    python bench/gpu.py [--random-weights FOLDER] [--rounds 2] [--out gpu.json]

`--device cpu` runs the same steps on the CPU, small: a check that the script works before GPU time is spent.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import torch

from perfkit import config, provenance
from perfkit.config import Config
from perfkit.hardware import environment
from perfkit.load.runner import served_prompts
from perfkit.load.served import BASELINE, serve_under_load
from perfkit.measure import Spread, ratio
from perfkit.serving.launch import QUEUE_ALL, launch
from perfkit.stages.quantization.measure import spawn_measurement

SCHEMES = ("fp32", "bf16", "fp16", "int8-weight-only-torchao", "int4-weight-only-torchao")
GPU_GAUGES = ("perfkit_gpu_memory_bytes", "perfkit_gpu_memory_used_bytes", "perfkit_gpu_memory_total_bytes")


def random_checkpoints(folder: Path, out: Path, seed: int = 0) -> tuple[Path, Path]:
    """`folder/{lm,embedding}` (config + tokenizer) -> the same folders under `out` with seeded random weights."""
    import shutil

    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    made = []
    for name, auto in (("lm", AutoModelForCausalLM), ("embedding", AutoModel)):
        src, dst = folder / name, out / name
        shutil.copytree(src, dst, dirs_exist_ok=True)
        torch.manual_seed(seed)
        auto.from_config(AutoConfig.from_pretrained(src, local_files_only=True)).save_pretrained(dst, safe_serialization=True)
        made.append(dst)
    return made[0], made[1]


def speed_rounds(cfg: Config, schemes: tuple[str, ...], rounds: int) -> dict[str, Any]:
    """Every scheme once per round, interleaved; per scheme and batch size the mean tokens/s and the ratio to fp32."""
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in schemes}
    for r in range(rounds):
        for scheme in schemes:
            runs[scheme].append(spawn_measurement(cfg, scheme))
            print(f"round {r} {scheme}: {json.dumps(runs[scheme][-1])[:300]}", flush=True)
    out: dict[str, Any] = {}
    for scheme, results in runs.items():
        ok = [x for x in results if x.get("status") == "ok"]
        row: dict[str, Any] = {"status": "ok" if len(ok) == rounds else results[-1].get("status"),
                               "reason": next((x["reason"] for x in results if "reason" in x), None)}
        if len(ok) == rounds:
            row |= {"model_bytes": ok[0]["model_bytes"], "ttft_ms_p50": statistics.fmean(x["ttft_ms_p50"] for x in ok),
                    "tpot_ms_p50": statistics.fmean(x["tpot_ms_p50"] for x in ok)}
            for b in cfg.quantization.batch_sizes:
                key = f"throughput_tok_s_batch{b}"
                if all(key in x for x in ok):
                    tok_s = Spread(tuple(x[key] for x in ok))
                    row |= tok_s.summary(key)
                    base = [x for x in runs["fp32"] if x.get("status") == "ok" and key in x]
                    if scheme != "fp32" and len(base) == rounds:
                        row |= ratio(tok_s, Spread(tuple(x[key] for x in base))).summary(f"speedup_vs_fp32_batch{b}")
        out[scheme] = row
    return out


def served_rounds(cfg: Config, optimized: dict[str, Any], rounds: int, requests: int) -> dict[str, Any]:
    """Baseline and optimized servers under the same load, a fresh server per run, rounds interleaved."""
    prompts = served_prompts(cfg)
    stacks = {"baseline": BASELINE, "optimized": optimized}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in stacks}
    for r in range(rounds):
        for name, overrides in stacks.items():
            run = serve_under_load(cfg, name, overrides, prompts, round_index=r, requests=requests)
            runs[name].append(run.metrics())
            print(f"round {r} {name}: {json.dumps(runs[name][-1])[:400]}", flush=True)
    keys = ("throughput_rps", "throughput_tok_s", "latency_ms_p50", "latency_ms_p99", "ttft_ms_p50", "ttft_ms_p99",
            "tpot_ms_p50", "cold_start_s", "peak_gpu_mem_mb", "peak_rss_mb", "gpu_util_pct", "error_rate")
    out: dict[str, Any] = {"stacks": stacks, "runs": runs}
    for name, metrics in runs.items():
        for key in keys:
            if all(key in m for m in metrics):
                out |= Spread(tuple(float(m[key]) for m in metrics)).summary(f"{name}.{key}")
    for key in ("throughput_tok_s", "throughput_rps"):
        num, den = (Spread(tuple(float(m[key]) for m in runs[n])) for n in ("optimized", "baseline"))
        out |= ratio(num, den).summary(f"optimized_vs_baseline.{key}")
    return out


def gpu_gauges(cfg: Config, overrides: dict[str, Any]) -> dict[str, float]:
    """The server's accelerator-memory samples from /metrics after one answered request."""
    with launch(cfg, overrides=overrides, probe_cold_start=True) as handle:
        text = httpx.get(f"{handle.base_url}/metrics", timeout=30).text
    return {line.split(" ")[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith(GPU_GAUGES)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--random-weights", type=Path, help="folder with lm/ and embedding/ configs + tokenizers")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--schemes", nargs="+", default=list(SCHEMES))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--users", type=int, default=32, help="closed-loop users of the served comparison")
    parser.add_argument("--requests", type=int, default=96, help="measured requests per served run")
    parser.add_argument("--max-batch", type=int, default=32, help="the optimized stack's dynamic max_batch_size")
    parser.add_argument("--out", type=Path, default=Path("gpu.json"))
    parser.add_argument("--parts", nargs="+", choices=("gauges", "speed", "served"), default=["gauges", "speed", "served"])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: a dry run of the script")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench/gpu.py: no CUDA GPU is visible (--device cpu runs a dry run)", file=sys.stderr)
        return 2
    started = time.time()
    sets: dict[str, Any] = {"hardware.device": args.device, "hardware.threads": min(8, os.cpu_count() or 1),
                            "quantization.batch_sizes": args.batch_sizes, "load.users": args.users,
                            "load.spawn_rate": args.users, "load.warmup_requests": args.users}
    if args.random_weights:
        lm, embedding = random_checkpoints(args.random_weights, Path(os.environ.get("TMPDIR", "/tmp")) / "perfkit-gpu")
        sets |= {"model.path": str(lm), "model.embedding_path": str(embedding)}
    cfg = config.override(config.load("optimized"), sets)
    optimized = {"serving.scheduler": "dynamic", "serving.max_batch_size": args.max_batch, "serving.dtype": "bfloat16"} | QUEUE_ALL
    result: dict[str, Any] = {
        "environment": environment(cfg.root), "packages": provenance.package_versions(), "load_average": provenance.load_average(),
        "random_weights": bool(args.random_weights), "settings": sets, "rounds": args.rounds,
    }
    parts = {"gauges": lambda: gpu_gauges(cfg, optimized),
             "speed": lambda: speed_rounds(cfg, tuple(args.schemes), args.rounds),
             "served": lambda: served_rounds(cfg, optimized, args.rounds, args.requests)}
    for part in args.parts:
        result[part] = parts[part]()
        result["wall_s"] = time.time() - started
        args.out.write_text(json.dumps(result, indent=1, default=str))  # what finished survives a later part's failure
    print(json.dumps(result | ({"served": {k: v for k, v in result["served"].items() if k != "runs"}}
                               if "served" in result else {}), default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
