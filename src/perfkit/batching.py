"""The batching stage: sequential vs dynamic vs continuous batching under the same load, against the offline engine.

Each variant is a fresh server (same model, threads and prompts) under the same closed-loop Locust
load. Dynamic batching collects up to `max_batch_size` requests, or lets the idle engine wait at
most `max_wait_ms` for them, and runs them as one left-padded batch until its last row ends: each
decode step reads the weights once for every row, so output tokens/s rise with the batch size
while each request waits longer. Continuous batching refills a finished row's slot at the next
decode step instead of waiting for the whole batch. A batch can never hold more requests than
there are in flight, so with N closed-loop users `max_batch_size` above N changes nothing.

The batch size the engine actually ran (rows per decode step), and each request's queue wait,
come from the server's Prometheus `/metrics` (histograms scraped before and after the run and
subtracted). Beside each
variant, the engine's offline throughput at the mean batch size formed, in this process with
the same prompts and threads (`Engine.generate_batch`, no HTTP, no queue): the gap between the
two is what serving costs. Prefill batches poorly on a CPU (it is already compute-bound for one
long prompt), so the prompt length of the workload decides how much batching can gain; the
offline ratio batch-b / batch-1 measured here says how much it can at this prompt length.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import httpx
import pandas as pd
from prometheus_client.parser import text_string_to_metric_families

from perfkit import tracking
from perfkit.baseline import QUEUE_ALL
from perfkit.config import Config
from perfkit.engine import Engine, Generation
from perfkit.hardware import ResourceSampler, ResourceUsage, pin_threads, resolve_device
from perfkit.load.runner import LoadRun, run_load, served_prompts
from perfkit.measure import repeat
from perfkit.models import load_causal_lm
from perfkit.report import Check, claim_checks, judge
from perfkit.serving.launch import launch
from perfkit.workload import Prompt

BATCH_METRIC = "perfkit_batch_size"  # requests per prefill
ROWS_METRIC = "perfkit_decode_rows"  # rows per decode step
WAIT_METRIC = "perfkit_queue_wait_seconds"
CLAIMS = "data/claims.yaml"
# A server cannot beat the same engine run in-process on the same batches; above this ratio the offline
# run was disturbed (shared cores, thread oversubscription), and the offline target is not judged.
PLAUSIBLE_RATIO = 1.1


def scrape(base_url: str) -> dict[str, dict[str, float]]:
    """The server's histograms as {metric: {"count", "sum", "le=<bound>": cumulative count}}."""
    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    out: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            for suffix in ("_bucket", "_count", "_sum"):
                if sample.name.endswith(suffix):
                    base = sample.name[: -len(suffix)]
                    key = f"le={sample.labels['le']}" if suffix == "_bucket" else suffix[1:]
                    out.setdefault(base, {})[key] = out.get(base, {}).get(key, 0.0) + sample.value
    return out


def histogram_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}


def bucket_counts(hist: dict[str, float]) -> dict[str, float]:
    """Batches per bucket (not cumulative), keyed by the bucket's upper bound; empty buckets dropped."""
    bounds = sorted((float(k[3:]), v) for k, v in hist.items() if k.startswith("le="))
    out, previous = {}, 0.0
    for bound, cumulative in bounds:
        if cumulative - previous > 0:
            out["inf" if bound == float("inf") else f"{bound:g}"] = cumulative - previous
        previous = cumulative
    return out


@dataclass(frozen=True)
class Variant:
    """One server configuration under load, and what its /metrics said it did."""

    name: str
    scheduler: str
    max_batch_size: int
    load: LoadRun
    server: ResourceUsage
    batches: float  # prefill passes: dynamic batches, or groups of newcomers joining a continuous batch
    mean_batch_size: float  # rows per decode step
    queue_wait_ms_mean: float | None
    batch_histogram: dict[str, float] = field(default_factory=dict)
    offline_tok_s: float | None = None
    requests_per_prefill: float = 1.0  # requests prefilled together: a whole dynamic batch, or a continuous join

    @property
    def served_vs_offline(self) -> float | None:
        return self.load.summary.throughput_tok_s / self.offline_tok_s if self.offline_tok_s else None

    def metrics(self) -> dict[str, Any]:
        out = self.load.summary.as_metrics() | self.server.as_metrics()
        out |= {"scheduler": self.scheduler, "max_batch_size": self.max_batch_size, "batches": self.batches,
                "mean_batch_size": self.mean_batch_size, "requests_per_prefill": self.requests_per_prefill}
        if self.queue_wait_ms_mean is not None:
            out["queue_wait_ms_mean"] = self.queue_wait_ms_mean
        if self.offline_tok_s is not None:
            out["offline_tok_s"] = self.offline_tok_s
            out["served_vs_offline_ratio"] = self.served_vs_offline
        return out


