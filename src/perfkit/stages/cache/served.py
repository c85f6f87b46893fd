"""The cache stage's served measurements: one closed-loop client against a fresh server per variant.

Each point of the curve runs under its own bearer key with `scope: per_key`, so the points of one
server never share entries (a later point would otherwise hit what an earlier one stored) without
restarting the server between them. Redis's own figures (memory, round trip) are read from Redis
directly: its port is on the command line of the server's redis-server child.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import psutil

from perfkit.config import Config
from perfkit.hardware import now
from perfkit.questions import Point, Question
from perfkit.serving.launch import QUEUE_ALL, ServerHandle, launch

MODES = {  # variant -> serving.cache overrides
    "none": {"mode": "none"},
    "memory-exact": {"mode": "exact", "backend": "memory"},
    "redis-exact": {"mode": "exact", "backend": "redis"},
    "redis-semantic": {"mode": "semantic", "backend": "redis"},
}


@dataclass(frozen=True)
class Timed:
    """One request as the client saw it."""

    index: int
    latency_s: float
    status: int
    cache: str  # hit | miss | bypass | "" (no cache)
    entry: str
    intent: str
    wrong: bool = False  # a hit whose entry was filled by a question of another intent


@dataclass(frozen=True)
class PointRun:
    variant: str
    target: float
    planned_hit_rate: float
    zipf_s: float
    warm: int
    requests: tuple[Timed, ...]
    server: dict[str, float] = field(default_factory=dict)  # cache metric deltas over the point

    @property
    def hit_rate(self) -> float:
        return sum(r.cache == "hit" for r in self.requests) / len(self.requests)


def overrides(cfg: Config, variant: str, max_memory_mb: float, threshold: float) -> dict[str, Any]:
    cache = {
        **cfg.serving.cache.model_dump(),
        **MODES[variant],
        "scope": "per_key",
        "max_memory_mb": max_memory_mb,
        "similarity_threshold": threshold,
        "redis_url": None,
    }
    return {**QUEUE_ALL, "serving.scheduler": "sequential", "serving.rate_limit.enabled": False, "serving.cache": cache}


@contextmanager
def servers(cfg: Config, plans: dict[str, dict[str, Any]]) -> Iterator[dict[str, ServerHandle]]:
    """Start every variant's server at once, yield their handles, stop them all.

    Start-up (imports, model load, warm-up) is most of a short run's time and runs in parallel
    here; the measurements then run one variant at a time while the other servers sit idle.
    """
    managers = {
        name: launch(cfg, overrides=sets, probe_cold_start=False, timeout_s=cfg.cache.launch_timeout_s) for name, sets in plans.items()
    }
    # The launching threads must outlive their servers: each server dies with the thread that forked it
    # (PR_SET_PDEATHSIG, perfkit.processes), so the pool is shut down only after the servers are stopped.
    with ThreadPoolExecutor(max_workers=max(1, len(managers))) as pool, ExitStack() as stack:
        started = {name: pool.submit(m.__enter__) for name, m in managers.items()}
        handles, failed = {}, []
        for name, future in started.items():
            try:
                handles[name] = future.result()
                stack.push(managers[name].__exit__)
            except Exception as exc:
                failed.append(exc)
        if failed:
            raise failed[0]
        yield handles


def cache_counters(client: httpx.Client) -> dict[str, float]:
    """The server's cache counters and step-time sums/counts, summed over labels, and each step's buckets."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        if not family.name.startswith("perfkit_cache"):
            continue
        for s in family.samples:
            if s.name.endswith("_bucket"):  # kept per step, for the step's quantiles
                if "step" in s.labels:
                    out[f"{s.name}.{s.labels['step']}.le={s.labels['le']}"] = s.value
                continue
            name = s.name + ("." + s.labels["step"] if "step" in s.labels else "")
            if "kind" in s.labels:
                out[f"{s.name}.{s.labels['kind']}"] = out.get(f"{s.name}.{s.labels['kind']}", 0.0) + s.value
            out[name] = out.get(name, 0.0) + s.value
    return out


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if not k.startswith("perfkit_cache_bytes")}


def ask(client: httpx.Client, cfg: Config, q: Question, key: str, max_tokens: int) -> tuple[float, httpx.Response]:
    body = {
        "model": cfg.model.name,
        "messages": [{"role": "user", "content": q.text}],
        "max_tokens": max_tokens,
        "min_tokens": max_tokens,
        "ignore_eos": True,
    }
    t0 = now()
    r = client.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"})
    return now() - t0, r


def run_stream(
    client: httpx.Client, cfg: Config, stream: Sequence[Question], key: str, max_tokens: int, warm: Sequence[Question] = ()
) -> list[Timed]:
    """Ask `warm` untimed, then `stream` one after another; a hit is wrong if its entry came from another intent."""
    source: dict[str, str] = {}  # entry id -> intent of the question that filled it
    for q in warm:
        _, r = ask(client, cfg, q, key, max_tokens)
        source.setdefault(r.headers.get("x-cache-entry", ""), repr(q.intent))
    out = []
    for i, q in enumerate(stream):
        seconds, r = ask(client, cfg, q, key, max_tokens)
        status, entry, intent = r.headers.get("x-cache", ""), r.headers.get("x-cache-entry", ""), repr(q.intent)
        if status == "miss":
            source.setdefault(entry, intent)
        out.append(Timed(i, seconds, r.status_code, status, entry, intent, status == "hit" and source.get(entry, intent) != intent))
    return out


