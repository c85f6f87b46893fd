"""The engines stage's run: llama.cpp's precision files offline, then batching and prefix reuse served on both engines.

Precision: each file is written once by llama-quantize (kept in `engines.gguf_dir`), then in every
round llama-bench times all of them (the order rotated each round, so no file always runs first),
and llama-perplexity compares each with the F32 model on the held-out novel. Batching: each round
starts llama-server with one slot and llama-server with `slots` slots, each fresh, under the
baseline's closed-loop load (its users, prompts, output length, requests and warm-up: `load.*`);
perfkit's side of both precision and batching is read from the stages that measured it in their own
interleaved rounds (quantization, batching), not measured a second time here.
Prefix: one perfkit server with a prefix store and one llama-server with its prompt cache, each
asked `prefix_pairs` times per length without, then with, the shared system turn cached.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from tempfile import TemporaryDirectory

from perfkit import llama_cpp, tracking, upstream
from perfkit.config import Config
from perfkit.endpoints import llama_server
from perfkit.endpoints.base import Endpoint
from perfkit.endpoints.serve import served
from perfkit.load.prefix import shared_prefix_ttft
from perfkit.load.runner import run_load, served_prompts
from perfkit.measure import Spread, interleaved
from perfkit.serving.launch import QUEUE_ALL
from perfkit.stages.engines.result import LLAMA, PERFKIT, EnginesResult, PrecisionFile, PrefixArm, ServedArm
from perfkit.stats import cv
from perfkit.workload import HELDOUT_NOVEL, read_novel


def run(cfg: Config) -> EnginesResult:
    """Every effect on both engines; "not built" (and nothing measured) where llama.cpp's tools or F32 GGUF are missing."""
    e = cfg.engines
    bin_dir, f32 = cfg.resolve(e.llama_cpp_bin), cfg.resolve(e.f32_gguf)
    missing = llama_cpp.missing_tools(bin_dir) + ([] if f32.is_file() else [str(f32)])
    reference = upstream.read(cfg.experiments_dir, ("quantization", "batching"))
    if missing:
        return EnginesResult(tuple(missing), str(bin_dir), reference.quantization, schedulers=reference.batching)
    files = precision(cfg, bin_dir, f32)
    arms = batching(cfg, bin_dir, f32)
    prefix = prefix_reuse(cfg, bin_dir, f32)
    result = EnginesResult((), str(bin_dir), reference.quantization, files, arms, prefix, reference.batching)
    for row in result.effects().to_dict("records"):
        tracking.log_variant(f"{row['effect']} / {row['engine']}", {k: v for k, v in row.items() if isinstance(v, float)}, {})
    return result


def precision(cfg: Config, bin_dir: Path, f32: Path) -> tuple[PrecisionFile, ...]:
    """Each precision's file, its tensor types, llama-bench's output tokens/s by round, and its KL divergence from F32."""
    e, q = cfg.engines, cfg.quantization
    threads = cfg.hardware.threads
    ggufs = {p: llama_cpp.quantize(bin_dir, f32, p, cfg.resolve(e.gguf_dir), threads, e.timeout_s) for p in e.precisions}
    order = list(ggufs)
    speeds: dict[str, list[tuple[float, ...]]] = {p: [] for p in order}
    for r in range(cfg.measure.rounds):
        rotated = order[r % len(order) :] + order[: r % len(order)]
        runs = llama_cpp.bench(
            bin_dir, [ggufs[p] for p in rotated], q.prompt_tokens, q.new_tokens, e.bench_repetitions, threads, e.timeout_s
        )
        for p, run in zip(rotated, runs):
            speeds[p].append(run.tok_s)
    quality: dict[str, llama_cpp.KLD] = {}
    with TemporaryDirectory(prefix="perfkit-kld-") as folder:
        text, base = Path(folder) / "heldout.txt", Path(folder) / "f32.kld"
        text.write_text(read_novel(cfg.corpus_dir, HELDOUT_NOVEL))
        ctx, chunks = e.perplexity_ctx, e.perplexity_chunks
        llama_cpp.perplexity_base(bin_dir, f32, text, base, ctx, chunks, threads, e.timeout_s)
        for p, gguf in ggufs.items():
            if p != "F32":
                quality[p] = llama_cpp.kl_divergence(bin_dir, gguf, text, base, ctx, chunks, threads, e.timeout_s)
    return tuple(
        PrecisionFile(
            p,
            gguf.name,
            gguf.stat().st_size / 2**20,
            llama_cpp.tensor_types(gguf),
            Spread(tuple(statistics.fmean(r) for r in speeds[p]), statistics.fmean(cv(r) for r in speeds[p]), sum(map(len, speeds[p]))),
            quality.get(p),
        )
        for p, gguf in ggufs.items()
    )


