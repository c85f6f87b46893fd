"""The quantization stage's run: every scheme's speed in its own process, quality here, each logged to MLflow."""

from __future__ import annotations

import copy
import gc
import time
from typing import Any

from perfkit import claims, tracking, workload
from perfkit.config import Config
from perfkit.engine import Engine
from perfkit.hardware import pin_threads, resolve_device
from perfkit.models import load_causal_lm
from perfkit.optim import quantize
from perfkit.quality import Reference
from perfkit.stages.quantization import STAGE
from perfkit.stages.quantization.measure import activation_peaks, int8_ideal_saving_pct, spawn_measurement, target
from perfkit.stages.quantization.result import QuantizationResult, SchemeRun


def run(cfg: Config) -> QuantizationResult:
    """Every scheme in `quantization.schemes`: speed in a subprocess each, quality here; each logged to MLflow."""
    checks = claims.checks_for(cfg.claims_path, STAGE.name)  # before minutes of measuring: a bad file fails fast
    pin_threads(cfg.hardware.threads)
    device = resolve_device(cfg.hardware.device)
    ref_model, tokenizer = load_causal_lm(cfg.resolve(cfg.model.path), device)
    ids = workload.heldout_ids(tokenizer, cfg.corpus_dir, cfg.eval.tokens)
    activations = activation_peaks(ref_model, ids[: cfg.eval.window], device)
    reference = Reference.build(Engine(ref_model, tokenizer, device).logits, ids, cfg.eval.window, cfg.eval.stride)
    results: dict[str, dict[str, Any]] = {}
    for scheme in cfg.quantization.schemes:
        started = time.perf_counter()
        r = spawn_measurement(cfg, scheme)
        r["speed_wall_s"] = time.perf_counter() - started
        if r["status"] == "ok":
            started = time.perf_counter()
            candidate = None if scheme == "fp32" else quantize.apply(scheme, copy.deepcopy(ref_model), target(cfg, device))
            logits = None if candidate is None else Engine(candidate, tokenizer, device).logits
            r |= reference.score(logits).as_metrics()
            r["quality_wall_s"] = time.perf_counter() - started
            del candidate, logits
            gc.collect()
        results[scheme] = r
    base = results.get("fp32", {})
    b1 = f"throughput_tok_s_batch{cfg.quantization.batch_sizes[0]}"
    for r in results.values():
        if r["status"] == "ok" and base.get("status") == "ok":
            r["speedup"] = r[b1] / base[b1]
            r["size_saving_pct"] = 100.0 * (1 - r["model_bytes"] / base["model_bytes"])
    for scheme, r in results.items():
        tracking.log_variant(scheme, r, {"quantization.scheme": scheme})
    return QuantizationResult(
        tuple(SchemeRun.from_measurement(k, v, cfg.quantization.batch_sizes) for k, v in results.items()),
        activations,
        cfg.quantization.batch_sizes,
        cfg.quantization.min_top1_agreement,
        cfg.measure.noisy_cv,
        int8_ideal_saving_pct(ref_model),
        cfg.quantization.skip_modules,
        checks,
    )
