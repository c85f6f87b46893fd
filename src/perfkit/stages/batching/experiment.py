"""The batching stage's run: rounds of every server variant, interleaved, each round followed by the offline engine.

Round r runs every variant once, in the same order (ABC ABC ...: drift between rounds hits all of
them alike), each a fresh server with its own warm-up requests; then, still in round r, the
in-process engine at the batch widths those servers formed, with the same output tokens per row and
as many batches as the server ran in its measured window (capped at `offline_max_batches`), after an
untimed warm-up batch where the engine has not run that width yet, and before the round's first width (the
servers had the cores since the engine last ran). /metrics is scraped every `scrape_interval_s` during the load so that the
measured window, known only when the load has ended, is cut out of the scrapes exactly.

Every variant is an endpoint opened by `endpoints.serve.served`. With `load.target_url` the plan is
one variant ("external") over the same rounds and load: no scheduler sweep (its batching is its
own), no offline engine (perfkit does not hold its model) and so no targets; the client's figures
only, because only perfkit's server exports the /metrics the server-side figures come from.
"""

from __future__ import annotations

import dataclasses
import statistics
from contextlib import ExitStack
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import TYPE_CHECKING, Any

from perfkit import config, tracking
from perfkit.config import Config
from perfkit.endpoints.serve import Watch, served
from perfkit.engine import Engine, Generation
from perfkit.hardware import pin_threads, resolve_device
from perfkit.load.results import measured_window
from perfkit.load.runner import run_load, served_prompts
from perfkit.measure import Spread, repeat
from perfkit.models import load_causal_lm
from perfkit.serving.launch import QUEUE_ALL
from perfkit.serving.metrics import (
    BATCH_METRIC,
    FILL_METRIC,
    ROWS_METRIC,
    TOKENS_METRIC,
    WAIT_METRIC,
    PeriodicScrape,
    bucket_counts,
    histogram_delta,
    scrape,
)
from perfkit.stages.batching.light_load import LightLoad, abba
from perfkit.stages.batching.result import BatchingResult, Offline, Round, Variant
from perfkit.stages.batching.rounds import EXTERNAL
from perfkit.workload import Prompt

if TYPE_CHECKING:
    from perfkit.endpoints.base import Endpoint
    from perfkit.load.runner import LoadRun


def _mean_ms(hist: dict[str, float]) -> float | None:
    return 1000.0 * hist["sum"] / hist["count"] if hist.get("count") else None


def serve_round(cfg: Config, index: int, scheduler: str, max_batch_size: int, prompts: list[Prompt]) -> Round:
    """A fresh endpoint for this variant under the configured load; what it did in the measured window."""
    overrides = overrides_for(scheduler, max_batch_size)
    timeout = cfg.batching.launch_timeout_s
    with served(cfg, overrides=overrides, probe_cold_start=False, timeout_s=timeout) as endpoint, TemporaryDirectory() as folder:
        if endpoint.facts.kind != "perfkit":  # no perfkit /metrics to read: the client's window and rate only
            load = run_load(cfg, endpoint, prompts, Path(folder))
            s = load.summary
            return Round(index, load, None, s.window_s, s.throughput_tok_s, None, None, None, None, None, endpoint=endpoint.facts)
        return _scraped_round(cfg, index, endpoint, prompts, Path(folder))


def _scraped_round(cfg: Config, index: int, endpoint: Endpoint, prompts: list[Prompt], folder: Path) -> Round:
    """The load on a perfkit server, /metrics scraped through it: the server's own window, rate and batches."""
    url = endpoint.facts.base_url or ""
    before = scrape(url)
    with Watch(endpoint, cfg.hardware.sample_interval_s) as watch, PeriodicScrape(url, cfg.batching.scrape_interval_s) as scrapes:
        load: LoadRun = run_load(cfg, endpoint, prompts, folder)
    after = scrape(url)
    start, end = measured_window(load.timings, cfg.load.mode)
    try:
        window_s, delta = scrapes.window(start, end)
        served_tok_s = delta.get(TOKENS_METRIC, {}).get("total", 0.0) / window_s
    except ValueError:  # a window shorter than two scrapes (smoke runs): the whole run, warm-up included, and the client's rate
        window_s = load.summary.window_s
        delta = {name: histogram_delta(before.get(name, {}), values) for name, values in after.items()}
        served_tok_s = load.summary.throughput_tok_s
    batches, rows = delta.get(BATCH_METRIC, {}), delta.get(ROWS_METRIC, {})
    return Round(
        index,
        load,
        watch.usage,
        window_s,
        served_tok_s,
        batches.get("count", 0.0),
        rows["sum"] / rows["count"] if rows.get("count") else 1.0,
        batches["sum"] / batches["count"] if batches.get("count") else 1.0,
        _mean_ms(delta.get(WAIT_METRIC, {})),
        _mean_ms(delta.get(FILL_METRIC, {})),
        bucket_counts(rows),
        endpoint=endpoint.facts,
    )


