"""`perfkit gpu-probe`: one model loaded once, its decode step timed eager and compiled, against measured bandwidth.

For shapes too big to reload at every server start (an ~8B model in bf16 is 15 GB), the GPU check's
stages give way to this probe. It measures the device's memory bandwidth (a device-to-device copy, bytes
read plus written), then per batch width the decode step of
- perfkit's engine as the stages run it (eager, dynamic KV cache): its TPOT p50;
- a static-KV-cache step under `torch.compile` (`reduce-overhead`: CUDA graphs on a GPU; each decoder
  layer compiled rather than the whole model, prefill left eager): the median step, the compile and
  warm-up time, and dynamo's graph and graph-break counts (the timed steps may not recompile);
and the share of the bandwidth each reaches: (weight bytes + KV bytes read) / step time / bandwidth.
Warm-up lasts a time (`warmup_s`), not a count. A measurement that fails is recorded with its error and the
probe goes on.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from perfkit.hardware import now


def bandwidth_gb_s(device: torch.device, mib: int = 1024, repeats: int = 10) -> float:
    """Best device-to-device copy rate, counting the bytes read and the bytes written (GB/s)."""
    src = torch.empty(mib * 2**20, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(repeats):
        t0 = now(device)
        dst.copy_(src)
        best = min(best, now(device) - t0)
    return 2 * src.numel() / best / 1e9


def kv_bytes(config: Any, batch: int, length: int, element_bytes: int) -> int:
    """Bytes of K and V one decode step reads at `length` positions for `batch` rows."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * length * batch * element_bytes


def weight_bytes(model: torch.nn.Module) -> int:
    seen, total = set(), 0
    for p in model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel() * p.element_size()
    return total


def eager_step_s(engine: Any, prompts: list[list[int]], steps: int, warmup_s: float) -> float:
    """TPOT p50 of perfkit's engine at this width (every row decodes `steps` tokens)."""
    started = time.perf_counter()
    while time.perf_counter() - started < warmup_s:
        engine.generate_batch(prompts, 4, stop_at_eos=False)
    tpots = [g.timing.tpot_s for _ in range(3) for g in engine.generate_batch(prompts, steps, stop_at_eos=False)]
    return statistics.median(tpots)


