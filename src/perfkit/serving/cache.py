"""The server's answer cache: exact and semantic, in process or in Redis (`serving.cache`).

A cached answer is only right if everything that changes the answer is in its key: the model
(its name and a digest of its files), the templated prompt token ids, the resolved `max_tokens`
(its default depends on the prompt's length, so keys are built in the route, after validation),
`min_tokens` and `ignore_eos`, and with `scope: per_key` the client's bearer key, so one client
never gets another's answer. Only deterministic decoding is cached: decoding is always greedy
here, but a request that asks for `temperature` > 0 expects a sample, so it bypasses the cache
(`x-cache: bypass`); `top_p` changes nothing under greedy decoding and is not in the key.

Exact lookup comes first; in `semantic` mode a miss then embeds the last user message (MiniLM, on
the engine thread between decode steps) and takes the answer of the nearest cached query of the
same context above `similarity_threshold`. That trades correctness for hits: a question that
differs from a cached one only in a name may get the cached answer (a wrong hit).

A miss is recorded as its tokens go out and stored only once it finished normally; a hit is
replayed as the same token events, so streamed and whole responses go through the route's own
chunk builders. The backend failing never fails a request: it goes uncached, counted as an error.

Every serving path goes through this one cache: the REST routes (`app`) and the gRPC methods
(`grpc_server`) build the same keys from the same fields and store protocol-neutral content (the
token ids, their text deltas and the finish reason), each formatting it at its own edge (SSE or JSON,
`TokenEvent` messages or a `GenerateReply`), so an answer cached through one protocol is a hit
through the other wherever the request is the same (a shared Redis serves a REST and a gRPC server).
Counters carry a `protocol` label (rest | grpc) beside the `route` (chat | completions | embeddings).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from perfkit.config import Config
from perfkit.engine import Engine
from perfkit.hardware import now
from perfkit.models import Embedder, default_embedding_dir
from perfkit.prefix_cache import PrefixStore
from perfkit.redis_server import RedisChild
from perfkit.service_sections import CacheConfig
from perfkit.serving.cache_backends import Backend, CacheUnavailable, MemoryBackend, RedisBackend
from perfkit.serving.metrics import PrefixStoreCollector
from perfkit.serving.scheduler import Scheduler
from perfkit.serving.semantic import VectorIndex
from perfkit.serving.work import GenerationRequest, TokenEvent

log = logging.getLogger("perfkit.serving.cache")
LOOKUP_BUCKETS_S = (5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
FULL_HASH_BYTES = 64 * 2**20  # files up to this size are hashed whole; larger ones by size, head and tail
ANSWER, EMBEDDING = b"perfkit:a:", b"perfkit:e:"
Embed = Callable[[list[str]], Awaitable[np.ndarray]]
Submit = Callable[[], Awaitable[AsyncIterator[TokenEvent]]]
Semantic = tuple[str, Any]  # (the text to embed, everything else of the request that shapes the answer)


@lru_cache(maxsize=8)
def model_digest(path: Path) -> str:
    """A digest of a checkpoint folder's files: names, sizes, and contents (head + tail for large files)."""
    h = hashlib.sha256()
    files = sorted(p for p in Path(path).rglob("*") if p.is_file()) if Path(path).is_dir() else []
    for f in files:
        size = f.stat().st_size
        h.update(f"{f.relative_to(path)}\0{size}\0".encode())
        with f.open("rb") as fh:
            if size <= FULL_HASH_BYTES:
                h.update(fh.read())
            else:
                h.update(fh.read(2**20))
                fh.seek(-(2**20), os.SEEK_END)
                h.update(fh.read())
    return h.hexdigest()[:16]


def _hash(*parts: Any) -> bytes:
    return hashlib.sha256(json.dumps(parts, separators=(",", ":")).encode()).digest()


@dataclass
class Query:
    """One cacheable request: its exact key, and for semantic lookup the text and its context."""

    key: bytes
    context: int = 0
    text: str | None = None
    vector: np.ndarray | None = None
    entry: bytes = b""  # the entry that answered (hit) or will hold the answer (miss)


