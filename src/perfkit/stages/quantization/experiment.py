"""The quantization stage's run: every scheme's speed in its own process per round (schemes interleaved), quality here once."""

from __future__ import annotations

import copy
import gc
import time
from dataclasses import fields, replace
from typing import Any

from perfkit import tracking, workload
from perfkit.config import Config
from perfkit.engine import Engine
from perfkit.hardware import pin_threads, resolve_device
from perfkit.models import load_causal_lm
from perfkit.optim import quantize
from perfkit.quality import Reference
from perfkit.stages.quantization.measure import activation_peaks, int8_ideal_saving_pct, spawn_measurement, target
from perfkit.stages.quantization.result import QuantizationResult, SchemeRun
from perfkit.stats import bootstrap_paired


def run(cfg: Config) -> QuantizationResult:
    """Every scheme in `quantization.schemes`: speed in a subprocess each, quality here; each logged to MLflow."""
    pin_threads(cfg.hardware.threads)
    device = resolve_device(cfg.hardware.device)
    ref_model, tokenizer = load_causal_lm(cfg.resolve(cfg.model.path), device)
    ids = workload.heldout_ids(tokenizer, cfg.corpus_dir, cfg.eval.tokens)
    activations = activation_peaks(ref_model, ids[: cfg.eval.window], device)
    reference = Reference.build(Engine(ref_model, tokenizer, device).logits, ids, cfg.eval.window, cfg.eval.stride)
    # Speed: every scheme's child once per round, schemes interleaved (drift hits all alike), each with its own
    # warm-up; a scheme that fails or is skipped once is not retried.
    rounds: dict[str, list[dict[str, Any]]] = {scheme: [] for scheme in cfg.quantization.schemes}
    for _ in range(cfg.measure.rounds):
        for scheme, done in rounds.items():
            if done and done[-1]["status"] != "ok":
                continue
            started = time.perf_counter()
            r = spawn_measurement(cfg, scheme)
            done.append(r | {"speed_wall_s": time.perf_counter() - started})
    # Quality: deterministic, once per scheme. Accuracy kept: next-token accuracy on held-out text over fp32's, with a
    # bootstrap interval over the same tokens (the ratio the distillation stage reports for its students).
    quality: dict[str, dict[str, Any]] = {}
    fp32_correct = reference.tokens().correct
    for scheme, done in rounds.items():
        if all(r["status"] == "ok" for r in done):
            started = time.perf_counter()
            candidate = None if scheme == "fp32" else quantize.apply(scheme, copy.deepcopy(ref_model), target(cfg, device))
            logits = None if candidate is None else Engine(candidate, tokenizer, device).logits
            scores = reference.tokens(logits)
            kept = bootstrap_paired([scores.correct, fp32_correct], lambda s, t: 100 * s.mean(1) / t.mean(1))
            quality[scheme] = scores.summary().as_metrics() | {"accuracy_kept_pct": kept, "quality_wall_s": time.perf_counter() - started}
            del candidate, logits
            gc.collect()
    sizes = cfg.quantization.batch_sizes
    runs = {k: SchemeRun.from_rounds(k, [r | quality.get(k, {}) for r in done], sizes) for k, done in rounds.items()}
    base = runs.get("fp32")
    if base is not None and base.ok:
        runs = {
            k: replace(v.with_reference(base, sizes[0]), size_saving_pct=100.0 * (1 - (v.model_bytes or 0) / (base.model_bytes or 1)))
            if v.ok
            else v
            for k, v in runs.items()
        }
    for scheme, run in runs.items():
        metrics = {f.name: v for f in fields(run) if isinstance(v := getattr(run, f.name), int | float | str)}
        for name, sp in run.figures().items():  # "tok/s batch 1" -> tok_per_s_batch_1 (MLflow's allowed characters)
            metrics |= sp.summary(name.replace("/", "_per_").replace(" ", "_"))
        tracking.log_variant(scheme, metrics | {"rounds": run.rounds}, {"quantization.scheme": scheme})
    return QuantizationResult(
        tuple(runs.values()),
        activations,
        sizes,
        cfg.quantization.min_top1_agreement,
        cfg.measure.noisy_cv,
        int8_ideal_saving_pct(ref_model),
        cfg.quantization.skip_modules,
        cfg.measure.min_repeats,
    )