def _engine(cfg: Config) -> Engine:
    device = resolve_device(cfg.hardware.device)
    model, tokenizer = load_causal_lm(cfg.resolve(cfg.model.path), device)
    return Engine(model, tokenizer, device, prepack=cfg.hardware.prepack)


def _width(r: Round) -> int:
    return max(1, round(r.mean_batch_size or 1))


def overrides_for(scheduler: str, max_batch_size: int) -> dict[str, Any]:
    overrides: dict[str, Any] = {"serving.scheduler": scheduler} | QUEUE_ALL
    if scheduler != "sequential":
        overrides["serving.max_batch_size"] = max_batch_size
    return overrides


def offline_run(cfg: Config, engine: Engine, prompts: list[Prompt], width: int, batches: int, warmup: int = 1) -> Offline:
    """`Engine.generate_batch` on `width` workload prompts, the served output length, `batches` timed batches after
    `warmup` untimed ones."""
    ids = [list(p.input_ids) for p in (prompts * width)[:width]]
    n = cfg.workload.max_new_tokens
    generations: list[list[Generation]] = []
    runs = repeat(
        lambda: generations.append(engine.generate_batch(ids, n, stop_at_eos=False)),
        warmup=warmup,
        min_repeats=batches,
        device=engine.device,
        warmup_s=cfg.measure.warmup_s,
    )
    timed = generations[runs.warmup :]
    prefill_s = statistics.fmean(g[0].timing.ttft_s for g in timed)  # every row's first token comes from the one prefill
    return Offline(width, n, runs.seconds, prefill_s)