@dataclass(frozen=True)
class Answer:
    """A finished generation, protocol-neutral: each token's id and text delta, and the finish reason."""

    token_ids: tuple[int, ...]
    deltas: tuple[str, ...]
    finish: str

    def encode(self) -> bytes:
        return json.dumps({"t": self.token_ids, "d": self.deltas, "f": self.finish}, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes) -> Answer:
        obj = json.loads(raw)
        return cls(tuple(obj["t"]), tuple(obj["d"]), obj["f"])

    async def replay(self) -> AsyncIterator[TokenEvent]:
        last = len(self.deltas) - 1
        for i, (token, text) in enumerate(zip(self.token_ids, self.deltas)):
            yield TokenEvent(i, token, text, self.finish if i == last else None, 0.0)


def chat_semantic(messages: list[dict[str, str]]) -> Semantic | None:
    """Semantic lookup of a conversation: its last user message, in the context of the turns before it."""
    last = messages[-1]
    return (last["content"], ["chat", messages[:-1]]) if last["role"] == "user" else None


class CacheMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        by = ("route", "protocol")
        self.hits = Counter("perfkit_cache_hits", "answers served from the cache", (*by, "kind"), registry=r)
        self.misses = Counter("perfkit_cache_misses", "cacheable requests the cache could not answer", by, registry=r)
        self.bypass = Counter("perfkit_cache_bypass", "requests not cacheable (temperature > 0)", by, registry=r)
        self.errors = Counter("perfkit_cache_errors", "cache operations the backend did not answer", ("op",), registry=r)
        self.evictions = Counter("perfkit_cache_evictions", "entries the backend evicted to stay under its bound", registry=r)
        self.lookup = Histogram(
            "perfkit_cache_lookup_seconds",
            "cache time per step: exact (one GET), embed, semantic (search + GET), store (one SET)",
            ("step",),
            buckets=LOOKUP_BUCKETS_S,
            registry=r,
        )
        self.bytes = Gauge("perfkit_cache_bytes", "bytes the cache backend holds", registry=r)
        self.index_rows = Gauge("perfkit_cache_index_rows", "vectors in the semantic index", registry=r)


