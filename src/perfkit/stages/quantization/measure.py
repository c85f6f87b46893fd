"""Quantization measurements: one scheme's speed and memory in a fresh process, and the probes.

Per scheme (`perfkit.optim.quantize.SCHEMES`), all from the same fp32 checkpoint:

- *Speed and memory* are measured in a fresh subprocess (`python -m perfkit.stages.quantization.measure
  --scheme X --config FILE`, the resolved config handed over, never re-read from params.yaml), because a process's peak RSS only rises: after fp32 and bf16 ran in one process,
  an int8 model would inherit their peak. The child pins threads, loads, quantizes, then generates
  a fixed number of tokens from the same "summarize" prompts at each batch size, after short
  warm-up generations, with at least `measure.min_repeats` timed repeats within the scheme's
  `measure.max_duration_s`, shared by the batch sizes (a capped scheme says how many repeats it
  did; a batch size the cap leaves no time for reports 0 repeats). bf16 on a CPU without native
  bf16 is the case this exists for. Peak RSS is sampled while serving, after the freed fp32 copy
  went back to the OS; `load_peak_rss_mb` is the process's peak including loading and quantizing. It reports TTFT and TPOT (with its CV) at batch 1, tokens/s at every batch
  size, peak RSS while serving, model bytes (each storage once: INT8 on `lm_head` unties it from
  the tied embedding, so the embedding stays fp32 *and* an int8 head is added), and the harness's
  own cost: clock reads x the cost of one read, over the end-to-end time. It prints one JSON line
  and is killed after `quantization.scheme_timeout_s`.
- *Quality* is measured here, against fp32 reference log-probabilities on held-out Persuasion
  (`perfkit.quality`): perplexity, top-1 agreement, mean KL.
- An *activation probe* (forward hooks on every Linear's input, fp32, one held-out window) records
  each layer's largest input magnitude: dynamic INT8 quantizes activations with one scale per
  tensor, so a layer fed outliers of thousands loses its small values; that is what
  `quantization.skip_modules` keeps in fp32.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import json
import os
import subprocess
import sys
import time
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from perfkit import config, workload
from perfkit.config import Config
from perfkit.engine import Engine
from perfkit.hardware import ResourceSampler, pin_threads, resolve_device
from perfkit.measure import Latency, clock_read_cost_s, repeat
from perfkit.models import load_causal_lm
from perfkit.optim import quantize


def target(cfg: Config, device: torch.device) -> quantize.Target:
    return quantize.Target(device, cfg.quantization.skip_modules)


def measure_scheme(cfg: Config, scheme: str) -> dict[str, Any]:
    """Speed, memory and size of one scheme in this process (meant to be a fresh one)."""
    q, m = cfg.quantization, cfg.measure
    threads = pin_threads(cfg.hardware.threads)
    device = resolve_device(cfg.hardware.device)
    # Sampled, not getrusage's ru_maxrss: a forked child inherits its parent's high-water mark.
    with ResourceSampler(interval_s=cfg.hardware.sample_interval_s, children=False) as loading:
        model, tokenizer = load_causal_lm(cfg.resolve(cfg.model.path), device)
        try:
            model = quantize.apply(scheme, model, target(cfg, device))
        except Exception as exc:  # the scheme cannot run here: reported, not fatal
            return {"status": "skipped", "reason": f"{type(exc).__name__}: {exc}"}
    _release_freed_memory()
    out: dict[str, Any] = {"status": "ok", "load_peak_rss_mb": loading.usage.peak_rss_mb}
    engine = Engine(model, tokenizer, device)
    prompts = workload.summary_prompts(
        tokenizer, cfg.corpus_dir, max(q.batch_sizes), q.prompt_tokens, cfg.workload.passage_words, cfg.workload.seed
    )
    out |= {"model_bytes": quantize.model_bytes(model), "threads": threads}
    timed_calls, e2e_total, slowest_call_s = 0, 0.0, 0.0
    deadline = time.perf_counter() + m.max_duration_s
    with ResourceSampler(interval_s=cfg.hardware.sample_interval_s, children=False) as sampler:
        for i, b in enumerate(q.batch_sizes):
            remaining = deadline - time.perf_counter()
            if remaining < slowest_call_s:  # a larger batch takes at least as long as a smaller one did
                out |= {f"repeats_batch{b}": 0, f"capped_batch{b}": True}
                continue
            batch = [p.input_ids for p in prompts[:b]]
            for _ in range(m.warmup):  # prefill + one decode step warm every kernel; the cap is kept for timing
                engine.generate_batch(batch, 2, stop_at_eos=False)
            runs: list[list] = []
            reps = repeat(
                lambda: runs.append(engine.generate_batch(batch, q.new_tokens, stop_at_eos=False)),
                warmup=0,
                min_repeats=m.min_repeats,
                min_duration_s=m.min_duration_s,
                max_duration_s=(deadline - time.perf_counter()) / (len(q.batch_sizes) - i),
                device=device,
            )
            lat = reps.latency
            timed_calls += len(runs)
            e2e_total += sum(reps.seconds)
            slowest_call_s = max(reps.seconds)
            out |= {
                f"throughput_tok_s_batch{b}": b * q.new_tokens / (lat.p50 / 1000.0),
                f"latency_ms_p50_batch{b}": lat.p50,
                f"cv_batch{b}": lat.cv,
                f"repeats_batch{b}": len(reps.seconds),
                f"capped_batch{b}": reps.capped,
                f"noisy_batch{b}": lat.cv > m.noisy_cv,
            }
            if i == 0:
                out |= Latency.from_samples([g[0].timing.ttft_s for g in runs]).as_metrics("ttft")
                out |= Latency.from_samples([g[0].timing.tpot_s for g in runs]).as_metrics("tpot")
    # Per timed call: the engine reads the clock once at start and once per token, `repeat` twice.
    reads = timed_calls * (q.new_tokens + 3)
    out["harness_overhead_pct"] = 100.0 * reads * clock_read_cost_s(device=device) / e2e_total
    out["peak_rss_mb"] = sampler.usage.peak_rss_mb
    out["cpu_util_pct"] = sampler.usage.cpu_util_pct
    return out


def _release_freed_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc keeps them otherwise).

    A scheme replaces the loaded fp32 weights; without this, RSS while serving would still count
    the freed fp32 copy and an int8 model would look as big as the fp32 one.
    """
    gc.collect()
    libc = ctypes.util.find_library("c")
    trim = getattr(ctypes.CDLL(libc), "malloc_trim", None) if libc else None
    if trim is not None:
        trim(0)


