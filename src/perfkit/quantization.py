"""The quantization experiment: what each scheme buys in speed and memory, and costs in quality.

Per scheme (`perfkit.optim.quantize.SCHEMES`), all from the same fp32 checkpoint:

- *Speed and memory* are measured in a fresh subprocess per scheme by `perfkit.speed` (the one
  timing path every stage shares): TTFT and TPOT at batch 1, tokens/s at every batch size, peak
  RSS while serving, model bytes (each storage once: INT8 on `lm_head` unties it from the tied
  embedding, so the embedding stays fp32 *and* an int8 head is added), and the harness's own
  cost. bf16 on a CPU without native bf16 is the case a fresh process per scheme exists for.
- *Quality* is measured here, against fp32 reference log-probabilities on held-out Persuasion
  (`perfkit.quality`): perplexity, top-1 agreement, mean KL.
- An *activation probe* (forward hooks on every Linear's input, fp32, one held-out window) records
  each layer's largest input magnitude: dynamic INT8 quantizes activations with one scale per
  tensor, so a layer fed outliers of thousands loses its small values; that is what
  `quantization.skip_modules` keeps in fp32.
"""

from __future__ import annotations

import copy
import gc
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from torch import nn

from perfkit import speed, workload
from perfkit.config import Config
from perfkit.engine import Engine
from perfkit.hardware import native_bf16, pin_threads, resolve_device
from perfkit.models import load_causal_lm
from perfkit.optim import quantize
from perfkit.quality import Reference
from perfkit.report import Check, claim_checks, judge

CORPUS = "data/corpus"
CLAIMS = "data/claims.yaml"


def _target(cfg: Config, device: torch.device) -> quantize.Target:
    return quantize.Target(device, cfg.quantization.skip_modules)


def speed_plan(cfg: Config) -> speed.Plan:
    q = cfg.quantization
    return speed.Plan(q.prompt_tokens, q.new_tokens, q.batch_sizes, q.scheme_timeout_s, "quantization.scheme_timeout_s", q.skip_modules)


def measure_scheme(cfg: Config, scheme: str) -> dict[str, Any]:
    """Speed, memory and size of one scheme in this process (`perfkit.speed.measure`)."""
    return speed.measure(cfg, cfg.resolve(cfg.model.path), scheme, speed_plan(cfg))


def spawn_measurement(cfg: Config, scheme: str) -> dict[str, Any]:
    """One scheme's speed in a fresh interpreter, killed after `quantization.scheme_timeout_s`."""
    return speed.spawn(cfg, cfg.resolve(cfg.model.path), scheme, speed_plan(cfg))


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