class AnswerCache:
    """Keys, lookup, store and replay over one backend, with the semantic index beside it."""

    def __init__(
        self,
        cfg: CacheConfig,
        backend: Backend,
        registry: CollectorRegistry,
        model: str,
        embedding_model: str,
        embed: Embed | None = None,
        dim: int = 384,
    ) -> None:
        self.cfg, self.backend, self.embed = cfg, backend, embed
        self.model, self.embedding_model = model, embedding_model  # "name@digest"
        self.metrics = CacheMetrics(registry)
        self.metrics.bytes.set_function(lambda: backend.bytes_used())
        self.index = VectorIndex(dim, cfg.max_entries) if cfg.mode == "semantic" else None
        if self.index is not None:
            index = self.index
            self.metrics.index_rows.set_function(lambda: len(index))

    @classmethod
    async def open(
        cls,
        cfg: CacheConfig,
        registry: CollectorRegistry,
        model: tuple[str, Path],
        embedding_model: tuple[str, Path],
        run_dir: Path,
        embed: Embed | None = None,
        dim: int = 384,
    ) -> AnswerCache:
        """Build the backend (starting perfkit's own Redis unless `redis_url` names one) and start it."""
        max_bytes = int(cfg.max_memory_mb * 2**20)
        backend: Backend
        if cfg.backend == "memory":
            backend = MemoryBackend(max_bytes)
        elif cfg.redis_url:
            backend = RedisBackend(cfg.redis_url, cfg.redis_timeout_s, cfg.breaker_probe_s)
        else:
            child = RedisChild(run_dir, max_bytes, cfg.appendonly)
            child.start()
            backend = RedisBackend(child.url, cfg.redis_timeout_s, cfg.breaker_probe_s, child)
        names = [f"{name}@{model_digest(Path(path))}" for name, path in (model, embedding_model)]
        cache = cls(cfg, backend, registry, names[0], names[1], embed, dim)
        await backend.start(cache._evicted)
        return cache

    async def close(self) -> None:
        await self.backend.close()
        child = getattr(self.backend, "child", None)
        if child is not None and not self.cfg.appendonly:
            shutil.rmtree(child.folder, ignore_errors=True)

    def _evicted(self, key: bytes) -> None:
        self.metrics.evictions.inc()
        if self.index is not None:
            self.index.remove(key)

    def partition(self, client_key: str) -> str:
        return client_key if self.cfg.scope == "per_key" else ""

    def query(
        self,
        client_key: str,
        req: GenerationRequest,
        min_tokens: int = 0,
        ignore_eos: bool = False,
        temperature: float | None = None,
        semantic: Semantic | None = None,
    ) -> Query | None:
        """The query of a validated generation request (`req` what the engine runs, `max_tokens` resolved;
        the other fields as the client sent them), or None where the answer is not deterministic.

        `semantic` is (text to embed, everything else of the request that shapes the answer: the
        route and the conversation before that text), or None where only exact lookup applies.
        """
        if self.cfg.mode == "none" or (temperature or 0.0) > 0:
            return None
        shape = (self.model, self.partition(client_key), req.max_new_tokens, min_tokens, ignore_eos)
        key = ANSWER + _hash("answer/2", *shape, list(req.prompt_ids)).hex().encode()
        if semantic is None or self.index is None:
            return Query(key)
        context = int.from_bytes(_hash("context", *shape, semantic[1])[:8], "little", signed=True)
        return Query(key, context, semantic[0])

    async def serve(
        self, route: str, protocol: str, query: Query | None, submit: Submit
    ) -> tuple[dict[str, str], AsyncIterator[TokenEvent]]:
        """The response headers and the events: a hit's stored answer replayed, or the generation, recorded.

        `x-cache`: hit | miss | bypass; `x-cache-entry`: the entry that answered or will hold the answer
        (an opaque id, so a client can tell which earlier request a semantic hit came from).
        """
        if query is None:
            self.metrics.bypass.labels(route, protocol).inc()
            return {"x-cache": "bypass"}, await submit()
        answer, kind = await self.lookup(query)
        headers = {"x-cache": "hit" if answer is not None else "miss"}
        if answer is not None:
            self.metrics.hits.labels(route, protocol, kind).inc()
            return {**headers, "x-cache-entry": query.entry[-16:].decode()}, answer.replay()
        self.metrics.misses.labels(route, protocol).inc()
        events = await submit()
        return {**headers, "x-cache-entry": query.key[-16:].decode()}, self._recording(events, query)

    async def lookup(self, query: Query) -> tuple[Answer | None, str]:
        t0 = now()
        try:
            raw = await self.backend.get(query.key)
        except CacheUnavailable:
            self.metrics.errors.labels("get").inc()
            return None, ""
        self.metrics.lookup.labels("exact").observe(now() - t0)
        if raw is not None:
            query.entry = query.key
            return Answer.decode(raw), "exact"
        if self.index is None or self.embed is None or query.text is None:
            return None, ""
        t1 = now()
        query.vector = (await self.embed([query.text]))[0]
        t2 = now()
        self.metrics.lookup.labels("embed").observe(t2 - t1)
        match = self.index.nearest(query.vector, query.context, self.cfg.similarity_threshold)
        raw = None
        if match is not None:
            try:
                raw = await self.backend.get(match.key)
            except CacheUnavailable:
                self.metrics.errors.labels("get").inc()
                return None, ""
            if raw is None:  # evicted without our hearing of it, or lost with a restarted Redis
                self.index.remove(match.key)
        self.metrics.lookup.labels("semantic").observe(now() - t2)
        if raw is None or match is None:
            return None, ""
        query.entry = match.key
        return Answer.decode(raw), "semantic"

    async def _recording(self, events: AsyncIterator[TokenEvent], query: Query) -> AsyncIterator[TokenEvent]:
        ids: list[int] = []
        deltas: list[str] = []
        finish = None
        async for ev in events:
            ids.append(ev.token_id)
            deltas.append(ev.text)
            finish = ev.finish_reason
            yield ev
        if finish is not None:  # finished normally: not cut off by an error or a client that went away
            await self.store(query, Answer(tuple(ids), tuple(deltas), finish))

    async def store(self, query: Query, answer: Answer) -> None:
        t0 = now()
        try:
            await self.backend.set(query.key, answer.encode())
        except CacheUnavailable:
            self.metrics.errors.labels("set").inc()
            return
        self.metrics.lookup.labels("store").observe(now() - t0)
        if self.index is not None and query.vector is not None:
            self.index.add(query.key, query.vector, query.context)

    async def embeddings(
        self, client_key: str, texts: list[str], compute: Embed, protocol: str = "rest"
    ) -> tuple[dict[str, str], np.ndarray]:
        """Embeddings per input text: the headers (x-cache: hit | miss | partial) and the vectors."""
        keys = [EMBEDDING + _hash("embedding", self.embedding_model, self.partition(client_key), t).hex().encode() for t in texts]
        found: dict[int, np.ndarray] = {}
        for i, key in enumerate(keys):
            t0 = now()
            try:
                raw = await self.backend.get(key)
            except CacheUnavailable:
                self.metrics.errors.labels("get").inc()
                raw = None
            self.metrics.lookup.labels("exact").observe(now() - t0)
            if raw is not None:
                found[i] = np.frombuffer(raw, dtype="<f4")
        missing = [i for i in range(len(texts)) if i not in found]
        self.metrics.hits.labels("embeddings", protocol, "exact").inc(len(found))
        self.metrics.misses.labels("embeddings", protocol).inc(len(missing))
        if missing:
            vectors = await compute([texts[i] for i in missing])
            for i, v in zip(missing, vectors):
                found[i] = np.asarray(v, dtype="<f4")
                try:
                    await self.backend.set(keys[i], found[i].tobytes())
                except CacheUnavailable:
                    self.metrics.errors.labels("set").inc()
        status = "hit" if not missing else "miss" if len(missing) == len(texts) else "partial"
        return {"x-cache": status}, np.stack([found[i] for i in range(len(texts))])


