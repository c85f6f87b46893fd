"""Every linear layer of the default model once, through torch's `nn.Linear`, prepacked for oneDNN, and prepacked
with sibling projections fused (`perfkit.prepack`): the kernels' share of a decode step, without the rest of it.

A decode step at batch 1 reads every weight once, so the layers' time at 1, 2 and 8 rows against the weights' bytes
gives the read rate each kernel reaches. The forms are timed in `--rounds` rounds, interleaved within each round,
the first form rotating (machines drift); each figure is the median over rounds of one pass's mean over `--passes` passes. The prefill row
is one pass at `--prefill-tokens` rows.

    .venv/bin/python bench/linear_kernels.py --rounds 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch import nn

from perfkit import config
from perfkit.hardware import memory_read_gb_s, pin_threads
from perfkit.models import load_causal_lm
from perfkit.prepack import PackedLinear, ProjectionSlice, prepack_linears

FORMS = {"nn.Linear": None, "prepacked": False, "prepacked, fused": True}  # form -> prepack_linears' `fuse`


def layers(model: nn.Module) -> list[tuple[nn.Module, int]]:
    """Each layer with its input width, in the model's order (a fused product's slices share one input)."""
    return [(m, m.in_features) for m in model.modules() if isinstance(m, (nn.Linear, PackedLinear, ProjectionSlice))]


def pass_ms(model_layers: list[tuple[nn.Module, int]], inputs: dict[int, torch.Tensor], passes: int) -> float:
    started = time.perf_counter()
    for _ in range(passes):
        for layer, width in model_layers:
            layer(inputs[width])
    return 1000 * (time.perf_counter() - started) / passes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 8])
    parser.add_argument("--prefill-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--passes", type=int, default=10)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()
    cfg = config.load("quantization")
    threads = pin_threads(cfg.hardware.threads)
    bandwidth = memory_read_gb_s()
    models = {}
    for form, fuse in FORMS.items():
        model = load_causal_lm(cfg.resolve(cfg.model.path), "cpu", args.dtype)[0]
        if fuse is not None:
            prepack_linears(model, fuse=fuse)
        models[form] = layers(model)
    plain = [layer for layer, _ in models["nn.Linear"]]
    weight_bytes = sum(layer.weight.numel() * layer.weight.element_size() for layer in plain)
    widths = {width for _, width in models["nn.Linear"]}
    sizes = [(rows, args.passes) for rows in args.rows] + [(args.prefill_tokens, 1)]
    times: dict[tuple[str, int], list[float]] = {(form, rows): [] for form in FORMS for rows, _ in sizes}
    dtype = getattr(torch, args.dtype)
    with torch.inference_mode():
        for round_ in range(args.rounds + 1):  # the first round warms every kernel and is dropped
            order = list(models)[round_ % len(models) :] + list(models)[: round_ % len(models)]  # who goes first rotates
            for rows, passes in sizes:
                inputs = {width: torch.randn(1, rows, width, dtype=dtype) for width in widths}
                for form in order:
                    times[form, rows].append(pass_ms(models[form], inputs, passes))
    results = []
    for (form, rows), rounds in times.items():
        ms = statistics.median(rounds[1:])
        gb_per_s = weight_bytes / 1e9 / (ms / 1000)
        results.append({"form": form, "rows": rows, "ms_median": ms, "ms_rounds": rounds[1:], "weights_gb_per_s": gb_per_s})
    report = {"threads": threads, "dtype": args.dtype, "weight_mb": weight_bytes / 2**20, "memory_read_gb_s": bandwidth}
    print(json.dumps(report | {"results": results}))


if __name__ == "__main__":
    main()