@dataclass
class QuantizationResult:
    schemes: dict[str, dict[str, Any]]
    activations: pd.DataFrame
    batch_sizes: tuple[int, ...]
    min_agreement: float
    noisy_cv: float
    ideal_int8_saving_pct: float
    c4_checks: dict[str, Check]  # FP32 -> INT8 dynamic on every nn.Linear, from data/claims.yaml, by metric
    skip_modules: tuple[str, ...] = field(default=())

    def ok(self) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in self.schemes.items() if v.get("status") == "ok"}

    def table(self) -> pd.DataFrame:
        cols = [
            "status", "model_bytes", "size_saving_pct", "peak_rss_mb", "load_peak_rss_mb", "ttft_ms_p50", "tpot_ms_p50", "tpot_cv",
            *[f"throughput_tok_s_batch{b}" for b in self.batch_sizes], "speedup", "repeats_batch1",
            "perplexity", "top1_agreement", "kl_mean", "harness_overhead_pct", "speed_wall_s", "quality_wall_s", "reason",
        ]  # fmt: skip
        rows = [{"scheme": name, **{c: v.get(c) for c in cols}} for name, v in self.schemes.items()]
        return pd.DataFrame(rows)

    def _summary(self) -> dict[str, Any]:
        ok, b1 = self.ok(), f"throughput_tok_s_batch{self.batch_sizes[0]}"
        fit = {k: v for k, v in ok.items() if v.get("top1_agreement", 0) >= self.min_agreement}
        best = max(fit, key=lambda k: fit[k][b1]) if fit else "fp32"
        s: dict[str, Any] = {
            "best_scheme": best,
            "speedup": ok.get(best, {}).get("speedup"),
            "size_saving_pct": ok.get(best, {}).get("size_saving_pct"),
            "min_top1_agreement": self.min_agreement,
            "noisy_schemes": ", ".join(k for k, v in ok.items() if any(v.get(f"noisy_batch{b}") for b in self.batch_sizes)),
            "capped_schemes": ", ".join(k for k, v in ok.items() if any(v.get(f"capped_batch{b}") for b in self.batch_sizes)),
            "skipped_schemes": ", ".join(k for k, v in self.schemes.items() if v.get("status") != "ok"),
            "harness_overhead_pct_max": max((v["harness_overhead_pct"] for v in ok.values()), default=None),
            "int8_ideal_size_saving_pct": self.ideal_int8_saving_pct,
        }
        naive = ok.get("int8-dynamic")
        if naive is not None:
            s |= {
                "int8_dynamic_speedup": naive.get("speedup"),
                "int8_dynamic_size_saving_pct": naive.get("size_saving_pct"),
                "int8_dynamic_top1_agreement_pct": 100.0 * naive["top1_agreement"] if "top1_agreement" in naive else None,
            }
        s["verdict"] = self._verdict(s)
        return {k: v for k, v in s.items() if v is not None}

    def _claim(self, key: str) -> Check:
        return self.c4_checks[f"summary.{key}"]

    def _verdict(self, s: Mapping[str, Any]) -> str:
        if "int8_dynamic_speedup" not in s:
            return "C4 not measurable here: int8-dynamic did not run"
        holds = {
            "speed-up": judge(self._claim("int8_dynamic_speedup"), s["int8_dynamic_speedup"]),
            "size saving": judge(self._claim("int8_dynamic_size_saving_pct"), s["int8_dynamic_size_saving_pct"]),
            "agreement": judge(
                self._claim("int8_dynamic_top1_agreement_pct"), s.get("int8_dynamic_top1_agreement_pct", 0.0)
            ),
        }
        failed = [k for k, v in holds.items() if not v]
        return "C4 holds" if not failed else f"C4 does not hold ({', '.join(failed)})"

    def metrics(self) -> dict[str, Any]:
        """`{scheme: {metric: value}, "summary": {...}}` for metrics.json."""
        return {**self.schemes, "summary": self._summary()}

    def conclusion(self) -> str:
        s, ok = self._summary(), self.ok()
        peaks = self.activations.groupby("module")["max_abs_input"].max().sort_values(ascending=False)
        top = self.activations.loc[self.activations["max_abs_input"].idxmax()]
        lines = [
            f"Largest activation into any Linear: {top.max_abs_input:,.0f} into `{top.module}` of layer {top.layer} "
            f"(next module type: `{peaks.index[1]}` at {peaks.iloc[1]:,.0f}); `int8-dynamic-skip-outliers` keeps "
            f"{', '.join(self.skip_modules) or 'nothing'} in fp32."
        ]
        if "int8_dynamic_speedup" in s:
            naive, ref = ok["int8-dynamic"], ok["fp32"]
            speedup = self._claim("int8_dynamic_speedup").claimed
            saving = self._claim("int8_dynamic_size_saving_pct").claimed
            agreement = self._claim("int8_dynamic_top1_agreement_pct").claimed
            rss_change = 100 * (naive["peak_rss_mb"] / ref["peak_rss_mb"] - 1)
            lines.append(
                f"C4, FP32 -> INT8 dynamic on every Linear: claimed {speedup:g}x speed, measured "
                f"{s['int8_dynamic_speedup']:.2f}x (batch {self.batch_sizes[0]}); claimed -{saving:.0f}% memory, "
                f"measured {-s['int8_dynamic_size_saving_pct']:+.1f}% model bytes and {rss_change:+.1f}% peak RSS "
                f"({ref['peak_rss_mb']:,.0f} -> {naive['peak_rss_mb']:,.0f} MB, interpreter and libraries included); "
                f"claimed {agreement:.0f}% accuracy kept, measured {s['int8_dynamic_top1_agreement_pct']:.1f}% "
                f"top-1 agreement (perplexity {ref['perplexity']:.2f} -> {naive['perplexity']:.2f}). Verdict: {s['verdict']}."
            )
            ideal = self.ideal_int8_saving_pct
            reach = "cannot" if ideal < saving else "can"
            lines.append(
                f"By arithmetic, INT8 on every Linear saves at most {ideal:.0f}% of this model's fp32 bytes: the "
                f"embedding stays fp32 (and INT8 on a tied `lm_head` unties it, adding an int8 copy beside it), so the "
                f"claimed -{saving:.0f}% {reach} hold from fp32 here; more needs the embedding quantized "
                f"too (all-INT8 from fp32 is -75%), and from an fp16 start INT8 saves at most 50%."
            )
        if "bf16" in ok and "fp32" in ok:
            largest = f"throughput_tok_s_batch{self.batch_sizes[-1]}"
            ratio = ok["bf16"][largest] / ok["fp32"][largest]
            why = (
                "has native bf16 instructions (AVX512-BF16/AMX), so halving the bytes read also speeds the matmuls"
                if native_bf16()
                else "has no native bf16 instructions, so bf16 matmuls are emulated and large ones run slower than fp32"
            )
            lines.append(f"bf16 runs at {ratio:.2f}x fp32's tokens/s at batch {self.batch_sizes[-1]}: this CPU {why}.")
        if s["best_scheme"] == "fp32" and "fp32" in ok:
            lines.append(
                f"Best trade: stay in fp32. No scheme with top-1 agreement >= {self.min_agreement:.0%} beat fp32's "
                f"tokens/s at batch {self.batch_sizes[0]} on this machine."
            )
        elif s["best_scheme"] in ok:
            best = ok[s["best_scheme"]]
            lines.append(
                f"Best trade (fastest with top-1 agreement >= {self.min_agreement:.0%}): `{s['best_scheme']}`, "
                f"{best['speedup']:.2f}x fp32's tokens/s at batch {self.batch_sizes[0]}, {-best['size_saving_pct']:+.1f}% "
                f"model bytes, {best['top1_agreement']:.1%} agreement, perplexity {best['perplexity']:.2f}."
            )
        if s.get("noisy_schemes"):
            lines.append(f"Noisy (CV > {self.noisy_cv:.0%}, shared machine): {s['noisy_schemes']}.")
        if s.get("capped_schemes"):
            lines.append(f"Capped by measure.max_duration_s (fewer repeats, see the table): {s['capped_schemes']}.")
        if s.get("skipped_schemes"):
            reasons = "; ".join(f"`{k}`: {v.get('reason')}" for k, v in self.schemes.items() if v.get("status") != "ok")
            lines.append(f"Not run here: {reasons}.")
        return "\n\n".join(lines)