def light_load_run(cfg: Config, engine: Engine, prompts: list[Prompt]) -> LightLoad | None:
    """C17's wait: the same light open-loop load (`light_load_share` of what the sequential server can answer, short
    answers) on a sequential server and a dynamic one at the largest batch size, both up, in alternating blocks (ABBA);
    None when either is not run."""
    b = cfg.batching
    if b.light_load_requests == 0 or not {"sequential", "dynamic"} <= set(b.schedulers):
        return None
    n = b.light_load_max_new_tokens
    # One Locust process (a worker's share would split the seeded schedule) and no per-key bucket (a 429 loses a pair).
    light = {"workload.max_new_tokens": n, "workload.output_spread": 0.0, "load.workers": 0, "serving.rate_limit.enabled": False}
    short = config.override(cfg, light)
    ids = [list(prompts[0].input_ids)]
    alone = repeat(lambda: engine.generate_batch(ids, n, stop_at_eos=False), warmup=1, min_repeats=3, device=engine.device)
    service_s = statistics.fmean(alone.seconds)
    rate = b.light_load_share / service_s
    width = max(b.max_batch_sizes)
    blocks = b.light_load_blocks
    per_block = [b.light_load_requests // blocks + (j < b.light_load_requests % blocks) for j in range(blocks)]
    loads: dict[str, list[LoadRun]] = {"sequential": [], "dynamic": []}
    sent = 0  # requests issued in the blocks before, warm-up included: the next block's prompts start after them
    with ExitStack() as stack, TemporaryDirectory() as folder:
        endpoints = {
            scheduler: stack.enter_context(
                served(short, overrides=overrides_for(scheduler, size), probe_cold_start=False, timeout_s=b.launch_timeout_s)
            )
            for scheduler, size in (("sequential", 1), ("dynamic", width))
        }
        for block, requests in enumerate(per_block):
            # Each block its own arrivals (seed) and prompts (the list rotated past the earlier blocks'), the same on
            # both servers: paired by request within the block, and no request measured twice.
            block_cfg = config.override(short, {"workload.seed": cfg.workload.seed + block})
            block_prompts = prompts[sent % len(prompts) :] + prompts[: sent % len(prompts)]
            warmup = 2 if block == 0 else 0  # the servers stay warm between their blocks
            for scheduler in abba(block, ("sequential", "dynamic")):
                loads[scheduler].append(
                    run_load(
                        block_cfg,
                        endpoints[scheduler],
                        block_prompts,
                        Path(folder) / f"{scheduler}-{block}",
                        mode="open",
                        rate_rps=rate,
                        requests=requests,
                        warmup_requests=warmup,
                    )
                )
            sent += warmup + requests
    return LightLoad(rate, service_s, n, width, "dynamic", cfg.serving.max_wait_ms, tuple(loads["sequential"]), tuple(loads["dynamic"]))


def plan(cfg: Config) -> list[tuple[str, str, int]]:
    """(name, scheduler, max_batch_size) per variant: the scheduler sweep, or the one endpoint `load.target_url` names."""
    if cfg.load.target_url:
        return [(EXTERNAL, EXTERNAL, 0)]
    b = cfg.batching
    out = [("sequential", "sequential", 1)] if "sequential" in b.schedulers else []
    if "dynamic" in b.schedulers:
        out += [(f"dynamic-b{size}", "dynamic", size) for size in b.max_batch_sizes]
    if "continuous" in b.schedulers:
        out.append((f"continuous-b{max(b.max_batch_sizes)}", "continuous", max(b.max_batch_sizes)))
    return out


def run(cfg: Config) -> BatchingResult:
    """`measure.rounds` rounds; in each, every variant (a fresh endpoint) in the same order, then the offline engine at
    the widths the servers formed (an endpoint that reports no batches gets no offline twin)."""
    prompts = served_prompts(cfg)
    b = cfg.batching
    pin_threads(cfg.hardware.threads)
    variants = plan(cfg)
    largest = min(max(b.max_batch_sizes), cfg.load.users)  # batch 1 and the largest the load can fill, every round
    rounds: dict[str, list[Round]] = {name: [] for name, _, _ in variants}
    fixed: dict[int, list[Offline]] = {1: [], largest: []}
    engine: Engine | None = None  # loaded once a round has formed batches to compare with
    warmed: set[int] = set()  # widths the engine has run
    for index in range(cfg.measure.rounds):
        measured = {name: serve_round(cfg, index, scheduler, size, prompts) for name, scheduler, size in variants}
        formed = {name: r for name, r in measured.items() if r.mean_batch_size is not None and r.batches is not None}
        if formed:
            engine = engine or _engine(cfg)
            # Servers are stopped: the engine gets the cores to itself, at the server's thread count, in the same round.
            wanted: dict[int, int] = {1: b.offline_repeats, largest: b.offline_repeats}
            for r in formed.values():
                width = _width(r)
                wanted[width] = max(wanted.get(width, 1), min(b.offline_max_batches, max(1, round(r.batches or 1))))
            offline = {}
            for order, (width, n) in enumerate(sorted(wanted.items())):
                offline[width] = offline_run(cfg, engine, prompts, width, n, warmup=int(order == 0 or width not in warmed))
                warmed.add(width)
            for width in fixed:
                fixed[width].append(offline[width])
            measured |= {name: dataclasses.replace(r, offline=offline[_width(r)]) for name, r in formed.items()}
        for name, r in measured.items():
            rounds[name].append(r)
    done = []
    for name, scheduler, size in variants:
        v = Variant(name, scheduler, size, tuple(rounds[name]), overrides_for(scheduler, size))
        tracking.log_variant(v.name, v.metrics(cfg.measure.noisy_cv, cfg.measure.min_repeats), v.overrides)
        done.append(v)
    offline_tok = {
        w: Spread(tuple(o.tok_s for o in runs), statistics.fmean(o.cv for o in runs), sum(len(o.seconds) for o in runs))
        for w, runs in fixed.items()
        if runs
    }
    prefill = {
        w: Spread(tuple(1000 * o.prefill_s / w for o in runs), 0.0, sum(len(o.seconds) for o in runs)) for w, runs in fixed.items() if runs
    }
    light = light_load_run(cfg, engine, prompts) if engine is not None else None
    return BatchingResult(
        tuple(done),
        offline_tok,
        cfg.load.users,
        cfg.workload.prompt_tokens,
        b.target_offline_ratio,
        b.target_speedup,
        cfg.serving.max_wait_ms,
        prefill,
        cfg.measure.noisy_cv,
        cfg.measure.min_repeats,
        light=light,
    )
