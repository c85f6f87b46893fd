"""The quantization experiment: what each scheme buys in speed and memory, and costs in quality.

Per scheme (`perfkit.optim.quantize.SCHEMES`), all from the same fp32 checkpoint:

- *Speed and memory* are measured in a fresh subprocess (`python -m perfkit.quantization measure
  --scheme X`), because a process's peak RSS only rises: after fp32 and bf16 ran in one process,
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
import copy
import ctypes
import ctypes.util
import gc
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from perfkit import config, workload
from perfkit.config import Config
from perfkit.engine import Engine
from perfkit.hardware import ResourceSampler, native_bf16, pin_threads, resolve_device
from perfkit.measure import Latency, clock_read_cost_s, repeat
from perfkit.models import load_causal_lm
from perfkit.optim import quantize
from perfkit.quality import Reference
from perfkit.report import Check, claim_checks, judge

CORPUS = "data/corpus"
CLAIMS = "data/claims.yaml"


def _target(cfg: Config, device: torch.device) -> quantize.Target:
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
            model = quantize.apply(scheme, model, _target(cfg, device))
        except Exception as exc:  # the scheme cannot run here: reported, not fatal
            return {"status": "skipped", "reason": f"{type(exc).__name__}: {exc}"}
    _release_freed_memory()
    out: dict[str, Any] = {"status": "ok", "load_peak_rss_mb": loading.usage.peak_rss_mb}
    engine = Engine(model, tokenizer, device)
    prompts = workload.summary_prompts(
        tokenizer, cfg.resolve(CORPUS), max(q.batch_sizes), q.prompt_tokens, cfg.workload.passage_words, cfg.workload.seed
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
    from perfkit.processes import die_with_parent

    cmd = [sys.executable, "-m", "perfkit.quantization", "measure", "--scheme", scheme, "--root", str(cfg.root)]
    env = os.environ | {"PERFKIT_ROOT": str(cfg.root), "TOKENIZERS_PARALLELISM": "false"}
    env.pop(tracking.RUN_ID_ENV, None)
    limit = cfg.quantization.scheme_timeout_s
    try:
        done = subprocess.run(
            cmd + (["--smoke"] if cfg.smoke else []), capture_output=True, text=True, timeout=limit, env=env,
            preexec_fn=die_with_parent(os.getpid()),  # no orphan when the stage is killed
        )
    except subprocess.TimeoutExpired:
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perfkit.quantization", description="one scheme's speed and memory")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("measure", help="measure one scheme in this process; prints one JSON line")
    p.add_argument("--scheme", required=True, choices=list(quantize.SCHEMES))
    p.add_argument("--root", type=Path, default=None)
    p.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    cfg = config.load("quantization", smoke=args.smoke, root=args.root)
    print(json.dumps(measure_scheme(cfg, args.scheme)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