@dataclass(frozen=True)
class BatchingResult:
    variants: tuple[Variant, ...]
    offline: dict[int, float]  # batch size -> offline output tokens/s
    users: int
    prompt_tokens: int
    target_offline_ratio: float
    target_speedup: float
    max_wait_ms: float
    c17: Check | None  # the article's batch-8 wait claim, from data/claims.yaml
    offline_prefill_s: dict[int, float] = field(default_factory=dict)  # batch size -> seconds to prefill the batch

    def _get(self, scheduler: str) -> list[Variant]:
        return [v for v in self.variants if v.scheduler == scheduler]

    @property
    def sequential(self) -> Variant | None:
        found = self._get("sequential")
        return found[0] if found else None

    @property
    def best_dynamic(self) -> Variant | None:
        """The dynamic variant with the largest max_batch_size: the one the targets are about."""
        found = self._get("dynamic")
        return max(found, key=lambda v: v.max_batch_size) if found else None

    @property
    def continuous(self) -> Variant | None:
        found = self._get("continuous")
        return found[0] if found else None

    def table(self) -> pd.DataFrame:
        rows = []
        for v in self.variants:
            s = v.load.summary
            rows.append({
                "variant": v.name, "throughput_tok_s": s.throughput_tok_s, "throughput_rps": s.throughput_rps,
                "latency_ms_p50": s.e2e.p50 if s.e2e else None, "latency_ms_p99": s.e2e.p99 if s.e2e else None,
                "ttft_ms_p50": s.ttft.p50 if s.ttft else None, "queue_wait_ms_mean": v.queue_wait_ms_mean,
                "mean_batch_size": v.mean_batch_size, "cpu_util_pct": v.server.cpu_util_pct,
                "offline_tok_s": v.offline_tok_s, "served_vs_offline": v.served_vs_offline, "error_rate": s.error_rate,
            })
        return pd.DataFrame(rows)

    def batch_sizes(self) -> pd.DataFrame:
        """Decode steps per batch size (rows in the step; histogram buckets), per variant."""
        rows = [{"variant": v.name, "batch_size": size, "decode_steps": n}
                for v in self.variants for size, n in v.batch_histogram.items()]
        return pd.DataFrame(rows, columns=["variant", "batch_size", "decode_steps"])

    def metrics(self) -> dict[str, Any]:
        out: dict[str, Any] = {v.name: v.metrics() for v in self.variants}
        summary: dict[str, Any] = {"users": self.users, "prompt_tokens": self.prompt_tokens}
        summary |= {f"offline_tok_s_batch{b}": tok for b, tok in sorted(self.offline.items())}
        summary |= {f"offline_prefill_ms_per_row_batch{b}": 1000 * s / b for b, s in sorted(self.offline_prefill_s.items())}
        for v in self._get("dynamic"):
            if v.queue_wait_ms_mean is not None:
                summary[f"queue_wait_ms_mean_batch{v.max_batch_size}"] = v.queue_wait_ms_mean
        seq, dyn = self.sequential, self.best_dynamic
        if seq is not None:
            summary["sequential_tok_s"] = seq.load.summary.throughput_tok_s
        if dyn is not None:
            summary |= {"dynamic_tok_s": dyn.load.summary.throughput_tok_s, "dynamic_mean_batch_size": dyn.mean_batch_size,
                        "target_offline_ratio": self.target_offline_ratio}
            if dyn.served_vs_offline is not None:
                summary["served_vs_offline_ratio"] = dyn.served_vs_offline
                if dyn.served_vs_offline > PLAUSIBLE_RATIO:
                    summary["offline_suspect"] = True
                else:
                    summary["offline_target_met"] = dyn.served_vs_offline >= self.target_offline_ratio
        if seq is not None and dyn is not None and seq.load.summary.throughput_tok_s > 0:
            speedup = dyn.load.summary.throughput_tok_s / seq.load.summary.throughput_tok_s
            summary |= {"speedup_vs_sequential": speedup, "target_speedup": self.target_speedup,
                        "speedup_target_met": speedup >= self.target_speedup}
        cont = self.continuous
        if cont is not None:
            summary |= {"continuous_tok_s": cont.load.summary.throughput_tok_s,
                        "continuous_mean_batch_size": cont.mean_batch_size}
            if cont.served_vs_offline is not None:
                summary["continuous_served_vs_offline_ratio"] = cont.served_vs_offline
            if seq is not None and seq.load.summary.throughput_tok_s > 0:
                summary["continuous_speedup_vs_sequential"] = cont.load.summary.throughput_tok_s / seq.load.summary.throughput_tok_s
            if dyn is not None and dyn.load.summary.throughput_tok_s > 0:
                ratio = cont.load.summary.throughput_tok_s / dyn.load.summary.throughput_tok_s
                summary |= {"continuous_vs_dynamic": ratio, "continuous_beats_dynamic": ratio > 1.0}
        summary["verdict"] = self.verdict()
        out["summary"] = summary
        return out

    def verdict(self) -> str:
        seq, dyn = self.sequential, self.best_dynamic
        if seq is None or dyn is None or seq.load.summary.throughput_tok_s <= 0:
            return "needs both a sequential and a dynamic variant to compare"
        speedup = dyn.load.summary.throughput_tok_s / seq.load.summary.throughput_tok_s
        return f"{dyn.name}: {speedup:.2f}x sequential tokens/s at mean batch {dyn.mean_batch_size:.1f}"

    def conclusion(self) -> str:
        lines = []
        seq, dyn = self.sequential, self.best_dynamic
        if seq is not None and dyn is not None and seq.load.summary.throughput_tok_s > 0:
            s, d = seq.load.summary, dyn.load.summary
            speedup = d.throughput_tok_s / s.throughput_tok_s
            ratio = dyn.served_vs_offline or 0.0
            if ratio > PLAUSIBLE_RATIO:
                judged = ("which cannot be: the offline run was slowed by something else on the machine (shared cores, "
                          "thread oversubscription), so the offline target is not judged on this run")
            else:
                judged = f"target >= {self.target_offline_ratio:.0%}: " + (
                    "met" if ratio >= self.target_offline_ratio else "not met")
                if ratio > 1.0:
                    judged += ("; above 100% is not a server beating its engine but the two measurements, minutes "
                               "apart on a shared machine, differing by its run-to-run noise")
            lines.append(
                f"At {self.users} users, {dyn.name} served {d.throughput_tok_s:.1f} output tokens/s against "
                f"{s.throughput_tok_s:.1f} sequential ({speedup:.2f}x; target >= {self.target_speedup:g}x: "
                f"{'met' if speedup >= self.target_speedup else 'not met'}), forming batches of {dyn.mean_batch_size:.1f} "
                f"on average; the offline engine reaches {dyn.offline_tok_s or 0:.1f} tokens/s at that batch size, so the "
                f"server delivers {ratio:.0%} of it ({judged})."
            )
            p50 = (d.e2e.p50 if d.e2e else float("nan"), s.e2e.p50 if s.e2e else float("nan"))
            lines.append(
                f"Latency p50 went from {p50[1] / 1000:.2f} s to {p50[0] / 1000:.2f} s, and the server's CPU from "
                f"{seq.server.cpu_util_pct:.0f}% to {dyn.server.cpu_util_pct:.0f}% (100% = one core) while tokens/s changed "
                f"{speedup:.2f}x: utilization alone says little about useful work (C17's 65% -> 92% is a GPU figure)."
            )
        cont = self.continuous
        if cont is not None and dyn is not None and dyn.load.summary.throughput_tok_s > 0:
            c, d = cont.load.summary, dyn.load.summary
            ratio = c.throughput_tok_s / d.throughput_tok_s
            prefill = ""
            if 1 in self.offline_prefill_s and len(self.offline_prefill_s) > 1:
                b = max(self.offline_prefill_s)
                alone, batched = 1000 * self.offline_prefill_s[1], 1000 * self.offline_prefill_s[b] / b
                tpot = (c.tpot.p50 if c.tpot else float("nan"), d.tpot.p50 if d.tpot else float("nan"))
                prefill = (
                    f" What continuous batching pays instead: a {self.prompt_tokens}-token prompt takes {alone:.0f} ms to "
                    f"prefill alone and {batched:.0f} ms per row in a batch of {b}; {dyn.name} prefilled "
                    f"{dyn.requests_per_prefill:.1f} requests at a time, {cont.name} {cont.requests_per_prefill:.1f}, and "
                    f"each join is a forward pass of its own while the running rows wait (time per output token p50 "
                    f"{tpot[0]:.0f} ms against {tpot[1]:.0f} ms)."
                )
            lines.append(
                f"{cont.name} served {c.throughput_tok_s:.1f} output tokens/s at {cont.mean_batch_size:.1f} rows per decode "
                f"step, {ratio:.2f}x {dyn.name} ({'beats it' if ratio > 1 else 'does not beat it'}) and "
                f"{cont.served_vs_offline or 0:.0%} of the offline engine at that batch size. Refilling a slot at the next "
                f"step pays off when rows end at different times; with a fixed output length every row of a batch ends "
                f"together, so dynamic batching wastes no slot here (bench/continuous.py runs both with varied "
                f"lengths).{prefill}"
            )
        eight = [v for v in self._get("dynamic") if v.max_batch_size == 8 and v.queue_wait_ms_mean is not None]
        if eight and self.c17 is not None:
            wait = eight[0].queue_wait_ms_mean or 0.0
            lines.append(
                f"C17 (+{self.c17.claimed:g} ms mean wait at batch 8): the mean queue wait with max_batch_size 8 was "
                f"{wait:.0f} ms here ({'holds' if judge(self.c17, wait) else 'does not hold'}); the fill window is at most "
                f"{self.max_wait_ms:g} ms, so about {max(0.0, wait - self.max_wait_ms):.0f} ms of it is waiting for the "
                f"batch ahead to finish."
            )
        if 1 in self.offline and len(self.offline) > 1:
            b = max(self.offline)
            gain = self.offline[b] / self.offline[1]
            lines.append(
                f"Prefill barely batches on a CPU, so the prompt length decides the gain: offline, batch {b} gives "
                f"{gain:.1f}x the output tokens/s of batch 1 with these {self.prompt_tokens}-token prompts; shorter prompts "
                f"gain more, longer ones less."
            )
        capped = [v.name for v in self.variants if v.max_batch_size > self.users]
        if capped:
            lines.append(f"{', '.join(capped)}: max_batch_size above the {self.users} users in flight cannot fill.")
        weak = [v.name for v in self.variants if not v.load.summary.p99_reliable]
        if weak:
            lines.append(f"p99 rests on fewer than 100 requests in {', '.join(weak)}: read it as a rough upper tail.")
        flagged = [f"{v.name}: {'; '.join(v.load.summary.flags)}" for v in self.variants if v.load.summary.flags]
        if flagged:
            lines.append("Load run checks: " + " | ".join(flagged) + "; read those variants with that in mind.")
        return "\n\n".join(lines)


def serve_variant(cfg: Config, name: str, scheduler: str, max_batch_size: int, prompts: list[Prompt]) -> Variant:
    """A fresh server with this scheduler under the configured load; what it did, from the load and its /metrics."""
    overrides: dict[str, Any] = {"serving.scheduler": scheduler} | QUEUE_ALL
    if scheduler != "sequential":
        overrides |= {"serving.max_batch_size": max_batch_size, "serving.max_wait_ms": cfg.batching.max_wait_ms}
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
                   bucket_counts(rows), requests_per_prefill=per_prefill)


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
        tracking.log_variant(v.name, v.metrics(), {"serving.scheduler": v.scheduler, "serving.max_batch_size": v.max_batch_size})
        done.append(v)
    c17 = next(iter(claim_checks(cfg.resolve(CLAIMS), "C17").values()), None)
    b = cfg.batching
    return BatchingResult(tuple(done), offline, cfg.load.users, cfg.workload.prompt_tokens,
                          b.target_offline_ratio, b.target_speedup, b.max_wait_ms, c17,
                          {size: prefill for size, (_, prefill) in measured.items()})
