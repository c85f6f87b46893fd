"""What a perfkit server process holds, REST or gRPC alike: its models, scheduler, metrics and answer cache, and how
it gets them (`prepare`: load, warm up, start the scheduler and the cache)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from perfkit.config import Config
from perfkit.engine import Engine
from perfkit.hardware import now, resolve_device
from perfkit.models import Embedder, load_causal_lm
from perfkit.serving.cache import AnswerCache, open_for_server
from perfkit.serving.checkpoint import prepare_checkpoint
from perfkit.serving.metrics import ServingMetrics
from perfkit.serving.scheduler import Scheduler

log = logging.getLogger("perfkit.serving")
# Warm-up prompt: long enough that the prefill price per token it measures is not mostly fixed overhead.
WARMUP_PROMPT = (
    "Summarize in one sentence: the server loads its model, runs one small batch to pay lazy initialisation, "
    "and measures what a prefill and a decode step cost before it reports that it is ready."
)


@dataclass
class ServerState:
    """What the routes need; `engine` and `embedder` are None until the models are loaded. Made once the server's
    imports are done: `imported_at` is when, and the launcher counts spawn -> then as start-up and imports."""

    cfg: Config
    engine: Engine | None = None
    embedder: Embedder | None = None
    scheduler: Scheduler | None = None
    load_s: float | None = None
    warmup_s: float | None = None
    metrics: ServingMetrics = field(default_factory=ServingMetrics)
    answers: AnswerCache | None = None  # serving.cache, once started
    imported_at: float = field(default_factory=time.time)

    @property
    def ready(self) -> bool:
        return self.scheduler is not None

    def startup(self) -> dict[str, float]:
        """The start-up figures the launcher splits a cold start by (`launch.write_port_file`)."""
        return {"imported_at": self.imported_at, "load_s": self.load_s or 0.0, "warmup_s": self.warmup_s or 0.0}


def load_models(cfg: Config) -> tuple[Engine, Embedder]:
    device = resolve_device(cfg.hardware.device)
    model, tokenizer = load_causal_lm(prepare_checkpoint(cfg), device, cfg.serving.dtype)  # the launcher made it already
    embedding = cfg.resolve(cfg.model.embedding_path) if cfg.model.embedding_path else None
    engine = Engine(model, tokenizer, device, cfg.serving.kv_cache, cfg.serving.compile, prepack=cfg.hardware.prepack)
    return engine, Embedder.load(embedding, device)


async def prepare(state: ServerState, on_ready: Callable[[ServerState], None] | None = None) -> None:
    """Load the models (unless given), warm up if configured, start the scheduler, then call `on_ready`.

    All torch work of the process (loading, warm-up, generation, embeddings) runs on one thread.
    libgomp gives each thread that enters a parallel region its own team of OpenMP threads, and
    once the process holds more OpenMP threads than cores it cuts their spin-wait to 100 spins
    (GOMP_SPINCOUNT): every parallel region then waits for a sleeping thread to be woken, and a
    server with torch threads = cores generates several percent slower than the same engine
    in-process (bench/server_overhead.py shows the difference).
    """
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="perfkit-engine")
    loop = asyncio.get_running_loop()
    if state.engine is None or state.embedder is None:
        t0 = now()
        state.engine, state.embedder = await loop.run_in_executor(executor, load_models, state.cfg)
        state.load_s = now() - t0
        log.info("models loaded in %.2f s", state.load_s)
    scheduler = Scheduler.from_config(state.engine, state.cfg.serving, state.metrics, executor)
    if state.cfg.serving.warmup:  # pays lazy initialisation before the first client does (claim C19)
        t0 = now()
        await scheduler.warm_up(state.engine.encode(WARMUP_PROMPT))
        await scheduler.run_exclusive(state.embedder.embed, [WARMUP_PROMPT])
        state.warmup_s = now() - t0
    await scheduler.start()
    state.answers = await open_for_server(state.cfg, state.metrics.registry, scheduler, state.engine, state.embedder)
    state.scheduler = scheduler
    if on_ready is not None:
        on_ready(state)