def run(cfg: Config) -> QuantizationResult:
    """Every scheme in `quantization.schemes`: speed in a subprocess each, quality here; each logged to MLflow."""
    from perfkit import tracking

    c4_checks = claim_checks(cfg.resolve(CLAIMS), "C4")  # before minutes of measuring: a missing file fails fast
    pin_threads(cfg.hardware.threads)
    device = resolve_device(cfg.hardware.device)
    ref_model, tokenizer = load_causal_lm(cfg.resolve(cfg.model.path), device)
    ids = workload.heldout_ids(tokenizer, cfg.resolve(CORPUS), cfg.eval.tokens)
    activations = activation_peaks(ref_model, ids[: cfg.eval.window], device)
    reference = Reference.build(Engine(ref_model, tokenizer, device).logits, ids, cfg.eval.window, cfg.eval.stride)
    results: dict[str, dict[str, Any]] = {}
    for scheme in cfg.quantization.schemes:
        started = time.perf_counter()
        r = spawn_measurement(cfg, scheme)
        r["speed_wall_s"] = time.perf_counter() - started
        if r["status"] == "ok":
            started = time.perf_counter()
            candidate = None if scheme == "fp32" else quantize.apply(scheme, copy.deepcopy(ref_model), _target(cfg, device))
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
        tracking.log_variant(scheme, r, {"scheme": scheme})
    return QuantizationResult(
        results,
        activations,
        cfg.quantization.batch_sizes,
        cfg.quantization.min_top1_agreement,
        cfg.measure.noisy_cv,
        int8_ideal_saving_pct(ref_model),
        c4_checks,
        cfg.quantization.skip_modules,
    )