@torch.inference_mode()
def compiled_step_s(model: Any, prompts: list[list[int]], steps: int, warmup_s: float, mode: str) -> tuple[float, float, dict[str, int]]:
    """(median decode step, compile + warm-up seconds, dynamo's counts) of a static-cache decode step with each decoder
    layer compiled. Prefill runs eager; each layer is its own guard set (dynamo specialises its `layer_idx`), so the
    recompile limit is raised past the layer count; the timed steps run under `fail_on_recompile`."""
    from torch._dynamo.utils import counters
    from transformers import StaticCache

    device = model.device
    ids = torch.tensor(prompts, dtype=torch.long, device=device)
    batch, length = ids.shape
    layers = len(model.model.layers)
    for name in ("recompile_limit", "accumulated_recompile_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), 4 * layers))
    for layer in model.model.layers:
        layer.compile(mode=mode, dynamic=False)
    cache = StaticCache(config=model.config, max_cache_len=length + steps + 8)
    positions = torch.arange(length, device=device).expand(batch, length)

    def prefill() -> torch.Tensor:
        with torch.compiler.set_stance("force_eager"):
            out = model(input_ids=ids, position_ids=positions, cache=cache, use_cache=True)
        return out.logits[:, -1].argmax(-1, keepdim=True)

    def decode(token: torch.Tensor, position: int) -> torch.Tensor:
        if device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()
        positions = torch.full((batch, 1), position, dtype=torch.long, device=device)
        logits = model(input_ids=token, position_ids=positions, cache=cache, use_cache=True).logits[:, -1]
        return logits.argmax(-1, keepdim=True)

    t0 = time.perf_counter()
    token = prefill()
    position = length
    while position < length + 3 or time.perf_counter() - t0 < warmup_s:  # compiles, then warms the clocks
        if position >= length + steps:
            cache.reset()
            position = length
        token = decode(token, position)
        position += 1
    warm_s = time.perf_counter() - t0
    cache.reset()
    token = prefill()
    times = []
    with torch.compiler.set_stance("fail_on_recompile"):  # warmed: a recompile now would be timed, so it fails instead
        for position in range(length, length + steps):
            t = now(device)
            token = decode(token, position)
            times.append(now(device) - t)
    dynamo = {"graphs": counters["stats"]["unique_graphs"], "graph_breaks": sum(counters["graph_break"].values())}
    return statistics.median(times), warm_s, dynamo


def probe(
    model: Any,
    tokenizer: Any,
    *,
    batches: list[int],
    compiled_batches: list[int],
    prompt_tokens: int,
    steps: int,
    warmup_s: float,
    mode: str,
) -> dict[str, Any]:
    """Every width eager, the `compiled_batches` compiled too; each against the measured bandwidth."""
    from perfkit.engine import Engine

    device = model.device
    bandwidth = bandwidth_gb_s(device)
    weights = weight_bytes(model)
    element = next(model.parameters()).element_size()
    engine = Engine(model, tokenizer, device)
    generator = torch.Generator().manual_seed(0)
    out: dict[str, Any] = {
        "bandwidth_gb_s": bandwidth,
        "weight_bytes": weights,
        "parameters": model.num_parameters(),
        "dtype": str(next(model.parameters()).dtype),
        "prompt_tokens": prompt_tokens,
        "steps": steps,
        "compile_mode": mode,
        "rows": [],
    }
    plan = [(b, "eager") for b in batches] + [(b, "compiled") for b in compiled_batches]  # compiled last: it changes the layers
    for batch, engine_name in plan:
        prompts = torch.randint(0, len(tokenizer), (batch, prompt_tokens), generator=generator).tolist()
        moved = weights + kv_bytes(model.config, batch, prompt_tokens + steps // 2, element)
        row: dict[str, Any] = {"batch": batch, "engine": engine_name}
        try:
            if engine_name == "eager":
                step_s = eager_step_s(engine, prompts, steps, warmup_s)
            else:
                step_s, row["compile_and_warmup_s"], row["dynamo"] = compiled_step_s(model, prompts, steps, warmup_s, mode)
            row |= {"step_ms": step_s * 1e3, "tokens_per_s": batch / step_s, "bandwidth_pct": 100 * moved / step_s / 1e9 / bandwidth}
        except Exception as exc:  # recorded; the other measurements go on
            row["error"] = f"{type(exc).__name__}: {exc}"[:500]
        out["rows"].append(row)
        print(row, flush=True)
    return out


def load(
    *, model_dir: str | None, shape: str | None, tokenizer_dir: str | None, device: torch.device, dtype: str, root: Any
) -> tuple[Any, Any, str]:
    """The model once: a checkpoint folder through `load_causal_lm`, or a shipped shape built with seeded random
    weights in the device's memory (an 8B shape: no 15 GB written and read back). Returns (model, tokenizer, source)."""
    from perfkit.models import load_causal_lm, load_tokenizer

    if model_dir:
        model, tokenizer = load_causal_lm(model_dir, device, dtype)
        return model, tokenizer, f"checkpoint {model_dir}"
    from transformers import AutoConfig, AutoModelForCausalLM

    from perfkit import model_shapes

    spec = model_shapes.shape(root, str(shape))
    if spec.kind != "causal-lm":
        raise model_shapes.ShapeError(f"--shape {spec.name}: a {spec.kind} model; the probe decodes, it needs a chat model")
    tokenizer = load_tokenizer(tokenizer_dir or root / "data/models/smollm2-135m-instruct")
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(spec.config_dir), dtype=getattr(torch, dtype))
    return model.eval(), tokenizer, f"shape {spec.name}: seeded random weights built in {device.type} memory"
