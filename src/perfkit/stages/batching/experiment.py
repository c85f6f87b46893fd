"""The batching stage's run: one fresh server per variant under the same load, then the offline engine."""

from __future__ import annotations

from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from perfkit import claims, tracking
from perfkit.config import Config
from perfkit.engine import Engine, Generation
from perfkit.hardware import ResourceSampler, pin_threads, resolve_device
from perfkit.load.runner import run_load, served_prompts
from perfkit.measure import repeat
from perfkit.models import load_causal_lm
from perfkit.serving.launch import QUEUE_ALL, launch
from perfkit.serving.metrics import BATCH_METRIC, ROWS_METRIC, WAIT_METRIC, bucket_counts, histogram_delta, scrape
from perfkit.stages.batching import STAGE
from perfkit.stages.batching.result import BatchingResult, Variant
from perfkit.workload import Prompt


def serve_variant(cfg: Config, name: str, scheduler: str, max_batch_size: int, prompts: list[Prompt]) -> Variant:
    """A fresh server with this scheduler under the configured load; what it did, from the load and its /metrics."""
    overrides: dict[str, Any] = {"serving.scheduler": scheduler} | QUEUE_ALL
    if scheduler != "sequential":
        overrides["serving.max_batch_size"] = max_batch_size
    timeout = cfg.batching.launch_timeout_s
    with launch(cfg, overrides=overrides, probe_cold_start=False, timeout_s=timeout) as handle, TemporaryDirectory() as folder:
        before = scrape(handle.base_url)
        with ResourceSampler(handle.pid, cfg.hardware.sample_interval_s) as sampler:
            load = run_load(cfg, handle.base_url, prompts, Path(folder))
        after = scrape(handle.base_url)
    batches = histogram_delta(before.get(BATCH_METRIC, {}), after.get(BATCH_METRIC, {}))
    rows = histogram_delta(before.get(ROWS_METRIC, {}), after.get(ROWS_METRIC, {}))
    waits = histogram_delta(before.get(WAIT_METRIC, {}), after.get(WAIT_METRIC, {}))
    mean_rows = rows["sum"] / rows["count"] if rows.get("count") else 1.0
    per_prefill = batches["sum"] / batches["count"] if batches.get("count") else 1.0
    wait_ms = 1000.0 * waits["sum"] / waits["count"] if waits.get("count") else None
    return Variant(name, scheduler, max_batch_size, load, sampler.usage, batches.get("count", 0.0), mean_rows, wait_ms,
                   bucket_counts(rows), requests_per_prefill=per_prefill, overrides=overrides)


def offline_run(cfg: Config, engine: Engine, prompts: list[Prompt], batch: int) -> tuple[float, float]:
    """`Engine.generate_batch` on `batch` workload prompts, fixed output length: (output tokens/s, prefill seconds)."""
    ids = [list(p.input_ids) for p in (prompts * batch)[:batch]]
    n = cfg.workload.max_new_tokens
    generations: list[list[Generation]] = []
    runs = repeat(lambda: generations.append(engine.generate_batch(ids, n, stop_at_eos=False)), warmup=1,
                  min_repeats=cfg.batching.offline_repeats, device=engine.device)
    timed = generations[runs.warmup :]
    prefill_s = sum(g[0].timing.ttft_s for g in timed) / len(timed)  # every row's first token comes from the one prefill
    return batch * n / (runs.latency.mean / 1000.0), prefill_s


def run(cfg: Config) -> BatchingResult:
    """Every variant under the same load, one fresh server at a time; then the offline engine in this process."""
    checks = claims.checks_for(cfg.claims_path, STAGE.name)  # before minutes of load: a bad claims file fails fast
    prompts = served_prompts(cfg)
    plan = [("sequential", "sequential", 1)] if "sequential" in cfg.batching.schedulers else []
    if "dynamic" in cfg.batching.schedulers:
        plan += [(f"dynamic-b{b}", "dynamic", b) for b in cfg.batching.max_batch_sizes]
    if "continuous" in cfg.batching.schedulers:
        largest = max(cfg.batching.max_batch_sizes)
        plan.append((f"continuous-b{largest}", "continuous", largest))
    variants = [serve_variant(cfg, name, scheduler, b, prompts) for name, scheduler, b in plan]

    # Servers are stopped: the offline engine gets the cores to itself, at the server's thread count.
    pin_threads(cfg.hardware.threads)
    device = resolve_device(cfg.hardware.device)
    model, tokenizer = load_causal_lm(cfg.resolve(cfg.model.path), device)
    engine = Engine(model, tokenizer, device)
    # Batch 1 and the largest batch the load can fill are always measured: their ratio is what batching can buy here.
    largest = min(max(cfg.batching.max_batch_sizes), cfg.load.users)
    sizes = {1, largest} | {max(1, round(v.mean_batch_size)) for v in variants}
    measured = {b: offline_run(cfg, engine, prompts, b) for b in sorted(sizes)}
    offline = {b: tok_s for b, (tok_s, _) in measured.items()}
    done = []
    for v in variants:
        formed = offline[max(1, round(v.mean_batch_size))]
        v = Variant(**{**v.__dict__, "offline_tok_s": formed})
        tracking.log_variant(v.name, v.metrics(), v.overrides)
        done.append(v)
    b = cfg.batching
    return BatchingResult(tuple(done), offline, cfg.load.users, cfg.workload.prompt_tokens,
                          b.target_offline_ratio, b.target_speedup, cfg.serving.max_wait_ms,
                          {size: prefill for size, (_, prefill) in measured.items()}, checks)