def spawn_measurement(cfg: Config, scheme: str) -> dict[str, Any]:
    """`measure_scheme` in a fresh interpreter, killed after `quantization.scheme_timeout_s`."""
    from perfkit import tracking  # imported here, not at the top: the child process needs no MLflow

    env = os.environ | {"PERFKIT_ROOT": str(cfg.root), "TOKENIZERS_PARALLELISM": "false"}
    env.pop(tracking.RUN_ID_ENV, None)
    limit = cfg.quantization.scheme_timeout_s
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="perfkit-config-") as spec:
        spec.write(config.to_json(cfg))
        spec.flush()
        cmd = [sys.executable, "-m", __name__, "measure", "--scheme", scheme, "--config", spec.name]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=limit, env=env)
        except subprocess.TimeoutExpired:
            done = None
    if done is None:
        return {"status": "failed", "reason": f"exceeded quantization.scheme_timeout_s = {limit:g} s"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {"status": "failed", "reason": f"exit {done.returncode}: {' | '.join(tail)}"}
    return json.loads(lines[-1])


def activation_peaks(model: nn.Module, ids: list[int], device: torch.device) -> pd.DataFrame:
    """Largest |input| into every nn.Linear over one forward pass of `ids`, by layer and module."""
    peaks: dict[str, float] = {}
    hooks = [
        mod.register_forward_hook(lambda _m, args, _o, name=name: peaks.__setitem__(name, float(args[0].abs().max())))
        for name, mod in model.named_modules()
        if isinstance(mod, nn.Linear)
    ]
    try:
        with torch.inference_mode():
            model(input_ids=torch.tensor([ids], device=device), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    rows = []
    for name, peak in peaks.items():
        parts = name.split(".")
        layer = int(parts[parts.index("layers") + 1]) if "layers" in parts else -1
        module = ".".join(parts[parts.index("layers") + 2 :]) if "layers" in parts else name
        rows.append({"layer": layer, "module": module, "max_abs_input": peak})
    return pd.DataFrame(rows)


def int8_ideal_saving_pct(model: nn.Module) -> float:
    """By arithmetic: the % of fp32 bytes that INT8 on every Linear saves (embedding fp32, a tied head untied)."""
    embed = model.get_input_embeddings().weight
    linear = sum(mod.weight.numel() for mod in model.modules() if isinstance(mod, nn.Linear))
    total = sum(p.numel() for p in model.parameters())
    fp32_bytes = 4 * total
    tied = any(mod.weight is embed for mod in model.modules() if isinstance(mod, nn.Linear))
    int8_bytes = 4 * (total - linear + (embed.numel() if tied else 0)) + linear
    return 100.0 * (1 - int8_bytes / fp32_bytes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {__name__}", description="one scheme's speed and memory")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("measure", help="measure one scheme in this process; prints one JSON line")
    p.add_argument("--scheme", required=True, choices=list(quantize.SCHEMES))
    p.add_argument("--config", type=Path, required=True, help="the resolved config (JSON) the stage runs with")
    args = parser.parse_args(argv)
    cfg = config.from_json(args.config.read_text())
    print(json.dumps(measure_scheme(cfg, args.scheme)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