def run_points(cfg: Config, variant: str, points: Sequence[Point], handle: ServerHandle) -> list[PointRun]:
    runs = []
    with httpx.Client(base_url=handle.base_url, timeout=600) as client:
        for point in points:
            before = cache_counters(client)
            timed = run_stream(client, cfg, point.stream, f"{variant}-{point.target}", cfg.cache.max_tokens, point.warm)
            runs.append(
                PointRun(
                    variant,
                    point.target,
                    point.planned_hit_rate,
                    point.zipf_s,
                    len(point.warm),
                    tuple(timed),
                    delta(before, cache_counters(client)),
                )
            )
    return runs


def redis_child(handle: ServerHandle) -> psutil.Process | None:
    for child in psutil.Process(handle.pid).children(recursive=True):
        try:
            if "redis-server" in child.name():
                return child
        except psutil.NoSuchProcess:
            continue
    return None


def redis_port(proc: psutil.Process) -> int:
    """The port the server's Redis listens on (redis-server retitles itself, so not from its command line)."""
    ports = [c.laddr.port for c in proc.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN]
    if not ports:
        raise RuntimeError(f"redis-server (pid {proc.pid}) listens on no TCP port")
    return int(ports[0])


def redis_round_trip_ms(port: int, n: int = 200) -> list[float]:
    """Round trips carrying 128 bytes from this process to the server's Redis (loopback), in ms.

    ECHO, not a GET of a key it would have to SET first: a Redis at its maxmemory with nothing left to evict (its own
    overhead fills a 1 MB bound) refuses writes with OOM, and the probe must not add a key to the cache it measures.
    """
    import redis

    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1)
    out = []
    for _ in range(n):
        t0 = now()
        client.echo(b"x" * 128)
        out.append((now() - t0) * 1000)
    client.close()
    return out


def redis_used_bytes(port: int) -> int:
    import redis

    with redis.Redis(host="127.0.0.1", port=port, socket_timeout=1) as client:
        return int(client.info("memory")["used_memory"])


@dataclass(frozen=True)
class Fault:
    requests: int
    server_errors: int  # 5xx
    lost: int  # requests without a response
    cache_errors: float
    slowest_during_outage_ms: float
    recovery_s: float | None  # Redis answering again -> the last request that still counted a cache error
    hits_after_recovery: int


def kill_redis(cfg: Config, handle: ServerHandle, stream: Sequence[Question]) -> Fault | None:
    """Ask `stream`, SIGKILL the server's Redis a third of the way in; count 5xx, lost requests, the recovery time."""
    proc = redis_child(handle)
    if proc is None or not stream:
        return None
    port, old_pid = redis_port(proc), proc.pid
    codes: list[int] = []
    lost = 0
    outage: list[float] = []
    back_at: float | None = None
    last_error_at: float | None = None
    hits_after = 0
    with httpx.Client(base_url=handle.base_url, timeout=60) as client:
        errors = cache_counters(client).get("perfkit_cache_errors_total", 0.0)
        start = errors
        for i, q in enumerate(stream):
            if i == len(stream) // 3:
                proc.send_signal(signal.SIGKILL)
            try:
                seconds, r = ask(client, cfg, q, "fault", cfg.cache.max_tokens)
                codes.append(r.status_code)
            except httpx.HTTPError:
                lost += 1
                continue
            t = now()
            killed = i >= len(stream) // 3
            if killed and back_at is None:
                outage.append(seconds)
                child = redis_child(handle)
                if child is not None and child.pid != old_pid and _pings(port):
                    back_at = t
            now_errors = cache_counters(client).get("perfkit_cache_errors_total", 0.0)
            if now_errors > errors:
                last_error_at = t
            elif back_at is not None and r.headers.get("x-cache") == "hit":
                hits_after += 1
            errors = now_errors
            time.sleep(0.02)
    recovery = None if back_at is None else max(0.0, (last_error_at or back_at) - back_at)
    return Fault(len(stream), sum(c >= 500 for c in codes), lost, errors - start, 1000 * max(outage, default=0.0), recovery, hits_after)


def _pings(port: int) -> bool:
    import redis

    try:
        with redis.Redis(host="127.0.0.1", port=port, socket_timeout=0.2, socket_connect_timeout=0.2) as client:
            return bool(client.ping())
    except redis.RedisError:
        return False


@dataclass(frozen=True)
class Flood:
    texts: int
    max_memory_bytes: int
    redis_used_bytes: int
    evictions: float
    server_rss_mb_before: float
    server_rss_mb_after: float


def flood(handle: ServerHandle, cfg: Config, texts: int, max_memory_bytes: int, batch: int = 64) -> Flood | None:
    """Fill Redis past maxmemory with /v1/embeddings entries (distinct texts, cheap to compute)."""
    proc = redis_child(handle)
    if proc is None or texts <= 0:
        return None
    server = psutil.Process(handle.pid)
    with httpx.Client(base_url=handle.base_url, timeout=120) as client:
        before = cache_counters(client).get("perfkit_cache_evictions_total", 0.0)
        rss0 = 0.0
        for n, start in enumerate(range(0, texts, batch)):
            if n == max(1, texts // batch // 10):  # after the first tenth: the allocator's own warm-up is not growth
                rss0 = server.memory_info().rss / 2**20
            inputs = [f"flood text number {i}" for i in range(start, min(texts, start + batch))]
            client.post(
                "/v1/embeddings", json={"model": cfg.model.embedding_name, "input": inputs}, headers={"Authorization": "Bearer flood"}
            )
        rss0 = rss0 or server.memory_info().rss / 2**20
        time.sleep(1.2)  # the eviction events and the server's memory poll
        evictions = cache_counters(client).get("perfkit_cache_evictions_total", 0.0) - before
    return Flood(texts, max_memory_bytes, redis_used_bytes(redis_port(proc)), evictions, rss0, server.memory_info().rss / 2**20)