async def answer(
    cache: AnswerCache | None, route: str, protocol: str, query: Query | None, submit: Submit
) -> tuple[dict[str, str], AsyncIterator[TokenEvent]]:
    """A generation through the cache where the server has one: (x-cache metadata, token events)."""
    return await cache.serve(route, protocol, query, submit) if cache is not None else ({}, await submit())


async def embed_texts(
    cache: AnswerCache | None, scheduler: Scheduler, embedder: Embedder, client_key: str, texts: list[str], protocol: str
) -> tuple[dict[str, str], np.ndarray, int]:
    """Embeddings through the cache where the server has one: (x-cache metadata, vectors, prompt tokens).

    The embedder runs between decode steps, and its tokenizer stays on the engine thread too.
    """
    compute = lambda missing: scheduler.run_side(embedder.embed, missing)  # noqa: E731
    headers, vectors = await cache.embeddings(client_key, texts, compute, protocol) if cache else ({}, await compute(texts))
    return headers, vectors, await scheduler.run_side(embedder.count_tokens, texts)


async def open_for_server(
    cfg: Config, registry: CollectorRegistry, scheduler: Scheduler, engine: Engine, embedder: Embedder
) -> AnswerCache | None:
    """Set up both levels of `serving.cache` for a server: the engine's prefix store and the answer cache."""
    c = cfg.serving.cache
    if c.prefix_mb > 0:
        engine.prefix_store = PrefixStore(int(c.prefix_mb * 2**20), c.prefix_min_tokens)
        registry.register(PrefixStoreCollector(engine.prefix_store))
    if c.mode == "none":
        return None
    embedding_path = cfg.resolve(cfg.model.embedding_path) if cfg.model.embedding_path else default_embedding_dir()

    async def embed(texts: list[str]) -> np.ndarray:
        return await scheduler.run_side(embedder.embed, texts)

    run_dir = cfg.out_dir / "redis" / str(os.getpid())
    return await AnswerCache.open(
        c, registry, (cfg.model.name, cfg.resolve(cfg.model.path)), (cfg.model.embedding_name, embedding_path), run_dir, embed, embedder.dim
    )
