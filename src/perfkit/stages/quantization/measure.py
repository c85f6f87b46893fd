"""Quantization measurements: one scheme's speed and memory in a fresh process, and the probes.

Per scheme (`perfkit.optim.quantize.SCHEMES`), all from the same fp32 checkpoint:

- *Speed and memory* are measured in a fresh subprocess per scheme by `perfkit.speed`, the one
  timing path every stage shares (its docstring says how): TTFT and TPOT at batch 1, tokens/s at
  every batch size, peak RSS while serving, model bytes (each storage once: INT8 on `lm_head`
  unties it from the tied embedding, so the embedding stays fp32 *and* an int8 head is added), and
  the harness's own cost, killed after `quantization.scheme_timeout_s`. bf16 on a CPU without
  native bf16 is the case a fresh process per scheme exists for.
- *Rounds*: the stage runs every scheme's child once per round (`measure.rounds`), schemes interleaved
  (fp32, bf16, ..., fp32, bf16, ...), each child with its own warm-up: a scheme's tokens/s is the
  mean over rounds with a between-round 95% interval, its speed-up over fp32 the mean of the
  per-round paired ratios. Quality is deterministic and measured once.
- *Quality* is measured here, against fp32 reference log-probabilities on held-out Persuasion
  (`perfkit.quality`): perplexity, top-1 agreement, mean KL.
- An *activation probe* (forward hooks on every Linear's input, fp32, one held-out window) records
  each layer's largest input magnitude: dynamic INT8 quantizes activations with one scale per
  tensor, so a layer fed outliers of thousands loses its small values; that is what
  `quantization.skip_modules` keeps in fp32.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch
from torch import nn

from perfkit import speed
from perfkit.config import Config
from perfkit.optim import quantize


def target(cfg: Config, device: torch.device) -> quantize.Target:
    return quantize.Target(device, cfg.quantization.skip_modules)


def speed_plan(cfg: Config) -> speed.Plan:
    q = cfg.quantization
    return speed.Plan(
        q.prompt_tokens, q.new_tokens, q.batch_sizes, q.scheme_timeout_s, "quantization.scheme_timeout_s", q.skip_modules, repeats=q.repeats
    )


def measure_scheme(cfg: Config, scheme: str) -> dict[str, Any]:
    """Speed, memory and size of one scheme in this process (`perfkit.speed.measure`)."""
    return speed.measure(cfg, cfg.resolve(cfg.model.path), scheme, speed_plan(cfg))


def spawn_measurement(cfg: Config, scheme: str) -> dict[str, Any]:
    """One scheme's speed in a fresh process (`perfkit.speed.spawn`), killed after `quantization.scheme_timeout_s`."""
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