def _llama(cfg: Config, bin_dir: Path, f32: Path, slots: int, ctx_per_slot: int, cache_prompt: bool) -> AbstractContextManager[Endpoint]:
    """llama-server on the F32 file, its KV cache in f32 too: the same precision as perfkit's fp32 server."""
    return llama_server.launch(
        cfg.root,
        f32,
        exe=bin_dir / "llama-server",
        parallel=slots,
        threads=cfg.hardware.threads,
        ctx_per_slot=ctx_per_slot,
        alias=cfg.model.name,
        kv_type="f32",
        cache_prompt=cache_prompt,
        timeout_s=cfg.engines.launch_timeout_s,
        log_dir=cfg.out_dir / "logs",
    )


def _perfkit(cfg: Config, overrides: dict) -> AbstractContextManager[Endpoint]:
    return served(cfg, overrides=QUEUE_ALL | overrides, probe_cold_start=False, timeout_s=cfg.engines.launch_timeout_s)


def batching(cfg: Config, bin_dir: Path, f32: Path) -> tuple[ServedArm, ...]:
    """One slot against `slots` on llama-server, the baseline's load, every arm a fresh server in every round."""
    e, w = cfg.engines, cfg.workload
    ctx = 2 * (w.prompt_tokens + w.max_new_tokens)  # the template's turns and headroom: no request is cut
    arms: dict[str, Callable[[], AbstractContextManager[Endpoint]]] = {
        "1 slot": lambda: _llama(cfg, bin_dir, f32, 1, ctx, cache_prompt=False),
        f"{e.slots} slots": lambda: _llama(cfg, bin_dir, f32, e.slots, ctx, cache_prompt=False),
    }
    prompts = served_prompts(cfg)

    def one(opener: Callable[[], AbstractContextManager[Endpoint]]) -> Callable[[int], tuple]:
        def measure(_: int) -> tuple:
            with opener() as endpoint, TemporaryDirectory() as folder:
                load = run_load(cfg, endpoint, prompts, Path(folder))
            s = load.summary
            return endpoint.facts, s.throughput_tok_s, s.ttft.p50 if s.ttft else None, s.tpot.p50 if s.tpot else None, s.error_rate

        return measure

    rounds = interleaved({name: one(opener) for name, opener in arms.items()}, cfg.measure.rounds)
    return tuple(
        ServedArm(
            LLAMA,
            name,
            runs[0][0],
            tuple(r[1] for r in runs),
            tuple(r[2] for r in runs),
            tuple(r[3] for r in runs),
            tuple(r[4] for r in runs),
        )
        for name in arms
        for runs in [rounds[name]]
    )


def prefix_reuse(cfg: Config, bin_dir: Path, f32: Path) -> tuple[PrefixArm, ...]:
    """Time to first token with and without the shared system turn cached, on each engine's prefix reuse."""
    e = cfg.engines
    ctx = max(e.prefix_lengths) + 256  # the system turn, a question and the two answered tokens
    openers: dict[str, Callable[[], AbstractContextManager[Endpoint]]] = {
        PERFKIT: lambda: _perfkit(cfg, {"serving.scheduler": "sequential", "serving.cache.prefix_mb": 1024}),
        LLAMA: lambda: _llama(cfg, bin_dir, f32, 1, ctx, cache_prompt=True),
    }
    arms = []
    for engine, opener in openers.items():
        with opener() as endpoint:
            arms.append(PrefixArm(engine, endpoint.facts, tuple(shared_prefix_ttft(endpoint, cfg, e.prefix_lengths, e.prefix_pairs))))
    return tuple(arms)
